/**
 * One chaos job: sfmpirun (from dist/) runs the chaos program with its own state directory and a
 * marker in its environment; the plan's kill lands; then the harness checks the exit status and
 * watches the job's leftovers until all are gone or the grace is over, measuring how long they took.
 * Whatever is left is then reclaimed: first by `snowflock cleanup` as a user would (what that leaves
 * is reported too), then by force, so that the next job starts on a clean host.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { projectRoot } from '../../src/common/paths.js';
import { benchProgram } from '../lib/programs.js';
import { expectedStatus, signalStatus, type Expectation, type Landing } from './expect.js';
import { deliver, type LiveJob } from './kill.js';
import { describeKill, nominalMs, type JobPlan } from './plan.js';
import { describeScene, isEmpty, JobScanner, ticketIn, type Scene } from './scene.js';

export interface HarnessOptions {
  /** Where per-job state directories go (/tmp/sfch-...). */
  runDir: string;
  /** SNOWFLOCK_POOL for every job. */
  pool: string;
  /** A killed launcher's cluster must be gone within this (issue 8: 2 s). */
  graceMs: number;
  /** How long to keep watching a leak, to measure when (if ever) it goes by itself. */
  observeMs: number;
  /** Per-job logs of failed jobs go here. */
  logDir?: string;
}

export interface JobResult {
  plan: JobPlan;
  kill: string;
  ticket: string | null;
  landing: Landing | null;
  status: number | null;
  expected: Expectation;
  statusOk: boolean;
  /** Launcher start to exit. */
  exitMs: number;
  /** Kill (or, without one, the launcher's exit) to nothing of the job left; null: not within observeMs. */
  goneMs: number | null;
  /** The launcher's exit to nothing of the job left (its own teardown, and what outlives it). */
  exitGoneMs: number | null;
  /** What was left when the grace ran out. */
  leftovers: string[];
  /** What `snowflock cleanup` left of that (finding 3: every process must be recorded). */
  afterCleanup: string[];
  /** What not even the forced cleanup could remove. */
  unremovable: string[];
  /** Zombies of the job at the end (a dead process nobody reaped). */
  zombies: string[];
  hang: boolean;
  /**
   * The hang was Hydra's own finalize deadlock (--launch native with MPICH: every rank had done
   * its work, and mpiexec never returned): the MPICH 4.0/UCX bug the README names, which stock
   * Hydra shows too. Counted apart; the job must still leave nothing once its launcher is killed.
   */
  hydraFinalizeHang: boolean;
  /** The launcher's last line that starts with "sfmpirun:" (its verdict). */
  summary: string | null;
  /** A failing status with no line saying why (other than a SIGKILL of the launcher). */
  silent: boolean;
  ok: boolean;
}

const root = projectRoot();
const sfmpirun = join(root, 'dist/launcher/bin/sfmpirun.js');
const snowflock = join(root, 'dist/launcher/bin/snowflock.js');
/** The jobs' working directory: small and unchanging, because VM clones get a copy (cached by content). */
const workDir = join(root, 'benchmarks/out/chaos/work');

/** Fails with one line when the build the harness runs is missing. */
export function requireBuild(): void {
  for (const f of [sfmpirun, snowflock, join(root, 'native/build/holder')]) {
    if (!existsSync(f)) throw new Error(`${f} is missing: run npm run build first (the chaos harness runs sfmpirun from dist/)`);
  }
}

/** How long a launcher may take to exit after every rank said it was done. */
const FINALIZE_BOUND_MS = 20_000;

/** The chaos program's last line: every rank did all its laps. */
const allDone = (stdout: string): boolean => /^chaos done: /m.test(stdout);

export function programFor(mpi: JobPlan['mpi']): string {
  return benchProgram('chaos', mpi === 'openmpi' ? 'openmpi' : 'mpich');
}

