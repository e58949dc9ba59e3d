/**
 * One job from start to end, in four phases:
 *   provision  ticket → checkpoint → clones (the fresh private cluster, seeing the job's
 *              working directories: the ticket shares them, src/workdir/ serves them to VM clones)
 *   launch     our process managers (PMI-1 and PMIx) on the ticket's gateway and every rank
 *              started in its clone (launch/direct.ts), or the MPI's own launcher on the host
 *              (launch/native.ts)
 *   run        output and stdin forwarded until every rank has exited, or the clones lost their
 *              host's file server (Engine.failure): then the job fails at once, and teardown ends
 *              whatever waits on it in the clones
 *   teardown   process managers closed, ticket killed (clones, network, state) on every path out
 * and the exit policy of exit.ts decides the status. The plan (plan.ts) is made before anything is
 * provisioned, so bad input is refused with nothing to clean up.
 */
import type { Readable, Writable } from 'node:stream';
import { logger } from '../../src/common/log.js';
import { writeLine } from '../../src/common/lines.js';
import type { Checkpoint, CheckpointSource } from '../../src/providers/checkpoint.js';
import type { Clone } from '../../src/providers/clone.js';
import type { ProviderChoice } from '../../src/providers/provider.js';
import type { TicketResources } from '../../src/engine.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import { ExitPolicy, type RankOutcome } from './exit.js';
import { JobOutput } from './io/output.js';
import { StdinRouter } from './io/stdin.js';
import { FailureScanner, launchNative, nativeOutcome } from './launch/native.js';
import type { RankFailure } from './launch/rankwatch.js';
import { ProcessManagers, startRanks, type RankContact, type StartedRank } from './launch/direct.js';
import { planJob, type JobPlan } from './plan.js';
import { readSettled, type MemoryFigures } from '../../src/memory/report.js';
import { PhaseClock, writeReport, type JobReport } from './report.js';
import { JobStopper, stopGraceMs } from './signals.js';
import { spanningEngine } from './span.js';
import type { TicketHost } from '../../src/hosts/coordinator.js';
import type { JobSpec } from './spec.js';

const log = logger('job');

/** How long the other ranks may go on after one rank failed, before they are stopped (as Hydra does). */
export const failureGraceMs = 1000;

/** A native launcher's daemon did not start: the cluster is not usable, as when provisioning fails. */
const launchFailedStatus = 4;
/** The clones lost their file server mid-job: the cluster broke, as when provisioning fails. */
const clusterLostStatus = 4;

/** The engine calls a job needs (src/engine.ts's Engine provides them). */
export interface JobEngine {
  requestTicket(n: number, opts: { provider?: ProviderChoice; keep?: boolean; checkpoint?: CheckpointSource; share?: string[] }): Promise<Ticket>;
  checkpoint(ticket: Ticket, source: CheckpointSource): Promise<Checkpoint>;
  createClones(ticket: Ticket, checkpoint: Checkpoint): Promise<Clone[]>;
  /** One line, if the clones lose a host service they depend on (their file server). */
  failure(ticket: Ticket): Promise<string>;
  openPort(ticket: Ticket, port: number): Promise<void>;
  /** The ticket's directory and record, for what the job creates on the host itself. */
  resources(ticket: Ticket): TicketResources;
  /** Records a host process started for the ticket (a native launcher) in its state record. */
  recordProcess(ticket: Ticket, pid: number, what: string): Promise<void>;
  kill(ticket: Ticket): Promise<unknown>;
  /** Memory on demand: what each clone host fetched, while the clones run (for --report). */
  memoryFigures?(ticket: Ticket): Promise<MemoryFigures | null>;
  /** The directory of state records; the remote-shell shim finds the ticket there. */
  readonly stateDir?: string;
  /** A ticket over several hosts: each host with clones, for the per-host services (one sf-pmix per host). */
  hosts?(ticket: Ticket): TicketHost[];
}

export interface JobIo {
  stdin: Readable;
  stdout: Writable;
  stderr: Writable;
  /** The caller's environment (process.env). */
  env: NodeJS.ProcessEnv;
}

