/**
 * MPI traffic between two netns clones against the same two ranks under Hydra on the host, side
 * by side: benchmarks/programs/pingpong.c (MPICH over UCX, TCP forced on both sides:
 * UCX_TLS=tcp,self; under Hydra the ranks talk over loopback, UCX_NET_DEVICES=lo), messages of 1 B
 * to 4 MiB. Rounds alternate the two; per size the best of all rounds is kept (the program already
 * keeps the best of its trials: on a shared host, polling ranks are descheduled at random).
 *
 * Also the same ping-pong between two VM clones (TCG here), with the baseline build's in turn when
 * one is given (--baseline): what the guests' emulated copies cost (machine.ts, cpuModel). At most
 * 3 rounds of it (about 11 s a run under TCG).
 *
 * Run: npm run build && npm run bench -- --only traffic [--rounds R]   (as root)
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../src/common/paths.js';
import { benchProgram } from './lib/programs.js';
import type { Benchmark, BenchmarkResult } from './run.js';

export interface PingPongPoint {
  bytes: number;
  /** One-way time, µs. */
  usec: number;
  mibs: number;
}

export interface TrafficRow {
  bytes: number;
  clonesUsec: number;
  hydraUsec: number;
  clonesMibs: number;
  hydraMibs: number;
  /** The same between clones of the baseline build (--baseline), when one was given. */
  baselineUsec?: number;
  baselineMibs?: number;
  /** Between two VM clones, this build and the baseline's. */
  vmUsec?: number;
  vmMibs?: number;
  baselineVmUsec?: number;
  baselineVmMibs?: number;
}

/** Rounds of the VM ping-pong at most: a run takes about 11 s under TCG. */
const VM_ROUNDS = 3;

/** "pingpong BYTES USEC MIBS" lines of the program. */
export function parsePingPong(stdout: string): PingPongPoint[] {
  return stdout.split('\n').flatMap((l) => {
    const m = /^pingpong (\d+) ([\d.]+) ([\d.]+)$/.exec(l.trim());
    return m ? [{ bytes: Number(m[1]), usec: Number(m[2]), mibs: Number(m[3]) }] : [];
  });
}

function runOnce(argv: string[]): PingPongPoint[] {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 300_000 });
  const points = parsePingPong(r.stdout ?? '');
  if (r.status !== 0 || points.length === 0) throw new Error(`${argv.join(' ')} failed (${r.status ?? r.signal}): ${(r.stderr ?? '').slice(0, 1000)}`);
  return points;
}

/** Best per size over runs: the shortest time (and so the highest bandwidth). */
function best(runs: PingPongPoint[][]): Map<number, PingPongPoint> {
  const out = new Map<number, PingPongPoint>();
  for (const run of runs) for (const p of run) if (!out.has(p.bytes) || p.usec < out.get(p.bytes)!.usec) out.set(p.bytes, p);
  return out;
}

