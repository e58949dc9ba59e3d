/**
 * The PMI-1 server under test: a server whose log lines the test can read, started on loopback
 * and closed after each test, and a raw client that speaks the wire protocol line by line.
 */
import { connect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import winston from 'winston';
import { placeRanks } from '../../launcher/job/placement.js';
import { processMapping } from '../../launcher/pmi/mapping.js';
import { PmiServer, type PmiServerOptions } from '../../launcher/pmi/server.js';

/** A logger that keeps its lines, so tests can check what the server said. */
export function capturingLog(): { log: winston.Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(String(JSON.parse(chunk.toString()).message));
      done();
    },
  });
  const log = winston.createLogger({ level: 'debug', transports: [new winston.transports.Stream({ stream: sink, format: winston.format.json() })] });
  return { log, lines };
}

export function server(size: number, extra: Partial<PmiServerOptions> = {}) {
  const { log, lines } = capturingLog();
  const srv = new PmiServer({ size, processMapping: processMapping(placeRanks(size, 1, size, 'block')), log, ...extra });
  return { srv, lines };
}

/** Servers started by a test, closed after it by closeServers(). */
const open: PmiServer[] = [];

export async function started(size: number, extra: Partial<PmiServerOptions> = {}) {
  const s = server(size, extra);
  open.push(s.srv);
  const port = await s.srv.listen('127.0.0.1');
  return { ...s, port };
}

export async function closeServers(): Promise<void> {
  await Promise.all(open.splice(0).map((s) => s.close()));
}

/** A raw PMI client: send lines, read reply lines. */
export class RawClient {
  private buffered = '';
  private waiters: Array<() => void> = [];
  closed = false;

  private constructor(readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.buffered += d;
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static open(port: number): Promise<RawClient> {
    return new Promise((resolvePromise, reject) => {
      const s = connect({ host: '127.0.0.1', port }, () => resolvePromise(new RawClient(s)));
      s.once('error', reject);
    });
  }

  send(text: string | Buffer): void {
    this.socket.write(text);
  }

  /** The next reply line, or null when none arrives within `ms`. */
  async line(ms = 2000): Promise<string | null> {
    const deadline = Date.now() + ms;
    for (;;) {
      const nl = this.buffered.indexOf('\n');
      if (nl >= 0) {
        const l = this.buffered.slice(0, nl);
        this.buffered = this.buffered.slice(nl + 1);
        return l;
      }
      const left = deadline - Date.now();
      if (left <= 0 || this.closed) return null;
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async ask(text: string, ms?: number): Promise<string | null> {
    this.send(text);
    return this.line(ms);
  }

  /** initack as rank `rank`; returns the four reply lines. */
  async initack(rank: number): Promise<Array<string | null>> {
    this.send(`cmd=initack pmiid=${rank}\n`);
    return [await this.line(), await this.line(), await this.line(), await this.line()];
  }

  close(): void {
    this.socket.destroy();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    w.forEach((f) => f());
  }
}

