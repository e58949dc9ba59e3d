/**
 * The benchmark harness: `npm run bench [-- --only NAME[,NAME]] [--rounds R]`. Each benchmark is a
 * module that exports a Benchmark; adding one is one line in BENCHMARKS. Results go to
 * benchmarks/out/NAME.json, and to NAME's section of benchmarks/RESULTS.md (between
 * `<!-- NAME:begin -->` and `<!-- NAME:end -->`, so that sections of different runs coexist).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface BenchmarkResult {
  /** Everything measured, for benchmarks/out/NAME.json. */
  data: unknown;
  /** The Markdown section body for RESULTS.md (a table and the exact command). */
  markdown: string;
}

export interface Benchmark {
  name: string;
  run(opts: { rounds?: number }): Promise<BenchmarkResult>;
}

const BENCHMARKS: Record<string, () => Promise<Benchmark>> = {
  netns: async () => (await import('./netns.js')).netnsBenchmark,
  // Loaded by a path only known at run time, so that the harness builds whether or not vm.ts is there yet.
  vm: async () => ((await import('./vm.js' as string)) as { vmBenchmark: Benchmark }).vmBenchmark,
  mpirun: async () => {
    const m = await import('./mpirun.js');
    return {
      name: 'mpirun',
      run: async ({ rounds }) => {
        const r = m.benchMpirun(rounds ? { rounds } : {});
        return { data: r, markdown: m.resultsSection(r).replace(/<!-- mpirun:(begin|end) -->\n?/g, '') };
      },
    };
  },
};

const root = resolve(dirname(fileURLToPath(import.meta.url)), import.meta.url.endsWith('.ts') ? '..' : '../..');

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Replaces (or appends) the section of one benchmark in RESULTS.md. */
export function writeSection(name: string, markdown: string): void {
  const file = join(root, 'benchmarks', 'RESULTS.md');
  const old = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmark results\n';
  const section = `<!-- ${name}:begin -->\n${markdown.trimEnd()}\n<!-- ${name}:end -->`;
  const marker = new RegExp(`<!-- ${name}:begin -->[\\s\\S]*<!-- ${name}:end -->`);
  writeFileSync(file, marker.test(old) ? old.replace(marker, () => section) : `${old.trimEnd()}\n\n${section}\n`);
}

function parseArgs(argv: string[]): { only: string[]; rounds?: number } {
  let only = Object.keys(BENCHMARKS);
  let rounds: number | undefined;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--only') only = (argv[++i] ?? '').split(',').filter(Boolean);
    else if (argv[i] === '--rounds') rounds = Number(argv[++i]);
    else throw new Error(`unknown argument ${argv[i]}; use --only NAME[,NAME] and --rounds R`);
  }
  const unknown = only.filter((n) => !(n in BENCHMARKS));
  if (unknown.length) throw new Error(`unknown benchmark ${unknown.join(', ')}; known: ${Object.keys(BENCHMARKS).join(', ')}`);
  return { only, rounds };
}

async function main(): Promise<void> {
  const { only, rounds } = parseArgs(process.argv.slice(2));
  mkdirSync(join(root, 'benchmarks', 'out'), { recursive: true });
  for (const name of only) {
    const bench = await BENCHMARKS[name]!();
    process.stderr.write(`bench: ${name}...\n`);
    const result = await bench.run({ rounds });
    writeFileSync(join(root, 'benchmarks', 'out', `${name}.json`), JSON.stringify(result.data, null, 2) + '\n');
    writeSection(name, result.markdown);
    process.stdout.write(result.markdown.trimEnd() + '\n\n');
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e: unknown) => {
    process.stderr.write(`bench: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
