/**
 * What a chaos job does: which provider and MPI, how many ranks, and what it kills, when, with which
 * signal. Plans come from (seed, index) alone (random.ts), so that any job can be replayed.
 *
 * Jobs are numbered per provider: job K of provider P of seed S is always the same plan.
 * Kinds go round-robin from an offset the seed chooses, so that a short run (the CI test's 10 jobs)
 * still meets every kind once; what varies at random within a kind is the MPI, the layout, the
 * signal, the target among several, and the moment.
 */
import { jobRandom, type Random } from './random.js';

export type ProviderName = 'netns' | 'vm';
/** `hydra`: an MPICH program through Hydra's mpiexec (sfmpirun --launch native). */
export type Mpi = 'mpich' | 'hydra' | 'openmpi';

export type Kind =
  /** Controls: nothing is killed; the job ends by itself (0, MPI_Abort's code, a rank's exit code). */
  | 'none'
  | 'abort'
  | 'exit'
  /** The launcher (sfmpirun) gets SIGKILL / SIGTERM. */
  | 'launcher-kill'
  | 'launcher-term'
  /** ^C twice: SIGINT twice to the launcher's process group, as a terminal sends it. */
  | 'ctrl-c'
  /** One rank process (netns: ranks are host processes). */
  | 'rank'
  /** One clone's holder (PID 1 of its namespaces) or the holder batch's parent (netns). */
  | 'holder'
  /** One clone's QEMU (vm). */
  | 'qemu'
  /** One rank's connection to the launcher: the PMI server, or the native launcher's daemon port. */
  | 'pmi'
  /** The native launcher on the host (mpirun.openmpi, mpiexec.hydra). */
  | 'mpirun';

export const KINDS: Record<ProviderName, readonly Kind[]> = {
  netns: ['none', 'launcher-kill', 'rank', 'abort', 'launcher-term', 'holder', 'ctrl-c', 'pmi', 'exit', 'mpirun'],
  vm: ['qemu', 'launcher-term', 'none', 'launcher-kill', 'ctrl-c', 'pmi', 'abort', 'exit', 'mpirun'],
};

export const MPIS: Record<ProviderName, readonly Mpi[]> = {
  netns: ['mpich', 'hydra', 'openmpi'],
  vm: ['mpich', 'openmpi'],
};

/**
 * When the kill is delivered:
 * - `launch`: delayMs after the launcher was started (anywhere in provisioning, run or teardown);
 * - `appear`: delayMs after the target first exists (provisioning for holders and QEMU);
 * - `run`: delayMs after every rank printed that it is ready (MPI_Init done).
 */
export type Phase = 'launch' | 'appear' | 'run';

export interface JobPlan {
  seed: number;
  index: number;
  provider: ProviderName;
  mpi: Mpi;
  np: number;
  ppn: number;
  kind: Kind;
  signal: 'SIGKILL' | 'SIGTERM' | 'SIGINT' | null;
  phase: Phase;
  delayMs: number;
  /** ctrl-c: time between the two SIGINTs. */
  gapMs: number;
  /** Which of several candidate targets (taken modulo their number). */
  which: number;
  /** The program's allreduce laps and the pause before each. */
  laps: number;
  lapMs: number;
  /** abort / exit: which rank, at which lap, with which code. */
  fail: { rank: number; lap: number; code: number } | null;
}

/** Roughly how long a job of this kind takes from launch to exit, for spreading launcher kills over it. */
export function nominalMs(provider: ProviderName, mpi: Mpi): number {
  if (provider === 'vm') return mpi === 'openmpi' ? 30_000 : 15_000;
  return mpi === 'mpich' ? 3_000 : 3_500;
}

const RUN = { netns: { laps: 10, lapMs: 100 }, vm: { laps: 6, lapMs: 150 } };

/** The plan of job `index` of run `seed`, with `kinds` in turn (default: all of the provider's). */
export function planJob(seed: number, index: number, provider: ProviderName, kinds: readonly Kind[] = KINDS[provider]): JobPlan {
  // Job K of the vm provider is not job K of netns: each provider has its own numbering and streams.
  const rnd = jobRandom(seed, provider === 'vm' ? index + 0x100000 : index);
  const kind = kinds[(index + (seed % kinds.length)) % kinds.length]!;
  const mpi = rnd.pick(kind === 'mpirun' ? MPIS[provider].filter((m) => m !== 'mpich') : MPIS[provider]);
  const np = provider === 'vm' ? 2 : rnd.pick([2, 4]);
  const ppn = rnd.pick([1, 2]);
  const { laps, lapMs } = RUN[provider];
  const plan: JobPlan = {
    ...{ seed, index, provider, mpi, np, ppn, kind, laps, lapMs },
    ...{ signal: null, phase: 'launch', delayMs: 0, gapMs: 0, which: rnd.int(0, 7), fail: null },
  };
  return { ...plan, ...when(plan, rnd) };
}

function when(p: JobPlan, rnd: Random): Partial<JobPlan> {
  const runMs = p.laps * p.lapMs;
  const duringRun = (): Partial<JobPlan> => ({ phase: 'run', delayMs: rnd.int(0, Math.floor(runMs * 0.8)) });
  const killOrTerm = (): 'SIGKILL' | 'SIGTERM' => rnd.pick(['SIGKILL', 'SIGTERM'] as const);
  switch (p.kind) {
    case 'none':
      return {};
    case 'abort':
    case 'exit':
      return { fail: { rank: rnd.int(0, p.np - 1), lap: rnd.int(0, p.laps - 1), code: rnd.int(5, 99) } };
    case 'launcher-kill':
    case 'launcher-term':
    case 'ctrl-c': {
      // Half of them anywhere from the start (often before the cluster exists), half while it runs.
      const moment = rnd.next() < 0.5 ? { phase: 'launch' as const, delayMs: rnd.int(0, nominalMs(p.provider, p.mpi)) } : duringRun();
      const signal = p.kind === 'launcher-kill' ? 'SIGKILL' : p.kind === 'launcher-term' ? 'SIGTERM' : 'SIGINT';
      return { signal, ...moment, gapMs: p.kind === 'ctrl-c' ? rnd.int(0, 600) : 0 };
    }
    case 'rank':
    case 'pmi':
      return { signal: p.kind === 'rank' ? killOrTerm() : null, ...duringRun() };
    case 'holder':
    case 'qemu':
    case 'mpirun': {
      // Half of them while the cluster is still being made (or the launcher starting its daemons).
      const moment = rnd.next() < 0.5 ? { phase: 'appear' as const, delayMs: rnd.int(0, 150) } : duringRun();
      // The native launcher only gets SIGKILL (what the OOM killer sends): nobody else signals it, a
      // batch system signals sfmpirun, and mpirun's own answer to SIGTERM (exit 1) is not ours to fix.
      return { signal: p.kind === 'mpirun' ? 'SIGKILL' : killOrTerm(), ...moment };
    }
  }
}

/** One word for the kill, as the job line shows it: "rank:SIGKILL@run+412". */
export function describeKill(p: JobPlan): string {
  if (p.kind === 'none' || p.kind === 'abort' || p.kind === 'exit') return p.fail ? `${p.kind}:rank${p.fail.rank}@lap${p.fail.lap}=${p.fail.code}` : p.kind;
  return `${p.kind}:${p.signal ?? 'ss-K'}@${p.phase}+${p.delayMs}`;
}
