/**
 * One job from start to end, in four phases:
 *   provision  ticket → checkpoint → clones (the fresh private cluster)
 *   launch     PMI server on the ticket's gateway with its port opened, then every rank started in
 *              parallel inside its clone (or, for Open MPI, Open MPI's own mpirun; see native.ts)
 *   run        output and stdin forwarded until every rank has exited
 *   teardown   PMI server closed, ticket killed (clones, network, state) on every path out
 * and the exit policy of exit.ts decides the status. A program that is missing, or an MPI we cannot
 * drive, is refused before anything is provisioned.
 */
import type { Readable, Writable } from 'node:stream';
import type { Checkpoint, CheckpointSource, Clone, CloneProcess, ProviderChoice, Ticket } from '../../src/types.js';
import { UserError } from '../../src/errors.js';
import { logger } from '../../src/log.js';
import { placeRanks, processMapping } from '../placement.js';
import { PmiServer } from '../pmi/server.js';
import type { JobSpec } from './spec.js';
import { detectMpi, resolveProgram, type MpiKind } from './detect.js';
import { rankEnv, userEnv } from './env.js';
import { ExitPolicy, type RankOutcome } from './exit.js';
import { FailureScanner, launchNative, nativeOutcome } from './native.js';
import { JobOutput } from './output.js';
import { PhaseClock, writeReport, type JobReport } from './report.js';
import { JobStopper, stopGraceMs } from './signals.js';
import { receives, StdinRouter } from './stdin.js';

const log = logger('job');

/** How long the other ranks may go on after one rank failed, before they are stopped (as Hydra does). */
export const failureGraceMs = 1000;

/** The engine calls a job needs (src/engine.ts's Engine provides them). */
export interface JobEngine {
  requestTicket(n: number, opts: { provider?: ProviderChoice; keep?: boolean; coldBoot?: boolean }): Promise<Ticket>;
  checkpoint(ticket: Ticket, source: CheckpointSource): Promise<Checkpoint>;
  createClones(checkpoint: Checkpoint, ticket: Ticket): Promise<Clone[]>;
  openPort(ticket: Ticket, port: number): Promise<void>;
  kill(ticket: Ticket): Promise<unknown>;
  /** The directory of state records; the remote-shell shim finds the ticket there. */
  readonly stateDir?: string;
}

export interface JobIo {
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
  /** The caller's environment (process.env). */
  env: NodeJS.ProcessEnv;
}

/** One started process of the job: a rank, or Open MPI's mpirun standing for all of them. */
interface Started {
  rank: number;
  clone: Clone | null;
  proc: CloneProcess;
  done: boolean;
}

/** What was decided about the job before provisioning. */
interface Plan {
  programs: string[];
  mpi: MpiKind;
  launch: 'pmi' | 'native';
  clones: number;
}

