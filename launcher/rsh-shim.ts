#!/usr/bin/env node
/**
 * The remote shell that Open MPI's mpirun (plm_rsh_agent) and Hydra's mpiexec (-launcher-exec) use
 * in place of ssh to start their daemons inside the clones:
 *
 *   rsh-shim [ssh options] <host> <command words...>
 *
 * It finds the job's ticket from SNOWFLOCK_TICKET (and SNOWFLOCK_STATE_DIR), reattaches to its clones
 * through the engine, picks the clone whose address or hostname is <host>, and runs the command
 * words joined by spaces through `sh -c` inside it, as sshd would. stdin, stdout and stderr are piped
 * both ways and the command's exit status becomes the shim's (128+N for signal N, as ssh reports).
 * The spawned environment is the shim's own minus SNOWFLOCK_* and the remote-shell setting: the
 * launcher gave it the ranks' environment. Nothing here depends on the provider.
 */
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { Engine } from '../src/engine.js';
import { signalNumber } from './job/exit.js';

/** ssh options that take a value, which must be skipped along with them. */
const optionsWithValue = new Set(['-b', '-c', '-D', '-E', '-e', '-F', '-I', '-i', '-J', '-L', '-l', '-m', '-O', '-o', '-p', '-Q', '-R', '-S', '-W', '-w']);

export function parseShimArgs(args: string[]): { host: string; command: string } {
  let i = 0;
  while (i < args.length && args[i]!.startsWith('-')) {
    i += optionsWithValue.has(args[i]!) ? 2 : 1;
  }
  const host = args[i];
  const words = args.slice(i + 1);
  if (!host || words.length === 0) throw new Error('usage: rsh-shim [ssh options] HOST COMMAND...');
  // user@host: the user part means nothing inside a clone.
  return { host: host.includes('@') ? host.slice(host.indexOf('@') + 1) : host, command: words.join(' ') };
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
  const { host, command } = parseShimArgs(process.argv.slice(2));
  const ticketId = process.env.SNOWFLOCK_TICKET;
  if (!ticketId) throw new Error('rsh-shim: SNOWFLOCK_TICKET is not set; the shim is only for sfmpirun');
  const engine = new Engine({ stateDir: process.env.SNOWFLOCK_STATE_DIR });
  const { clones } = await engine.attach(ticketId);
  const clone = clones.find((c) => c.address === host || c.hostname === host);
  if (!clone) throw new Error(`rsh-shim: no clone ${host} in ticket ${ticketId}`);

  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !k.startsWith('SNOWFLOCK_') && k !== 'OMPI_MCA_plm_rsh_agent') env[k] = v;
  const proc = clone.spawn(['sh', '-c', withoutRshAgent(command)], { env, cwd: env.HOME ?? '/', stdin: 'pipe' });
  if (proc.stdin) {
    process.stdin.pipe(proc.stdin);
    proc.stdin.on('error', () => undefined);
  }
  proc.stdout.pipe(process.stdout);
  proc.stderr.pipe(process.stderr);
  // The launcher stops its daemons by signalling their remote shells: pass that on.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => proc.kill(sig));
  const status = await proc.exited;
  process.stdin.unpipe();
  process.stdin.destroy();
  return status.signal ? 128 + signalNumber(status.signal) : (status.code ?? 255);
}

// Run only as a program: tests import the word handling above.
if (process.argv[1] && import.meta.url === pathToFileURL(realpathSync(process.argv[1])).href) {
  main().then(
    (code) => {
      process.exitCode = code;
    },
    (e: Error) => {
      process.stderr.write(`${e.message}\n`);
      process.exitCode = 255;
    },
  );
}
