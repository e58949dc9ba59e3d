/**
 * The benchmark harness: `npm run bench [-- --only NAME[,NAME]] [--rounds R]`. Each benchmark is a
 * module that exports a Benchmark; adding one is one line in BENCHMARKS. Results go to
 * benchmarks/out/NAME.json, and to NAME's section of benchmarks/RESULTS.md (between
 * `<!-- NAME:begin -->` and `<!-- NAME:end -->`, so that sections of different runs coexist).
 * Then the plots (benchmarks/plots.ts) are drawn from benchmarks/out/ into benchmarks/plots/.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { projectRoot } from '../src/common/paths.js';

export interface BenchmarkResult {
  /** Everything measured, for benchmarks/out/NAME.json. */
  data: unknown;
  /** The Markdown section body for RESULTS.md (a table and the exact command). */
  markdown: string;
}

export interface Benchmark {
  name: string;
  /** baseline: another build's sfmpirun.js to measure side by side (the benchmarks that run sfmpirun). */
  run(opts: { rounds?: number; baseline?: string }): Promise<BenchmarkResult>;
}

const BENCHMARKS: Record<string, () => Promise<Benchmark>> = {
  netns: async () => (await import('./netns.js')).netnsBenchmark,
  // Loaded by a path only known at run time, so that the harness builds whether or not vm.ts is there yet.
  vm: async () => ((await import('./vm.js' as string)) as { vmBenchmark: Benchmark }).vmBenchmark,
  workdir: async () => (await import('./workdir.js')).workdirBenchmark,
  traffic: async () => (await import('./traffic.js')).trafficBenchmark,
  'openmpi-launch': async () => (await import('./openmpi-launch.js')).openmpiLaunchBenchmark,
  oversubscribed: async () => (await import('./oversubscribed.js')).oversubscribedBenchmark,
  hosts: async () => (await import('./hosts.js')).hostsBenchmark,
  memory: async () => (await import('./memory.js')).memoryBenchmark,
  'memory-push': async () => (await import('./memory-push.js')).memoryPushBenchmark,
  'finalize-stall': async () => (await import('./finalize-stall.js')).finalizeStallBenchmark,
  mpirun: async () => {
    const m = await import('./mpirun.js');
    return {
      name: 'mpirun',
      run: async ({ rounds, baseline }) => {
        const r = await m.benchMpirun({ ...(rounds ? { rounds } : {}), baseline });
        return { data: r, markdown: m.resultsSection(r).replace(/<!-- mpirun:(begin|end) -->\n?/g, '') };
      },
    };
  },
};

const root = projectRoot();

export { median } from './lib/stats.js';

/** Replaces (or appends) the section of one benchmark in RESULTS.md. */
export function writeSection(name: string, markdown: string): void {
  const file = join(root, 'benchmarks', 'RESULTS.md');
  const old = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmark results\n';
  const section = `<!-- ${name}:begin -->\n${markdown.trimEnd()}\n<!-- ${name}:end -->`;
  const marker = new RegExp(`<!-- ${name}:begin -->[\\s\\S]*<!-- ${name}:end -->`);
  writeFileSync(file, marker.test(old) ? old.replace(marker, () => section) : `${old.trimEnd()}\n\n${section}\n`);
}

function parseArgs(argv: string[]): { only: string[]; rounds?: number; baseline?: string } {
  let only = Object.keys(BENCHMARKS);
  let rounds: number | undefined;
  let baseline: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--only') only = (argv[++i] ?? '').split(',').filter(Boolean);
    else if (argv[i] === '--rounds') rounds = Number(argv[++i]);
    else if (argv[i] === '--baseline') baseline = argv[++i];
    else throw new Error(`unknown argument ${argv[i]}; use --only NAME[,NAME], --rounds R and --baseline OTHER/dist/launcher/bin/sfmpirun.js`);
  }
  const unknown = only.filter((n) => !(n in BENCHMARKS));
  if (unknown.length) throw new Error(`unknown benchmark ${unknown.join(', ')}; known: ${Object.keys(BENCHMARKS).join(', ')}`);
  return { only, rounds, baseline };
}

async function main(): Promise<void> {
  const { only, rounds, baseline } = parseArgs(process.argv.slice(2));
  mkdirSync(join(root, 'benchmarks', 'out'), { recursive: true });
  for (const name of only) {
    const bench = await BENCHMARKS[name]!();
    process.stderr.write(`bench: ${name}...\n`);
    const result = await bench.run({ rounds, baseline });
    writeFileSync(join(root, 'benchmarks', 'out', `${name}.json`), JSON.stringify(result.data, null, 2) + '\n');
    writeSection(name, result.markdown);
    process.stdout.write(result.markdown.trimEnd() + '\n\n');
  }
  // Every plot there is data for, this run's and earlier ones' (benchmarks/plots.ts).
  const { drawPlots, plotsMarkdown } = await import('./plots.js');
  writeSection('plots', plotsMarkdown(drawPlots()));
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
