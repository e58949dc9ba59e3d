/**
 * Progress of a command that provisions clones (sfmpirun, snowflock run and up), on stderr. Most
 * jobs provision in well under a second and show nothing; the first VM job of a program builds its
 * guest image and boots a template, which takes tens of seconds, and says so:
 *
 *   - on a terminal, one line that updates in place (the step under way and for how long), shown
 *     once a step has run for SHOW_AFTER_MS and erased when the steps are over, so the job's own
 *     output starts on a clean line;
 *   - in a pipe or a batch log, one line per finished step that took at least LINE_AFTER_MS
 *     ("sfmpirun: guest image built: 12.3 s"), nothing that redraws.
 *
 * -q (--quiet) turns it off; so does -v, whose log lines already show every step with its time.
 * The steps are the engine's timed steps (src/common/log.ts, onSteps).
 */
import { onSteps, type StepListener } from '../../src/common/log.js';

/** A terminal line appears for a step running this long. */
export const SHOW_AFTER_MS = 500;
/** In a pipe, a finished step gets a line when it took this long. */
export const LINE_AFTER_MS = 1000;
const REDRAW_MS = 200;

export interface ProgressTarget {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

/** Starts showing progress for `program`; the returned function stops (and erases the line). */
export function showProgress(program: string, out: ProgressTarget = process.stderr): () => void {
  const listener = out.isTTY ? new TerminalLine(program, out) : new FinishedLines(program, out);
  const off = onSteps(listener);
  return () => {
    off();
    listener.stop();
  };
}

/** What a step is called in a progress line: without the ticket's id, which says nothing to a user. */
export function stepName(what: string): string {
  return what.replace(/^ticket [0-9a-f]{6}: /, '');
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

class FinishedLines implements StepListener {
  constructor(
    private readonly program: string,
    private readonly out: ProgressTarget,
  ) {}

  begin(): void {}

  end(what: string, ms: number, ok: boolean): void {
    if (ok && ms >= LINE_AFTER_MS) this.out.write(`${this.program}: ${stepName(what)}: ${seconds(ms)}\n`);
  }

  stop(): void {}
}

class TerminalLine implements StepListener {
  /** Steps under way, outermost first, with when each began. */
  private readonly active: Array<{ what: string; t0: number }> = [];
  private timer: NodeJS.Timeout | null = null;
  private shown = false;

  constructor(
    private readonly program: string,
    private readonly out: ProgressTarget,
  ) {}

  begin(what: string): void {
    this.active.push({ what, t0: performance.now() });
    this.timer ??= setInterval(() => this.draw(), REDRAW_MS).unref();
  }

  end(what: string): void {
    const i = this.active.map((s) => s.what).lastIndexOf(what);
    if (i >= 0) this.active.splice(i, 1);
    if (this.active.length === 0) this.stop();
    else this.draw();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.shown) this.out.write('\r\x1b[K');
    this.shown = false;
  }

  private draw(): void {
    const outer = this.active[0];
    if (!outer) return;
    const now = performance.now();
    if (!this.shown && now - outer.t0 < SHOW_AFTER_MS) return;
    const steps = this.active.map((s) => stepName(s.what)).join(' › ');
    const line = `${this.program}: ${steps} (${seconds(now - this.active.at(-1)!.t0)})`;
    // A terminal that does not say its width (a pty of script(1) says 0) gets 80 columns.
    const width = Math.max(20, (this.out.columns || 80) - 1);
    this.out.write(`\r\x1b[K${line.length > width ? line.slice(0, width - 1) + '…' : line}`);
    this.shown = true;
  }
}
