/**
 * The ledger of one live ticket: the in-memory copy of its state record, persisted on every change
 * before the caller goes on to create what it just added. Writes are serialized so that concurrent
 * add() calls (clones created in parallel) never lose each other's entries.
 */
import type { CloneInfo } from '../providers/clone.js';
import type { Resource, ResourceLedger } from './resources.js';
import type { Ticket } from './ticket.js';
import type { RecordStore, StateRecord } from './record.js';

export class Ledger implements ResourceLedger {
  private queue: Promise<void> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly store: RecordStore,
    readonly record: StateRecord,
    readonly dir: string,
  ) {}

  get ticket(): Ticket {
    return this.record.ticket;
  }

  get resources(): readonly Resource[] {
    return this.record.resources;
  }

  add(...resources: Resource[]): Promise<void> {
    return this.change(() => this.record.resources.push(...resources));
  }

  /** Takes back an entry whose creation failed because someone else owns the thing it names. */
  forget(resource: Resource): Promise<void> {
    return this.change(() => {
      const i = this.record.resources.findIndex((r) => JSON.stringify(r) === JSON.stringify(resource));
      if (i >= 0) this.record.resources.splice(i, 1);
    });
  }

  setClones(clones: CloneInfo[]): Promise<void> {
    return this.change(() => {
      this.record.clones = clones;
    });
  }

  updateTicket(fn: (t: Ticket) => void): Promise<void> {
    return this.change(() => fn(this.record.ticket));
  }

  /**
   * Teardown begins: from now on nothing new may be recorded, hence nothing new created (whoever was
   * about to create something fails at its add()). Resolves when pending writes are done.
   */
  async close(): Promise<void> {
    this.closed = true;
    await this.queue;
  }

  private change(fn: () => void): Promise<void> {
    if (this.closed) return Promise.reject(new Error(`ticket ${this.record.ticket.id} is being torn down`));
    const next = this.queue.then(async () => {
      fn();
      await this.store.write(this.record);
    });
    // A failed write fails its caller; later writes still go ahead.
    this.queue = next.catch(() => {});
    return next;
  }
}