/** What the phases share while the job runs. */
interface Running {
  job: JobSpec;
  plan: JobPlan;
  io: JobIo;
  engine: JobEngine;
  clock: PhaseClock;
  policy: ExitPolicy;
  stopper: JobStopper;
  /** Ranks, or the one native launcher standing for all of them (rank -1). */
  started: StartedRank[];
  outcomes: RankOutcome[];
  scanner: FailureScanner;
  ticket: Ticket | null;
  checkpoint: Checkpoint | null;
  clones: Clone[];
  pms: ProcessManagers | null;
  /** Set once the launcher began stopping ranks itself (a failure, MPI_Abort, a signal, --timeout). */
  stoppingRanks: boolean;
  stdin: StdinRouter | null;
  output: JobOutput | null;
  disposeNative: (() => void) | null;
  /** Set when the clones lost their file server: the job failed, and the ticket is not kept. */
  lost: string | null;
  /** Memory on demand: the figures read just before teardown (its helpers' counters go with them). */
  memory: MemoryFigures | null;
}

/** Runs the job; resolves to the launcher's exit status. Usage errors before provisioning propagate. */
export async function runJob(job: JobSpec, localEngine: JobEngine, io: JobIo): Promise<number> {
  const plan = await planJob(job, io.env);
  // Clones on other hosts: the coordinator drives this host's engine and an agent per other host.
  const engine = plan.hosts.source === 'here' ? localEngine : spanningEngine(localEngine, plan);
  for (const opt of job.ignored) log.info(`ignored on a clone cluster: ${opt}`);
  log.info(`job: ${job.np} rank(s) on ${plan.clones} clone(s)${describeHosts(plan)}, launch ${plan.launch}; ${describeApps(job, plan)}`);

  const policy = new ExitPolicy();
  const r: Running = {
    ...{ job, plan, io, engine, policy, clock: new PhaseClock(), started: [], outcomes: [], scanner: new FailureScanner() },
    ...{ ticket: null, checkpoint: null, clones: [], pms: null, stoppingRanks: false, stdin: null, output: null, disposeNative: null, lost: null, memory: null },
    stopper: new JobStopper({ signalRanks: (sig) => signalRanks(r, sig), stopped: (status, line) => policy.stop(status, line) }),
  };
  r.stopper.install();
  let failure: unknown = null;
  try {
    r.clock.begin('provision');
    await provision(r);
    if (!r.stopper.stopping) {
      const lost = r.engine.failure(r.ticket!);
      r.clock.begin('launch');
      await launch(r);
      r.stopper.startTimeout(job.timeoutSec);
      r.clock.begin('run');
      const ended = (async () => {
        await Promise.all(r.started.map((s) => waitRank(r, s)));
        // The job ends when every rank has exited and the last byte of their output is out.
        await r.output?.finished();
        return null;
      })();
      r.lost = await Promise.race([ended, lost]);
      if (r.lost) {
        r.policy.stop(clusterLostStatus, `sfmpirun: ${r.lost}`);
        await killRanks(r);
      }
    }
  } catch (e) {
    failure = e;
  } finally {
    r.stdin?.stop();
    r.clock.begin('teardown');
    r.disposeNative?.();
    await teardown(r, job.keep && !failure && !r.lost);
    r.clock.end();
    r.stopper.release();
  }
  if (failure) throw failure;
  return finish(r);
}

async function provision(r: Running): Promise<void> {
  const { job, plan } = r;
  // Programs and the MPI make the checkpoint; the working directories are the ticket's to share.
  const source: CheckpointSource = { programs: plan.imagePrograms, mpi: plan.mpi, coldBoot: job.coldBoot, memoryTransport: job.memoryTransport };
  const share = job.apps.map((a) => a.wdir);
  r.ticket = await r.engine.requestTicket(plan.clones, { provider: job.provider, keep: job.keep, checkpoint: source, share });
  log.info(`ticket ${r.ticket.id}: ${r.ticket.granted} clone(s) on ${r.ticket.provider}`);
  if (r.stopper.stopping) return;
  r.checkpoint = await r.engine.checkpoint(r.ticket, source);
  if (r.stopper.stopping) return;
  r.clones = await r.engine.createClones(r.ticket, r.checkpoint);
}

