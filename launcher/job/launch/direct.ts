/**
 * Direct launch, the default: every rank is started by us inside its clone, with both our process
 * managers in its environment, whatever its program is (an MPI binary, a script, an interpreter):
 *   - PMI-1 (MPICH): our PMI server (launcher/pmi) on the ticket's gateway;
 *   - PMIx (Open MPI): one sf-pmix per host with clones (launcher/pmix), on that host's address on
 *     the ticket network: the gateway here, another host's own address there, started by its
 *     agent and driven from here, fences relayed between them (hostsOf below).
 * Both ports are opened in the ticket's firewall; the servers listen on the gateway only (libpmix
 * over TCP authenticates nothing: the address and the firewall are the boundary).
 *
 * Failure is ours to handle, because neither manager ends a job by itself:
 *   - MPI_Abort over either manager ends the job at once with its errorcode;
 *   - a rank whose PMIx connection closes before it finalized (it died, or left) ends the job:
 *     with one server, libpmix completes the others' fence as a partial success, so they would go
 *     on against a rank that is gone. Its own exit status is the job's if it exits within the grace
 *     period, else it counts as lost (exit.ts);
 *   - a rank that exits 0 without finalizing while others wait for it (contact.ts);
 *   - sf-pmix itself dying: the job ends with status 4 and one line.
 * Calls the servers refuse (spawn, publish, lookup) fail in the rank; the job hears which rank
 * asked for what (a -v line and the report).
 *
 * The PMIx variables sf-pmix hands out include PMIX_SERVER_TMPDIR and PMIX_SYSTEM_TMPDIR, host
 * paths a VM clone (or a netns clone's private /tmp) does not have. They are harmless there: a
 * libpmix 4.2 client reads them only to search for a server's rendezvous files when it was given
 * no server URI, and ours always is (PMIX_SERVER_URI*).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { HostError } from '../../../src/common/errors.js';
import { logger, timed } from '../../../src/common/log.js';
import type { Clone, CloneProcess, ExitStatus } from '../../../src/providers/clone.js';
import type { Ticket } from '../../../src/ticket/ticket.js';
import { processMapping } from '../../pmi/mapping.js';
import { RankProbe } from '../../pmi/rank-probe.js';
import { PmiServer } from '../../pmi/server.js';
import { cloneHelper } from '../../pmi/sockets.js';
import { OPENMPI_DIRECT_LAUNCH, openMpiJobDirs } from '../../pmix/openmpi.js';
import { defaultBinary, type JobSpec as PmixJobSpec } from '../../pmix/server.js';
import { PmixJob, type PmixHost } from '../../pmix/servers.js';
import type { TicketHost } from '../../../src/hosts/coordinator.js';
import { RankContacts, type Left } from '../contact.js';
import { defaultsLayer, rankEnv, userEnv } from '../env.js';
import type { ExitPolicy, RankOutcome } from '../exit.js';
import type { JobOutput } from '../io/output.js';
import { receives, type StdinRouter } from '../io/stdin.js';
import type { JobPlan } from '../plan.js';
import type { JobEngine } from '../run.js';
import type { JobSpec } from '../spec.js';
import { createJobDirs, jobDirPath, removeJobDirs } from './jobdir.js';

const log = logger('job');

/** The status of a job whose process manager failed under it (as a cluster that failed). */
export const managerFailedStatus = 4;

/** How long a rank's exit waits for a FINALIZED that may still be on its way from a server. */
const FINALIZE_SETTLE_MS = 100;

export interface DirectContext {
  job: JobSpec;
  plan: JobPlan;
  ticket: Ticket;
  clones: Clone[];
  engine: Pick<JobEngine, 'openPort' | 'recordProcess' | 'resources' | 'hosts'>;
  policy: ExitPolicy;
  /** A rank failed: record it; the first failure stops the others after the grace period. */
  rankFailed(o: RankOutcome): void;
  /** Ends the job now: every rank is stopped (MPI_Abort, a process manager gone). */
  stopAll(): void;
  /** Whether the launcher has begun stopping ranks (a rank ending after that did not end on its own). */
  stopping(): boolean;
}

