/**
 * What sfmpirun does with a job once its command line is read: logging, the engine, the job's
 * phases (launcher/job/run.ts), and a bug's teardown. Loaded only then: `sfmpirun --help` and
 * `--version` never load the engine (issue 13: they must answer in a blink).
 */
import { configureLogging } from '../../src/common/log.js';
import { Engine } from '../../src/engine.js';
import { runJob } from '../job/run.js';
import type { JobSpec } from '../job/spec.js';
import { showProgress } from './progress.js';

export async function runJobCommand(job: JobSpec): Promise<number> {
  configureLogging({ verbosity: job.verbosity, logFile: job.logFile });
  // -v shows every step with its time already.
  const stopProgress = job.quiet || job.verbosity > 0 ? () => {} : showProgress('sfmpirun');
  const engine = new Engine();
  // A bug must not leave the cluster behind: tear down whatever this engine made, then fail.
  process.once('uncaughtException', (e) => {
    process.stderr.write(`sfmpirun: internal error: ${e.stack ?? e.message}\n`);
    void engine.killAll().finally(() => process.exit(1));
  });
  // Alongside the job, not before it: the tickets of launchers that died are torn down.
  const reclaiming = engine.reclaim().catch(() => []);
  try {
    return await runJob(job, engine, { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env });
  } finally {
    stopProgress();
    await reclaiming;
  }
}