async function launch(r: Running): Promise<void> {
  const { job, plan, io } = r;
  const ticket = r.ticket!;
  const output = new JobOutput(
    { dialect: job.dialect, tag: job.tagOutput, timestamp: job.timestampOutput, outfilePattern: job.outfilePattern, errfilePattern: job.errfilePattern, outputDirectory: job.outputDirectory },
    io,
    (stream) => r.stopper.outputClosed(stream),
  );
  r.stdin = new StdinRouter(io.stdin);
  if (plan.launch === 'native') {
    const onDaemonFailure = (line: string) => {
      r.policy.stop(launchFailedStatus, `sfmpirun: ${line}`);
      stopAll(r);
    };
    const onRankFailed = (f: RankFailure) => {
      const outcome: RankOutcome = { ...f, hostname: r.clones[plan.placement[f.rank] ?? -1]?.hostname ?? '?' };
      if (r.policy.record(outcome)) setTimeout(() => stopAll(r), failureGraceMs).unref();
    };
    const native = await launchNative({ job, plan, ticket, clones: r.clones, engine: r.engine, env: io.env, onDaemonFailure, onRankFailed });
    r.disposeNative = native.dispose;
    const proc = native.proc;
    r.started.push({ rank: -1, clone: null, proc, done: false });
    // The native launcher prints its ranks' output itself, already tagged as asked.
    output.attach(-1, 'host', proc.stdout, proc.stderr, { raw: true });
    proc.stderr.on('data', (chunk: Buffer) => r.scanner.feed(chunk));
    if (proc.stdin && job.stdin !== 'none') r.stdin.add(proc.stdin);
  } else {
    const ctx = {
      ...{ job, plan, ticket, clones: r.clones, engine: r.engine, policy: r.policy },
      rankFailed: (o: RankOutcome) => {
        if (r.policy.record(o)) setTimeout(() => stopAll(r), failureGraceMs).unref();
      },
      stopAll: () => stopAll(r),
      stopping: () => r.stoppingRanks || r.stopper.stopping !== null,
    };
    r.pms = await ProcessManagers.start(ctx);
    r.started.push(...startRanks(ctx, r.pms, io.env, output, r.stdin));
  }
  r.stdin.start();
  r.output = output;
}

/** Waits for one started process; a failure stops the others after the grace period. */
async function waitRank(r: Running, s: StartedRank): Promise<void> {
  const status = await s.proc.exited;
  s.done = true;
  const ownExit = !r.stoppingRanks && r.stopper.stopping === null;
  const outcome: RankOutcome = { rank: s.rank, hostname: s.clone?.hostname ?? 'host', code: status.code, signal: status.signal };
  r.outcomes.push(outcome);
  log.debug(`rank ${s.rank} ended: code ${status.code} signal ${status.signal}`);
  if (r.policy.record(outcome)) setTimeout(() => stopAll(r), failureGraceMs).unref();
  await r.pms?.rankExited(s.rank, status, ownExit);
}

function signalRanks(r: Running, sig: NodeJS.Signals): void {
  for (const s of r.started) if (!s.done) s.proc.kill(sig);
}

/**
 * Ranks waiting on a lost file server wait in calls only SIGKILL ends (a hard NFS mount): killed
 * at once, and given the grace period to be gone. Teardown, which kills the clones, ends whatever
 * is left; this only spares the output the clones' "stopped while the process ran".
 */
async function killRanks(r: Running): Promise<void> {
  signalRanks(r, 'SIGKILL');
  const gone = Promise.all(r.started.map((s) => s.proc.exited));
  await Promise.race([gone, new Promise((res) => setTimeout(res, stopGraceMs).unref())]);
}

/** SIGTERM to every rank still running, SIGKILL to those left after the grace period. */
function stopAll(r: Running): void {
  r.stoppingRanks = true;
  signalRanks(r, 'SIGTERM');
  setTimeout(() => signalRanks(r, 'SIGKILL'), stopGraceMs).unref();
}

async function teardown(r: Running, keep: boolean): Promise<void> {
  await r.pms?.close(keep);
  const ticket = r.ticket;
  if (!ticket) return;
  const engine = r.engine;
  if (r.job.reportFile && r.clones.length && engine.memoryFigures) r.memory = await readSettled(() => engine.memoryFigures!(ticket)).catch(() => null);
  if (keep) {
    writeLine(
      r.io.stderr,
      `sfmpirun: kept ticket ${ticket.id} (${ticket.provider}, subnet ${ticket.network.subnet}): ` +
        r.clones.map((c) => `${c.hostname}=${c.address}`).join(' ') +
        `; run commands with 'snowflock exec ${ticket.id} -- CMD', remove it with 'snowflock down ${ticket.id}'`,
    );
    return;
  }
  await r.engine.kill(ticket);
  log.info(`ticket ${ticket.id} torn down`);
}

