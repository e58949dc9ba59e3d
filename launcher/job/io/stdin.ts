/**
 * The launcher's stdin, delivered to the ranks that asked for it: rank 0 by default, one rank N, all
 * ranks, or none (--stdin / Hydra's default). Each byte is delivered exactly once to each receiver;
 * EOF on the launcher's stdin closes the receivers' stdin. When a receiver is slow, reading pauses
 * until it drains; a receiver that exits early is dropped (its EPIPE is not an error of the job).
 */
import type { Readable, Writable } from 'node:stream';

export type StdinTarget = number | 'all' | 'none';

export function receives(target: StdinTarget, rank: number): boolean {
  return target === 'all' || target === rank;
}

export class StdinRouter {
  private readonly receivers = new Set<Writable>();
  private started = false;
  private readonly onData = (chunk: Buffer) => this.deliver(chunk);
  private readonly onEnd = () => this.endAll();

  constructor(private readonly source: Readable) {}

  add(receiver: Writable): void {
    receiver.on('error', () => this.drop(receiver));
    receiver.on('close', () => this.drop(receiver));
    this.receivers.add(receiver);
  }

  /** Starts reading; call after every receiver was added. */
  start(): void {
    if (this.started || this.receivers.size === 0) return;
    this.started = true;
    this.source.on('data', this.onData);
    this.source.once('end', this.onEnd);
    this.source.once('error', this.onEnd);
    this.source.resume();
  }

  /** Stops reading (the job is over); the launcher's stdin no longer keeps it alive. */
  stop(): void {
    if (!this.started) return;
    this.source.off('data', this.onData);
    this.source.off('end', this.onEnd);
    this.source.off('error', this.onEnd);
    this.source.pause();
    // A TTY or pipe keeps a handle open; unref lets the process exit once the job is done.
    (this.source as Readable & { unref?: () => void }).unref?.();
    this.endAll();
  }

  private deliver(chunk: Buffer): void {
    const source = this.source;
    let waiting = 0;
    const settledOne = () => {
      if (--waiting === 0) source.resume();
    };
    for (const r of this.receivers) {
      if (r.write(chunk)) continue;
      waiting++;
      let settled = false;
      const once = () => {
        if (settled) return;
        settled = true;
        r.off('drain', once);
        r.off('close', once);
        settledOne();
      };
      r.on('drain', once);
      r.on('close', once);
    }
    if (waiting > 0) source.pause();
  }

  private drop(receiver: Writable): void {
    this.receivers.delete(receiver);
    if (this.receivers.size === 0 && this.started) this.source.resume();
  }

  private endAll(): void {
    for (const r of this.receivers) r.end();
    this.receivers.clear();
  }
}
