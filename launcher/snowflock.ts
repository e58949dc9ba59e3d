#!/usr/bin/env node
/**
 * snowflock: private clusters of clones from the command line.
 *   up, exec, run, ps, down, cleanup, doctor (see --help).
 */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { UserError } from '../src/errors.js';
import { debugRequested, packageVersion, reportError, setupLogging, withGlobalOptions, type GlobalArgs } from './cli/common.js';
import { cleanupCommand, doctorCommand, downCommand, execCommand, psCommand, runCommand, upCommand } from './cli/commands.js';

type Args = GlobalArgs & Record<string, unknown> & { '--'?: Array<string | number> };

/** Runs a subcommand with logging set up, recording its exit status. */
function action<A>(fn: (a: A) => Promise<number>) {
  return async (argv: unknown) => {
    const a = argv as Args;
    setupLogging(a);
    process.exitCode = await fn({ ...a, cmd: a['--']?.map(String) } as unknown as A);
  };
}

/** -n as the user typed it: the engine says what is wrong with it ("abc" must not become NaN first). */
const count = {
  alias: 'n',
  type: 'string',
  demandOption: true,
  description: 'Number of clones',
  coerce: (v: unknown) => {
    const text = String(Array.isArray(v) ? v[v.length - 1] : v).trim();
    if (!/^-?\d+$/.test(text)) throw new UserError(`-n needs a whole number of clones, not ${JSON.stringify(text)}`);
    return Number(text);
  },
} as const;
const provider = { type: 'string', default: 'auto', description: 'Kind of clone: auto, netns or vm' } as const;
const coldBoot = { type: 'boolean', default: false, description: 'vm: boot every clone instead of cloning the template' } as const;

export async function main(argv: string[]): Promise<void> {
  await withGlobalOptions(yargs(argv))
    .scriptName('snowflock')
    .usage('$0 <command>: private clusters of clones, made in a moment and gone afterwards')
    .parserConfiguration({ 'populate--': true })
    .command('up', 'Create clones and keep them (until snowflock down)', (y) => y.option('n', count).option('provider', provider).option('cold-boot', coldBoot), action(upCommand))
    .command(
      'exec <ticket> [clone]',
      'Run a command in one clone (id or hostname) or all of a live ticket: exec TICKET [CLONE|all] -- CMD...',
      (y) => y.positional('ticket', { type: 'string', demandOption: true }).positional('clone', { type: 'string' }),
      action(execCommand),
    )
    .command(
      'run',
      'Create clones, run a command in every one (output prefixed by clone), tear down: run -n N -- CMD...',
      (y) => y.option('n', count).option('provider', provider).option('cold-boot', coldBoot),
      action(runCommand),
    )
    .command('ps', 'List live tickets', (y) => y, action(psCommand))
    .command('down <tickets..>', 'Remove tickets and everything they hold', (y) => y.positional('tickets', { type: 'string', array: true }), action(downCommand))
    .command(
      'cleanup [ticket]',
      'Remove what state records name after a crash (tickets whose owner died; --all: every ticket)',
      (y) =>
        y
          .positional('ticket', { type: 'string', description: 'Only this ticket' })
          .option('all', { type: 'boolean', default: false, description: 'Also tickets of running owners and kept ones' })
          .option('templates', { type: 'boolean', default: false, description: "Also the vm provider's cached templates" }),
      action(cleanupCommand),
    )
    .command('doctor', 'Check this host and say how to fix what is missing', (y) => y, action(doctorCommand))
    .demandCommand(1, 'name a command (see snowflock --help)')
    .strict()
    .version(packageVersion())
    .alias('h', 'help')
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg, err) => {
      // Our own errors pass; yargs' (and those it wraps from coerce) become one line.
      if (err && err.name !== 'YError') throw err;
      throw new UserError(`${msg ?? err?.message}; see snowflock --help`);
    })
    .parseAsync();
}

main(hideBin(process.argv)).catch((e: unknown) => {
  process.exitCode = reportError('snowflock', e, debugRequested(process.argv));
});
