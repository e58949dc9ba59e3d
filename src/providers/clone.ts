/**
 * A clone, whatever provides it: an id 0..m-1 of its ticket, a hostname and address on the ticket's
 * network, and a way to start processes inside it. CloneInfo is what the ticket's record keeps of a
 * clone so that another process (snowflock exec, the remote-shell shim) can reach it again.
 */
import type { Readable, Writable } from 'node:stream';
import type { Ticket } from '../ticket/ticket.js';

export interface SpawnOptions {
  /** The complete environment of the new process (nothing is inherited implicitly). */
  env: Record<string, string>;
  /** Working directory inside the clone; defaults to the caller's cwd for netns. */
  cwd?: string;
  /** 'pipe' gives a writable stdin; 'ignore' connects /dev/null. */
  stdin?: 'pipe' | 'ignore';
  /** vm: how the host reaches the guest to start the process (the agent's control channel by
   * default, or SSH); namespace clones have only one way in and ignore it. */
  channel?: 'agent' | 'ssh';
}

export interface ExitStatus {
  /** Exit code, or null when killed by a signal. */
  code: number | null;
  /** Signal name (e.g. 'SIGSEGV') when killed by a signal. */
  signal: NodeJS.Signals | null;
}

/** A process running inside a clone. */
export interface CloneProcess {
  readonly stdin: Writable | null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** Sends a signal to the process inside the clone. Never throws once the process has exited. */
  kill(signal?: NodeJS.Signals): void;
  /** Resolves once when the process has exited and its stdout/stderr have ended. Never rejects. */
  readonly exited: Promise<ExitStatus>;
}

export interface Clone {
  ticket: Ticket;
  /** 0..m-1 */
  id: number;
  hostname: string;
  address: string;
  mac: string;
  /** Starts argv[0] (looked up in PATH of opts.env) inside the clone. */
  spawn(argv: string[], opts: SpawnOptions): CloneProcess;
  /**
   * Makes a directory (mode 0700, and its parents) in the clone's own filesystem without starting
   * a process there, where the provider can; otherwise callers run mkdir in the clone.
   */
  makeDir?(path: string): Promise<void>;
}

/** What the record keeps of a clone so that another process can reach it. */
export interface CloneInfo {
  id: number;
  hostname: string;
  address: string;
  mac: string;
  /** Provider-specific: the holder PID for netns, the agent socket for vm. */
  handle: Record<string, unknown>;
}
