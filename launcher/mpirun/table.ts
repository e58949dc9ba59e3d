/**
 * Every option sfmpirun understands, in one table: its spellings, how many values it takes, which
 * dialect it comes from, its help line, and what it does to the job being read. The scanner,
 * --help and the "did you mean" suggestions are all driven by this table.
 *
 * Spellings are written without dashes; long names are accepted with one or two dashes
 * (`-np`, `--np`), as both mpiruns do. One-letter names are case-sensitive (-n, -N, -h, -H).
 */
import { resolve } from 'node:path';
import { UsageError } from '../../src/common/errors.js';
import type { JobDraft, SectionDraft } from './draft.js';
import { parseHostList, readHostfile } from './hosts.js';

export type OptionDialect = 'hydra' | 'openmpi' | 'both' | 'ours';

export interface OptionContext {
  job: JobDraft;
  section: SectionDraft;
  /** The option as the user wrote it, for messages. */
  spelled: string;
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** True while reading a -configfile or --app line. */
  inFile: boolean;
}

export interface OptionDef {
  names: string[];
  arity: 0 | 1 | 2;
  dialect: OptionDialect;
  /** Placeholder for the values in --help, e.g. 'N' or 'K V'. */
  args?: string;
  help: string;
  /** Repeatable flags such as -v count each use. */
  apply(values: string[], ctx: OptionContext): void;
}

/** A rank count or similar: a whole number from 1 up. */
export function positive(value: string, ctx: OptionContext, what: string): number {
  if (!/^[+]?\d+$/.test(value.trim()) || Number(value) < 1) {
    throw new UsageError(`${ctx.spelled} expects ${what} (a whole number of at least 1), got '${value}'`);
  }
  return Number(value);
}

function envName(name: string, ctx: OptionContext): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name)) {
    throw new UsageError(`${ctx.spelled} '${name}': not a valid environment variable name`);
  }
  return name;
}

function envNames(list: string, ctx: OptionContext): string[] {
  return list
    .split(',')
    .filter((n) => n !== '')
    .map((n) => envName(n, ctx));
}

function oneOf<T extends string>(value: string, choices: readonly T[], ctx: OptionContext): T {
  if (!(choices as readonly string[]).includes(value)) {
    throw new UsageError(`${ctx.spelled} expects one of ${choices.join(', ')}, got '${value}'`);
  }
  return value as T;
}

function ignore(ctx: OptionContext, value: string | undefined, why: string): void {
  ctx.job.ignored.push(`${ctx.spelled}${value === undefined ? '' : ` ${value}`}: ${why}`);
}

function setRanksPerClone(n: number, ctx: OptionContext): void {
  ctx.job.ranksPerClone = n;
  ctx.job.ranksPerCloneFrom = ctx.spelled;
}

function addHosts(hosts: Array<{ name: string; slots: number }>, ctx: OptionContext): void {
  ctx.job.hosts.push(...hosts);
}

/** --map-by / -map-by: what it means on clones. */
function mapBy(value: string, ctx: OptionContext): void {
  const [policy = '', ...modifiers] = value.toLowerCase().split(':');
  const ppr = /^ppr:(\d+):(node|board)$/.exec(value.toLowerCase());
  if (ppr) {
    setRanksPerClone(positive(ppr[1]!, ctx, 'ranks per node'), ctx);
  } else if (policy === 'node' || policy === 'host') {
    ctx.job.placement = 'cyclic';
  } else if (policy === 'slot' || policy === 'core') {
    ctx.job.placement = 'block';
  } else if (['socket', 'numa', 'l3cache', 'l2cache', 'l1cache', 'hwthread', 'board', 'package', 'dist', 'seq', 'rankfile'].includes(policy)) {
    ctx.job.placement = 'block';
    ignore(ctx, value, 'placement inside a clone is left to its kernel; ranks fill clones in order');
  } else {
    throw new UsageError(`${ctx.spelled} '${value}': unknown mapping; use slot, node or ppr:N:node`);
  }
  if (modifiers.some((m) => /^oversubscribe$/i.test(m))) ctx.job.oversubscribe = true;
}

const localOnlyNote = 'means nothing on a private clone cluster';

