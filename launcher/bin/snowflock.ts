#!/usr/bin/env node
/**
 * snowflock: private clusters of clones from the command line.
 *   up, exec, run, ps, down, cleanup, doctor, setup, shell-env, completion, agent, warm (see --help). The
 *   commands are defined in launcher/cli/definitions.ts, which the manual and completion share.
 */
import yargs, { type Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { UsageError } from '../../src/common/errors.js';
import { setupLogging, withGlobalOptions, type GlobalArgs } from '../cli/common.js';
import { COMMANDS, type CommandDef, type CommandName } from '../cli/definitions.js';
import { debugRequested, reportError } from '../cli/errors.js';
import { exitOnClosedOutput } from '../cli/signals.js';
import { versionLine } from '../cli/version.js';

type Args = GlobalArgs & Record<string, unknown> & { '--'?: Array<string | number> };
// Each command takes its own argument shape; the definitions and yargs give it.
type Action = (a: any) => Promise<number>;

/**
 * Each command's implementation, loaded when it runs: `eval "$(snowflock shell-env)"` in a shell's
 * startup file should not pay for loading the engine.
 */
const ACTIONS: Record<CommandName, () => Promise<Action>> = {
  up: async () => (await import('../cli/commands.js')).upCommand,
  exec: async () => (await import('../cli/commands.js')).execCommand,
  run: async () => (await import('../cli/commands.js')).runCommand,
  ps: async () => (await import('../cli/commands.js')).psCommand,
  down: async () => (await import('../cli/commands.js')).downCommand,
  cleanup: async () => (await import('../cli/commands.js')).cleanupCommand,
  doctor: async () => (await import('../cli/commands.js')).doctorCommand,
  setup: async () => (await import('../cli/setup.js')).setupCommand,
  'shell-env': async () => (await import('../cli/shell-env.js')).shellEnvCommand,
  completion: async () => (await import('../cli/completion.js')).completionCommand,
  agent: async () => (await import('../cli/agent.js')).agentCommand,
  warm: async () => (await import('../cli/warm.js')).warmCommand,
};

/** Runs a subcommand with logging set up, recording its exit status. */
function action(name: CommandName) {
  return async (argv: unknown) => {
    const a = argv as Args;
    setupLogging(a);
    const fn = await ACTIONS[name]();
    process.exitCode = await fn({ ...a, cmd: a['--']?.map(String) });
  };
}

/** A command's positionals and options, as its definition gives them. */
function configure<T>(y: Argv<T>, def: CommandDef): Argv<T> {
  let out = y;
  for (const [name, opts] of Object.entries(def.positionals ?? {})) out = out.positional(name, opts);
  for (const [name, opts] of Object.entries(def.options ?? {})) out = out.option(name, opts);
  return out;
}

/** --version anywhere before `--`: answered before yargs, which would first demand a command. */
function wantsVersion(argv: string[]): boolean {
  const cut = argv.indexOf('--');
  return (cut < 0 ? argv : argv.slice(0, cut)).includes('--version');
}

export async function main(argv: string[]): Promise<void> {
  exitOnClosedOutput();
  if (wantsVersion(argv)) {
    // Computed only when asked: from the sources it asks git.
    process.stdout.write(versionLine('snowflock') + '\n');
    return;
  }
  let y = withGlobalOptions(yargs(argv))
    .scriptName('snowflock')
    .usage('$0 <command>: private clusters of clones, made in a moment and gone afterwards')
    .parserConfiguration({ 'populate--': true });
  for (const def of COMMANDS) y = y.command(def.usage, def.summary, (c) => configure(c, def), action(def.name));
  await y
    .demandCommand(1, 'name a command (see snowflock --help)')
    .strict()
    .version(false)
    .option('version', { type: 'boolean', description: 'Show the version and the commit it was built from' })
    .alias('h', 'help')
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg, err) => {
      // Our own errors pass; yargs' (and those it wraps from coerce) become one line.
      if (err && err.name !== 'YError') throw err;
      throw new UsageError(`${msg ?? err?.message}; see snowflock --help`);
    })
    .parseAsync();
}

main(hideBin(process.argv)).catch((e: unknown) => {
  process.exitCode = reportError('snowflock', e, debugRequested(process.argv));
});
