/**
 * The MPICH/UCX finalize stall over many rings (issue 8, finding 6): `--rings N` runs of
 * `sfmpirun --provider netns -v -np 4 ring` (or `--provider vm`: VM clones) from this tree, and
 * with `--baseline DIR` as many of another tree's sfmpirun (e.g. the commit before the fix,
 * built), run in turn (A B A B ...), so that the machine's drift hits both alike. For each run:
 * wall time, the run phase of --report, whether the watchdog released a barrier, whether the PMI
 * server released one on proof and how soon it saw the stall, and whether every rank's output is
 * complete. Prints JSON and a table.
 *
 *   npm run build && node dist/benchmarks/finalize-stall.js --rings 100 [--provider vm] [--baseline /path/to/old/tree] [--results]
 *
 * As root; set SNOWFLOCK_POOL and SNOWFLOCK_STATE_DIR on a shared machine. The ring is
 * test/programs/ring_late.c with no delay (every rank prints a line after MPI_Finalize).
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { writeSection, type Benchmark } from './run.js';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { projectRoot } from '../src/common/paths.js';

interface RingRun {
  tree: 'this' | 'baseline';
  code: number | null;
  wallMs: number;
  runPhaseMs: number | null;
  watchdog: boolean;
  proven: boolean;
  /** How soon the proven stall was seen (the server's bound), ms. */
  seenWithinMs: number | null;
  complete: boolean;
  /** For a failed run, the last line it printed on stderr. */
  error?: string;
}


function ringProgram(root: string): string {
  const out = join(root, 'test/.build/mpich/ring_late');
  mkdirSync(dirname(out), { recursive: true });
  execFileSync('mpicc.mpich', ['-O1', '-Wall', '-o', out, join(root, 'test/programs/ring_late.c')]);
  return out;
}

type Provider = 'netns' | 'vm';

