/**
 * The edge where errors meet the user, for every command (sfmpirun, snowflock, the shim): the
 * program's name goes in front here and nowhere else. A UserError is one line and its exit code;
 * anything else is a bug and shows its stack.
 */
import { isUserError } from '../../src/common/errors.js';

/** The line a user sees for an error of `program` (without the stack). */
export function errorLine(program: string, e: unknown): string {
  if (isUserError(e)) return `${program}: ${e.message}`;
  return `${program}: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`;
}

/** Prints an error the way every command does; returns the exit status. */
export function reportError(program: string, e: unknown, debug: boolean): number {
  writeStderr(errorLine(program, e) + '\n');
  if (isUserError(e)) {
    if (debug && e.stack) writeStderr(e.stack + '\n');
    return e.exitCode;
  }
  return 1;
}

/** Whether --debug is on the command line (known before the options are parsed). */
export function debugRequested(argv: string[]): boolean {
  const cut = argv.indexOf('--');
  return (cut < 0 ? argv : argv.slice(0, cut)).includes('--debug');
}

/** A closed stderr (a reader that went away) must not turn an error report into a crash. */
function writeStderr(text: string): void {
  if (!process.stderr.destroyed) process.stderr.write(text);
}
