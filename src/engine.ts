/**
 * The clone engine: SnowFlock's calls on a Linux host. requestTicket grants clones and builds the
 * ticket's private network; checkpoint and createClones delegate to the ticket's provider; join and
 * kill end the ticket. Every resource is named in the ticket's state record before it is created,
 * and teardown (shared with `snowflock cleanup`) removes what the record names, record last.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { resolveConfig, type EngineConfig, type EngineOptions } from './config.js';
import { UserError } from './errors.js';
import { requireEngineHost } from './host/checks.js';
import { logger, timed } from './log.js';
import { openPorts } from './net/firewall.js';
import { TICKET_ID } from './net/names.js';
import { claimSubnet, createNetwork } from './net/network.js';
import { parsePool } from './net/pool.js';
import { cleanupTemplates, loadProvider, resolveProvider } from './providers/index.js';
import type { Provider } from './providers/provider.js';
import { Ledger } from './state/ledger.js';
import { isRunning, self, startTime } from './state/process.js';
import { RecordStore, type StateRecord } from './state/record.js';
import { removeResources, type TeardownReport } from './state/teardown.js';
import type { Checkpoint, CheckpointSource, Clone, CloneProcess, ExitStatus, ProviderName, Ticket, TicketOptions } from './types.js';

const log = logger('engine');

export interface CreateClonesOptions {
  /** Fewer clones than granted (default: all granted). */
  count?: number;
}

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

/** Optional provider hook: how many of n clones it can give now, and why fewer. */
interface CapacityHint {
  capacity(n: number): Promise<{ granted: number; reason?: string }>;
}

interface LiveTicket {
  ledger: Ledger;
  provider: Provider;
  /** Processes this engine started in the ticket's clones, until they exit (join waits for them). */
  running: Set<Promise<ExitStatus>>;
  /** Creation in progress (network, clones): teardown lets it fail at its next record, then removes all. */
  creating?: Promise<unknown>;
  teardown?: Promise<TeardownReport>;
  /** Boot clones instead of cloning a template (vm). */
  coldBoot: boolean;
}

export class Engine {
  readonly config: EngineConfig;
  private readonly store: RecordStore;
  private readonly live = new Map<string, LiveTicket>();
  /** Tickets this engine has torn down: a later join/kill of one (a signal raced the caller) is not an error. */
  private readonly ended = new Map<string, TeardownReport>();
  private readonly providers = new Map<ProviderName, Promise<Provider>>();

  constructor(opts: EngineOptions = {}) {
    this.config = resolveConfig(opts);
    this.store = new RecordStore(this.config.stateDir);
  }

  /** Where state records live (the remote-shell shim and snowflock exec find tickets there). */
  get stateDir(): string {
    return this.config.stateDir;
  }

  /** A ticket for n clones (or fewer, with the reason), with its network ready. */
  async requestTicket(n: number, opts: TicketOptions = {}): Promise<Ticket> {
    validateCount(n, this.config.maxClones);
    const pool = parsePool(this.config.pool);
    requireEngineHost();
    const providerName = resolveProvider(opts.provider ?? 'auto');
    const provider = await this.provider(providerName);
    const why = await provider.unavailable();
    if (why) throw new UserError(`the ${providerName} provider cannot run on this host: ${why}`, 3);
    const { granted, reason } = await grant(provider, n);

    await this.store.init();
    const ledger = await this.claimTicket({
      id: '',
      provider: providerName,
      requested: n,
      granted,
      ...(reason ? { reason } : {}),
      network: { subnet: '', prefixLength: 24, gateway: '', bridge: '', table: '' },
      openPorts: [],
      kept: opts.keep ?? false,
    });
    const ticket = ledger.ticket;
    const entry: LiveTicket = { ledger, provider, running: new Set(), coldBoot: opts.coldBoot ?? false };
    this.live.set(ticket.id, entry);
    try {
      await ledger.add({ kind: 'dir', path: ledger.dir });
      await mkdir(ledger.dir, { recursive: true });
      await timed(log, `ticket ${ticket.id}: network`, () =>
        this.creation(entry, async () => {
          const net = await claimSubnet(pool, this.store.claimsDir, ledger);
          await ledger.updateTicket((t) => (t.network = net));
          await createNetwork(net, ledger);
        }),
      );
    } catch (e) {
      await this.teardownAfterFailure(ticket.id);
      throw e;
    }
    log.info(`ticket ${ticket.id}: ${granted} ${providerName} clone(s) on ${ticket.network.subnet}`);
    return ticket;
  }

  /** Lets the ticket's clones open TCP connections to this host port on the gateway address. */
  async openPort(ticket: Ticket, port: number): Promise<void> {
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw new UserError(`port ${port} is not a TCP port number (1-65535)`);
    const entry = this.entry(ticket);
    if (entry.ledger.ticket.openPorts.includes(port)) return;
    await entry.ledger.updateTicket((t) => t.openPorts.push(port));
    await openPorts(entry.ledger.ticket.network, [port]);
    if (ticket !== entry.ledger.ticket) ticket.openPorts = [...entry.ledger.ticket.openPorts];
  }

