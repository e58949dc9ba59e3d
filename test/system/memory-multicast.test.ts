/**
 * Memory on demand by multicast, without a VM (issue 12): the real memserver on a simulated
 * parent's host pushes a synthetic template (random data pages, zeroed pages, holes) to the
 * ticket's group; real memtaps on three simulated clone hosts take the push in while they fault
 * by unicast beside it. Every host must read back the exact RAM; the parent must have sent each
 * granule about once for all of them. test/vm/hosts-multicast.test.ts runs real VM clones so.
 */
import { createHash } from 'node:crypto';
import { copyFileSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { execa } from 'execa';
import { settings } from '../../src/common/config.js';
import type { Engine } from '../../src/engine.js';
import { buildDescriptor, type Descriptor } from '../../src/memory/descriptor.js';
import { MemServer, newGroup, newToken, type ServerOptions } from '../../src/memory/server.js';
import { MemTap, type TapOptions } from '../../src/memory/tap.js';
import type { Testbed, TestHost } from '../../src/memory/testbed.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { leftoversOf, memoryEngine, STATE_DIR, syntheticTemplate, testbed } from '../helpers/memory.js';
import { buildNative } from '../helpers/native.js';

const PAGE = 4096;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('memory on demand by multicast: one memserver pushing to three clone hosts', function () {
  this.timeout(180_000);
  let bed: Testbed;
  let parent: TestHost;
  let clones: TestHost[];
  let engine: Engine;
  let ticket: Ticket;
  let tpl: ReturnType<typeof syntheticTemplate>;
  let desc: Descriptor;
  let descOnClones: string;
  let ramSha: string;
  const servers: MemServer[] = [];
  const taps: MemTap[] = [];
  let port = 42600 + Math.floor(Math.random() * 300);
  let mounts = 0;

  async function server(extra: Partial<ServerOptions>, token: string) {
    const s = await MemServer.start({
      nativeDir: settings().nativeDir, descriptor: desc.path, ram: tpl.ram, listen: `${parent.address}:${port++}`, token, host: parent,
      record: engine.resources(ticket).add, ticket: ticket.id, ...extra,
    });
    servers.push(s);
    return s;
  }

  async function tap(s: MemServer, token: string, host: TestHost, group: string | undefined, fill: TapOptions['fill'] = 'ws') {
    const t = await MemTap.start({
      nativeDir: settings().nativeDir, descriptor: descOnClones, server: s.address, token, mountpoint: join(bed.dir, `mnt-${mounts++}`),
      fill, host, record: engine.resources(ticket).add, ticket: ticket.id, ...(group ? { multicastGroup: group } : {}),
    });
    taps.push(t);
    return t;
  }

  /** The whole RAM file as a clone host's memtap serves it, by its sha256. */
  async function readAll(t: MemTap, host: TestHost): Promise<string> {
    const r = await execa('nsenter', [`--mount=/proc/${host.pid}/ns/mnt`, '--', 'dd', `if=${t.ramPath}`, `bs=${1 << 20}`, 'status=none'], { encoding: 'buffer', reject: false });
    expect(r.exitCode, Buffer.from(r.stderr as Uint8Array).toString()).to.equal(0);
    return sha(Buffer.from(r.stdout as Uint8Array));
  }

  before(async () => {
    buildNative();
    engine = memoryEngine();
    ticket = await engine.requestTicket(1, { provider: 'netns' });
    bed = await testbed(['parent', 'b', 'c', 'd']);
    [parent, ...clones] = bed.hosts as [TestHost, ...TestHost[]];
    tpl = syntheticTemplate(join('/dev/shm', `sfmm${bed.id}-mc`), 16384); // 64 MiB, a seventh of it data
    ramSha = sha(readFileSync(tpl.ram));
    desc = (await buildDescriptor(settings().nativeDir, tpl, { out: join(tpl.dir, 'memory.desc') })).descriptor;
    descOnClones = join(bed.dir, 'clone-hosts.desc');
    copyFileSync(desc.path, descOnClones);
  });

  afterEach(async () => {
    for (const t of taps.splice(0)) await t.stop();
    for (const s of servers.splice(0)) await s.stop().catch(() => undefined);
  });

  after(async () => {
    for (const t of taps.splice(0)) await t.stop().catch(() => undefined);
    for (const s of servers.splice(0)) await s.stop().catch(() => undefined);
    const report = ticket ? await engine.kill(ticket) : null;
    await bed?.destroy();
    if (tpl) rmSync(tpl.dir, { recursive: true, force: true });
    expect(report?.failed ?? [], 'teardown failures').to.deep.equal([]);
    if (bed) expect(leftoversOf(bed), 'left behind').to.deep.equal([]);
    if (ticket) await assertNoLeaks([ticket.id], STATE_DIR);
  });

  it('every host gets the exact RAM from the push alone; the parent sends each data granule about once for all three', async () => {
    const token = newToken();
    const group = newGroup();
    const s = await server({ multicast: { group, receivers: 3, push: 'all' } }, token);
    const ts = await Promise.all(clones.map((h) => tap(s, token, h, group)));
    await Promise.all(ts.map((t) => t.filled(60_000)));
    const dataBytes = desc.dataPages * PAGE;
    for (const [i, t] of ts.entries()) {
      const c = await t.counters();
      expect(c.multicast?.complete, c.host).to.equal(true);
      expect(c.pushPages, `${c.host}: pages from the push`).to.equal(desc.dataPages);
      expect(c.demandPages + c.fillPages, `${c.host}: nothing by unicast`).to.equal(0);
      expect(c.multicast!.authFailures + c.multicast!.foreign + c.multicast!.checksumFailures, c.host).to.equal(0);
      expect(await readAll(t, clones[i]!), `${c.host}: the RAM`).to.equal(ramSha);
    }
    const sc = await s.counters();
    expect(sc.multicast!.receivers).to.equal(3);
    expect(sc.multicast!.allComplete).to.equal(true);
    // Each data granule once, plus headers, MACs and what loss made it repeat: far below three copies.
    expect(sc.multicast!.pushBytes).to.be.at.least(dataBytes);
    expect(sc.multicast!.bytes / dataBytes, 'multicast bytes per data byte').to.be.below(1.3);
    expect(sc.dataBytes, 'data the memserver sent by unicast').to.equal(0);
  });

  it('1% of the datagrams lost on every clone host, in and out (UDP and TCP): every host still reads the exact RAM', async () => {
    // No netem in this kernel: an nftables netdev table on each host's eth0 drops at random.
    const rule = 'ip protocol { udp, tcp } numgen random mod 100 < 1 counter drop';
    const lossy = `nft -f - <<'EOF'\ntable netdev sfmmloss {\n chain in { type filter hook ingress device "eth0" priority 0; ${rule}; }\n chain out { type filter hook egress device "eth0" priority 0; ${rule}; }\n}\nEOF`;
    for (const h of clones) expect((await h.sh(lossy)).exitCode).to.equal(0);
    try {
      const token = newToken();
      const group = newGroup();
      const s = await server({ multicast: { group, receivers: 3, push: 'all' } }, token);
      const ts = await Promise.all(clones.map((h) => tap(s, token, h, group)));
      await Promise.all(ts.map((t) => t.filled(90_000)));
      let repaired = 0;
      for (const [i, t] of ts.entries()) {
        const c = await t.counters();
        expect(c.multicast?.complete, c.host).to.equal(true);
        expect(c.multicast!.checksumFailures + c.multicast!.authFailures, c.host).to.equal(0);
        expect(await readAll(t, clones[i]!), `${c.host}: the RAM`).to.equal(ramSha);
        repaired += c.multicast!.nackEntries;
      }
      const dropped = (await Promise.all(clones.map((h) => h.sh('nft list table netdev sfmmloss')))).map((r) => /packets (\d+)/g.exec(r.stdout)?.[1]);
      expect(dropped.every((d) => Number(d) > 0), `datagrams dropped per host: ${dropped.join(', ')}`).to.equal(true);
      expect(repaired, 'NACK entries: the losses were asked for again').to.be.above(0);
    } finally {
      for (const h of clones) await h.sh('nft delete table netdev sfmmloss');
    }
  });

  it('faults go by unicast while the push runs, and the memserver sends what one host faulted on to the group for the others', async () => {
    const token = newToken();
    const group = newGroup();
    // Slow enough (1 MB/s for 9 MB) that the faults come long before the push reaches them.
    const s = await server({ multicast: { group, receivers: 3, rate: 1 << 20, push: 'all' } }, token);
    const ts = await Promise.all(clones.map((h) => tap(s, token, h, group)));
    const last = desc.pages - 7 * 40; // data pages near the end: the push's last
    const r = await execa('nsenter', [`--mount=/proc/${clones[0]!.pid}/ns/mnt`, '--', 'dd', `if=${ts[0]!.ramPath}`, `bs=${PAGE}`, `skip=${last}`, 'count=280', 'status=none'], {
      encoding: 'buffer',
      reject: false,
    });
    expect(r.exitCode).to.equal(0);
    expect(sha(Buffer.from(r.stdout as Uint8Array))).to.equal(sha(readFileSync(tpl.ram).subarray(last * PAGE, (last + 280) * PAGE)));
    const faulted = await ts[0]!.counters();
    expect(faulted.demandPages, 'pages the first host faulted on').to.equal(40);
    // The memserver sends them to the group too (paced like the push, ahead of it) ...
    const deadline = Date.now() + 5000;
    let sc = await s.counters();
    while (sc.multicast!.demandGranules < 40 && Date.now() < deadline) {
      await new Promise((res) => setTimeout(res, 100));
      sc = await s.counters();
    }
    expect(sc.multicast!.demandGranules, 'demand granules sent to the group').to.be.at.least(40);
    expect(sc.multicast!.allComplete, 'the push is still on').to.equal(false);
    await new Promise((res) => setTimeout(res, 300)); // ... which delivers them to the other hosts
    // ... so the other hosts, reading the same pages, never fault on them.
    for (const [i, t] of ts.slice(1).entries()) {
      const r2 = await execa('nsenter', [`--mount=/proc/${clones[i + 1]!.pid}/ns/mnt`, '--', 'dd', `if=${t.ramPath}`, `bs=${PAGE}`, `skip=${last}`, 'count=280', 'status=none'], {
        encoding: 'buffer',
        reject: false,
      });
      expect(sha(Buffer.from(r2.stdout as Uint8Array))).to.equal(sha(Buffer.from(r.stdout as Uint8Array)));
      const c = await t.counters();
      expect(c.demandPages, `${c.host}: no fault, the group brought them`).to.equal(0);
      expect(c.multicast!.complete, `${c.host}: the push is still on`).to.equal(false);
    }
  });

  it('with a recorded working set it pushes that set only; a page beyond it one host faults on reaches the others from the group', async () => {
    // A first run records what its clone faulted on: here, every page of the first 4900.
    const ws = join(bed.dir, 'recorded.ws');
    const token0 = newToken();
    const first = await server({ recordWorkset: ws }, token0);
    const t0 = await tap(first, token0, clones[0]!, undefined, 'none');
    await execa('nsenter', [`--mount=/proc/${clones[0]!.pid}/ns/mnt`, '--', 'dd', `if=${t0.ramPath}`, `bs=${PAGE}`, 'count=4900', 'of=/dev/null', 'status=none']);
    const wsPages = (await t0.counters()).demandPages;
    expect(wsPages, 'data pages among the first 4900').to.equal(700);
    await t0.stop();
    taps.splice(taps.indexOf(t0), 1);
    await first.stop();
    servers.splice(servers.indexOf(first), 1);

    const token = newToken();
    const group = newGroup();
    const s = await server({ workset: ws, multicast: { group, receivers: 3 } }, token);
    const ts = await Promise.all(clones.map((h) => tap(s, token, h, group)));
    await Promise.all(ts.map((t) => t.filled(60_000)));
    const sc = await s.counters();
    expect(sc.multicast!.pushSet, 'granules the push goes round').to.equal(wsPages);
    for (const t of ts) {
      const c = await t.counters();
      expect(c.multicast?.complete, c.host).to.equal(true);
      expect(c.pushPages, `${c.host}: the working set, from the push`).to.equal(wsPages);
      expect(c.demandPages + c.fillPages, `${c.host}: nothing by unicast`).to.equal(0);
    }
    // A range beyond the working set: the first host faults on it, the others get it from the group.
    const last = desc.pages - 7 * 40;
    const range = (i: number) =>
      execa('nsenter', [`--mount=/proc/${clones[i]!.pid}/ns/mnt`, '--', 'dd', `if=${ts[i]!.ramPath}`, `bs=${PAGE}`, `skip=${last}`, 'count=280', 'status=none'], { encoding: 'buffer' });
    const want = sha(readFileSync(tpl.ram).subarray(last * PAGE, (last + 280) * PAGE));
    expect(sha(Buffer.from((await range(0)).stdout as Uint8Array))).to.equal(want);
    expect((await ts[0]!.counters()).demandPages).to.equal(40);
    const deadline = Date.now() + 5000;
    while ((await s.counters()).multicast!.demandGranules < 40 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 100));
    await new Promise((res) => setTimeout(res, 300));
    for (const i of [1, 2]) {
      expect(sha(Buffer.from((await range(i)).stdout as Uint8Array)), `host ${i}`).to.equal(want);
      const c = await ts[i]!.counters();
      expect(c.demandPages, `${c.host}: no fault, the group brought them`).to.equal(0);
      expect(c.pushPages, c.host).to.equal(wsPages + 40);
    }
    // Everything else by faults, right.
    expect(await readAll(ts[1]!, clones[1]!)).to.equal(ramSha);
  });

  it('a memserver that never pushes (no multicast on the path): memtap gives the push up, says why, and fills by unicast', async () => {
    const token = newToken();
    const s = await server({}, token); // no push at all: the receiver hears no sender
    const t = await tap(s, token, clones[0]!, newGroup());
    await t.filled(60_000);
    const c = await t.counters();
    expect(c.multicast?.error).to.match(/^nothing from the sender \S+ for \d+ ms/);
    expect(c.pushPages).to.equal(0);
    expect(c.fillPages + c.demandPages, 'pages by unicast').to.equal(desc.dataPages);
    expect(await readAll(t, clones[0]!)).to.equal(ramSha);
  });
});
