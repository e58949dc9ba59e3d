/**
 * Runs the real sfmpirun CLI (from the TypeScript sources, through tsx) as a child process, the way a
 * user's script would, with its own state directory, and checks that a ticket left nothing behind.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { projectRoot } from '../../src/common/paths.js';
import { Engine } from '../../src/engine.js';
import type { JobReport } from '../../launcher/job/report.js';
import type { StateRecord } from '../../src/ticket/record.js';
import { leftovers as engineLeftovers } from './leaks.js';

const root = projectRoot();
export const cli = join(root, 'launcher/bin/sfmpirun.ts');

export interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: Buffer;
  stderr: string;
  report: JobReport | null;
}

export interface RunOptions {
  stdin?: Buffer | string;
  env?: Record<string, string>;
  cwd?: string;
  /** Called with the child once it runs, e.g. to send it a signal when some output appeared. */
  onStdout?: (text: string, child: ReturnType<typeof spawn>) => void;
  /** Leave out --report (for runs that must fail before anything starts). */
  noReport?: boolean;
}

/** One state directory per test process, so leak checks see only our own records. */
export const stateDir = mkdtempSync(join(tmpdir(), 'sfmpirun-test-state-'));
// Kept when a ticket record is left in it (the tests have failed then, and it shows what leaked).
process.on('exit', () => {
  if (stateRecords().length === 0) rmSync(stateDir, { recursive: true, force: true });
});
let runs = 0;
/** sfmpirun processes of this test process that have not exited yet. */
const live = new Set<ChildProcess>();

/**
 * A test that failed (a mocha timeout among them) must not leave its job running: its sfmpirun
 * is killed, and what its records name is removed (QEMUs, holders, native launchers, networks).
 */
afterEach(async function () {
  if (this.currentTest?.state !== 'failed' || live.size === 0) return;
  for (const child of live) child.kill('SIGKILL');
  await Promise.all([...live].map((c) => new Promise((r) => (c.exitCode !== null || c.signalCode !== null ? r(null) : c.once('close', r)))));
  await new Engine({ stateDir }).cleanup({ all: true });
});

export function sfmpirun(args: string[], opts: RunOptions = {}): Promise<Run> {
  const reportFile = join(stateDir, `report-${process.pid}-${runs++}.json`);
  // tsx by its path: from a working directory outside the project, '--import tsx' would not resolve.
  const argv = ['--import', join(root, 'node_modules/tsx/dist/esm/index.mjs'), cli, ...(opts.noReport ? [] : ['--report', reportFile]), ...args];
  const child = spawn(process.execPath, argv, {
    cwd: opts.cwd ?? root,
    env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir, ...opts.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  live.add(child);
  child.once('close', () => live.delete(child));
  const out: Buffer[] = [];
  let err = '';
  let seen = '';
  child.stdout.on('data', (b: Buffer) => {
    out.push(b);
    if (opts.onStdout) {
      seen += b.toString('latin1');
      opts.onStdout(seen, child);
    }
  });
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  child.stdin.on('error', () => undefined);
  if (opts.stdin !== undefined) child.stdin.end(opts.stdin);
  else child.stdin.end();
  return new Promise((resolveRun) => {
    child.on('close', (code, signal) => {
      const report = existsSync(reportFile) ? (JSON.parse(readFileSync(reportFile, 'utf8')) as JobReport) : null;
      rmSync(reportFile, { force: true });
      resolveRun({ code, signal, stdout: Buffer.concat(out), stderr: err, report });
    });
  });
}

function sh(cmd: string): string {
  try {
    return execFileSync('sh', ['-c', cmd], { encoding: 'utf8' });
  } catch {
    return '';
  }
}

/**
 * Everything on the host that still belongs to the ticket: what the engine's leak check finds
 * (namespaces, links, nft table, holders, records, subnet claims), plus the job runner's own: any
 * process whose command line names the ticket (a native launcher, a shim) and its temporary files.
 */
export function leftovers(ticketId: string): string[] {
  const found = engineLeftovers([ticketId], stateDir);
  for (const line of sh('ps -eo pid,args').split('\n')) {
    if (line.includes(ticketId) && !line.includes('ps -eo')) found.push(`process: ${line.trim()}`);
  }
  for (const f of readdirSync(tmpdir())) if (f.startsWith(`sfmpirun-${ticketId}-`)) found.push(`temporary ${join(tmpdir(), f)}`);
  return found;
}

/** A ticket's state record as it is now. */
export function recordOf(ticketId: string): StateRecord {
  return JSON.parse(readFileSync(join(stateDir, 'tickets', `${ticketId}.json`), 'utf8')) as StateRecord;
}

/** Records left in our state directory (tickets that were never torn down). */
export function stateRecords(): string[] {
  const tickets = join(stateDir, 'tickets');
  return existsSync(tickets) ? readdirSync(tickets) : [];
}
