/**
 * The environment of a rank, built in four layers, each over the one before:
 *
 *   1. The caller's environment, as mpiexec passes it: all of it by default (-genvall, Open MPI's
 *      behaviour for the local node), nothing with -genvnone, or only the names of -genvlist;
 *      an MPMD section's own -envall / -envnone / -envlist decides for that section's ranks. From "all", three kinds of variables never pass, because they are the
 *      launcher's own or describe the host rather than the clone, and would mislead a rank:
 *        - the launcher's internals: SNOWFLOCK_*, npm_* and npm's INIT_CWD, NODE_OPTIONS and the
 *          other NODE_* variables of the Node.js runtime the launcher itself runs in;
 *        - another process manager's wiring, left over when sfmpirun runs inside a job or a shell
 *          started by one: PMI_*, PMIX_*, HYDRA_*, MPIEXEC_*, OMPI_COMM_WORLD_*, OMPI_UNIVERSE_SIZE,
 *          MPI_LOCALRANKID, MPI_LOCALNRANKS (OMPI_MCA_* settings pass: they are the user's);
 *        - the host's identity and sessions: HOSTNAME, SSH_AUTH_SOCK, SSH_AGENT_PID, SSH_CONNECTION,
 *          SSH_CLIENT, SSH_TTY, XDG_RUNTIME_DIR (a clone has its own hostname and private /tmp).
 *   2. -genv K V and -x K[=V]: the same for every rank.
 *   3. -env K V of the rank's MPMD section (or -x in an --app file).
 *   4. What ranks need, which nothing above can override: the PMI wiring from the PMI server
 *      (PMI_PORT, PMI_ID, ...) and the MPICH conventions PMI_RANK, PMI_SIZE, MPI_LOCALRANKID,
 *      MPI_LOCALNRANKS, and PWD. Under Open MPI's own launcher, Open MPI sets OMPI_COMM_WORLD_*.
 */
import type { AppSpec, JobSpec } from './spec.js';

const internalPrefixes = ['SNOWFLOCK_', 'npm_', 'NODE_', 'PMI_', 'PMIX_', 'HYDRA_', 'MPIEXEC_', 'OMPI_COMM_WORLD_'];
const internalNames = new Set([
  'INIT_CWD',
  'OMPI_UNIVERSE_SIZE',
  'MPI_LOCALRANKID',
  'MPI_LOCALNRANKS',
  'HOSTNAME',
  'SSH_AUTH_SOCK',
  'SSH_AGENT_PID',
  'SSH_CONNECTION',
  'SSH_CLIENT',
  'SSH_TTY',
  'XDG_RUNTIME_DIR',
]);

/** True for variables of the caller that never pass to ranks under the default rule. */
export function isInternal(name: string): boolean {
  return internalNames.has(name) || internalPrefixes.some((p) => name.startsWith(p));
}

/** Layer 1: which of the caller's variables pass. */
export function callerLayer(job: Pick<JobSpec, 'envMode' | 'envList'>, caller: NodeJS.ProcessEnv): Record<string, string> {
  const out: Record<string, string> = {};
  if (job.envMode === 'none') return out;
  if (job.envMode === 'list') {
    // Named explicitly: the user asked for it, so even an internal name passes.
    for (const name of job.envList) if (caller[name] !== undefined) out[name] = caller[name]!;
    return out;
  }
  for (const [name, value] of Object.entries(caller)) if (value !== undefined && !isInternal(name)) out[name] = value;
  return out;
}

/** Layers 1-3: what a rank of `app` sees before the process manager adds its own. */
export function userEnv(job: Pick<JobSpec, 'envMode' | 'envList' | 'env'>, app: Pick<AppSpec, 'env' | 'envMode' | 'envList'>, caller: NodeJS.ProcessEnv): Record<string, string> {
  // A section's own -envnone / -envlist / -envall decides layer 1 for its ranks.
  const mode = app.envMode ? { envMode: app.envMode, envList: app.envList ?? [] } : job;
  return { ...callerLayer(mode, caller), ...job.env, ...app.env };
}

export interface RankPlace {
  rank: number;
  size: number;
  /** This rank's index among the ranks of its clone, and how many ranks the clone has. */
  localRank: number;
  localSize: number;
  wdir: string;
}

/** Layer 4 over the rest: the complete environment of one rank started through our PMI server. */
export function rankEnv(base: Record<string, string>, pmi: Record<string, string>, place: RankPlace): Record<string, string> {
  return {
    ...base,
    ...pmi,
    PMI_RANK: String(place.rank),
    PMI_SIZE: String(place.size),
    MPI_LOCALRANKID: String(place.localRank),
    MPI_LOCALNRANKS: String(place.localSize),
    PWD: place.wdir,
  };
}
