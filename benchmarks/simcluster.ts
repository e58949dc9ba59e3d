/**
 * Simulated clusters and one ticket network across their hosts:
 * - `up` time for 1, 3 and 8 hosts (to every node idle) and `down` time;
 * - ping-pong latency and bandwidth between two namespace clones on two simulated hosts over the
 *   ticket's VXLAN network, against the same between the two hosts over the plain underlay: TCP
 *   (NetPIPE's NPtcp, iperf3) and MPI (MPICH's NetPIPE, NPmpich2, two ranks started the same way in
 *   both cases: Hydra's manual launcher, one proxy per side).
 * Rounds interleave the two sides (underlay, vxlan, underlay, ...) and ratios are taken per round, so
 * that the machine's drift cancels out; medians are reported.
 *
 *   npx tsx benchmarks/simcluster.ts [--rounds R] [--only up|net]
 * Exports simclusterBenchmark for the harness (benchmarks/run.ts).
 */
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { down, hostCommand, up, type SimClusterRecord, type SimHostRecord } from '../src/hosts/simulated.js';
import { identify, killAll, withDescendants } from '../src/common/processes.js';
import { createOverlay, overlay, type BatchRunner } from '../src/hosts/vxlan.js';
import { fmt, stats, type Stats } from './lib/stats.js';


// ---------------------------------------------------------------------------------------------

