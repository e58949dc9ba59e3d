/**
 * Runs one command in several clones at once, forwarding their output whole lines at a time
 * (prefixed with the clone id when there are several) to ours, and collecting how each ended.
 */
import { LineForwarder } from '../../src/common/lines.js';
import type { Clone, CloneProcess, ExitStatus } from '../../src/providers/clone.js';

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
      // One clone's output goes through as it comes (a prompt without a newline shows at once);
      // several clones' output goes whole lines at a time, tagged, so that lines never mix.
      const forwarded = opts.prefix
        ? [p.stdout, p.stderr].map((from, k) => new LineForwarder(from, [k ? process.stderr : process.stdout], () => `[${clones[i]!.id}] `).done)
        : [pipeAll(p.stdout, process.stdout), pipeAll(p.stderr, process.stderr)];
      const [status] = await Promise.all([p.exited, ...forwarded]);
      return status as ExitStatus;
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
