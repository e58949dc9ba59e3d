/**
 * Running iproute2 and nft. Many netlink operations go through one `ip -batch` process, which is
 * what makes creating dozens of clones cheap. Each runs in a process group of its own: a Ctrl-C on
 * the terminal goes to the launcher's group, and a second one must not kill the teardown's own
 * helpers halfway (a killed `ip -batch` leaves links that no record names any more).
 */
import { CommandError, runCommand } from '../common/command.js';

export interface BatchOptions {
  /** Run inside this named network namespace (ip -n). */
  netns?: string;
  /** Keep going after a failing line (ip -force); the failures are returned, not thrown. */
  force?: boolean;
}

/** Runs lines through `ip -batch -`; returns the stderr of failed lines when force is set. */
export async function ipBatch(lines: string[], opts: BatchOptions = {}): Promise<string[]> {
  if (lines.length === 0) return [];
  const args = [...(opts.netns ? ['-n', opts.netns] : []), ...(opts.force ? ['-force'] : []), '-batch', '-'];
  const r = await runCommand('ip', args, { input: lines.join('\n') + '\n', reject: false, detached: true });
  const errors = r.stderr ? r.stderr.split('\n').filter((l) => l.trim() !== '') : [];
  if (r.signal) throw new CommandError(`ip ${args.join(' ')}`, `killed by ${r.signal}`);
  if (r.exitCode !== 0 && !opts.force) throw new CommandError(`ip ${args.join(' ')}`, r.stderr || String(r.exitCode));
  return errors;
}

/** Runs an nft script (nft -f -). */
export async function nftScript(script: string): Promise<void> {
  const r = await runCommand('nft', ['-f', '-'], { input: script, reject: false, detached: true });
  if (r.exitCode !== 0) throw new CommandError('nft -f -', r.stderr || String(r.exitCode));
}

export async function nft(args: string[]): Promise<{ ok: boolean; stdout: string; stderr: string }> {
  const r = await runCommand('nft', args, { reject: false, detached: true });
  return { ok: r.exitCode === 0, stdout: r.stdout, stderr: r.stderr || (r.signal ? `killed by ${r.signal}` : '') };
}

/** `ip -j ...` parsed. */
export async function ipJson<T>(args: string[]): Promise<T> {
  const r = await runCommand('ip', ['-j', ...args], { detached: true });
  return JSON.parse(r.stdout || '[]') as T;
}
