/**
 * The clone engine: SnowFlock's calls on a Linux host, as a facade over the ticket, network and
 * provider modules (docs/architecture.md walks a job through them).
 *
 *   requestTicket(n)             sf_request_ticket: a ticket and its private network
 *   checkpoint(ticket, source)   sf_checkpoint_parent: the parent state clones start from
 *   createClones(ticket, cp)     sf_create_clones: clones 0..m-1, all ready, seeing the ticket's shared directories
 *   failure(ticket)              the clones lost something on the host (their file server, their memory): one line
 *   serveMemory(ticket, cp)      memory on demand: the checkpoint's memory served to clone hosts
 *   memoryFigures(ticket)        memory on demand: what each clone host fetched, for --report
 *   join(ticket) / kill(ticket)  sf_join / sf_kill: wait for the clones' processes, or not; tear down
 *   attach, list, cleanup        for other processes: snowflock exec, ps, cleanup
 *
 * Every resource is named in the ticket's state record before it is created; teardown (shared with
 * `snowflock cleanup`) removes what the record names, record last.
 */
import { spawn } from 'node:child_process';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { ownerArg } from './common/lifeline.js';
import { projectRoot } from './common/paths.js';
import { resolveConfig, type EngineConfig, type EngineOptions } from './common/config.js';
import { HostError, UsageError } from './common/errors.js';
import { logger, timed } from './common/log.js';
import { isRunning, killAndWait, startTime } from './common/processes.js';
import { ENGINE_HELPERS, nativeHelperProblem, requireEngineHost } from './doctor/checks.js';
import { openPorts } from './network/firewall.js';
import { claimSubnet, createNetwork } from './network/network.js';
import { parsePool } from './network/pool.js';
import type { Checkpoint, CheckpointSource } from './providers/checkpoint.js';
import type { Clone, CloneProcess, ExitStatus } from './providers/clone.js';
import type { CreateContext, Provider, ProviderName } from './providers/provider.js';
import type { MemoryFigures } from './memory/report.js';
import type { MemoryOffer, ServeOptions } from './memory/source.js';
import { cleanupTemplates, loadProvider, resolveProvider } from './providers/registry.js';
import { TicketLifecycle, type LiveTicket } from './ticket/lifecycle.js';
import { RecordStore, type StateRecord } from './ticket/record.js';
import type { ResourceLedger } from './ticket/resources.js';
import { removeOrphanClaims, removeStaleWrites } from './ticket/sweep.js';
import type { TeardownReport } from './ticket/teardown.js';
import { TICKET_ID, type Ticket, type TicketOptions } from './ticket/ticket.js';
import { giveBack, lease } from './warm/client.js';

const log = logger('engine');

/** The ticket's directory and record, for resources a caller of the engine creates itself. */
export type TicketResources = Pick<ResourceLedger, 'dir' | 'add'>;

/** A live ticket as `snowflock ps` shows it. */
export interface TicketStatus {
  ticket: Ticket;
  clones: StateRecord['clones'];
  owner: { pid: number; alive: boolean };
  createdAt: string;
}

export interface CleanupOptions {
  /** Also tickets whose owner still runs, and kept ones. */
  all?: boolean;
  /** Only this ticket (whatever its owner). */
  ticketId?: string;
  /** Also the vm provider's cached templates. */
  templates?: boolean;
}

export interface CleanupReport {
  tickets: Array<{ id: string } & TeardownReport>;
  /** Subnet claims left without a record, and half-written record updates, of owners that died. */
  claims: string[];
  templates: string[];
}

export class Engine {
  readonly config: EngineConfig;
  private readonly store: RecordStore;
  private readonly tickets: TicketLifecycle;
  private readonly providers = new Map<ProviderName, Promise<Provider>>();

  constructor(opts: EngineOptions = {}) {
    this.config = resolveConfig(opts);
    this.store = new RecordStore(this.config.stateDir);
    this.tickets = new TicketLifecycle(this.store);
  }

  /** Where state records live (the remote-shell shim and snowflock exec find tickets there). */
  get stateDir(): string {
    return this.config.stateDir;
  }

