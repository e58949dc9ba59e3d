/**
 * The coordinator: a job's launcher driving a ticket whose clones span hosts (SnowFlock's SFMD). It
 * is an engine for the job (the calls launcher/job/run.ts makes: request a ticket, checkpoint,
 * create clones, failure, kill) built from the launcher's own Engine, for this host's part, and one
 * `snowflock agent` per other host (./agent.ts), for theirs:
 *
 *   requestTicket  start the agents (srun or SSH: ./starters.ts), let them connect back and prove
 *                  the job secret; claim an id and a subnet here, then the same on every agent (a
 *                  clash there is one retry with what that host uses avoided); each host makes its
 *                  end of the ticket's network: bridge, VXLAN to every other host, firewall
 *   checkpoint     here and on every agent; for VM clones the template here, its memory served
 *                  from here (memserver), its descriptor shipped to every agent (memory on demand)
 *   createClones   clone i on the host the plan gave it (`layout.cloneHosts`), all hosts at once;
 *                  the clones of other hosts are reached through their agent (RemoteClone)
 *   memoryFigures  what every clone host's memtap fetched, and the memserver sent (--report)
 *   failure        one line naming the host, as soon as an agent is lost (its connection closed or
 *                  silent for the host timeout) or reports that its clones lost something
 *   kill           every agent tears its part down, this host its own, then the agents exit
 *   hosts          where the job's per-host services go (one sf-pmix per host)
 *
 * This host always takes part: its bridge holds the gateway address (.1) where the launcher's
 * PMI-1 server listens for every clone, over the tunnel for the other hosts' (measured against
 * per-host proxies in benchmarks/hosts.ts). It holds clones only when the plan puts some here (an
 * sbatch script runs on the allocation's first node; salloc's shell often runs elsewhere).
 */
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import type { Writable } from 'node:stream';
import { runCommand } from '../common/command.js';
import { ProvisionError, UsageError } from '../common/errors.js';
import { logger, timed } from '../common/log.js';
import type { Engine, TicketResources } from '../engine.js';
import type { MemoryFigures } from '../memory/report.js';
import type { Checkpoint, CheckpointSource } from '../providers/checkpoint.js';
import type { Clone, CloneProcess, SpawnOptions } from '../providers/clone.js';
import type { ProviderChoice } from '../providers/provider.js';
import { resolveProvider } from '../providers/registry.js';
import type { Ticket, TicketSpan } from '../ticket/ticket.js';
import { Channel, coordinatorHandshake } from './channel.js';
import { newSecret, type ClaimRequest, type Frame, type HostFacts, type Message, type RemoteCloneInfo, type SpawnTarget } from './protocol.js';
import { RemoteProcess } from './remote-process.js';
import type { AgentStarter, StartedAgents } from './starters.js';
import { VXLAN_OVERHEAD } from './vxlan.js';

const log = logger('hosts');

/** The hosts of a job and the host of each clone, as the plan fixed them. */
export interface SpanLayout {
  hosts: Array<{ name: string; local: boolean }>;
  /** Clone id -> index into hosts. */
  cloneHosts: number[];
}

/** One host of a spanning ticket, for what the job runs next to the clones (sf-pmix). */
export interface TicketHost {
  name: string;
  local: boolean;
  /** Its address on the ticket's network, where its clones reach its services. */
  address: string;
  /** Ids of the clones it holds. */
  clones: number[];
  /** A directory of the ticket on that host, removed with it. */
  dir: string;
  /** Opens a TCP port of that host's address in its part of the ticket's firewall. */
  openPort(port: number): Promise<void>;
  /** Starts sf-pmix on that host, stdio piped here (other hosts only: this host spawns its own). */
  spawnPmix?(): RemoteProcess & { readonly stdin: Writable };
}

export interface CoordinatorSettings {
  /** Heartbeat period and how long a silent host counts as alive. */
  beatMs: number;
  deadMs: number;
  /** How long every agent has to connect and prove the secret. */
  startTimeoutMs: number;
}

