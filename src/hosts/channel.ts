/**
 * One authenticated connection between a coordinator and an agent (./protocol.ts): frames in and
 * out of a TCP socket, the mutual HMAC handshake on each side, and the heartbeat that tells either
 * side, within `deadMs`, that the other is gone even when its connection never closes (a host
 * whose network was cut).
 *
 * Writes are never refused: a full socket buffers in Node and `send` says so (false), so that a
 * process's output can be paused until `drain`.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import {
  AGENT_PROTOCOL_VERSION,
  AgentProtocolError,
  encodeFrame,
  FrameReader,
  MAX_FRAME,
  newNonce,
  proof,
  proofMatches,
  versionMismatch,
  type Frame,
  type HostFacts,
  type Message,
  type MessageOf,
} from './protocol.js';

export interface ChannelEvents {
  frame: [frame: Frame];
  /** Once: the connection is gone (closed, broken, or silent for deadMs); why, in a few words. */
  closed: [why: string];
  drain: [];
}

export class Channel extends EventEmitter<ChannelEvents> {
  private readonly reader = new FrameReader();
  private ended: string | null = null;
  private beat: NodeJS.Timeout | null = null;
  private lastHeard = Date.now();
  /** Until deliver(): frames wait here for next() (the handshake), none is lost to a late listener. */
  private queue: Frame[] | null = [];
  private waiter: ((f: Frame) => void) | null = null;

  constructor(readonly socket: Socket) {
    super();
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => this.emit('drain'));
    // A peer that dies with unread data in its socket resets the connection instead of closing it:
    // the same end (the kernel closed it for a process that is gone), not a network's failure.
    socket.on('error', (e: NodeJS.ErrnoException) => this.end(e.code === 'ECONNRESET' || e.code === 'EPIPE' ? 'connection closed' : `connection error: ${e.message}`));
    socket.on('close', () => this.end('connection closed'));
  }

  get closedWhy(): string | null {
    return this.ended;
  }

  /** Sends one frame; false when the socket's buffer is full (wait for 'drain' before more bulk data). */
  send(msg: Message, data?: Buffer): boolean {
    if (this.ended || this.socket.destroyed) return true;
    return this.socket.write(encodeFrame(msg, data));
  }

  /** The next frame (handshake only: after deliver() frames are events). */
  next(timeoutMs: number, what: string): Promise<Frame> {
    const queued = this.queue?.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const done = (f?: Frame, why?: string) => {
        clearTimeout(timer);
        this.waiter = null;
        this.off('closed', onClosed);
        if (f) resolve(f);
        else reject(new AgentProtocolError(why!));
      };
      const onClosed = (why: string) => done(undefined, `${why} while waiting for ${what}`);
      const timer = setTimeout(() => done(undefined, `no ${what} within ${Math.round(timeoutMs / 1000)} s`), timeoutMs);
      this.waiter = (f) => done(f);
      this.on('closed', onClosed);
      if (this.ended) onClosed(this.ended);
    });
  }

  /** From now on every frame is a 'frame' event (those that came early first). */
  deliver(): void {
    const early = this.queue ?? [];
    this.queue = null;
    for (const f of early) this.emit('frame', f);
  }

  /** Both sides beat every beatMs; silence for deadMs ends the channel. */
  startBeats(beatMs: number, deadMs: number): void {
    this.lastHeard = Date.now();
    this.beat = setInterval(() => {
      if (Date.now() - this.lastHeard > deadMs) return this.end(`nothing heard for ${Math.round((Date.now() - this.lastHeard) / 1000)} s`);
      this.send({ t: 'beat' });
    }, beatMs);
    this.beat.unref();
  }

  /** Raises the frame limit once the peer is authenticated. */
  authenticated(): void {
    this.reader.limit = MAX_FRAME;
  }

  close(why = 'closed here'): void {
    this.end(why);
  }

  private onData(chunk: Buffer): void {
    this.lastHeard = Date.now();
    let frames: Frame[];
    try {
      frames = this.reader.push(chunk);
    } catch (e) {
      this.end(`protocol error: ${(e as Error).message}`);
      return;
    }
    for (const f of frames) {
      if (this.ended) return;
      if (f.msg.t === 'beat') continue;
      if (this.queue === null) this.emit('frame', f);
      else if (this.waiter) this.waiter(f);
      else this.queue.push(f);
    }
  }

  private end(why: string): void {
    if (this.ended) return;
    this.ended = why;
    if (this.beat) clearInterval(this.beat);
    this.socket.destroy();
    this.emit('closed', why);
  }
}

