/**
 * Our PMI-1 process manager: the TCP server MPICH ranks talk to during MPI_Init, MPI_Finalize,
 * MPI_Abort and name publishing. One server per job: one key-value space, one set of barriers,
 * one name service. Ranks find it through PMI_PORT and say who they are with PMI_ID (initack).
 *
 * The server never trusts its clients: a malformed, unknown, overlong or binary line gets an
 * error reply and the connection stays usable; a client vanishing mid-barrier is reported as an
 * event; nothing a client sends can throw out of here. Everything a client can make it hold is
 * capped (connections, unfinished lines, multi-line commands, unread replies, keys, names, open
 * barrier rounds, log lines), and a client that never says who it is, or dribbles a line byte by
 * byte, is closed after a timeout (test/unit/pmi-fuzz.test.ts throws 10,000 hostile inputs at it).
 */
import { EventEmitter } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { logger, type Logger } from '../../src/common/log.js';
import { BarrierRounds } from './barrier.js';
import { endpoint } from './sockets.js';
import { RankProbe } from './rank-probe.js';
import { formatReply, LineSplitter, parseLine, token, type PmiCommand } from './wire.js';

export interface PmiServerOptions {
  /** World size. */
  size: number;
  /** appnum per rank (MPMD section index); default 0 for every rank. */
  appnums?: number[];
  /** PMI_process_mapping, from placement.ts processMapping(). */
  processMapping: string;
  /** MPI_UNIVERSE_SIZE; default `size`. */
  universeSize?: number;
  /** Watchdog for the MPICH/UCX finalize hang: release a stalled barrier after this long. Default 3000; 0 disables. */
  finalizeTimeoutMs?: number;
  /**
   * Looks at the rank processes to release the finalize stall as soon as it is proven (see
   * rank-probe.ts). Default: a probe of this host's /proc; null: only the watchdog.
   */
  probe?: RankProbe | null;
  /** A connection that has not sent initack after this long is closed. Default 10000. */
  handshakeTimeoutMs?: number;
  /** A connection that leaves a line unfinished for this long is closed (MPICH writes whole lines). Default 10000. */
  lineTimeoutMs?: number;
  log?: Logger;
}

/** What the server holds for its clients; every figure is capped (see the limits below). */
export interface PmiServerStats {
  connections: number;
  /** Connections that have not sent initack. */
  unidentified: number;
  ranks: number;
  kvsEntries: number;
  services: number;
  openRounds: number;
  /** Characters held for unfinished lines and multi-line commands, over all connections. */
  bufferedChars: number;
  /** Bytes of replies written that the kernel has not taken yet, over all connections. */
  unreadReplyBytes: number;
  /** Ranks the rank probe keeps state for. */
  probedRanks: number;
  /** Lines received so far, and bad inputs among them (refused lines, dropped connections). */
  lines: number;
  badInputs: number;
}

/** The limits we announce in get_maxes, as Hydra does. */
export const KVSNAME_MAX = 256;
export const KEYLEN_MAX = 64;
export const VALLEN_MAX = 1024;

/** Bytes of replies a client may leave unread before we drop it (a rank's replies are a few lines). */
export const MAX_UNREAD_REPLIES = 256 * 1024;
/** Connections that have not said who they are; beyond this the oldest is closed. */
export const MAX_UNIDENTIFIED = 64;
/** A multi-line command (spawn) of more lines or characters than this is refused. */
export const MAX_MCMD_LINES = 10_000;
export const MAX_MCMD_CHARS = 256 * 1024;
/** Keys in the KVS: far more than MPICH puts (a few per rank), far less than memory. */
export const kvsCapacity = (size: number): number => 1024 + 256 * size;
/** Published names, and the longest service name and port string. */
export const MAX_SERVICES = 1024;
export const SERVICE_MAX = 256;
/** Lines about clients' doings we log per server; then one line says that the rest are only counted. */
const MAX_CLIENT_LINES = 50;
/**
 * Refused lines after which a connection is closed, and lines a connection may send before it
 * says which rank it is. A rank of MPICH sends no bad line and starts with initack; a hostile
 * client can queue megabytes in the kernel, and all of it would be parsed and answered.
 */