/** Host offsets on the subnet: .1 is this host; agents take .2-.9, then from .254 down. */
export function hostOffset(agent: number): number {
  return agent < 8 ? 2 + agent : 254 - (agent - 8);
}

/** The most clones a ticket over `hosts` hosts can have: the top addresses of more than 9 hosts are theirs. */
export function maxClonesOver(hosts: number): number {
  return 244 - Math.max(0, hosts - 1 - 8);
}

const ATTEMPTS = 4;

type Request = Extract<Message, { t: 'claim' | 'checkpoint' | 'memory-figures' | 'clones' | 'open-port' | 'spawn' | 'kill' }>;

/** An agent as the coordinator holds it: its channel, its requests and processes, whether it is lost. */
class RemoteAgent {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: unknown) => void; reject: (e: Error) => void }>();
  readonly procs = new Map<number, RemoteProcess>();
  lostWhy: string | null = null;
  /** Its address on the ticket network and its ticket directory, once it claimed. */
  address = '';
  dir = '';

  constructor(
    readonly host: string,
    readonly facts: HostFacts,
    readonly ch: Channel,
    private readonly onLost: (agent: RemoteAgent, why: string) => void,
    readonly onFailure: (line: string) => void,
  ) {
    ch.on('frame', (f) => this.onFrame(f));
    ch.on('closed', (why) => this.lost(why));
    ch.deliver();
  }

  get alive(): boolean {
    return this.lostWhy === null;
  }

  send(msg: Message, data?: Buffer): boolean {
    if (!this.alive) return false;
    this.ch.send(msg, data);
    return true;
  }

  /** Sends a request (its id is filled in) and resolves with the agent's answer. */
  request<T>(msg: Request, what: string, data?: Buffer): Promise<T> {
    if (!this.alive) return Promise.reject(new ProvisionError(`host ${this.host}: ${what}: its agent is gone (${this.lostWhy})`));
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (r: unknown) => void, reject });
      this.ch.send({ ...msg, id } as Message, data);
    }).catch((e: Error) => {
      throw e instanceof RequestFailed || e instanceof ProvisionError ? e : new ProvisionError(`host ${this.host}: ${what}: ${e.message}`);
    });
  }

  private onFrame({ msg, data }: Frame): void {
    switch (msg.t) {
      case 'done':
      case 'failed': {
        const p = this.pending.get(msg.id);
        if (!p) return;
        this.pending.delete(msg.id);
        if (msg.t === 'done') p.resolve(msg.result);
        else p.reject(new RequestFailed(this.host, msg.message, msg.exitCode, msg.clash?.used));
        return;
      }
      case 'output':
        this.procs.get(msg.proc)?.output(msg.fd, data);
        return;
      case 'exit':
        this.procs.get(msg.proc)?.end({ code: msg.code, signal: msg.signal as NodeJS.Signals | null });
        this.procs.delete(msg.proc);
        return;
      case 'failure':
        this.onFailure(`host ${this.host}: ${msg.line}`);
        return;
      default:
        log.warn(`host ${this.host}: its agent sent ${msg.t} out of turn`);
    }
  }

  private lost(why: string): void {
    if (this.lostWhy) return;
    this.lostWhy = why;
    for (const p of this.pending.values()) p.reject(new ProvisionError(`host ${this.host}: its agent is gone (${why})`));
    this.pending.clear();
    this.onLost(this, why);
  }
}

/** An agent's refusal of a request: its message as the agent said it, and its status when it was a user error. */
class RequestFailed extends ProvisionError {
  constructor(
    readonly host: string,
    message: string,
    readonly status: number | undefined,
    readonly clash: string[] | undefined,
  ) {
    super(`host ${host}: ${message}`);
    if (status !== undefined) (this as { exitCode: number }).exitCode = status;
  }
}

/** A clone on another host, reached through that host's agent. */
class RemoteClone implements Clone {
  constructor(
    readonly ticket: Ticket,
    private readonly info: RemoteCloneInfo,
    readonly host: string,
    private readonly agent: RemoteAgent,
    private readonly spawnOn: (agent: RemoteAgent, target: SpawnTarget, argv: string[], opts: SpawnOptions) => RemoteProcess,
  ) {}