export interface StartedRank {
  rank: number;
  clone: Clone | null;
  proc: CloneProcess;
  done: boolean;
}

/** What the job knows about one rank from its process managers, for the report. */
export interface RankContact {
  /** The managers it contacted, in order ('pmi', 'pmix'). */
  contacted: string[];
  finalized: boolean;
  /** Ran as a singleton: an MPI program's rank that never contacted either manager. */
  singleton: boolean;
  /** How it left the job unfinished (exit.ts): no finalize, never contacted, or lost to its PMIx server. */
  left?: Left | 'lost';
  /** Calls a server refused it (spawn, publish, lookup, ...). */
  unsupported?: string[];
}

/**
 * The job's hosts and which clones each holds: this host alone, or (a ticket over hosts) every
 * host with clones, each with its address on the ticket's network, a directory of the ticket
 * there, and a way to open a port and to start sf-pmix there (its agent).
 */
function hostsOf(ctx: DirectContext): TicketHost[] {
  const { ticket, clones, engine } = ctx;
  return (
    engine.hosts?.(ticket) ?? [
      { name: 'here', local: true, address: ticket.network.gateway, clones: clones.map((c) => c.id), dir: engine.resources(ticket).dir, openPort: (port) => engine.openPort(ticket, port) },
    ]
  );
}

export class ProcessManagers {
  readonly contacts: RankContacts;
  readonly jobDir: string;
  private readonly unsupported = new Map<number, string[]>();
  private readonly pmixEnv: Record<string, string>[] = [];
  private pmi: PmiServer | null = null;
  private pmix: PmixJob | null = null;
  /** The job's directory is made in every clone (for Open MPI; see mayRunOpenMpi). */
  private hasJobDirs = false;
  private readonly exited = new Set<number>();
  private readonly lostRanks = new Set<number>();

  private constructor(private readonly ctx: DirectContext) {
    this.jobDir = jobDirPath(ctx.ticket.id);
    this.contacts = new RankContacts(ctx.job.np, (rank, left) => ctx.rankFailed({ ...this.where(rank), code: 0, signal: null, left }));
  }

