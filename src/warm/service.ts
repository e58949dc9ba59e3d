/**
 * `snowflock warm`: this host's resident warm service. It keeps `size` ticket networks ready (each
 * a ticket of its own: record, subnet, bridge, firewall table, and a reaper that removes it if the
 * service is killed), hands one to each job that asks (./protocol.ts), and takes it back after the
 * job to tear it down and make a fresh one, off the job's path. A network is never used twice:
 * every job still gets a bridge and table no other job had.
 *
 * Its idle cost is what RESULTS.md measures: one Node process, and per ready network a bridge, an
 * nftables table and a reaper waiting on a pidfd.
 */
import { chmod, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { UsageError } from '../common/errors.js';
import { logger } from '../common/log.js';
import { overlaps, parsePool } from '../network/pool.js';
import type { Engine } from '../engine.js';
import type { Ticket } from '../ticket/ticket.js';
import { ask } from './client.js';
import { encode, socketPath, type Reply, type Request, type WarmStatus } from './protocol.js';

const log = logger('warm');

/** After a lease, a fresh network is made this much later: not while the job that took it starts. */
const REFILL_AFTER_LEASE_MS = 1000;

/** A job adopts a leased network within milliseconds; one that has not after this never will. */
const ADOPT_WITHIN_MS = 5000;

/** Each network is a /24 of the pool: a service keeps at most this many of them. */
export const MAX_NETWORKS = 64;

export class WarmService {
  private readonly ready: Ticket[] = [];
  private readonly returning = new Set<Promise<unknown>>();
  private server: Server | null = null;
  private filling: Promise<void> | null = null;
  private refillTimer: NodeJS.Timeout | null = null;
  private refillAt = 0;
  private stopping = false;
  /** Leased tickets, until the check that a job adopted each (confirmLater). */
  private readonly unconfirmed = new Map<string, NodeJS.Timeout>();
  private readonly counts = { leases: 0, returns: 0, misses: 0, abandoned: 0 };

  constructor(
    private readonly engine: Engine,
    readonly size: number,
  ) {
    // Its own tickets are made, never leased: an engine that leased would ask this very service.
    if (engine.config.warm !== 'off') throw new Error("the warm service's engine must have warm: 'off'");
    if (!Number.isInteger(size) || size < 1 || size > MAX_NETWORKS) throw new UsageError(`a warm service keeps 1 to ${MAX_NETWORKS} networks, not ${size}`);
  }

  get path(): string {
    return socketPath(this.engine.stateDir);
  }

  /** Listens (refusing if another service answers on the socket), then makes the first networks. */
  async start(): Promise<void> {
    const other = await ask(this.engine.stateDir, { op: 'status' }, 1000);
    if (other?.ok && other.status) throw new UsageError(`a warm service runs already on this host (pid ${other.status.pid}, ${this.path}); stop it first (kill ${other.status.pid})`);
    await rm(this.path, { force: true }); // a killed service's socket
    const server = createServer((sock) => this.serve(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => resolve());
    });
    await chmod(this.path, 0o600);
    this.server = server;
    await this.fill();
  }

  status(): WarmStatus {
    return { pid: process.pid, size: this.size, ready: this.ready.map((t) => t.id), returning: this.returning.size, ...this.counts };
  }

  /** Stops answering, waits for networks being torn down, then tears down the ready ones. */
  async stop(): Promise<void> {
    this.stopping = true;
    if (this.refillTimer) clearTimeout(this.refillTimer);
    // A leased network a job has not adopted yet is left to the reaper this process leaves.
    for (const t of this.unconfirmed.values()) clearTimeout(t);
    const server = this.server;
    if (server) {
      // Only a service that listened removes the socket: one refused at start leaves the other's.
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(this.path, { force: true });
    }
    await this.filling?.catch(() => {});
    while (this.returning.size) await Promise.all([...this.returning]);
    this.ready.length = 0;
    await this.engine.killAll();
  }

  private serve(sock: Socket): void {
    let buf = '';
    sock.on('error', () => sock.destroy());
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      sock.removeAllListeners('data');
      this.answer(buf.slice(0, nl))
        .catch((e: Error): Reply => ({ ok: false, why: e.message }))
        .then((reply) => sock.end(encode(reply)));
    });
  }

  private async answer(line: string): Promise<Reply> {
    const req = JSON.parse(line) as Request;
    switch (req.op) {
      case 'lease':
        return this.lease(req.pool);
      case 'return':
        return this.takeBack(req.ticket);
      case 'status':
        return { ok: true, status: this.status() };
      default:
        return { ok: false, why: `unknown request ${JSON.stringify((req as { op: unknown }).op)}` };
    }
  }

  /** The first ready network inside the job's address pool (a job may have a SNOWFLOCK_POOL of its own). */
  private async lease(pool: string): Promise<Reply> {
    if (this.stopping) return { ok: false, why: 'stopping' };
    const cidr = parsePool(pool).cidr;
    const inPool = (t: Ticket) => overlaps(t.network.subnet, cidr);
    for (let i = this.ready.findIndex(inPool); i >= 0; i = this.ready.findIndex(inPool)) {
      const t = this.ready.splice(i, 1)[0]!;
      if (!(await this.engine.handOver(t))) continue; // removed under us (snowflock cleanup --all)
      this.counts.leases++;
      this.refillLater(REFILL_AFTER_LEASE_MS);
      this.confirmLater(t.id);
      log.info(`network of ticket ${t.id} leased`);
      return { ok: true, ticket: t.id };
    }
    this.counts.misses++;
    this.refillLater(0);
    return { ok: false, why: 'no network ready' };
  }

  /**
   * A job that leased a network and died before it adopted it (its record still names this
   * process): nobody else would ever remove it while the service lives. Taken back and torn down.
   */
  private confirmLater(id: string): void {
    const timer = setTimeout(() => {
      this.unconfirmed.delete(id);
      void this.engine
        .ownedBy(id, process.pid)
        .then((mine) => {
          if (!mine) return;
          log.warn(`network of ticket ${id} was leased but never taken: tearing it down`);
          return this.takeBack(id, 'abandoned');
        })
        .catch((e: Error) => log.error(`ticket ${id}: ${e.message}`));
    }, ADOPT_WITHIN_MS);
    this.unconfirmed.set(id, timer);
  }

  /** Owns the ticket again before answering, so the job may exit; tears it down after. */
  private async takeBack(id: string, why: 'returns' | 'abandoned' = 'returns'): Promise<Reply> {
    const ticket = await this.engine.takeBack(id);
    if (!ticket) return { ok: false, why: `no ticket ${id} to take back` };
    // Given back: the job adopted it, and the record names this process again now.
    clearTimeout(this.unconfirmed.get(id));
    this.unconfirmed.delete(id);
    this.counts[why]++;
    const work = this.engine.kill(ticket).then(
      () => log.info(`network of ticket ${id} torn down`),
      (e: Error) => log.error(`ticket ${id}: ${e.message}`),
    );
    this.returning.add(work);
    void work.finally(() => {
      this.returning.delete(work);
      this.refillLater(0);
    });
    return { ok: true };
  }

  /** Fills in `ms`, or sooner if a fill is due sooner already. */
  private refillLater(ms: number): void {
    if (this.stopping) return;
    const at = Date.now() + ms;
    if (this.refillTimer && this.refillAt <= at) return;
    if (this.refillTimer) clearTimeout(this.refillTimer);
    this.refillAt = at;
    this.refillTimer = setTimeout(() => {
      this.refillTimer = null;
      void this.fill();
    }, ms);
  }

  /** Makes networks until `size` are ready, one at a time (a 2-core host runs jobs too). */
  private fill(): Promise<void> {
    // A .finally callback runs after this assignment even when the work is done at once.
    this.filling ??= this.makeUntilFull().finally(() => (this.filling = null));
    return this.filling;
  }

  private async makeUntilFull(): Promise<void> {
    try {
      while (!this.stopping && this.ready.length < this.size) {
        this.ready.push(await this.engine.requestTicket(1, { provider: 'netns', warm: true }));
      }
    } catch (e) {
      log.error(`cannot make a warm network: ${(e as Error).message}`);
    }
  }
}
