/**
 * Memory on demand without a VM: the real memserver on a simulated parent's host, real memtaps
 * (FUSE) on a simulated clone host that cannot open the template, reading through the kernel's
 * page cache with dd as QEMU's faults would. The RAM file is synthetic (random data pages, zeroed
 * pages and holes), so every page's expected content is known; test/vm/memory-clones.test.ts runs
 * real QEMU clones of a real template. Every memserver and memtap is a resource of a real ticket
 * (the engine's record), so the teardown at the end is the engine's, and must leave nothing.
 */
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { closeSync, copyFileSync, existsSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { settings } from '../../src/common/config.js';
import type { Engine } from '../../src/engine.js';
import { buildDescriptor, granuleIsZero, pageHasData, readDescriptor, type Descriptor } from '../../src/memory/descriptor.js';
import { nativeProgram } from '../../src/memory/helper.js';
import { MemServer, newToken, type ServerOptions } from '../../src/memory/server.js';
import { MemTap, type TapOptions } from '../../src/memory/tap.js';
import type { Testbed, TestHost } from '../../src/memory/testbed.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { leftoversOf, memoryEngine, STATE_DIR, syntheticTemplate, testbed } from '../helpers/memory.js';
import { buildNative } from '../helpers/native.js';

const PAGE = 4096;
const nativeDir = () => settings().nativeDir;

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const childrenOf = (pid: number): number[] =>
  readdirSync(`/proc/${pid}/task`).flatMap((t) => readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));

/** The memtap's own process (lifeline's child), the leader of its process group. */
const memtapGroup = (lifelinePid: number): number => childrenOf(lifelinePid)[0]!;

