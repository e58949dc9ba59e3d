/**
 * Native launch: the MPI implementation's own launcher runs on the host and starts its daemons inside
 * the clones through our remote-shell shim (launcher/bin/rsh-shim.ts), as if the clones were ssh hosts.
 * With --launch native: Open MPI programs go through Open MPI's mpirun, MPICH programs through
 * Hydra's mpiexec (the default, direct.ts, starts ranks itself with our own process managers). Both
 * launchers are told to stay on the ticket's subnet, and their one control port, fixed in advance,
 * is opened in the ticket's firewall so the daemons can call back. Under Hydra every rank runs
 * inside native/rankwatch, which reports a failed rank to ./rankwatch.ts: Hydra by itself would
 * wait for good on the others when a rank exits with a code (Open MPI's mpirun ends the job then).
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { settings } from '../../../src/common/config.js';
import { onLifeline } from '../../../src/common/lifeline.js';
import { projectRoot } from '../../../src/common/paths.js';
import { shellQuote } from '../../../src/common/shell.js';
import { shellStatus, signalName, signalNumber } from '../../../src/common/signals.js';
import { logger } from '../../../src/common/log.js';
import type { Clone, CloneProcess, ExitStatus } from '../../../src/providers/clone.js';
import type { Ticket } from '../../../src/ticket/ticket.js';
import { availableParallelism } from 'node:os';
import { defaultsLayer, userEnv } from '../env.js';
import { DaemonWatch } from './daemons.js';
import { listenForRankFailures, type RankFailure, type RankWatch } from './rankwatch.js';
import type { RankOutcome } from '../exit.js';
import type { JobPlan } from '../plan.js';
import type { JobEngine } from '../run.js';
import type { JobSpec } from '../spec.js';

const log = logger('native');

export interface NativeContext {
  job: JobSpec;
  plan: JobPlan;
  ticket: Ticket;
  clones: Clone[];
  engine: Pick<JobEngine, 'openPort' | 'recordProcess' | 'resources' | 'stateDir'>;
  env: NodeJS.ProcessEnv;
  /** A daemon did not start or report in time (see daemons.ts): the line that says which and why. */
  onDaemonFailure(line: string): void;
  /** Hydra: a rank failed (exit code or signal), as its rankwatch reported it. */
  onRankFailed(f: RankFailure): void;
}

export interface NativeLaunch {
  proc: CloneProcess;
  /** Stops watching the daemons and removes the hostfile, shim wrapper and daemon logs. */
  dispose(): void;
}

