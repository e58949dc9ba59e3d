/**
 * The PMIx side of one job, whatever its layout over hosts: the seam between the job code and
 * ./server.ts. Given the job's nodes grouped by host, it starts one sf-pmix per host (each told
 * which nodes are its own), relays fences between them when there is more than one (FenceRelay),
 * hands out each rank's PMIx environment from the server that serves it, and merges the servers'
 * events into one stream tagged with the server's index.
 *
 * One host (every clone on this machine) is what ships now: one server, libpmix completes every
 * fence itself. Several hosts is the mode the next issue needs (one agent per host); it is tested
 * today with two servers on one host (test/system/pmix-openmpi.test.ts).
 */
import { EventEmitter } from 'node:events';
import { FenceRelay } from './fence-relay.js';
import { PmixServer, type AbortEvent, type JobSpec, type NodeSpec, type ServerOptions, type UnsupportedEvent } from './server.js';

/** The nodes one server serves, and how it is started (listen address, tmpdir, ...). */
export interface PmixHost extends ServerOptions {
  /** Indices into the job's nodes. */
  nodes: number[];
}

export interface PmixJobEvents {
  connected: [rank: number, server: number];
  finalized: [rank: number, server: number];
  disconnected: [rank: number, server: number];
  abort: [event: AbortEvent, server: number];
  unsupported: [event: UnsupportedEvent, server: number];
  /** A server reported a fatal error or died on its own: the job cannot go on. */
  failure: [err: Error, server: number];
  log: [line: string, server: number];
}

export class PmixJob extends EventEmitter<PmixJobEvents> {
  private readonly serverOf = new Map<number, number>();
  private closed = false;

  private constructor(
    readonly servers: PmixServer[],
    readonly relay: FenceRelay | null,
    localRanks: number[][],
  ) {
    super();
    localRanks.forEach((ranks, i) => ranks.forEach((r) => this.serverOf.set(r, i)));
  }

  /**
   * Starts a server per host and registers the job with each; every node must be on exactly one
   * host. On failure, whatever was started is stopped before the error propagates.
   */
  static async start(job: JobSpec, hosts: PmixHost[]): Promise<PmixJob> {
    checkHosts(job.nodes, hosts);
    const servers: PmixServer[] = [];
    try {
      for (const h of hosts) servers.push(await PmixServer.start(h));
      const local = await Promise.all(servers.map((s, i) => s.register({ ...job, localNodes: hosts[i]!.nodes })));
      const relay = servers.length > 1 ? new FenceRelay(servers, local) : null;
      const pj = new PmixJob(servers, relay, local);
      servers.forEach((s, i) => pj.forward(s, i));
      return pj;
    } catch (e) {
      for (const s of servers) s.kill();
      await Promise.all(servers.map((s) => s.whenExited()));
      throw e;
    }
  }

  /** The PMIx variables of one rank, from the server that serves it. */
  env(rank: number): Promise<Record<string, string>> {
    const i = this.serverOf.get(rank);
    if (i === undefined) return Promise.reject(new Error(`PmixJob: no server serves rank ${rank}`));
    return this.servers[i]!.env(rank);
  }

  get pids(): number[] {
    return this.servers.map((s) => s.pid);
  }

  /** Fails every fence still open across servers, so no rank waits in one for a rank that is gone. */
  fail(why: string): void {
    this.relay?.fail(why);
  }

  /** Deregisters the job and stops every server (each is killed if it takes longer than timeoutMs). */
  async close(timeoutMs?: number): Promise<void> {
    this.closed = true;
    await Promise.all(this.servers.map((s) => s.close(timeoutMs)));
  }

  kill(): void {
    this.closed = true;
    for (const s of this.servers) s.kill();
  }

  whenExited(): Promise<{ code: number | null; signal: NodeJS.Signals | null }[]> {
    return Promise.all(this.servers.map((s) => s.whenExited()));
  }

  private forward(s: PmixServer, i: number): void {
    s.on('connected', (r) => this.emit('connected', r, i));
    s.on('finalized', (r) => this.emit('finalized', r, i));
    s.on('disconnected', (r) => this.emit('disconnected', r, i));
    s.on('abort', (a) => this.emit('abort', a, i));
    s.on('unsupported', (u) => this.emit('unsupported', u, i));
    s.on('log', (l) => this.emit('log', l, i));
    s.on('failure', (e) => {
      if (this.closed) return;
      this.relay?.fail(e.message);
      this.emit('failure', e, i);
    });
  }
}

function checkHosts(nodes: NodeSpec[], hosts: PmixHost[]): void {
  if (hosts.length === 0) throw new Error('PmixJob: no hosts');
  const host = new Array<number>(nodes.length).fill(-1);
  hosts.forEach((h, i) =>
    h.nodes.forEach((n) => {
      if (!(n >= 0 && n < nodes.length)) throw new Error(`PmixJob: host ${i} names node ${n}, the job has ${nodes.length}`);
      if (host[n] !== -1) throw new Error(`PmixJob: node ${n} is on hosts ${host[n]} and ${i}`);
      host[n] = i;
    }),
  );
  const missing = host.indexOf(-1);
  if (missing >= 0) throw new Error(`PmixJob: node ${missing} (${nodes[missing]!.hostname}) is on no host`);
}
