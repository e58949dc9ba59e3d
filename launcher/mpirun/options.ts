/**
 * The mpirun command line, in either dialect, as a JobSpec.
 *
 * Reading happens in three steps: the scanner (scan.ts) applies each option of the table
 * (table.ts) to a draft; -configfile / --app files add their sections; then this module fills in
 * the defaults the way the real mpiruns do and checks what only makes sense as a whole (np against
 * the hostfile's slots, the stdin rank against np, the working directories).
 *
 * Defaults, as Hydra and Open MPI have them:
 *   - ranks: -n; without it, the slots of the hostfile/host list, or --clones × ranks per clone,
 *     or -ppn/-N on one clone, else 1 (Hydra) or the host's core count (Open MPI).
 *   - ranks per clone: -ppn / -N / --map-by ppr:N:node, else the hosts' slots, else 1.
 *   - clones: --clones, else one per host of the hostfile (no more than needed), else
 *     ceil(np / ranks per clone).
 *   - more ranks than slots wrap around the clones (Hydra); Open MPI refuses that unless
 *     --oversubscribe, and so do we in its dialect.
 */
import { statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { UsageError } from '../../src/common/errors.js';
import { jobSettings, type AppSpec, type JobSpec } from '../job/spec.js';
import { newJobDraft, newSectionDraft, type JobDraft, type SectionDraft } from './draft.js';
import { helpText } from './help.js';
import { scanSections } from './scan.js';
import { describe, readSectionFile } from './sectionfile.js';

export type ParseResult = { kind: 'job'; job: JobSpec } | { kind: 'help'; text: string } | { kind: 'version' };

/** The most ranks one job may have. */
export const MAX_RANKS = 4096;

const USAGE = "usage: sfmpirun [options] -n N program [args] (see 'sfmpirun --help')";

export function parseMpirunArgs(argv: string[], env: NodeJS.ProcessEnv, cwd: string): ParseResult {
  const job = newJobDraft();
  let sections = scanSections(argv, { job, cwd, env }, newSectionDraft('the command line'));
  if (job.stop === 'help') return { kind: 'help', text: helpText() };
  if (job.stop === 'version') return { kind: 'version' };
  if (job.sectionFiles.length) sections = sectionsFromFiles(job, sections, cwd, env);
  return { kind: 'job', job: finish(job, sections, env, cwd) };
}

/** -configfile / --app: the files' lines are the sections; the command line's first section gives their defaults. */
function sectionsFromFiles(job: JobDraft, cmdline: SectionDraft[], cwd: string, env: NodeJS.ProcessEnv): SectionDraft[] {
  const [defaults] = cmdline;
  if (cmdline.length > 1 || defaults!.argv.length) {
    const option = job.sectionFiles[0]!.option;
    throw new UsageError(`${option} and a program on the command line: give the program in the file, or drop ${option}`);
  }
  const sections: SectionDraft[] = [];
  for (const { path, option } of job.sectionFiles) {
    for (const line of readSectionFile(path, cwd, option)) {
      const where = `${describe(option, path)} line ${line.line}`;
      const first: SectionDraft = { ...defaults!, argv: [], env: { ...defaults!.env }, where };
      const found = scanSections(line.words, { job, cwd, env, file: where }, first);
      if (job.stop) throw new UsageError(`${where}: --help and --version belong on the command line`);
      for (const s of found) {
        if (s.argv.length === 0) throw new UsageError(`${where}: no program to run; write the line as '-n N program [args]'`);
        s.where = where;
      }
      sections.push(...found);
    }
  }
  return sections;
}

function finish(job: JobDraft, sections: SectionDraft[], env: NodeJS.ProcessEnv, cwd: string): JobSpec {
  if (sections.length === 1 && sections[0]!.argv.length === 0) throw new UsageError(`no program to run; ${USAGE}`);
  const dialect = job.dialect ?? 'hydra';
  const hostSlots = job.hosts.map((h) => h.slots);
  const ranksPerClone = job.ranksPerClone ?? (hostSlots.length ? Math.max(...hostSlots) : 1);
  if (!job.ranksPerClone && new Set(hostSlots).size > 1) {
    job.ignored.push(`hosts with different slot counts (${hostSlots.join(', ')}): every clone runs up to ${ranksPerClone} ranks`);
  }

  const apps = sections.map((s) => toApp(s, sections.length, defaultNp(job, dialect, ranksPerClone), cwd));
  const np = apps.reduce((sum, a) => sum + a.np, 0);
  if (np > MAX_RANKS) throw new UsageError(`${np} ranks requested; sfmpirun runs at most ${MAX_RANKS} ranks per job`);

  if (job.clones !== undefined && job.clones > MAX_RANKS) throw new UsageError(`--clones ${job.clones}: sfmpirun makes at most ${MAX_RANKS} clones per job`);
  const needed = Math.ceil(np / ranksPerClone);
  const clones = job.clones ?? (job.hosts.length ? Math.min(job.hosts.length, needed) : needed);
  const slots = (job.clones ?? (job.hosts.length || needed)) * ranksPerClone;
  if (dialect === 'openmpi' && job.hosts.length && np > slots && !job.oversubscribe) {
    throw new UsageError(
      `${np} ranks requested but the hosts give only ${slots} slots; add --oversubscribe, more hosts or slots, or lower -np`,
    );
  }

  return {
    ...jobSettings(job),
    dialect,
    apps,
    np,
    ranksPerClone,
    clones,
    placement: job.placement ?? 'block',
    stdin: stdinTarget(job.stdin, np),
    timeoutSec: job.timeoutSec ?? envTimeout(env),
    ...(job.hosts.length ? { hosts: job.hosts.map((h) => ({ ...h })) } : {}),
    ...(job.realHosts ? { realHosts: true } : {}),
  };
}

/** Ranks of a lone section without -n, as each mpirun decides it. */
function defaultNp(job: JobDraft, dialect: JobSpec['dialect'], ranksPerClone: number): number {
  if (job.clones) return job.clones * ranksPerClone;
  if (job.hosts.length) return job.ranksPerClone ? job.hosts.length * ranksPerClone : job.hosts.reduce((sum, h) => sum + h.slots, 0);
  // `mpirun -N 2 prog` on one node runs 2; so does one clone.
  if (job.ranksPerClone) return job.ranksPerClone;
  return dialect === 'openmpi' ? availableParallelism() : 1;
}

function toApp(s: SectionDraft, count: number, fallbackNp: number, cwd: string): AppSpec {
  if (s.np === undefined && count > 1) {
    throw new UsageError(`${s.where === 'the command line' ? 'MPMD section 1' : s.where} has no -n; give each MPMD section its own -n`);
  }
  const wdir = s.wdir ?? cwd;
  checkDirectory(wdir);
  const app: AppSpec = { np: s.np ?? fallbackNp, argv: s.argv, wdir, env: s.env };
  if (s.envMode) {
    app.envMode = s.envMode;
    app.envList = [...new Set(s.envList ?? [])];
  }
  return app;
}

function checkDirectory(dir: string): void {
  let isDir = false;
  try {
    isDir = statSync(dir).isDirectory();
  } catch {
    throw new UsageError(`the working directory '${dir}' does not exist; create it or fix -wdir`);
  }
  if (!isDir) throw new UsageError(`the working directory '${dir}' is not a directory; fix -wdir`);
}

function stdinTarget(given: string | undefined, np: number): JobSpec['stdin'] {
  if (given === undefined) return 0;
  if (given === 'all' || given === 'none') return given;
  const rank = Number(given);
  if (rank >= np) throw new UsageError(`--stdin ${given}: the job has ranks 0 to ${np - 1}; name one of them, all or none`);
  return rank;
}

function envTimeout(env: NodeJS.ProcessEnv): number | undefined {
  const raw = env.MPIEXEC_TIMEOUT;
  if (raw === undefined || raw.trim() === '') return undefined;
  if (!/^\s*\d+\s*$/.test(raw) || Number(raw) < 1) {
    throw new UsageError(`MPIEXEC_TIMEOUT='${raw}' is not a number of seconds; set it to a whole number of at least 1, or unset it`);
  }
  return Number(raw);
}
