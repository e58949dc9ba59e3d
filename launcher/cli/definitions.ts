/**
 * snowflock's commands as data: each one's name and positionals, summary, options and a paragraph
 * for the manual. The command line (launcher/bin/snowflock.ts), the man page snowflock(1) and the
 * shell completion are all made from this list, so none of them can drift from what is accepted.
 */
import type { Options, PositionalOptions } from 'yargs';
import { UsageError } from '../../src/common/errors.js';

export type CommandName = 'up' | 'exec' | 'run' | 'ps' | 'down' | 'cleanup' | 'doctor' | 'setup' | 'shell-env' | 'completion' | 'agent' | 'warm';

/** A yargs option, with the placeholder of its value for the manual (`--log-file FILE`). */
export interface FlagDef extends Options {
  value?: string;
}

export interface CommandDef {
  name: CommandName;
  /** yargs' form: the name, then <required> and [optional] positionals. */
  usage: string;
  /** After the positionals, as the synopsis shows it (e.g. "-- CMD..."). */
  tail?: string;
  summary: string;
  /** What the manual says beyond the summary. */
  details: string;
  positionals?: Record<string, PositionalOptions>;
  options?: Record<string, FlagDef>;
}

/** The flags every command takes. */
export const GLOBAL_OPTIONS: Record<string, FlagDef> = {
  verbose: { alias: 'v', type: 'count', description: 'Show steps with timings (-vv: details)' },
  'log-file': { type: 'string', value: 'FILE', description: 'Also write every log entry as JSON lines to this file' },
  debug: { type: 'boolean', default: false, description: 'Show stack traces of errors' },
  'state-dir': { type: 'string', value: 'DIR', description: 'Where state records live (default /run/snowflock, or SNOWFLOCK_STATE_DIR)' },
};

/** -n as the user typed it: the engine says what is wrong with it ("abc" must not become NaN first). */
const count: FlagDef = {
  type: 'string',
  value: 'N',
  demandOption: true,
  description: 'Number of clones',
  coerce: (v: unknown) => {
    const text = String(Array.isArray(v) ? v[v.length - 1] : v).trim();
    if (!/^-?\d+$/.test(text)) throw new UsageError(`-n needs a whole number of clones, not ${JSON.stringify(text)}`);
    return Number(text);
  },
};
const provider: FlagDef = { type: 'string', value: 'auto|netns|vm', default: 'auto', description: 'Kind of clone: auto, netns or vm' };
const coldBoot: FlagDef = { type: 'boolean', default: false, description: 'vm: boot every clone instead of cloning the template' };
const quiet: FlagDef = {
  alias: 'q',
  type: 'boolean',
  default: false,
  description: 'No progress lines (shown while a slow step runs, such as the first VM job of a program building its image and template)',
};

