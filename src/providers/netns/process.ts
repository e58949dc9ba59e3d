/**
 * A process inside a netns clone, started through native/enter, which joins the clone's namespaces,
 * forwards signals and ends exactly as the program ended (code or signal).
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import type { CloneProcess, ExitStatus, SpawnOptions } from '../../types.js';
import type { ProcessIdentity } from '../../state/process.js';

export function spawnInClone(nativeDir: string, holder: ProcessIdentity, argv: string[], opts: SpawnOptions): CloneProcess {
  if (argv.length === 0) throw new Error('spawn in a clone: empty argv');
  const cwd = opts.cwd ?? process.cwd();
  const child = spawn(
    join(nativeDir, 'enter'),
    ['--start', String(holder.start), String(holder.pid), cwd, '--', ...argv],
    { env: opts.env, stdio: [opts.stdin === 'pipe' ? 'pipe' : 'ignore', 'pipe', 'pipe'] },
  );
  const exited = new Promise<ExitStatus>((resolve) => {
    child.on('error', (e) => {
      child.stderr?.emit('data', Buffer.from(`snowflock: cannot start enter: ${e.message}\n`));
      resolve({ code: 125, signal: null });
    });
    child.on('close', (code, signal) => resolve({ code, signal }));
  });
  return {
    stdin: child.stdin,
    stdout: child.stdout!,
    stderr: child.stderr!,
    exited,
    kill(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      try {
        child.kill(signal);
      } catch {
        /* already gone */
      }
    },
  };
}
