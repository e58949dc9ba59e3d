/**
 * mcdist's multicast push (native/mcast) between simulated hosts: real network namespaces on a
 * bridge of this run's own (test/system/mcast-hosts.ts), real IP multicast with IGMP snooping,
 * real loss (nftables) and a real slow link (tbf). Host 0 is the parent's (mcpush, the sender);
 * the others are clone hosts (mcrecv), each checking every granule against its CRC32C and the
 * whole image against its SHA-256.
 *
 * As root. SNOWFLOCK_STATE_DIR names where the run's record lives; SFMC_SANITIZE=1 runs the
 * drivers built with ASan+UBSan (native/build-asan).
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'chai';
import { projectRoot } from '../../src/common/paths.js';
import { driverArgs, leftovers, McCluster, McHost, nativeDir, newToken, sweep, type Driver } from './mcast-hosts.js';

type Json = Record<string, unknown>;
interface Image { path: string; geometry: string; ws: string; data: number }
interface Outcome { tx: Json; txCode: number; rx: Json[]; codes: number[]; drivers: Driver[]; sender: Driver; wire: number }

const num = (j: Json, k: string): number => Number(j[k] ?? NaN);

/** A synthetic image (random data pages, some zero) and its geometry and working set. */
function image(dir: string, mib: number): Image {
  const path = join(dir, `img-${mib}`);
  execFileSync(join(nativeDir(), 'mcgeom'), ['synth', path, String(mib), '50']);
  const geometry = `${path}.geo`, ws = `${path}.ws`;
  const info = JSON.parse(execFileSync(join(nativeDir(), 'mcgeom'), ['build', path, geometry, '--ws', ws, '--ws-percent', '5'], { encoding: 'utf8' }));
  return { path, geometry, ws, data: Number(info.data_granules) };
}

/** Every receiver got every granule, each matching its CRC32C, and the image's digest. */
function expectIntact(o: Outcome, img: Image): void {
  const { digest: _d, ...tx } = o.tx;
  o.rx.forEach((r, i) => {
    const { digest: _r, ...rr } = r;
    expect(o.codes[i], `receiver ${i + 1} exit: ${o.drivers[i]!.stderr.trim()}\nreceiver: ${JSON.stringify(rr)}\nsender: ${JSON.stringify(tx)}`).to.equal(0);
    expect(r.need).to.equal(img.data);
    expect(r.have, `receiver ${i + 1}`).to.equal(img.data);
    expect(r.missing).to.equal(0);
    expect(r.bad).to.equal(0);
    expect(r.digest_ok).to.equal(true);
  });
  expect(o.txCode, o.sender.stderr).to.equal(0);
}