export const OPTIONS: OptionDef[] = [
  // ---- ranks and their placement ----
  {
    names: ['n', 'np', 'c'],
    arity: 1,
    dialect: 'both',
    args: 'N',
    help: 'Number of ranks (of this MPMD section).',
    apply: ([v], ctx) => {
      ctx.section.np = positive(v!, ctx, 'a number of ranks');
    },
  },
  {
    names: ['ppn', 'perhost'],
    arity: 1,
    dialect: 'hydra',
    args: 'N',
    help: 'Ranks per clone (Hydra). Default 1, or the slots of a hostfile.',
    apply: ([v], ctx) => setRanksPerClone(positive(v!, ctx, 'a number of ranks per node'), ctx),
  },
  {
    names: ['N', 'npernode'],
    arity: 1,
    dialect: 'openmpi',
    args: 'N',
    help: 'Ranks per clone (Open MPI).',
    apply: ([v], ctx) => setRanksPerClone(positive(v!, ctx, 'a number of ranks per node'), ctx),
  },
  {
    names: ['f', 'machinefile', 'hostfile'],
    arity: 1,
    dialect: 'both',
    args: 'FILE',
    help: "Hostfile ('host', 'host:N' or 'host slots=N'): its host count and slots shape the clones.",
    apply: ([v], ctx) => addHosts(readHostfile(v!, ctx.cwd, ctx.spelled), ctx),
  },
  {
    names: ['hosts'],
    arity: 1,
    dialect: 'hydra',
    args: 'LIST',
    help: 'Hosts as h1,h2 or h1:N,h2:N (Hydra): one clone per host.',
    apply: ([v], ctx) => addHosts(parseHostList(v!, ctx.spelled), ctx),
  },
  {
    names: ['H', 'host'],
    arity: 1,
    dialect: 'openmpi',
    args: 'LIST',
    help: 'Hosts as h1,h2 or h1:N (Open MPI): one clone per host.',
    apply: ([v], ctx) => addHosts(parseHostList(v!, ctx.spelled), ctx),
  },
  {
    names: ['map-by'],
    arity: 1,
    dialect: 'both',
    args: 'HOW',
    help: 'slot/core: fill each clone in turn (default); node: deal ranks round-robin over clones; ppr:N:node: N per clone.',
    apply: ([v], ctx) => mapBy(v!, ctx),
  },
  {
    names: ['rr'],
    arity: 0,
    dialect: 'hydra',
    help: 'Deal ranks round-robin over the clones (same as -map-by node).',
    apply: (_v, ctx) => {
      ctx.job.placement = 'cyclic';
    },
  },
  {
    names: ['bind-to'],
    arity: 1,
    dialect: 'both',
    args: 'WHAT',
    help: 'Accepted; binding inside a clone is left to its kernel.',
    apply: ([v], ctx) => ignore(ctx, v, 'binding inside a clone is left to its kernel'),
  },
  {
    names: ['oversubscribe'],
    arity: 0,
    dialect: 'openmpi',
    help: 'Allow more ranks than the hostfile has slots (they wrap around the clones).',
    apply: (_v, ctx) => {
      ctx.job.oversubscribe = true;
    },
  },

  // ---- environment ----
  {
    names: ['genv'],
    arity: 2,
    dialect: 'hydra',
    args: 'K V',
    help: 'Set K=V for every rank.',
    apply: ([k, v], ctx) => {
      ctx.job.env[envName(k!, ctx)] = v!;
    },
  },
  {
    names: ['genvall'],
    arity: 0,
    dialect: 'hydra',
    help: "Pass all of the caller's environment (the default).",
    apply: (_v, ctx) => {
      ctx.job.envMode = 'all';
    },
  },
  {
    names: ['genvnone'],
    arity: 0,
    dialect: 'hydra',
    help: "Pass none of the caller's environment.",
    apply: (_v, ctx) => {
      ctx.job.envMode = 'none';
    },
  },
  {
    names: ['genvlist'],
    arity: 1,
    dialect: 'hydra',
    args: 'A,B',
    help: "Pass only these of the caller's variables.",
    apply: ([v], ctx) => {
      ctx.job.envMode = 'list';
      ctx.job.envList.push(...envNames(v!, ctx));
    },
  },
  {
    names: ['env'],
    arity: 2,
    dialect: 'hydra',
    args: 'K V',
    help: 'Set K=V for the ranks of this MPMD section.',
    apply: ([k, v], ctx) => {
      ctx.section.env[envName(k!, ctx)] = v!;
    },
  },
  {
    names: ['envall'],
    arity: 0,
    dialect: 'hydra',
    help: "This section: pass all of the caller's environment.",
    apply: (_v, ctx) => {
      ctx.section.envMode = 'all';
    },
  },
  {
    names: ['envnone'],
    arity: 0,
    dialect: 'hydra',
    help: "This section: pass none of the caller's environment.",
    apply: (_v, ctx) => {
      ctx.section.envMode = 'none';
    },
  },
  {
    names: ['envlist'],
    arity: 1,
    dialect: 'hydra',
    args: 'A,B',
    help: "This section: pass only these of the caller's variables.",
    apply: ([v], ctx) => {
      ctx.section.envMode = 'list';
      ctx.section.envList = [...(ctx.section.envList ?? []), ...envNames(v!, ctx)];
    },
  },
  {
    names: ['x'],
    arity: 1,
    dialect: 'openmpi',
    args: 'VAR[=VAL]',
    help: "Set VAR=VAL for every rank, or pass the caller's VAR.",
    apply: ([v], ctx) => {
      const eq = v!.indexOf('=');
      const target = ctx.inFile ? ctx.section.env : ctx.job.env;
      if (eq >= 0) {
        target[envName(v!.slice(0, eq), ctx)] = v!.slice(eq + 1);
      } else if (ctx.env[envName(v!, ctx)] !== undefined) {
        target[v!] = ctx.env[v!]!;
      } else {
        ignore(ctx, v, `${v} is not set in your environment`);
      }
    },
  },
  {
    names: ['mca', 'gmca'],
    arity: 2,
    dialect: 'openmpi',
    args: 'K V',
    help: 'Open MPI MCA parameter: sets OMPI_MCA_K=V for every rank.',
    apply: ([k, v], ctx) => {
      ctx.job.env[`OMPI_MCA_${envName(k!, ctx)}`] = v!;
    },
  },

  // ---- working directory ----
  {
    names: ['wdir', 'wd'],
    arity: 1,
    dialect: 'both',
    args: 'DIR',
    help: 'Working directory of the ranks (of this MPMD section).',
    apply: ([v], ctx) => {
      ctx.section.wdir = resolve(ctx.cwd, v!);
    },
  },

  // ---- input and output ----
  {
    names: ['l', 'prepend-rank'],
    arity: 0,
    dialect: 'hydra',
    help: "Prefix every output line with '[rank] ' (Hydra).",
    apply: (_v, ctx) => {
      ctx.job.tagOutput = true;
    },
  },
  {
    names: ['tag-output'],
    arity: 0,
    dialect: 'openmpi',
    help: "Prefix every output line with '[jobid,rank]<stdout>:' (Open MPI).",
    apply: (_v, ctx) => {
      ctx.job.tagOutput = true;
    },
  },
  {
    names: ['timestamp-output'],
    arity: 0,
    dialect: 'openmpi',
    help: 'Prefix every output line with the time.',
    apply: (_v, ctx) => {
      ctx.job.timestampOutput = true;
    },
  },
  {
    names: ['outfile-pattern', 'outfile'],
    arity: 1,
    dialect: 'hydra',
    args: 'PAT',
    help: "Write each rank's stdout to a file; %r in PAT is the rank.",
    apply: ([v], ctx) => {
      ctx.job.outfilePattern = resolve(ctx.cwd, v!);
    },
  },
  {
    names: ['errfile-pattern', 'errfile'],
    arity: 1,
    dialect: 'hydra',
    args: 'PAT',
    help: "Write each rank's stderr to a file; %r in PAT is the rank.",
    apply: ([v], ctx) => {
      ctx.job.errfilePattern = resolve(ctx.cwd, v!);
    },
  },
  {
    names: ['output-filename'],
    arity: 1,
    dialect: 'openmpi',
    args: 'DIR',
    help: "Write each rank's output under DIR (Open MPI layout).",
    apply: ([v], ctx) => {
      ctx.job.outputDirectory = resolve(ctx.cwd, v!);
    },
  },
  {
    names: ['stdin'],
    arity: 1,
    dialect: 'openmpi',
    args: 'R|all|none',
    help: 'Which rank reads stdin (default 0), all of them, or none.',
    apply: ([v], ctx) => {
      if (!/^(\d+|all|none|rank)$/.test(v!)) throw new UsageError(`${ctx.spelled} expects a rank number, all or none, got '${v}'`);
      ctx.job.stdin = v === 'rank' ? '0' : v;
    },
  },

  // ---- lifetime ----
  {
    names: ['timeout'],
    arity: 1,
    dialect: 'both',
    args: 'SEC',
    help: 'Stop the job after SEC seconds (also MPIEXEC_TIMEOUT).',
    apply: ([v], ctx) => {
      ctx.job.timeoutSec = positive(v!, ctx, 'a number of seconds');
    },
  },

  // ---- accepted, without effect on clones ----
  ...(
    [
      [['allow-run-as-root'], 0, 'openmpi', 'ranks run as root inside their clones already'],
      [['iface'], 1, 'hydra', 'clones talk over their private network'],
      [['launcher', 'bootstrap'], 1, 'hydra', `ranks are started inside their clones; the launcher ${localOnlyNote}`],
      [['launcher-exec', 'bootstrap-exec'], 1, 'hydra', localOnlyNote],
      [['rmk'], 1, 'hydra', 'the clones are the resource manager'],
      [['demux'], 1, 'hydra', localOnlyNote],
      [['disable-x', 'enable-x'], 0, 'hydra', 'no X forwarding into clones'],
      [['print-all-exitcodes'], 0, 'hydra', 'the summary line names the first failing rank'],
      [['prefix'], 1, 'openmpi', 'the clones see the same MPI installation'],
      [['report-bindings'], 0, 'openmpi', 'binding is left to the clone kernel'],
      [['display-map'], 0, 'openmpi', 'use -v to see the placement'],
      [['rank-by'], 1, 'openmpi', 'ranks are numbered in placement order'],
      [['use-hwthread-cpus'], 0, 'openmpi', 'binding is left to the clone kernel'],
      [['nameserver'], 1, 'hydra', 'the PMI server of each job is its name server'],
    ] as const
  ).map(
    ([names, arity, dialect, why]): OptionDef => ({
      names: [...names],
      arity,
      dialect,
      args: arity ? 'X' : undefined,
      help: `Accepted and ignored: ${why}.`,
      apply: ([v], ctx) => ignore(ctx, v, why),
    }),
  ),

  // ---- MPMD from a file ----
  {
    names: ['configfile'],
    arity: 1,
    dialect: 'hydra',
    args: 'FILE',
    help: "MPMD sections, one per line ('-n 2 ./a : ...' without the ':'), # comments.",
    apply: ([v], ctx) => {
      ctx.job.sectionFiles.push({ path: v!, option: ctx.spelled });
    },
  },
  {
    names: ['app'],
    arity: 1,
    dialect: 'openmpi',
    args: 'FILE',
    help: "Open MPI appfile: one app per line ('-np 2 -x A=1 ./a'), # comments.",
    apply: ([v], ctx) => {
      ctx.job.sectionFiles.push({ path: v!, option: ctx.spelled });
    },
  },

  // ---- ours ----
  {
    names: ['real-hosts'],
    arity: 0,
    dialect: 'ours',
    help: 'The hosts of -hosts, -H or the hostfile are machines: one clone per host on it, agents started over SSH. Without it they only shape the clones (inside a Slurm allocation the clones go on its nodes anyway).',
    apply: (_v, ctx) => {
      ctx.job.realHosts = true;
    },
  },
  {
    names: ['provider'],
    arity: 1,
    dialect: 'ours',
    args: 'auto|netns|vm',
    help: 'What a clone is: a namespace clone (netns) or a QEMU VM (vm). Default auto.',
    apply: ([v], ctx) => {
      ctx.job.provider = oneOf(v!, ['auto', 'netns', 'vm'] as const, ctx);
    },
  },
  {
    names: ['clones'],
    arity: 1,
    dialect: 'ours',
    args: 'N',
    help: 'Number of clones (default: ranks / ranks per clone, rounded up).',
    apply: ([v], ctx) => {
      ctx.job.clones = positive(v!, ctx, 'a number of clones');
    },
  },
  {
    names: ['launch'],
    arity: 1,
    dialect: 'ours',
    args: 'direct|native',
    help: "Start every rank ourselves with both our process managers, PMI-1 and PMIx (direct, the default), or through the MPI implementation's own launcher (native: Open MPI's mpirun, MPICH's Hydra).",
    apply: ([v], ctx) => {
      // 'auto' and 'pmi' (the name before PMIx) stay accepted: scripts may say them.
      const how = oneOf(v!, ['auto', 'direct', 'native', 'pmi'] as const, ctx);
      ctx.job.launch = how === 'native' ? 'native' : how === 'auto' ? 'auto' : 'direct';
    },
  },
  {
    names: ['launch-channel'],
    arity: 1,
    dialect: 'ours',
    args: 'agent|ssh',
    help: 'How ranks are started inside VM clones: the guest agent (default) or ssh.',
    apply: ([v], ctx) => {
      ctx.job.launchChannel = oneOf(v!, ['agent', 'ssh'] as const, ctx);
    },
  },
  {
    names: ['memory-transport'],
    arity: 1,
    dialect: 'ours',
    args: 'multicast|unicast',
    help: "VM clones on other hosts: how their memory comes from this host's template. multicast (the default): its working set pushed once to every clone host, and each page one host faults on beyond it sent to all; unicast: each host fetches its own.",
    apply: ([v], ctx) => {
      ctx.job.memoryTransport = oneOf(v!, ['multicast', 'unicast'] as const, ctx);
    },
  },
  {
    names: ['cold-boot'],
    arity: 0,
    dialect: 'ours',
    help: 'VM clones: boot each one instead of cloning a checkpointed template.',
    apply: (_v, ctx) => {
      ctx.job.coldBoot = true;
    },
  },
  {
    names: ['keep'],
    arity: 0,
    dialect: 'ours',
    help: 'Leave the cluster up after the job and print how to reach it.',
    apply: (_v, ctx) => {
      ctx.job.keep = true;
    },
  },
  {
    names: ['report'],
    arity: 1,
    dialect: 'ours',
    args: 'FILE',
    help: "Write a JSON report: phase timings and every rank's exit.",
    apply: ([v], ctx) => {
      ctx.job.reportFile = resolve(ctx.cwd, v!);
    },
  },
  {
    names: ['log-file'],
    arity: 1,
    dialect: 'ours',
    args: 'FILE',
    help: 'Also write the log as JSON lines to FILE.',
    apply: ([v], ctx) => {
      ctx.job.logFile = resolve(ctx.cwd, v!);
    },
  },
  {
    names: ['v', 'verbose'],
    arity: 0,
    dialect: 'both',
    help: 'Show the steps with timings (twice: details).',
    apply: (_v, ctx) => {
      ctx.job.verbosity++;
    },
  },
  {
    names: ['q', 'quiet'],
    arity: 0,
    dialect: 'both',
    help: 'No progress lines (shown while a slow step runs, such as the first VM job of a program building its image and template).',
    apply: (_v, ctx) => {
      ctx.job.quiet = true;
    },
  },
  {
    names: ['debug'],
    arity: 0,
    dialect: 'ours',
    help: 'Show every detail (like -v -v).',
    apply: (_v, ctx) => {
      ctx.job.verbosity = Math.max(ctx.job.verbosity, 2);
    },
  },
  {
    names: ['version', 'V'],
    arity: 0,
    dialect: 'both',
    help: 'Show our version and the MPI implementations found.',
    apply: (_v, ctx) => {
      ctx.job.stop ??= 'version';
    },
  },
  {
    names: ['help', 'h'],
    arity: 0,
    dialect: 'both',
    help: 'Show this help.',
    apply: (_v, ctx) => {
      ctx.job.stop ??= 'help';
    },
  },
];

const byName = new Map<string, OptionDef>();
for (const def of OPTIONS) for (const name of def.names) byName.set(name, def);

/** The option a command-line word names (`-np`, `--np`, `-x`), or undefined. */
export function lookupOption(word: string): OptionDef | undefined {
  const m = /^--?(.+)$/.exec(word);
  if (!m) return undefined;
  const name = m[1]!;
  // A one-letter option is spelled with one dash; `--n` works too, as in Open MPI.
  return byName.get(name) ?? (name.length > 1 ? byName.get(name.toLowerCase()) : undefined);
}

/** Every spelling, the way a user would type it, for suggestions. */
export function allSpellings(): string[] {
  return OPTIONS.flatMap((d) => d.names.map((n) => (n.length === 1 ? `-${n}` : `--${n}`)));
}
