/**
 * The man pages sfmpirun(1) and snowflock(1), written from the definitions the commands parse with:
 * the option table (launcher/mpirun/table.ts, grouped as --help groups it), snowflock's command
 * definitions (launcher/cli/definitions.ts) and the settings table (src/common/config.ts). The build
 * writes them into dist/man/ (launcher/build/generate.ts) and package.json installs them.
 */
import type { Options, PositionalOptions } from 'yargs';
import { SETTINGS } from '../../src/common/config.js';
import { packageVersion } from '../cli/common.js';
import { COMMANDS, GLOBAL_OPTIONS, flagsOf, type CommandDef, type FlagDef } from '../cli/definitions.js';
import { DROPIN_NAMES } from '../cli/shell-env.js';
import { GROUPS, spellings } from '../mpirun/help.js';
import { OPTIONS, type OptionDef } from '../mpirun/table.js';
import { bold, esc, header, italic, literal, paragraph, section, subsection, tagged } from './roff.js';

const source = (): string => `snowflock ${packageVersion()}`;

/** The variables of the settings table, as an ENVIRONMENT section's entries. */
function settingsEntries(): string[] {
  // The meanings are the README's table cells: markdown code spans lose their backticks here.
  return SETTINGS.map((s) => {
    const meaning = s.meaning.replace(/`/g, '');
    return tagged(bold(s.name), s.default ? `${meaning}. Default: ${s.default}.` : `${meaning}.`);
  });
}

function mpirunOption(def: OptionDef): string {
  const tag = spellings(def).map(bold).join(', ') + (def.args ? ` ${italic(def.args)}` : '');
  return tagged(tag, def.help);
}

const EXIT_STATUS_MPIRUN: Array<[string, string]> = [
  ['0', 'Every rank exited 0.'],
  ['the rank\'s status', "The first rank that failed: its exit code, 128+N when it was killed by signal N, or the errorcode it gave MPI_Abort. One line on stderr names the rank, its clone and the reason."],
  ['124', 'The job ran past --timeout or MPIEXEC_TIMEOUT.'],
  ['128+N', 'sfmpirun itself got signal N (SIGINT, SIGTERM, SIGHUP); it was forwarded to every rank first.'],
  ['141', "sfmpirun's own output was closed."],
  ['2', 'Bad input: one line says what was wrong; nothing was provisioned.'],
  ['3', 'This host lacks something snowflock needs: the line says what and how to get it (see snowflock doctor and snowflock setup).'],
  ['4', 'The cluster could not be provisioned: the line names the clone or host that failed.'],
];

const statusEntries = (rows: Array<[string, string]>): string[] => rows.map(([code, text]) => tagged(bold(code), text));

export function sfmpirunPage(): string {
  const out = [
    header('sfmpirun', source()),
    section('name'),
    `sfmpirun, sfmpiexec \\- ${esc('a drop-in mpirun: run an MPI job on a fresh private cluster of clones')}`,
    section('synopsis'),
    `${bold('sfmpirun')} [${italic('options')}] [${bold('-n')} ${italic('N')}] ${italic('program')} [${italic('args')}] [${bold(':')} [${italic('options')}] ${bold('-n')} ${italic('N')} ${italic('program2')} ...]`,
    '.br',
    `${bold('sfmpirun')} [${italic('options')}] ${bold('-configfile')} ${italic('FILE')} | ${bold('--app')} ${italic('FILE')}`,
    section('description'),
    paragraph(
      'sfmpirun runs an MPI program (MPICH or Open MPI, or any program) on a fresh private cluster of clones and throws the cluster away afterwards: network-namespace clones of the host, or QEMU virtual machines cloned from a warm checkpointed template. It takes the options of mpiexec (MPICH Hydra) and of mpirun (Open MPI), in either spelling: long options take one or two dashes, and --np=4 works too. Options end at the program (or at --); what follows belongs to the program, up to a : that starts the next MPMD section.',
    ),
    paragraph(
      `Scripts that call ${DROPIN_NAMES.join(' or ')} by name run through sfmpirun, unmodified, in a shell that evaluated snowflock shell-env (see snowflock(1)).`,
    ),
    section('options'),
  ];
  for (const [dialect, title] of GROUPS) {
    out.push(subsection(title), ...OPTIONS.filter((d) => d.dialect === dialect).map(mpirunOption));
  }
  out.push(
    section('environment of the ranks'),
    paragraph(
      "Ranks get the caller's environment (-genvall, the default), except the launcher's own variables (SNOWFLOCK_*, npm_*, NODE_*), other process managers' wiring (PMI_*, PMIX_*, HYDRA_*, MPIEXEC_*, OMPI_COMM_WORLD_*) and the host's identity (HOSTNAME, SSH_*, XDG_RUNTIME_DIR). -genvnone passes none, -genvlist A,B only those. Then -genv K V, -x K=V and -x K apply to every rank, -env K V to the ranks of one section; what ranks need (PMI_*, MPI_LOCALRANKID, PWD) is set last.",
    ),
    section('environment'),
    tagged(bold('MPIEXEC_TIMEOUT'), 'Seconds, like --timeout.'),
    ...settingsEntries(),
    section('exit status'),
    ...statusEntries(EXIT_STATUS_MPIRUN),
    section('examples'),
    literal([
      'sfmpirun -np 4 ./hello                    # 4 ranks, one per namespace clone',
      'sfmpirun -n 8 -ppn 4 -l ./ring            # Hydra style: 2 clones x 4 ranks',
      'sfmpirun -np 8 -N 2 --tag-output ./ring   # Open MPI style',
      'sfmpirun --provider vm -np 4 ./hello      # QEMU clones of a warm template',
      'sfmpirun -n 1 ./server : -n 3 ./worker    # MPMD',
    ]),
    section('see also'),
    `${bold('snowflock')}(1), ${bold('mpiexec.hydra')}(1), ${bold('mpirun.openmpi')}(1)`,
  );
  return out.join('\n') + '\n';
}

/** `exec <ticket> [clone]` as a synopsis shows it: `exec TICKET [CLONE]`. */
export function commandSynopsis(def: CommandDef): string {
  const words = def.usage.split(' ').map((w, i) => {
    if (i === 0) return bold(w);
    const m = /^([<[])([^.>\]]+)(\.\.)?[>\]]$/.exec(w);
    if (!m) return esc(w);
    const arg = italic(m[2]!.toUpperCase()) + (m[3] ? '...' : '');
    return m[1] === '[' ? `[${arg}]` : arg;
  });
  const options = Object.entries(def.options ?? {}).map(([name, o]) => {
    const flag = flagTag(name, o, false);
    return o.demandOption ? flag : `[${flag}]`;
  });
  return [...words, ...options, ...(def.tail ? [esc(def.tail)] : [])].join(' ');
}

/** `--log-file FILE`: every spelling, or (in a synopsis) the first. */
function flagTag(name: string, o: FlagDef, aliases = true): string {
  const value = o.type === 'string' || o.type === 'number' ? ` ${italic(o.value ?? name.toUpperCase())}` : '';
  const flags = flagsOf(name, o);
  return (aliases ? flags : flags.slice(0, 1)).map(bold).join(', ') + value;
}

function optionEntry(name: string, o: FlagDef): string {
  const def = o.default === undefined || o.default === false ? '' : ` (default: ${String(o.default)})`;
  return tagged(flagTag(name, o), `${o.description ?? ''}${def}.`);
}

function positionalEntry(name: string, p: PositionalOptions): string {
  return tagged(italic(name.toUpperCase()), `${p.description ?? ''}.`);
}

function commandEntry(def: CommandDef): string {
  const parts = [tagged(commandSynopsis(def), def.details)];
  const args = [...Object.entries(def.positionals ?? {}).map(([n, p]) => positionalEntry(n, p)), ...Object.entries(def.options ?? {}).map(([n, o]) => optionEntry(n, o))];
  if (args.length) parts.push('.RS', ...args, '.RE');
  return parts.join('\n');
}

const EXIT_STATUS_SNOWFLOCK: Array<[string, string]> = [
  ['0', 'Done.'],
  ['1', 'doctor: something required is missing; setup: the user declined.'],
  ['2', 'Bad input: one line says what was wrong.'],
  ['3', 'This host lacks something snowflock needs: the line says what and how to get it.'],
  ['4', 'The cluster could not be provisioned: the line names the clone or host that failed.'],
  ['N', 'run and exec: the worst status of the command in the clones.'],
];

export function snowflockPage(): string {
  const globals = Object.entries(GLOBAL_OPTIONS as Record<string, Options>).map(([n, o]) => optionEntry(n, o));
  return (
    [
      header('snowflock', source()),
      section('name'),
      `snowflock \\- ${esc('private clusters of clones, made in a moment and gone afterwards')}`,
      section('synopsis'),
      `${bold('snowflock')} [${italic('global options')}] ${italic('command')} [${italic('arguments')}]`,
      section('description'),
      paragraph(
        "snowflock is the clone engine's command line: it provisions tickets of clones (network-namespace clones, or QEMU virtual machines cloned from a warm template) on a private network of their own, runs commands in them, and removes them with everything they hold. It also prepares a host (setup), checks one (doctor), and makes scripts' mpirun mean sfmpirun (shell-env). sfmpirun(1) runs MPI jobs on such clusters.",
      ),
      section('commands'),
      ...COMMANDS.map(commandEntry),
      section('global options'),
      ...globals,
      tagged(`${bold('-h')}, ${bold('--help')}`, 'Show help (of a command, after its name).'),
      tagged(bold('--version'), 'Show the version and the git commit it was built from.'),
      section('environment'),
      ...settingsEntries(),
      section('files'),
      tagged(italic('setup/packages.txt'), 'In the package: the Debian packages snowflock drives, which snowflock setup installs.'),
      tagged(italic('dist/dropin/'), `In the package: the ${DROPIN_NAMES.join(' and ')} that snowflock shell-env puts first on PATH.`),
      section('exit status'),
      ...statusEntries(EXIT_STATUS_SNOWFLOCK),
      section('examples'),
      literal([
        'snowflock setup --yes                 # Debian packages and the guest kernel',
        'eval "$(snowflock shell-env)"         # mpirun and mpiexec now mean sfmpirun',
        'mpirun -np 4 ./hello                  # ... on 4 fresh clones',
        'eval "$(snowflock shell-env --undo)"  # and back',
        'snowflock run -n 8 -- hostname',
        'snowflock up -n 4; snowflock exec TICKET all -- ip -br addr; snowflock down TICKET',
        'source <(snowflock completion)        # bash completion',
      ]),
      section('see also'),
      `${bold('sfmpirun')}(1)`,
    ].join('\n') + '\n'
  );
}

/** sfmpiexec(1) is the same page. */
export const sfmpiexecPage = (): string => '.so man1/sfmpirun.1\n';
