/**
 * `snowflock agent`: the part of a job on one of its other hosts (SnowFlock's SFLD). It connects to
 * the job's launcher (the coordinator), proves the job secret (./channel.ts), and then does what
 * the coordinator asks, on this host, through this host's own Engine: claim the ticket's id and
 * subnet and make this host's end of its network (bridge, VXLAN, firewall), create the clones this
 * host holds, start processes in them (ranks) or one of snowflock's helpers next to them (sf-pmix),
 * carry their stdio, signal them, open ports, tear down. VM clones here start from the launcher's
 * template with memory on demand: the checkpoint request carries its memserver and token, and its
 * descriptor as payload, which become this engine's MemorySource (one memtap on this host). Every
 * resource is in this host's state record before it exists, as for any ticket (the engine's
 * records, in this host's state dir).
 *
 * It dies with its job. Its Engine's owner is the agent itself, so the lifeline helpers (holder
 * --owner, the ticket's reaper) end the clones and remove the rest if the agent is killed, SIGKILL
 * included. And the agent takes its launcher for gone, and tears everything down and exits, when
 * its control connection closes or falls silent for `deadMs` (a cut network never closes it), or
 * its stdin (the channel srun or SSH gave it) ends.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { runCommand } from '../common/command.js';
import { isUserError } from '../common/errors.js';
import type { Engine } from '../engine.js';
import type { Checkpoint } from '../providers/checkpoint.js';
import type { Clone } from '../providers/clone.js';
import { ClaimClash, type Ticket } from '../ticket/ticket.js';
import { agentHandshake, Channel } from './channel.js';
import type { MemorySource } from '../memory/source.js';
import type { Frame, HostFacts, MemoryOfferWire, MessageOf, RemoteCloneInfo } from './protocol.js';

export interface AgentOptions {
  /** The coordinator's address and port. */
  coordinator: { address: string; port: number };
  /** The host name this agent answers for (the job's name of this host). */
  host: string;
  secret: string;
  engine: Engine;
  /** This host's native helpers (sf-pmix). */
  nativeDir: string;
  /** The agent's stdin: its end means the launcher's side is gone. */
  lifeline?: Readable;
  /** One line for the agent's stderr. */
  say(line: string): void;
}

/** A process the agent started, as the coordinator refers to it. */
interface Proc {
  stdin: Writable | null;
  kill(signal: NodeJS.Signals): void;
}

const CONNECT_TIMEOUT_MS = 20_000;

/** Runs the agent until the job is over; resolves to its exit status. */
export async function runAgent(opts: AgentOptions): Promise<number> {
  const socket = await connectRetrying(opts.coordinator.address, opts.coordinator.port, Date.now() + CONNECT_TIMEOUT_MS);
  const ch = new Channel(socket);
  const facts = await hostFacts(socket);
  const beat = await agentHandshake(ch, opts.secret, opts.host, facts);
  const agent = new Agent(opts, ch);
  ch.startBeats(beat.beatMs, beat.deadMs);
  return agent.run();
}

class Agent {
  private ticket: Ticket | null = null;
  private checkpointed: Checkpoint | null = null;
  private readonly clones = new Map<number, Clone>();
  private readonly procs = new Map<number, Proc>();
  private readonly paused = new Set<Readable>();
  private ending: Promise<number> | null = null;
  private finish!: (code: number) => void;
  private readonly finished = new Promise<number>((r) => (this.finish = r));

  constructor(
    private readonly opts: AgentOptions,
    private readonly ch: Channel,
  ) {}

  run(): Promise<number> {
    const { ch } = this;
    ch.on('frame', (f) => this.onFrame(f));
    ch.on('drain', () => {
      for (const s of this.paused) s.resume();
      this.paused.clear();
    });
    ch.on('closed', (why) => void this.end(1, `the launcher is gone (${why})`));
    this.opts.lifeline?.on('end', () => void this.end(1, 'the launcher is gone (stdin closed)'));
    this.opts.lifeline?.resume();
    ch.deliver();
    return this.finished;
  }

