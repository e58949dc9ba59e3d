/**
 * One sf-pmix process (native/pmix), driven over its stdin/stdout with the protocol of
 * ./protocol.ts: start it listening on one address, register the job, hand out each rank's PMIx
 * environment, and hear what the ranks do (events below). The launcher starts the ranks itself.
 *
 * One server for the whole job: register the job with every node local (the default). One per
 * host: each server gets the nodes of its host as `localNodes`, and a FenceRelay (./fence-relay.ts)
 * carries the fences between them.
 *
 * Failure policy is the caller's: the server reports (abort, disconnected, a rank never seen),
 * the launcher decides to end the job.
 */
import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { ALL_RANKS, FrameReader, PROTOCOL_VERSION, encode, type Message, type MessageOf } from './protocol.js';

export interface NodeSpec {
  hostname: string;
  ranks: number[];
}

export interface JobSpec {
  /** Unique per job: Open MPI hashes it into the job id that names its shared-memory segments. */
  nspace: string;
  nodes: NodeSpec[];
  /** The app number of each rank (index = rank): MPMD jobs have several. */
  appnums: number[];
  /** Indices into nodes of the nodes this server serves; all of them when omitted. */
  localNodes?: number[];
}

export interface ServerOptions {
  /** The IPv4 address to listen on, and nothing else (the ticket's gateway). */
  listen: string;
  /** sf-pmix to run; native/build/sf-pmix of this tree by default. */
  binary?: string;
  /** How long a connecting client may take over its handshake (default 5000 ms). */
  handshakeMs?: number;
  /** libpmix's tmpdir for the server (default: libpmix's own choice). */
  tmpdir?: string;
  /**
   * Hand the ranks this host's hardware topology through a shared-memory file in tmpdir (needs
   * tmpdir), so that Open MPI does not discover it in every rank. Only when every rank runs on this
   * host and can open tmpdir: never for VM clones (Open MPI fails MPI_Init on a file it cannot open).
   */
  shareTopology?: boolean;
  /** The server's environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
  /** How long the server may take to come up (default 10 s). */
  startTimeoutMs?: number;
  /**
   * Starts sf-pmix somewhere else (another host of the job, through its agent: src/hosts/) with
   * its stdio piped here; `binary` and `env` are then that host's. Default: a child process here.
   */
  spawn?: () => ServerChild;
}

/** What the server is driven through: a child process, or one that runs on another host. */
export interface ServerChild {
  readonly pid?: number;
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  on(event: 'close', listener: (code: number | null, signal: NodeJS.Signals | null) => void): this;
  once(event: 'spawn', listener: () => void): this;
  once(event: 'error', listener: (err: Error) => void): this;
  kill(signal?: NodeJS.Signals): boolean;
}

export type Ranks = number[] | 'all';
export interface AbortEvent {
  rank: number;
  /** MPI_Abort's errorcode. */
  status: number;
  message: string;
  targets: Ranks;
}
export interface FenceEvent {
  seq: number;
  participants: Ranks;
  data: Buffer;
}
export interface LocalFenceEvent {
  seq: number;
  participants: Ranks;
  nbytes: number;
}
export interface UnsupportedEvent {
  rank: number | 'unknown';
  call: string;
}

export interface ServerEvents {
  connected: [rank: number];
  finalized: [rank: number];
  /** The rank's connection closed without PMIx_Finalize (it died, or exited early). */
  disconnected: [rank: number];
  abort: [event: AbortEvent];
  /** A fence that spans servers: answer it (FenceRelay does) with completeFence. */
  fence: [event: FenceEvent];
  /** A fence completed inside this server. */
  fenceLocal: [event: LocalFenceEvent];
  unsupported: [event: UnsupportedEvent];
  /** The server reported a fatal error or died; it is gone or going. */
  failure: [err: Error];
  /** A line the server wrote on stderr (libpmix's messages, our own diagnostics). */
  log: [line: string];
  exit: [code: number | null, signal: NodeJS.Signals | null];
}

