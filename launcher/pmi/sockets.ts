/**
 * The TCP sockets that processes hold, as native/sockets lists them: endpoints, state, and the
 * bytes waiting in each (unread by the holder, unacknowledged by the peer). One spelling per
 * endpoint, so that the two ends of a connection, seen from two processes, can be matched.
 */
import { spawn } from 'node:child_process';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import ipaddr from 'ipaddr.js';
import { settings } from '../../src/common/config.js';
import type { Clone, CloneProcess } from '../../src/providers/clone.js';

export const TCP_ESTABLISHED = 1;

export interface HeldSocket {
  pid: number;
  fd: number;
  state: number;
  /** Canonical endpoints (`endpoint`); remote is '-' when not connected. */
  local: string;
  remote: string;
  /** Received, not read by the process yet. */
  unread: number;
  /** Written, not acknowledged by the peer yet. */
  unsent: number;
  /** Bytes received, and sent and acknowledged, over the socket's life: they move while data moves. */
  received: number;
  acked: number;
}

/** 'a.b.c.d:port' for IPv4 and IPv4-mapped IPv6, '[full:ipv6:...]:port' otherwise. */
export function endpoint(address: string, port: number): string {
  let ip: ipaddr.IPv4 | ipaddr.IPv6;
  try {
    ip = ipaddr.parse(address);
  } catch {
    return `${address}:${port}`;
  }
  if (ip.kind() === 'ipv6' && (ip as ipaddr.IPv6).isIPv4MappedAddress()) ip = (ip as ipaddr.IPv6).toIPv4Address();
  return ip.kind() === 'ipv4' ? `${ip.toString()}:${port}` : `[${(ip as ipaddr.IPv6).toNormalizedString()}]:${port}`;
}

/** 'a.b.c.d:port' or '[v6]:port' in canonical form; null when it is neither. */
export function parseEndpoint(text: string): string | null {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|(\d+\.\d+\.\d+\.\d+)):(\d{1,5})$/.exec(text);
  if (!m) return null;
  const address = m[1] ?? m[2]!;
  return ipaddr.isValid(address) ? endpoint(address, Number(m[3])) : null;
}

/** The lines of native/sockets; lines it cannot read are skipped. */
export function parseSockets(text: string): HeldSocket[] {
  const out: HeldSocket[] = [];
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length !== 9 || !f.every((x, i) => (i === 3 || i === 4 ? x.length > 0 : /^\d+$/.test(x)))) continue;
    const local = parseEndpoint(f[3]!);
    const remote = f[4] === '-' ? '-' : parseEndpoint(f[4]!);
    if (!local || !remote) continue;
    out.push({ pid: Number(f[0]), fd: Number(f[1]), state: Number(f[2]), local, remote, unread: Number(f[5]), unsent: Number(f[6]), received: Number(f[7]), acked: Number(f[8]) });
  }
  return out;
}

/** Where native/sockets is (the settings' native directory). */
export function socketsHelper(env: NodeJS.ProcessEnv = process.env): string {
  return join(settings(env).nativeDir, 'sockets');
}

/** Output cap: a few dozen processes with a few dozen sockets each are a few KiB. */
const MAX_OUTPUT = 4 * 1024 * 1024;

/** Longest a request may take before the helper is taken for stuck and killed. */
const REQUEST_TIMEOUT_MS = 5000;
/** Helpers started per lister at most: one that keeps dying is not started again. */
const MAX_STARTS = 3;

/**
 * PIDs, or 'below': every process below the one that started the helper (native/sockets.c `~`):
 * on this host the launcher's descendants, in a VM guest every process there.
 */
export type Wanted = number[] | 'below';

interface Request {
  pids: Wanted;
  done: (sockets: HeldSocket[]) => void;
}

/** A `native/sockets --serve` running somewhere: its pipes, how to end it, and its end. */
export interface HelperProcess {
  stdin: Writable;
  stdout: Readable;
  kill(): void;
  /** Settles once it has exited (or could not start). */
  exited: Promise<unknown>;
}

/** Starts the helper: on this host (hostHelper), or elsewhere (processHelper). */
export type HelperStarter = () => HelperProcess;

/** The helper on this host. It never keeps the launcher alive, and dies with it (PR_SET_PDEATHSIG). */
export function hostHelper(helper = socketsHelper()): HelperStarter {
  return () => {
    const child = spawn(helper, ['--serve'], { stdio: ['pipe', 'pipe', 'ignore'] });
    const exited = new Promise((settle) => {
      child.on('error', settle);
      child.on('exit', settle);
    });
    child.unref();
    (child.stdin as unknown as Socket).unref();
    (child.stdout as unknown as Socket).unref();
    return { stdin: child.stdin!, stdout: child.stdout!, kill: () => child.kill('SIGKILL'), exited };
  };
}