describe('mcast: multicast push between simulated hosts', function () {
  this.timeout(60_000);
  let c: McCluster;
  let img: Image;
  let ticket = 0;

  before(async function () {
    if (process.getuid?.() !== 0) this.skip();
    c = await McCluster.create(7);
    img = image(c.dir, 16);
  });

  after(async function () {
    if (!c) return;
    await c.destroy();
    expect(leftovers(c)).to.deep.equal([]);
  });

  /**
   * One push from host 0 to `hosts` (each a receiver), a fresh group and token per call; the
   * sender waits for them all. `late` hosts join once receiver 1 has a third of the data; the
   * hooks run before the sender starts, once it listens, and while the receivers run.
   */
  async function push(
    hosts: McHost[],
    o: {
      image?: Image;
      rate?: number;
      late?: McHost[];
      demand?: number;
      beforeSender?: (group: string, port: number) => void;
      afterSender?: (group: string, port: number) => void;
      during?: (d: Driver[]) => Promise<void>;
    } = {},
  ): Promise<Outcome> {
    const k = ticket++;
    const group = c.group(k), port = c.port(k), sender = c.hosts[0]!, token = newToken(), im = o.image ?? img;
    const recv = (h: McHost, node: number) =>
      h.run(driverArgs({ role: 'recv', transport: 'sfmc', group, port, sender, local: h, geometry: im.geometry, ws: im.ws, node, demand: o.demand, timeout: 40 }), token);
    const rx = hosts.map((h, i) => recv(h, i + 1));
    await Promise.all(rx.map((d) => d.ready()));
    o.beforeSender?.(group, port);
    const wire0 = sender.counters().sent;
    const tx = sender.run(
      driverArgs({ role: 'push', transport: 'sfmc', group, port, sender, local: sender, geometry: im.geometry, ws: im.ws, image: im.path, hosts: hosts.length, rate: o.rate ?? 125_000_000, timeout: 40 }),
      token,
    );
    try {
      await tx.ready();
      o.afterSender?.(group, port);
      if (o.late?.length) {
        await rx[0]!.waitLine((l) => /^progress [3-9]/.test(l), 'a third of the push');
        const late = o.late.map((h, i) => recv(h, hosts.length + i + 1));
        rx.push(...late);
        await Promise.all(late.map((d) => d.ready()));
      }
      await o.during?.(rx);
      const codes = await Promise.all(rx.map((d) => d.exited));
      const wire = sender.counters().sent - wire0;
      tx.stop();
      const txCode = await tx.exited;
      return { tx: tx.result ?? {}, txCode, rx: rx.map((d) => d.result ?? {}), codes, drivers: rx, sender: tx, wire };
    } finally {
      for (const d of [...rx, tx]) d.kill();
    }
  }

  it('every host gets every granule intact, each crossing the parent link about once; the group reaches only its hosts', async () => {
    const outsider = c.hosts[6]!;
    const seen = outsider.watchGroup(c.group(ticket));
    try {
      const o = await push(c.hosts.slice(1, 4));
      expectIntact(o, img);
      o.rx.forEach((r) => expect(num(r, 'checksum_failures')).to.equal(0));
      // Three hosts by unicast would be about 3; multicast about 1 (headers, MACs, heartbeats).
      expect(o.wire / (img.data * 4096)).to.be.below(1.3);
      expect(seen(), 'group packets at a host outside the ticket').to.equal(0);
    } finally {
      outsider.sh('nft delete table netdev sfmcwatch');
    }
  });

  it('1% loss on every clone host is repaired by NACKs: every granule still right', async () => {
    const hosts = c.hosts.slice(1, 4);
    const dropped0 = hosts.map((h) => h.dropped());
    for (const h of hosts) h.loss(1);
    try {
      const o = await push(hosts);
      expectIntact(o, img);
      const dropped = hosts.reduce((a, h, i) => a + h.dropped() - dropped0[i]!, 0);
      expect(dropped, 'datagrams the loss rules dropped').to.be.above(50);
      expect(o.rx.reduce((a, r) => a + num(r, 'nack_entries'), 0)).to.be.above(0);
      expect(num(o.tx, 'repair_group') + num(o.tx, 'repair_unicast')).to.be.above(0);
    } finally {
      for (const h of hosts) h.loss(0);
    }
  });

  it('a host that joins late still gets everything; the end game for it goes by unicast', async () => {
    const o = await push(c.hosts.slice(1, 3), { late: [c.hosts[3]!], rate: 10_000_000 });
    expectIntact(o, img);
    const late = o.rx[2]!;
    expect(num(late, 'join_ns'), 'the late host joined after the push began').to.be.above(num(o.tx, 'start_ns'));
    expect(num(o.tx, 'push_granules'), 'the sender went on round the order for it').to.be.above(img.data);
    expect(num(o.tx, 'push_unicast') + num(o.tx, 'repair_unicast'), 'datagrams to the one host left').to.be.above(0);
  });

  it('a forged or foreign datagram is rejected (HMAC under the ticket key), and the push is intact', async () => {
    const forger = join(c.dir, 'forge.mjs');
    writeFileSync(forger, FORGER);
    const id = readFileSync(img.geometry).subarray(32, 48).toString('hex');
    const good = firstDataGranule(img.path);
    const s = c.hosts[0]!;
    let forged = 0;
    // From the sender's own host and address, under another ticket's token: right shape, wrong key.
    const forge = (mode: string, group: string, port: number) => {
      const r = s.sh(`node ${forger} ${mode} ${s.addr} ${group} ${port} ${newToken()} ${id} ${good} 200`);
      expect(r.code, r.err).to.equal(0);
      forged += Number(r.out.trim());
    };
    const o = await push(c.hosts.slice(1, 3), {
      beforeSender: (group, port) => forge('group', group, port),
      afterSender: (group, port) => forge('join', group, port),
    });
    expectIntact(o, img);
    expect(forged).to.equal(600);
    // Every receiver saw the group's 400 forged DATA and HEARTBEAT datagrams and refused them all on
    // their MAC; nothing forged reached a store (no checksum failure), the sender refused the JOINs.
    o.rx.forEach((r) => {
      expect(num(r, 'auth_failures'), 'forged datagrams refused on their MAC').to.equal(400);
      expect(num(r, 'checksum_failures')).to.equal(0);
    });
    expect(num(o.tx, 'auth_failures'), 'forged JOINs refused').to.equal(200);
    expect(num(o.tx, 'receivers')).to.equal(2);
  });

  it('duplicate demand requests arriving together are sent once', async () => {
    const n = 64;
    const o = await push(c.hosts.slice(1, 4), { demand: n });
    expectIntact(o, img);
    o.rx.forEach((r) => expect(num(r, 'demanded')).to.equal(n));
    // Three hosts asked for the same n granules: each went to the group about once.
    expect(num(o.tx, 'demand_granules'), 'demanded granules sent').to.be.within(1, n * 1.5);
    expect(num(o.tx, 'suppressed'), 'duplicate requests dropped').to.be.above(0);
    // They came early, not at the end of the push order where they sit.
    o.rx.forEach((r) => expect(num(r, 'demand_done_ns')).to.be.below(num(r, 'complete_ns')));
  });

  it('a slow receiver (tbf) does not lose everything: the sender paces to it', async () => {
    const slow = c.hosts[3]!;
    // The link to the slow host carries 24 Mbit/s (3 MB/s), the others' 1 Gbit/s and more.
    execFileSync('tc', ['qdisc', 'add', 'dev', slow.veth, 'root', 'tbf', 'rate', '24mbit', 'burst', '32kb', 'latency', '20ms']);
    try {
      const o = await push(c.hosts.slice(1, 4));
      expectIntact(o, img);
      expect(num(o.tx, 'rate_cuts'), 'the sender cut its rate').to.be.above(0);
      const s = o.rx[2]!;
      // What went to the group (a fast host saw it all) against what the slow host needed: unpaced,
      // 125 MB/s into 3 MB/s loses about 97% of every round of repairs, some 30 rounds in all.
      const needed = num(s, 'datagrams') - num(s, 'duplicates');
      expect(num(o.rx[0]!, 'datagrams') / needed, 'group datagrams per datagram the slow host needed').to.be.below(5);
    } finally {
      execFileSync('tc', ['qdisc', 'del', 'dev', slow.veth, 'root']);
    }
  });

  it('a host slower than the rate floor does not hold back the rest: they finish first, it gets everything', async () => {
    const slow = c.hosts[3]!;
    const small = image(c.dir, 4);
    // 4 Mbit/s (0.5 MB/s), below the sender's floor of 1 MB/s: the sender does not follow it down.
    execFileSync('tc', ['qdisc', 'add', 'dev', slow.veth, 'root', 'tbf', 'rate', '4mbit', 'burst', '16kb', 'latency', '20ms']);
    try {
      const o = await push(c.hosts.slice(1, 4), { image: small });
      expectIntact(o, small);
      const s = o.rx[2]!;
      for (const r of o.rx.slice(0, 2)) expect(num(r, 'complete_ns'), 'a fast host done before the slow one').to.be.below(num(s, 'complete_ns'));
      expect(num(o.tx, 'repair_unicast'), "the slow host's end game, by unicast").to.be.above(0);
    } finally {
      execFileSync('tc', ['qdisc', 'del', 'dev', slow.veth, 'root']);
    }
  });

  it('a host that dies mid-push is dropped without stalling the others', async () => {
    const victim = c.hosts[5]!;
    const o = await push([c.hosts[1]!, c.hosts[2]!, victim], {
      rate: 5_000_000,
      during: async (rx) => {
        await rx[0]!.waitLine((l) => /^progress [2-9]/.test(l), 'a fifth of the push');
        await victim.kill();  // its receiver, its namespaces and eth0 gone at once: no LEAVE
      },
    });
    expect(o.codes[2]).to.not.equal(0);
    expectIntact({ ...o, rx: o.rx.slice(0, 2), codes: o.codes.slice(0, 2) }, img);
    expect(num(o.tx, 'dead'), 'receivers dropped as dead').to.equal(1);
    expect(num(o.tx, 'all_complete_ns'), 'the sender saw every live host complete').to.be.above(0);
  });

  it('a run whose owner is killed outright leaves nothing once the next run sweeps', async () => {
    const script = join(c.dir, 'owner.mts');
    const hosts = join(projectRoot(), 'test', 'system', 'mcast-hosts.ts');
    writeFileSync(script, `import { McCluster } from ${JSON.stringify(hosts)};\nconst c = await McCluster.create(3);\nconsole.log(JSON.stringify({ id: c.id, dir: c.dir }));\nsetInterval(() => undefined, 1000);\n`);
    const owner = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'], env: process.env });
    const run = await new Promise<{ id: string; dir: string }>((resolve, reject) => {
      owner.stdout!.once('data', (d: Buffer) => resolve(JSON.parse(d.toString()) as { id: string; dir: string }));
      owner.once('exit', (code) => reject(new Error(`owner exited (${code}) before its cluster was up`)));
    });
    expect(leftovers(run).length, 'its cluster is up').to.be.above(3);
    owner.kill('SIGKILL');
    await new Promise((r) => owner.once('exit', r));
    // Its hosts' holders see their stdin close and end: namespaces and veths go with them.
    for (let i = 0; i < 50 && leftovers(run).some((l) => !l.startsWith('link ' + 'sfmc' + run.id + 'br') && !l.startsWith('dir')); i++) await sleep(100);
    sweep();
    expect(leftovers(run)).to.deep.equal([]);
  });
});

