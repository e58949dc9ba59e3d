/**
 * The tickets this process holds, from claim to teardown. A ticket id is claimed by creating its
 * record exclusively; creation steps (network, clones) run under `creation()` so that a teardown
 * that starts meanwhile (a signal) can close the ledger, let the step fail at its next record, and
 * only then remove everything. Teardown happens once per ticket, whoever asks, and removes the
 * record last; a record that names something that could not be removed is kept for cleanup.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { logger, timed } from '../common/log.js';
import { self } from '../common/processes.js';
import { UsageError } from '../common/errors.js';
import type { ExitStatus } from '../providers/clone.js';
import type { Provider } from '../providers/provider.js';
import { Ledger } from './ledger.js';
import type { RecordStore, StateRecord } from './record.js';
import { removeResources, type TeardownReport } from './teardown.js';
import type { Resource } from './resources.js';
import { ClaimClash, type Ticket } from './ticket.js';

const log = logger('ticket');

export interface LiveTicket {
  ledger: Ledger;
  provider: Provider;
  /** Processes started in the ticket's clones, until they exit (join waits for them). */
  running: Set<Promise<ExitStatus>>;
  /** Resolves with one line when the clones lost a host service they depend on (Engine.failure). */
  failure: Promise<string>;
  fail(line: string): void;
  /** Creation in progress: teardown lets it fail at its next record, then removes everything. */
  creating?: Promise<unknown>;
  teardown?: Promise<TeardownReport>;
  /**
   * A ticket whose network came from the warm service (../warm/): teardown ends the ticket's
   * processes, then hands the rest to the service with this; false: the service did not take it,
   * and teardown removes everything itself.
   */
  handBack?: () => Promise<boolean>;
}

export class TicketLifecycle {
  private readonly live = new Map<string, LiveTicket>();
  /** Tickets torn down here: a later join/kill of one (a signal raced the caller) is not an error. */
  private readonly ended = new Map<string, TeardownReport>();

  constructor(private readonly store: RecordStore) {}

  /**
   * Claims a fresh id for the ticket by creating its record exclusively; `given` (a spanning
   * ticket's id, chosen by its coordinator) is claimed as it is, or is a ClaimClash.
   */
  async claim(draft: Omit<Ticket, 'id'>, provider: Provider, given?: string): Promise<LiveTicket> {
    await this.store.init();
    for (let attempt = 0; attempt < 64; attempt++) {
      const id = given ?? randomBytes(3).toString('hex');
      const record: StateRecord = { version: 1, ticket: { ...draft, id }, owner: self(), createdAt: new Date().toISOString(), resources: [], clones: [] };
      if (!(await this.store.createExclusive(record))) {
        if (given) throw new ClaimClash(`ticket id ${given} is taken on this host`, []);
        continue;
      }
      return this.enter(record, provider);
    }
    throw new Error('could not find a free ticket id');
  }

  /**
   * Takes over a ticket that another process of this host made and hands over (the warm service's
   * networks, ../warm/): its record names this process as its owner from now on, with `change`
   * applied to the ticket. Returns null when it has no record. The previous owner's reapers are
   * returned for the caller to end once its own runs.
   */
  async adopt(id: string, provider: Provider, change: (t: Ticket) => void): Promise<{ entry: LiveTicket; reapers: Resource[] } | null> {
    if (this.live.has(id)) throw new Error(`ticket ${id} is live in this process already`);
    const record = await this.store.read(id);
    if (!record) return null;
    record.owner = self();
    const entry = this.enter(record, provider);
    await entry.ledger.updateTicket(change);
    return { entry, reapers: record.resources.filter((r) => r.kind === 'process' && r.what === 'reaper') };
  }

  /** Stops holding a live ticket without tearing it down: another process adopts it (see adopt). */
  async release(id: string): Promise<void> {
    const entry = this.get(id);
    await entry.ledger.close();
    this.live.delete(id);
  }

  private enter(record: StateRecord, provider: Provider): LiveTicket {
    let fail!: (line: string) => void;
    const failure = new Promise<string>((resolve) => (fail = resolve));
    const id = record.ticket.id;
    const entry: LiveTicket = { ledger: new Ledger(this.store, record, join(this.store.ticketsDir, `${id}.d`)), provider, running: new Set(), failure, fail };
    this.live.set(id, entry);
    return entry;
  }

  /** The live entry of a ticket of this process; a UsageError when there is none. */
  get(id: string): LiveTicket {
    const entry = this.live.get(id);
    if (!entry || entry.teardown) throw new UsageError(`ticket ${id} is not live in this process`);
    return entry;
  }

  ids(): string[] {
    return [...this.live.keys()];
  }

  /** Runs a creation step that teardown must wait for (it cannot remove what is still being made). */
  async creation<T>(entry: LiveTicket, fn: () => Promise<T>): Promise<T> {
    const work = fn();
    entry.creating = work;
    try {
      return await work;
    } finally {
      if (entry.creating === work) entry.creating = undefined;
    }
  }

  /** Removes the ticket's resources, then its record. Once per ticket, whoever asks. */
  teardown(id: string, known: () => Promise<StateRecord>): Promise<TeardownReport> {
    const entry = this.live.get(id);
    if (entry?.teardown) return entry.teardown;
    const ended = this.ended.get(id);
    if (ended && !entry) return Promise.resolve(ended);
    const work = (async () => {
      if (entry) {
        await entry.ledger.close();
        await entry.creating?.catch(() => {});
      }
      const record = entry?.ledger.record ?? (await known());
      if (entry?.handBack) {
        const handed = await this.handBack(id, record, entry.handBack);
        if (handed) {
          this.ended.set(id, handed);
          return handed;
        }
      }
      const report = await timed(log, `ticket ${id}: teardown`, () => removeResources(record.resources, { ticketId: id, claimsDir: this.store.claimsDir }));
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

  /**
   * A warm ticket's teardown on the job's side: its processes end here (nothing of the job runs
   * once this returns), then the service takes the record and removes the rest on its own time.
   * Null when the service did not take it.
   */
  private async handBack(id: string, record: StateRecord, handBack: () => Promise<boolean>): Promise<TeardownReport | null> {
    return timed(log, `ticket ${id}: teardown, then the network back to the warm service`, async () => {
      const jobs = record.resources.filter((r) => r.kind === 'process' && r.what !== 'reaper');
      const report = await removeResources(jobs, { ticketId: id, claimsDir: this.store.claimsDir });
      if (report.failed.length || !(await handBack())) return null;
      return report;
    });
  }

  /** Teardown on a failure path: the failure is what the caller must see, a teardown problem is logged. */
  async teardownAfterFailure(id: string): Promise<void> {
    await this.teardown(id, () => Promise.reject(new Error(`ticket ${id} has no record`))).catch((e: Error) => log.error(e.message));
  }
}