function oneRing(tree: RingRun['tree'], cli: string, ring: string, scratch: string, n: number, provider: Provider): Promise<RingRun> {
  const report = join(scratch, `report-${tree}-${n}.json`);
  const t0 = performance.now();
  // VM clones mount the working directory: the project's, not the scratch directory in /tmp.
  const child = spawn(process.execPath, [cli, '--provider', provider, '-v', '--report', report, '-np', '4', ring, '0'], { stdio: ['ignore', 'pipe', 'pipe'], cwd: projectRoot() });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise((done) => {
    child.on('close', (code) => {
      const wallMs = performance.now() - t0;
      let runPhaseMs: number | null = null;
      try {
        runPhaseMs = (JSON.parse(readFileSync(report, 'utf8')) as { phases: { run?: number } }).phases.run ?? null;
      } catch {
        // no report: the run failed before it wrote one
      }
      rmSync(report, { force: true });
      const lines = out.split('\n').filter(Boolean).sort();
      const expected = ['rank 0 finalized', 'rank 1 finalized', 'rank 2 finalized', 'rank 3 finalized', 'ring token 8 after 2 laps of 4 ranks'];
      const seen = /stall seen within (\d+) ms/.exec(err);
      done({
        tree,
        code,
        wallMs,
        runPhaseMs,
        watchdog: /released by the finalize watchdog/.test(err),
        proven: /PMI barrier \d+ released after \d+ ms without rank/.test(err),
        seenWithinMs: seen ? Number(seen[1]) : null,
        complete: JSON.stringify(lines) === JSON.stringify(expected),
        ...(code !== 0 ? { error: err.trim().split('\n').pop() ?? '' } : {}),
      });
    });
  });
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

function summary(runs: RingRun[]) {
  const f = (xs: Array<number | null>) => xs.filter((x): x is number => x !== null);
  const clean = runs.filter((r) => !r.watchdog && !r.proven);
  const proven = runs.filter((r) => r.proven);
  return {
    runs: runs.length,
    failed: runs.filter((r) => r.code !== 0 || !r.complete).length,
    watchdog: runs.filter((r) => r.watchdog).length,
    proven: proven.length,
    noStall: clean.length,
    wallMedianMs: median(runs.map((r) => r.wallMs)),
    wallMaxMs: Math.max(...runs.map((r) => r.wallMs)),
    runPhaseMedianNoStallMs: median(f(clean.map((r) => r.runPhaseMs))),
    runPhaseMedianProvenMs: median(f(proven.map((r) => r.runPhaseMs))),
    runPhaseMedianWatchdogMs: median(f(runs.filter((r) => r.watchdog).map((r) => r.runPhaseMs))),
    seenWithinMedianMs: median(f(proven.map((r) => r.seenWithinMs))),
    seenWithinMaxMs: proven.length ? Math.max(...f(proven.map((r) => r.seenWithinMs))) : null,
  };
}

/** `rings` rings of this tree (and of a baseline tree, alternated), summarised, with the Markdown for RESULTS.md. */
export async function benchFinalizeStall(rings: number, baseline: string | null, provider: Provider = 'netns'): Promise<{ data: unknown; markdown: string }> {
  const root = projectRoot();
  // One ring program for both trees: only the launcher differs.
  const ring = ringProgram(root);
  const trees: Array<[RingRun['tree'], string]> = [['this', join(root, 'dist/launcher/bin/sfmpirun.js')]];
  if (baseline) trees.push(['baseline', launcherOf(baseline)]);
  const scratch = mkdtempSync(join(tmpdir(), 'sf-finalize-bench-'));
  const runs: RingRun[] = [];
  const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ')[0];
  const loadBefore = load();
  for (let i = 0; i < rings; i++) {
    for (const [tree, cli] of trees) runs.push(await oneRing(tree, cli, ring, scratch, i, provider));
    if ((i + 1) % 10 === 0) process.stderr.write(`${i + 1}/${rings} rings\n`);
  }
  rmSync(scratch, { recursive: true, force: true });
  const result = {
    date: new Date().toISOString(),
    provider,
    rings,
    loadAverage: { before: loadBefore, after: load() },
    this: summary(runs.filter((r) => r.tree === 'this')),
    ...(baseline ? { baseline: summary(runs.filter((r) => r.tree === 'baseline')) } : {}),
    runs,
  };
  const summaries: Array<[string, ReturnType<typeof summary>]> = [['this', result.this], ...(result.baseline ? [['baseline', result.baseline] as [string, ReturnType<typeof summary>]] : [])];
  const ms = (x: number | null) => (x === null ? '-' : `${Math.round(x)}`);
  const rows = summaries.map(
    ([t, s]) =>
      `| ${t} | ${s.runs} | ${s.watchdog} | ${s.proven} | ${s.noStall} | ${s.failed} | ${ms(s.wallMedianMs)} | ${ms(s.wallMaxMs)} | ${ms(s.runPhaseMedianNoStallMs)} | ${ms(s.runPhaseMedianProvenMs)} | ${ms(s.runPhaseMedianWatchdogMs)} | ${ms(s.seenWithinMaxMs)} |`,
  );
  const markdown = [
    `## MPICH finalize stall: released on proof, not by the watchdog${provider === 'vm' ? ' (VM clones)' : ''}`,
    '',
    `${rings} rings of 4 MPICH ranks (\`sfmpirun --provider ${provider} -np 4 ring\`, UCX over TCP between clones), ${result.date}, load average ${result.loadAverage.before} before and ${result.loadAverage.after} after.` +
      ' "released on proof": the PMI server saw every missing rank stuck in UCX\'s endpoint close (launcher/pmi/rank-probe.ts); "watchdog": the 3 s last resort.',
    '',
    '| tree | rings | watchdog | released on proof | no stall | failed | wall median (ms) | wall max (ms) | run phase, no stall (ms) | run phase, proven (ms) | run phase, watchdog (ms) | stall seen within, max (ms) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...rows,
    '',
    `Command: \`npm run build && node dist/benchmarks/finalize-stall.js --rings ${rings}${provider === 'vm' ? ' --provider vm' : ''}${baseline ? ` --baseline ${baseline}` : ''}\` (as root; a baseline tree is an older checkout, built).`,
    '',
  ].join('\n');
  return { data: { ...result, runs: undefined, perRun: runs }, markdown };
}

/** The sfmpirun of another checkout, in this layout or the one before launcher/bin/. */
function launcherOf(tree: string): string {
  const now = join(tree, 'dist/launcher/bin/sfmpirun.js');
  return existsSync(now) ? now : join(tree, 'dist/launcher/sfmpirun.js');
}

export const finalizeStallBenchmark: Benchmark = {
  name: 'finalize-stall',
  async run({ rounds }) {
    return benchFinalizeStall((rounds ?? 5) * 20, null);
  },
};

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const rings = Number(args[args.indexOf('--rings') + 1] ?? 100) || 100;
  const baseline = args.includes('--baseline') ? resolve(args[args.indexOf('--baseline') + 1]!) : null;
  const provider = args.includes('--provider') ? args[args.indexOf('--provider') + 1] : 'netns';
  if (provider !== 'netns' && provider !== 'vm') throw new Error(`--provider ${provider}: netns or vm`);
  const { data, markdown } = await benchFinalizeStall(rings, baseline, provider);
  console.log(JSON.stringify(data, (k, v) => (k === 'perRun' ? undefined : v), 2));
  console.log(markdown);
  if (args.includes('--results')) writeSection(provider === 'vm' ? 'finalize-stall-vm' : 'finalize-stall', markdown);
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) await main();