/**
 * The helper as a process started elsewhere, e.g. in a clone through its agent (a VM guest image
 * of an MPICH job carries it at its host path: src/image/index.ts). What it writes on stderr
 * (processes it skipped) is dropped.
 */
export function processHelper(start: () => CloneProcess): HelperStarter {
  return () => {
    const p = start();
    p.stderr.resume();
    if (!p.stdin) throw new Error('the helper has no stdin');
    return { stdin: p.stdin, stdout: p.stdout, kill: () => p.kill('SIGKILL'), exited: p.exited };
  };
}

/** The helper inside a clone, through its agent (see processHelper). */
export function cloneHelper(clone: Pick<Clone, 'spawn'>, helper = socketsHelper()): HelperStarter {
  return processHelper(() => clone.spawn([helper, '--serve'], { env: { PATH: '/usr/bin:/bin:/usr/sbin:/sbin' }, cwd: '/', stdin: 'pipe', channel: 'agent' }));
}

/**
 * One helper kept for all the looks of a job: a look costs no process start (which, on a loaded
 * host, took longer than the look itself). One request at a time, in order; never rejects: a
 * helper that is missing, fails or hangs gives [] (nothing known).
 */
export class SocketLister {
  private child: HelperProcess | null = null;
  private starts = 0;
  private readonly queue: Request[] = [];
  private current: { req: Request; lines: string[]; timer: NodeJS.Timeout } | null = null;
  private partial = '';
  private closed = false;
  private readonly starter: HelperStarter;

  /** A path: that helper on this host; or how to start one elsewhere. */
  constructor(helper: string | HelperStarter = socketsHelper()) {
    this.starter = typeof helper === 'string' ? hostHelper(helper) : helper;
  }

  /** Starts the helper now, so that the first look does not wait for it. */
  start(): void {
    if (!this.child && !this.closed && this.starts < MAX_STARTS) this.spawn();
  }

  list(pids: Wanted): Promise<HeldSocket[]> {
    if ((pids !== 'below' && pids.length === 0) || this.closed) return Promise.resolve([]);
    return new Promise((done) => {
      this.queue.push({ pids, done });
      this.next();
    });
  }

  close(): void {
    this.closed = true;
    this.stop();
  }

  private spawn(): void {
    this.starts++;
    let child: HelperProcess;
    try {
      child = this.starter();
    } catch {
      return; // nothing to look with: every request gets []
    }
    this.child = child;
    void child.exited.then(() => this.lost(child));
    child.stdin.on('error', () => this.lost(child));
    child.stdout.setEncoding('latin1');
    child.stdout.on('data', (chunk: string) => this.onOutput(chunk));
  }

  private next(): void {
    if (this.current || this.queue.length === 0) return;
    if (!this.child) this.start();
    if (!this.child) {
      for (const r of this.queue.splice(0)) r.done([]);
      return;
    }
    const req = this.queue.shift()!;
    const timer = setTimeout(() => this.stop(), REQUEST_TIMEOUT_MS);
    timer.unref();
    this.current = { req, lines: [], timer };
    this.child.stdin.write(`${req.pids === 'below' ? '~' : req.pids.join(' ')}\n`);
  }

  private onOutput(chunk: string): void {
    const text = this.partial + chunk;
    const lines = text.split('\n');
    this.partial = lines.pop()!;
    // A helper that talks without end is not to be believed.
    if (this.partial.length > MAX_OUTPUT) return this.stop();
    for (const line of lines) {
      const cur = this.current;
      if (!cur) continue;
      if (line !== '.') {
        cur.lines.push(line);
        if (cur.lines.length > 100_000) return this.stop();
        continue;
      }
      clearTimeout(cur.timer);
      this.current = null;
      cur.req.done(parseSockets(cur.lines.join('\n')));
    }
    this.next();
  }

  /** Kills the helper; the request under way and those queued get nothing. */
  private stop(): void {
    const child = this.child;
    if (child) {
      this.child = null;
      child.kill();
    }
    this.fail();
  }

  private lost(child: HelperProcess): void {
    if (this.child !== child) return;
    this.child = null;
    this.fail();
  }

  private fail(): void {
    this.partial = '';
    if (this.current) {
      clearTimeout(this.current.timer);
      this.current.req.done([]);
      this.current = null;
    }
    if (this.closed || this.starts >= MAX_STARTS) for (const r of this.queue.splice(0)) r.done([]);
    else this.next();
  }
}