/** The first data granule of a synthetic image (granule = page: 4 KiB). */
function firstDataGranule(path: string): number {
  const b = readFileSync(path);
  for (let g = 0; g * 4096 < b.length; g++) if (b.subarray(g * 4096, (g + 1) * 4096).some((x) => x !== 0)) return g;
  throw new Error('no data page');
}

/**
 * Mode group: n forged DATA and n HEARTBEAT datagrams to the group; mode join: n JOINs to the sender; from
 * `addr`, all well formed (packet.h) and tagged under the key of another token. Prints the count.
 */
const FORGER = `
import { createHmac, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
const [mode, addr, group, port, token, id, granule, n] = process.argv.slice(2);
const key = createHmac('sha256', Buffer.from(token, 'hex')).update(Buffer.concat([Buffer.from('snowflock-mcast-1'), Buffer.from(id, 'hex')])).digest();
const pkt = (type, body, session) => {
  const h = Buffer.alloc(24);
  h.writeUInt32LE(0x434d4653, 0); h[4] = 2; h[5] = type; h.writeUInt16LE(body.length, 6);
  (session ?? randomBytes(8)).copy(h, 8);
  randomBytes(8).copy(h, 16);
  const m = Buffer.concat([h, body]);
  return Buffer.concat([m, createHmac('sha256', key).update(m).digest().subarray(0, 16)]);
};
const data = () => {
  const b = Buffer.alloc(32 + 1024);
  b.writeUInt32LE(Number(granule), 0); b.writeUInt32LE(0, 4); b.writeBigUInt64LE(0n, 8);
  b.writeUInt32LE(0, 16); b.writeUInt32LE(4096, 20); b.writeUInt16LE(1024, 24); b[26] = 1;
  randomBytes(1024).copy(b, 32);
  return pkt(1, b);
};
const heartbeat = () => pkt(2, Buffer.alloc(60));
const join = () => { const b = Buffer.alloc(20); Buffer.from(id, 'hex').copy(b); return pkt(3, b, Buffer.alloc(8)); };
const s = dgram.createSocket('udp4');
s.bind(0, addr, async () => {
  s.setMulticastInterface(addr);
  let sent = 0;
  const send = (b, a) => new Promise((r, j) => s.send(b, Number(port), a, (e) => (e ? j(e) : (sent++, r()))));
  for (let i = 0; i < Number(n); i++) {
    if (mode === 'group') await send(data(), group), await send(heartbeat(), group);
    else await send(join(), addr);
    if (i % 20 === 19) await new Promise((r) => setTimeout(r, 2));
  }
  s.close();
  console.log(sent);
});
`;
