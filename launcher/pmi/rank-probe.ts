/**
 * What the host can see of the rank processes of a PMI job: which process holds each rank's PMI
 * connection, who has sent bytes to a rank that the rank has not read, and whether a rank still
 * moves data (bytes over its TCP connections, read and write calls). Processes come from /proc,
 * sockets from native/sockets (sockets.ts).
 *
 * Why: MPICH 4.0 over UCX TCP closes its endpoints in MPI_Finalize *before* the finalize barrier
 * (ch4/ucx MPIDI_UCX_mpi_finalize_hook: ucp_disconnect_nb on every endpoint, progress until all
 * complete, then the PMI barrier). A close flushes: UCT TCP sends a zero-length PUT on every
 * connection that carried data since its last flush and waits for the peer's PUT ACK, which the
 * peer only sends from ucp_worker_progress. A peer that already sits in the PMI barrier is blocked
 * in read() on its PMI socket and never answers, so the closing rank spins forever: the finalize
 * stall. It shows on the host as bytes queued, unread, on an established socket of the rank in the
 * barrier, sent by the rank outside it. For a correct MPI program nothing else can be there: a rank
 * enters MPI_Finalize only when its own communication is complete, MPICH 4.0 opens its UCX
 * connections only after the last MPI_Init barrier, and UCX sends no keepalives on endpoints
 * without error handling, which MPICH's are (wireup/select.c). So such bytes prove that the sender
 * is in its close and cannot arrive at the barrier until the barrier lets the blocked rank go.
 *
 * Ranks are looked for below whoever started each native/sockets helper (its `~` request): on
 * this host that is this process (netns clones and host processes), and the probe may be given
 * helpers elsewhere (`elsewhere`): in each VM clone through its agent, so the guest's processes.
 * Endpoints on the ticket network are unique across clones, so sockets seen in different guests
 * are matched as on one host. A rank found nowhere (on another host of the ticket) leaves the
 * look not `visible`; it proves nothing about that rank.
 */
import { readFileSync } from 'node:fs';
import { SocketLister, socketsHelper, TCP_ESTABLISHED, type HelperStarter, type HeldSocket } from './sockets.js';

/** A rank's PMI connection, as canonical endpoints (sockets.ts `endpoint`). */
export interface PmiConnection {
  /** The rank's end (the server's remote address). */
  rankSide: string;
  /** The server's end. */
  serverSide: string;
}

/** Why a rank outside the barrier cannot arrive: it waits on `waitsOn`, which is inside. */
export interface Evidence {
  waitsOn: number;
  /** Bytes `waitsOn` has not read from this rank. */
  unread: number;
}

export interface Look {
  /** Every rank asked about was found as a process here. */
  visible: boolean;
  /** Ranks outside the barrier that provably wait on a rank inside it. */
  stuck: Map<number, Evidence>;
}

/** Where a rank's process was found: this host (index 0), or elsewhere (1 and on). */
interface RankProcess {
  space: number;
  pid: number;
  /** /proc/PID/stat starttime on this host: a reused PID has another ('' elsewhere). */
  start: string;
}

/**
 * Where rank processes may be: below whoever started each helper (native/sockets `~`). On this
 * host that is this process, and /proc tells besides whether a PID was reused and how much a rank
 * reads and writes; elsewhere only the sockets are seen.
 */
interface Space {
  lister: SocketLister;
  host: boolean;
}

export interface RankProbeOptions {
  /** native/sockets on this host (it lists the processes below this one). */
  helper?: string;
  proc?: string;
  /** One helper per place elsewhere that may hold ranks: a VM clone on this host. */
  elsewhere?: HelperStarter[];
}

/** Least time between two scans for rank processes (a stray client can connect again and again). */
const SCAN_INTERVAL_MS = 500;

export class RankProbe {
  private readonly connections = new Map<number, PmiConnection>();
  private readonly processes = new Map<number, RankProcess>();
  private readonly io = new Map<number, { counters: string; changedAt: number }>();
  /** Ranks looked for since they connected (found or not: a rank on another host is never found). */
  private readonly searched = new Set<number>();
  private scan: Promise<void> | null = null;
  private lastScan = -Infinity;
  private readonly spaces: Space[];
  private readonly proc: string;

  constructor(opts: RankProbeOptions = {}) {
    this.proc = opts.proc ?? '/proc';
    this.spaces = [{ lister: new SocketLister(opts.helper ?? socketsHelper()), host: true }, ...(opts.elsewhere ?? []).map((g) => ({ lister: new SocketLister(g), host: false }))];
  }

  /** Stops its helper processes. */
  close(): void {
    for (const s of this.spaces) s.lister.close();
  }

  /** Rank `rank` connected; `connection` identifies its process. */
  track(rank: number, connection: PmiConnection): void {
    this.connections.set(rank, connection);
    this.processes.delete(rank);
    this.searched.delete(rank);
  }

  /**
   * Finds the process of every tracked rank not found yet, in the background. Called when a job's
   * ranks have all connected, so that a stalled barrier need not wait for it; a look finds those
   * that connect later (after a reconnect), once.
   */
  prepare(): Promise<void> {
    // A scan reads every process's stat and asks the helper: not more often than this.
    if (!this.scan && performance.now() - this.lastScan < SCAN_INTERVAL_MS) return Promise.resolve();
    for (const s of this.spaces) s.lister.start();
    this.scan ??= this.resolve().finally(() => {
      this.scan = null;
      this.lastScan = performance.now();
    });
    return this.scan;
  }

