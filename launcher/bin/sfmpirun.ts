#!/usr/bin/env node
/**
 * sfmpirun / sfmpiexec: a drop-in mpirun. Parses either dialect (MPICH Hydra or Open MPI), runs the
 * job on a fresh clone cluster (launcher/job/run.ts) and exits with the job's status. User errors
 * get one line and a non-zero status, before anything is provisioned when they can be.
 */
import { mpiVersionLines } from '../cli/mpi-versions.js';
import { versionLine } from '../cli/version.js';
import { debugRequested, reportError } from '../cli/errors.js';
import { parseMpirunArgs } from '../mpirun/options.js';

/** Ours (with the commit it was built from), then each MPI implementation found on this host (or that it is missing). */
export async function versionText(): Promise<string> {
  return [versionLine('sfmpirun'), ...(await mpiVersionLines())].join('\n') + '\n';
}

export async function main(argv: string[]): Promise<number> {
  const parsed = parseMpirunArgs(argv, process.env, process.cwd());
  if (parsed.kind === 'help') {
    process.stdout.write(parsed.text.endsWith('\n') ? parsed.text : parsed.text + '\n');
    return 0;
  }
  if (parsed.kind === 'version') {
    process.stdout.write(await versionText());
    return 0;
  }
  // The engine and the job's phases are loaded only for a job (see cli/job-command.ts).
  const { runJobCommand } = await import('../cli/job-command.js');
  return runJobCommand(parsed.job);
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.exitCode = reportError('sfmpirun', e, debugRequested(process.argv));
  },
);