/** The verdict line, the report, and the status. */
async function finish(r: Running): Promise<number> {
  const { job, plan, clones, policy, outcomes } = r;
  const launcher = plan.mpi === 'openmpi' ? "Open MPI's mpirun" : "Hydra's mpiexec";
  // A native launch's verdict is its launcher's, unless a rank's own failure was heard (rankwatch)
  // and the launcher did not say why (an MPI_Abort: the rank's exit is its consequence).
  const rankFailed = (policy.firstFailure?.rank ?? -1) >= 0 && r.scanner.failure?.abort === undefined;
  const verdict =
    plan.launch === 'native' && outcomes[0] && !policy.wasStopped && !rankFailed
      ? nativeOutcome(outcomes[0], launcher, r.scanner.failure, (rank) => clones[plan.placement[rank] ?? 0]?.hostname ?? '?')
      : policy.verdict();
  if (verdict.line) writeLine(r.io.stderr, verdict.line);
  const singletons = r.pms?.singletons() ?? [];
  if (singletons.length) writeLine(r.io.stderr, singletonWarning(singletons, (rank) => clones[plan.placement[rank]!]?.hostname ?? '?'));
  log.info(`phases (ms): ${Object.entries(r.clock.phases).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  if (job.reportFile) {
    const contact = (rank: number): RankContact | Record<string, never> => r.pms?.contactOf(rank, singletons) ?? {};
    const report: JobReport = {
      version: 2,
      provider: r.ticket?.provider ?? null,
      launch: plan.launch,
      mpi: plan.mpi,
      ticket: r.ticket?.id ?? null,
      warm: r.ticket?.warm === true,
      checkpoint: r.checkpoint?.key ?? null,
      np: job.np,
      clones: clones.map((c) => ({ id: c.id, hostname: c.hostname, address: c.address, host: plan.hosts.hosts[plan.hosts.cloneHosts[c.id]!]!.name })),
      phases: r.clock.phases,
      apps: plan.apps.map((a, i) => ({ program: plan.programs[i]!, mpi: a.mpi, via: a.via })),
      ...(r.pms ? { processManagers: r.pms.describe() } : {}),
      ranks: outcomes.map((o) => ({ ...o, clone: clones.findIndex((c) => c.hostname === o.hostname), ...contact(o.rank) })).sort((a, b) => a.rank - b.rank),
      exitCode: verdict.status,
      summary: verdict.line,
      kept: job.keep,
      ...(r.memory ? { memory: r.memory } : {}),
    };
    await writeReport(job.reportFile, report);
  }
  return verdict.status;
}

/** Where the clones go, for the -v line, when not all on this host. */
function describeHosts(plan: JobPlan): string {
  const { hosts } = plan;
  if (hosts.source === 'here') return '';
  const counts = hosts.hosts.map((h, i) => `${h.name}${h.local ? ' (here)' : ''}: ${hosts.cloneHosts.filter((x) => x === i).length}`);
  return ` over ${hosts.hosts.length} hosts (${hosts.source === 'slurm' ? `Slurm job ${hosts.allocation}` : '--real-hosts'}; ${counts.join(', ')})`;
}

/** The -v line's account of what each app is, as detection saw it. */
function describeApps(job: JobSpec, plan: JobPlan): string {
  return plan.apps
    .map((a, i) => `${job.apps[i]!.argv[0]}: ${a.mpi === 'none' ? 'no MPI found' : a.mpi} (${a.via})${a.note ? `; ${a.note}` : ''}`)
    .join('; ');
}

/**
 * One line for the ranks that ran as singletons (each rank 0 of a world of 1): neither Hydra nor
 * Open MPI says so, and the job may even succeed.
 */
export function singletonWarning(ranks: number[], hostOf: (rank: number) => string): string {
  const which = ranks.length === 1 ? `rank ${ranks[0]} (clone ${hostOf(ranks[0]!)}) ran as a singleton` : `ranks ${ranks.join(', ')} (clones ${[...new Set(ranks.map(hostOf))].join(', ')}) ran as singletons`;
  return (
    `sfmpirun: warning: ${which}: ${ranks.length === 1 ? 'it' : 'each'} exited without ever contacting sfmpirun's process managers (PMI-1 or PMIx), so its MPI saw a world of 1; ` +
    'either its MPI is one sfmpirun cannot wire, or something between sfmpirun and MPI_Init (a wrapper, env -i) removed the PMI_*, PMIX_* and OMPI_MCA_schizo variables'
  );
}
