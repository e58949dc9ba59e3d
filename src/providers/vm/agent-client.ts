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
import { constants } from 'node:os';
import { PassThrough, Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { CloneProcess, ExitStatus, SpawnOptions } from '../../types.js';

export const Frame = {
  IDENT: 1, EXEC: 2, STDIN: 3, KILL: 4,
  HELLO: 64, READY: 65, STARTED: 66, FAILED: 67, STDOUT: 68, STDERR: 69, EXIT: 70,
} as const;

const HDR = 9;

export function encodeFrame(type: number, sid: number, payload: Buffer | string = ''): Buffer {
  const body = Buffer.from(payload);
  const h = Buffer.alloc(HDR);
  h.writeUInt32LE(body.length, 0);
  h.writeUInt8(type, 4);
  h.writeUInt32LE(sid >>> 0, 5);
  return Buffer.concat([h, body]);
}

const signalName = (n: number): NodeJS.Signals | null =>
  (Object.entries(constants.signals).find(([, v]) => v === n)?.[0] as NodeJS.Signals | undefined) ?? null;

interface Live {
  stdout: PassThrough;
  stderr: PassThrough;
  finish: (s: ExitStatus) => void;
}

export class AgentChannel {
  private buf: Buffer = Buffer.alloc(0);
  private readonly procs = new Map<number, Live>();
  private waiters: { type: number; resolve: (p: Buffer) => void; reject: (e: Error) => void }[] = [];
  /** Stream ids start at a random point so that successive host processes never reuse one. */
  private nextSid = 1 + Math.floor(Math.random() * 0x7fff0000);
  private closedWith: Error | null = null;

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
    for (;;) {
      try {
        const sock = await new Promise<Socket>((res, rej) => {
          const s = connect(path, () => res(s));
          s.once('error', rej);
        });
        return new AgentChannel(sock, label);
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`cannot reach the control socket of ${label}: ${(e as Error).message}`);
        await sleep(10);
      }
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
    this.closedWith = new Error(`the control channel of ${this.label} closed (its VM stopped)`);
    for (const w of this.waiters) w.reject(this.closedWith);
    this.waiters = [];
    for (const [, p] of this.procs) {
      p.stderr.write(`snowflock: ${this.label} stopped while the process ran\n`);
      p.finish({ code: null, signal: 'SIGKILL' });
    }
    this.procs.clear();
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    while (this.buf.length >= HDR) {
      const len = this.buf.readUInt32LE(0);
      if (this.buf.length < HDR + len) break;
      const type = this.buf.readUInt8(4);
      const sid = this.buf.readUInt32LE(5);
      const payload = this.buf.subarray(HDR, HDR + len);
      this.buf = this.buf.subarray(HDR + len);
      this.onFrame(type, sid, Buffer.from(payload));
    }
  }

  private onFrame(type: number, sid: number, payload: Buffer): void {
    if (sid === 0) {
      const i = this.waiters.findIndex((w) => w.type === type || (type === Frame.FAILED && w.type === Frame.READY));
      if (i < 0) return;
      const [w] = this.waiters.splice(i, 1);
      if (type === Frame.FAILED) w.reject(new Error(`${this.label}: ${payload.toString()}`));
      else w.resolve(payload);
      return;
    }
    const p = this.procs.get(sid);
    if (!p) return;
    switch (type) {
      case Frame.STDOUT:
        if (payload.length) p.stdout.write(payload);
        else p.stdout.end();
        break;
      case Frame.STDERR:
        if (payload.length) p.stderr.write(payload);
        else p.stderr.end();
        break;
      case Frame.FAILED:
        p.stderr.write(`snowflock: ${this.label}: ${payload.toString()}\n`);
        p.finish({ code: 127, signal: null });
        this.procs.delete(sid);
        break;
      case Frame.EXIT: {
        const [kind, n] = payload.toString().split(' ');
        p.finish(kind === 'signal' ? { code: null, signal: signalName(Number(n)) } : { code: Number(n), signal: null });
        this.procs.delete(sid);
        break;
      }
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
      if (!stdout.writableEnded) stdout.end();
      if (!stderr.writableEnded) stderr.end();
      // "exited" resolves after a consumer reading the streams has seen their end; a stream
      // nobody reads does not hold it back.
      let open = 2;
      const one = () => --open === 0 && resolveExit(s);
      for (const st of [stdout, stderr]) {
        if (st.readableEnded || st.readableFlowing !== true) one();
        else st.once('end', one);
      }
    };
    const stdin =
      opts.stdin === 'pipe'
        ? new Writable({
            write: (chunk: Buffer, _enc, cb) => {
              this.send(Frame.STDIN, sid, chunk);
              cb();
            },
            final: (cb) => {
              this.send(Frame.STDIN, sid);
              cb();
            },
          })
        : null;
    stdin?.on('error', () => undefined);
    const nul = '\0';
    const payload =
      argv.join(nul) + nul + nul +
      Object.entries(opts.env).map(([k, v]) => `${k}=${v}`).join(nul) + nul + nul +
      (opts.cwd ?? '/') + nul + (opts.stdin === 'pipe' ? 'stdin' : 'nostdin') + nul;
    if (this.closedWith) {
      stderr.write(`snowflock: ${this.closedWith.message}\n`);
      finish({ code: 127, signal: null });
    } else {
      this.procs.set(sid, { stdout, stderr, finish });
      this.send(Frame.EXEC, sid, payload);
    }
    return {
      stdin,
      stdout,
      stderr,
      exited,
      kill: (signal: NodeJS.Signals = 'SIGTERM') => {
        if (status || this.closedWith) return;
        this.send(Frame.KILL, sid, String(constants.signals[signal] ?? constants.signals.SIGTERM));
      },
    };
  }

  close(): void {
    this.sock.destroy();
  }
}