  /** Tears down what this agent made (once) and ends; `why` is said when it is not the job's normal end. */
  private end(code: number, why: string | null): Promise<number> {
    this.ending ??= (async () => {
      if (why) this.opts.say(`${why}; tearing down${this.ticket ? ` ticket ${this.ticket.id}` : ''}`);
      for (const p of this.procs.values()) p.kill('SIGKILL');
      await this.opts.engine.killAll().catch((e: Error) => this.opts.say(`teardown: ${e.message}`));
      this.ch.close('agent ending');
      this.finish(code);
      return code;
    })();
    return this.ending;
  }

  private onFrame({ msg, data }: Frame): void {
    switch (msg.t) {
      case 'claim':
      case 'checkpoint':
      case 'memory-figures':
      case 'clones':
      case 'open-port':
      case 'spawn':
      case 'kill':
        void this.request(msg, data);
        return;
      case 'stdin':
        this.procs.get(msg.proc)?.stdin?.write(data);
        return;
      case 'stdin-end':
        this.procs.get(msg.proc)?.stdin?.end();
        return;
      case 'signal':
        this.procs.get(msg.proc)?.kill(msg.signal as NodeJS.Signals);
        return;
      case 'bye':
        void this.end(0, null);
        return;
      default:
        this.opts.say(`ignored a ${msg.t} from the launcher`);
    }
  }

  private async request(msg: MessageOf<'claim' | 'checkpoint' | 'memory-figures' | 'clones' | 'open-port' | 'spawn' | 'kill'>, data: Buffer): Promise<void> {
    try {
      const result = await this.handle(msg, data);
      this.ch.send({ t: 'done', id: msg.id, result });
    } catch (e) {
      const err = e as Error;
      if (e instanceof ClaimClash) this.ch.send({ t: 'failed', id: msg.id, message: err.message, clash: { used: e.used } });
      else this.ch.send({ t: 'failed', id: msg.id, message: err.message, ...(isUserError(e) ? { exitCode: e.exitCode } : {}) });
    }
  }

  private async handle(msg: MessageOf<'claim' | 'checkpoint' | 'memory-figures' | 'clones' | 'open-port' | 'spawn' | 'kill'>, data: Buffer): Promise<unknown> {
    const { engine } = this.opts;
    switch (msg.t) {
      case 'claim': {
        const { claim } = msg;
        this.ticket = await engine.requestTicket(claim.count, { provider: claim.provider, share: claim.share, span: claim.span });
        const ticket = this.ticket;
        void engine.failure(ticket).then((line) => this.ch.send({ t: 'failure', line }));
        return { dir: engine.resources(ticket).dir, address: ticket.network.gateway };
      }
      case 'checkpoint':
        this.checkpointed = await engine.checkpoint(this.need(), msg.memory ? { ...msg.source, memory: await this.memorySource(msg.memory, data) } : msg.source);
        return {};
      case 'memory-figures':
        return { figures: await engine.memoryFigures(this.need()) };
      case 'clones': {
        if (!this.checkpointed) throw new Error('clones asked for before the checkpoint');
        const made = await engine.createClones(this.need(), this.checkpointed, { ids: msg.ids });
        for (const c of made) this.clones.set(c.id, c);
        return { clones: made.map((c): RemoteCloneInfo => ({ id: c.id, hostname: c.hostname, address: c.address, mac: c.mac })) };
      }
      case 'open-port':
        await engine.openPort(this.need(), msg.port);
        return {};
      case 'spawn':
        return this.spawn(msg);
      case 'kill': {
        const t = this.ticket;
        this.ticket = null;
        for (const p of this.procs.values()) p.kill('SIGKILL');
        if (t) await engine.kill(t);
        return {};
      }
    }
  }

  /**
   * VM clones here from the launcher's template: its descriptor (the frame's payload) written into
   * the ticket's directory, recorded first, so that it goes with the ticket.
   */
  private async memorySource(offer: MemoryOfferWire, descriptor: Buffer): Promise<MemorySource> {
    if (descriptor.length === 0) throw new Error('memory on demand without its descriptor');
    const res = this.opts.engine.resources(this.need());
    const path = join(res.dir, 'memory.desc');
    await res.add({ kind: 'file', path });
    await writeFile(path, descriptor, { mode: 0o600 });
    return { server: offer.server, token: offer.token, descriptor: path, hostName: this.opts.host, ...(offer.multicast ? { multicast: { group: offer.multicast.group } } : {}) };
  }