  get id(): number {
    return this.info.id;
  }
  get hostname(): string {
    return this.info.hostname;
  }
  get address(): string {
    return this.info.address;
  }
  get mac(): string {
    return this.info.mac;
  }

  spawn(argv: string[], opts: SpawnOptions): CloneProcess {
    return this.spawnOn(this.agent, { clone: this.info.id }, argv, opts);
  }
}

export class ClusterEngine {
  private readonly secret = newSecret();
  private readonly agents = new Map<string, RemoteAgent>();
  private server: Server | null = null;
  private started: StartedAgents | null = null;
  private ticket: Ticket | null = null;
  private nextProc = 1;
  private fail!: (line: string) => void;
  private readonly failed = new Promise<string>((r) => (this.fail = r));
  private failedLine: string | null = null;
  private ending = false;
  /** This host's underlay address, as the agents reach it (the memserver listens there). */
  private underlay = '';

  constructor(
    private readonly local: Engine,
    readonly layout: SpanLayout,
    private readonly starter: AgentStarter,
    private readonly settings: CoordinatorSettings,
  ) {}

  get stateDir(): string {
    return this.local.stateDir;
  }

  private get remoteHosts(): string[] {
    return this.layout.hosts.filter((h) => !h.local).map((h) => h.name);
  }

  /** The ticket on every host of the layout, its network joined across them. */
  async requestTicket(n: number, opts: { provider?: ProviderChoice; keep?: boolean; checkpoint?: CheckpointSource; share?: string[] }): Promise<Ticket> {
    if (n !== this.layout.cloneHosts.length) throw new Error(`the layout places ${this.layout.cloneHosts.length} clones, asked for ${n}`);
    const provider = this.providerFor(opts.provider ?? 'auto');
    if (opts.keep) throw new UsageError('--keep: a cluster that spans hosts lives only as long as its launcher; drop --keep or run on one host');
    const limit = maxClonesOver(this.layout.hosts.length);
    if (n > limit) throw new UsageError(`a cluster over ${this.layout.hosts.length} hosts holds at most ${limit} clones (one /24 for all, a host address each); ask for fewer`);
    try {
      await timed(log, `agents on ${this.remoteHosts.length} host(s) connected`, () => this.startAgents());
      this.ticket = await timed(log, 'ticket claimed on every host', () => this.claimEverywhere(n, provider, opts));
      return this.ticket;
    } catch (e) {
      await this.stopAgents();
      throw e;
    }
  }

  /**
   * netns: here and on every agent at once. vm: the template here (built or cached), its memory
   * served from here (a memserver of the ticket on this host's underlay address), and each agent
   * given the descriptor, the memserver and the token: its clones start from that (memory on
   * demand, src/memory/), never from a template of their own.
   */
  async checkpoint(ticket: Ticket, source: CheckpointSource): Promise<Checkpoint> {
    if (ticket.provider !== 'vm' || source.coldBoot) {
      const [cp] = await Promise.all([this.local.checkpoint(ticket, source), ...this.each((a) => a.request({ t: 'checkpoint', id: 0, source }, 'checkpoint'))]);
      return cp;
    }
    const cp = await this.local.checkpoint(ticket, source);
    // Only the hosts with clones need the memory (an agent without any makes no template either).
    const holders = this.layout.hosts.filter((h, i) => !h.local && this.layout.cloneHosts.includes(i)).map((h) => this.agents.get(h.name)!);
    if (holders.length === 0) return cp;
    // Multicast (the default): the memserver pushes the template's working set once to every
    // clone host, and what one host faults on beyond it to the others.
    const multicast = (source.memoryTransport ?? 'multicast') === 'multicast' ? { receivers: holders.length } : undefined;
    const offer = await timed(log, `ticket ${ticket.id}: memory served`, () =>
      this.local.serveMemory(ticket, cp, { listen: `${this.underlay}:0`, ...(multicast ? { multicast } : {}) }),
    );
    const descriptor = readFileSync(offer.descriptor);
    log.info(`ticket ${ticket.id}: memory descriptor ${descriptor.length} bytes to ${holders.length} host(s), memserver ${offer.server}`);
    const memory = { server: offer.server, token: offer.token, ...(offer.multicast ? { multicast: offer.multicast } : {}) };
    await Promise.all(holders.map((a) => a.request({ t: 'checkpoint', id: 0, source, memory }, 'checkpoint (memory on demand)', descriptor)));
    return cp;
  }

