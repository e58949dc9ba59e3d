/**
 * The host side of the guest agent's control channel (native/agent.c has the protocol): a unix
 * socket of the VM's QEMU process, connected to a virtio-serial port in the guest. Host-only: no
 * network path reaches it. One connection carries every process of the guest, multiplexed by
 * stream id; stdio travels in frames on the same channel (a few ms per exec under TCG, against
 * ~150 ms for a new SSH connection).
 *
 * QEMU's socket chardev serves one client at a time: while a launcher holds a guest's channel,
 * another process (snowflock exec) waits for it.
 */
import { connect, type Socket } from 'node:net';
import { signalName, signalNumber } from '../../../common/signals.js';
import { connectWhenReady, endStreams } from '../../../common/streams.js';
import { PassThrough, Writable } from 'node:stream';
import type { CloneProcess, ExitStatus, SpawnOptions } from '../../clone.js';
import { AGENT_VERSION, decodeExit, decodeHello, encodeExec, encodeFrame, encodeStdin, FrameDecoder, FrameType, ProtocolError } from './protocol.js';

interface Live {
  stdout: PassThrough;
  stderr: PassThrough;
  finish: (s: ExitStatus) => void;
  /** Sent SIGKILL: its end is expected, also when it comes with its VM's. */
  killed: boolean;
}

export class AgentChannel {
  private readonly decoder = new FrameDecoder();
  private readonly procs = new Map<number, Live>();
  private waiters: { type: number; resolve: (p: Buffer) => void; reject: (e: Error) => void }[] = [];
  /** Stream ids start at a random point so that successive host processes never reuse one. */
  private nextSid = 1 + Math.floor(Math.random() * 0x7fff0000);
  private closedWith: Error | null = null;
  /** Set when the guest broke the protocol: the reason the channel closed. */
  private brokenWith: Error | null = null;

  private constructor(
    private readonly sock: Socket,
    /** Names the VM in messages ("clone sfab12cd-3"). */
    readonly label: string,
  ) {
    sock.setNoDelay(true);
    sock.on('data', (d: Buffer) => this.onData(d));
    sock.on('error', () => undefined);
    sock.on('close', () => this.onClose());
  }

  /** Connects to the control socket, retrying until it exists or `deadline` (ms since epoch). */
  static async connect(path: string, label: string, deadline: number): Promise<AgentChannel> {
    try {
      return new AgentChannel(await connectWhenReady(path, deadline), label);
    } catch (e) {
      throw new Error(`cannot reach the control socket of ${label}: ${(e as Error).message}`);
    }
  }

  /** Connects to a live VM's socket without waiting: frames written meanwhile are queued. */
  static connectNow(path: string, label: string): AgentChannel {
    return new AgentChannel(connect(path), label);
  }

  get closed(): boolean {
    return this.closedWith !== null;
  }

  private onClose(): void {
    this.closedWith = this.brokenWith
      ? new Error(`the guest agent of ${this.label} broke the protocol: ${this.brokenWith.message}`)
      : new Error(`the control channel of ${this.label} closed (its VM stopped)`);
    for (const w of this.waiters) w.reject(this.closedWith);
    this.waiters = [];
    for (const [, p] of this.procs) {
      // A process we sent SIGKILL was meant to end: its VM going away (teardown) is no news.
      if (!p.killed) p.stderr.write(`snowflock: ${this.label} stopped while the process ran\n`);
      p.finish({ code: null, signal: 'SIGKILL' });
    }
    this.procs.clear();
  }

  private onData(d: Buffer): void {
    let frames;
    try {
      frames = this.decoder.push(d);
    } catch (e) {
      // The stream is out of step: nothing after this can be read; end the channel.
      this.brokenWith = e instanceof ProtocolError ? e : new ProtocolError(String(e));
      this.sock.destroy();
      return;
    }
    for (const f of frames) this.onFrame(f.type, f.sid, f.payload);
  }