  private need(): Ticket {
    if (!this.ticket) throw new Error('no ticket on this host yet');
    return this.ticket;
  }

  /** Starts a process in a clone, or sf-pmix on the host; its stdio and exit go to the coordinator. */
  private async spawn(msg: MessageOf<'spawn'>): Promise<{ pid: number }> {
    const ticket = this.need();
    if ('clone' in msg.target) {
      const clone = this.clones.get(msg.target.clone);
      if (!clone) throw new Error(`clone ${msg.target.clone} is not on this host`);
      const p = clone.spawn(msg.argv, { env: msg.env, cwd: msg.cwd, stdin: msg.stdin ? 'pipe' : 'ignore' });
      this.procs.set(msg.proc, { stdin: p.stdin, kill: (s) => p.kill(s) });
      this.forward(msg.proc, p.stdout, 1);
      this.forward(msg.proc, p.stderr, 2);
      void p.exited.then((st) => this.exited(msg.proc, st.code, st.signal));
      return { pid: 0 };
    }
    // sf-pmix: this host's own binary, its environment this agent's without a PMIx wiring of its own.
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PMIX_')) env[k] = v;
    const child: ChildProcess = spawn(join(this.opts.nativeDir, 'sf-pmix'), msg.argv, { stdio: ['pipe', 'pipe', 'pipe'], env: { ...env, ...msg.env } });
    await new Promise<void>((resolve, reject) => {
      child.once('spawn', resolve);
      child.once('error', (e) => reject(new Error(`cannot start ${join(this.opts.nativeDir, 'sf-pmix')}: ${e.message}`)));
    });
    child.stdin!.on('error', () => {});
    await this.opts.engine.recordProcess(ticket, child.pid!, 'sf-pmix');
    this.procs.set(msg.proc, {
      stdin: child.stdin,
      kill: (s) => {
        if (child.exitCode === null && child.signalCode === null) child.kill(s);
      },
    });
    this.forward(msg.proc, child.stdout!, 1);
    this.forward(msg.proc, child.stderr!, 2);
    child.once('close', (code, signal) => this.exited(msg.proc, code, signal));
    return { pid: child.pid! };
  }

  private forward(proc: number, stream: Readable, fd: 1 | 2): void {
    stream.on('data', (chunk: Buffer) => {
      if (!this.ch.send({ t: 'output', proc, fd }, chunk)) {
        stream.pause();
        this.paused.add(stream);
      }
    });
  }

  private exited(proc: number, code: number | null, signal: NodeJS.Signals | null): void {
    this.procs.delete(proc);
    this.ch.send({ t: 'exit', proc, code, signal });
  }
}

/** Connects to the coordinator, retrying while it is not (yet) listening. */
async function connectRetrying(host: string, port: number, deadline: number): Promise<Socket> {
  for (let delay = 20; ; delay = Math.min(delay * 2, 500)) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect({ host, port }, () => {
          s.off('error', reject);
          resolve(s);
        });
        s.once('error', reject);
      });
    } catch (e) {
      if (Date.now() > deadline) throw new Error(`cannot reach the launcher at ${host}:${port}: ${(e as Error).message}`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/** This host's underlay as its connection to the coordinator shows it. */
async function hostFacts(socket: Socket): Promise<HostFacts> {
  const address = socket.localAddress?.replace(/^::ffff:/, '') ?? '';
  const route = await runCommand('ip', ['-j', 'route', 'get', socket.remoteAddress!.replace(/^::ffff:/, '')], { reject: false });
  const dev = (JSON.parse(route.stdout || '[]') as Array<{ dev?: string }>)[0]?.dev ?? '';
  let mtu = 1500;
  try {
    mtu = Number(readFileSync(`/sys/class/net/${dev}/mtu`, 'utf8').trim()) || 1500;
  } catch {
    /* no such device: the default */
  }
  return { pid: process.pid, underlay: { address, dev, mtu }, cpus: availableParallelism() };
}
