/**
 * The plots of the benchmark results: SVG files in benchmarks/plots/, drawn by `npm run bench`
 * after the benchmarks ran (from whatever benchmarks/out/*.json holds, so a partial run redraws
 * what it has) and referenced from the plots section of RESULTS.md:
 *
 *   launchers.svg        hello world, wall time against N for every launcher (out/mpirun.json)
 *   vm-clones.svg        VM clones ready against N, cloned and cold-booted (out/vm.json)
 *   vm-pss.svg           the clones' summed PSS against N, with 5% of N × guest RAM (out/vm.json)
 *   traffic.svg          ping-pong bandwidth against message size, clones and Hydra (out/traffic.json)
 *   finalize-stalls.svg  stalls per 100 MPICH rings, per launcher: the finalize-stall benchmark's
 *                        hook. It writes out/finalize-stalls.json as
 *                        { "rows": [ { "launcher": "sfmpirun", "rings": 100, "stalls": 3 }, ... ] }
 *                        and this draws it; until then the plot says so.
 *
 * Run alone: node dist/benchmarks/plots.js
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { projectRoot } from '../src/common/paths.js';
import { barChart, lineChart, type Series } from './lib/svg.js';

const root = projectRoot();
const out = join(root, 'benchmarks', 'out');
const plots = join(root, 'benchmarks', 'plots');

function read<T>(name: string): T | null {
  const file = join(out, `${name}.json`);
  if (!existsSync(file)) return null;
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as T;
  } catch {
    return null;
  }
}

interface MpirunData {
  rows: Array<{ np: number; sfmpirun: number; sfmpirunOneClone: number; hydra: number; openmpi: number; baseline?: { sfmpirun: number } }>;
}
interface VmData {
  guestRamMiB: number;
  ready: Array<{ n: number; coldMs: number | null; cloneMs: number | null; coldPssMiB: number | null; clonePssMiB: number | null; cloneSettledPssMiB?: number | null }>;
}
interface TrafficData {
  rows: Array<{ bytes: number; clonesMibs: number; hydraMibs: number; baselineMibs?: number }>;
}
export interface FinalizeStallsData {
  rows: Array<{ launcher: string; rings: number; stalls: number }>;
}

const series = <R>(name: string, rows: R[], x: (r: R) => number, y: (r: R) => number | null | undefined, dashed = false): Series => ({
  name,
  points: rows.flatMap((r) => {
    const v = y(r);
    return v === null || v === undefined ? [] : [[x(r), v] as [number, number]];
  }),
  dashed,
});

/** Every plot, in the order of the list above. */
const PLOTS = ['launchers.svg', 'vm-clones.svg', 'vm-pss.svg', 'traffic.svg', 'finalize-stalls.svg'];

/**
 * Draws every plot it has data for; returns the plots to reference (relative to benchmarks/): those
 * drawn now and those an earlier run drew from data this one lacks, which stay as they were.
 */
export function drawPlots(): string[] {
  mkdirSync(plots, { recursive: true });
  const written: string[] = [];
  const write = (name: string, svg: string) => {
    writeFileSync(join(plots, name), svg);
    written.push(`plots/${name}`);
  };
  const m = read<MpirunData>('mpirun');
  if (m) {
    write(
      'launchers.svg',
      lineChart({
        title: 'MPICH hello world: wall time against N',
        xLabel: 'ranks (N)',
        yLabel: 'seconds (median)',
        logX: true,
        series: [
          series('sfmpirun, N clones', m.rows, (r) => r.np, (r) => r.sfmpirun),
          series('sfmpirun, one clone', m.rows, (r) => r.np, (r) => r.sfmpirunOneClone),
          series('mpiexec.hydra', m.rows, (r) => r.np, (r) => r.hydra),
          series('mpirun.openmpi', m.rows, (r) => r.np, (r) => r.openmpi),
          series('sfmpirun, baseline build', m.rows, (r) => r.np, (r) => r.baseline?.sfmpirun),
        ],
      }),
    );
  }
  const v = read<VmData>('vm');
  if (v) {
    write(
      'vm-clones.svg',
      lineChart({
        title: 'VM clones ready against N (TCG)',
        xLabel: 'VMs (N)',
        yLabel: 'seconds until all ready',
        series: [
          series('clone of the template', v.ready, (r) => r.n, (r) => (r.cloneMs === null ? null : r.cloneMs / 1000)),
          series('cold boot', v.ready, (r) => r.n, (r) => (r.coldMs === null ? null : r.coldMs / 1000)),
          series('goal: 32 in 2 s', [{ n: 32 }, { n: 1 }], (r) => r.n, () => 2, true),
        ],
      }),
    );
    write(
      'vm-pss.svg',
      lineChart({
        title: `VM clones: summed PSS against N (guest RAM ${v.guestRamMiB} MiB)`,
        xLabel: 'VMs (N)',
        yLabel: 'MiB',
        series: [
          series('clones, at ready', v.ready, (r) => r.n, (r) => r.clonePssMiB),
          series('clones, 5 s later', v.ready, (r) => r.n, (r) => r.cloneSettledPssMiB),
          series('cold boots', v.ready, (r) => r.n, (r) => r.coldPssMiB),
          series('goal: 5% of N × RAM', v.ready, (r) => r.n, (r) => 0.05 * r.n * v.guestRamMiB, true),
        ],
      }),
    );
  }
  const t = read<TrafficData>('traffic');
  if (t) {
    write(
      'traffic.svg',
      lineChart({
        title: 'Ping-pong bandwidth: two netns clones against Hydra over loopback',
        xLabel: 'message size (bytes)',
        yLabel: 'MiB/s (best)',
        logX: true,
        series: [
          series('netns clones (sfmpirun)', t.rows, (r) => r.bytes, (r) => r.clonesMibs),
          series('loopback (Hydra)', t.rows, (r) => r.bytes, (r) => r.hydraMibs),
          series('clones, baseline build', t.rows, (r) => r.bytes, (r) => r.baselineMibs),
        ],
      }),
    );
  }
  const s = read<FinalizeStallsData>('finalize-stalls');
  write(
    'finalize-stalls.svg',
    barChart({
      title: 'MPICH rings: stalls in MPI_Finalize per 100 runs',
      yLabel: 'stalls per 100 rings',
      groups: (s?.rows ?? []).map((r) => ({ label: r.launcher, bars: [{ name: 'stalls / 100 rings', value: r.rings ? (100 * r.stalls) / r.rings : 0 }] })),
      empty: 'no data yet: the finalize-stall benchmark writes benchmarks/out/finalize-stalls.json',
    }),
  );
  return PLOTS.map((f) => `plots/${f}`).filter((f) => written.includes(f) || existsSync(join(root, 'benchmarks', f)));
}

/** The plots section of RESULTS.md. */
export function plotsMarkdown(files: string[]): string {
  return ['## Plots', '', 'Drawn by `npm run bench` from benchmarks/out/*.json (benchmarks/plots.ts; alone: `node dist/benchmarks/plots.js`).', '', ...files.map((f) => `![${f}](${f})`), ''].join('\n');
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const { writeSection } = await import('./run.js');
  const files = drawPlots();
  writeSection('plots', plotsMarkdown(files));
  process.stdout.write(files.join('\n') + '\n');
}