  /** A ticket for n clones, with its network ready. Everything a caller can get wrong fails first. */
  async requestTicket(n: number, opts: TicketOptions = {}): Promise<Ticket> {
    validateCount(n, this.config.maxClones);
    const pool = parsePool(this.config.pool);
    requireEngineHost();
    const providerName = resolveProvider(opts.provider ?? 'auto');
    const provider = await this.provider(providerName);
    const why = await provider.unavailable();
    if (why) throw new HostError(`the ${providerName} provider cannot run on this host`, why);
    for (const helper of ENGINE_HELPERS) {
      const problem = nativeHelperProblem(this.config.nativeDir, helper);
      if (problem) throw new HostError(problem.what, problem.fix);
    }
    if (opts.checkpoint) provider.check(opts.checkpoint);
    const shared = [...new Set((opts.share ?? []).map((d) => resolve(d)))];
    provider.checkShare(shared);

    const span = opts.span;
    if (span && opts.keep) throw new UsageError('a cluster that spans hosts cannot be kept (--keep): it lives as long as its launcher');
    // A kept ticket outlives every process, a spanning one is the coordinator's: neither is leased.
    if (this.config.warm === 'auto' && !opts.keep && !span) {
      const warm = await this.takeWarm(n, provider, shared);
      if (warm) return warm;
    }
    const entry = await this.tickets.claim(
      {
        provider: providerName,
        requested: n,
        granted: n,
        network: { subnet: '', prefixLength: 24, gateway: '', bridge: '', table: '' },
        openPorts: [],
        kept: opts.keep ?? false,
        shared,
        ...(opts.warm ? { warm: true } : {}),
      },
      provider,
      span?.id,
    );
    const { ledger } = entry;
    const ticket = ledger.ticket;
    try {
      if (!ticket.kept) await this.startReaper(ticket);
      await ledger.add({ kind: 'dir', path: ledger.dir });
      await mkdir(ledger.dir, { recursive: true });
      await timed(log, `ticket ${ticket.id}: network`, () =>
        this.tickets.creation(entry, async () => {
          const net = await claimSubnet(pool, this.store.claimsDir, ledger, span);
          await ledger.updateTicket((t) => (t.network = net));
          await createNetwork(net, ledger);
        }),
      );
    } catch (e) {
      await this.tickets.teardownAfterFailure(ticket.id);
      throw e;
    }
    log.info(`ticket ${ticket.id}: ${n} ${providerName} clone(s) on ${ticket.network.subnet}`);
    return ticket;
  }

  /**
   * A ticket whose network this host's warm service made ahead (src/warm/), or null (no service,
   * none ready): leased, adopted with this process as its owner and its own reaper, and given back
   * at teardown once its processes are dead.
   */
  private async takeWarm(n: number, provider: Provider, shared: string[]): Promise<Ticket | null> {
    const id = await timed(log, 'lease of a warm network', () => lease(this.config.stateDir, this.config.pool));
    if (!id) return null;
    const adopted = await this.adopt(id, provider, (t) => {
      Object.assign(t, { provider: provider.name, requested: n, granted: n, kept: false, shared, warm: true });
    }).catch(async (e: Error) => {
      await this.tickets.teardownAfterFailure(id);
      throw e;
    });
    if (!adopted) return null; // its record went meanwhile (snowflock cleanup --all): make one
    adopted.handBack = () => giveBack(this.config.stateDir, id);
    const ticket = adopted.ledger.ticket;
    log.info(`ticket ${ticket.id}: ${n} ${provider.name} clone(s) on ${ticket.network.subnet} (a warm network)`);
    return ticket;
  }

  /**
   * Takes over a live ticket another process of this host hands over (a warm network, either
   * way): this process owns its record and runs its reaper, and the previous owner's reaper ends.
   */
  private async adopt(id: string, provider: Provider, change: (t: Ticket) => void): Promise<LiveTicket | null> {
    const adopted = await this.tickets.adopt(id, provider, change);
    if (!adopted) return null;
    const { entry, reapers } = adopted;
    const endPrevious = reapers.map(async (r) => {
      if (r.kind !== 'process') return;
      await killAndWait(r);
      await entry.ledger.forget(r);
    });
    await Promise.all([this.startReaper(entry.ledger.ticket), ...endPrevious]);
    return entry;
  }

  /**
   * The warm service's side: stops holding a ticket it made, for the job that leased it to adopt;
   * false if its record is gone (snowflock cleanup --all took it).
   */
  async handOver(ticket: Ticket): Promise<boolean> {
    await this.tickets.release(ticket.id);
    return (await this.store.read(ticket.id)) !== null;
  }