  /** When a look last saw `rank` move data (bytes over TCP, read or write calls; performance.now). */
  lastActive(rank: number): number | undefined {
    return this.io.get(rank)?.changedAt;
  }

  /** How many ranks it keeps state for (at most the world size). */
  size(): number {
    return Math.max(this.connections.size, this.processes.size, this.io.size);
  }

  /**
   * One look at ranks `inside` a barrier and ranks `outside` it: which outside ranks have sent
   * bytes that an inside rank has not read, and (for lastActive) whether each outside rank moved
   * data since the previous look: bytes over its TCP connections, read or write calls. Never rejects.
   */
  async look(inside: number[], outside: number[]): Promise<Look> {
    const stuck = new Map<number, Evidence>();
    const all = [...inside, ...outside];
    for (const r of all) {
      const p = this.processes.get(r);
      // Gone (or its PID reused): a rank that exited is not waiting on anyone.
      if (p && this.spaces[p.space]!.host && startOf(p.pid, this.proc) !== p.start) this.processes.delete(r);
    }
    if (all.some((r) => this.connections.has(r) && !this.searched.has(r))) await this.prepare();
    const sockets = await this.socketsOf(all.filter((r) => this.processes.has(r)));
    const isPmi = (s: { rank: number; local: string }) => s.local === this.connections.get(s.rank)?.rankSide;
    const owners = new Map<string, number>();
    const traffic = new Map<number, number>();
    for (const s of sockets) {
      if (!outside.includes(s.rank) || isPmi(s)) continue;
      owners.set(`${s.local} ${s.remote}`, s.rank);
      traffic.set(s.rank, (traffic.get(s.rank) ?? 0) + s.received + s.acked);
    }
    for (const s of sockets) {
      if (!inside.includes(s.rank) || s.state !== TCP_ESTABLISHED || s.unread === 0 || isPmi(s)) continue;
      const sender = owners.get(`${s.remote} ${s.local}`);
      if (sender !== undefined && !stuck.has(sender)) stuck.set(sender, { waitsOn: s.rank, unread: s.unread });
    }
    this.sampleActivity(outside, traffic);
    return { visible: all.every((r) => this.processes.has(r)), stuck };
  }

  /** The sockets of the ranks' processes, each with its rank: every space asked at once. */
  private async socketsOf(ranks: number[]): Promise<(HeldSocket & { rank: number })[]> {
    const lists = await Promise.all(
      this.spaces.map(async (space, i) => {
        const rankOf = new Map(ranks.filter((r) => this.processes.get(r)!.space === i).map((r) => [this.processes.get(r)!.pid, r]));
        if (rankOf.size === 0) return [];
        const found = await space.lister.list(space.host ? [...rankOf.keys()] : 'below');
        return found.flatMap((s) => (rankOf.has(s.pid) ? [{ ...s, rank: rankOf.get(s.pid)! }] : []));
      }),
    );
    return lists.flat();
  }

  /** Notes when each rank's bytes over TCP or its read and write call counts last changed. */
  private sampleActivity(ranks: number[], traffic: Map<number, number>): void {
    const now = performance.now();
    for (const r of ranks) {
      const p = this.processes.get(r);
      // A guest's /proc is not ours to read: there only PMI traffic tells (barrier.ts).
      if (!p || !this.spaces[p.space]!.host) continue;
      const io = procText(`${this.proc}/${p.pid}/io`);
      // A rank spinning in ucp_worker_progress moves no bytes and makes no read or write calls.
      const calls = ['syscr', 'syscw'].map((k) => new RegExp(`^${k}: (\\d+)$`, 'm').exec(io)?.[1] ?? '?');
      const counters = [...calls, traffic.get(r) ?? 0].join('/');
      const before = this.io.get(r);
      if (!before) this.io.set(r, { counters, changedAt: -Infinity });
      else if (before.counters !== counters) this.io.set(r, { counters, changedAt: now });
    }
  }

  /** Matches the rank end of each tracked PMI connection to a socket a process below a helper's starter holds. */
  private async resolve(): Promise<void> {
    const wanted = new Map<string, number>();
    for (const [r, c] of this.connections) {
      if (this.searched.has(r)) continue;
      wanted.set(`${c.rankSide} ${c.serverSide}`, r);
      this.searched.add(r);
    }
    if (wanted.size === 0) return;
    await Promise.all(
      this.spaces.map(async (space, i) => {
        const sockets = await space.lister.list('below');
        for (const s of sockets) {
          const r = wanted.get(`${s.local} ${s.remote}`);
          if (r !== undefined && !this.processes.has(r)) this.processes.set(r, { space: i, pid: s.pid, start: space.host ? startOf(s.pid, this.proc) : '' });
        }
      }),
    );
  }
}

// /proc files are made in memory when read: synchronous reads cost microseconds.
function procText(path: string): string {
  try {
    return readFileSync(path, 'latin1');
  } catch {
    return '';
  }
}

function startOf(pid: number, proc: string): string {
  return parseStat(procText(`${proc}/${pid}/stat`))?.start ?? '';
}

/** ppid and starttime of a /proc/PID/stat line (the command name may hold spaces and parentheses). */
export function parseStat(text: string): { ppid: number; start: string } | null {
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  // After the name: state(3) ppid(4) ... starttime(22), counted from 1 with pid and name.
  const ppid = Number(fields[1]);
  const start = fields[19];
  return text.includes(')') && Number.isInteger(ppid) && start ? { ppid, start } : null;
}
