/**
 * Runs the real sfmpirun CLI (from the TypeScript sources, through tsx) as a child process, the way a
 * user's script would, with its own state directory, and checks that a ticket left nothing behind.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { JobReport } from '../../launcher/job/report.js';
import { leftovers as engineLeftovers } from './leaks.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const cli = join(root, 'launcher/sfmpirun.ts');

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

export function sfmpirun(args: string[], opts: RunOptions = {}): Promise<Run> {
  const reportFile = join(stateDir, `report-${process.pid}-${runs++}.json`);
  const argv = ['--import', 'tsx', cli, ...(opts.noReport ? [] : ['--report', reportFile]), ...args];
  const child = spawn(process.execPath, argv, {
    cwd: opts.cwd ?? root,
    env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir, ...opts.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
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

/** Records left in our state directory (tickets that were never torn down). */
export function stateRecords(): string[] {
  const tickets = join(stateDir, 'tickets');
  return existsSync(tickets) ? readdirSync(tickets) : [];
}
