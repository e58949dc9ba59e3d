/**
 * Forwarding a byte stream to one or more sinks whole lines at a time, so that the lines of several
 * processes never mix within a line: all writes happen on one event loop and each write is a run of
 * whole lines. Bytes stay Buffers (binary safe). When a sink is full the source is paused until it
 * drains, so a process that writes 100 MB waits for the terminal instead of filling memory. A
 * partial last line is written when the source ends, or once it grows past maxPendingLine.
 *
 * A rank killed mid-line leaves such a partial line on the terminal. The launcher's own lines (the
 * verdict, warnings) go through writeLine, which starts a fresh line first, so a script that reads
 * `^sfmpirun: rank 0 ...` finds it at the start of a line whatever a dying rank left.
 */
import type { Readable, Writable } from 'node:stream';

/** A line without a newline that grows past this is written anyway (binary output with no newlines). */
const maxPendingLine = 1 << 20;

/** Sinks whose last byte written through this module was not a newline. */
const midLine = new WeakSet<Writable>();

function noteWritten(sink: Writable, data: Buffer | string): void {
  if (data.length === 0) return;
  const last = typeof data === 'string' ? data.charCodeAt(data.length - 1) : data[data.length - 1];
  if (last === 0x0a) midLine.delete(sink);
  else midLine.add(sink);
}

/** Writes `line` and a newline to `sink`, on a line of its own even when forwarded output ended mid-line. */
export function writeLine(sink: Writable, line: string): void {
  if (sink.destroyed) return;
  sink.write(`${midLine.has(sink) ? '\n' : ''}${line}\n`);
  midLine.delete(sink);
}

/** Where one stream's lines go: one or more sinks (the terminal, a file, or both), each line after prefix(). */
export class LineForwarder {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  readonly done: Promise<void>;

  constructor(
    private readonly source: Readable,
    private readonly sinks: Writable[],
    private readonly prefix: () => string | null,
  ) {
    this.done = new Promise((resolve) => {
      source.on('data', (chunk: Buffer) => this.onData(chunk));
      // 'close' as well as 'end': a stream destroyed with an error ends without 'end'.
      let finished = false;
      const finish = () => {
        if (finished) return;
        finished = true;
        this.flushPartial();
        resolve();
      };
      source.on('end', finish);
      source.on('close', finish);
      source.on('error', finish);
    });
  }

  private onData(chunk: Buffer): void {
    const lastNewline = chunk.lastIndexOf(0x0a);
    if (lastNewline < 0) {
      this.hold(chunk);
      if (this.pendingBytes > maxPendingLine) this.flushPartial();
      return;
    }
    const whole = this.takePending(chunk.subarray(0, lastNewline + 1));
    this.hold(chunk.subarray(lastNewline + 1));
    this.write(this.tagLines(whole));
  }

  private hold(part: Buffer): void {
    if (part.length === 0) return;
    this.pending.push(Buffer.from(part));
    this.pendingBytes += part.length;
  }

  private takePending(rest: Buffer): Buffer {
    if (this.pendingBytes === 0) return rest;
    const all = Buffer.concat([...this.pending, rest]);
    this.pending = [];
    this.pendingBytes = 0;
    return all;
  }

  private flushPartial(): void {
    if (this.pendingBytes === 0) return;
    this.write(this.tagLines(this.takePending(Buffer.alloc(0))));
  }

  /** Puts the prefix before every line of `lines` (complete lines, except possibly the last). */
  private tagLines(lines: Buffer): Buffer {
    const prefix = this.prefix();
    if (prefix === null) return lines;
    const p = Buffer.from(prefix);
    const parts: Buffer[] = [];
    let start = 0;
    while (start < lines.length) {
      const nl = lines.indexOf(0x0a, start);
      const end = nl < 0 ? lines.length : nl + 1;
      parts.push(p, lines.subarray(start, end));
      start = end;
    }
    return Buffer.concat(parts);
  }

  private write(data: Buffer): void {
    let full = false;
    // A closed sink (the reader of a pipe went away) gets nothing more; its owner reports that once.
    for (const sink of this.sinks) {
      if (sink.destroyed) continue;
      noteWritten(sink, data);
      if (!sink.write(data)) full = true;
    }
    if (!full) return;
    this.source.pause();
    const full_ = this.sinks.filter((s) => s.writableNeedDrain && !s.destroyed);
    let waiting = full_.length;
    if (waiting === 0) {
      this.source.resume();
      return;
    }
    for (const sink of full_) {
      let settled = false;
      const settle = () => {
        if (settled) return;
        settled = true;
        sink.off('drain', settle);
        sink.off('close', settle);
        if (--waiting === 0) this.source.resume();
      };
      sink.on('drain', settle);
      sink.on('close', settle);
    }
  }
}
