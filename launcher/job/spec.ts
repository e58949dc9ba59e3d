/**
 * A job as the mpirun front ends understand it, whatever dialect it was written in:
 * what to run (one or more MPMD apps), how many ranks, how they are placed on clones,
 * their environment, and how their stdio and lifetime are handled.
 */
import type { MemoryTransport } from '../../src/providers/checkpoint.js';

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

/**
 * What the command line says that passes to the job as it is (the parser checks it, nothing
 * derives from it). JobDraft (launcher/mpirun/draft.ts) and JobSpec share it.
 */
export interface JobSettings {
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
  provider: 'auto' | 'netns' | 'vm';
  /**
   * How ranks are started: by us with both our process managers ('direct', the default; 'auto'
   * and the old name 'pmi' mean it too), or by the implementation's own launcher ('native').
   */
  launch: 'auto' | 'direct' | 'native';
  launchChannel: 'agent' | 'ssh';
  coldBoot: boolean;
  /** VM clones on other hosts: their memory pushed to every host by multicast, or fetched by each. */
  memoryTransport: MemoryTransport;
  keep: boolean;
  reportFile?: string;
  verbosity: number;
  /** -q: no progress lines (launcher/cli/progress.ts). */
  quiet: boolean;
  logFile?: string;
  /** Options accepted but without effect on a clone cluster, for the -v notice. */
  ignored: string[];
}

export function defaultJobSettings(): JobSettings {
  return {
    envMode: 'all',
    envList: [],
    env: {},
    tagOutput: false,
    timestampOutput: false,
    provider: 'auto',
    launch: 'auto',
    launchChannel: 'agent',
    coldBoot: false,
    memoryTransport: 'multicast',
    keep: false,
    verbosity: 0,
    quiet: false,
    ignored: [],
  };
}

/** The settings part of a draft or spec (a copy). */
export function jobSettings(from: JobSettings): JobSettings {
  const { envMode, envList, env, tagOutput, timestampOutput, outfilePattern, errfilePattern, outputDirectory } = from;
  const { provider, launch, launchChannel, coldBoot, memoryTransport, keep, reportFile, verbosity, quiet, logFile, ignored } = from;
  return {
    ...{ envMode, envList: [...new Set(envList)], env, tagOutput, timestampOutput, outfilePattern, errfilePattern, outputDirectory },
    ...{ provider, launch, launchChannel, coldBoot, memoryTransport, keep, reportFile, verbosity, quiet, logFile, ignored },
  };
}

export interface JobSpec extends JobSettings {
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
  /** Who receives stdin: a rank number, 'all' or 'none'. */
  stdin: number | 'all' | 'none';
  /** Seconds; from --timeout, -t, or MPIEXEC_TIMEOUT. */
  timeoutSec?: number;
  /** The hosts of -hosts / -H / a hostfile, in order, with their slots (they shape the clones). */
  hosts?: Array<{ name: string; slots: number }>;
  /** --real-hosts: those hosts are machines; the clones are spread over them (agents over SSH). */
  realHosts?: boolean;
}
