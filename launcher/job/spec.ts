/**
 * A job as the mpirun front ends understand it, whatever dialect it was written in:
 * what to run (one or more MPMD apps), how many ranks, how they are placed on clones,
 * their environment, and how their stdio and lifetime are handled.
 */

export interface AppSpec {
  /** Ranks of this app (MPMD section); ranks are numbered across apps in order. */
  np: number;
  /** argv[0] as the user gave it, then its arguments. */
  argv: string[];
  /** Working directory for this app's ranks (absolute). */
  wdir: string;
  /** Per-app environment settings (-env K V, -x in an --app file), applied over the global ones. */
  env: Record<string, string>;
  /** Per-section -envall / -envnone / -envlist (Hydra): which caller variables this app's ranks get; absent: the job's rule. */
  envMode?: EnvMode;
  envList?: string[];
}

export type EnvMode = 'all' | 'none' | 'list';

export interface JobSpec {
  dialect: 'hydra' | 'openmpi';
  apps: AppSpec[];
  /** Sum of apps[].np. */
  np: number;
  /** Ranks per clone (-ppn / -N / slots of a hostfile); default 1. */
  ranksPerClone: number;
  /** Number of clones; default ceil(np / ranksPerClone). */
  clones?: number;
  /** Rank placement over clones: 'block' fills clone 0 first, 'cyclic' deals ranks round-robin. */
  placement: 'block' | 'cyclic';
  /** Which of the caller's variables pass: all (default), none, or only envList. */
  envMode: EnvMode;
  envList: string[];
  /** -genv K V and -x K=V: set for every rank, over the caller's environment. */
  env: Record<string, string>;
  /** Prefix each output line with its rank. */
  tagOutput: boolean;
  timestampOutput: boolean;
  /** Per-rank output files: patterns with %r (rank) as in Hydra, or an --output-filename directory. */
  outfilePattern?: string;
  errfilePattern?: string;
  outputDirectory?: string;
  /** Who receives stdin: a rank number, 'all' or 'none'. */
  stdin: number | 'all' | 'none';
  /** Seconds; from --timeout, -t, or MPIEXEC_TIMEOUT. */
  timeoutSec?: number;
  provider: 'auto' | 'netns' | 'vm';
  /** How ranks are started: our PMI server ('pmi'), or the implementation's own launcher ('native'). */
  launch: 'auto' | 'pmi' | 'native';
  launchChannel: 'agent' | 'ssh';
  coldBoot: boolean;
  keep: boolean;
  reportFile?: string;
  verbosity: number;
  logFile?: string;
  /** Options accepted but without effect on a clone cluster, for the -v notice. */
  ignored: string[];
}
