/**
 * Runs one command in several clones at once, forwarding their output (prefixed with the clone id
 * when there are several) to ours, and collecting how each ended.
 */
import type { Clone, CloneProcess, ExitStatus } from '../../src/types.js';
import { forwardLines } from './output.js';

export interface SpawnAllOptions {
  /** Prefix each line with `[id] `. */
  prefix: boolean;
  /** Give our stdin to the process (only sensible with one clone). */
  stdin: boolean;
}

export interface SpawnedAll {
  processes: CloneProcess[];
  /** Resolves when every process has exited and its output is forwarded. */
  done: Promise<ExitStatus[]>;
}

export function spawnAll(clones: Clone[], argv: string[], opts: SpawnAllOptions): SpawnedAll {
  const env = Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined));
  const processes = clones.map((c) => c.spawn(argv, { env, cwd: process.cwd(), stdin: opts.stdin ? 'pipe' : 'ignore' }));
  if (opts.stdin && processes[0]?.stdin) {
    const sink = processes[0].stdin;
    sink.on('error', () => {});
    process.stdin.pipe(sink);
  }
  const done = Promise.all(
    processes.map(async (p, i) => {
      const tag = opts.prefix ? `[${clones[i]!.id}] ` : '';
      const forwarded = tag
        ? Promise.all([forwardLines(p.stdout, process.stdout, tag), forwardLines(p.stderr, process.stderr, tag)])
        : Promise.all([pipeAll(p.stdout, process.stdout), pipeAll(p.stderr, process.stderr)]);
      const [status] = await Promise.all([p.exited, forwarded]);
      return status;
    }),
  );
  void done.finally(() => {
    if (opts.stdin) process.stdin.unpipe().pause();
  });
  return { processes, done };
}

function pipeAll(from: NodeJS.ReadableStream, to: NodeJS.WritableStream): Promise<void> {
  return new Promise((resolve) => {
    from.on('end', resolve);
    from.on('error', () => resolve());
    from.pipe(to, { end: false });
  });
}
