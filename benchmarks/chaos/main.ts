/**
 * `npm run chaos [-- options]`: MPI jobs under sfmpirun (from dist/), each killed at a random point,
 * each checked for leftovers and for its exit status against the README's table (issue 8, harness 7).
 *
 *   --providers netns,vm        which providers; netns:400,vm:100 gives each its own count
 *   --jobs N                    jobs per provider without a count (default 20)
 *   --seed S                    the run's seed (default: a fresh one, printed first)
 *   --only K[,K...]             only these jobs (numbered per provider; any number), to replay one:
 *                               the same --seed, --providers and --kinds give the same plans
 *   --kinds k[,k...]            only these kinds of kill (see plan.ts)
 *   --grace-ms MS               how long after a kill (or exit) leftovers may take to go (2000)
 *   --observe-ms MS             how long to keep watching a leak to time it (5000)
 *   --results                   also write the chaos section of benchmarks/RESULTS.md
 *
 * One line per job on stdout (key=value), problems indented under a failed job, then a summary
 * table; everything in benchmarks/out/chaos.json; logs of failed jobs in benchmarks/out/chaos/.
 * Exits 1 when any job failed. Runs as root (namespaces, nftables, QEMU); every job has its own state
 * directory under /tmp/sfch-*, and the address pool 10.238.0.0/17 unless SNOWFLOCK_POOL says otherwise (the isolation tests use the
 * rest of 10.238/16 and 10.239/16).
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { projectRoot } from '../../src/common/paths.js';
import { writeSection } from '../run.js';
import { requireBuild, runChaosJob, type HarnessOptions, type JobResult } from './job.js';
import { KINDS, MPIS, planJob, type JobPlan, type Kind, type ProviderName } from './plan.js';
import { freshSeed } from './random.js';
import { jobLine, markdownSection, problems, summarize, summaryTable } from './report.js';

export interface ChaosOptions {
  seed: number;
  counts: Partial<Record<ProviderName, number>>;
  only?: number[];
  kinds?: Kind[];
  graceMs: number;
  observeMs: number;
  results: boolean;
}

const USAGE = 'use --providers netns,vm (or netns:N,vm:M), --jobs N, --seed S, --only K[,K], --kinds k[,k], --grace-ms MS, --observe-ms MS, --results';

export function parseChaosArgs(argv: string[]): ChaosOptions {
  let seed: number | undefined;
  let jobs = 20;
  let providers = 'netns';
  const o: Omit<ChaosOptions, 'seed' | 'counts'> = { graceMs: 2000, observeMs: 5000, results: false };
  const num = (flag: string, v: string | undefined): number => {
    const n = Number(v);
    if (v === undefined || !Number.isInteger(n) || n < 0) throw new Error(`${flag} needs a whole number, not ${JSON.stringify(v)}; ${USAGE}`);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--seed') seed = num(a, argv[++i]);
    else if (a === '--jobs') jobs = num(a, argv[++i]);
    else if (a === '--providers') providers = argv[++i] ?? '';
    else if (a === '--only') o.only = (argv[++i] ?? '').split(',').map((k) => num(a, k));
    else if (a === '--kinds') o.kinds = (argv[++i] ?? '').split(',') as Kind[];
    else if (a === '--grace-ms') o.graceMs = num(a, argv[++i]);
    else if (a === '--observe-ms') o.observeMs = num(a, argv[++i]);
    else if (a === '--results') o.results = true;
    else throw new Error(`unknown argument ${a}; ${USAGE}`);
  }
  const counts: ChaosOptions['counts'] = {};
  for (const part of providers.split(',').filter(Boolean)) {
    const [name, count] = part.split(':') as [string, string | undefined];
    if (name !== 'netns' && name !== 'vm') throw new Error(`unknown provider ${name}; ${USAGE}`);
    counts[name] = count === undefined ? jobs : num('--providers', count);
  }
  if (Object.keys(counts).length === 0) throw new Error(`no provider given; ${USAGE}`);
  const known = new Set<string>([...KINDS.netns, ...KINDS.vm]);
  const bad = (o.kinds ?? []).filter((k) => !known.has(k));
  if (bad.length) throw new Error(`unknown kind ${bad.join(', ')}; known: ${[...known].join(', ')}`);
  return { seed: seed ?? freshSeed(), counts, ...o };
}

/** The plans of a run: per provider, jobs 0..count-1, or just the jobs --only names (a replay). */
export function plansOf(opts: ChaosOptions): JobPlan[] {
  const plans: JobPlan[] = [];
  for (const [provider, count] of Object.entries(opts.counts) as Array<[ProviderName, number]>) {
    const kinds = opts.kinds ? KINDS[provider].filter((k) => opts.kinds!.includes(k)) : KINDS[provider];
    if (kinds.length === 0) continue;
    const indexes = opts.only ?? Array.from({ length: count }, (_, k) => k);
    for (const k of indexes) plans.push(planJob(opts.seed, k, provider, kinds));
  }
  return plans;
}