/** native/build/sf-pmix of the tree this file is in (from launcher/pmix or dist/launcher/pmix). */
export function defaultBinary(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) && dirname(dir) !== dir) dir = dirname(dir);
  return join(dir, 'native', 'build', 'sf-pmix');
}

function ranksOf(v: number[]): Ranks {
  return v.includes(ALL_RANKS) ? 'all' : v;
}

type Waiter = { what: string; match: (m: Message) => boolean; resolve: (m: Message) => void; reject: (e: Error) => void };

export class PmixServer extends EventEmitter<ServerEvents> {
  private readonly reader = new FrameReader();
  private readonly waiters: Waiter[] = [];
  private readonly stderrTail: string[] = [];
  private failed: Error | undefined;
  private closing = false;
  private exitInfo: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  private readonly exited: Promise<void>;
  /** The URI libpmix advertises to clients. */
  uri = '';
  /** The ranks this server serves, once registered. */
  localRanks: number[] = [];

  private constructor(private readonly child: ServerChild) {
    super();
    this.exited = new Promise((resolve) => {
      child.on('close', (code, signal) => {
        this.exitInfo = { code, signal };
        const expected = this.closing && code === 0;
        this.fail(new Error(`sf-pmix exited (${signal ?? `status ${code}`})${this.tail()}`), false, !expected);
        this.emit('exit', code, signal);
        resolve();
      });
    });
    child.stdout.on('data', (chunk: Buffer) => this.onData(chunk));
    let partial = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (s: string) => {
      const lines = (partial + s).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) this.onLog(line);
    });
    child.stdin.on('error', () => {}); // EPIPE after the server died: reported through 'close'
  }

  get pid(): number {
    return this.child.pid ?? 0;
  }

  /** Starts sf-pmix, listening on opts.listen; resolves once libpmix is up. */
  static async start(opts: ServerOptions): Promise<PmixServer> {
    const binary = opts.binary ?? defaultBinary();
    if (!opts.spawn && !existsSync(binary)) throw new Error(`${binary} is missing: build the native core (npm run build, or make -C native)`);
    const child: ServerChild = opts.spawn ? opts.spawn() : spawn(binary, [], { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    const server = new PmixServer(child);
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', (e) => reject(new Error(`cannot start ${binary}: ${e.message}`)));
    });
    const timeout = opts.startTimeoutMs ?? 10_000;
    try {
      const ready = await server.request(
        {
          type: 'HELLO',
          version: PROTOCOL_VERSION,
          listen: opts.listen,
          handshakeMs: opts.handshakeMs ?? 5000,
          tmpdir: opts.tmpdir ?? '',
          shareTopology: opts.shareTopology ? 1 : 0,
        },
        'READY',
        (m) => m.type === 'READY',
        timeout,
      );
      if (ready.version !== PROTOCOL_VERSION) {
        throw new Error(`${binary} speaks protocol version ${ready.version}, this launcher ${PROTOCOL_VERSION}: rebuild both from one tree (npm run build)`);
      }
      server.uri = ready.uri;
      return server;
    } catch (e) {
      server.kill();
      await server.exited;
      throw e;
    }
  }

  /** Registers the job; resolves with the ranks this server serves. */
  async register(job: JobSpec): Promise<number[]> {
    const ok = await this.request(
      {
        type: 'JOB',
        nspace: job.nspace,
        nodes: job.nodes,
        appnums: job.appnums,
        localNodes: job.localNodes ?? job.nodes.map((_, i) => i),
      },
      'JOB_OK',
      (m) => m.type === 'JOB_OK',
    );
    this.localRanks = ok.localRanks;
    return ok.localRanks;
  }

  /** The PMIx environment of one rank this server serves (PMIX_* variables). */
  async env(rank: number): Promise<Record<string, string>> {
    const m = await this.request({ type: 'ENV_REQ', rank }, 'ENV', (x) => x.type === 'ENV' && x.rank === rank);
    const env: Record<string, string> = {};
    for (const v of m.vars) {
      const eq = v.indexOf('=');
      if (eq > 0) env[v.slice(0, eq)] = v.slice(eq + 1);
    }
    return env;
  }

  /** Answers a 'fence' event: data is every server's blob for it, in host order. */
  completeFence(seq: number, ok: boolean, data: Buffer = Buffer.alloc(0)): void {
    this.send({ type: 'FENCE_DONE', seq, ok: ok ? 1 : 0, data });
  }

  /** Deregisters the job and stops the server; kills it if it takes longer than timeoutMs. */
  async close(timeoutMs = 5000): Promise<void> {
    this.closing = true;
    if (!this.exitInfo) {
      this.send({ type: 'SHUTDOWN' });
      this.child.stdin.end();
      const timer = setTimeout(() => this.kill(), timeoutMs);
      await this.exited;
      clearTimeout(timer);
    }
  }

  kill(): void {
    this.closing = true;
    if (!this.exitInfo) this.child.kill('SIGKILL');
  }

  /** Resolves when the process is gone, with how it ended. */
  async whenExited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    await this.exited;
    return this.exitInfo!;
  }

  // ---- the channel ----

  private send(msg: Message): void {
    if (this.exitInfo || !this.child.stdin.writable) return;
    this.child.stdin.write(encode(msg));
  }

  private request<N extends Message['type']>(msg: Message, what: N, match: (m: Message) => boolean, timeoutMs?: number): Promise<MessageOf<N>> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const waiter: Waiter = {
        what,
        match,
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m as MessageOf<N>);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
      if (timeoutMs) {
        timer = setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(waiter), 1);
          reject(new Error(`sf-pmix did not answer ${msg.type} with ${what} within ${timeoutMs} ms${this.tail()}`));
        }, timeoutMs);
      }
      this.waiters.push(waiter);
      this.send(msg);
    });
  }

  private onData(chunk: Buffer): void {
    let msgs: Message[];
    try {
      msgs = this.reader.push(chunk);
    } catch (e) {
      this.fail(new Error(`sf-pmix broke the protocol: ${(e as Error).message}`), true);
      return;
    }
    for (const m of msgs) this.onMessage(m);
  }

  private onMessage(m: Message): void {
    const i = this.waiters.findIndex((w) => w.match(m));
    if (i >= 0) {
      this.waiters.splice(i, 1)[0].resolve(m);
      return;
    }
    switch (m.type) {
      case 'CONNECTED': this.emit('connected', m.rank); break;
      case 'FINALIZED': this.emit('finalized', m.rank); break;
      case 'DISCONNECTED': this.emit('disconnected', m.rank); break;
      case 'ABORT': this.emit('abort', { rank: m.rank, status: m.status, message: m.message, targets: m.targets.length ? ranksOf(m.targets) : 'all' }); break;
      case 'FENCE': this.emit('fence', { seq: m.seq, participants: ranksOf(m.participants), data: m.data }); break;
      case 'FENCE_LOCAL': this.emit('fenceLocal', { seq: m.seq, participants: ranksOf(m.participants), nbytes: m.nbytes }); break;
      case 'UNSUPPORTED': this.emit('unsupported', { rank: m.rank === ALL_RANKS ? 'unknown' : m.rank, call: m.call }); break;
      case 'ERROR': this.fail(new Error(`sf-pmix: ${m.message}`), false); break; // it exits after ERROR
      default: this.fail(new Error(`sf-pmix sent ${m.type} out of turn`), true);
    }
  }

  private onLog(line: string): void {
    this.stderrTail.push(line);
    if (this.stderrTail.length > 20) this.stderrTail.shift();
    this.emit('log', line);
  }

  private tail(): string {
    const lines = this.stderrTail.filter((l) => l.trim());
    return lines.length ? `; its last words: ${lines.slice(-5).join(' | ')}` : '';
  }

  /** Rejects every waiter; the first failure is the one reported (unless it is an asked-for end). */
  private fail(err: Error, kill: boolean, report = true): void {
    const first = !this.failed;
    this.failed ??= err;
    for (const w of this.waiters.splice(0)) w.reject(this.failed);
    if (first && report && this.listenerCount('failure') > 0) this.emit('failure', this.failed);
    if (kill) this.kill();
  }
}
