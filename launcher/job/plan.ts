/**
 * The job's layout, decided once before anything is provisioned: the programs (resolved like a
 * shell would), which MPI they are built with (detect.ts: for messages, the report and the guest
 * image, not for how ranks start), how the ranks start, how many clones, the host of every clone
 * (hosts.ts: this host, a Slurm allocation's nodes, or --real-hosts), and for every rank its
 * clone, its app and its place among the ranks of that clone. Every check that a user's
 * input can fail is done here, so that a refusal leaves nothing behind. The launch paths, the
 * environment and the report read the plan; none of them computes the layout again.
 */
import { UsageError } from '../../src/common/errors.js';
import type { MpiRuntime } from '../../src/providers/checkpoint.js';
import { inspectApp, resolveProgram, type AppMpi } from './detect.js';
import { userEnv } from './env.js';
import { planHosts, type HostPlan } from './hosts.js';
import { placeRanks } from './placement.js';
import type { JobSpec } from './spec.js';

/** One rank's place in the job. */
export interface RankSlot {
  rank: number;
  /** Index of its MPMD section (the PMI appnum). */
  app: number;
  /** Index of its clone. */
  clone: number;
  /** Its index among the ranks of its clone, and how many ranks the clone has. */
  localRank: number;
  localSize: number;
}

export interface JobPlan {
  /** Absolute path of each app's program. */
  programs: string[];
  /** What detection found per app (its MPI, how, and the files it runs besides its program). */
  apps: AppMpi[];
  /** The job's MPI: the one every app that has an MPI is built with ('none' when no app has one). */
  mpi: MpiRuntime;
  /** What a VM image must carry: the programs and every file detection found them to run. */
  imagePrograms: string[];
  /**
   * direct: every rank started in its clone by us, with both our process managers (PMI-1 and
   * PMIx) in its environment, whatever its MPI; native: the MPI's own launcher on the host.
   */
  launch: 'direct' | 'native';
  clones: number;
  /** Ranks a clone holds (the slots the native launchers are told of). */
  ranksPerClone: number;
  /** Rank -> clone index. */
  placement: number[];
  ranks: RankSlot[];
  /** The hosts of the clones (this host alone, unless the job spans hosts: hosts.ts) and each clone's host. */
  hosts: HostPlan;
}

export async function planJob(job: JobSpec, env: NodeJS.ProcessEnv): Promise<JobPlan> {
  if (job.np < 1 || job.apps.length === 0) throw new UsageError('nothing to run: the number of processes must be at least 1 (-n N)');
  const envs = job.apps.map((app) => ({ PATH: env.PATH ?? '', ...userEnv(job, app, env) }));
  const programs = job.apps.map((app, i) => resolveProgram(app.argv[0]!, app.wdir, envs[i]!.PATH));
  const apps = await Promise.all(job.apps.map((app, i) => inspectApp(programs[i]!, app.argv.slice(1), app.wdir, envs[i]!)));
  const mpis = new Set(apps.map((a) => a.mpi).filter((k) => k !== 'none'));
  // MPICH ranks wait in PMI-1 for the whole world, Open MPI ranks in PMIx: one job cannot mix them.
  if (mpis.size > 1) throw new UsageError('the MPMD sections mix MPICH and Open MPI programs; build every program with the same MPI');
  const mpi: MpiRuntime = mpis.has('openmpi') ? 'openmpi' : mpis.has('mpich') ? 'mpich' : 'none';
  const launch = job.launch === 'native' ? 'native' : 'direct';
  if (launch === 'native' && mpi === 'none') throw new UsageError('--launch native needs an MPI program (MPICH or Open MPI) and none was found in this one; run it without --launch native');
  const imagePrograms = [...new Set([...programs, ...apps.flatMap((a) => a.files)])];
  const clones = job.clones ?? Math.ceil(job.np / Math.max(1, job.ranksPerClone));
  if (clones < 1) throw new UsageError(`--clones must be at least 1, got ${clones}`);
  // More ranks than the clones hold at -ppn (--clones 2 -np 8) fill each clone evenly, as the
  // native launchers fill the slots of their hostfile.
  const ranksPerClone = Math.max(1, job.ranksPerClone, Math.ceil(job.np / clones));
  const placement = placeRanks(job.np, clones, ranksPerClone, job.placement);
  const hosts = planHosts(job, env, clones, ranksPerClone);
  if (hosts.source !== 'here') {
    const over = `a job over ${hosts.hosts.length} hosts (${hosts.source === 'slurm' ? `Slurm job ${hosts.allocation}` : '--real-hosts'})`;
    if (launch === 'native') throw new UsageError(`--launch native cannot reach clones on other hosts yet; drop it for ${over} (the default launch runs MPICH and Open MPI programs)`);
    if (job.keep) throw new UsageError(`--keep: ${over} lives only as long as its launcher; drop --keep`);
  }
  return { programs, apps, mpi, imagePrograms, launch, clones, ranksPerClone, placement, ranks: rankSlots(job, placement), hosts };
}

function rankSlots(job: JobSpec, placement: number[]): RankSlot[] {
  const localSize = new Map<number, number>();
  for (const c of placement) localSize.set(c, (localSize.get(c) ?? 0) + 1);
  const seen = new Map<number, number>();
  const slots: RankSlot[] = [];
  let rank = 0;
  job.apps.forEach((app, appIndex) => {
    for (let i = 0; i < app.np; i++, rank++) {
      const clone = placement[rank]!;
      const localRank = seen.get(clone) ?? 0;
      seen.set(clone, localRank + 1);
      slots.push({ rank, app: appIndex, clone, localRank, localSize: localSize.get(clone)! });
    }
  });
  return slots;
}
