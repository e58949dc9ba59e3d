/**
 * The native memory helpers (memserver, memtap) as child processes driven over stdin/stdout lines:
 * the ticket's token goes in as the first line (never on a command line, where every local user
 * could read it), control lines go in, answers and events come out. A helper exits when its stdin
 * closes, so none outlives the process that started it; on a lifeline (common/lifeline.ts) it dies
 * with that process whatever kills it, SIGKILL included.
 *
 * Recorded before it runs: a helper starts behind a gate (a shell waiting for one line on its
 * stdin, then exec'ing the helper in place, as src/workdir/server.ts does for ganesha), so that the
 * caller can record its pid and start time in the ticket's record before the helper does anything.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostError, ProvisionError } from '../common/errors.js';
import { onLifeline } from '../common/lifeline.js';
import { startTime } from '../common/processes.js';
import { findInPath, nativeHelpersProblem } from '../doctor/checks.js';

/** The native programs of memory on demand (native/memory/). */
export const MEMORY_HELPERS = ['memdesc', 'memserver', 'memtap', 'libnohuge.so'];

/** Path of a native program of nativeDir (SNOWFLOCK_NATIVE_DIR; native/build-asan for the sanitizer build). */
export function nativeProgram(nativeDir: string, name: string): string {
  const problem = nativeHelpersProblem(nativeDir, [name]);
  if (problem) throw new HostError(`memory on demand needs ${name}`, problem);
  return join(nativeDir, name);
}

