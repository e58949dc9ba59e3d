/**
 * Memory on demand (issue 11), measured side by side on simulated hosts (src/memory/testbed.ts:
 * the parent's host and a clone host, namespaces on one underlay bridge; the clone host has a
 * private /dev/shm and cannot open the template):
 *
 *   ready     time until N clones on the clone host are agent-ready (N = 1, 8, 16), five ways:
 *             memtap on demand; memtap with the recorded working set fetched ahead (REAP,
 *             --fill ws-only); local copy-on-write clones on the parent's host (today's path, no
 *             network); an eager copy of the RAM file to the clone host, then local clones there;
 *             QEMU postcopy migration from a paused source QEMU per clone. Bytes to the clone host.
 *   hello     one clone, boot to agent-ready and an MPI hello (a singleton): pages fetched over
 *             guest pages, bytes, faults (goal: at most 5% of guest pages).
 *   latency   a fault as a process sees it (memtouch: a private mapping of the memtap file, one
 *             byte of each of 2000 random pages): fetched over the underlay, answered from
 *             memtap's store (FUSE alone), a zero page, the page cache; memtap's own histogram.
 *   Each also on a slow link: tc tbf at 1 Gbit/s on every host's underlay link, and 0.2 ms more
 *   each way through netdelay (native/memory/netdelay.c) on the parent's host: this kernel has no
 *   netem (CONFIG_NET_SCH_NETEM is not set), so `tc netem rate 1gbit delay 0.2ms` is made of two.
 *
 * Clones are started the same way for every variant (benchmarks/lib/vmclone.ts). Rounds
 * interleave the variants, so that the load of this shared machine falls on them alike.
 *
 * npm run bench -- --only memory [--rounds 3], or directly:
 *   npx tsx benchmarks/memory.ts [--rounds 3] [--sizes 1,8,16] [--slow-sizes 1,8] [--only ready,hello,latency] [--no-slow]
 *     [--net A.B.C: the underlay, default .250 of SNOWFLOCK_POOL]
 */
import { copyFileSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { settings } from '../src/common/config.js';
import { logger } from '../src/common/log.js';
import { projectRoot } from '../src/common/paths.js';
import { readDescriptor, type Descriptor } from '../src/memory/descriptor.js';
import { Helper, nativeProgram } from '../src/memory/helper.js';
import { enterPrefix } from '../src/memory/place.js';
import { MemServer, newToken } from '../src/memory/server.js';
import { MemTap, type FillMode, type TapCounters } from '../src/memory/tap.js';
import { createTestbed, testbedLeftovers, type Testbed, type TestHost } from '../src/memory/testbed.js';
import type { Template } from '../src/providers/vm/checkpoint.js';
import { VmProvider, type VmCheckpointDetail } from '../src/providers/vm/provider.js';
import { benchProgram } from './lib/programs.js';
import { run as runIn, startAll, startSource, stopClone, type CloneSpec, type ReadyClone, type Source } from './lib/vmclone.js';
import { median, type Benchmark, type BenchmarkResult } from './run.js';

const log = logger('bench-memory');
const PREFIX = 'sfmm';

interface Options {
  rounds: number;
  sizes: number[];
  slowSizes: number[];
  only: string[];
  slow: boolean;
  /** The underlay's first three octets (a pool of the caller's). */
  net: string;
}

/** A link between the hosts: the bare veth, or rate-limited and delayed. */
interface Link {
  name: string;
  rate: string | null;
  delayUs: number;
}
const VETH: Link = { name: 'veth', rate: null, delayUs: 0 };
const SLOW: Link = { name: '1 Gbit/s, +0.2 ms each way', rate: '1gbit', delayUs: 200 };

interface Ctx {
  o: Options;
  bed: Testbed;
  parent: TestHost;
  clone: TestHost;
  image: VmCheckpointDetail['image'];
  tpl: Template;
  desc: Descriptor;
  hello: string;
  link: Link;
}

let port = 42000;
const nextPort = () => (port >= 42999 ? (port = 42000) : port++);
let seq = 0;
const nd = () => settings().nativeDir;

async function setLink(c: Ctx, link: Link): Promise<void> {
  c.link = link;
  await c.bed.shape(link.rate);
}

/** How the clone host reaches target (ADDR:PORT on the parent's host) on this link: directly, or through the delaying relay. */
async function via(c: Ctx, target: string): Promise<{ address: string; close: () => Promise<void> }> {
  if (!c.link.delayUs) return { address: target, close: async () => undefined };
  const listen = `${c.parent.address}:${nextPort()}`;
  const { helper } = await Helper.start([nativeProgram(nd(), 'netdelay'), '--listen', listen, '--to', target, '--delay-us', String(c.link.delayUs)], {
    label: 'netdelay', token: '00', readyPrefix: 'listening ', timeoutMs: 10_000, prefix: enterPrefix(c.parent, ['net']), lifeline: nd(),
  });
  return { address: listen, close: async () => void (await helper.stop()) };
}

function cloneSpec(c: Ctx, id: number, ram: CloneSpec['ram'], incoming: CloneSpec['incoming'], where: TestHost | null, env?: Record<string, string>): CloneSpec {
  return {
    dir: join(c.bed.dir, `vm-${seq++}`), kernel: c.image.kernel.vmlinuz, initramfs: c.image.initramfs, ramMiB: c.tpl.ramMiB, accel: c.tpl.accel,
    id, ram, incoming, timeoutMs: 300_000, ...(where ? { prefix: enterPrefix(where, ['net', 'mnt']) } : {}), ...(env ? { env } : {}),
  };
}

const stopAll = async (ks: ReadyClone[]) => {
  for (const k of ks) await stopClone(k);
};

/** A memserver on the parent's host and a memtap on the clone host, for the length of fn. */
async function withTap<T>(
  c: Ctx,
  o: { fill: FillMode; workset?: string; recordWorkset?: string; spinUs?: number; prefill?: boolean; splice?: boolean },
  fn: (t: MemTap, t0: number, shipped: string) => Promise<T>,
): Promise<T> {
  const shipped = join(c.bed.dir, `desc-${seq++}`);
  copyFileSync(c.desc.path, shipped);
  const token = newToken();
  const s = await MemServer.start({
    nativeDir: nd(), descriptor: c.desc.path, ram: c.tpl.ram, listen: `${c.parent.address}:${nextPort()}`, token, host: c.parent, noVerify: true,
    ...(o.workset ? { workset: o.workset } : {}), ...(o.recordWorkset ? { recordWorkset: o.recordWorkset } : {}), ...(o.spinUs !== undefined ? { spinUs: o.spinUs } : {}),
  });
  const path = await via(c, s.address);
  let t: MemTap | null = null;
  try {
    const t0 = performance.now();
    t = await MemTap.start({
      nativeDir: nd(), descriptor: shipped, server: path.address, token, mountpoint: join(c.bed.dir, `mnt-${seq++}`), host: c.clone,
      record: async () => undefined, fill: o.fill, ...(o.spinUs !== undefined ? { spinUs: o.spinUs } : {}), ...(o.splice ? { splice: true } : {}),
    });
    if (o.prefill) await t.filled(300_000);
    return await fn(t, t0, shipped);
  } finally {
    await t?.stop();
    await path.close();
    await s.stop();
  }
}

function tapClones(c: Ctx, t: MemTap, n: number): CloneSpec[] {
  const env = { LD_PRELOAD: nativeProgram(nd(), 'libnohuge.so'), SF_NOHUGE_PATH: t.ramPath };
  return Array.from({ length: n }, (_, i) => cloneSpec(c, i, { file: t.ramPath }, { state: t.statePath }, c.clone, env));
}

// ---- ready: N clones on the clone host ----

interface ReadyRun {
  ms: number;
  bytes: number;
  /** postcopy: bytes once every migration completed; memtap: pages fetched; ws: pages still faulted */
  extra: number;
}

async function readyMemtap(c: Ctx, n: number, fill: FillMode, workset?: string): Promise<ReadyRun> {
  return withTap(c, { fill, ...(workset ? { workset } : {}) }, async (t, t0) => {
    const ks = await startAll(tapClones(c, t, n));
    const ms = performance.now() - t0;
    const x = await t.counters();
    await stopAll(ks);
    return { ms, bytes: x.bytesReceived, extra: fill === 'none' ? x.pagesFetched : x.demandPages };
  });
}

async function readyLocal(c: Ctx, n: number): Promise<ReadyRun> {
  const t0 = performance.now();
  const ks = await startAll(Array.from({ length: n }, (_, i) => cloneSpec(c, i, { file: c.tpl.ram }, { state: c.tpl.state }, null)));
  const ms = performance.now() - t0;
  await stopAll(ks);
  return { ms, bytes: 0, extra: 0 };
}

/** Receives one TCP stream into a file (1 MiB reads), then exits: the eager copy's far end. */
const RECEIVE = `import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); buf = bytearray(1 << 20); mv = memoryview(buf)
with open(sys.argv[3], "wb") as f:
    while (n := c.recv_into(buf)): f.write(mv[:n])`;
/** Sends a file over one TCP stream with sendfile (no copy through user space). */
const SEND = `import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendfile(open(sys.argv[3], "rb")); c.close()`;

/**
 * The RAM file to the clone host over one TCP stream on the link (sendfile into a 1 MiB receive
 * loop, into its /dev/shm), then local clones there. The device state (tens of KB) goes by the
 * shared disk. On the slow link the copy gets the rate limit but not the relay: a bulk stream's
 * time is its bandwidth, and the relay's copying would be the bottleneck (this favours eager).
 */
async function readyEager(c: Ctx, n: number): Promise<ReadyRun> {
  const dst = `/dev/shm/${PREFIX}-eager-${seq++}`;
  const state = join(c.bed.dir, `eager-state-${seq++}`);
  copyFileSync(c.tpl.state, state);
  const p = nextPort();
  // The parent's network and the machine's files (the template); the clone host's network and files.
  const enter = (h: TestHost) => ['nsenter', '-t', String(h.pid), '-n', ...(h === c.clone ? ['-m'] : []), '--'];
  const t0 = performance.now();
  const recv = execa(enter(c.clone)[0]!, [...enter(c.clone).slice(1), 'python3', '-c', RECEIVE, c.clone.address, String(p), dst], { reject: false, buffer: false, stdout: 'pipe' });
  await new Promise<void>((res, rej) => {
    recv.stdout!.once('data', () => res());
    recv.catch(rej);
  });
  const send = await execa(enter(c.parent)[0]!, [...enter(c.parent).slice(1), 'python3', '-c', SEND, c.clone.address, String(p), c.tpl.ram], { reject: false });
  const got = await recv;
  if (send.exitCode !== 0 || got.exitCode !== 0) throw new Error(`eager copy failed: ${send.stderr} ${String(got.stderr ?? '')}`);
  const copyMs = performance.now() - t0;
  try {
    const ks = await startAll(Array.from({ length: n }, (_, i) => cloneSpec(c, i, { file: dst }, { state }, c.clone)));
    const ms = performance.now() - t0;
    await stopAll(ks);
    return { ms, bytes: statSync(c.tpl.ram).size, extra: copyMs };
  } finally {
    await c.clone.sh(`rm -f ${dst}`);
  }
}

/**
 * Postcopy: a paused source QEMU per clone on the parent's host (restored from the template,
 * made before the clock starts, like the memserver), each migrated to a destination QEMU on the
 * clone host with anonymous RAM, switched over at once. Bytes: RAM sent by the sources when the
 * last clone is ready, and once every migration completed (QEMU sends zero pages as flags).
 */
async function readyPostcopy(c: Ctx, n: number): Promise<ReadyRun> {
  const sources: Source[] = [];
  const relays: Array<{ close: () => Promise<void> }> = [];
  // The sources map a sparse copy of the RAM file, not the template: migrating reads all of their
  // RAM, and a fault on a hole of a tmpfs file allocates the page in the file (of the template,
  // it would fill every hole its checkpoint punched).
  const ram = `/dev/shm/${PREFIX}-postcopy-${seq++}`;
  try {
    await execa('cp', ['--sparse=always', c.tpl.ram, ram]);
    for (let i = 0; i < n; i++) {
      const base = cloneSpec(c, i, { file: ram }, { state: c.tpl.state }, null);
      // In the parent's network namespace only: its files are the machine's (the template).
      sources.push(await startSource({ ...base, prefix: enterPrefix(c.parent, ['net']), state: c.tpl.state }));
    }
    const t0 = performance.now();
    const specs = await Promise.all(
      sources.map(async (src, i) => {
        const listen = `${c.clone.address}:${nextPort()}`;
        // The relay sits on the parent's side: the source connects to it, it to the destination.
        const r = c.link.delayUs ? await via(c, listen) : { address: listen, close: async () => undefined };
        relays.push(r);
        return cloneSpec(c, i, { anonymous: true }, { listen, start: () => src.migrateTo(r.address) }, c.clone);
      }),
    );
    const ks = await startAll(specs);
    const ms = performance.now() - t0;
    const atReady = (await Promise.all(sources.map((s) => s.progress()))).reduce((a, p) => a + p.transferred, 0);
    for (let i = 0; i < 600; i++) {
      const ps = await Promise.all(sources.map((s) => s.progress()));
      if (ps.every((p) => p.status === 'completed' || p.status === 'failed')) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const total = (await Promise.all(sources.map((s) => s.progress()))).reduce((a, p) => a + p.transferred, 0);
    await stopAll(ks);
    return { ms, bytes: atReady, extra: total };
  } finally {
    for (const s of sources) await s.stop();
    for (const r of relays) await r.close();
    rmSync(ram, { force: true });
  }
}

interface ReadyRow {
  n: number;
  link: string;
  memtapMs: number;
  memtapBytes: number;
  memtapPages: number;
  wsMs: number;
  wsBytes: number;
  wsDemandPages: number;
  localMs: number;
  eagerMs: number;
  eagerCopyMs: number;
  eagerBytes: number;
  postcopyMs: number;
  postcopyBytesAtReady: number;
  postcopyBytes: number;
}

async function benchReady(c: Ctx, ws: string): Promise<ReadyRow[]> {
  const rows: ReadyRow[] = [];
  for (const link of c.o.slow ? [VETH, SLOW] : [VETH]) {
    await setLink(c, link);
    for (const n of link === VETH ? c.o.sizes : c.o.slowSizes) {
      const runs: Record<string, ReadyRun[]> = { memtap: [], ws: [], local: [], eager: [], postcopy: [] };
      for (let r = 0; r < c.o.rounds; r++) {
        const order: Array<[string, () => Promise<ReadyRun>]> = [
          ['memtap', () => readyMemtap(c, n, 'none')],
          ['ws', () => readyMemtap(c, n, 'ws-only', ws)],
          ['local', () => readyLocal(c, n)],
          ['eager', () => readyEager(c, n)],
          ['postcopy', () => readyPostcopy(c, n)],
        ];
        // Rotate the order each round: no variant always runs first (or last) in a round.
        for (let k = 0; k < order.length; k++) {
          const [name, f] = order[(k + r) % order.length]!;
          const x = await f();
          runs[name]!.push(x);
          log.info(`ready n=${n} ${link.name} round ${r} ${name}: ${x.ms.toFixed(0)} ms, ${x.bytes} B`);
          process.stderr.write(`memory: ready n=${n} ${link.name} round ${r} ${name}: ${(x.ms / 1000).toFixed(2)} s\n`);
        }
      }
      const m = (k: string, f: (x: ReadyRun) => number) => median(runs[k]!.map(f));
      rows.push({
        n, link: link.name,
        memtapMs: m('memtap', (x) => x.ms), memtapBytes: m('memtap', (x) => x.bytes), memtapPages: m('memtap', (x) => x.extra),
        wsMs: m('ws', (x) => x.ms), wsBytes: m('ws', (x) => x.bytes), wsDemandPages: m('ws', (x) => x.extra),
        localMs: m('local', (x) => x.ms),
        eagerMs: m('eager', (x) => x.ms), eagerCopyMs: m('eager', (x) => x.extra), eagerBytes: m('eager', (x) => x.bytes),
        postcopyMs: m('postcopy', (x) => x.ms), postcopyBytesAtReady: m('postcopy', (x) => x.bytes), postcopyBytes: m('postcopy', (x) => x.extra),
      });
    }
  }
  await setLink(c, VETH);
  return rows;
}

// ---- hello: pages fetched for boot and an MPI hello ----

interface HelloRow {
  link: string;
  fill: string;
  readyMs: number;
  helloMs: number;
  pagesFetched: number;
  demandPages: number;
  pctGuest: number;
  bytesReceived: number;
  reads: number;
  maxRead: number;
  faultP50Us: number;
  faultP99Us: number;
}

async function helloRun(c: Ctx, fill: FillMode, workset?: string, recordWorkset?: string) {
  return withTap(c, { fill, ...(workset ? { workset } : {}), ...(recordWorkset ? { recordWorkset } : {}) }, async (t, t0) => {
    const [k] = await startAll(tapClones(c, t, 1));
    const readyMs = performance.now() - t0;
    const r = await runIn(k!, c.hello);
    const helloMs = performance.now() - t0;
    await stopClone(k!);
    if (!/hello rank 0 of 1/.test(r.out)) throw new Error(`the MPI hello failed in the clone: ${r.out.trim()}; memtap: ${t.failedWith ?? 'ok'}`);
    const x: TapCounters = await t.counters();
    return { readyMs, helloMs, x };
  });
}

async function benchHello(c: Ctx, ws: string): Promise<HelloRow[]> {
  const rows: HelloRow[] = [];
  for (const link of c.o.slow ? [VETH, SLOW] : [VETH]) {
    await setLink(c, link);
    const runs: Record<string, Awaited<ReturnType<typeof helloRun>>[]> = { none: [], 'ws-only': [] };
    for (let r = 0; r < c.o.rounds; r++) {
      for (const fill of (r % 2 ? ['ws-only', 'none'] : ['none', 'ws-only']) as FillMode[]) {
        runs[fill]!.push(await helloRun(c, fill, fill === 'ws-only' ? ws : undefined));
      }
    }
    for (const fill of ['none', 'ws-only'] as const) {
      const xs = runs[fill]!;
      const m = (f: (x: (typeof xs)[0]) => number) => median(xs.map(f));
      rows.push({
        link: link.name, fill: fill === 'none' ? 'on demand' : 'working set ahead (ws-only)',
        readyMs: m((x) => x.readyMs), helloMs: m((x) => x.helloMs), pagesFetched: m((x) => x.x.pagesFetched), demandPages: m((x) => x.x.demandPages),
        pctGuest: m((x) => (100 * x.x.pagesFetched) / x.x.guestPages), bytesReceived: m((x) => x.x.bytesReceived), reads: m((x) => x.x.reads),
        maxRead: m((x) => x.x.maxRead), faultP50Us: m((x) => x.x.faultP50Us), faultP99Us: m((x) => x.x.faultP99Us),
      });
    }
  }
  await setLink(c, VETH);
  return rows;
}

// ---- latency: faults as a process sees them ----

interface LatencyRow {
  link: string;
  what: string;
  p50Us: number;
  p99Us: number;
  meanUs: number;
  tapP50Us: number | null;
  tapP99Us: number | null;
}

async function touch(c: Ctx, t: MemTap, desc: string, cls: string, seed: number) {
  const r = await c.clone.sh(`${nativeProgram(nd(), 'memtouch')} ${t.ramPath} --desc ${desc} --class ${cls} --pages 2000 --seed ${seed}`);
  if (r.exitCode !== 0) throw new Error(`memtouch: ${r.stderr}`);
  return JSON.parse(r.stdout) as { p50Us: number; p99Us: number; meanUs: number };
}

async function benchLatency(c: Ctx): Promise<LatencyRow[]> {
  const rows: LatencyRow[] = [];
  for (const link of c.o.slow ? [VETH, SLOW] : [VETH]) {
    await setLink(c, link);
    const acc: Record<string, { p50: number[]; p99: number[]; mean: number[]; tp50: number[]; tp99: number[] }> = {};
    const add = (what: string, x: { p50Us: number; p99Us: number; meanUs: number }, tap?: TapCounters) => {
      const a = (acc[what] ??= { p50: [], p99: [], mean: [], tp50: [], tp99: [] });
      a.p50.push(x.p50Us), a.p99.push(x.p99Us), a.mean.push(x.meanUs);
      if (tap) a.tp50.push(tap.faultP50Us), a.tp99.push(tap.faultP99Us);
    };
    for (let r = 0; r < c.o.rounds; r++) {
      await withTap(c, { fill: 'none' }, async (t, _t0, shipped) => {
        add('data page, fetched on demand', await touch(c, t, shipped, 'data', 7 + r), await t.counters());
        add('data page, again (page cache)', await touch(c, t, shipped, 'data', 7 + r));
        add('zero page (answered by memtap)', await touch(c, t, shipped, 'zero', 7 + r));
      });
      // FUSE alone: every page already in memtap's store (filled before the file was opened, so
      // none in the page cache), each fault a READ answered without the network.
      await withTap(c, { fill: 'seq', prefill: true }, async (t, _t0, shipped) => {
        add("data page, in memtap's store (FUSE round trip alone)", await touch(c, t, shipped, 'data', 7 + r));
      });
      // The same, replies spliced from a memfd store (fuse_reply_data, FUSE_BUF_SPLICE_MOVE).
      await withTap(c, { fill: 'seq', prefill: true, splice: true }, async (t, _t0, shipped) => {
        add("data page, in memtap's store, reply spliced (memtap --splice)", await touch(c, t, shipped, 'data', 7 + r));
      });
    }
    for (const [what, a] of Object.entries(acc)) {
      rows.push({
        link: link.name, what, p50Us: median(a.p50), p99Us: median(a.p99), meanUs: median(a.mean),
        tapP50Us: a.tp50.length ? median(a.tp50) : null, tapP99Us: a.tp99.length ? median(a.tp99) : null,
      });
    }
  }
  await setLink(c, VETH);
  return rows;
}

// ---- report ----

const mib = (b: number) => `${(b / 1048576).toFixed(1)} MiB`;
const s2 = (ms: number) => `${(ms / 1000).toFixed(2)} s`;

interface Result {
  date: string;
  load: number[];
  command: string;
  template: Template;
  descriptor: Omit<Descriptor, 'dataMap' | 'state'>;
  /** Bytes of the template's RAM file in /dev/shm at the start and at the end of the run. */
  ramFileAllocated: number;
  ramFileAllocatedAfter: number;
  worksetPages: number;
  ready: ReadyRow[];
  hello: HelloRow[];
  latency: LatencyRow[];
}

function markdown(r: Result, o: Options): string {
  const d = r.descriptor;
  const pct = (n: number) => `${((100 * n) / d.pages).toFixed(1)}%`;
  const out: string[] = ['## Memory on demand: VM clones on another host', ''];
  out.push(
    `Simulated hosts (src/memory/testbed.ts): the parent's host (memserver, postcopy sources) and a clone host whose /dev/shm is private, joined by veths on one bridge. ` +
      `Template: the vm provider's, of an MPICH hello image, ${r.template.ramMiB} MiB guest RAM, ${r.template.accel.toUpperCase()}, guest kernel with init_on_free=1. ` +
      `${r.date}, ${cpus().length} cores shared with other jobs (load average ${r.load.map((x) => x.toFixed(1)).join(' at start, ')} at the end); median of ${o.rounds} rounds, variants interleaved. ` +
      `Slow link: this kernel has no netem (CONFIG_NET_SCH_NETEM is not set), so \`tc qdisc replace dev eth0 root tbf rate 1gbit burst 256kb latency 50ms\` on every host gives the rate, and netdelay (native/memory/netdelay.c, a relay on the parent's host holding every byte 0.2 ms in each direction) the delay, of \`netem rate 1gbit delay 0.2ms\`.`,
  );
  out.push('', `Command: \`${r.command}\` (as root).`);
  out.push('', '### Descriptor and avoidance', '');
  out.push(
    `Descriptor of the template (4 KiB granules): ${(d.fileBytes / 1024).toFixed(0)} KiB (device state ${(d.stateBytes / 1024).toFixed(0)} KiB) for ${mib(d.ramSize)} of RAM. ` +
      `Pages that hold data: ${d.dataPages} of ${d.pages} (${pct(d.dataPages)}); avoided by the zero-page map: never touched by the guest ${d.holePages} (${pct(d.holePages)}), freed and zeroed under init_on_free ${d.zeroedPages} (${pct(d.zeroedPages)}). ` +
      `The RAM file in /dev/shm holds ${mib(r.ramFileAllocated)} at the start of the run (its zero pages were punched out at checkpoint time, contents unchanged), ${mib(r.ramFileAllocatedAfter)} at the end: a local clone's fault on a hole of a tmpfs file, read or copy-on-write, allocates that page in the file, so the local clones fill back the holes their guests touch. Recorded working set: ${r.worksetPages} pages.`,
  );
  if (r.ready.length) {
    out.push('', '### Time until N clones on the clone host are agent-ready', '');
    out.push('| N | link | memtap, on demand | memtap, working set ahead (faults left) | local copy-on-write (parent\'s host) | eager copy, then local (copy alone) | postcopy, one source each | memtap / eager | memtap / postcopy | bytes to the clone host: memtap | working set ahead | eager | postcopy at ready (when done) |');
    out.push('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const x of r.ready) {
      out.push(
        `| ${x.n} | ${x.link} | ${s2(x.memtapMs)} | ${s2(x.wsMs)} (${x.wsDemandPages} pages) | ${s2(x.localMs)} | ${s2(x.eagerMs)} (${s2(x.eagerCopyMs)}) | ${s2(x.postcopyMs)} | ` +
          `${(x.memtapMs / x.eagerMs).toFixed(2)} | ${(x.memtapMs / x.postcopyMs).toFixed(2)} | ${mib(x.memtapBytes)} (${x.memtapPages} pages) | ${mib(x.wsBytes)} | ${mib(x.eagerBytes)} | ${mib(x.postcopyBytesAtReady)} (${mib(x.postcopyBytes)}) |`,
      );
    }
    out.push(
      '',
      'memtap: from starting the memtap (the memserver already up) to the last clone ready; its bytes are per clone host, whatever N. Working set ahead: the memserver hands the memtap the working set recorded on earlier runs (`--fill ws-only`, REAP, what the vm provider does); faults left = pages still fetched on demand. ' +
        'Eager: from the start of the copy (one TCP stream, sendfile, into the clone host\'s /dev/shm) to the last clone ready. Postcopy: from starting the destinations (the paused sources already up) to the last clone ready; every clone gets the whole RAM of its own source (QEMU 7.2 refuses x-ignore-shared with postcopy-ram), N times over the link.',
    );
    out.push('', `Reading: a clone host gets about 4 MiB (about 1000 pages) for any number of clones with memory on demand, against the whole 320 MiB file for an eager copy and 118 MiB per clone for postcopy (its sources send every data page, one source per clone). With the working set fetched ahead the clones fault a few dozen pages and come up close to local clones; on demand alone, the first clones wait on about 1000 round trips. The clones boot under TCG on 2 shared cores: as N grows every variant tends to the local time plus its transfer, and at N = 16 the machine's load, not the link, decides the order of memtap on demand and eager; compare ratios of one row, not rows of different runs.`);
  }
  if (r.hello.length) {
    out.push('', '### One clone: boot to agent-ready, then an MPI hello', '');
    out.push('| link | fill | pages fetched | of guest pages | of them on demand | bytes received | READs to memtap | largest READ | fault p50 | fault p99 | ready | hello done |');
    out.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const h of r.hello) {
      out.push(`| ${h.link} | ${h.fill} | ${h.pagesFetched} | ${h.pctGuest.toFixed(1)}% | ${h.demandPages} | ${mib(h.bytesReceived)} | ${h.reads} | ${h.maxRead >> 10} KiB | ${h.faultP50Us.toFixed(0)} µs | ${h.faultP99Us.toFixed(0)} µs | ${s2(h.readyMs)} | ${s2(h.helloMs)} |`);
    }
    out.push('', 'Fault p50/p99: memtap\'s histogram, from a READ reaching memtap to its answer, for reads that waited for the network.');
  }
  if (r.latency.length) {
    out.push('', '### Fault latency as a process sees it (memtouch, 2000 random pages a run)', '');
    out.push('| link | fault | p50 | p99 | mean | inside memtap: p50 | p99 |', '|---|---|---:|---:|---:|---:|---:|');
    for (const l of r.latency) {
      const tap = l.tapP50Us === null ? '— | —' : `${l.tapP50Us.toFixed(1)} µs | ${l.tapP99Us!.toFixed(1)} µs`;
      out.push(`| ${l.link} | ${l.what} | ${l.p50Us.toFixed(1)} µs | ${l.p99Us.toFixed(1)} µs | ${l.meanUs.toFixed(1)} µs | ${tap} |`);
    }
  }
  return out.join('\n');
}

/** The underlay: .250 of the caller's pool (SNOWFLOCK_POOL), whose first two octets are its own. */
function defaultNet(): string {
  const [a, b] = settings().pool.split('.');
  return `${a}.${b}.250`;
}

function parseOptions(argv: string[], rounds?: number): Options {
  const arg = (name: string, def: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 ? argv[i + 1]! : def;
  };
  return {
    rounds: rounds ?? Number(arg('rounds', '3')),
    sizes: arg('sizes', '1,8,16').split(',').map(Number),
    slowSizes: arg('slow-sizes', '1,8').split(',').map(Number),
    only: arg('only', 'ready,hello,latency').split(','),
    slow: !argv.includes('--no-slow'),
    net: arg('net', process.env.SNOWFLOCK_BENCH_MEMORY_NET ?? defaultNet()),
  };
}

export async function benchMemory(o: Options, command: string): Promise<BenchmarkResult> {
  const provider = new VmProvider(nd());
  const why = await provider.unavailable();
  if (why) throw new Error(why);
  const hello = benchProgram('hello', 'mpich');
  const cp = await provider.checkpoint({ programs: [hello], mpi: 'mpich' }, log);
  const { image, template } = cp.detail;
  if (!template) throw new Error('no template');
  const load0 = loadavg()[0]!;
  const root = join(settings().stateDir, 'bench-memory');
  mkdirSync(root, { recursive: true });
  const bed = await createTestbed({ prefix: PREFIX, names: ['parent', 'clone'], net: o.net, root });
  const [parent, clone] = bed.hosts as [TestHost, TestHost];
  const desc = readDescriptor(template.descriptor);
  const c: Ctx = { o, bed, parent, clone, image, tpl: template, desc, hello, link: VETH };
  const { dataMap: _m, state: _s, ...descriptor } = desc;
  const result: Result = {
    date: new Date().toISOString(), load: [load0], command, template, descriptor, ramFileAllocated: statSync(template.ram).blocks * 512, ramFileAllocatedAfter: 0, worksetPages: 0,
    ready: [], hello: [], latency: [],
  };
  try {
    // The working set of this template for the "working set ahead" rows: one clone from boot to
    // the end of an MPI hello, on demand, as the memserver records it.
    const ws = join(bed.dir, 'memory.ws');
    await helloRun(c, 'none', undefined, ws);
    result.worksetPages = (statSync(ws).size - 24 - template.key.length - 4) / 4;
    if (o.only.includes('hello')) result.hello = await benchHello(c, ws);
    if (o.only.includes('latency')) result.latency = await benchLatency(c);
    if (o.only.includes('ready')) result.ready = await benchReady(c, ws);
  } finally {
    await bed.destroy();
    const left = testbedLeftovers(bed, PREFIX);
    if (left.length) process.stderr.write(`memory: left behind: ${left.join('; ')}\n`);
  }
  result.load.push(loadavg()[0]!);
  result.ramFileAllocatedAfter = statSync(template.ram).blocks * 512;
  return { data: result, markdown: markdown(result, o) };
}

export const memoryBenchmark: Benchmark = {
  name: 'memory',
  run: ({ rounds }) =>
    benchMemory(parseOptions([], rounds), `npm run build && SNOWFLOCK_STATE_DIR=${settings().stateDir} SNOWFLOCK_POOL=${settings().pool} npm run bench -- --only memory${rounds ? ` --rounds ${rounds}` : ''}`),
};

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  const o = parseOptions(argv);
  const command = `SNOWFLOCK_STATE_DIR=${settings().stateDir} npx tsx benchmarks/memory.ts ${argv.join(' ')}`.trim();
  benchMemory(o, command)
    .then(async (r) => {
      const { writeSection } = await import('./run.js');
      mkdirSync(join(projectRoot(), 'benchmarks', 'out'), { recursive: true });
      writeFileSync(join(projectRoot(), 'benchmarks', 'out', 'memory.json'), JSON.stringify(r.data, null, 2) + '\n');
      writeSection('memory', r.markdown);
      process.stdout.write(r.markdown + '\n');
    })
    .catch((e: unknown) => {
      process.stderr.write(`memory: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 1;
    });
}