  /**
   * The warm service's side: adopts a warm ticket a job gave back, or one it leased that no job
   * adopted (its teardown is then this engine's: kill). Null for a ticket that is gone or was never
   * a warm one: a job's own ticket is never taken from it.
   */
  async takeBack(ticketId: string): Promise<Ticket | null> {
    if (!TICKET_ID.test(ticketId)) throw new UsageError(`${JSON.stringify(ticketId)} is not a ticket id`);
    const record = await this.store.read(ticketId);
    if (!record?.ticket.warm) return null;
    const entry = await this.adopt(ticketId, await this.provider(record.ticket.provider), () => {});
    return entry?.ledger.ticket ?? null;
  }

  /** Whether the ticket's record names the process `pid` as its owner (false when it has none). */
  async ownedBy(ticketId: string, pid: number): Promise<boolean> {
    return (await this.store.read(ticketId))?.owner.pid === pid;
  }

  /** Lets the ticket's clones open TCP connections to this host port on the gateway address. */
  async openPort(ticket: Ticket, port: number): Promise<void> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UsageError(`port ${port} is not a TCP port number (1-65535)`);
    const { ledger } = this.tickets.get(ticket.id);
    if (ledger.ticket.openPorts.includes(port)) return;
    await ledger.updateTicket((t) => t.openPorts.push(port));
    await openPorts(ledger.ticket.network, [port]);
    if (ticket !== ledger.ticket) ticket.openPorts = [...ledger.ticket.openPorts];
  }

  /**
   * For what a caller creates on this host for the ticket (a file server, a native launcher's
   * files): the ticket's own directory, and the ticket's record to name each resource in before
   * it exists. Teardown and `snowflock cleanup` remove them with the ticket, whatever happens.
   */
  resources(ticket: Ticket): TicketResources {
    const { ledger } = this.tickets.get(ticket.id);
    return { dir: ledger.dir, add: (...resources) => ledger.add(...resources) };
  }

  /**
   * Records a process the caller started on this host for the ticket (a native MPI launcher), so
   * that teardown and `snowflock cleanup` end it with the ticket. Recorded right after it started:
   * its PID is not known before.
   */
  async recordProcess(ticket: Ticket, pid: number, what: string): Promise<void> {
    const start = startTime(pid);
    if (start === null) return; // gone already: nothing to end
    await this.resources(ticket).add({ kind: 'process', pid, start, what });
  }

  /**
   * The parent state the ticket's clones start from (cached by the provider). On failure the
   * ticket is torn down: a caller that cannot get a checkpoint has no use for the ticket.
   */
  async checkpoint(ticket: Ticket, source: CheckpointSource): Promise<Checkpoint> {
    const entry = this.tickets.get(ticket.id);
    try {
      return await timed(log, `ticket ${ticket.id}: checkpoint`, () => this.tickets.creation(entry, () => entry.provider.checkpoint(source, logger(entry.provider.name))));
    } catch (e) {
      await this.tickets.teardownAfterFailure(ticket.id);
      throw e;
    }
  }

  /**
   * Clones 0..m-1 of the ticket (m = all it grants, or opts.count), or the clones `opts.ids` of a
   * ticket spanning hosts (the ones this host holds). On failure the whole ticket is torn down and
   * the error rethrown.
   */
  async createClones(ticket: Ticket, checkpoint: Checkpoint, opts: { count?: number; ids?: number[] } = {}): Promise<Clone[]> {
    const entry = this.tickets.get(ticket.id);
    const t = entry.ledger.ticket;
    const ids = opts.ids ?? Array.from({ length: opts.count ?? t.granted }, (_, i) => i);
    const count = ids.length;
    if (!Number.isInteger(count) || count < 1 || count > t.granted) {
      throw new UsageError(`cannot create ${count} clones on ticket ${t.id}, which grants ${t.granted}`);
    }
    if (ids.some((id) => !Number.isInteger(id) || id < 0 || id >= t.granted) || new Set(ids).size !== count) {
      throw new UsageError(`clone ids ${ids.join(',')} are not distinct ids of ticket ${t.id} (0 to ${t.granted - 1})`);
    }
    if (entry.ledger.record.clones.length > 0) throw new UsageError(`ticket ${t.id} has its clones already; request another ticket for more`);
    if (checkpoint.provider !== t.provider) throw new Error(`a ${checkpoint.provider} checkpoint cannot make ${t.provider} clones`);
    let clones: Clone[];
    try {
      clones = await timed(log, `ticket ${t.id}: ${count} clones`, () =>
        this.tickets.creation(entry, () =>
          entry.provider.createClones(this.createContext(t.id), checkpoint, count, ids),
        ),
      );
    } catch (e) {
      await this.tickets.teardownAfterFailure(t.id);
      throw e;
    }
    return clones.map((c) => tracked(c, entry));
  }

  private createContext(ticketId: string): CreateContext {
    const entry = this.tickets.get(ticketId);
    const t = entry.ledger.ticket;
    return { ticket: t, ledger: entry.ledger, log: logger(entry.provider.name), openPort: (port) => this.openPort(t, port), fail: entry.fail };
  }

  /**
   * Memory on demand, on the parent's host: serves the memory of the checkpoint's template to the
   * ticket's clones on other hosts (a memserver of the ticket, listening on `listen`, this host's
   * underlay ADDR:PORT). What it returns is what a clone host's engine takes as the checkpoint
   * source's `memory` (with the descriptor file shipped there). Its loss fails the ticket.
   */
  async serveMemory(ticket: Ticket, checkpoint: Checkpoint, opts: ServeOptions): Promise<MemoryOffer> {
    const entry = this.tickets.get(ticket.id);
    const provider = entry.provider;
    if (!provider.serveMemory) throw new UsageError(`the ${provider.name} provider has no memory to serve to other hosts; memory on demand is for VM clones`);
    return this.tickets.creation(entry, () => provider.serveMemory!(this.createContext(ticket.id), checkpoint, opts));
  }

  /** Memory on demand: the ticket's figures on this host while its clones run (null: it used none). */
  async memoryFigures(ticket: Ticket): Promise<MemoryFigures | null> {
    const entry = this.tickets.get(ticket.id);
    return (await entry.provider.memoryFigures?.(entry.ledger.ticket)) ?? null;
  }

  /**
   * Resolves with one line (naming the ticket and the cause) if the ticket's clones lose a host
   * service they depend on while they run: the file server of their shared directories died or
   * stopped answering, or the memtap or memserver of their memory failed. Never resolves otherwise. A job races its ranks against it and fails: the
   * clones' own calls on a lost server do not end by themselves; teardown ends them.
   */
  failure(ticket: Ticket): Promise<string> {
    return this.tickets.get(ticket.id).failure;
  }

  /** Clones of a live ticket created by another process (snowflock exec, the remote-shell shim). */
  async attach(ticketId: string): Promise<{ ticket: Ticket; clones: Clone[] }> {
    const record = await this.record(ticketId);
    requireEngineHost();
    const provider = await this.provider(record.ticket.provider);
    return { ticket: record.ticket, clones: provider.attach(record.ticket, record.clones) };
  }

  /** Waits until every process this engine started in the ticket's clones has exited, then tears down. */
  async join(ticket: Ticket | string): Promise<TeardownReport> {
    const id = typeof ticket === 'string' ? ticket : ticket.id;
    const running = this.tickets.ids().includes(id) ? this.tickets.get(id).running : new Set<Promise<ExitStatus>>();
    while (running.size > 0) await Promise.all([...running]);
    return this.teardown(id);
  }

  /** Tears the ticket down now: its processes die with their clones. Works on any ticket with a record. */
  async kill(ticket: Ticket | string): Promise<TeardownReport> {
    requireEngineHost();
    return this.teardown(typeof ticket === 'string' ? ticket : ticket.id);
  }

  /** Tears down every ticket this engine created, except those named (signal handlers call this). */
  async killAll(except: string[] = []): Promise<void> {
    const ids = this.tickets.ids().filter((id) => !except.includes(id));
    await Promise.all(ids.map((id) => this.teardown(id).catch((e: Error) => log.error(`ticket ${id}: ${e.message}`))));
  }

  /** Live state records. */
  async list(): Promise<TicketStatus[]> {
    return (await this.store.list())
      .map((r) => ({ ticket: r.ticket, clones: r.clones, owner: { pid: r.owner.pid, alive: isRunning(r.owner) }, createdAt: r.createdAt }))
      .sort((a, b) => a.createdAt.localeCompare(b.createdAt));
  }

  /**
   * Removes what records name: of tickets whose owner died (not kept ones), or all, or one. Then
   * subnet claims that no record owns. Never touches anything a record does not name.
   */
  async cleanup(opts: CleanupOptions = {}): Promise<CleanupReport> {
    requireEngineHost();
    const report: CleanupReport = { tickets: [], claims: [], templates: [] };
    if (opts.ticketId !== undefined) await this.record(opts.ticketId);
    for (const r of await this.store.list()) {
      const id = r.ticket.id;
      const chosen = opts.ticketId !== undefined ? id === opts.ticketId : opts.all || (!r.ticket.kept && !isRunning(r.owner));
      if (!chosen) continue;
      report.tickets.push({ id, ...(await this.teardown(id, r)) });
    }
    report.claims = [...(await removeOrphanClaims(this.store, new Set(this.tickets.ids()))), ...(await removeStaleWrites(this.store))];
    await this.store.pruneEmpty();
    if (opts.templates) report.templates = await cleanupTemplates();
    return report;
  }

  /**
   * What every command start does, cheaply: tear down the tickets of owners that died (kept ones
   * stay). A dead owner's clones are already gone by their lifeline; this removes the rest (network,
   * record). Quiet: a host where the engine cannot run has nothing to reclaim.
   */
  async reclaim(): Promise<string[]> {
    try {
      requireEngineHost();
    } catch {
      return []; // the command itself says what is missing, in its own words
    }
    const dead = (await this.store.list()).filter((r) => !r.ticket.kept && !isRunning(r.owner));
    if (dead.length === 0) return [];
    const reclaimed: string[] = [];
    for (const r of dead) {
      await this.teardown(r.ticket.id, r)
        .then(() => reclaimed.push(r.ticket.id))
        .catch((e: Error) => log.warn(`reclaiming ticket ${r.ticket.id} of dead owner ${r.owner.pid}: ${e.message}`));
    }
    if (reclaimed.length) log.info(`reclaimed ticket(s) of dead owners: ${reclaimed.join(', ')}`);
    return reclaimed;
  }

  // --- internals ---

  /**
   * The ticket's reaper: if this process dies, it tears the ticket down from its record (see
   * src/common/lifeline.ts). Recorded first, so teardown kills it last, while this process still
   * lives; started before it is recorded (its PID is not known before), which is safe: a reaper
   * whose owner dies before the record names it just runs the teardown.
   */
  private async startReaper(ticket: Ticket): Promise<void> {
    const fromSources = import.meta.url.endsWith('.ts');
    // From the root, not from this module: the commands run this code from a bundle elsewhere in dist/.
    const script = join(projectRoot(), fromSources ? 'src/ticket/reap.ts' : 'dist/src/ticket/reap.js');
    const loader = fromSources ? ['--import', join(projectRoot(), 'node_modules/tsx/dist/esm/index.mjs')] : [];
    const argv = [join(this.config.nativeDir, 'reaper'), '--owner', ownerArg(), '--', process.execPath, ...loader, script, this.config.stateDir, ticket.id];
    const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio: 'ignore' });
    child.unref();
    const start = child.pid === undefined ? null : startTime(child.pid);
    if (child.pid === undefined || start === null) throw new HostError(`cannot start ${argv[0]}`, 'build the native helpers: make -C native (or npm run build)');
    await this.resources(ticket).add({ kind: 'process', pid: child.pid, start, what: 'reaper' });
  }

  private provider(name: ProviderName): Promise<Provider> {
    let p = this.providers.get(name);
    if (!p) {
      p = loadProvider(name, this.config.nativeDir);
      this.providers.set(name, p);
    }
    return p;
  }

  private async record(ticketId: string): Promise<StateRecord> {
    if (!TICKET_ID.test(ticketId)) throw new UsageError(`${JSON.stringify(ticketId)} is not a ticket id (6 hex digits, see snowflock ps)`);
    const record = await this.store.read(ticketId);
    if (!record) throw new UsageError(`no ticket ${ticketId} in ${this.config.stateDir}; see snowflock ps`);
    return record;
  }

  private teardown(id: string, known?: StateRecord): Promise<TeardownReport> {
    return this.tickets.teardown(id, async () => known ?? (await this.record(id)));
  }
}

function validateCount(n: number, max: number): void {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1) {
    throw new UsageError(`the number of clones must be a whole number of at least 1, not ${String(n)}`);
  }
  if (n > max) {
    throw new UsageError(`cannot create ${n} clones: the limit is ${max} per ticket (SNOWFLOCK_MAX_CLONES; one /24 holds at most 244)`);
  }
}

/** Wraps a clone so that join() knows which processes are still running in it. */
function tracked(clone: Clone, entry: LiveTicket): Clone {
  const spawn = clone.spawn.bind(clone);
  clone.spawn = (argv, opts): CloneProcess => {
    const p = spawn(argv, opts);
    const done = p.exited.then((s) => {
      entry.running.delete(done);
      return s;
    });
    entry.running.add(done);
    return p;
  };
  return clone;
}