function expect<T extends Message['t']>(f: Frame, t: T, peer: string): MessageOf<T> {
  if (f.msg.t === 'refused') throw new AgentProtocolError(`${peer} refused: ${f.msg.why}`);
  if (f.msg.t !== t) throw new AgentProtocolError(`${peer} sent ${f.msg.t} where ${t} belongs`);
  return f.msg as MessageOf<T>;
}

/** The agent's side: answers the challenge, checks the coordinator's proof. Throws with one line. */
export async function agentHandshake(ch: Channel, secret: string, host: string, facts: HostFacts, timeoutMs = 20_000): Promise<{ beatMs: number; deadMs: number }> {
  const challenge = expect(await ch.next(timeoutMs, "the launcher's challenge"), 'challenge', 'the launcher');
  if (challenge.version !== AGENT_PROTOCOL_VERSION) {
    const why = versionMismatch(AGENT_PROTOCOL_VERSION, challenge.version, 'the launcher');
    ch.send({ t: 'refused', why: versionMismatch(challenge.version, AGENT_PROTOCOL_VERSION, `the agent on ${host}`) });
    ch.close(why);
    throw new AgentProtocolError(why);
  }
  const nonce = newNonce();
  ch.send({ t: 'hello', version: AGENT_PROTOCOL_VERSION, host, nonce, proof: proof(secret, 'agent', challenge.nonce, nonce, host), facts });
  const welcome = expect(await ch.next(timeoutMs, "the launcher's welcome"), 'welcome', 'the launcher');
  if (!proofMatches(welcome.proof, proof(secret, 'coordinator', nonce, challenge.nonce, host))) {
    ch.close('the launcher did not prove the job secret');
    throw new AgentProtocolError('the launcher did not prove that it knows the job secret; refusing it');
  }
  ch.authenticated();
  return { beatMs: welcome.beatMs, deadMs: welcome.deadMs };
}

/**
 * The coordinator's side: challenges, checks the agent's proof (for the host it names, which must
 * be one of `hosts`), proves itself. Resolves with the agent's host and facts; throws (and closes)
 * on anything else.
 */
export async function coordinatorHandshake(
  ch: Channel,
  secret: string,
  hosts: ReadonlySet<string>,
  beat: { beatMs: number; deadMs: number },
  timeoutMs = 20_000,
): Promise<{ host: string; facts: HostFacts }> {
  const nonce = newNonce();
  ch.send({ t: 'challenge', version: AGENT_PROTOCOL_VERSION, nonce });
  const hello = expect(await ch.next(timeoutMs, "an agent's hello"), 'hello', 'an agent');
  if (hello.version !== AGENT_PROTOCOL_VERSION) {
    ch.send({ t: 'refused', why: versionMismatch(AGENT_PROTOCOL_VERSION, hello.version, 'the launcher') });
    ch.close('version');
    throw new AgentProtocolError(versionMismatch(AGENT_PROTOCOL_VERSION, hello.version, `the agent on ${String(hello.host)}`));
  }
  if (typeof hello.host !== 'string' || !hosts.has(hello.host) || typeof hello.nonce !== 'string' || !proofMatches(hello.proof, proof(secret, 'agent', nonce, hello.nonce, hello.host))) {
    ch.send({ t: 'refused', why: 'not an agent of this job' });
    ch.close('not an agent of this job');
    throw new AgentProtocolError(`a connection from ${ch.socket.remoteAddress ?? '?'} did not prove the job secret (or named no host of the job); refused it`);
  }
  ch.send({ t: 'welcome', proof: proof(secret, 'coordinator', hello.nonce, nonce, hello.host), ...beat });
  ch.authenticated();
  return { host: hello.host, facts: hello.facts };
}