/** Refuses (HostError) a host that cannot run memtaps: helpers, /dev/fuse, fusermount3. */
export function requireMemoryHost(nativeDir: string, role: 'server' | 'tap'): void {
  const problem = nativeHelpersProblem(nativeDir, role === 'server' ? ['memserver'] : ['memtap', 'libnohuge.so']);
  if (problem) throw new HostError('memory on demand cannot run on this host', problem);
  if (role === 'tap' && !existsSync('/dev/fuse')) throw new HostError('memtap needs /dev/fuse', 'load the fuse module (modprobe fuse)');
  if (role === 'tap' && !findInPath('fusermount3')) throw new HostError('memtap needs fusermount3 (it unmounts a memtap whose process died)', 'install the Debian package fuse3 (snowflock setup does)');
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface StartOptions {
  /** Names the helper in messages ("memtap on host sfmmB"). */
  label: string;
  token: string;
  /** The line prefix that says the helper is ready ("listening", "ready"). */
  readyPrefix: string;
  timeoutMs: number;
  /** Records the helper's process (pid and start time) before it runs; a failure stops it unstarted. */
  record?: (pid: number, start: number) => Promise<void>;
  /** native/build: run on a lifeline to this process (none: it must outlive us, a kept ticket's). */
  lifeline?: string;
  /** Prepended inside the lifeline: how to reach the host the helper runs on (nsenter ...). */
  prefix?: string[];
  /** Called with every line that is neither the ready line nor an answer ("failed ...", "filled"). */
  onEvent?: (line: string) => void;
}

/** How long an exited helper's stderr may take to drain (a grandchild may hold it open). */
const STDERR_GRACE_MS = 500;

/** The gate: sh reads one line, then becomes the helper (same pid); EOF instead starts nothing. */
const GATE = ['/bin/sh', '-c', 'read -r _ && exec "$0" "$@"'];

/** A running helper. */
export class Helper {
  private lines: string[] = [];
  private waiters: { prefix: string; resolve: (l: string) => void; reject: (e: Error) => void }[] = [];
  private stderr = '';
  private exit: Exit | null = null;
  readonly exited: Promise<Exit>;

  private constructor(
    private readonly child: ChildProcess,
    readonly label: string,
    private readonly onEvent?: (line: string) => void,
  ) {
    let buf = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        this.onLine(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
    });
    child.stderr!.setEncoding('utf8').on('data', (d: string) => {
      this.stderr = (this.stderr + d).slice(-4096);
    });
    child.stdin!.on('error', () => undefined); // a helper that died: its exit says why
    // 'exit' can come before the last of stderr has been read: the reason must not be lost.
    const stderrDone = new Promise<void>((ok) => child.stderr!.once('close', ok));
    this.exited = new Promise((resolve) => {
      child.once('exit', async (code, signal) => {
        await Promise.race([stderrDone, sleep(STDERR_GRACE_MS, undefined, { ref: false })]);
        this.exit = { code, signal };
        const why = new ProvisionError(`${label} exited (${signal ?? `code ${code}`}): ${this.lastError() || 'no message'}`);
        for (const w of this.waiters) w.reject(why);
        this.waiters = [];
        resolve(this.exit);
      });
      child.once('error', (e) => {
        this.exit = { code: null, signal: null };
        for (const w of this.waiters) w.reject(new ProvisionError(`${label} could not start: ${e.message}`));
        this.waiters = [];
        resolve(this.exit);
      });
    });
  }

  /** Starts argv behind the gate, records it, sends the token, waits for the ready line; on failure, says why in one line. */
  static async start(argv: string[], o: StartOptions): Promise<{ helper: Helper; ready: string }> {
    const inner = [...(o.prefix ?? []), ...GATE, ...argv];
    const full = o.lifeline ? onLifeline(o.lifeline, inner) : inner;
    // Detached: a terminal's Ctrl-C is the owner's to handle; the lifeline ends the helper with it.
    const child = spawn(full[0]!, full.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], detached: true });
    const h = new Helper(child, o.label, o.onEvent);
    const pid = child.pid;
    const start = pid === undefined ? null : startTime(pid);
    try {
      if (pid === undefined || start === null) throw new ProvisionError(`${o.label} could not start`);
      await o.record?.(pid, start);
    } catch (e) {
      child.kill('SIGKILL');
      await h.exited;
      throw e;
    }
    child.stdin!.write(`go\ntoken ${o.token}\n`);
    try {
      const ready = await h.next(o.readyPrefix, o.timeoutMs);
      return { helper: h, ready };
    } catch (e) {
      h.kill('SIGKILL');
      await h.exited;
      throw e instanceof ProvisionError ? new ProvisionError(`${o.label} did not start: ${h.lastError() || (e as Error).message}`) : e;
    }
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  get running(): boolean {
    return this.exit === null;
  }

  /** Lets this process exit while the helper runs (a kept ticket's helper outlives it). */
  unref(): void {
    this.child.unref();
    for (const s of [this.child.stdin, this.child.stdout, this.child.stderr]) (s as unknown as { unref?: () => void } | null)?.unref?.();
  }

  /** The helper's last line on stderr (its one-line reason), without the program name. */
  lastError(): string {
    const lines = this.stderr.trim().split('\n').filter((l) => l.trim());
    return (lines[lines.length - 1] ?? '').replace(/^(memtap|memserver|lifeline): /, '');
  }

  private onLine(line: string): void {
    const i = this.waiters.findIndex((w) => line.startsWith(w.prefix));
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      w!.resolve(line);
      return;
    }
    this.lines.push(line);
    this.onEvent?.(line);
  }

  /** The next line starting with prefix (one already seen counts), within timeoutMs. */
  next(prefix: string, timeoutMs: number): Promise<string> {
    const seen = this.lines.findIndex((l) => l.startsWith(prefix));
    if (seen >= 0) return Promise.resolve(this.lines.splice(seen, 1)[0]!);
    if (this.exit) return Promise.reject(new ProvisionError(`${this.label} is not running: ${this.lastError() || 'no message'}`));
    return new Promise((resolve, reject) => {
      const w = { prefix, resolve, reject };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new ProvisionError(`${this.label} did not answer "${prefix}" within ${timeoutMs} ms`));
      }, timeoutMs);
      w.resolve = (l) => (clearTimeout(timer), resolve(l));
      w.reject = (e) => (clearTimeout(timer), reject(e));
      this.waiters.push(w);
    });
  }

  /** Sends a control line and waits for the answer that starts with answerPrefix. */
  async request(line: string, answerPrefix: string, timeoutMs = 10_000): Promise<string> {
    const answer = this.next(answerPrefix, timeoutMs);
    this.child.stdin!.write(`${line}\n`);
    return answer;
  }

  /** Whether a line starting with prefix came as an event. */
  sawEvent(prefix: string): string | undefined {
    return this.lines.find((l) => l.startsWith(prefix));
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.exit) return;
    try {
      this.child.kill(signal);
    } catch {
      /* gone */
    }
  }

  /** Asks the helper to stop ("stop", then EOF), then SIGTERM, then SIGKILL; resolves when it exited. */
  async stop(graceMs = 5000): Promise<Exit> {
    if (this.exit) return this.exit;
    this.child.stdin!.end('stop\n');
    const t1 = setTimeout(() => this.kill('SIGTERM'), graceMs);
    const t2 = setTimeout(() => this.kill('SIGKILL'), 2 * graceMs);
    const x = await this.exited;
    clearTimeout(t1);
    clearTimeout(t2);
    return x;
  }
}