  /** Memory on demand: every clone host's figures (this host's and each agent's) and the memserver's. */
  async memoryFigures(ticket: Ticket): Promise<MemoryFigures | null> {
    const all = await Promise.all([
      this.local.memoryFigures(ticket),
      ...this.each((a) => a.request<{ figures: MemoryFigures | null }>({ t: 'memory-figures', id: 0 }, 'memory figures').then((r) => r.figures)),
    ]);
    const got = all.filter((f): f is MemoryFigures => f !== null);
    if (got.length === 0) return null;
    return { hosts: got.flatMap((f) => f.hosts), servers: got.flatMap((f) => f.servers) };
  }

  async createClones(ticket: Ticket, checkpoint: Checkpoint): Promise<Clone[]> {
    const idsOn = (host: number) => this.layout.cloneHosts.flatMap((h, id) => (h === host ? [id] : []));
    const made = await Promise.all(
      this.layout.hosts.map(async (h, i): Promise<Clone[]> => {
        const ids = idsOn(i);
        if (ids.length === 0) return [];
        if (h.local) return this.local.createClones(ticket, checkpoint, { ids });
        const agent = this.agents.get(h.name)!;
        const r = await agent.request<{ clones: RemoteCloneInfo[] }>({ t: 'clones', id: 0, ids }, `${ids.length} clone(s)`);
        return r.clones.map((info) => new RemoteClone(ticket, info, h.name, agent, (a, target, argv, o) => this.spawnOn(a, target, argv, o)));
      }),
    );
    return made.flat().sort((a, b) => a.id - b.id);
  }

  /** One line naming the host, once any host of the ticket is lost or its clones lost something. */
  failure(ticket: Ticket): Promise<string> {
    return Promise.race([this.local.failure(ticket), this.failed]);
  }

  openPort(ticket: Ticket, port: number): Promise<void> {
    return this.local.openPort(ticket, port);
  }

  resources(ticket: Ticket): TicketResources {
    return this.local.resources(ticket);
  }

  recordProcess(ticket: Ticket, pid: number, what: string): Promise<void> {
    return this.local.recordProcess(ticket, pid, what);
  }

  /** Every host's part of the ticket torn down (a lost host's by its own lifeline), then the agents end. */
  async kill(ticket: Ticket): Promise<void> {
    this.ending = true;
    const problems: string[] = [];
    await Promise.all([
      // A host lost meanwhile is not a teardown problem here: its own lifeline removes its part.
      ...this.each((a) =>
        a.request({ t: 'kill', id: 0 }, 'teardown').catch((e: Error) => {
          if (e instanceof RequestFailed) problems.push(e.message);
          else log.warn(e.message);
        }),
      ),
      this.local.kill(ticket).catch((e: Error) => {
        problems.push(e.message);
      }),
    ]);
    await this.stopAgents();
    if (problems.length) throw new Error(problems.join('; '));
  }

  /** The hosts with clones, with what a per-host service needs of each. */
  hosts(ticket: Ticket): TicketHost[] {
    return this.layout.hosts.flatMap((h, i): TicketHost[] => {
      const clones = this.layout.cloneHosts.flatMap((x, id) => (x === i ? [id] : []));
      if (clones.length === 0) return [];
      if (h.local) return [{ name: h.name, local: true, address: ticket.network.gateway, clones, dir: this.local.resources(ticket).dir, openPort: (p) => this.local.openPort(ticket, p) }];
      const agent = this.agents.get(h.name)!;
      return [
        {
          name: h.name,
          local: false,
          address: agent.address,
          clones,
          dir: agent.dir,
          openPort: (port) => agent.request({ t: 'open-port', id: 0, port }, `open port ${port}`),
          spawnPmix: () => this.spawnOn(agent, { helper: 'sf-pmix' }, [], { env: {}, stdin: 'pipe' }) as RemoteProcess & { readonly stdin: Writable },
        },
      ];
    });
  }

