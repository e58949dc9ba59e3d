/**
 * Ranks that wait on an oversubscribed host, side by side in one run: benchmarks/programs/busy.c
 * (uneven work between allreduces) at NP ranks on this 2-core host, placed -ppn 1, 2 and 4 ranks
 * per clone, through
 *   sfmpirun -ppn P -np NP busy                    (the default: OMPI_MCA_mpi_yield_when_idle=1,
 *                                                   since the host has fewer cores than ranks)
 *   sfmpirun -x OMPI_MCA_mpi_yield_when_idle=0 ... (the same, spinning: what it did before)
 *   mpirun.openmpi --oversubscribe -np NP busy     (on the host: mpirun sets yield itself)
 * The time is the program's own (between two barriers, startup excluded), median of the rounds.
 *
 * Run: npm run build && node dist/benchmarks/run.js --only oversubscribed [--rounds R]
 */
import { loadavg } from 'node:os';
import { benchProgram } from './lib/programs.js';
import { timeRun } from './lib/timing.js';
import { sfmpirunCommand } from './openmpi-launch.js';
import { median, type Benchmark } from './run.js';

const NP = 8;
const ARGS = ['40', '400000'];

function busySeconds(argv: string[], failures: { count: number }): number {
  let s = NaN;
  timeRun(argv, process.env, failures, (out) => {
    s = Number(/^busy ([\d.]+)$/m.exec(out)?.[1]);
  });
  if (!Number.isFinite(s)) throw new Error(`${argv.join(' ')} printed no "busy SECONDS" line`);
  return s;
}

export const oversubscribedBenchmark: Benchmark = {
  name: 'oversubscribed',
  async run({ rounds = 5 }) {
    const busy = benchProgram('busy', 'openmpi');
    const sf = sfmpirunCommand();
    const load0 = loadavg()[0]!;
    const rows: { ppn: number; yield: number; spin: number; mpirun: number; failures: number }[] = [];
    for (const ppn of [1, 2, 4]) {
      const t = { yield: [] as number[], spin: [] as number[], mpirun: [] as number[] };
      const failures = { count: 0 };
      const base = [...sf.argv, '--provider', 'netns', '-ppn', String(ppn), '-np', String(NP)];
      for (let i = 0; i < rounds; i++) {
        t.yield.push(busySeconds([...base, busy, ...ARGS], failures));
        t.spin.push(busySeconds([...base, '-x', 'OMPI_MCA_mpi_yield_when_idle=0', busy, ...ARGS], failures));
        t.mpirun.push(busySeconds(['mpirun.openmpi', '--allow-run-as-root', '--oversubscribe', '-np', String(NP), busy, ...ARGS], failures));
      }
      const row = { ppn, yield: median(t.yield), spin: median(t.spin), mpirun: median(t.mpirun), failures: failures.count };
      rows.push(row);
      process.stderr.write(`ppn ${ppn}: yield ${row.yield.toFixed(3)} s, spin ${row.spin.toFixed(3)} s, mpirun ${row.mpirun.toFixed(3)} s\n`);
    }
    const load = [load0, loadavg()[0]!];
    const f = (x: number) => x.toFixed(3);
    const markdown = [
      '## Oversubscribed host: waiting Open MPI ranks yield',
      '',
      `benchmarks/programs/busy.c ${ARGS.join(' ')} (odd ranks work twice as long as even ones between allreduces), ${NP} ranks on this 2-core host, ` +
        `median of ${rounds} rounds of the program's own timed part (startup excluded), run side by side (${new Date().toISOString()}, ` +
        `load average ${load[0]!.toFixed(1)} before and ${load[1]!.toFixed(1)} after). sfmpirun sets OMPI_MCA_mpi_yield_when_idle=1 when a host has fewer cores than ranks; ` +
        '"spin" overrides it with -x OMPI_MCA_mpi_yield_when_idle=0; mpirun.openmpi --oversubscribe yields by itself.',
      '',
      'Command: `npm run build && node dist/benchmarks/run.js --only oversubscribed`',
      '',
      '| ranks per clone | sfmpirun (yield) s | sfmpirun, spinning s | mpirun.openmpi --oversubscribe s | yield / mpirun | spin / mpirun | failed runs |',
      '|---|---|---|---|---|---|---|',
      ...rows.map((r) => `| ${r.ppn} | ${f(r.yield)} | ${f(r.spin)} | ${f(r.mpirun)} | ${(r.yield / r.mpirun).toFixed(2)} | ${(r.spin / r.mpirun).toFixed(2)} | ${r.failures} |`),
    ].join('\n');
    return { data: { when: new Date().toISOString(), rounds, np: NP, args: ARGS, load, from: sf.from, rows }, markdown };
  },
};