export async function benchTraffic(rounds = 5, baseline?: string): Promise<{ when: string; rounds: number; load: [number, number]; rows: TrafficRow[]; baselineFrom?: string }> {
  const program = benchProgram('pingpong', 'mpich');
  const root = projectRoot();
  const dist = join(root, 'dist/launcher/bin/sfmpirun.js');
  if (!existsSync(dist)) throw new Error('bench traffic: build first (npm run build)');
  const sfArgs = ['--provider', 'netns', '-np', '2', '-genv', 'UCX_TLS', 'tcp,self', program];
  const sf = [process.execPath, dist, ...sfArgs];
  const base = baseline ? [process.execPath, baseline, ...sfArgs] : null;
  const old: PingPongPoint[][] = [];
  const hydra = ['mpiexec.hydra', '-n', '2', '-genv', 'UCX_TLS', 'tcp,self', '-genv', 'UCX_NET_DEVICES', 'lo', program];
  const load0 = loadavg()[0]!;
  const clones: PingPongPoint[][] = [];
  const host: PingPongPoint[][] = [];
  for (let i = 0; i < rounds; i++) {
    // Alternate which goes first, so that a load that builds up in a round falls on both.
    if (i % 2 === 0) {
      clones.push(runOnce(sf));
      if (base) old.push(runOnce(base));
      host.push(runOnce(hydra));
    } else {
      host.push(runOnce(hydra));
      if (base) old.push(runOnce(base));
      clones.push(runOnce(sf));
    }
    process.stderr.write(`bench traffic: round ${i + 1}/${rounds}\n`);
  }
  const vmArgs = ['--provider', 'vm', ...sfArgs.slice(2)];
  const vms: PingPongPoint[][] = [];
  const oldVms: PingPongPoint[][] = [];
  for (let i = 0; i < Math.min(rounds, VM_ROUNDS); i++) {
    const pair: [PingPongPoint[][], string[]][] = [[vms, [process.execPath, dist, ...vmArgs]]];
    if (baseline) pair.push([oldVms, [process.execPath, baseline, ...vmArgs]]);
    for (const [into, argv] of i % 2 === 0 ? pair : [...pair].reverse()) into.push(runOnce(argv));
    process.stderr.write(`bench traffic: VM round ${i + 1}\n`);
  }
  const c = best(clones);
  const h = best(host);
  const o = best(old);
  const v = best(vms);
  const ov = best(oldVms);
  const rows = [...c.keys()]
    .filter((b) => h.has(b))
    .sort((a, b) => a - b)
    .map((bytes) => ({
      bytes,
      clonesUsec: c.get(bytes)!.usec,
      hydraUsec: h.get(bytes)!.usec,
      clonesMibs: c.get(bytes)!.mibs,
      hydraMibs: h.get(bytes)!.mibs,
      ...(o.has(bytes) ? { baselineUsec: o.get(bytes)!.usec, baselineMibs: o.get(bytes)!.mibs } : {}),
      ...(v.has(bytes) ? { vmUsec: v.get(bytes)!.usec, vmMibs: v.get(bytes)!.mibs } : {}),
      ...(ov.has(bytes) ? { baselineVmUsec: ov.get(bytes)!.usec, baselineVmMibs: ov.get(bytes)!.mibs } : {}),
    }));
  return { when: new Date().toISOString(), rounds, load: [load0, loadavg()[0]!], rows, ...(baseline ? { baselineFrom: baseline } : {}) };
}

const size = (b: number) => (b >= 1 << 20 ? `${b / (1 << 20)} MiB` : b >= 1024 ? `${b / 1024} KiB` : `${b} B`);

