/**
 * One logger per module, quiet by default. The CLIs call `configureLogging` once: -v shows steps
 * with timings on stderr, --log-file adds JSON lines ({level, message, module, timestamp}).
 *
 * Written here rather than with a logging library: every command loads this module, and a library
 * (winston and its streams, about a hundred modules) cost more to load than sfmpirun --version
 * may take in all (issue 13). A logger is anything with the four level methods, so a caller may
 * pass a winston logger where a Logger is asked for (the tests do).
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { writeLine } from './lines.js';

export interface Logger {
  error(message: string): unknown;
  warn(message: string): unknown;
  info(message: string): unknown;
  debug(message: string): unknown;
}

const LEVELS = { error: 0, warn: 1, info: 2, debug: 3 } as const;
type Level = keyof typeof LEVELS;

/** Shared by every module's logger: what reaches stderr, and the log file (everything, debug included). */
const sink = { stderrLevel: LEVELS.warn as number, file: null as number | null };

export interface LoggingOptions {
  /** 0 quiet (warnings only), 1 steps (info), 2 details (debug). */
  verbosity?: number;
  logFile?: string;
}

export function configureLogging(opts: LoggingOptions): void {
  const v = opts.verbosity ?? 0;
  sink.stderrLevel = v >= 2 ? LEVELS.debug : v >= 1 ? LEVELS.info : LEVELS.warn;
  if (opts.logFile) {
    if (sink.file !== null) closeSync(sink.file);
    sink.file = openSync(opts.logFile, 'a', 0o644);
  }
}

function emit(module: string, level: Level, message: string): void {
  if (LEVELS[level] <= sink.stderrLevel) writeLine(process.stderr, `snowflock: [${module}] ${message}`);
  if (sink.file !== null) {
    try {
      writeSync(sink.file, JSON.stringify({ level, message, module, timestamp: new Date().toISOString() }) + '\n');
    } catch {
      /* a full disk must not fail the job; stderr still has what was asked for */
    }
  }
}

export function logger(module: string): Logger {
  return {
    error: (m: string) => emit(module, 'error', m),
    warn: (m: string) => emit(module, 'warn', m),
    info: (m: string) => emit(module, 'info', m),
    debug: (m: string) => emit(module, 'debug', m),
  };
}

/**
 * Whoever shows progress (launcher/cli/progress.ts) hears of every timed step: its start, and its
 * end with how long it took. Steps nest (a checkpoint holds an image build and a template boot).
 */
export interface StepListener {
  begin(what: string): void;
  end(what: string, ms: number, ok: boolean): void;
}

const listeners = new Set<StepListener>();

/** Adds a listener of steps; the returned function removes it. */
export function onSteps(listener: StepListener): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** Runs `fn` as a step: its duration logged at info level as `what: N ms`, its progress told to the listeners. */
export async function timed<T>(log: Logger, what: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  for (const l of listeners) l.begin(what);
  let ok = false;
  try {
    const result = await fn();
    ok = true;
    return result;
  } finally {
    const ms = performance.now() - t0;
    log.info(`${what}: ${ms.toFixed(1)} ms`);
    for (const l of listeners) l.end(what, ms, ok);
  }
}
