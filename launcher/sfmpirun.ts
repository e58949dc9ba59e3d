#!/usr/bin/env node
/**
 * sfmpirun / sfmpiexec: a drop-in mpirun. Parses either dialect (MPICH Hydra or Open MPI), runs the
 * job on a fresh clone cluster (launcher/job/run.ts) and exits with the job's status. User errors
 * get one line and a non-zero status, before anything is provisioned when they can be.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Engine } from '../src/engine.js';
import { isUserError } from '../src/errors.js';
import { debugRequested } from './cli/common.js';
import { configureLogging } from '../src/log.js';
import { parseMpirunArgs } from './mpirun/options.js';
import { runJob } from './job/run.js';

const run = promisify(execFile);

/** Ours, then each MPI implementation found on this host (or that it is missing). */
export async function versionText(): Promise<string> {
  const root = resolve(dirname(fileURLToPath(import.meta.url)), import.meta.url.endsWith('.ts') ? '..' : '../..');
  const ours = (JSON.parse(readFileSync(resolve(root, 'package.json'), 'utf8')) as { version: string }).version;
  const probe = async (what: string, argv: string[], pick: RegExp): Promise<string> => {
    try {
      const { stdout } = await run(argv[0]!, argv.slice(1), { timeout: 10000 });
      return `${what}: ${pick.exec(stdout)?.[1]?.trim() ?? stdout.split('\n')[0]!.trim()}`;
    } catch {
      return `${what}: not found (${argv[0]})`;
    }
  };
  const found = await Promise.all([
    probe('MPICH', ['mpichversion'], /MPICH Version:\s*(\S+)/),
    probe('Open MPI', ['mpirun.openmpi', '--version'], /\(Open(?:RTE| MPI)\)\s*(\S+)/),
  ]);
  return [`sfmpirun (snowflock) ${ours}`, ...found].join('\n') + '\n';
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
  const job = parsed.job;
  configureLogging({ verbosity: job.verbosity, logFile: job.logFile });
  const engine = new Engine({ stateDir: process.env.SNOWFLOCK_STATE_DIR });
  // A bug must not leave the cluster behind: tear down whatever this engine made, then fail.
  process.once('uncaughtException', (e) => {
    process.stderr.write(`sfmpirun: internal error: ${e.stack ?? e.message}\n`);
    void engine.killAll().finally(() => process.exit(1));
  });
  return runJob(job, engine, { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env });
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    if (isUserError(e)) {
      process.stderr.write(`${e.message.startsWith('sfmpirun') ? '' : 'sfmpirun: '}${e.message}\n`);
      if (debugRequested(process.argv) && e.stack) process.stderr.write(e.stack + '\n');
      process.exitCode = e.exitCode;
    } else {
      process.stderr.write(`sfmpirun: internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
      process.exitCode = 1;
    }
  },
);
