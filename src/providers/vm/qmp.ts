/**
 * A minimal QMP client (QEMU's JSON control protocol over a unix socket): one command at a time,
 * events ignored. Enough to pause, save and load device state, and continue.
 */
import type { Socket } from 'node:net';
import { connectWhenReady } from '../../common/streams.js';
import { setTimeout as sleep } from 'node:timers/promises';

export class Qmp {
  private buf = '';
  private waiting: { resolve: (v: unknown) => void; reject: (e: Error) => void } | null = null;
  private closed: Error | null = null;

  private constructor(private readonly sock: Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    const fail = (e?: Error) => {
      this.closed = e ?? new Error('QMP connection closed (QEMU exited?)');
      this.waiting?.reject(this.closed);
      this.waiting = null;
    };
    sock.on('error', fail);
    sock.on('close', () => fail());
  }

  /** Connects once the socket exists, retrying until `deadline` (ms since epoch). */
  static async open(path: string, deadline: number): Promise<Qmp> {
    let sock: Socket;
    try {
      sock = await connectWhenReady(path, deadline, 20);
    } catch (e) {
      throw new Error(`cannot reach QEMU's QMP socket ${path}: ${(e as Error).message}`);
    }
    const q = new Qmp(sock);
    try {
      await q.next(); // greeting
      await q.execute('qmp_capabilities');
    } catch (e) {
      q.close();
      throw e;
    }
    return q;
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      const msg = JSON.parse(line) as Record<string, unknown>;
      if ('event' in msg) continue;
      const w = this.waiting;
      this.waiting = null;
      if (!w) continue;
      if ('error' in msg) w.reject(new Error(`QMP: ${JSON.stringify(msg.error)}`));
      else w.resolve(msg.return ?? msg.QMP);
    }
  }

  private next(): Promise<unknown> {
    if (this.closed) return Promise.reject(this.closed);
    return new Promise((resolve, reject) => (this.waiting = { resolve, reject }));
  }

  async execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const p = this.next();
    this.sock.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    return p;
  }

  /** Polls query-migrate until the migration (either direction) completes. */
  async migrationDone(deadline: number): Promise<void> {
    for (;;) {
      const r = (await this.execute('query-migrate')) as { status?: string; 'error-desc'?: string };
      if (r.status === 'completed') return;
      if (r.status === 'failed' || r.status === 'cancelled') throw new Error(`migration ${r.status}: ${r['error-desc'] ?? ''}`);
      if (Date.now() > deadline) throw new Error('migration did not complete in time');
      await sleep(5);
    }
  }

  close(): void {
    this.sock.destroy();
  }
}
