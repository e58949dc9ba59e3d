/**
 * The snowflock subcommands. Each one is a small function from parsed arguments to an exit status;
 * launcher/bin/snowflock.ts wires them to the command line.
 */
import { accessSync, constants, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Engine } from '../../src/engine.js';
import { installTeardownOnSignals } from './signals.js';
import { ProvisionError, UsageError } from '../../src/common/errors.js';
import { doctor, formatDoctor } from '../../src/doctor/doctor.js';
import { parseProviderChoice } from '../../src/providers/registry.js';
import type { Clone } from '../../src/providers/clone.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import { PhaseClock, writeReport } from '../job/report.js';
import { table } from './output.js';
import { showProgress } from './progress.js';
import { runReport } from './run-report.js';
import { spawnAll } from './spawn-all.js';
import { worstStatus } from './status.js';

export interface EngineArgs {
  stateDir?: string;
}

export const engineFor = (args: EngineArgs): Engine => new Engine(args.stateDir ? { stateDir: args.stateDir } : {});

/** The engine of a command that works with tickets: it first reclaims the tickets of dead owners. */
async function reclaimingEngine(args: EngineArgs): Promise<Engine> {
  const engine = engineFor(args);
  await engine.reclaim();
  return engine;
}

function clonesTable(ticket: Ticket, clones: Array<Pick<Clone, 'id' | 'hostname' | 'address'>>): string {
  const head =
    `ticket ${ticket.id}: ${ticket.granted} ${ticket.provider} clone(s) on ${ticket.network.subnet}, ` +
    `gateway ${ticket.network.gateway} (bridge ${ticket.network.bridge})` +
    (ticket.reason ? `\nasked for ${ticket.requested}, granted ${ticket.granted}: ${ticket.reason}` : '');
  return head + '\n' + table(['ID', 'HOSTNAME', 'ADDRESS'], clones.map((c) => [String(c.id), c.hostname, c.address]));
}

function requireCommand(cmd: string[] | undefined): string[] {
  if (!cmd || cmd.length === 0) throw new UsageError('no command given; put it after --, e.g. snowflock run -n 2 -- hostname');
  return cmd;
}

interface ProvisionArgs {
  n: number;
  provider?: string;
  coldBoot?: boolean;
  /** No progress lines (also off with -v, whose log shows the steps). */
  quiet?: boolean;
  verbose?: number;
}

/** Progress lines while provisioning (launcher/cli/progress.ts), unless -q or -v. */
function progress(args: ProvisionArgs): () => void {
  return args.quiet || (args.verbose ?? 0) > 0 ? () => {} : showProgress('snowflock');
}

/**
 * Provisions a ticket and its clones, tearing everything down if that fails or we are interrupted.
 * `programs` are host programs a VM image must carry (namespace clones see the host's files); the
 * current directory is shared with the clones (VM clones mount it, and commands run in it).
 */
async function provision(engine: Engine, args: ProvisionArgs, keep: boolean, programs: string[] = []): Promise<{ ticket: Ticket; clones: Clone[]; checkpoint: string }> {
  const choice = parseProviderChoice(args.provider);
  const source = { mpi: 'none' as const, programs, coldBoot: args.coldBoot ?? false };
  const stopProgress = progress(args);
  try {
    const ticket = await engine.requestTicket(args.n, { provider: choice, keep, checkpoint: source, share: [process.cwd()] });
    const checkpoint = await engine.checkpoint(ticket, source);
    const clones = await engine.createClones(ticket, checkpoint);
    return { ticket, clones, checkpoint: checkpoint.key };
  } finally {
    stopProgress();
  }
}

/** The host file a command names, when it is one (a VM image then carries it and its libraries). */
function hostProgram(cmd: string): string[] {
  const dirs = cmd.includes('/') ? [''] : (process.env.PATH ?? '').split(':').filter(Boolean);
  for (const d of dirs) {
    const p = d ? join(d, cmd) : resolve(cmd);
    try {
      accessSync(p, constants.X_OK);
      if (statSync(p).isFile()) return [p];
    } catch {
      // not here; keep looking
    }
  }
  return [];
}

export async function upCommand(args: EngineArgs & ProvisionArgs): Promise<number> {
  const engine = await reclaimingEngine(args);
  const unhook = installTeardownOnSignals(engine);
  try {
    const { ticket, clones } = await provision(engine, args, true);
    process.stdout.write(clonesTable(ticket, clones));
    process.stdout.write(`run commands with: snowflock exec ${ticket.id} [CLONE|all] -- CMD...; remove with: snowflock down ${ticket.id}\n`);
    return 0;
  } finally {
    unhook();
  }
}