/** Starts the implementation's launcher on the host; it stands for every rank of the job. */
export async function launchNative(ctx: NativeContext): Promise<NativeLaunch> {
  // In the ticket's own directory: it goes with the ticket even if this process is killed.
  const dir = join(ctx.engine.resources(ctx.ticket).dir, 'native');
  mkdirSync(dir, { recursive: true });
  let ranks: RankWatch | null = null;
  try {
    const logDir = join(dir, 'daemons');
    mkdirSync(logDir);
    const shim = writeShimWrapper(dir, logDir);
    const port = await freePort(ctx.ticket.network.gateway);
    await ctx.engine.openPort(ctx.ticket, port);
    const ppn = ctx.plan.ranksPerClone;
    if (ctx.plan.mpi !== 'openmpi') {
      ranks = await listenForRankFailures(ctx.ticket.network.gateway, ctx.onRankFailed);
      await ctx.engine.openPort(ctx.ticket, ranks.port);
    }
    const { argv, env } =
      ctx.plan.mpi === 'openmpi' ? openMpiCommand(ctx, dir, shim, port, ppn) : hydraCommand(ctx, dir, shim, port, ppn, `${ctx.ticket.network.gateway}:${ranks!.port}`);
    log.info(`native launch: ${argv.join(' ')}`);
    // On a lifeline: if sfmpirun is killed, the launcher and its remote shells go with it.
    const proc = hostProcess(onLifeline(settings().nativeDir, argv), env, ctx.job.stdin !== 'none');
    // In the ticket's record, so that teardown and `snowflock cleanup` end it whatever happens.
    if (proc.pid !== undefined) await ctx.engine.recordProcess(ctx.ticket, proc.pid, argv[0]!);
    const what = ctx.plan.mpi === 'openmpi' ? "Open MPI's daemon (orted)" : "Hydra's proxy";
    const watch = new DaemonWatch({ port, clones: ctx.clones, logDir, timeoutMs: settings().daemonTimeoutMs, what, onFailure: ctx.onDaemonFailure });
    void proc.exited.then(() => watch.stop());
    return {
      proc,
      dispose: () => {
        watch.stop();
        ranks?.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (e) {
    ranks?.close();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/**
 * The environment of the host launcher: the ranks' environment (with env.ts's defaults under it:
 * mpirun passes OMPI_MCA_* variables on to its ranks) plus what the shim needs to find the ticket.
 * mpirun would set mpi_yield_when_idle itself only when the ranks outnumber the slots of its
 * hostfile, which they never do here: the clones' slots are not the host's cores.
 */
function launcherEnv(ctx: NativeContext): Record<string, string> {
  const env = { ...defaultsLayer({ ranksOnHost: ctx.job.np, cores: availableParallelism() }), ...userEnv(ctx.job, { env: {} }, ctx.env) };
  env.PATH ??= ctx.env.PATH ?? '/usr/local/bin:/usr/bin:/bin';
  env.SNOWFLOCK_TICKET = ctx.ticket.id;
  env.SNOWFLOCK_STATE_DIR = ctx.engine.stateDir ?? settings().stateDir;
  return env;
}

function openMpiCommand(ctx: NativeContext, dir: string, shim: string, port: number, ppn: number): { argv: string[]; env: Record<string, string> } {
  const { job, ticket, clones } = ctx;
  const hostfile = join(dir, 'hostfile');
  writeFileSync(hostfile, clones.map((c) => `${c.address} slots=${ppn}\n`).join(''));
  const subnet = ticket.network.subnet;
  const argv = ['mpirun.openmpi', '--allow-run-as-root', '--oversubscribe', '--hostfile', hostfile];
  // Each daemon checks at start that the agent's program exists where it runs, although with no tree
  // spawn it never uses it; the shim's file lives in the host's /tmp, which a clone does not see, so
  // the agent is `sh SHIM`: sh exists in every clone, and only mpirun on the host runs the shim.
  argv.push('--mca', 'plm_rsh_agent', `sh ${shim}`, '--mca', 'plm_rsh_no_tree_spawn', '1');
  argv.push('--mca', 'oob_tcp_if_include', subnet, '--mca', 'btl_tcp_if_include', subnet);
  argv.push('--mca', 'oob_tcp_static_ipv4_ports', String(port));
  if (job.placement === 'cyclic') argv.push('--map-by', 'node');
  if (job.tagOutput) argv.push('--tag-output');
  if (job.timestampOutput) argv.push('--timestamp-output');
  if (job.outputDirectory) argv.push('--output-filename', job.outputDirectory);
  argv.push('--stdin', String(job.stdin));
  job.apps.forEach((app, i) => {
    if (i > 0) argv.push(':');
    argv.push('-np', String(app.np), '--wdir', app.wdir);
    for (const [k, v] of Object.entries(app.env)) argv.push('-x', `${k}=${v}`);
    argv.push(ctx.plan.programs[i]!, ...app.argv.slice(1));
  });
  // Open MPI's session directories (mpirun's on the host, each orted's in its clone) in the
  // ticket's directory: a killed mpirun leaves /tmp/ompi.* behind otherwise.
  return { argv, env: { OMPI_MCA_orte_tmpdir_base: join(dir, 'ompi'), ...launcherEnv(ctx) } };
}

/** `reportTo`: where each rank's rankwatch reports its failure (ADDR:PORT on the gateway). */
function hydraCommand(ctx: NativeContext, dir: string, shim: string, port: number, ppn: number, reportTo: string): { argv: string[]; env: Record<string, string> } {
  const { job, ticket, clones } = ctx;
  const hostfile = join(dir, 'hostfile');
  writeFileSync(hostfile, clones.map((c) => `${c.address}:${ppn}\n`).join(''));
  const argv = ['mpiexec.hydra', '-launcher', 'ssh', '-launcher-exec', shim, '-f', hostfile, '-localhost', ticket.network.gateway];
  if (job.tagOutput) argv.push('-l');
  if (job.outfilePattern) argv.push('-outfile-pattern', job.outfilePattern);
  if (job.errfilePattern) argv.push('-errfile-pattern', job.errfilePattern);
  job.apps.forEach((app, i) => {
    if (i > 0) argv.push(':');
    argv.push('-n', String(app.np), '-wdir', app.wdir);
    for (const [k, v] of Object.entries(app.env)) argv.push('-env', k, v);
    // At the same path in a VM clone: the guest image carries it for MPICH (src/image/index.ts).
    argv.push(join(settings().nativeDir, 'rankwatch'), reportTo, '--', ctx.plan.programs[i]!, ...app.argv.slice(1));
  });
  // Hydra's proxies call back on this one port, which the ticket's firewall lets through.
  return { argv, env: { ...launcherEnv(ctx), MPIEXEC_PORT_RANGE: `${port}:${port}` } };
}

/**
 * The shim as one executable file: Open MPI and Hydra both want a program path. It runs the compiled
 * shim (launcher/bin/rsh-shim), through tsx when the launcher itself runs from TypeScript sources.
 */
function writeShimWrapper(dir: string, logDir: string): string {
  const fromSources = import.meta.url.endsWith('.ts');
  const root = projectRoot();
  const script = fromSources ? join(root, 'launcher/bin/rsh-shim.ts') : join(root, 'dist/launcher/bin/rsh-shim.js');
  const loader = fromSources ? ' --import tsx' : '';
  const path = join(dir, 'rsh');
  // cd first: tsx resolves from the working directory's node_modules.
  const cd = fromSources ? `cd ${shellQuote(root)} && ` : '';
  writeFileSync(path, `#!/bin/sh\n${cd}exec ${shellQuote(process.execPath)}${loader} ${shellQuote(script)} --sf-log ${shellQuote(logDir)} "$@"\n`);
  chmodSync(path, 0o755);
  return path;
}

/** A port that is free on the gateway now (the launcher binds it a moment later). */
function freePort(host: string): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ host, port: 0 }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

/** A host process shaped like a clone process, so the job treats it like a rank. */
function hostProcess(argv: string[], env: Record<string, string>, withStdin: boolean): CloneProcess & { pid: number | undefined } {
  const child = spawn(argv[0]!, argv.slice(1), { env, stdio: [withStdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
  const exited = new Promise<ExitStatus>((resolveExit) => {
    child.once('error', (e) => {
      child.stderr?.push(`sfmpirun: cannot start ${argv[0]}: ${e.message}\n`);
      resolveExit({ code: 127, signal: null });
    });
    child.once('close', (code, signal) => resolveExit({ code, signal }));
  });
  return {
    pid: child.pid,
    stdin: child.stdin,
    stdout: child.stdout!,
    stderr: child.stderr!,
    kill: (signal: NodeJS.Signals = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    },
    exited,
  };
}

/**
 * Reads Open MPI's and Hydra's own failure reports (and MPICH's abort line) from the launcher's stderr, to name the failing
 * rank in our summary line: which rank, and its exit code, signal or MPI_Abort errorcode.
 */
export class FailureScanner {
  private text = '';
  private found: { rank: number; code?: number; signal?: number; abort?: number } | null = null;

  feed(chunk: Buffer): void {
    if (this.found) return;
    this.text = (this.text + chunk.toString('latin1')).slice(-65536);
    const exit = /Process name: \[\[\d+,\d+\],(\d+)\]\s*Exit code:\s*(\d+)/.exec(this.text);
    const signal = /process rank (\d+) with PID \d+ on node \S+ exited on signal (\d+)/.exec(this.text);
    const abort = /MPI_ABORT was invoked on rank (\d+) in communicator \S+\s+with errorcode (-?\d+)/.exec(this.text);
    // MPICH's own line, as its ranks print it under Hydra.
    const mpichAbort = /Abort\((-?\d+)\) on node \d+ \(rank (\d+) in comm \d+\): application called MPI_Abort/.exec(this.text);
    if (abort) this.found = { rank: Number(abort[1]), abort: Number(abort[2]) };
    else if (mpichAbort) this.found = { rank: Number(mpichAbort[2]), abort: Number(mpichAbort[1]) };
    else if (signal) this.found = { rank: Number(signal[1]), signal: Number(signal[2]) };
    else if (exit) this.found = { rank: Number(exit[1]), code: Number(exit[2]) };
  }

  get failure(): { rank: number; code?: number; signal?: number; abort?: number } | null {
    return this.found;
  }
}

/**
 * The verdict when the native launcher stood for the ranks: its status (Open MPI and Hydra already
 * follow our policy: the failing rank's code, 128+N, MPI_Abort's errorcode), and a summary line that
 * names the rank and its clone when the launcher said which rank failed.
 */
export function nativeOutcome(
  o: RankOutcome,
  launcher: string,
  failure: FailureScanner['failure'],
  cloneOfRank: (rank: number) => string,
): { status: number; line: string | null } {
  const status = shellStatus(o, 0);
  if (status === 0) return { status: 0, line: null };
  if (failure) {
    const where = `sfmpirun: rank ${failure.rank} (clone ${cloneOfRank(failure.rank)})`;
    if (failure.abort !== undefined) return { status, line: `${where} called MPI_Abort with errorcode ${failure.abort}` };
    if (failure.signal !== undefined) return { status, line: `${where} was killed by signal ${failure.signal} (${signalName(failure.signal) ?? 'unknown'})` };
    return { status, line: `${where} exited with code ${failure.code}` };
  }
  if (o.signal) return { status, line: `sfmpirun: ${launcher} was killed by signal ${signalNumber(o.signal)} (${o.signal})` };
  return { status, line: `sfmpirun: ${launcher} exited with code ${status} (its messages are above)` };
}
