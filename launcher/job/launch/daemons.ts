/**
 * Watching the daemons of a native launcher (Open MPI's orted, Hydra's proxies). Each is started in
 * its clone by the remote-shell shim and, once up, connects back to its launcher on the one port
 * the ticket's firewall opened for it. Neither launcher gives up by itself when a daemon never
 * calls back: mpirun.openmpi then waits forever (orte_startup_timeout does not bound it in 4.1).
 *
 * So the job watches: every clone's daemon must have connected to the launcher's port within the
 * bound (SNOWFLOCK_DAEMON_TIMEOUT). A daemon that ends with a failure status before it was seen
 * connected has failed, unless its launcher ends within DEATH_GRACE_MS: a daemon can connect and be
 * cut off between two looks (an MPI_Abort at the job's start makes Hydra close its proxies' sockets
 * at once, and they exit 7), and then the launcher ends by itself with the job's own verdict; a
 * launcher that outlives its failed daemon by the grace is waiting for one that will never call
 * back. One that ends with 0 may simply have finished a short job between two looks, so it counts
 * against the bound only (the watch stops when the launcher exits). Connections are
 * read from the kernel's table of TCP sockets (/proc/net/tcp), not asked of the launcher; the
 * shim leaves each daemon's stderr and status in the log directory, so the failure line can name
 * the clone and say what its daemon said.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Clone } from '../../../src/providers/clone.js';
import { hexToAddress } from '../../../src/network/hostroutes.js';

export interface DaemonWatchOptions {
  /** The launcher's control port on the gateway. */
  port: number;
  clones: Clone[];
  /** Where the shims leave <host>.err and <host>.exit. */
  logDir: string;
  timeoutMs: number;
  /** Which launcher, for the message ("Open MPI's daemon"). */
  what: string;
  /** Called once, with the line that says which daemon failed and why. */
  onFailure(line: string): void;
}

const POLL_MS = 100;
const DEATH_GRACE_MS = 2000;

export class DaemonWatch {
  private readonly reported = new Set<string>();
  private readonly timer: NodeJS.Timeout;
  private readonly deadline: number;
  /** When a daemon was first seen ended with a failure before it reported. */
  private failedSince: number | undefined;
  private done = false;

  constructor(private readonly opts: DaemonWatchOptions) {
    this.deadline = Date.now() + opts.timeoutMs;
    this.timer = setInterval(() => this.check(), POLL_MS);
    this.timer.unref();
  }

  /** Whether every clone's daemon has called back. */
  get allReported(): boolean {
    return this.reported.size === this.opts.clones.length;
  }

  stop(): void {
    this.done = true;
    clearInterval(this.timer);
  }

  private check(): void {
    if (this.done) return;
    for (const peer of connectedPeers(this.opts.port)) this.reported.add(peer);
    const failed = this.opts.clones.find((c) => !this.reported.has(c.address) && (this.exitStatus(c) ?? 0) !== 0);
    if (failed) this.failedSince ??= Date.now();
    if (failed && Date.now() - this.failedSince! >= DEATH_GRACE_MS) return this.fail(`${this.opts.what} on clone ${failed.hostname} ended with status ${this.exitStatus(failed)} before it reported to its launcher${this.said(failed)}`);
    if (this.allReported) return this.stop();
    if (Date.now() > this.deadline) {
      const late = this.opts.clones.find((c) => !this.reported.has(c.address))!;
      const status = this.exitStatus(late);
      const s = Math.round(this.opts.timeoutMs / 1000);
      const how = status === null ? `did not report to its launcher within ${s} s` : `ended with status ${status} and did not report to its launcher within ${s} s`;
      this.fail(`${this.opts.what} on clone ${late.hostname} ${how} (SNOWFLOCK_DAEMON_TIMEOUT)${this.said(late)}`);
    }
  }

  private fail(line: string): void {
    this.stop();
    this.opts.onFailure(line);
  }

  private file(c: Clone, ext: string): string {
    return join(this.opts.logDir, `${c.address.replace(/[^A-Za-z0-9._-]/g, '_')}.${ext}`);
  }

  private exitStatus(c: Clone): number | null {
    const f = this.file(c, 'exit');
    return existsSync(f) ? Number(readFileSync(f, 'utf8').trim()) : null;
  }

  /** ": <the last lines of its stderr>", or that it said nothing / was never started. */
  private said(c: Clone): string {
    const f = this.file(c, 'err');
    if (!existsSync(f)) return '; its stderr is empty';
    const lines = readFileSync(f, 'utf8').split('\n').map((l) => l.trim()).filter(Boolean);
    return lines.length ? `; its stderr: ${lines.slice(-3).join(' | ')}` : '; its stderr is empty';
  }
}

/** Remote IPv4 addresses of established TCP connections to local `port` (this network namespace). */
export function connectedPeers(port: number): string[] {
  let text: string;
  try {
    text = readFileSync('/proc/net/tcp', 'utf8');
  } catch {
    return [];
  }
  const peers: string[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 4 || f[3] !== '01') continue; // 01: ESTABLISHED
    const [, localPort] = f[1]!.split(':');
    if (parseInt(localPort!, 16) !== port) continue;
    peers.push(hexToAddress(f[2]!.split(':')[0]!));
  }
  return peers;
}