  private onFrame(type: number, sid: number, payload: Buffer): void {
    if (sid === 0) {
      const i = this.waiters.findIndex((w) => w.type === type || (type === FrameType.FAILED && w.type === FrameType.READY));
      if (i < 0) return;
      const [w] = this.waiters.splice(i, 1);
      if (type === FrameType.FAILED) w.reject(new Error(`${this.label}: ${payload.toString()}`));
      else w.resolve(payload);
      return;
    }
    const p = this.procs.get(sid);
    if (!p) return;
    switch (type) {
      case FrameType.STDOUT:
        if (payload.length) p.stdout.write(payload);
        else p.stdout.end();
        break;
      case FrameType.STDERR:
        if (payload.length) p.stderr.write(payload);
        else p.stderr.end();
        break;
      case FrameType.FAILED:
        p.stderr.write(`snowflock: ${this.label}: ${payload.toString()}\n`);
        p.finish({ code: 127, signal: null });
        this.procs.delete(sid);
        break;
      case FrameType.EXIT: {
        const x = decodeExit(payload);
        p.finish(x.signal === null ? { code: x.code, signal: null } : { code: null, signal: signalName(x.signal) });
        this.procs.delete(sid);
        break;
      }
    }
  }

  /** Waits for the agent's HELLO and checks that it speaks this host's protocol version. */
  async expectHello(deadline: number): Promise<void> {
    const version = decodeHello(await this.expect(FrameType.HELLO, deadline));
    if (version !== AGENT_VERSION) {
      throw new ProtocolError(
        `the guest agent of ${this.label} speaks protocol version ${version ?? 'none (an older agent)'}, this host speaks ${AGENT_VERSION}; ` +
          'rebuild the native core (make -C native) so that new guest images carry the matching agent',
      );
    }
  }

  /** Waits for a frame of `type` on stream 0 (HELLO, READY). */
  expect(type: number, deadline: number): Promise<Buffer> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    return new Promise((resolve, reject) => {
      const w = { type, resolve, reject };
      this.waiters.push(w);
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((x) => x !== w);
        reject(new Error(`${this.label} did not answer in time`));
      }, Math.max(0, deadline - Date.now()));
      const clear = () => clearTimeout(t);
      w.resolve = (p) => (clear(), resolve(p));
      w.reject = (e) => (clear(), reject(e));
    });
  }

  send(type: number, sid: number, payload?: Buffer | string): void {
    if (!this.closedWith) this.sock.write(encodeFrame(type, sid, payload));
  }

  /** Starts a process in the guest (see CloneProcess for the semantics). */
  spawn(argv: string[], opts: SpawnOptions): CloneProcess {
    const sid = this.nextSid++;
    const stdout = new PassThrough();
    const stderr = new PassThrough();
    let status: ExitStatus | null = null;
    let resolveExit!: (s: ExitStatus) => void;
    const exited = new Promise<ExitStatus>((r) => (resolveExit = r));
    const finish = (s: ExitStatus) => {
      if (status) return;
      status = s;
      endStreams([stdout, stderr], () => resolveExit(s));
    };
    const stdin =
      opts.stdin === 'pipe'
        ? new Writable({
            write: (chunk: Buffer, _enc, cb) => {
              if (!this.closedWith) this.sock.write(encodeStdin(sid, chunk));
              cb();
            },
            final: (cb) => {
              this.send(FrameType.STDIN, sid);
              cb();
            },
          })
        : null;
    stdin?.on('error', () => undefined);
    let payload: Buffer | null = null;
    let refused = this.closedWith?.message ?? null;
    try {
      payload = encodeExec({ argv, env: opts.env, cwd: opts.cwd ?? '/', stdin: opts.stdin === 'pipe' });
    } catch (e) {
      // What the protocol cannot carry (an empty argument) fails this process, not the channel.
      refused ??= `${this.label}: cannot start ${argv[0] ?? ''}: ${(e as Error).message}`;
    }
    if (refused !== null || payload === null) {
      stderr.write(`snowflock: ${refused}\n`);
      finish({ code: 127, signal: null });
    } else {
      this.procs.set(sid, { stdout, stderr, finish, killed: false });
      this.send(FrameType.EXEC, sid, payload);
    }
    return {
      stdin,
      stdout,
      stderr,
      exited,
      kill: (signal: NodeJS.Signals = 'SIGTERM') => {
        if (status || this.closedWith) return;
        const entry = this.procs.get(sid);
        if (entry && signal === 'SIGKILL') entry.killed = true;
        this.send(FrameType.KILL, sid, String(signalNumber(signal) || signalNumber('SIGTERM')));
      },
    };
  }

  close(): void {
    this.sock.destroy();
  }
}
