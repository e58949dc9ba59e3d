/**
 * Forwarding of the ranks' stdout and stderr to the launcher's own, whole lines at a time.
 *
 * Every rank stream goes through a LineForwarder that cuts its bytes at newlines and hands the sink
 * only complete lines (many at once when it can), so two ranks' text never share a line: all writes
 * happen on one event loop and each write is a run of whole lines. Bytes are kept as Buffers (binary
 * safe). When the sink is full, the rank's stream is paused until it drains, so a rank that writes
 * 100 MB waits for the terminal instead of filling memory. A partial last line is written when its
 * stream ends. Tags follow each dialect: Hydra `-l` gives `[rank] `, Open MPI `--tag-output` gives
 * `[1,rank]<stdout>:`, and `--timestamp-output` puts the ctime-style date first, as Open MPI does.
 */
import { createWriteStream, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { LineForwarder, writeLine } from '../../../src/common/lines.js';

export type StreamName = 'stdout' | 'stderr';

export interface TagStyle {
  dialect: 'hydra' | 'openmpi';
  tag: boolean;
  timestamp: boolean;
}

/** The prefix of one line of `rank`'s `stream`, or null when lines go out untagged. */
export function linePrefix(style: TagStyle, rank: number, stream: StreamName, now: Date = new Date()): string | null {
  if (!style.tag && !style.timestamp) return null;
  let prefix = '';
  if (style.timestamp) prefix += ctime(now);
  if (style.tag) prefix += style.dialect === 'openmpi' ? `[1,${rank}]<${stream}>:` : `[${rank}] `;
  else if (style.dialect === 'hydra') prefix += ' ';
  return prefix;
}

/** `Thu Nov 26 05:19:48 2026`, the form C's ctime() gives (and Open MPI prints), in local time. */
function ctime(d: Date): string {
  const days = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
  const months = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const p = (n: number) => String(n).padStart(2, '0');
  return `${days[d.getDay()]} ${months[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())} ${d.getFullYear()}`;
}

/** Options that decide where ranks' output goes, from the JobSpec. */
export interface OutputOptions extends TagStyle {
  /** Hydra -outfile-pattern / -errfile-pattern: %r rank, %g process group (0), %h clone hostname, %% a %. */
  outfilePattern?: string;
  errfilePattern?: string;
  /** Open MPI --output-filename DIR: DIR/1/rank.N/stdout and stderr, and a copy on the terminal. */
  outputDirectory?: string;
}

/** Expands a Hydra output file pattern for one rank. */
export function expandPattern(pattern: string, rank: number, hostname: string): string {
  return pattern.replace(/%([rgh%])/g, (_m, c: string) => (c === 'r' ? String(rank) : c === 'g' ? '0' : c === 'h' ? hostname : '%'));
}

/**
 * The job's output: creates each rank's forwarders and per-rank files, and knows when all of them
 * have finished (so the launcher exits only after the last byte is out).
 */
export class JobOutput {
  private readonly forwarders: LineForwarder[] = [];
  private readonly files: Writable[] = [];

  /**
   * `onClosed` is told once when the launcher's stdout or stderr breaks (e.g. `sfmpirun ... | head`):
   * what a shell pipeline does then is stop, so the job stops as if by SIGPIPE.
   */
  constructor(
    private readonly opts: OutputOptions,
    private readonly terminal: { stdout: Writable; stderr: Writable },
    onClosed: (stream: StreamName) => void = () => undefined,
  ) {
    for (const stream of ['stdout', 'stderr'] as const) {
      let told = false;
      terminal[stream].on('error', () => {
        if (!told) onClosed(stream);
        told = true;
      });
    }
  }

  /** Forwards one rank's stdout and stderr. */
  attach(rank: number, hostname: string, stdout: Readable, stderr: Readable, opts: { raw?: boolean } = {}): void {
    this.forward(rank, hostname, 'stdout', stdout, opts.raw ?? false);
    this.forward(rank, hostname, 'stderr', stderr, opts.raw ?? false);
  }

  /** `raw`: the source is a launcher that already tags and files its ranks' lines (native launch). */
  private forward(rank: number, hostname: string, stream: StreamName, source: Readable, raw: boolean): void {
    if (raw) {
      this.forwarders.push(new LineForwarder(source, [this.terminal[stream]], () => null));
      return;
    }
    const sinks: Writable[] = [];
    const pattern = stream === 'stdout' ? this.opts.outfilePattern : this.opts.errfilePattern;
    if (pattern) sinks.push(this.openFile(expandPattern(pattern, rank, hostname)));
    else sinks.push(this.terminal[stream]);
    if (this.opts.outputDirectory) sinks.push(this.openFile(join(this.opts.outputDirectory, '1', `rank.${rank}`, stream)));
    // Files get the lines untagged, as Hydra and Open MPI write them.
    const toTerminal = sinks.includes(this.terminal[stream]);
    const prefix = () => (toTerminal ? linePrefix(this.opts, rank, stream) : null);
    this.forwarders.push(new LineForwarder(source, sinks, prefix));
  }

  private openFile(path: string): Writable {
    mkdirSync(dirname(path), { recursive: true });
    const file = createWriteStream(path);
    file.on('error', (e) => writeLine(this.terminal.stderr, `sfmpirun: cannot write ${path}: ${e.message}`));
    this.files.push(file);
    return file;
  }

  /** Resolves when every stream has ended and every per-rank file is closed. */
  async finished(): Promise<void> {
    await Promise.all(this.forwarders.map((f) => f.done));
    await Promise.all(this.files.map((f) => new Promise<void>((resolve) => f.end(resolve))));
  }
}