  /**
   * The servers the job's ranks can speak to up, listening on the gateway with their ports open,
   * and the job's directories made where Open MPI may run.
   */
  static async start(ctx: DirectContext): Promise<ProcessManagers> {
    const pms = new ProcessManagers(ctx);
    const openMpi = (pms.hasJobDirs = mayRunOpenMpi(ctx.plan));
    // All settle before a failure is acted on, so that close() finds what was started.
    const results = await Promise.allSettled([
      timed(log, 'PMI-1 server up', () => pms.startPmi()),
      ...(openMpi
        ? [
            timed(log, 'PMIx server up, job registered', () => pms.startPmix()),
            timed(log, "job's directory in every clone", () => createJobDirs(ctx.clones, pms.jobDir)),
          ]
        : []),
    ]);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await pms.close(false);
      throw failed.reason;
    }
    return pms;
  }

  private where(rank: number): { rank: number; hostname: string } {
    return { rank, hostname: this.ctx.clones[this.ctx.plan.placement[rank]!]?.hostname ?? '?' };
  }

  private async startPmi(): Promise<void> {
    const { job, plan, ticket, engine } = this.ctx;
    const pmi = new PmiServer({ size: job.np, appnums: plan.ranks.map((r) => r.app), processMapping: processMapping(plan.placement), log: logger('pmi'), probe: this.rankProbe() });
    this.pmi = pmi;
    const port = await pmi.listen(ticket.network.gateway);
    await engine.openPort(ticket, port);
    pmi.on('connect', (rank) => this.contacts.contact(rank, 'pmi'));
    pmi.on('finalize', (rank) => this.contacts.finalize(rank));
    pmi.on('abort', (rank, exitcode, message) => this.aborted(rank, exitcode, message));
  }

  /**
   * The finalize stall's probe (launcher/pmi/rank-probe.ts): this host's processes, and for VM
   * clones on this host the guests that hold ranks, each looked at by native/sockets run there
   * through its agent (started only once every rank has connected, never for a job of one rank:
   * server.ts). Ranks on a ticket's other hosts stay unseen: a helper run there by its agent
   * listed their PMI sockets, but never with the ends the server sees (tried, not kept).
   */
  private rankProbe(): RankProbe {
    const { plan, ticket, clones } = this.ctx;
    const here = new Set(hostsOf(this.ctx).find((h) => h.local)?.clones ?? []);
    const guests = ticket.provider === 'vm' ? [...new Set(plan.placement)].filter((c) => here.has(c)).sort((a, b) => a - b).map((c) => cloneHelper(clones[c]!)) : [];
    return new RankProbe({ elsewhere: guests });
  }

  private async startPmix(): Promise<void> {
    const { plan, ticket, clones, engine } = this.ctx;
    const binary = defaultBinary();
    if (!existsSync(binary)) throw new HostError(`our PMIx server ${binary} is not built`, 'run npm run build (or make -C native; it needs libpmix-dev)');
    const used = [...new Set(plan.placement)].sort((a, b) => a - b);
    const spec: PmixJobSpec = {
      nspace: `snowflock-${ticket.id}`,
      nodes: used.map((c) => ({ hostname: clones[c]!.hostname, ranks: plan.ranks.filter((s) => s.clone === c).map((s) => s.rank) })),
      appnums: plan.ranks.map((r) => r.app),
    };
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PMIX_')) env[k] = v;
    // One server per host with clones of the job, listening on that host's address on the ticket
    // network; the fences between them go through FenceRelay here (launcher/pmix/servers.ts).
    const served: TicketHost[] = [];
    const pmixHosts: PmixHost[] = [];
    for (const h of hostsOf(this.ctx)) {
      const nodes = used.flatMap((c, i) => (h.clones.includes(c) ? [i] : []));
      if (nodes.length === 0) continue;
      served.push(h);
      if (h.local) {
        // libpmix's own files in the ticket's directory, which goes with the ticket whatever happens.
        const tmpdir = join(h.dir, 'pmix');
        mkdirSync(tmpdir, { recursive: true });
        pmixHosts.push({ nodes, listen: h.address, tmpdir, shareTopology: shareTopology(ticket, tmpdir), env });
      } else {
        // sf-pmix of that host, started there by its agent, in the ticket's directory there.
        pmixHosts.push({ nodes, listen: h.address, tmpdir: h.dir, spawn: h.spawnPmix });
      }
    }
    const pmix = await PmixJob.start(spec, pmixHosts);
    this.pmix = pmix;
    // Listening before anything else is awaited: the server may fail or ranks may call at any time.
    pmix.on('connected', (rank) => this.contacts.contact(rank, 'pmix'));
    pmix.on('finalized', (rank) => this.contacts.finalize(rank));
    // Open MPI says N/A when MPI_Abort was given no message of its own.
    pmix.on('abort', (a) => this.aborted(a.rank, a.status, a.message === 'N/A' ? '' : a.message));
    pmix.on('disconnected', (rank) => this.lost(rank));
    pmix.on('unsupported', (u) => {
      if (u.rank === 'unknown') return;
      const calls = this.unsupported.get(u.rank) ?? [];
      if (!calls.includes(u.call)) calls.push(u.call);
      this.unsupported.set(u.rank, calls);
      log.info(`rank ${u.rank} asked the PMIx server for ${u.call}, which sfmpirun does not support; the call failed in the rank`);
    });
    pmix.on('log', (line) => log.debug(`sf-pmix: ${line}`));
    pmix.on('failure', (e) => {
      this.ctx.policy.stop(managerFailedStatus, `sfmpirun: the PMIx server failed during the job (${e.message}); stopped every rank`);
      this.ctx.stopAll();
    });
    // The servers of other hosts are in their hosts' records (their agents started them).
    for (const [i, s] of pmix.servers.entries()) if (served[i]!.local) await engine.recordProcess(ticket, s.pid, 'sf-pmix');
    await Promise.all(
      pmix.servers.map((s, i) => {
        const port = /tcp4:\/\/[\d.]+:(\d+)/.exec(s.uri)?.[1];
        if (!port) throw new Error(`sf-pmix advertises no TCP address (${s.uri})`);
        return served[i]!.openPort(Number(port));
      }),
    );
    const envs = await Promise.all(plan.ranks.map((s) => pmix.env(s.rank)));
    this.pmixEnv.push(...envs);
  }

  private aborted(rank: number, errorcode: number, message: string): void {
    const first = this.ctx.policy.record({ ...this.where(rank), code: errorcode, signal: null, abortCode: errorcode, abortMessage: message || undefined });
    // MPI_Abort ends the whole job at once, as under mpiexec.
    if (first) this.ctx.stopAll();
  }

  /** Its PMIx connection closed before it finalized: its exit decides, or it is lost. */
  private lost(rank: number): void {
    log.info(`rank ${rank} closed its PMIx connection before it finalized; ending the job`);
    this.pmix?.fail(`rank ${rank} is gone`);
    setTimeout(() => {
      if (this.exited.has(rank)) return;
      this.lostRanks.add(rank);
      this.ctx.rankFailed({ ...this.where(rank), code: null, signal: null, left: 'lost' });
    }, 1000).unref();
  }

  /** The complete environment of one rank. */
  env(rank: number, base: Record<string, string>): Record<string, string> {
    const { job, plan } = this.ctx;
    const slot = plan.ranks[rank]!;
    const openmpi = { ...OPENMPI_DIRECT_LAUNCH, ...openMpiJobDirs(this.jobDir) };
    return rankEnv(base, { pmi: this.pmi!.rankEnv(rank), pmix: this.pmixEnv[rank] ?? {}, openmpi }, {
      rank,
      size: job.np,
      localRank: slot.localRank,
      localSize: slot.localSize,
      wdir: job.apps[slot.app]!.wdir,
    });
  }

  /** A rank's process ended; `ownExit`: before the launcher began stopping ranks. */
  async rankExited(rank: number, status: ExitStatus, ownExit: boolean): Promise<void> {
    this.exited.add(rank);
    const clean = status.code === 0 && status.signal === null;
    // Its FINALIZED may still be in a server's pipe: the rank waited for the server's answer to
    // its finalize before it exited, but that answer and our report of it travel apart.
    if (clean && !this.contacts.finalized(rank)) await new Promise((r) => setTimeout(r, FINALIZE_SETTLE_MS));
    this.contacts.exit(rank, clean, ownExit);
  }

  /** Ranks of an MPI program (np > 1) that exited on their own without contacting either manager. */
  singletons(): number[] {
    const { job, plan } = this.ctx;
    if (job.np < 2) return [];
    return this.contacts.singletons((r) => plan.apps[plan.ranks[r]!.app]!.mpi !== 'none');
  }

  contactOf(rank: number, singletons: number[]): RankContact {
    const calls = this.unsupported.get(rank);
    const left = this.lostRanks.has(rank) ? 'lost' : this.contacts.left(rank);
    return {
      contacted: this.contacts.contacted(rank),
      finalized: this.contacts.finalized(rank),
      singleton: singletons.includes(rank),
      ...(left ? { left } : {}),
      ...(calls ? { unsupported: calls } : {}),
    };
  }

  /** Where the servers were, for the report (and for tests to check that nothing of them is left). */
  describe(): { pmi: string | null; pmix: Array<{ pid: number; uri: string }> } {
    return { pmi: this.pmi?.address ?? null, pmix: (this.pmix?.servers ?? []).map((s) => ({ pid: s.pid, uri: s.uri })) };
  }

  /** Stops the servers started; removes the job's directories when the clones outlive the job. */
  async close(keep: boolean): Promise<void> {
    const done: Promise<unknown>[] = [];
    if (this.pmi) done.push(this.pmi.close().catch((e: Error) => log.warn(`closing the PMI server: ${e.message}`)));
    if (this.pmix) done.push(this.pmix.close().catch((e: Error) => log.warn(`closing the PMIx server: ${e.message}`)));
    if (keep && this.hasJobDirs) done.push(removeJobDirs(this.ctx.clones, this.jobDir).catch((e: Error) => log.warn(e.message)));
    await Promise.all(done);
  }
}