export const MAX_BAD_LINES_PER_CONNECTION = 16;
export const MAX_LINES_BEFORE_INITACK = 64;

/** The first line of a multi-line command ends at this line. */
const MCMD_END = 'endcmd';

interface Client {
  socket: Socket;
  lines: LineSplitter;
  /** Set by initack. */
  rank?: number;
  finalized: boolean;
  connectedAt: number;
  lastActivity: number;
  /** Since when a line has been begun and not ended (performance.now). */
  midLineSince?: number;
  /** Lines of an mcmd=... block being collected, and their characters. */
  mcmd?: string[];
  mcmdChars: number;
  /** Lines received, and lines refused. */
  lineCount: number;
  badLines: number;
}

export interface PmiServerEvents {
  abort: [rank: number, exitcode: number, message: string];
  finalize: [rank: number];
  /** A rank's PMI connection closed; before finalize that is an early exit. */
  disconnect: [rank: number, finalized: boolean];
  /** A rank completed initack. */
  connect: [rank: number];
}

export class PmiServer extends EventEmitter<PmiServerEvents> {
  readonly kvsname: string;
  private readonly opts: Required<Omit<PmiServerOptions, 'log' | 'appnums' | 'probe'>> & { appnums: number[] };
  /** Ranks that ever connected (a later claim of one is a new incarnation). */
  private readonly claimed = new Set<number>();
  private readonly reportedInUse = new Set<number>();
  private badInput = 0;
  private lineCount = 0;
  private sweeper?: NodeJS.Timeout;
  private readonly log: Logger;
  private readonly kvs = new Map<string, string>();
  private readonly services = new Map<string, string>();
  private readonly clients = new Set<Client>();
  private readonly byRank = new Map<number, Client>();
  /** Ranks that have ever connected, and when each last spoke (for the watchdog). */
  private readonly lastHeard = new Map<number, number>();
  private readonly finalized = new Set<number>();
  private readonly barriers: BarrierRounds;
  private readonly probe: RankProbe | null;
  private server?: Server;
  private address_?: { host: string; port: number };

  constructor(opts: PmiServerOptions) {
    super();
    if (!Number.isInteger(opts.size) || opts.size < 1) throw new Error(`PmiServer: size must be a positive integer, got ${opts.size}`);
    const appnums = opts.appnums ?? new Array<number>(opts.size).fill(0);
    if (appnums.length !== opts.size) throw new Error(`PmiServer: ${appnums.length} appnums for ${opts.size} ranks`);
    this.opts = {
      size: opts.size,
      appnums,
      processMapping: opts.processMapping,
      universeSize: opts.universeSize ?? opts.size,
      finalizeTimeoutMs: opts.finalizeTimeoutMs ?? 3000,
      handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 10_000,
      lineTimeoutMs: opts.lineTimeoutMs ?? 10_000,
    };
    this.log = opts.log ?? logger('pmi');
    this.kvsname = `kvs_${process.pid}_${randomBytes(4).toString('hex')}`;
    this.kvs.set('PMI_process_mapping', opts.processMapping);
    this.probe = opts.probe === undefined ? new RankProbe() : opts.probe;
    const probe = this.probe;
    this.barriers = new BarrierRounds(opts.size, this.opts.finalizeTimeoutMs, {
      release: (rank) => this.send(this.byRank.get(rank), formatReply('barrier_out')),
      watchdog: (round, missing, waited) =>
        this.log.warn(
          `PMI barrier ${round} released by the finalize watchdog after ${Math.round(waited)} ms without rank(s) ${missing.join(',')} ` +
            '(the known MPICH/UCX finalize hang)',
        ),
      quietSince: (rank, since) => {
        const heard = this.lastHeard.get(rank);
        const active = probe?.lastActive(rank);
        return heard !== undefined && heard <= since && !(active !== undefined && active > since);
      },
      ...(probe && {
        prove: async (round, inside, missing) => {
          const t0 = performance.now();
          const look = await probe.look(inside, missing);
          this.log.debug(`PMI barrier ${round}: looked at ranks ${missing.join(',')} outside and ${inside.length} inside in ${Math.round(performance.now() - t0)} ms: ${look.stuck.size} stuck${look.visible ? '' : ' (not all ranks visible)'}`);
          return new Map([...look.stuck].map(([rank, e]) => [rank, `rank ${rank} waits on rank ${e.waitsOn}, which has not read ${e.unread} byte(s) from it`]));
        },
      }),
      proven: (round, missing, waited, why, seenWithin) =>
        this.log.info(
          `PMI barrier ${round} released after ${Math.round(waited)} ms without rank(s) ${missing.join(',')} (stall seen within ` +
            `${Math.round(seenWithin)} ms): they are closing their UCX connections in MPI_Finalize and wait for acknowledgements ` +
            `from ranks inside the barrier (${why.join('; ')})`,
        ),
    });
  }