  /** The parent state the ticket's clones start from (cached by the provider). */
  async checkpoint(ticket: Ticket, source: CheckpointSource): Promise<Checkpoint> {
    const entry = this.entry(ticket);
    return timed(log, `ticket ${ticket.id}: checkpoint`, () => entry.provider.checkpoint(source, logger(entry.provider.name)));
  }

  /** Clones 0..m-1 of the ticket. On failure the whole ticket is torn down and the error rethrown. */
  async createClones(checkpoint: Checkpoint, ticket: Ticket, opts: CreateClonesOptions = {}): Promise<Clone[]> {
    const entry = this.entry(ticket);
    const t = entry.ledger.ticket;
    const count = opts.count ?? t.granted;
    if (!Number.isInteger(count) || count < 1 || count > t.granted) {
      throw new UserError(`cannot create ${count} clones on ticket ${t.id}, which grants ${t.granted}`);
    }
    if (entry.ledger.record.clones.length > 0) throw new UserError(`ticket ${t.id} has its clones already; request another ticket for more`);
    if (checkpoint.provider !== t.provider) throw new Error(`a ${checkpoint.provider} checkpoint cannot make ${t.provider} clones`);
    let clones: Clone[];
    try {
      clones = await timed(log, `ticket ${t.id}: ${count} clones`, () =>
        this.creation(entry, () =>
          entry.provider.createClones({ ticket: t, ledger: entry.ledger, log: logger(entry.provider.name), coldBoot: entry.coldBoot }, checkpoint, count),
        ),
      );
    } catch (e) {
      await this.teardownAfterFailure(t.id);
      throw e;
    }
    return clones.map((c) => this.tracked(c, entry));
  }

  /** Clones of a live ticket created by another process (snowflock exec, the remote-shell shim). */
  async attach(ticketId: string): Promise<{ ticket: Ticket; clones: Clone[] }> {
    const record = await this.record(ticketId);
    requireEngineHost();
    const provider = await this.provider(record.ticket.provider);
    const holders = record.clones.map((c) => c.handle);
    if (record.ticket.provider === 'netns' && holders.some((h) => !isRunning({ pid: Number(h.holder), start: Number(h.start) }))) {
      throw new UserError(`ticket ${ticketId} has lost clones (its holders are gone); remove it with snowflock down ${ticketId}`);
    }
    return { ticket: record.ticket, clones: provider.attach(record.ticket, record.clones) };
  }

  /** Waits until every process this engine started in the ticket's clones has exited, then tears down. */
  async join(ticket: Ticket | string): Promise<TeardownReport> {
    const id = typeof ticket === 'string' ? ticket : ticket.id;
    const entry = this.live.get(id);
    while (entry && entry.running.size > 0) await Promise.all([...entry.running]);
    return this.teardown(id);
  }

  /** Tears the ticket down now: its processes die with their clones. Works on any ticket with a record. */
  async kill(ticket: Ticket | string): Promise<TeardownReport> {
    requireEngineHost();
    return this.teardown(typeof ticket === 'string' ? ticket : ticket.id);
  }

  /** Tears down every ticket this engine created, except those named (signal handlers call this). */
  async killAll(except: string[] = []): Promise<void> {
    const ids = [...this.live.keys()].filter((id) => !except.includes(id));
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
    report.claims = [...(await this.removeOrphanClaims()), ...(await this.removeStaleWrites())];
    await this.store.pruneEmpty();
    if (opts.templates) report.templates = await cleanupTemplates();
    return report;
  }

  // --- internals ---

  private provider(name: ProviderName): Promise<Provider> {
    let p = this.providers.get(name);
    if (!p) {
      p = loadProvider(name, this.config.nativeDir);
      this.providers.set(name, p);
    }
    return p;
  }

  private entry(ticket: Ticket): LiveTicket {
    const entry = this.live.get(ticket.id);
    if (!entry || entry.teardown) throw new UserError(`ticket ${ticket.id} is not live in this process`);
    return entry;
  }

  private async record(ticketId: string): Promise<StateRecord> {
    if (!TICKET_ID.test(ticketId)) throw new UserError(`${JSON.stringify(ticketId)} is not a ticket id (6 hex digits, see snowflock ps)`);
    const record = await this.store.read(ticketId);
    if (!record) throw new UserError(`no ticket ${ticketId} in ${this.config.stateDir}; see snowflock ps`);
    return record;
  }

  /** Claims a fresh ticket id by creating its record exclusively. */
  private async claimTicket(ticket: Ticket): Promise<Ledger> {
    for (let attempt = 0; attempt < 64; attempt++) {
      const id = randomBytes(3).toString('hex');
      const record: StateRecord = {
        version: 1,
        ticket: { ...ticket, id },
        owner: self(),
        createdAt: new Date().toISOString(),
        resources: [],
        clones: [],
      };
      if (await this.store.createExclusive(record)) return new Ledger(this.store, record, join(this.store.ticketsDir, `${id}.d`));
    }
    throw new Error('could not find a free ticket id');
  }