export function trafficMarkdown(r: Awaited<ReturnType<typeof benchTraffic>>): string {
  const peak = (k: 'clonesMibs' | 'hydraMibs' | 'baselineMibs') => Math.max(...r.rows.map((x) => x[k] ?? 0));
  const withBase = r.rows.some((x) => x.baselineMibs !== undefined);
  const small = r.rows.filter((x) => x.bytes <= 64);
  const lat = (k: 'clonesUsec' | 'hydraUsec') => Math.min(...small.map((x) => x[k]));
  const shown = r.rows.filter((x) => [1, 64, 1024, 16384, 65536, 262144, 1 << 20, 4 << 20].includes(x.bytes));
  return [
    '## MPI traffic between two netns clones against Hydra over loopback',
    '',
    `Ping-pong (benchmarks/programs/pingpong.c, MPICH over UCX with \`UCX_TLS=tcp,self\`), 2 ranks: one per netns clone through ` +
      `sfmpirun, or both on the host under \`mpiexec.hydra\` over loopback (\`UCX_NET_DEVICES=lo\`). Best of ${r.rounds} alternating rounds ` +
      `per size (${r.when}, load average ${r.load[0].toFixed(1)} before and ${r.load[1].toFixed(1)} after on this shared 2-core host).`,
    '',
    `Peak bandwidth: clones ${peak('clonesMibs').toFixed(0)} MiB/s, Hydra ${peak('hydraMibs').toFixed(0)} MiB/s: **${(peak('clonesMibs') / peak('hydraMibs')).toFixed(2)}×** (goal ≥ 0.9×). ` +
      `Small-message latency (best of 1-64 B): clones ${lat('clonesUsec').toFixed(1)} µs, Hydra ${lat('hydraUsec').toFixed(1)} µs: ${(lat('clonesUsec') / lat('hydraUsec')).toFixed(2)}× (goal ≤ 1×).`,
    '',
    ...(withBase
      ? [`Baseline build (${r.baselineFrom}), same rounds: peak ${peak('baselineMibs').toFixed(0)} MiB/s, ${(peak('baselineMibs') / peak('hydraMibs')).toFixed(2)}× Hydra's.`, '']
      : []),
    '| size | clones one-way | Hydra one-way | clones MiB/s | Hydra MiB/s | bandwidth clones / Hydra |' + (withBase ? ' baseline clones MiB/s | baseline / Hydra |' : ''),
    '|---:|---:|---:|---:|---:|---:|' + (withBase ? '---:|---:|' : ''),
    ...shown.map(
      (x) =>
        `| ${size(x.bytes)} | ${x.clonesUsec.toFixed(1)} µs | ${x.hydraUsec.toFixed(1)} µs | ${x.clonesMibs.toFixed(0)} | ${x.hydraMibs.toFixed(0)} | ${(x.clonesMibs / x.hydraMibs).toFixed(2)} |` +
        (withBase ? ` ${x.baselineMibs?.toFixed(0) ?? '–'} | ${x.baselineMibs === undefined ? '–' : (x.baselineMibs / x.hydraMibs).toFixed(2)} |` : ''),
    ),
    '',
    ...vmMarkdown(r.rows, shown),
    `Command: \`npm run build && npm run bench -- --only traffic --rounds ${r.rounds}${r.baselineFrom ? ` --baseline ${r.baselineFrom}` : ''}\` (as root; every size is in benchmarks/out/traffic.json).`,
    '',
  ].join('\n');
}

/** The VM clones' table: this build, and the baseline's where it ran. */
function vmMarkdown(rows: TrafficRow[], shown: TrafficRow[]): string[] {
  if (!rows.some((x) => x.vmMibs !== undefined)) return [];
  const withBase = rows.some((x) => x.baselineVmMibs !== undefined);
  const peak = (k: 'vmMibs' | 'baselineVmMibs') => Math.max(...rows.map((x) => x[k] ?? 0));
  return [
    `Between two VM clones (TCG, the same program and UCX settings, best of up to ${VM_ROUNDS} rounds${withBase ? ', alternating with the baseline build' : ''}): peak ${peak('vmMibs').toFixed(0)} MiB/s` +
      (withBase ? `, baseline ${peak('baselineVmMibs').toFixed(0)} MiB/s: **${(peak('vmMibs') / peak('baselineVmMibs')).toFixed(2)}×**.` : '.'),
    '',
    '| size | VM clones one-way | VM clones MiB/s |' + (withBase ? ' baseline one-way | baseline MiB/s | this / baseline (bandwidth) |' : ''),
    '|---:|---:|---:|' + (withBase ? '---:|---:|---:|' : ''),
    ...shown
      .filter((x) => x.vmUsec !== undefined)
      .map(
        (x) =>
          `| ${size(x.bytes)} | ${x.vmUsec!.toFixed(1)} µs | ${x.vmMibs!.toFixed(1)} |` +
          (withBase ? ` ${x.baselineVmUsec?.toFixed(1) ?? '–'} µs | ${x.baselineVmMibs?.toFixed(1) ?? '–'} | ${x.baselineVmMibs ? (x.vmMibs! / x.baselineVmMibs).toFixed(2) : '–'} |` : ''),
      ),
    '',
  ];
}

export const trafficBenchmark: Benchmark = {
  name: 'traffic',
  async run({ rounds, baseline }): Promise<BenchmarkResult> {
    const r = await benchTraffic(rounds, baseline);
    return { data: r, markdown: trafficMarkdown(r) };
  },
};