/** VM jobs need the guest image and template of each MPI built once, outside the timed jobs. */
export function warmups(plans: JobPlan[], seed: number): JobPlan[] {
  const mpis = new Set<string>(plans.filter((p) => p.provider === 'vm').map((p) => p.mpi));
  return MPIS.vm
    .filter((m) => mpis.has(m))
    .map((mpi, i) => ({ ...planJob(seed, 0, 'vm', ['none']), index: -1 - i, mpi, np: 2, ppn: 1 }));
}

export function harnessOptions(seed: number, graceMs = 2000, observeMs = 5000): HarnessOptions {
  const runDir = `/tmp/sfch-${seed}-${process.pid}`;
  return {
    runDir,
    pool: process.env.SNOWFLOCK_POOL ?? '10.238.0.0/17',
    graceMs,
    observeMs,
    logDir: join(projectRoot(), 'benchmarks', 'out', 'chaos'),
  };
}

/** The command that runs the same jobs again: the arguments given, with the seed made explicit. */
function replayCommand(argv: string[], seed: number): string {
  const kept: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--seed') i++;
    else kept.push(argv[i]!);
  }
  return ['npm run chaos --', ...kept, '--seed', String(seed)].join(' ');
}

async function main(): Promise<number> {
  const opts = parseChaosArgs(process.argv.slice(2));
  requireBuild();
  const command = replayCommand(process.argv.slice(2), opts.seed);
  const plans = plansOf(opts);
  const h = harnessOptions(opts.seed, opts.graceMs, opts.observeMs);
  const started = new Date().toISOString();
  const load = loadavg()[0]!.toFixed(1);
  process.stdout.write(`chaos: seed ${opts.seed}, ${plans.length} jobs (replay: ${command})\n`);
  for (const w of warmups(plans, opts.seed)) {
    const r = await runChaosJob(w, h);
    process.stdout.write(`chaos: warm-up of vm/${w.mpi}: status ${r.status}, ${r.exitMs} ms\n`);
  }
  const results: JobResult[] = [];
  let stop = false;
  process.once('SIGINT', () => {
    stop = true;
    process.stderr.write('chaos: stopping after this job\n');
  });
  for (const plan of plans) {
    if (stop) break;
    const r = await runChaosJob(plan, h);
    results.push(r);
    process.stdout.write(jobLine(r) + '\n');
    for (const p of problems(r)) process.stdout.write(`    ${p}\n`);
  }
  rmSync(h.runDir, { recursive: true, force: true });
  const summary = summarize(results);
  process.stdout.write('\n' + summaryTable(summary) + '\n');
  const out = join(projectRoot(), 'benchmarks', 'out');
  mkdirSync(out, { recursive: true });
  writeFileSync(join(out, 'chaos.json'), JSON.stringify({ seed: opts.seed, command, started, load, jobs: results, summary }, null, 1) + '\n');
  if (opts.results) writeSection('chaos', markdownSection({ command, seed: opts.seed, started, load, results }));
  const failed = results.filter((r) => !r.ok);
  process.stdout.write(`\nchaos: ${results.length} jobs, ${failed.length} failed; seed ${opts.seed}; details in benchmarks/out/chaos.json\n`);
  return failed.length > 0 || stop ? 1 : 0;
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    (code) => (process.exitCode = code),
    (e: unknown) => {
      process.stderr.write(`chaos: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exitCode = 2;
    },
  );
}