  // --- internals ---

  /** netns unless asked for vm (whose clones on other hosts run on memory on demand: checkpoint()). */
  private providerFor(choice: ProviderChoice): 'netns' | 'vm' {
    return choice === 'auto' ? 'netns' : resolveProvider(choice);
  }

  private each<T>(fn: (a: RemoteAgent) => Promise<T>): Promise<T>[] {
    return [...this.agents.values()].filter((a) => a.alive).map(fn);
  }

  /** Listens, starts every agent, and waits until each has connected and proved the secret. */
  private async startAgents(): Promise<void> {
    const hosts = this.remoteHosts;
    const address = await this.starter.connectAddress(hosts);
    const server = createServer();
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: address, port: 0 }, resolve);
    });
    const port = (server.address() as { port: number }).port;
    const waiting = new Set(hosts);
    let connected!: () => void;
    const all = new Promise<void>((r) => (connected = r));
    server.on('connection', (sock) => {
      const ch = new Channel(sock);
      coordinatorHandshake(ch, this.secret, waiting, { beatMs: this.settings.beatMs, deadMs: this.settings.deadMs })
        .then(({ host, facts }) => {
          waiting.delete(host);
          const agent = new RemoteAgent(host, facts, ch, (a, why) => this.agentLost(a, why), (line) => this.reportFailure(line));
          this.agents.set(host, agent);
          ch.startBeats(this.settings.beatMs, this.settings.deadMs);
          log.info(`host ${host}: agent ${facts.pid} connected from ${facts.underlay.address} (${facts.underlay.dev}, MTU ${facts.underlay.mtu})`);
          if (waiting.size === 0) connected();
        })
        .catch((e: Error) => log.warn(e.message));
    });
    this.started = await this.starter.start(hosts, { address, port }, this.secret);
    const s = Math.round(this.settings.startTimeoutMs / 1000);
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        all,
        this.started.failed.then((line) => Promise.reject(new ProvisionError(line))),
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(new ProvisionError(`the agents on ${[...waiting].join(', ')} did not connect back within ${s} s (started with ${this.starter.how}); see snowflock doctor on those hosts`)),
            this.settings.startTimeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
    // No more agents: nothing else may connect.
    server.close();
    void this.started.failed.then((line) => this.reportFailure(line));
  }

  private async claimEverywhere(n: number, provider: 'netns' | 'vm', opts: { checkpoint?: CheckpointSource; share?: string[] }): Promise<Ticket> {
    const agents = this.remoteHosts.map((h) => this.agents.get(h)!);
    const devs = new Set(agents.map((a) => a.ch.socket.localAddress));
    const local = agents[0]!.ch.socket.localAddress!.replace(/^::ffff:/, '');
    this.underlay = local;
    if (devs.size > 1) throw new ProvisionError(`the agents reached this host at different addresses (${[...devs].join(', ')}); give the hosts one network`);
    const localDev = await routeDev(agents[0]!.facts.underlay.address);
    const mtu = Math.min(localDev.mtu, ...agents.map((a) => a.facts.underlay.mtu)) - VXLAN_OVERHEAD;
    const peersOf = (self: string) => [local, ...agents.map((a) => a.facts.underlay.address)].filter((x) => x !== self);
    const avoid = new Set<string>();
    for (let attempt = 1; ; attempt++) {
      const span: TicketSpan = { avoid: [...avoid], hostOffset: 1, mtu, overlay: { local, peers: peersOf(local), dev: localDev.dev } };
      const ticket = await this.local.requestTicket(n, { provider, checkpoint: opts.checkpoint, share: opts.share, span });
      const results = await Promise.allSettled(
        agents.map((a, i) => {
          const claim: ClaimRequest = {
            span: { id: ticket.id, subnet: ticket.network.subnet, hostOffset: hostOffset(i), mtu, overlay: { local: a.facts.underlay.address, peers: peersOf(a.facts.underlay.address), dev: a.facts.underlay.dev } },
            count: n,
            provider,
            share: opts.share ?? [],
          };
          return a.request<{ dir: string; address: string }>({ t: 'claim', id: 0, claim }, `ticket ${ticket.id}`).then((r) => {
            a.address = r.address;
            a.dir = r.dir;
          });
        }),
      );
      const failures = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as Error] : []));
      if (failures.length === 0) return ticket;
      const clashes = failures.filter((e): e is RequestFailed => e instanceof RequestFailed && e.clash !== undefined);
      // Undo the attempt everywhere before going on or giving up.
      await Promise.all([this.local.kill(ticket).catch(() => {}), ...agents.filter((a, i) => results[i]!.status === 'fulfilled').map((a) => a.request({ t: 'kill', id: 0 }, 'undo').catch(() => {}))]);
      if (clashes.length < failures.length || attempt >= ATTEMPTS) throw failures.find((e) => !clashes.includes(e as RequestFailed)) ?? failures[0]!;
      avoid.add(ticket.network.subnet);
      for (const c of clashes) for (const s of c.clash!) avoid.add(s);
      log.info(`ticket ${ticket.id} on ${ticket.network.subnet}: ${clashes.map((c) => c.message).join('; ')}; trying another`);
    }
  }

  private spawnOn(agent: RemoteAgent, target: SpawnTarget, argv: string[], opts: SpawnOptions): RemoteProcess {
    const proc = this.nextProc++;
    const p = new RemoteProcess(proc, agent, opts.stdin === 'pipe');
    agent.procs.set(proc, p);
    agent
      .request<{ pid: number }>({ t: 'spawn', id: 0, proc, target, argv, env: opts.env, cwd: opts.cwd, stdin: opts.stdin === 'pipe' }, `start ${argv[0] ?? 'sf-pmix'}`)
      .then(
        (r) => p.started(r.pid),
        (e: Error) => {
          agent.procs.delete(proc);
          p.stderr.write(`snowflock: ${e.message}\n`);
          p.refused(e);
        },
      );
    return p;
  }

  private reportFailure(line: string): void {
    if (this.failedLine || this.ending) return;
    this.failedLine = line;
    log.info(line);
    this.fail(line);
  }

  /**
   * An agent is gone: the job hears it first (the line names the host); its processes end a moment
   * later, so that the job's own verdict is the lost host and not one of their deaths.
   */
  private agentLost(agent: RemoteAgent, why: string): void {
    if (!this.ending) this.reportFailure(`host ${agent.host} is lost: ${why === 'connection closed' ? 'its agent ended' : why}`);
    setTimeout(() => {
      for (const p of agent.procs.values()) p.lose();
      agent.procs.clear();
    }, 50).unref();
  }

  private async stopAgents(): Promise<void> {
    this.ending = true;
    this.server?.close();
    for (const a of this.agents.values()) a.send({ t: 'bye' });
    await Promise.all([...this.agents.values()].map((a) => (a.alive ? new Promise<void>((r) => { a.ch.once('closed', () => r()); setTimeout(r, 5000).unref(); }) : undefined)));
    await this.started?.stop(this.failedLine !== null);
  }
}

/** The device and MTU of this host's route to an address. */
async function routeDev(to: string): Promise<{ dev: string; mtu: number }> {
  const r = await runCommand('ip', ['-j', 'route', 'get', to], { reject: false });
  const dev = (JSON.parse(r.stdout || '[]') as Array<{ dev?: string }>)[0]?.dev;
  if (!dev) throw new ProvisionError(`no route from this host to ${to}`);
  let mtu = 1500;
  try {
    mtu = Number(readFileSync(`/sys/class/net/${dev}/mtu`, 'utf8').trim()) || 1500;
  } catch {
    /* the default */
  }
  return { dev, mtu };
}