export async function runChaosJob(plan: JobPlan, opts: HarnessOptions): Promise<JobResult> {
  const dir = join(opts.runDir, `${plan.provider}-${plan.index}`);
  const stateDir = join(dir, 'state');
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(stateDir, { recursive: true });
  mkdirSync(workDir, { recursive: true });
  const program = programFor(plan.mpi);
  const marker = `${plan.seed}-${plan.provider}-${plan.index}-${process.pid}`;
  const env = { ...process.env, SNOWFLOCK_STATE_DIR: stateDir, SNOWFLOCK_POOL: opts.pool, SFCHAOS: marker };
  const args = [
    sfmpirun, '-v', '--report', join(dir, 'report.json'), '--provider', plan.provider,
    ...(plan.mpi === 'hydra' ? ['--launch', 'native'] : []),
    '-np', String(plan.np), '-ppn', String(plan.ppn),
    program, String(plan.laps), String(plan.lapMs),
    ...(plan.fail ? [plan.kind, String(plan.fail.rank), String(plan.fail.lap), String(plan.fail.code)] : []),
  ];
  const scanner = new JobScanner(marker, stateDir, program);
  const t0 = performance.now();
  // Its own process group, as a shell's job: ^C goes to the whole group.
  const child = spawn(process.execPath, args, { cwd: workDir, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  scanner.launcherPid = child.pid ?? 0;
  const live: LiveJob = { t0, launcherPid: child.pid ?? 0, exited: false, ready: 0, provisioned: false, launched: false, stateDir, scanner };
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out = (out + d).slice(-32768);
    live.ready = (out.match(/^chaos rank \d+ of \d+ ready$/gm) ?? []).length;
  });
  child.stderr.setEncoding('utf8').on('data', (d: string) => {
    err = (err + d).slice(-65536);
    if (/\] ticket [0-9a-f]{6}: \d+ clones: /.test(err)) live.provisioned = true;
    if (/\] (started \d+ rank|native launch: )/.test(err)) live.launched = true;
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const closed = new Promise<void>((resolve) => child.on('close', () => resolve()));

  // Learn the ticket id (and note /dev/shm use) while the launcher runs.
  let watching = true;
  const watcher = (async () => {
    while (watching) {
      scanner.ticketId ??= ticketIn(stateDir);
      scanner.processes();
      await sleep(50);
    }
  })();
  const killed = deliver(plan, live);
  const hangAfter = nominalMs(plan.provider, plan.mpi) * 4 + 60_000;
  let hangTimer: NodeJS.Timeout | undefined;
  let finalizeTimer: NodeJS.Timeout | undefined;
  const hangs = new Promise<'hang'>((resolve) => {
    hangTimer = setTimeout(() => resolve('hang'), hangAfter);
    // Once every rank is done, a launcher that has not exited within the bound hangs in finalize.
    if (plan.mpi === 'hydra') child.stdout.on('data', () => {
      if (finalizeTimer === undefined && allDone(out)) finalizeTimer = setTimeout(() => resolve('hang'), FINALIZE_BOUND_MS);
    });
  });
  const hang = (await Promise.race([exited, hangs])) === 'hang';
  clearTimeout(hangTimer);
  clearTimeout(finalizeTimer);
  const hydraFinalizeHang = hang && plan.mpi === 'hydra' && allDone(out);
  if (hang) {
    signalGroup(live.launcherPid, 'SIGKILL');
    await exited;
  }
  const exit = await exited;
  const tExit = performance.now();
  live.exited = true;
  watching = false;
  await watcher;
  const landing = await killed;
  await Promise.race([closed, sleep(2000)]);
  // The ticket id, if the launcher got one and the watcher missed it (a very short job).
  scanner.ticketId ??= ticketIn(stateDir) ?? ticketFromLog(err);

  // Leftovers: watched from the kill (or the exit) until nothing is left, or the grace is over.
  const tKill = landing?.delivered ? t0 + landing.atMs : null;
  const from = tKill ?? tExit;
  const { leftovers, goneAt, zombies } = await watchLeftovers(scanner, from, tExit, opts);
  let afterCleanup: string[] = [];
  let unremovable: string[] = [];
  if (goneAt === null) {
    afterCleanup = await userCleanup(stateDir, opts.pool, scanner);
    unremovable = afterCleanup.length > 0 ? await forceCleanup(scanner, stateDir) : [];
  }

  const status = exit.code ?? (exit.signal ? signalStatus(exit.signal) : null);
  const expected = expectedStatus(plan, landing);
  const statusOk = !hang && status !== null && (expected.statuses === null || expected.statuses.includes(status));
  const summary = err.split('\n').filter((l) => l.startsWith('sfmpirun:')).pop() ?? null;
  const silent = status !== 0 && status !== 137 && summary === null && !hang;
  const result: JobResult = {
    plan,
    kill: describeKill(plan),
    ticket: scanner.ticketId,
    landing,
    status,
    expected,
    statusOk,
    exitMs: Math.round(tExit - t0),
    goneMs: goneAt === null ? null : Math.round(Math.max(0, goneAt - from)),
    exitGoneMs: goneAt === null ? null : Math.round(Math.max(0, goneAt - tExit)),
    leftovers,
    afterCleanup,
    unremovable,
    zombies,
    hang,
    hydraFinalizeHang,
    summary,
    silent,
    ok: (statusOk || hydraFinalizeHang) && leftovers.length === 0 && (!hang || hydraFinalizeHang),
  };
  if (!result.ok && opts.logDir) {
    mkdirSync(opts.logDir, { recursive: true });
    const report = existsSync(join(dir, 'report.json')) ? readFileSync(join(dir, 'report.json'), 'utf8') : '(no report)';
    writeFileSync(join(opts.logDir, `job-${plan.seed}-${plan.provider}-${plan.index}.log`), `${JSON.stringify(result, null, 1)}\n--- stdout\n${out}\n--- stderr\n${err}\n--- report\n${report}\n`);
  }
  rmSync(dir, { recursive: true, force: true });
  return result;
}