/**
 * Whether a rank of the job may be an Open MPI program, which needs our PMIx server and the job's
 * directory (its session files and shared-memory segments). MPICH speaks PMI-1 only; a program
 * where detection found no MPI (a script, a wrapper) may start either, so it gets both. Starting
 * neither for an MPICH job saves a process, its port and a process in every clone.
 */
function mayRunOpenMpi(plan: DirectContext['plan']): boolean {
  return plan.apps.some((a) => a.mpi !== 'mpich');
}

/**
 * Topology sharing (libpmix hands ranks this host's hwloc topology in a file in tmpdir, and Open
 * MPI skips discovering it in every rank) needs ranks that can open tmpdir: namespace clones see
 * the host's files except its /tmp and /dev/shm; VM clones see none (they would fail MPI_Init).
 */
function shareTopology(ticket: Ticket, tmpdir: string): boolean {
  return ticket.provider === 'netns' && !/^\/(tmp|dev\/shm)(\/|$)/.test(tmpdir);
}

/** Starts every rank in its clone, its output and stdin wired; all at once. */
export function startRanks(ctx: DirectContext, pms: ProcessManagers, callerEnv: NodeJS.ProcessEnv, output: JobOutput, stdin: StdinRouter): StartedRank[] {
  const { job, plan, clones } = ctx;
  // Per host: its ranks against its CPUs (this host's cores; another host's from the plan).
  const { hosts, cloneHosts } = plan.hosts;
  const ranksOn = hosts.map((_, h) => plan.ranks.filter((s) => cloneHosts[s.clone] === h).length);
  const defaultsOf = hosts.map((h, i) => defaultsLayer({ ranksOnHost: ranksOn[i]!, cores: h.local ? availableParallelism() : h.cpus }));
  const started = plan.ranks.map((slot): StartedRank => {
    const app = job.apps[slot.app]!;
    const clone = clones[slot.clone]!;
    const env = pms.env(slot.rank, { ...defaultsOf[cloneHosts[slot.clone]!]!, ...userEnv(job, app, callerEnv) });
    const wantsStdin = receives(job.stdin, slot.rank);
    const proc = clone.spawn([plan.programs[slot.app]!, ...app.argv.slice(1)], { env, cwd: app.wdir, stdin: wantsStdin ? 'pipe' : 'ignore', channel: job.launchChannel });
    output.attach(slot.rank, clone.hostname, proc.stdout, proc.stderr);
    if (wantsStdin && proc.stdin) stdin.add(proc.stdin);
    return { rank: slot.rank, clone, proc, done: false };
  });
  const yielding = hosts.flatMap((h, i) => (Object.keys(defaultsOf[i]!).length ? [`${ranksOn[i]} ranks on ${h.local ? availableParallelism() : h.cpus} cores${hosts.length > 1 ? ` of ${h.name}` : ''}`] : []));
  log.info(`started ${job.np} rank(s)${yielding.length ? ` (OMPI_MCA_mpi_yield_when_idle=1: ${yielding.join(', ')})` : ''}`);
  return started;
}