export async function benchUpDown(sizes: number[], rounds: number): Promise<{ hosts: number; up: Stats; down: Stats }[]> {
  const out = [];
  for (const n of sizes) {
    const ups: number[] = [];
    const downs: number[] = [];
    for (let r = 0; r < rounds; r++) {
      const t0 = performance.now();
      const rec = await up({ hosts: n, name: `bench${n}` });
      const t1 = performance.now();
      await down(rec.name);
      downs.push(performance.now() - t1);
      ups.push(t1 - t0);
    }
    out.push({ hosts: n, up: stats(ups), down: stats(downs) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------------

const CLONE = 'sfscbc';
const cloneAddress = (i: number): string => `10.98.0.${10 + i}`;

/** argv on a host, or in its clone's namespace when `clone` is set. */
function onHost(h: SimHostRecord, argv: string[], clone: boolean, cwd: string) {
  const { file, args } = hostCommand(h, clone ? ['ip', 'netns', 'exec', CLONE, ...argv] : argv, { cwd });
  return execa(file, args, { reject: false, timeout: 300_000 });
}

function runnerOn(h: SimHostRecord): BatchRunner {
  return async (tool, args, input) => {
    const { file, args: a } = hostCommand(h, [tool, ...args]);
    const r = await execa(file, a, { input, reject: false });
    if (r.exitCode !== 0) throw new Error(`${tool} on ${h.name}: ${r.stderr.trim()}`);
  };
}

/** One ticket network over the two hosts, with one clone on each. */
async function ticketNetwork(rec: SimClusterRecord): Promise<void> {
  await Promise.all(
    rec.hosts.map(async (h, i) => {
      const o = overlay({ ticketId: 'bench1', local: h.address, peers: rec.hosts.filter((x) => x !== h).map((x) => x.address), underlayDev: 'eth0', underlayMtu: 1500, bridge: 'sfscbb', vxlan: 'sfscbx' });
      await createOverlay(o, runnerOn(h));
      await runnerOn(h)('ip', ['-batch', '-'], [`netns add ${CLONE}`, `link add ${CLONE}-h mtu ${o.mtu} type veth peer name eth0 mtu ${o.mtu} netns ${CLONE}`, `link set ${CLONE}-h master ${o.bridge} up`].join('\n') + '\n');
      await runnerOn(h)('ip', ['-n', CLONE, '-batch', '-'], [`link set lo up`, `addr add ${cloneAddress(i)}/24 dev eth0`, `link set eth0 up`].join('\n') + '\n');
    }),
  );
}

/** NetPIPE's one output line for a fixed size: [bytes, Mbps, seconds one way]. */
function netpipeLine(file: string): { usec: number; gbps: number } {
  const line = readFileSync(file, 'utf8').trim().split('\n').pop()!.trim().split(/\s+/).map(Number);
  return { usec: line[2]! * 1e6, gbps: line[1]! / 1000 };
}

async function npTcp(rec: SimClusterRecord, clone: boolean, bytes: number, repeats: number, port: number, work: string): Promise<{ usec: number; gbps: number }> {
  const [a, b] = rec.hosts;
  const server = onHost(b!, ['NPtcp', '-P', String(port), '-p', '0', '-l', String(bytes), '-u', String(bytes), '-n', String(repeats)], clone, work);
  await new Promise((r) => setTimeout(r, 300));
  const out = join(work, `nptcp-${port}.out`);
  const client = await onHost(a!, ['NPtcp', '-P', String(port), '-p', '0', '-l', String(bytes), '-u', String(bytes), '-n', String(repeats), '-h', clone ? cloneAddress(1) : b!.address, '-o', out], clone, work);
  await server;
  if (client.exitCode !== 0) throw new Error(`NPtcp: ${client.stderr}`);
  return netpipeLine(out);
}

async function iperf(rec: SimClusterRecord, clone: boolean, port: number, work: string): Promise<number> {
  const [a, b] = rec.hosts;
  const server = onHost(b!, ['iperf3', '-s', '-1', '-p', String(port)], clone, work);
  await new Promise((r) => setTimeout(r, 300));
  const client = await onHost(a!, ['iperf3', '-c', clone ? cloneAddress(1) : b!.address, '-p', String(port), '-t', '3', '-J'], clone, work);
  await server;
  const j = JSON.parse(client.stdout) as { end: { sum_received: { bits_per_second: number } } };
  return j.end.sum_received.bits_per_second / 1e9;
}

/**
 * MPICH's NetPIPE between one rank on each side. Hydra's manual launcher prints the two proxy
 * command lines; we start each where its rank belongs (host or clone), so that the launch path is
 * the same for both sides and only the network differs.
 */
async function npMpi(rec: SimClusterRecord, clone: boolean, bytes: number, repeats: number, work: string, tag: string): Promise<{ usec: number; gbps: number }> {
  const [a, b] = rec.hosts;
  const addrs = clone ? [cloneAddress(0), cloneAddress(1)] : [a!.address, b!.address];
  const out = join(work, `npmpi-${tag}.out`);
  const { file, args } = hostCommand(a!, [...(clone ? ['ip', 'netns', 'exec', CLONE] : []), 'mpiexec.hydra', '-launcher', 'manual', '-hosts', addrs.join(','), '-n', '2', '-ppn', '1', 'NPmpich2', '-p', '0', '-l', String(bytes), '-u', String(bytes), '-n', String(repeats), '-o', out], { cwd: work });
  const mpiexec = execa(file, args, { reject: false, timeout: 300_000 });
  const launches: string[] = [];
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    mpiexec.stdout!.on('data', (d: Buffer) => {
      buf += String(d);
      // Whole lines only: a chunk may end in the middle of one.
      for (const m of buf.matchAll(/^HYDRA_LAUNCH: (.*)\n/gm)) if (!launches.includes(m[1]!)) launches.push(m[1]!);
      if (buf.includes('HYDRA_LAUNCH_END')) resolve();
    });
    void mpiexec.then((r) => reject(new Error(`mpiexec ended before launching: ${r.stderr}`)));
  });
  const proxies = launches.map((l, i) => onHost(rec.hosts[i]!, l.trim().split(/\s+/), clone, work));
  // MPICH over UCX's TCP often hangs in MPI_Finalize (DESIGN.md), after NetPIPE wrote its result:
  // once the result is there, a run gets a few seconds to end, then it and its ranks are killed.
  const ended = Promise.all([mpiexec, ...proxies]);
  let finished = false;
  void ended.then(() => (finished = true));
  while (!finished && !resultIn(out)) await new Promise((r) => setTimeout(r, 100));
  const grace = Date.now() + 3000;
  while (!finished && Date.now() < grace) await new Promise((r) => setTimeout(r, 100));
  if (!finished) {
    hungInFinalize++;
    killAll(withDescendants([mpiexec.pid, ...proxies.map((p) => p.pid)].map((pid) => (pid ? (identify(pid) ?? undefined) : undefined))));
  }
  const [m, ...results] = await ended;
  if (!resultIn(out)) throw new Error(`NPmpich2 failed: ${m.stderr} ${results.map((r) => r.stderr).join(' ')}`);
  return netpipeLine(out);
}

/** Runs of NPmpich2 that NetPIPE finished but MPI_Finalize did not. */
let hungInFinalize = 0;

function resultIn(file: string): boolean {
  try {
    return /\d/.test(readFileSync(file, 'utf8'));
  } catch {
    return false;
  }
}

export interface NetResult {
  tcpLatencyUs: { underlay: Stats; vxlan: Stats; ratio: Stats };
  tcpGbps: { underlay: Stats; vxlan: Stats; ratio: Stats };
  mpiLatencyUs: { underlay: Stats; vxlan: Stats; ratio: Stats };
  mpiGbps: { underlay: Stats; vxlan: Stats; ratio: Stats };
  /** NPmpich2 runs killed after their result because MPI_Finalize hung, of all MPI runs. */
  mpiHungInFinalize: string;
}

export async function benchNet(rounds: number): Promise<NetResult> {
  const rec = await up({ hosts: 2, name: 'benchnet' });
  try {
    await ticketNetwork(rec);
    const work = join(rec.dir, 'bench');
    mkdirSync(work, { recursive: true });
    const acc = { tl: [[], []], tb: [[], []], ml: [[], []], mb: [[], []] } as Record<string, [number[], number[]]>;
    for (let r = 0; r < rounds; r++) {
      for (const [side, clone] of [[0, false], [1, true]] as const) {
        acc.tl![side].push((await npTcp(rec, clone, 1, 10000, 5400 + 2 * r + side, work)).usec);
        acc.tb![side].push(await iperf(rec, clone, 5500 + 2 * r + side, work));
        acc.ml![side].push((await npMpi(rec, clone, 1, 10000, work, `lat-${r}-${side}`)).usec);
        acc.mb![side].push((await npMpi(rec, clone, 4 << 20, 50, work, `bw-${r}-${side}`)).gbps);
      }
    }
    const pair = (k: string) => ({ underlay: stats(acc[k]![0]), vxlan: stats(acc[k]![1]), ratio: stats(acc[k]![1].map((v, i) => v / acc[k]![0][i]!)) });
    return { tcpLatencyUs: pair('tl'), tcpGbps: pair('tb'), mpiLatencyUs: pair('ml'), mpiGbps: pair('mb'), mpiHungInFinalize: `${hungInFinalize} of ${4 * rounds}` };
  } finally {
    await down(rec.name);
  }
}

export function markdown(updown: Awaited<ReturnType<typeof benchUpDown>> | null, net: NetResult | null, rounds: number): string {
  const lines: string[] = [];
  if (updown) {
    lines.push(`Simulated cluster up (to every node idle) and down, ms, median (min-max) of ${rounds}:`, '', '| hosts | up | down |', '|---|---|---|');
    for (const u of updown) lines.push(`| ${u.hosts} | ${fmt(u.up, 0)} | ${fmt(u.down, 0)} |`);
    lines.push('');
  }
  if (net) {
    lines.push(
      `Two simulated hosts; clone to clone over the ticket's VXLAN vs host to host over the underlay, median (min-max) of ${rounds} interleaved rounds; ratio vxlan/underlay per round:`,
      '',
      '| measure | underlay | vxlan | ratio |',
      '|---|---|---|---|',
      `| TCP ping-pong 1 B (NPtcp), µs one way | ${fmt(net.tcpLatencyUs.underlay)} | ${fmt(net.tcpLatencyUs.vxlan)} | ${fmt(net.tcpLatencyUs.ratio)} |`,
      `| TCP stream (iperf3, 3 s), Gb/s | ${fmt(net.tcpGbps.underlay)} | ${fmt(net.tcpGbps.vxlan)} | ${fmt(net.tcpGbps.ratio)} |`,
      `| MPI ping-pong 1 B (NPmpich2, MPICH/UCX), µs one way | ${fmt(net.mpiLatencyUs.underlay)} | ${fmt(net.mpiLatencyUs.vxlan)} | ${fmt(net.mpiLatencyUs.ratio)} |`,
      `| MPI ping-pong 4 MiB (NPmpich2), Gb/s | ${fmt(net.mpiGbps.underlay)} | ${fmt(net.mpiGbps.vxlan)} | ${fmt(net.mpiGbps.ratio)} |`,
      '',
      `MPI runs that hung in MPI_Finalize after NetPIPE's result (killed after 3 s): ${net.mpiHungInFinalize}.`,
      '',
    );
  }
  return lines.join('\n');
}

export const simclusterBenchmark = {
  name: 'simcluster',
  async run({ rounds = 3 }: { rounds?: number }) {
    const updown = await benchUpDown([1, 3, 8], rounds);
    const net = await benchNet(rounds);
    return { data: { updown, net }, markdown: markdown(updown, net, rounds) + '\nCommand: `npx tsx benchmarks/simcluster.ts --rounds ' + rounds + '`\n' };
  },
};

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const args = process.argv.slice(2);
  const ri = args.indexOf('--rounds');
  const rounds = ri >= 0 ? Number(args[ri + 1]) : 3;
  const only = args.includes('--only') ? args[args.indexOf('--only') + 1] : undefined;
  process.env.SNOWFLOCK_STATE_DIR ??= join(tmpdir(), 'sfsc-bench');
  const updown = only === 'net' ? null : await benchUpDown([1, 3, 8], rounds);
  const net = only === 'up' ? null : await benchNet(rounds);
  const md = markdown(updown, net, rounds);
  // Where the harness keeps every benchmark's data (benchmarks/out/NAME.json).
  const outDir = join(fileURLToPath(new URL('.', import.meta.url)), 'out');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'simcluster.json'), JSON.stringify({ updown, net }, null, 2));
  process.stdout.write(md + '\n');
}