export const COMMANDS: CommandDef[] = [
  {
    name: 'up',
    usage: 'up',
    summary: 'Create clones and keep them (until snowflock down)',
    details: 'Provisions a ticket of N clones on a private network and leaves it up; prints the ticket, each clone\'s id, hostname and address, and how to reach and remove them.',
    options: { n: count, provider, 'cold-boot': coldBoot, quiet },
  },
  {
    name: 'exec',
    usage: 'exec <ticket> [clone]',
    tail: '-- CMD...',
    summary: 'Run a command in one clone (id or hostname) or all of a live ticket: exec TICKET [CLONE|all] -- CMD...',
    details: 'Runs CMD inside one clone of a live ticket (by id or hostname), or in every clone (all, the default) with each line prefixed by its clone. Exits with the worst status of the clones.',
    positionals: { ticket: { type: 'string', demandOption: true, description: 'A live ticket (see snowflock ps)' }, clone: { type: 'string', description: 'A clone id or hostname, or all' } },
  },
  {
    name: 'run',
    usage: 'run',
    tail: '-- CMD...',
    summary: 'Create clones, run a command in every one (output prefixed by clone), tear down: run -n N -- CMD...',
    details:
      'Provisions N clones, runs CMD in each (VM clones carry the program and its libraries), forwards the output prefixed by clone, removes everything and exits with the worst status of the clones. --report FILE writes a JSON record like sfmpirun\'s: the phases in ms, the ticket, its clones and their host, and how CMD ended in each clone.',
    options: {
      n: count,
      provider,
      'cold-boot': coldBoot,
      quiet,
      report: { type: 'string', value: 'FILE', description: 'Write a JSON record of the run (phases, clones and their host, exit statuses) to FILE' },
    },
  },
  { name: 'ps', usage: 'ps', summary: 'List live tickets', details: 'Lists live tickets: provider, number of clones, subnet, owner process, whether kept, whether its network came from the warm service (snowflock warm: ready ones have 0 clones), and when each was made.' },
  {
    name: 'down',
    usage: 'down <tickets..>',
    summary: 'Remove tickets and everything they hold',
    details: 'Removes the named tickets: their clones, network, firewall table and state record.',
    positionals: { tickets: { type: 'string', array: true, description: 'Tickets to remove' } },
  },
  {
    name: 'cleanup',
    usage: 'cleanup [ticket]',
    summary: 'Remove what state records name after a crash (tickets whose owner died; --all: every ticket)',
    details: 'Removes what state records name when their owner is gone (a crash, SIGKILL): namespaces, links, firewall tables, processes, files. Tickets of running owners and kept tickets stay unless --all.',
    positionals: { ticket: { type: 'string', description: 'Only this ticket' } },
    options: {
      all: { type: 'boolean', default: false, description: 'Also tickets of running owners and kept ones' },
      templates: { type: 'boolean', default: false, description: "Also the vm provider's cached templates" },
    },
  },
  {
    name: 'doctor',
    usage: 'doctor',
    summary: 'Check this host and say how to fix what is missing',
    details: 'Checks what this host has and lacks for snowflock (root, iproute2, nftables, namespaces, bridges, the native helpers, QEMU, KVM, MPI) and prints how to fix each missing part. Exits 1 when something required is missing.',
  },
  {
    name: 'setup',
    usage: 'setup',
    summary: 'Prepare this host: install the Debian packages snowflock drives and fetch the guest kernel',
    details:
      'Installs the Debian packages snowflock drives that are missing (apt-get; the list is setup/packages.txt in the package) and fetches the guest kernel for VM clones into the cache. It says what it will do first and asks on a terminal; --yes does it without asking. Needs root when there is something to install.',
    options: { yes: { alias: 'y', type: 'boolean', default: false, description: 'Do it without asking (unattended)' } },
  },
  {
    name: 'shell-env',
    usage: 'shell-env',
    summary: 'Print shell code that makes mpirun and mpiexec mean sfmpirun: eval "$(snowflock shell-env)"',
    details:
      'Prints a PATH assignment for sh, bash, dash and zsh that puts a directory first on PATH whose mpirun and mpiexec run sfmpirun, so that unmodified scripts start their jobs on fresh clone clusters. Evaluating it twice is the same as once. --undo prints the assignment that takes the directory out again. The implementation-specific names (mpiexec.hydra, mpirun.openmpi, mpiexec.mpich) keep meaning the real MPI: sfmpirun itself uses them.',
    options: { undo: { type: 'boolean', default: false, description: 'Print the code that removes the directory from PATH again' } },
  },
  {
    name: 'agent',
    usage: 'agent',
    summary: "A job's agent on one of its other hosts (started by sfmpirun through srun or SSH, not by hand)",
    details:
      "Connects to the launcher of a job whose clones span hosts (--connect ADDR:PORT), proves the job's secret (the first line of its standard input), and makes this host's part of the job: the ticket's network end, the clones placed here, their processes. It tears all of it down and exits when the job ends, when the launcher is gone (its connection closes or falls silent, or standard input ends), or on SIGINT/SIGTERM/SIGHUP. What it made is recorded in this host's state directory: snowflock cleanup on this host removes what a killed agent left.",
    options: {
      connect: { type: 'string', value: 'ADDR:PORT', demandOption: true, description: "The launcher's address and port" },
      host: { type: 'string', value: 'NAME', description: "This host's name in the job (default: SLURMD_NODENAME, else the hostname)" },
    },
  },
  {
    name: 'warm',
    usage: 'warm',
    summary: "Keep ticket networks ready on this host, so that jobs start and end sooner (a resident service)",
    details:
      "Runs in the foreground until SIGINT, SIGTERM or SIGHUP, keeping --networks ticket networks ready (each a ticket of its own: subnet, bridge, firewall table). A job on this host (sfmpirun, snowflock run) takes one instead of making its own, and gives it back after its processes have ended: the service deletes it and makes a fresh one after the job, so no network serves two jobs. Kept and spanning tickets make their own; SNOWFLOCK_WARM=off makes every job do so. If the service is killed, each network it holds is removed by its reaper; a leased one belongs to its job. --status prints a running service's state as one JSON object (ready tickets, leases, returns, misses).",
    options: {
      networks: { type: 'string', value: 'N', default: '2', description: 'How many networks to keep ready (1-64)' },
      status: { type: 'boolean', default: false, description: "Print the running service's state as JSON and exit (1: none runs)" },
    },
  },
  {
    name: 'completion',
    usage: 'completion',
    summary: "Print bash completion for snowflock and sfmpirun: snowflock completion > /etc/bash_completion.d/snowflock",
    details: "Prints a bash completion script for snowflock's commands and options and for sfmpirun's options. zsh can use it through bashcompinit.",
  },
];

/** The spelling of an option on the command line. */
export function optionFlag(name: string): string {
  return name.length === 1 ? `-${name}` : `--${name}`;
}

/** The flags of one option: its name and aliases. */
export function flagsOf(name: string, o: Options): string[] {
  const aliases = o.alias === undefined ? [] : Array.isArray(o.alias) ? o.alias : [o.alias];
  return [...new Set([name, ...aliases])].map(optionFlag);
}

/** Every flag of an option set, with its aliases (for completion and for the manual). */
export function optionFlags(options: Record<string, Options> = {}): string[] {
  return Object.entries(options).flatMap(([name, o]) => flagsOf(name, o));
}
