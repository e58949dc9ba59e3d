/** Wall-clock timing of whole commands, for the benchmarks that compare launchers side by side. */
import { spawnSync } from 'node:child_process';

/**
 * Wall seconds of one successful run. A failed run is counted and run again (up to 3 tries): its
 * time would measure the failure, not the launch. Throws when every try failed. `output` gets the
 * run's stdout when given.
 */
export function timeRun(argv: string[], env: NodeJS.ProcessEnv, failures: { count: number }, output?: (stdout: string) => void): number {
  let last = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const t0 = performance.now();
    const r = spawnSync(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000, maxBuffer: 64 << 20 });
    const seconds = (performance.now() - t0) / 1000;
    if (r.status === 0) {
      output?.(r.stdout.toString());
      return seconds;
    }
    failures.count++;
    last = `${argv.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr?.toString().slice(0, 2000)}`;
    process.stderr.write(`${last}\n`);
  }
  throw new Error(last);
}