/**
 * Watches the job's scene until it is empty; what is left when the grace (after both the kill and
 * the exit) runs out are the leftovers, and it goes on watching until observeMs after the kill to
 * time a late end. goneAt: when nothing was left (null: not within observeMs).
 */
async function watchLeftovers(
  scanner: JobScanner,
  from: number,
  tExit: number,
  opts: HarnessOptions,
): Promise<{ leftovers: string[]; goneAt: number | null; zombies: string[] }> {
  const graceEnd = Math.max(tExit, from) + opts.graceMs;
  const observeEnd = Math.max(graceEnd, from + opts.observeMs);
  let scene: Scene = scanner.scene();
  let leftovers: string[] | null = null;
  let goneAt: number | null = null;
  for (;;) {
    const now = performance.now();
    if (isEmpty(scene)) {
      goneAt = now;
      break;
    }
    if (leftovers === null && now >= graceEnd) leftovers = describeScene(scene);
    if (now >= observeEnd) break;
    await sleep(25);
    scene = scanner.scene();
  }
  const zombies = scene.zombies.map((p) => `zombie ${p.pid} (${p.role}) of ${p.ppid}: ${p.cmd.slice(0, 60)}`);
  return { leftovers: leftovers ?? (goneAt === null ? describeScene(scene) : []), goneAt, zombies };
}

function ticketFromLog(err: string): string | null {
  return /\] ticket ([0-9a-f]{6}):/.exec(err)?.[1] ?? null;
}

function signalGroup(pgid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(-pgid, sig);
  } catch {
    /* gone */
  }
}

/** `snowflock cleanup` of the job's state directory, as a user would run it; returns what it left. */
async function userCleanup(stateDir: string, pool: string, scanner: JobScanner): Promise<string[]> {
  spawnSync(process.execPath, [snowflock, 'cleanup'], {
    env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir, SNOWFLOCK_POOL: pool },
    stdio: 'ignore',
    timeout: 60_000,
  });
  // Processes it killed may take a moment to be reaped.
  const deadline = performance.now() + 2000;
  let left = describeScene(scanner.scene());
  while (left.length > 0 && performance.now() < deadline) {
    await sleep(50);
    left = describeScene(scanner.scene());
  }
  return left;
}

/** Removes by force what is left of the job (only what the scanner attributes to it); returns what stays. */
async function forceCleanup(scanner: JobScanner, stateDir: string): Promise<string[]> {
  const s = scanner.scene();
  for (const p of s.processes) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await sleep(200);
  const lines = [...s.netns.map((n) => `netns delete ${n}`), ...s.links.map((l) => `link del ${l}`)];
  if (lines.length > 0) spawnSync('ip', ['-force', '-batch', '-'], { input: lines.join('\n') + '\n', stdio: ['pipe', 'ignore', 'ignore'] });
  for (const t of s.tables) spawnSync('nft', ['delete', 'table', ...t.split(' ')], { stdio: 'ignore' });
  for (const f of s.temp) rmSync(f, { recursive: true, force: true });
  for (const f of s.shm) rmSync(join('/dev/shm', f), { recursive: true, force: true });
  rmSync(stateDir, { recursive: true, force: true });
  mkdirSync(stateDir, { recursive: true });
  await sleep(300);
  return describeScene(scanner.scene());
}
