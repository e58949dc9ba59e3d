/**
 * Running a program to its end and taking its output: what the engine does with ip, nft, ldd,
 * scontrol and the rest. Written here rather than with execa: execa and its dependencies are about
 * 250 KB of JavaScript that every job compiled at start (about 30 ms, issue 13), for the few
 * options below.
 *
 * The result keeps the shape the callers were written against: stdout and stderr as text without
 * their final newline, exitCode (null when a signal ended it), signal. A failure rejects with a
 * CommandError naming the command, unless `reject: false` asks for the result whatever happened;
 * callers that read a result themselves (ip.ts) throw the same error.
 */
import { spawn, type StdioOptions } from 'node:child_process';

export interface CommandOptions {
  /** Written to the program's stdin, which is then closed; without it, stdin is /dev/null. */
  input?: string;
  /** false: resolve with the result when the program fails, instead of rejecting. */
  reject?: boolean;
  /** A process group of its own, out of reach of a Ctrl-C on the launcher's terminal. */
  detached?: boolean;
  /** SIGTERM after this many milliseconds, SIGKILL 2 s later; timedOut tells. */
  timeout?: number;
  env?: NodeJS.ProcessEnv;
  /** false: `env` is the whole environment, not additions to this process's. */
  extendEnv?: boolean;
  cwd?: string;
  /** 'inherit': the program uses this process's terminal; stdout and stderr then come back empty. */
  stdio?: 'inherit';
}

export interface CommandResult {
  /** The command line, for messages. */
  command: string;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** It did not exit with status 0 (or could not start). */
  failed: boolean;
  timedOut: boolean;
}

/** A command that failed: its command line and what it said (its first lines make the message). */
export class CommandError extends Error {
  constructor(
    readonly command: string,
    readonly stderr: string,
  ) {
    super(`${command} failed: ${stderr.trim().split('\n').slice(0, 3).join('; ')}`);
    this.name = 'CommandError';
  }
}

/** The CommandError of a failed result: its stderr, or how it ended when it said nothing. */
function errorOf(r: CommandResult): CommandError {
  const how = r.timedOut ? 'timed out' : r.signal ? `killed by ${r.signal}` : `exit code ${r.exitCode}`;
  return new CommandError(r.command, r.stderr || how);
}

const KILL_AFTER_TERM_MS = 2000;

const withoutFinalNewline = (s: string): string => s.replace(/\r?\n$/, '');

/** Runs `file` with `args` to its end; see CommandOptions. */
export function runCommand(file: string, args: readonly string[] = [], opts: CommandOptions = {}): Promise<CommandResult> {
  const command = [file, ...args].join(' ');
  const stdio: StdioOptions = opts.stdio === 'inherit' ? 'inherit' : [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'];
  const env = opts.env && opts.extendEnv !== false ? { ...process.env, ...opts.env } : opts.env;
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio, detached: opts.detached ?? false, cwd: opts.cwd, env });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (b: Buffer) => out.push(b));
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    let timedOut = false;
    let killer: NodeJS.Timeout | undefined;
    const timer =
      opts.timeout === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill('SIGTERM');
            killer = setTimeout(() => child.kill('SIGKILL'), KILL_AFTER_TERM_MS);
          }, opts.timeout);
    if (child.stdin) {
      child.stdin.on('error', () => undefined); // a program that exits without reading all of it
      child.stdin.end(opts.input);
    }
    let startError: Error | null = null;
    child.once('error', (e) => (startError = e));
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      clearTimeout(killer);
      const stderr = withoutFinalNewline(Buffer.concat(err).toString());
      const result: CommandResult = {
        command,
        exitCode: startError ? null : code,
        signal: startError ? null : signal,
        stdout: withoutFinalNewline(Buffer.concat(out).toString()),
        stderr: startError ? (startError as Error).message : stderr,
        failed: startError !== null || code !== 0,
        timedOut,
      };
      if (result.failed && opts.reject !== false) reject(errorOf(result));
      else resolve(result);
    });
  });
}
