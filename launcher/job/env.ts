/**
 * The environment of a rank, built in five layers, each over the one before:
 *
 *   0. The launcher's defaults, which any layer above may change: OMPI_MCA_mpi_yield_when_idle=1
 *      when this host has fewer cores than the ranks placed on it (as mpirun does when it sees
 *      oversubscription: a waiting Open MPI rank then gives its core away instead of spinning).
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
 *   4. What ranks need, which nothing above can override. Every rank, of any program, gets both
 *      process managers, each in its own variables, so that either MPI finds its own whatever
 *      wraps it (a script, an interpreter, env, time, valgrind):
 *        - PMI-1 (MPICH): PMI_PORT, PMI_ID from our PMI server, and the MPICH conventions PMI_RANK,
 *          PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS;
 *        - PMIx (Open MPI): the PMIX_* variables our sf-pmix hands out for the rank (its server's
 *          URI, namespace and rank, PMIX_HOSTNAME of its clone), and OMPI_MCA_schizo, which tells
 *          Open MPI 4.1 it was direct-launched (launcher/pmix/openmpi.ts says why);
 *        - Open MPI's per-job directory inside the clone: OMPI_MCA_orte_tmpdir_base and
 *          OMPI_MCA_btl_vader_backing_directory (session files and shared-memory segments, so that
 *          a crashed rank leaves nothing once the job's directory is gone);
 *        - PWD.
 *      MPICH ignores the PMIx and OMPI_MCA_* variables, Open MPI 4.1 the PMI-1 ones. Under
 *      --launch native, Open MPI's mpirun or Hydra sets its own wiring instead (and layer 0 is in
 *      the native launcher's environment, which passes it on).
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

/** Layer 4's inputs: what the two process managers hand out for the rank, and its job directory. */
export interface RankWiring {
  /** From the PMI-1 server (PMI_PORT, PMI_ID, ...). */
  pmi: Record<string, string>;
  /** From sf-pmix (PMIX_*). */
  pmix: Record<string, string>;
  /** Open MPI's variables besides the PMIx wiring: the direct-launch switch and the per-job directory. */
  openmpi: Record<string, string>;
}

/** Layer 0: what the launcher sets unless the user says otherwise. */
export function defaultsLayer(place: { ranksOnHost: number; cores: number }): Record<string, string> {
  return place.ranksOnHost > place.cores ? { OMPI_MCA_mpi_yield_when_idle: '1' } : {};
}

/** Layer 4 over the rest: the complete environment of one rank started by our process managers. */
export function rankEnv(base: Record<string, string>, wiring: RankWiring, place: RankPlace): Record<string, string> {
  return {
    ...base,
    ...wiring.pmi,
    ...wiring.pmix,
    ...wiring.openmpi,
    PMI_RANK: String(place.rank),
    PMI_SIZE: String(place.size),
    MPI_LOCALRANKID: String(place.localRank),
    MPI_LOCALNRANKS: String(place.localSize),
    PWD: place.wdir,
  };
}
