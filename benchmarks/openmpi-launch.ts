/**
 * Open MPI startup three ways, side by side in one run: Open MPI hello at N = 1, 8, 32 ranks
 *   sfmpirun -np N hello                   (the default: N fresh netns clones, every rank started
 *                                           by us, wired to our PMIx server sf-pmix)
 *   sfmpirun --launch native -np N hello   (the same clones, Open MPI's own mpirun on the host
 *                                           starting an orted in each clone through our shim)
 *   mpirun.openmpi --oversubscribe -np N   (no clones: Open MPI on the host)
 * Each round runs the three in turn, so the shared machine's load falls on all alike; medians and
 * the ratios to mpirun go to benchmarks/out/openmpi-launch.json and RESULTS.md.
 *
 * Run: npm run build && node dist/benchmarks/run.js --only openmpi-launch [--rounds R]
 */
import { existsSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../src/common/paths.js';
import { benchProgram } from './lib/programs.js';
import { timeRun } from './lib/timing.js';
import { median, type Benchmark } from './run.js';

interface Row {
  np: number;
  direct: number;
  native: number;
  mpirun: number;
  failures: number;
}

export function sfmpirunCommand(): { argv: string[]; from: 'dist' | 'tsx' } {
  const root = projectRoot();
  const dist = join(root, 'dist/launcher/bin/sfmpirun.js');
  return existsSync(dist)
    ? { argv: [process.execPath, dist], from: 'dist' }
    : { argv: [process.execPath, '--import', 'tsx', join(root, 'launcher/bin/sfmpirun.ts')], from: 'tsx' };
}

export const openmpiLaunchBenchmark: Benchmark = {
  name: 'openmpi-launch',
  async run({ rounds = 5 }) {
    const hello = benchProgram('hello', 'openmpi');
    const sf = sfmpirunCommand();
    const env = { ...process.env };
    const load0 = loadavg()[0]!;
    const rows: Row[] = [];
    for (const np of [1, 8, 32]) {
      const t = { direct: [] as number[], native: [] as number[], mpirun: [] as number[] };
      const failures = { count: 0 };
      for (let i = 0; i < rounds; i++) {
        t.direct.push(timeRun([...sf.argv, '--provider', 'netns', '-np', String(np), hello], env, failures));
        t.native.push(timeRun([...sf.argv, '--provider', 'netns', '--launch', 'native', '-np', String(np), hello], env, failures));
        t.mpirun.push(timeRun(['mpirun.openmpi', '--allow-run-as-root', '--oversubscribe', '-np', String(np), hello], env, failures));
      }
      const row = { np, direct: median(t.direct), native: median(t.native), mpirun: median(t.mpirun), failures: failures.count };
      rows.push(row);
      process.stderr.write(`np ${np}: direct ${row.direct.toFixed(3)} s, native ${row.native.toFixed(3)} s, mpirun ${row.mpirun.toFixed(3)} s\n`);
    }
    const load = [load0, loadavg()[0]!];
    const f = (x: number) => x.toFixed(3);
    const markdown = [
      '## Open MPI startup: our PMIx server, --launch native, mpirun on the host',
      '',
      `Open MPI hello (benchmarks/programs/hello.c), median wall seconds of ${rounds} rounds run side by side ` +
        `(${new Date().toISOString()}, sfmpirun from ${sf.from}, load average ${load[0]!.toFixed(1)} before and ${load[1]!.toFixed(1)} after on this shared 2-core machine). ` +
        'Both sfmpirun columns provision N fresh netns clones (one rank each) and tear them down; "direct" is the default: every rank started by sfmpirun ' +
        'with sf-pmix as its PMIx server; "native" runs mpirun.openmpi on the host, which starts an orted per clone through the remote-shell shim. ' +
        'The last column runs the ranks on the host, no clones.',
      '',
      'Command: `npm run build && node dist/benchmarks/run.js --only openmpi-launch`',
      '',
      '| N | sfmpirun (direct, sf-pmix) s | sfmpirun --launch native s | mpirun.openmpi --oversubscribe s | direct / mpirun | native / mpirun | direct / native | failed runs |',
      '|---|---|---|---|---|---|---|---|',
      ...rows.map(
        (r) =>
          `| ${r.np} | ${f(r.direct)} | ${f(r.native)} | ${f(r.mpirun)} | ${(r.direct / r.mpirun).toFixed(2)} | ${(r.native / r.mpirun).toFixed(2)} | ${(r.direct / r.native).toFixed(2)} | ${r.failures} |`,
      ),
    ].join('\n');
    return { data: { when: new Date().toISOString(), rounds, load, from: sf.from, rows }, markdown };
  },
};