  /** Starts listening; resolves to the bound port (an ephemeral one when `port` is 0 or absent). */
  listen(host: string, port = 0): Promise<number> {
    if (this.server) return Promise.reject(new Error('PmiServer: already listening'));
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    // Ranks hold one connection each, others are few and evicted (accept); this is the hard stop.
    server.maxConnections = this.opts.size + MAX_UNIDENTIFIED + 16;
    this.server = server;
    const period = Math.max(10, Math.min(this.opts.handshakeTimeoutMs, this.opts.lineTimeoutMs) / 4);
    this.sweeper = setInterval(() => this.sweep(), period);
    this.sweeper.unref();
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port, backlog: 1024 }, () => {
        server.off('error', reject);
        server.on('error', (e) => this.log.warn(`PMI server error: ${e.message}`));
        const bound = server.address();
        if (!bound || typeof bound === 'string') return reject(new Error('PmiServer: no TCP address'));
        this.address_ = { host, port: bound.port };
        this.log.info(`PMI server for ${this.opts.size} ranks on ${host}:${bound.port} (kvs ${this.kvsname})`);
        resolve(bound.port);
      });
    });
  }

  /**
   * The environment a rank needs to find us. PMI_ID makes the client send initack, and we answer
   * with its rank and the world size; PMI_RANK/PMI_SIZE are there for clients that skip initack.
   */
  rankEnv(rank: number): Record<string, string> {
    if (!this.address_) throw new Error('PmiServer: rankEnv before listen');
    if (!Number.isInteger(rank) || rank < 0 || rank >= this.opts.size) throw new Error(`PmiServer: no rank ${rank}`);
    return {
      PMI_PORT: `${this.address_.host}:${this.address_.port}`,
      PMI_ID: String(rank),
      PMI_RANK: String(rank),
      PMI_SIZE: String(this.opts.size),
    };
  }

  /** host:port once listening. */
  get address(): string | null {
    return this.address_ ? `${this.address_.host}:${this.address_.port}` : null;
  }

  /** Ranks that have sent finalize, in order. */
  finalizedRanks(): number[] {
    return [...this.finalized].sort((a, b) => a - b);
  }

  /** Sizes of what the server holds, for tests and diagnostics. */
  stats(): PmiServerStats {
    let unidentified = 0;
    let bufferedChars = 0;
    let unreadReplyBytes = 0;
    for (const c of this.clients) {
      if (c.rank === undefined) unidentified++;
      bufferedChars += c.lines.pending + c.mcmdChars;
      unreadReplyBytes += c.socket.writableLength;
    }
    return {
      connections: this.clients.size,
      unidentified,
      ranks: this.byRank.size,
      kvsEntries: this.kvs.size,
      services: this.services.size,
      openRounds: this.barriers.openRounds(),
      bufferedChars,
      unreadReplyBytes,
      probedRanks: this.probe?.size() ?? 0,
      lines: this.lineCount,
      badInputs: this.badInput,
    };
  }

  async close(): Promise<void> {
    clearInterval(this.sweeper);
    this.barriers.close();
    this.probe?.close();
    for (const c of this.clients) c.socket.destroy();
    this.clients.clear();
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private accept(socket: Socket): void {
    const now = performance.now();
    const client: Client = {
      socket,
      finalized: false,
      connectedAt: now,
      lastActivity: now,
      mcmdChars: 0,
      lineCount: 0,
      badLines: 0,
      lines: new LineSplitter(
        (line) => this.onLine(client, line),
        () => this.reject(client, 'line_too_long', 'a line longer than 64 KiB'),
      ),
    };
    this.evictUnidentified();
    this.clients.add(client);
    socket.setEncoding('latin1');
    socket.setNoDelay(true);
    socket.on('data', (chunk: string) => {
      client.lastActivity = performance.now();
      // The timeouts are checked here too: under a flood of input the sweep's timer comes late.
      if (this.overdue(client, client.lastActivity)) return;
      if (client.rank !== undefined) this.lastHeard.set(client.rank, client.lastActivity);
      client.lines.push(chunk);
      if (!client.lines.midLine) client.midLineSince = undefined;
      else client.midLineSince ??= client.lastActivity;
    });
    socket.on('error', (e) => this.log.debug(`PMI connection ${this.who(client)}: ${e.message}`));
    socket.on('close', () => this.onClose(client));
  }

  /** Makes room for one more connection that has not said who it is: the oldest such goes. */
  private evictUnidentified(): void {
    const waiting = [...this.clients].filter((c) => c.rank === undefined);
    if (waiting.length < MAX_UNIDENTIFIED) return;
    const oldest = waiting.reduce((a, b) => (a.connectedAt <= b.connectedAt ? a : b));
    this.drop(oldest, `is the oldest of more than ${MAX_UNIDENTIFIED} connections that have not said which rank they are`);
    this.clients.delete(oldest);
  }

  /** Closes connections that never identify, and those that leave a line unfinished for too long. */
  private sweep(): void {
    const now = performance.now();
    for (const c of this.clients) this.overdue(c, now);
  }

  /** Closes `c` (and says true) when it is past the handshake or the line timeout. */
  private overdue(c: Client, now: number): boolean {
    const silent = c.rank === undefined && now - c.connectedAt > this.opts.handshakeTimeoutMs;
    const dribbling = c.midLineSince !== undefined && now - c.midLineSince > this.opts.lineTimeoutMs;
    if (!silent && !dribbling) return false;
    this.drop(c, silent ? `sent no initack within ${this.opts.handshakeTimeoutMs} ms` : `left a line unfinished for ${this.opts.lineTimeoutMs} ms`);
    return true;
  }

  /** Closes a connection for what it did; what it has queued is never read. */
  private drop(c: Client, why: string): void {
    if (c.socket.destroyed) return;
    this.clientLine(`PMI: ${this.who(c)} ${why}; closing its connection`);
    c.socket.destroy();
  }

  private onClose(client: Client): void {
    if (!this.clients.delete(client)) return;
    const rank = client.rank;
    if (rank === undefined) return;
    if (this.byRank.get(rank) === client) this.byRank.delete(rank);
    if (!client.finalized) this.clientLine(`PMI: rank ${rank} closed its connection before finalize`, 'info');
    this.emit('disconnect', rank, client.finalized);
  }

  private onLine(client: Client, raw: string): void {
    if (client.socket.destroyed) return;
    this.lineCount++;
    if (++client.lineCount > MAX_LINES_BEFORE_INITACK && client.rank === undefined) {
      return this.drop(client, `sent ${MAX_LINES_BEFORE_INITACK} lines without initack`);
    }
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (client.mcmd) return this.onMcmdLine(client, line);
    if (line.startsWith('mcmd=')) {
      client.mcmd = [line];
      client.mcmdChars = line.length;
      return;
    }
    if (line.trim() === '') return;
    const command = parseLine(line);
    if (!command) return this.reject(client, 'malformed_command', `a malformed line (${JSON.stringify(line.slice(0, 80))})`);
    try {
      this.dispatch(client, command);
    } catch (e) {
      // A bug of ours must not take the job down with it; answer and keep serving.
      this.log.error(`PMI: ${command.cmd} from ${this.who(client)} failed: ${(e as Error).stack ?? String(e)}`);
      this.send(client, formatReply('error', { rc: -1, msg: 'internal_error' }));
    }
  }

  private onMcmdLine(client: Client, line: string): void {
    const block = client.mcmd!;
    if (line !== MCMD_END) {
      block.push(line);
      client.mcmdChars += line.length;
      if (block.length > MAX_MCMD_LINES || client.mcmdChars > MAX_MCMD_CHARS) {
        client.mcmd = undefined;
        client.mcmdChars = 0;
        this.reject(client, 'mcmd_too_long', `an mcmd block of more than ${MAX_MCMD_LINES} lines or ${MAX_MCMD_CHARS} characters`);
      }
      return;
    }
    client.mcmd = undefined;
    client.mcmdChars = 0;
    const name = block[0]!.slice('mcmd='.length);
    const fields = new Map(block.slice(1).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const));
    if (name !== 'spawn') return this.reject(client, 'unknown_command', `an unknown multi-line command ${JSON.stringify(name.slice(0, 40))}`);
    // A spawn of several apps arrives as several blocks and gets one reply, after the last.
    const total = Number(fields.get('totspawns') ?? 1);
    const sofar = Number(fields.get('spawnssofar') ?? total);
    if (sofar < total) return;
    this.clientLine(`PMI: ${this.who(client)} asked to spawn processes (MPI_Comm_spawn); sfmpirun does not support dynamic processes`);
    this.send(client, formatReply('spawn_result', { rc: -1, msg: 'MPI_Comm_spawn_is_not_supported_by_sfmpirun' }));
  }

  private dispatch(client: Client, { cmd, args }: PmiCommand): void {
    switch (cmd) {
      case 'initack':
        return this.initack(client, args.get('pmiid'));
      case 'init': {
        const version = args.get('pmi_version');
        const ok = version === '1';
        if (!ok) this.clientLine(`PMI: ${this.who(client)} asked for PMI version ${version}; we speak 1.1`);
        return this.send(
          client,
          formatReply('response_to_init', {
            pmi_version: 1,
            pmi_subversion: 1,
            rc: ok ? 0 : -1,
            ...(ok ? {} : { msg: 'only_PMI_version_1_is_supported' }),
          }),
        );
      }
      case 'get_maxes':
        return this.send(client, formatReply('maxes', { kvsname_max: KVSNAME_MAX, keylen_max: KEYLEN_MAX, vallen_max: VALLEN_MAX }));
      case 'get_appnum':
        return this.send(client, formatReply('appnum', { appnum: client.rank === undefined ? 0 : this.opts.appnums[client.rank]! }));
      case 'get_my_kvsname':
        return this.send(client, formatReply('my_kvsname', { kvsname: this.kvsname }));
      case 'get_universe_size':
        return this.send(client, formatReply('universe_size', { size: this.opts.universeSize }));
      case 'put':
        return this.put(client, args);
      case 'get':
        return this.get(client, args);
      case 'barrier_in':
        if (client.rank === undefined) return this.reject(client, 'barrier_needs_initack', 'barrier_in before initack');
        if (!this.barriers.enter(client.rank)) return this.reject(client, 'already_in_barrier', 'a second barrier_in before its barrier_out');
        return;
      case 'finalize':
        return this.finalize(client);
      case 'abort':
        return this.abort(client, args);
      case 'publish_name':
        return this.publish(client, args);
      case 'unpublish_name':
        return this.unpublish(client, args);
      case 'lookup_name':
        return this.lookup(client, args);
      case 'spawn':
        return this.send(client, formatReply('spawn_result', { rc: -1, msg: 'MPI_Comm_spawn_is_not_supported_by_sfmpirun' }));
      default:
        return this.reject(client, 'unknown_command', `an unknown command ${JSON.stringify(cmd.slice(0, 40))}`);
    }
  }

  private initack(client: Client, pmiid: string | undefined): void {
    const rank = pmiid !== undefined && /^\d+$/.test(pmiid) ? Number(pmiid) : NaN;
    if (!(rank >= 0 && rank < this.opts.size)) {
      return this.reject(client, 'bad_pmiid', `initack with pmiid=${JSON.stringify(pmiid ?? '')} (world size ${this.opts.size})`, 'initack');
    }
    if (client.rank !== undefined) return this.reject(client, 'initack_twice', 'a second initack', 'initack');
    const holder = this.byRank.get(rank);
    if (holder) {
      // Two processes claim one rank: the job cannot go right. Said once per rank, whatever else is throttled.
      if (!this.reportedInUse.has(rank)) {
        this.reportedInUse.add(rank);
        const at = `${holder.socket.remoteAddress ?? '?'}:${holder.socket.remotePort ?? '?'}`;
        this.clientLine(`PMI: ${this.who(client)} claims rank ${rank}, which the connection from ${at} already holds; refused`);
      }
      this.badInput++;
      this.send(client, formatReply('initack', { rc: -1, msg: 'pmiid_in_use' }));
      return this.countBad(client);
    }
    client.rank = rank;
    this.byRank.set(rank, client);
    if (this.claimed.has(rank)) {
      // Its earlier connection closed. MPICH never reconnects, so this is another process (or a
      // stray client): count its barriers afresh rather than inherit what the other one entered.
      this.clientLine(`PMI: rank ${rank} connected again after its earlier connection closed; its barriers are counted afresh`);
      this.barriers.rejoin(rank);
      this.finalized.delete(rank);
    }
    this.claimed.add(rank);
    this.lastHeard.set(rank, client.lastActivity);
    const { remoteAddress, remotePort, localAddress, localPort } = client.socket;
    if (remoteAddress && remotePort && localAddress && localPort) {
      this.probe?.track(rank, { rankSide: endpoint(remoteAddress, remotePort), serverSide: endpoint(localAddress, localPort) });
    }
    // Every rank is there: find their processes now, while they initialise, not when a barrier
    // stalls. A lone rank has nobody to stall on (and a job of one rank no helper to pay for).
    if (this.byRank.size === this.opts.size && this.opts.size > 1) void this.probe?.prepare();
    this.send(client, `cmd=initack\ncmd=set size=${this.opts.size}\ncmd=set rank=${rank}\ncmd=set debug=0\n`);
    this.emit('connect', rank);
  }

  private put(client: Client, args: Map<string, string>): void {
    const [kvsname, key, value] = [args.get('kvsname'), args.get('key'), args.get('value') ?? ''];
    if (kvsname !== undefined && kvsname !== this.kvsname) return this.send(client, formatReply('put_result', { rc: -1, msg: 'unknown_kvsname' }));
    if (!key) return this.send(client, formatReply('put_result', { rc: -1, msg: 'missing_key' }));
    if (key.length > KEYLEN_MAX) return this.send(client, formatReply('put_result', { rc: -1, msg: `key_longer_than_${KEYLEN_MAX}` }));
    if (value.length > VALLEN_MAX) return this.send(client, formatReply('put_result', { rc: -1, msg: `value_longer_than_${VALLEN_MAX}` }));
    if (!this.kvs.has(key) && this.kvs.size >= kvsCapacity(this.opts.size)) {
      this.clientLine(`PMI: ${this.who(client)} put more than ${kvsCapacity(this.opts.size)} keys; refused`);
      this.send(client, formatReply('put_result', { rc: -1, msg: 'kvs_full' }));
      return this.countBad(client);
    }
    this.kvs.set(key, value);
    this.send(client, formatReply('put_result', { rc: 0, msg: 'success' }));
  }

  private get(client: Client, args: Map<string, string>): void {
    const [kvsname, key] = [args.get('kvsname'), args.get('key')];
    if (kvsname !== undefined && kvsname !== this.kvsname) return this.send(client, formatReply('get_result', { rc: -1, msg: 'unknown_kvsname' }));
    const value = key === undefined ? undefined : this.kvs.get(key);
    if (value === undefined) return this.send(client, formatReply('get_result', { rc: -1, msg: 'key_not_found' }));
    this.send(client, formatReply('get_result', { rc: 0, msg: 'success', value }));
  }

  private finalize(client: Client): void {
    if (client.rank === undefined) return this.reject(client, 'finalize_needs_initack', 'finalize before initack', 'finalize_ack');
    client.finalized = true;
    this.finalized.add(client.rank);
    this.send(client, formatReply('finalize_ack'));
    this.emit('finalize', client.rank);
  }

  private abort(client: Client, args: Map<string, string>): void {
    if (client.rank === undefined) return this.reject(client, 'abort_needs_initack', 'abort before initack');
    const raw = args.get('exitcode') ?? '1';
    const exitcode = /^-?\d+$/.test(raw) ? Number(raw) : 1;
    const message = (args.get('message') ?? '').replace(/\\(.)/g, '$1');
    this.clientLine(`PMI: rank ${client.rank} called abort with exit code ${exitcode}${message ? `: ${message}` : ''}`, 'info');
    // PMI-1 gives abort no reply: the client exits right after sending it.
    this.emit('abort', client.rank, exitcode, message);
  }

  private publish(client: Client, args: Map<string, string>): void {
    const [service, port] = [args.get('service'), args.get('port')];
    if (!service || port === undefined) return this.send(client, formatReply('publish_result', { rc: -1, info: 'missing_service_or_port', msg: 'missing_service_or_port' }));
    if (this.services.has(service)) return this.send(client, formatReply('publish_result', { rc: -1, info: 'service_already_published', msg: 'service_already_published' }));
    if (service.length > SERVICE_MAX || port.length > VALLEN_MAX) return this.send(client, formatReply('publish_result', { rc: -1, info: 'name_too_long', msg: 'name_too_long' }));
    if (this.services.size >= MAX_SERVICES) return this.send(client, formatReply('publish_result', { rc: -1, info: 'too_many_services', msg: 'too_many_services' }));
    this.services.set(service, port);
    this.send(client, formatReply('publish_result', { rc: 0, info: 'ok', msg: 'success' }));
  }

  private unpublish(client: Client, args: Map<string, string>): void {
    const service = args.get('service');
    if (!service || !this.services.delete(service)) return this.send(client, formatReply('unpublish_result', { rc: -1, info: 'service_not_found', msg: 'service_not_found' }));
    this.send(client, formatReply('unpublish_result', { rc: 0, info: 'ok', msg: 'success' }));
  }

  private lookup(client: Client, args: Map<string, string>): void {
    const port = this.services.get(args.get('service') ?? '');
    if (port === undefined) return this.send(client, formatReply('lookup_result', { rc: -1, info: 'service_not_found', msg: 'service_not_found' }));
    this.send(client, formatReply('lookup_result', { rc: 0, info: 'ok', msg: 'success', port }));
  }

  /** Error reply (under `replyCmd`, default `error`) plus a log line naming the offender. */
  private reject(client: Client, code: string, what: string, replyCmd = 'error'): void {
    this.clientLine(`PMI: ${this.who(client)} sent ${what}; answered with an error`);
    this.send(client, formatReply(replyCmd, { rc: -1, msg: token(code) }));
    this.countBad(client);
  }

  /** One more refused line from `client`; too many, and it is closed. */
  private countBad(client: Client): void {
    if (++client.badLines >= MAX_BAD_LINES_PER_CONNECTION) this.drop(client, `sent ${MAX_BAD_LINES_PER_CONNECTION} bad lines`);
  }

  /**
   * A line about what a client did (bad input, a refused request, a rank gone early). Clients
   * decide how many there are, so after MAX_CLIENT_LINES of them one line says so and the rest
   * are only counted: a hostile or broken client cannot flood the job's stderr.
   */
  private clientLine(text: string, level: 'warn' | 'info' = 'warn'): void {
    this.badInput++;
    if (this.badInput <= MAX_CLIENT_LINES) this.log[level](text);
    else if (this.badInput === MAX_CLIENT_LINES + 1) this.log.warn(`PMI: more than ${MAX_CLIENT_LINES} lines about clients; further bad input is not logged`);
  }

  private send(client: Client | undefined, text: string): void {
    if (!client || client.socket.destroyed || !client.socket.writable) return;
    // A client that sends without reading would make us buffer its replies without bound.
    if (client.socket.writableLength > MAX_UNREAD_REPLIES) return this.drop(client, 'does not read its replies');
    client.socket.write(text, 'latin1');
  }

  private who(client: Client): string {
    return client.rank !== undefined ? `rank ${client.rank}` : `unidentified client ${client.socket.remoteAddress ?? '?'}:${client.socket.remotePort ?? '?'}`;
  }
}
