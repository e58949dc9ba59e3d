/**
 * What an Open MPI 4.1 rank needs besides the PMIx variables to use our server when it is
 * started directly (no mpirun, no orted), and to keep its files in a per-job directory.
 */

/**
 * Tells Open MPI 4.1 that it was direct-launched by a PMIx server.
 *
 * Why this variable (read in Open MPI v4.1.4's orte/mca/schizo and orte/mca/ess; unchanged up to
 * v4.1.8): orte_init asks every active schizo component, highest priority first, what launched
 * the process, and the ess framework follows the answer. The components are launcher detectors:
 * slurm (SLURM_JOBID), flux (FLUX_JOB_ID), jsm (JSM_JSRUN_PORT), alps and moab where built, and
 * the fallback orte (priority 1), which declares an unmanaged singleton unless it finds an orted
 * URI and rewrites OMPI_MCA_ess to "singleton" (so OMPI_MCA_ess=pmi alone cannot work). When no
 * component answers, ess/pmi (priority 35) is selected by ordinary priority and connects to the
 * PMIx server named in PMIX_SERVER_URI*; ess/singleton declines. Open MPI 4.1 has no
 * launcher-neutral switch, so the supported mechanism is its ordinary MCA component selection:
 * exclude the detectors (OMPI_MCA_schizo with "^", which, unlike an include list, does not fail
 * for components a build lacks).
 *
 * Not "^orte" alone: inside a Slurm allocation without a job step (an sbatch script running
 * sfmpirun), schizo/slurm declares a managed singleton (seen here: every rank "0 of 1"); a leaked
 * PBS_NODEFILE does the same through schizo/moab where it is built (read, not seen: Debian does not build it). Not JSM_JSRUN_PORT or FLUX_JOB_ID: those impersonate
 * another launcher (and switch binding off). Not a fake OMPI_MCA_orte_local_daemon_uri: ess/pmi
 * would parse it and route to a daemon that does not exist.
 *
 * With it and no reachable server, MPI_Init fails instead of running a singleton. Open MPI 5
 * moved schizo into PRRTE and detects a PMIx server by itself; there the variable is inert.
 */
export const OPENMPI_DIRECT_LAUNCH: Readonly<Record<string, string>> = {
  OMPI_MCA_schizo: '^orte,slurm,flux,jsm,alps,moab',
};

/**
 * Open MPI's session directory and shared-memory segments in dir (created and removed by the
 * caller with the job): a crashed rank leaves /tmp/ompi.* and /dev/shm/vader_segment.* behind
 * otherwise, and a direct-launched job leaves its session directories even when it ends well.
 */
export function openMpiJobDirs(dir: string): Record<string, string> {
  return {
    OMPI_MCA_orte_tmpdir_base: dir,
    OMPI_MCA_btl_vader_backing_directory: dir,
  };
}
