/**
 * What every snowflock command line shares: the global flags (-v, --log-file, --debug, --state-dir),
 * logging set up from them, and the top-level error rule: a UserError is one line and its exit code;
 * anything else is a bug and shows its stack.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Argv } from 'yargs';
import { projectRoot } from '../../src/config.js';
import { isUserError } from '../../src/errors.js';
import { configureLogging } from '../../src/log.js';

export interface GlobalArgs {
  verbose: number;
  logFile?: string;
  debug: boolean;
  stateDir?: string;
}

export function withGlobalOptions<T>(y: Argv<T>): Argv<T & GlobalArgs> {
  return y
    .option('verbose', { alias: 'v', type: 'count', description: 'Show steps with timings (-vv: details)' })
    .option('log-file', { type: 'string', description: 'Also write every log entry as JSON lines to this file' })
    .option('debug', { type: 'boolean', default: false, description: 'Show stack traces of errors' })
    .option('state-dir', { type: 'string', description: 'Where state records live (default /run/snowflock, or SNOWFLOCK_STATE_DIR)' }) as unknown as Argv<
    T & GlobalArgs
  >;
}

export function setupLogging(args: GlobalArgs): void {
  configureLogging({ verbosity: args.verbose ?? 0, logFile: args.logFile });
}

export function packageVersion(): string {
  return (JSON.parse(readFileSync(join(projectRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}

/** Prints an error the way snowflock's commands do; returns the exit status. */
export function reportError(program: string, e: unknown, debug: boolean): number {
  if (isUserError(e)) {
    process.stderr.write(`${program}: ${e.message}\n`);
    if (debug && e.stack) process.stderr.write(e.stack + '\n');
    return e.exitCode;
  }
  process.stderr.write(`${program}: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  return 1;
}

/** Whether --debug is on the command line (known before yargs has parsed). */
export function debugRequested(argv: string[]): boolean {
  const cut = argv.indexOf('--');
  return (cut < 0 ? argv : argv.slice(0, cut)).includes('--debug');
}
