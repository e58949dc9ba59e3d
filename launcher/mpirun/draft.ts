/**
 * A job while its command line is being read: what the options have said so far, before the
 * defaults and cross-checks of options.ts turn it into a JobSpec.
 */
import { defaultJobSettings, type EnvMode, type JobSettings, type JobSpec } from '../job/spec.js';
import type { Host } from './hosts.js';

export type Dialect = JobSpec['dialect'];

/** One MPMD section (a ':'-separated part of the command line, a -configfile or --app line). */
export interface SectionDraft {
  np?: number;
  argv: string[];
  wdir?: string;
  env: Record<string, string>;
  envMode?: EnvMode;
  envList?: string[];
  /** Where it came from, for error messages: "section 2", "config file 'x' line 3". */
  where: string;
}

/** The settings that pass to the JobSpec unchanged, and what is only known once all is read. */
export interface JobDraft extends JobSettings {
  /** The first option that only one dialect has decides the dialect. */
  dialect?: Dialect;
  ranksPerClone?: number;
  /** Which option set ranksPerClone, for messages. */
  ranksPerCloneFrom?: string;
  clones?: number;
  hosts: Host[];
  placement?: 'block' | 'cyclic';
  /** As given; checked against np once np is known. */
  stdin?: string;
  timeoutSec?: number;
  oversubscribe: boolean;
  /** --real-hosts: the named hosts are machines to spread the clones over (src/hosts/). */
  realHosts: boolean;
  /** -configfile (Hydra) and --app (Open MPI) files, read after the command line. */
  sectionFiles: Array<{ path: string; option: string }>;
  /** Set by --help / --version: parsing stops there. */
  stop?: 'help' | 'version';
}

export function newJobDraft(): JobDraft {
  return { ...defaultJobSettings(), hosts: [], oversubscribe: false, realHosts: false, sectionFiles: [] };
}

export function newSectionDraft(where: string): SectionDraft {
  return { argv: [], env: {}, where };
}