export async function runCommand(args: EngineArgs & ProvisionArgs & { cmd?: string[]; report?: string }): Promise<number> {
  const argv = requireCommand(args.cmd);
  const engine = await reclaimingEngine(args);
  const unhook = installTeardownOnSignals(engine);
  const clock = new PhaseClock();
  try {
    clock.begin('provision');
    const { ticket, clones, checkpoint } = await provision(engine, args, false, hostProgram(argv[0]!));
    clock.begin('run');
    const run = spawnAll(clones, argv, { prefix: true, stdin: false });
    let lost: string | null = null;
    try {
      lost = await Promise.race([run.done.then(() => null), engine.failure(ticket)]);
      if (lost !== null) {
        // Waiting on the lost server (a hard NFS mount), only SIGKILL ends them.
        run.processes.forEach((p) => p.kill('SIGKILL'));
        await Promise.race([run.done, new Promise((res) => setTimeout(res, 3000).unref())]);
      }
    } finally {
      clock.begin('teardown');
      // Clones that lost their file server: what waits on it in them only ends with the clones.
      await (lost === null ? engine.join(ticket) : engine.kill(ticket));
      clock.end();
    }
    const statuses = lost === null ? await run.done : null;
    const status = statuses ? worstStatus(statuses) : new ProvisionError(lost!).exitCode;
    if (args.report) await writeReport(args.report, runReport(argv, ticket, checkpoint, clones, clock.phases, statuses, status, lost));
    if (lost !== null) throw new ProvisionError(lost);
    return status;
  } finally {
    unhook();
  }
}

export async function execCommand(args: EngineArgs & { ticket: string; clone?: string; cmd?: string[] }): Promise<number> {
  const argv = requireCommand(args.cmd);
  const engine = await reclaimingEngine(args);
  const { ticket, clones } = await engine.attach(args.ticket);
  const which = args.clone ?? 'all';
  let chosen: Clone[];
  if (which === 'all') chosen = clones;
  else {
    const id = Number(which);
    const clone = clones.find((c) => c.id === id || c.hostname === which);
    if (!clone) throw new UsageError(`ticket ${ticket.id} has no clone ${JSON.stringify(which)}; give 0..${clones.length - 1}, a hostname, or all`);
    chosen = [clone];
  }
  const single = chosen.length === 1;
  const run = spawnAll(chosen, argv, { prefix: !single, stdin: single && !process.stdin.isTTY });
  // The clones stay: a signal goes to the command, not to the ticket.
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  const forward = (sig: NodeJS.Signals) => run.processes.forEach((p) => p.kill(sig));
  signals.forEach((s) => process.on(s, forward));
  try {
    return worstStatus(await run.done);
  } finally {
    signals.forEach((s) => process.off(s, forward));
  }
}

export async function psCommand(args: EngineArgs): Promise<number> {
  const tickets = await (await reclaimingEngine(args)).list();
  if (tickets.length === 0) {
    process.stdout.write('no live tickets\n');
    return 0;
  }
  process.stdout.write(
    table(
      ['TICKET', 'PROVIDER', 'CLONES', 'SUBNET', 'OWNER', 'KEPT', 'WARM', 'CREATED'],
      tickets.map((t) => [
        t.ticket.id,
        t.ticket.provider,
        String(t.clones.length),
        t.ticket.network.subnet || '-',
        `${t.owner.pid}${t.owner.alive ? '' : ' (gone)'}`,
        t.ticket.kept ? 'yes' : 'no',
        // Its network made ahead by the warm service: ready for a job (0 clones), or leased by one.
        t.ticket.warm ? 'yes' : 'no',
        t.createdAt,
      ]),
    ),
  );
  return 0;
}

export async function downCommand(args: EngineArgs & { tickets: string[] }): Promise<number> {
  if (args.tickets.length === 0) throw new UsageError('name the ticket(s) to remove; see snowflock ps');
  const engine = await reclaimingEngine(args);
  for (const id of args.tickets) {
    const report = await engine.kill(id);
    process.stdout.write(`ticket ${id} removed (${report.removed.length} resources)\n`);
  }
  return 0;
}

export async function cleanupCommand(args: EngineArgs & { all: boolean; templates: boolean; ticket?: string }): Promise<number> {
  const report = await engineFor(args).cleanup({ all: args.all, templates: args.templates, ticketId: args.ticket });
  for (const t of report.tickets) {
    process.stdout.write(`ticket ${t.id}: removed ${t.removed.length}\n`);
    for (const r of t.removed) process.stdout.write(`  ${r}\n`);
  }
  for (const c of report.claims) process.stdout.write(`orphan ${c} removed\n`);
  for (const t of report.templates) process.stdout.write(`template ${t} removed\n`);
  if (report.tickets.length + report.claims.length + report.templates.length === 0) process.stdout.write('nothing to clean up\n');
  return 0;
}

export async function doctorCommand(args: EngineArgs): Promise<number> {
  const report = await doctor(engineFor(args).config.nativeDir);
  process.stdout.write(formatDoctor(report) + '\n');
  return report.ok ? 0 : 1;
}