describe('memory on demand: memserver and memtap across simulated hosts', function () {
  this.timeout(180_000);
  let bed: Testbed;
  let parent: TestHost;
  let clone: TestHost;
  let engine: Engine;
  let ticket: Ticket;
  let tpl: { key: string; dir: string; ram: string; state: string };
  let desc4k: Descriptor;
  let descOnClone: string; // the descriptor as shipped to the clone host
  let ramBytes: Buffer;
  const servers: MemServer[] = [];
  const taps: MemTap[] = [];
  let port = 42100 + Math.floor(Math.random() * 400);
  let mounts = 0;
  const record = () => engine.resources(ticket).add;

  async function server(extra: Partial<ServerOptions> = {}, token = newToken()) {
    const s = await MemServer.start({
      nativeDir: nativeDir(), descriptor: desc4k.path, ram: tpl.ram, listen: `${parent.address}:${port++}`, token, host: parent,
      record: record(), ticket: ticket.id, ...extra,
    });
    servers.push(s);
    return { s, token };
  }

  async function tap(s: MemServer, token: string, extra: Partial<TapOptions> = {}) {
    const t = await MemTap.start({
      nativeDir: nativeDir(), descriptor: descOnClone, server: s.address, token, mountpoint: join(bed.dir, `mnt-${mounts++}`),
      fill: 'none', host: clone, record: record(), ticket: ticket.id, ...extra,
    });
    taps.push(t);
    return t;
  }

  /** dd of pages [first, first + count) of a memtap's ram, on the clone host. */
  async function readPages(t: MemTap, first: number, count: number, direct = false) {
    const dd = ['dd', `if=${t.ramPath}`, `bs=${PAGE}`, `skip=${first}`, `count=${count}`, ...(direct ? ['iflag=direct'] : []), 'status=none'];
    const r = await execa('nsenter', [`--mount=/proc/${clone.pid}/ns/mnt`, '--', ...dd], { encoding: 'buffer', reject: false });
    return { code: r.exitCode, data: Buffer.from(r.stdout as Uint8Array), err: Buffer.from(r.stderr as Uint8Array).toString() };
  }

  before(async () => {
    buildNative();
    engine = memoryEngine();
    ticket = await engine.requestTicket(1, { provider: 'netns' });
    bed = await testbed(['parent', 'clone']);
    [parent, clone] = bed.hosts as [TestHost, TestHost];
    tpl = syntheticTemplate(join('/dev/shm', `sfmm${bed.id}-tpl`), 16384); // 64 MiB
    ramBytes = readFileSync(tpl.ram);
    desc4k = (await buildDescriptor(nativeDir(), tpl, { out: join(tpl.dir, 'memory-4K.desc') })).descriptor;
    descOnClone = join(bed.dir, 'clone-host.desc');
    copyFileSync(desc4k.path, descOnClone); // "shipped" to the clone host
  });

  afterEach(async () => {
    for (const t of taps.splice(0)) {
      await t.stop();
      expect(existsSync(t.mountpoint), `mountpoint ${t.mountpoint} left`).to.equal(false);
    }
    for (const s of servers.splice(0)) await s.stop().catch(() => undefined);
  });

  after(async () => {
    for (const t of taps.splice(0)) await t.stop().catch(() => undefined);
    for (const s of servers.splice(0)) await s.stop().catch(() => undefined);
    const report = ticket ? await engine.kill(ticket) : null;
    const memtapMounts = bed?.hosts.flatMap((h) => h.mounts().split('\n').filter((l) => l.includes('fuse.memtap'))) ?? [];
    await bed?.destroy();
    if (tpl) rmSync(tpl.dir, { recursive: true, force: true });
    expect(report?.failed ?? [], 'teardown failures').to.deep.equal([]);
    expect(memtapMounts, 'memtap mounts left on the hosts').to.deep.equal([]);
    if (bed) expect(leftoversOf(bed), 'left behind').to.deep.equal([]);
    if (ticket) await assertNoLeaks([ticket.id], STATE_DIR);
  });

  it('describes the template: zero pages (holes and zeroed) apart, data checksummed, device state inside', () => {
    const d = readDescriptor(desc4k.path);
    let data = 0;
    for (let p = 0; p < d.pages; p++) {
      const expectData = p % 7 === 0; // random pages are never all zero
      expect(pageHasData(d, p), `page ${p}`).to.equal(expectData);
      data += expectData ? 1 : 0;
    }
    expect(d.dataPages).to.equal(data);
    expect(d.zeroedPages).to.equal(Array.from({ length: d.pages }, (_, p) => p % 7 !== 0 && p % 11 === 0).filter(Boolean).length);
    expect(d.holePages).to.equal(d.pages - d.dataPages - d.zeroedPages);
    expect(d.state.equals(readFileSync(tpl.state))).to.equal(true);
    expect(d.fileBytes).to.be.below(200_000);
  });

  it('agrees with memdesc on what the descriptor says', async () => {
    const r = await execa(nativeProgram(nativeDir(), 'memdesc'), ['info', desc4k.path]);
    const info = JSON.parse(r.stdout) as Record<string, unknown>;
    for (const k of ['key', 'id', 'ramSize', 'granuleSize', 'pages', 'dataPages', 'holePages', 'zeroedPages', 'granules', 'dataGranules', 'stateBytes', 'fileBytes']) {
      expect(info[k], k).to.equal((desc4k as unknown as Record<string, unknown>)[k]);
    }
  });

  it('bad input to the native programs: one line, a non-zero exit', async () => {
    const run = (prog: string, args: string[], input: string) => execa(nativeProgram(nativeDir(), prog), args, { input, reject: false });
    const cases: [string, string[], string, RegExp][] = [
      ['memserver', ['--desc', desc4k.path, '--ram', tpl.ram, '--listen', '127.0.0.1:0'], '', /^memserver: expected the ticket's token on stdin/],
      ['memserver', ['--desc', desc4k.path, '--ram', tpl.ram, '--listen', 'nowhere'], `token ${newToken()}\n`, /^memserver: cannot listen on nowhere/],
      ['memserver', ['--desc', '/nonexistent', '--ram', tpl.ram, '--listen', '127.0.0.1:0'], `token ${newToken()}\n`, /^memserver: descriptor \/nonexistent: cannot read it: No such file/],
      ['memtap', ['--desc', desc4k.path, '--server', '127.0.0.1:1', '--mount', join(bed.dir, 'never')], `token ${newToken()}\n`, /^memtap: host .*: cannot connect to the memserver 127\.0\.0\.1:1: Connection refused/],
      ['memtap', ['--desc', desc4k.path, '--server', '127.0.0.1:1', '--mount', join(bed.dir, 'never'), '--fill', 'all'], '', /^memtap: --fill all: expected none, seq, ws or ws-only/],
      ['memtap', ['--desc', desc4k.path, '--server', '127.0.0.1:1', '--mount', join(bed.dir, 'never'), '--mcast-group', '10.1.2.3'], '', /^memtap: --mcast-group 10\.1\.2\.3: not an IPv4 address in 239\.0\.0\.0\/8$/],
      ['memserver', ['--desc', desc4k.path, '--ram', tpl.ram, '--listen', '127.0.0.1:0', '--mcast-group', '224.0.0.1'], `token ${newToken()}\n`, /^memserver: --mcast-group 224\.0\.0\.1: the group is not an IPv4 address in 239\.0\.0\.0\/8$/],
      ['memserver', ['--desc', desc4k.path, '--ram', tpl.ram, '--listen', '0.0.0.0:0', '--mcast-group', '239.192.0.9'], `token ${newToken()}\n`, /^memserver: --mcast-group 239\.192\.0\.9: multicast needs the memserver's own underlay address/],
      ['memserver', ['--desc', desc4k.path, '--ram', tpl.ram, '--listen', '127.0.0.1:0', '--mcast-group', '239.192.0.9', '--mcast-receivers', '0'], '', /^memserver: --mcast-receivers 0: a count from 1 to 256$/],
      ['memdesc', ['build', '--ram', tpl.ram, '--state', tpl.state, '--key', 'k', '--granule', '3K', '--out', join(bed.dir, 'x')], '', /^memdesc: cannot describe the template k .*: the granule must be a power of two/],
    ];
    for (const [prog, args, input, want] of cases) {
      const r = await run(prog, args, input);
      expect(r.exitCode, `${prog} ${args.join(' ')}`).to.not.equal(0);
      expect(r.stderr.trim().split('\n'), r.stderr).to.have.length(1);
      expect(r.stderr.trim()).to.match(want);
    }
    expect(existsSync(join(bed.dir, 'never'))).to.equal(false);
  });

  it('refuses a damaged descriptor with one line', async () => {
    const bad = join(bed.dir, 'bad.desc');
    const b = readFileSync(desc4k.path);
    b[b.length - 100] ^= 1;
    writeFileSync(bad, b);
    expect(() => readDescriptor(bad)).to.throw(/damaged/);
    const { s, token } = await server();
    let err = '';
    await MemTap.start({ nativeDir: nativeDir(), descriptor: bad, server: s.address, token, mountpoint: join(bed.dir, 'mnt-bad'), host: clone, record: record() }).catch((e: Error) => (err = e.message));
    expect(err).to.match(/descriptor .*bad\.desc: truncated or damaged/);
    expect(err.split('\n')).to.have.length(1);
  });

  it('serves the exact RAM to a clone host that cannot open the template; zero granules are never fetched', async () => {
    const open = await clone.sh(`head -c1 ${tpl.ram}`);
    expect(open.exitCode, 'the clone host opened the template').to.not.equal(0);
    expect(open.stderr).to.match(/No such file/);
    const { s, token } = await server();
    const t = await tap(s, token);
    const all = await readPages(t, 0, desc4k.pages);
    expect(all.code, all.err).to.equal(0);
    expect(sha(all.data)).to.equal(sha(ramBytes));
    const [c, sc] = [await t.counters(), await s.counters()];
    expect(c.pagesFetched).to.equal(desc4k.dataPages);
    expect(c.zeroPagesServed).to.equal(desc4k.pages - desc4k.dataPages);
    expect(sc.zeroRequests, 'zero granules requested').to.equal(0);
    expect(sc.dataBytes).to.equal(desc4k.dataPages * PAGE);
    expect(sc.resent, 'granules sent twice').to.equal(0);
    expect(c.checksumFailures).to.equal(0);
  });

  it('serves the exact RAM with larger granules, whose zero pages stay behind', async () => {
    for (const g of [16384, 65536, 2097152]) {
      const d = (await buildDescriptor(nativeDir(), tpl, { granuleSize: g, out: join(bed.dir, `g${g}.desc`) })).descriptor;
      const { s, token } = await server({ descriptor: d.path });
      const t = await tap(s, token, { descriptor: d.path });
      // Demand (pages scattered through the file, as faults come), then everything.
      for (const p of [0, 7 * 333, 16383, 7 * 1500 + 3]) {
        const r = await readPages(t, p, 1);
        expect(r.data.equals(ramBytes.subarray(p * PAGE, (p + 1) * PAGE)), `granule ${g}, page ${p}: dd status ${r.code}, ${r.data.length} bytes, ${r.err.trim() || 'no stderr'}`).to.equal(true);
      }
      const all = await readPages(t, 0, desc4k.pages);
      expect(sha(all.data), `granule ${g}`).to.equal(sha(ramBytes));
      const [c, sc] = [await t.counters(), await s.counters()];
      expect(c.checksumFailures, `granule ${g}`).to.equal(0);
      expect(sc.dataBytes, `granule ${g}: only data pages cross the wire`).to.equal(desc4k.dataPages * PAGE);
      await t.stop();
      taps.splice(taps.indexOf(t), 1);
    }
  });

  it('fetches each granule once per host: the page cache, then its own store, serve every other reader', async () => {
    const { s, token } = await server();
    const t = await tap(s, token);
    // Two readers at once (as two clones fault together), then reads that bypass the page cache.
    const [a, b] = await Promise.all([readPages(t, 0, 4096), readPages(t, 0, 4096)]);
    expect(sha(a.data)).to.equal(sha(ramBytes.subarray(0, 4096 * PAGE)));
    expect(b.data.equals(a.data)).to.equal(true);
    const before = await t.counters();
    const direct = await readPages(t, 0, 4096, true);
    expect(direct.data.equals(a.data)).to.equal(true);
    const after = await t.counters();
    expect(after.reads).to.be.above(before.reads); // O_DIRECT reached memtap...
    expect(after.pagesFetched).to.equal(before.pagesFetched); // ...which answered from its store
    const sc = await s.counters();
    expect(sc.resent).to.equal(0);
    expect(sc.dataBytes).to.equal(after.pagesFetched * PAGE);
  });

  it('serves several memtaps at once and refuses a client without the token or of another template', async () => {
    const { s, token } = await server();
    const many = await Promise.all([0, 1, 2].map(() => tap(s, token)));
    const reads = await Promise.all(many.map((t, i) => readPages(t, i * 1000, 2000)));
    for (const [i, r] of reads.entries()) expect(sha(r.data)).to.equal(sha(ramBytes.subarray(i * 1000 * PAGE, (i * 1000 + 2000) * PAGE)));
    expect((await s.counters()).clients).to.equal(3);

    let err = '';
    await tap(s, newToken()).catch((e: Error) => (err = e.message));
    expect(err).to.match(/refused this memtap: the hello did not prove the ticket's token/);
    const other = (await buildDescriptor(nativeDir(), tpl, { granuleSize: 65536, out: join(bed.dir, 'other.desc') })).descriptor;
    err = '';
    await tap(s, token, { descriptor: other.path }).catch((e: Error) => (err = e.message));
    expect(err).to.match(/serves another template/);
    const sc = await s.counters();
    expect(sc.refusedAuth).to.equal(1);
    expect(sc.refusedTemplate).to.equal(1);
    const memtapMounts = clone.mounts().split('\n').filter((l) => l.includes(' - fuse.memtap '));
    expect(memtapMounts, 'mounts of refused memtaps').to.have.length(3);
  });

  it('refuses a granule whose checksum does not match and fetches it again', async () => {
    const { s, token } = await server();
    const t = await tap(s, token);
    const page = 7 * 300; // a data page
    await s.corruptNext(page);
    const r = await readPages(t, page, 1);
    expect(r.code, r.err).to.equal(0);
    expect(r.data.equals(ramBytes.subarray(page * PAGE, (page + 1) * PAGE))).to.equal(true);
    const c = await t.counters();
    expect(c.checksumFailures).to.equal(1);
    expect(c.refetches).to.equal(1);
    expect((await s.counters()).corrupted).to.equal(1);
  });

  it('a RAM file that does not match its descriptor: the memserver will not serve it; unchecked, memtap fails the read with one line', async () => {
    const bad = join(tpl.dir, 'ram-damaged');
    copyFileSync(tpl.ram, bad);
    // One byte of data page 3500 changed (flipped: the random page may hold any value there).
    const at = 7 * 500 * PAGE + 9;
    const fd = openSync(bad, 'r+');
    writeSync(fd, Buffer.from([ramBytes[at]! ^ 0xff]), 0, 1, at);
    closeSync(fd);
    let err = '';
    await server({ ram: bad }).catch((e: Error) => (err = e.message));
    expect(err).to.match(/does not match its descriptor .* \(granule 3500 differs\)/);
    const { s, token } = await server({ ram: bad, noVerify: true });
    const failures: string[] = [];
    const t = await tap(s, token, { onFailure: (l) => failures.push(l) });
    const r = await readPages(t, 7 * 500, 1);
    expect(r.code).to.not.equal(0);
    expect(r.err).to.match(/Input\/output error/);
    await sleep(100);
    expect(failures).to.have.length(1);
    expect(failures[0]).to.match(/host sfmm\w+-clone: granule 3500 .* failed its checksum 3 times/);
    rmSync(bad);
  });

  it('the memserver killed mid-run: reads fail at once with one line, nothing hangs, memtap unmounts', async () => {
    const { s, token } = await server();
    const failures: string[] = [];
    const t = await tap(s, token, { onFailure: (l) => failures.push(l) });
    const first = await readPages(t, 0, 100);
    expect(first.code).to.equal(0);
    s.kill();
    await s.exited;
    const t0 = Date.now();
    const r = await readPages(t, 7000, 10);
    expect(r.code).to.not.equal(0);
    expect(Date.now() - t0).to.be.below(4000); // not the 5 s timeout: the closed connection is seen at once
    await sleep(100);
    expect(failures).to.have.length(1);
    expect(failures[0]).to.match(/^host sfmm\w+-clone: memserver [\d.]+:\d+: it closed the connection/);
    const again = await readPages(t, 0, 100); // what it has, it still serves
    expect(again.data.equals(first.data)).to.equal(true);
    const c = await t.counters();
    expect(c.failed).to.match(/closed the connection/);
    const mnt = t.mountpoint;
    await t.stop();
    taps.splice(taps.indexOf(t), 1);
    expect(clone.mounts()).to.not.include(mnt);
    expect(existsSync(mnt)).to.equal(false);
  });

  it('the network dies: a fault fails after the timeout with one line naming the host and the memserver', async () => {
    const { s, token } = await server();
    const failures: string[] = [];
    const t = await tap(s, token, { timeoutMs: 800, onFailure: (l) => failures.push(l) });
    await bed.linkUp(clone, false);
    try {
      const r = await readPages(t, 7 * 100, 1);
      expect(r.code).to.not.equal(0);
      expect(r.err).to.match(/Input\/output error/);
    } finally {
      await bed.linkUp(clone, true);
    }
    expect(failures).to.have.length(1);
    expect(failures[0], failures[0]).to.match(/^host sfmm\w+-clone: memserver [\d.]+:\d+ did not answer a fault within 800 ms/);
  });

  it('a memtap killed outright leaves no mount (auto_unmount); one whose fusermount3 died too, the teardown unmounts', async () => {
    const { s, token } = await server();
    const t = await tap(s, token);
    await readPages(t, 0, 10);
    const mnt = t.mountpoint;
    expect(clone.mounts()).to.include(mnt);
    t.kill();
    await t.exited;
    taps.splice(taps.indexOf(t), 1);
    for (let i = 0; i < 250 && clone.mounts().includes(mnt); i++) await sleep(20); // fusermount3 notices the closed fd
    expect(clone.mounts(), 'mount left after SIGKILL').to.not.include(mnt);

    // The owner dies: its lifeline kills memtap's whole group, fusermount3 with it, and the mount
    // is left dead ("transport endpoint is not connected") until the record's teardown.
    const u = await tap(s, token);
    await readPages(u, 0, 10);
    taps.splice(taps.indexOf(u), 1);
    // As the lifeline does: memtap's group and its descendants. fusermount3 (a session of its own)
    // goes first: were memtap first, it would see the closed fd and unmount before its own kill.
    const memtap = memtapGroup(u.pid);
    const fusermount = childrenOf(memtap);
    expect(fusermount, "memtap's fusermount3").to.have.length(1);
    process.kill(fusermount[0]!, 'SIGKILL');
    for (let i = 0; i < 250 && existsSync(`/proc/${fusermount[0]}`); i++) await sleep(20);
    process.kill(-memtap, 'SIGKILL');
    await u.exited;
    await sleep(200);
    expect(clone.mounts(), 'a dead mount, for teardown to remove').to.include(u.mountpoint);
    const r = await readPages(u, 0, 1);
    expect(r.err).to.match(/Transport endpoint is not connected|No such file/);
  });

  it('fills in the background: sequentially, then in the order of a recorded working set', async () => {
    const ws = join(bed.dir, 'memory.ws');
    // Run 1 records the pages faulted on demand (no fill to hide them).
    const first = await server({ recordWorkset: ws });
    const t1 = await tap(first.s, first.token);
    await readPages(t1, 7 * 2000, 7 * 10); // granules 14000.. : 10 data pages
    await readPages(t1, 0, 1);
    expect(await first.s.saveWorkset()).to.equal(11);
    // Run 2 fills, working set first, and ends with every data page.
    const second = await server({ workset: ws });
    const t2 = await tap(second.s, second.token, { fill: 'ws' });
    await t2.filled(30_000);
    const c = await t2.counters();
    expect(c.fill).to.equal('done');
    expect(c.fillPages).to.equal(desc4k.dataPages);
    expect(c.wsGranules).to.equal(11);
    const all = await readPages(t2, 0, desc4k.pages);
    expect(sha(all.data)).to.equal(sha(ramBytes));
    expect((await t2.counters()).demandPages).to.equal(0);
    expect((await second.s.counters()).zeroRequests).to.equal(0);
    for (let g = 0; g < desc4k.granules; g++) if (granuleIsZero(desc4k, g)) expect(pageHasData(desc4k, g)).to.equal(false);
  });
});
