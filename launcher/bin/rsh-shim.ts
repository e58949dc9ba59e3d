#!/usr/bin/env node
/**
 * The remote shell that Open MPI's mpirun (plm_rsh_agent) and Hydra's mpiexec (-launcher-exec) use
 * in place of ssh to start their daemons inside the clones:
 *
 *   rsh-shim [--sf-log DIR] [ssh options] <host> <command words...>
 *
 * It finds the job's ticket from SNOWFLOCK_TICKET (and SNOWFLOCK_STATE_DIR), reattaches to its clones
 * through the engine, picks the clone whose address or hostname is <host>, and runs the command
 * words joined by spaces through `sh -c` inside it, as sshd would. stdin, stdout and stderr are piped
 * both ways and the command's exit status becomes the shim's (128+N for signal N, as ssh reports).
 * The spawned environment is the shim's own minus SNOWFLOCK_* and the remote-shell setting: the
 * launcher gave it the ranks' environment. Nothing here depends on the provider.
 *
 * With --sf-log DIR (the wrapper sfmpirun writes passes it), the daemon's stderr is also kept in
 * DIR/<host>.err and its status in DIR/<host>.exit, so that sfmpirun can name a daemon that failed
 * (see launcher/job/launch/daemons.ts).
 */
import { realpathSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Engine } from '../../src/engine.js';
import { settings } from '../../src/common/config.js';
import { UsageError } from '../../src/common/errors.js';
import { shellStatus } from '../../src/common/signals.js';
import { errorLine, reportError } from '../cli/errors.js';

/** ssh options that take a value, which must be skipped along with them. */
const optionsWithValue = new Set(['-b', '-c', '-D', '-E', '-e', '-F', '-I', '-i', '-J', '-L', '-l', '-m', '-O', '-o', '-p', '-Q', '-R', '-S', '-W', '-w']);

export function parseShimArgs(args: string[]): { host: string; command: string; logDir?: string } {
  let i = 0;
  let logDir: string | undefined;
  if (args[0] === '--sf-log') {
    logDir = args[1];
    i = 2;
  }
  while (i < args.length && args[i]!.startsWith('-')) {
    i += optionsWithValue.has(args[i]!) ? 2 : 1;
  }
  const host = args[i];
  const words = args.slice(i + 1);
  if (!host || words.length === 0) throw new UsageError('usage: rsh-shim [ssh options] HOST COMMAND...');
  // user@host: the user part means nothing inside a clone.
  return { host: host.includes('@') ? host.slice(host.indexOf('@') + 1) : host, command: words.join(' '), ...(logDir ? { logDir } : {}) };
}

/**
 * Drops the launcher's own remote-shell setting from a daemon's command. Daemons start no further
 * daemons (no tree spawn), but Open MPI's orted still checks that its agent exists, and inside a VM
 * the host's shim path does not.
 */
export function withoutRshAgent(command: string): string {
  return command.replace(/(^|\s)--?mca\s+plm_rsh_agent\s+("[^"]*"|'[^']*'|\S+)/g, '');
}

async function main(): Promise<number> {
  const { host, command, logDir } = parseShimArgs(process.argv.slice(2));
  const log = logDir ? daemonLog(logDir, host) : null;
  try {
    const status = await runDaemon(host, command, log);
    log?.exit(status);
    return status;
  } catch (e) {
    log?.fail(errorLine('rsh-shim', e));
    throw e;
  }
}

async function runDaemon(host: string, command: string, log: DaemonLog | null): Promise<number> {
  const ticketId = settings().ticket;
  if (!ticketId) throw new UsageError('SNOWFLOCK_TICKET is not set; the shim is only for sfmpirun');
  const engine = new Engine();
  const { clones } = await engine.attach(ticketId);
  const clone = clones.find((c) => c.address === host || c.hostname === host);
  if (!clone) throw new UsageError(`no clone ${host} in ticket ${ticketId}`);

  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('SNOWFLOCK_') && k !== 'OMPI_MCA_plm_rsh_agent') env[k] = v;
  const proc = clone.spawn(['sh', '-c', withoutRshAgent(command)], { env, cwd: env.HOME ?? '/', stdin: 'pipe' });
  if (proc.stdin) {
    process.stdin.pipe(proc.stdin);
    proc.stdin.on('error', () => undefined);
  }
  proc.stdout.pipe(process.stdout);
  proc.stderr.pipe(process.stderr);
  if (log) proc.stderr.on('data', (chunk: Buffer) => log.stderr(chunk));
  // The launcher stops its daemons by signalling their remote shells: pass that on.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => proc.kill(sig));
  const status = await proc.exited;
  process.stdin.unpipe();
  process.stdin.destroy();
  return shellStatus(status, 255);
}

interface DaemonLog {
  stderr(chunk: Buffer): void;
  exit(status: number): void;
  fail(line: string): void;
}

/** DIR/<host>.err keeps the last 8 KiB of the daemon's stderr; DIR/<host>.exit its status. */
function daemonLog(dir: string, host: string): DaemonLog {
  const base = join(dir, host.replace(/[^A-Za-z0-9._-]/g, '_'));
  let tail = Buffer.alloc(0);
  return {
    stderr(chunk) {
      tail = Buffer.concat([tail, chunk]).subarray(-8192);
      writeFileSync(`${base}.err`, tail);
    },
    exit(status) {
      writeFileSync(`${base}.exit`, `${status}\n`);
    },
    fail(line) {
      writeFileSync(`${base}.err`, Buffer.concat([tail, Buffer.from(line + '\n')]));
      writeFileSync(`${base}.exit`, '255\n');
    },
  };
}

// Run only as a program: tests import the word handling above.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      reportError('rsh-shim', e, false);
      // ssh's own status for a failure of its own, which the launchers know.
      process.exitCode = 255;
    },
  );
}