/** Runs the job; resolves to the launcher's exit status. UserErrors before provisioning propagate. */
export async function runJob(job: JobSpec, engine: JobEngine, io: JobIo): Promise<number> {
  const plan = await planJob(job, io.env);
  for (const opt of job.ignored) log.info(`ignored on a clone cluster: ${opt}`);
  log.info(`job: ${job.np} rank(s) of ${plan.mpi === 'none' ? 'a non-MPI program' : plan.mpi} on ${plan.clones} clone(s), launch ${plan.launch}`);

  const clock = new PhaseClock();
  const policy = new ExitPolicy();
  const started: Started[] = [];
  const outcomes: RankOutcome[] = [];
  const signalRanks = (sig: NodeJS.Signals) => {
    for (const s of started) if (!s.done) s.proc.kill(sig);
  };
  const stopper = new JobStopper({ signalRanks, stopped: (status, line) => policy.stop(status, line) });
  stopper.install();

  let ticket: Ticket | null = null;
  let clones: Clone[] = [];
  let pmi: PmiServer | null = null;
  let stdin: StdinRouter | null = null;
  let failure: unknown = null;
  let disposeNative: (() => void) | null = null;
  const scanner = new FailureScanner();
  try {
    clock.begin('provision');
    ticket = await engine.requestTicket(plan.clones, { provider: job.provider, keep: job.keep, coldBoot: job.coldBoot });
    log.info(`ticket ${ticket.id}: ${ticket.granted} of ${ticket.requested} clone(s) on ${ticket.provider}${ticket.reason ? ` (${ticket.reason})` : ''}`);
    if (!stopper.stopping) {
      const source: CheckpointSource = { provider: ticket.provider, programs: plan.programs, workdir: job.apps[0]!.wdir, mpi: plan.mpi };
      const checkpoint = await engine.checkpoint(ticket, source);
      if (!stopper.stopping) clones = await engine.createClones(checkpoint, ticket);
    }
    if (!stopper.stopping) {
      clock.begin('launch');
      const output = new JobOutput(
        { dialect: job.dialect, tag: job.tagOutput, timestamp: job.timestampOutput, outfilePattern: job.outfilePattern, errfilePattern: job.errfilePattern, outputDirectory: job.outputDirectory },
        io,
        (stream) => stopper.outputClosed(stream),
      );
      stdin = new StdinRouter(io.stdin);
      if (plan.launch === 'native') {
        const native = await launchNative({ job, mpi: plan.mpi, programs: plan.programs, ticket, clones, engine, env: io.env });
        disposeNative = native.dispose;
        const proc = native.proc;
        started.push({ rank: -1, clone: null, proc, done: false });
        // Open MPI's mpirun prints its ranks' output itself, already tagged as asked.
        output.attach(-1, 'host', proc.stdout, proc.stderr, { raw: true });
        proc.stderr.on('data', (chunk: Buffer) => scanner.feed(chunk));
        if (proc.stdin && job.stdin !== 'none') stdin.add(proc.stdin);
      } else {
        pmi = await startPmi(job, ticket, clones, engine, policy, signalRanks);
        startRanks(job, plan, clones, pmi, io.env, started, output, stdin);
      }
      stdin.start();
      stopper.startTimeout(job.timeoutSec);
      clock.begin('run');
      await Promise.all(started.map((s) => waitRank(s, policy, outcomes, signalRanks)));
      await output.finished();
    }
  } catch (e) {
    failure = e;
  } finally {
    stdin?.stop();
    clock.begin('teardown');
    disposeNative?.();
    await teardown(job.keep && !failure, engine, ticket, clones, pmi, io.stderr);
    clock.end();
    stopper.release();
  }

  if (failure) throw failure;
  const launcher = plan.mpi === 'openmpi' ? "Open MPI's mpirun" : "Hydra's mpiexec";
  const verdict =
    plan.launch === 'native' && outcomes[0] && !policy.wasStopped
      ? nativeOutcome(outcomes[0], launcher, scanner.failure, (rank) => nativeClone(job, clones, rank))
      : policy.verdict();
  if (verdict.line && !io.stderr.destroyed) io.stderr.write(verdict.line + '\n');
  log.info(`phases (ms): ${Object.entries(clock.phases).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  if (job.reportFile) {
    const report: JobReport = {
      version: 1,
      provider: ticket?.provider ?? null,
      launch: plan.launch,
      mpi: plan.mpi,
      ticket: ticket?.id ?? null,
      np: job.np,
      clones: clones.map((c) => ({ id: c.id, hostname: c.hostname, address: c.address })),
      phases: clock.phases,
      ranks: outcomes.map((o) => ({ ...o, clone: clones.findIndex((c) => c.hostname === o.hostname) })).sort((a, b) => a.rank - b.rank),
      exitCode: verdict.status,
      summary: verdict.line,
      kept: job.keep,
    };
    await writeReport(job.reportFile, report);
  }
  return verdict.status;
}

/** The clone a rank runs on under the native launchers: they fill each host's slots in hostfile order. */
function nativeClone(job: JobSpec, clones: Clone[], rank: number): string {
  if (clones.length === 0) return '?';
  const ppn = Math.max(1, Math.ceil(job.np / clones.length), job.ranksPerClone);
  return clones[placeRanks(job.np, clones.length, ppn, job.placement)[rank] ?? 0]?.hostname ?? '?';
}

/** Everything that can be refused before provisioning: programs, MPI kinds, np, launch mode. */
async function planJob(job: JobSpec, env: NodeJS.ProcessEnv): Promise<Plan> {
  if (job.np < 1 || job.apps.length === 0) throw new UserError('sfmpirun: nothing to run: the number of processes must be at least 1 (-n N)');
  const programs = job.apps.map((app) => resolveProgram(app.argv[0]!, app.wdir, userEnv(job, app, env).PATH ?? env.PATH));
  const kinds = await Promise.all(programs.map(detectMpi));
  const mpis = new Set(kinds.filter((k) => k !== 'none'));
  if (mpis.size > 1) throw new UserError('sfmpirun: the MPMD sections mix MPICH and Open MPI programs; build every program with the same MPI');
  const mpi: MpiKind = mpis.has('openmpi') ? 'openmpi' : mpis.has('mpich') ? 'mpich' : 'none';
  // Open MPI programs cannot use our PMI-1 server (they would each run as a singleton).
  const launch = job.launch === 'native' || mpi === 'openmpi' ? 'native' : 'pmi';
  if (launch === 'native' && mpi === 'none') throw new UserError('sfmpirun: --launch native needs an MPI program (MPICH or Open MPI); run it without --launch native');
  const ppn = Math.max(1, job.ranksPerClone);
  const clones = job.clones ?? Math.ceil(job.np / ppn);
  if (clones < 1) throw new UserError(`sfmpirun: --clones must be at least 1, got ${clones}`);
  return { programs, mpi, launch, clones };
}

async function startPmi(job: JobSpec, ticket: Ticket, clones: Clone[], engine: JobEngine, policy: ExitPolicy, signalRanks: (sig: NodeJS.Signals) => void): Promise<PmiServer> {
  const placement = placeRanks(job.np, clones.length, Math.max(1, job.ranksPerClone), job.placement);
  const appnums: number[] = [];
  job.apps.forEach((app, i) => appnums.push(...new Array<number>(app.np).fill(i)));
  const pmi = new PmiServer({ size: job.np, appnums, processMapping: processMapping(placement), log: logger('pmi') });
  const port = await pmi.listen(ticket.network.gateway);
  await engine.openPort(ticket, port);
  pmi.on('abort', (rank, exitcode, message) => {
    const clone = clones[placement[rank]!];
    const first = policy.record({ rank, hostname: clone?.hostname ?? '?', code: exitcode, signal: null, abortCode: exitcode, abortMessage: message || undefined });
    // MPI_Abort ends the whole job at once, as under mpiexec.
    if (first) stopAll(signalRanks);
  });
  return pmi;
}

function startRanks(job: JobSpec, plan: Plan, clones: Clone[], pmi: PmiServer, callerEnv: NodeJS.ProcessEnv, started: Started[], output: JobOutput, stdin: StdinRouter): void {
  const placement = placeRanks(job.np, clones.length, Math.max(1, job.ranksPerClone), job.placement);
  const localSize = new Map<number, number>();
  for (const c of placement) localSize.set(c, (localSize.get(c) ?? 0) + 1);
  const localSeen = new Map<number, number>();
  let rank = 0;
  job.apps.forEach((app, appIndex) => {
    const base = userEnv(job, app, callerEnv);
    for (let i = 0; i < app.np; i++, rank++) {
      const clone = clones[placement[rank]!]!;
      const localRank = localSeen.get(clone.id) ?? 0;
      localSeen.set(clone.id, localRank + 1);
      const env = rankEnv(base, pmi.rankEnv(rank), { rank, size: job.np, localRank, localSize: localSize.get(placement[rank]!)!, wdir: app.wdir });
      const wantsStdin = receives(job.stdin, rank);
      const proc = clone.spawn([plan.programs[appIndex]!, ...app.argv.slice(1)], { env, cwd: app.wdir, stdin: wantsStdin ? 'pipe' : 'ignore', channel: job.launchChannel });
      started.push({ rank, clone, proc, done: false });
      output.attach(rank, clone.hostname, proc.stdout, proc.stderr);
      if (wantsStdin && proc.stdin) stdin.add(proc.stdin);
    }
  });
  log.info(`started ${job.np} rank(s)`);
}

/** Waits for one started process; a failure stops the others after the grace period. */
async function waitRank(s: Started, policy: ExitPolicy, outcomes: RankOutcome[], signalRanks: (sig: NodeJS.Signals) => void): Promise<void> {
  const status = await s.proc.exited;
  s.done = true;
  const outcome: RankOutcome = { rank: s.rank, hostname: s.clone?.hostname ?? 'host', code: status.code, signal: status.signal };
  outcomes.push(outcome);
  log.debug(`rank ${s.rank} ended: code ${status.code} signal ${status.signal}`);
  if (policy.record(outcome)) {
    const t = setTimeout(() => stopAll(signalRanks), failureGraceMs);
    t.unref();
  }
}

/** SIGTERM to every rank still running, SIGKILL to those left after the grace period. */
function stopAll(signalRanks: (sig: NodeJS.Signals) => void): void {
  signalRanks('SIGTERM');
  const t = setTimeout(() => signalRanks('SIGKILL'), stopGraceMs);
  t.unref();
}

async function teardown(keep: boolean, engine: JobEngine, ticket: Ticket | null, clones: Clone[], pmi: PmiServer | null, stderr: Writable): Promise<void> {
  await pmi?.close().catch((e: Error) => log.warn(`closing the PMI server: ${e.message}`));
  if (!ticket) return;
  if (keep) {
    stderr.write(
      `sfmpirun: kept ticket ${ticket.id} (${ticket.provider}, subnet ${ticket.network.subnet}): ` +
        clones.map((c) => `${c.hostname}=${c.address}`).join(' ') +
        `; run commands with 'snowflock exec ${ticket.id} -- CMD', remove it with 'snowflock down ${ticket.id}'\n`,
    );
    return;
  }
  await engine.kill(ticket);
  log.info(`ticket ${ticket.id} torn down`);
}
