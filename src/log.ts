/**
 * One winston logger per module, quiet by default. The CLIs call `configureLogging` once:
 * -v shows steps with timings on stderr, --log-file adds JSON lines.
 */
import winston from 'winston';

const root = winston.createLogger({
  level: 'warn',
  transports: [
    new winston.transports.Console({
      stderrLevels: ['error', 'warn', 'info', 'verbose', 'debug', 'silly'],
      format: winston.format.printf((i) => `snowflock: ${i.module ? `[${String(i.module)}] ` : ''}${String(i.message)}`),
    }),
  ],
});

export interface LoggingOptions {
  /** 0 quiet (warnings only), 1 steps (info), 2 details (debug). */
  verbosity?: number;
  logFile?: string;
}

export function configureLogging(opts: LoggingOptions): void {
  const v = opts.verbosity ?? 0;
  root.level = v >= 2 ? 'debug' : v >= 1 ? 'info' : 'warn';
  if (opts.logFile) {
    root.add(
      new winston.transports.File({
        filename: opts.logFile,
        level: 'debug',
        format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
      }),
    );
  }
}

export type Logger = winston.Logger;

export function logger(module: string): Logger {
  return root.child({ module });
}

/** Runs `fn`, logging its duration at info level as `what: N ms`. */
export async function timed<T>(log: Logger, what: string, fn: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await fn();
  } finally {
    log.info(`${what}: ${(performance.now() - t0).toFixed(1)} ms`);
  }
}