  /** Teardown on a failure path: the failure is what the caller must see, a teardown problem is logged. */
  private async teardownAfterFailure(id: string): Promise<void> {
    await this.teardown(id).catch((e: Error) => log.error(e.message));
  }

  /** Runs a creation step that teardown must wait for (it cannot remove what is still being made). */
  private async creation<T>(entry: LiveTicket, fn: () => Promise<T>): Promise<T> {
    const work = fn();
    entry.creating = work;
    try {
      return await work;
    } finally {
      if (entry.creating === work) entry.creating = undefined;
    }
  }

  /** Wraps a clone so that join() knows which processes are still running in it. */
  private tracked(clone: Clone, entry: LiveTicket): Clone {
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

  /** Removes the ticket's resources, then its record. Once per ticket, whoever asks. */
  private teardown(id: string, known?: StateRecord): Promise<TeardownReport> {
    const entry = this.live.get(id);
    if (entry?.teardown) return entry.teardown;
    const ended = this.ended.get(id);
    if (ended && !entry) return Promise.resolve(ended);
    const work = (async () => {
      if (entry) {
        await entry.ledger.close();
        await entry.creating?.catch(() => {});
      }
      const record = entry?.ledger.record ?? known ?? (await this.record(id));
      const report = await timed(log, `ticket ${id}: teardown`, () =>
        removeResources(record.resources, { ticketId: id, claimsDir: this.store.claimsDir }),
      );
      if (report.failed.length) {
        // Keep the record: it is the only way `snowflock cleanup` can retry what is left.
        throw new Error(`ticket ${id}: could not remove ${report.failed.join('; ')}; retry with snowflock cleanup ${id}`);
      }
      await this.store.remove(id);
      this.ended.set(id, report);
      return report;
    })();
    if (entry) entry.teardown = work;
    return work.finally(() => {
      if (this.live.get(id) === entry) this.live.delete(id);
    });
  }

  /** Half-written record updates (<id>.json.<pid>.tmp) of writers that died mid-write. */
  private async removeStaleWrites(): Promise<string[]> {
    const names = await readdir(this.store.ticketsDir).catch(() => [] as string[]);
    const removed: string[] = [];
    for (const name of names) {
      const m = /^[0-9a-f]{6}\.json\.(\d+)\.tmp$/.exec(name);
      if (!m || startTime(Number(m[1])) !== null) continue;
      await rm(join(this.store.ticketsDir, name), { force: true });
      removed.push(join(this.store.ticketsDir, name));
    }
    return removed;
  }

  private async removeOrphanClaims(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.store.claimsDir);
    } catch {
      return [];
    }
    const live = new Set(await this.store.ids());
    const removed: string[] = [];
    for (const name of names) {
      const path = join(this.store.claimsDir, name);
      const owner = (await readFile(path, 'utf8').catch(() => '')).trim();
      // The record is created before the claim and removed after it: a claim without one is an orphan.
      if (TICKET_ID.test(owner) && !live.has(owner) && (await this.store.read(owner)) === null) {
        await rm(path, { force: true });
        removed.push(path);
      }
    }
    return removed;
  }
}

function validateCount(n: number, max: number): void {
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1) {
    throw new UserError(`the number of clones must be a whole number of at least 1, not ${String(n)}`);
  }
  if (n > max) {
    throw new UserError(`cannot create ${n} clones: the limit is ${max} per ticket (SNOWFLOCK_MAX_CLONES; one /24 holds at most 244)`);
  }
}

async function grant(provider: Provider, n: number): Promise<{ granted: number; reason?: string }> {
  const hint = provider as Partial<CapacityHint>;
  if (typeof hint.capacity !== 'function') return { granted: n };
  const g = await hint.capacity(n);
  if (g.granted < 1) throw new UserError(`the ${provider.name} provider cannot create any clone now${g.reason ? `: ${g.reason}` : ''}`);
  return g.granted < n ? g : { granted: n };
}

/**
 * On SIGINT, SIGTERM or SIGHUP: tear down every ticket of this engine, then die of the same signal
 * (exit status 128+n), as a process without handlers would. Kept tickets are left alone. Returns a
 * function that removes the handlers.
 */
export function installTeardownOnSignals(engine: Engine, opts: { keepTickets?: () => string[] } = {}): () => void {
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  let busy = false;
  const handler = (sig: NodeJS.Signals) => {
    if (busy) return; // a second Ctrl-C must not cut teardown short: that is how leaks happen
    busy = true;
    log.warn(`${sig}: tearing down`);
    void engine
      .killAll(opts.keepTickets?.() ?? [])
      .catch((e: Error) => log.error(e.message))
      .finally(() => {
        remove();
        process.kill(process.pid, sig);
      });
  };
  const remove = () => signals.forEach((s) => process.off(s, handler));
  signals.forEach((s) => process.on(s, handler));
  return remove;
}
