/**
 * A process that an agent started on its host (a rank in a clone there, or sf-pmix next to them),
 * as the coordinator holds it: its stdio carried by the agent's channel, its exit reported by it.
 * It is both a CloneProcess (what the job's code uses for ranks) and the few parts of a child
 * process that launcher/pmix/server.ts drives sf-pmix through ('spawn', 'close', pid, kill).
 *
 * If the agent is lost, the process is as good as dead: `kill` then ends it here at once, and
 * `lose` (the coordinator, once the job has been told) ends it whatever was asked.
 */
import { EventEmitter } from 'node:events';
import { PassThrough, Writable } from 'node:stream';
import type { CloneProcess, ExitStatus } from '../providers/clone.js';
import type { Message } from './protocol.js';

export interface ProcessLink {
  /** Sends a frame to the agent; false when its connection is gone. */
  send(msg: Message, data?: Buffer): boolean;
  /** Whether the agent is still there. */
  readonly alive: boolean;
}

export class RemoteProcess extends EventEmitter implements CloneProcess {
  readonly stdout = new PassThrough();
  readonly stderr = new PassThrough();
  readonly stdin: Writable | null;
  readonly exited: Promise<ExitStatus>;
  /** The process id on its host, once the agent said it (0 for a rank: a clone's PIDs are its own). */
  pid = 0;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  private done = false;
  private resolveExit!: (s: ExitStatus) => void;

  constructor(
    readonly proc: number,
    private readonly link: ProcessLink,
    withStdin: boolean,
  ) {
    super();
    this.exited = new Promise((r) => (this.resolveExit = r));
    this.stdin = withStdin
      ? new Writable({
          write: (chunk: Buffer, _enc, cb) => {
            this.link.send({ t: 'stdin', proc }, chunk);
            cb();
          },
          final: (cb) => {
            this.link.send({ t: 'stdin-end', proc });
            cb();
          },
        })
      : null;
    this.stdin?.on('error', () => {});
  }

  /** The agent started it. */
  started(pid: number): void {
    this.pid = pid;
    this.emit('spawn');
  }

  /** The agent could not start it. */
  refused(err: Error): void {
    this.emit('error', err);
    this.end({ code: 127, signal: null });
  }

  output(fd: 1 | 2, data: Buffer): void {
    if (!this.done) (fd === 1 ? this.stdout : this.stderr).write(data);
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): boolean {
    if (this.done) return false;
    if (!this.link.alive) {
      this.lose();
      return true;
    }
    this.link.send({ t: 'signal', proc: this.proc, signal });
    return true;
  }

  /** It ended on its host (the agent's exit frame). */
  end(status: ExitStatus): void {
    if (this.done) return;
    this.done = true;
    this.exitCode = status.code;
    this.signalCode = status.signal;
    let open = 2;
    const closed = () => {
      if (--open > 0) return;
      this.resolveExit(status);
      this.emit('close', status.code, status.signal);
    };
    for (const s of [this.stdout, this.stderr]) {
      s.end();
      // A stream nobody reads never ends: do not wait for it.
      if (s.readableFlowing !== true) closed();
      else s.once('end', closed);
    }
  }

  /** Its agent is gone: it counts as killed. */
  lose(): void {
    this.end({ code: null, signal: 'SIGKILL' });
  }
}
