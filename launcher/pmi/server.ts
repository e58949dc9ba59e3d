/**
 * Our PMI-1 process manager: the TCP server MPICH ranks talk to during MPI_Init, MPI_Finalize,
 * MPI_Abort and name publishing. One server per job: one key-value space, one set of barriers,
 * one name service. Ranks find it through PMI_PORT and say who they are with PMI_ID (initack).
 *
 * The server never trusts its clients: a malformed, unknown, overlong or binary line gets an
 * error reply and the connection stays usable; a client vanishing mid-barrier is reported as an
 * event; nothing a client sends can throw out of here.
 */
import { EventEmitter } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import { logger, type Logger } from '../../src/log.js';
import { BarrierRounds } from './barrier.js';
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
  log?: Logger;
}

/** The limits we announce in get_maxes, as Hydra does. */
export const KVSNAME_MAX = 256;
export const KEYLEN_MAX = 64;
export const VALLEN_MAX = 1024;

/** Bytes of replies a client may leave unread before we drop it. */
const MAX_UNREAD_REPLIES = 4 * 1024 * 1024;

/** The first line of a multi-line command ends at this line. */
const MCMD_END = 'endcmd';

interface Client {
  socket: Socket;
  /** Set by initack. */
  rank?: number;
  finalized: boolean;
  lastActivity: number;
  /** Lines of an mcmd=... block being collected. */
  mcmd?: string[];
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
  private readonly opts: Required<Omit<PmiServerOptions, 'log' | 'appnums'>> & { appnums: number[] };
  private readonly log: Logger;
  private readonly kvs = new Map<string, string>();
  private readonly services = new Map<string, string>();
  private readonly clients = new Set<Client>();
  private readonly byRank = new Map<number, Client>();
  /** Ranks that have ever connected, and when each last spoke (for the watchdog). */
  private readonly lastHeard = new Map<number, number>();
  private readonly finalized = new Set<number>();
  private readonly barriers: BarrierRounds;
  private server?: Server;
  private address?: { host: string; port: number };

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
    };
    this.log = opts.log ?? logger('pmi');
    this.kvsname = `kvs_${process.pid}_${randomBytes(4).toString('hex')}`;
    this.kvs.set('PMI_process_mapping', opts.processMapping);
    this.barriers = new BarrierRounds(opts.size, this.opts.finalizeTimeoutMs, {
      release: (rank) => this.send(this.byRank.get(rank), formatReply('barrier_out')),
      watchdog: (round, missing, waited) =>
        this.log.warn(
          `PMI barrier ${round} released by the finalize watchdog after ${Math.round(waited)} ms without rank(s) ${missing.join(',')} ` +
            '(the known MPICH/UCX finalize hang)',
        ),
      quietSince: (rank, since) => {
        const heard = this.lastHeard.get(rank);
        return heard !== undefined && heard <= since;
      },
    });
  }

  /** Starts listening; resolves to the bound port (an ephemeral one when `port` is 0 or absent). */
  listen(host: string, port = 0): Promise<number> {
    if (this.server) return Promise.reject(new Error('PmiServer: already listening'));
    const server = createServer({ noDelay: true }, (socket) => this.accept(socket));
    // Each rank connects once; the margin covers reconnects and probes, not a flood.
    server.maxConnections = 2 * this.opts.size + 64;
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port, backlog: 1024 }, () => {
        server.off('error', reject);
        server.on('error', (e) => this.log.warn(`PMI server error: ${e.message}`));
        const bound = server.address();
        if (!bound || typeof bound === 'string') return reject(new Error('PmiServer: no TCP address'));
        this.address = { host, port: bound.port };
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
    if (!this.address) throw new Error('PmiServer: rankEnv before listen');
    if (!Number.isInteger(rank) || rank < 0 || rank >= this.opts.size) throw new Error(`PmiServer: no rank ${rank}`);
    return {
      PMI_PORT: `${this.address.host}:${this.address.port}`,
      PMI_ID: String(rank),
      PMI_RANK: String(rank),
      PMI_SIZE: String(this.opts.size),
    };
  }

  /** Ranks that have sent finalize, in order. */
  finalizedRanks(): number[] {
    return [...this.finalized].sort((a, b) => a - b);
  }

  async close(): Promise<void> {
    this.barriers.close();
    for (const c of this.clients) c.socket.destroy();
    this.clients.clear();
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private accept(socket: Socket): void {
    const client: Client = { socket, finalized: false, lastActivity: performance.now() };
    this.clients.add(client);
    socket.setEncoding('latin1');
    socket.setNoDelay(true);
    const lines = new LineSplitter(
      (line) => this.onLine(client, line),
      () => this.reject(client, 'line_too_long', 'a line longer than 64 KiB'),
    );
    socket.on('data', (chunk: string) => {
      client.lastActivity = performance.now();
      if (client.rank !== undefined) this.lastHeard.set(client.rank, client.lastActivity);
      lines.push(chunk);
    });
    socket.on('error', (e) => this.log.debug(`PMI connection ${this.who(client)}: ${e.message}`));
    socket.on('close', () => this.onClose(client));
  }

  private onClose(client: Client): void {
    if (!this.clients.delete(client)) return;
    const rank = client.rank;
    if (rank === undefined) return;
    if (this.byRank.get(rank) === client) this.byRank.delete(rank);
    if (!client.finalized) this.log.info(`PMI: rank ${rank} closed its connection before finalize`);
    this.emit('disconnect', rank, client.finalized);
  }

  private onLine(client: Client, raw: string): void {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (client.mcmd) return this.onMcmdLine(client, line);
    if (line.startsWith('mcmd=')) {
      client.mcmd = [line];
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
      if (block.length > 10_000) {
        client.mcmd = undefined;
        this.reject(client, 'mcmd_too_long', 'an mcmd block of more than 10000 lines');
      }
      return;
    }
    client.mcmd = undefined;
    const name = block[0]!.slice('mcmd='.length);
    const fields = new Map(block.slice(1).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)] as const));
    if (name !== 'spawn') return this.reject(client, 'unknown_command', `an unknown multi-line command ${JSON.stringify(name.slice(0, 40))}`);
    // A spawn of several apps arrives as several blocks and gets one reply, after the last.
    const total = Number(fields.get('totspawns') ?? 1);
    const sofar = Number(fields.get('spawnssofar') ?? total);
    if (sofar < total) return;
    this.log.warn(`PMI: ${this.who(client)} asked to spawn processes (MPI_Comm_spawn); sfmpirun does not support dynamic processes`);
    this.send(client, formatReply('spawn_result', { rc: -1, msg: 'MPI_Comm_spawn_is_not_supported_by_sfmpirun' }));
  }

  private dispatch(client: Client, { cmd, args }: PmiCommand): void {
    switch (cmd) {
      case 'initack':
        return this.initack(client, args.get('pmiid'));
      case 'init': {
        const version = args.get('pmi_version');
        const ok = version === '1';
        if (!ok) this.log.warn(`PMI: ${this.who(client)} asked for PMI version ${version}; we speak 1.1`);
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
        return this.barriers.enter(client.rank);
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
    if (holder) return this.reject(client, 'pmiid_in_use', `initack for rank ${rank}, which is already connected`, 'initack');
    client.rank = rank;
    this.byRank.set(rank, client);
    this.lastHeard.set(rank, client.lastActivity);
    this.send(client, `cmd=initack\ncmd=set size=${this.opts.size}\ncmd=set rank=${rank}\ncmd=set debug=0\n`);
    this.emit('connect', rank);
  }

  private put(client: Client, args: Map<string, string>): void {
    const [kvsname, key, value] = [args.get('kvsname'), args.get('key'), args.get('value') ?? ''];
    if (kvsname !== undefined && kvsname !== this.kvsname) return this.send(client, formatReply('put_result', { rc: -1, msg: 'unknown_kvsname' }));
    if (!key) return this.send(client, formatReply('put_result', { rc: -1, msg: 'missing_key' }));
    if (key.length > KEYLEN_MAX) return this.send(client, formatReply('put_result', { rc: -1, msg: `key_longer_than_${KEYLEN_MAX}` }));
    if (value.length > VALLEN_MAX) return this.send(client, formatReply('put_result', { rc: -1, msg: `value_longer_than_${VALLEN_MAX}` }));
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
    this.log.info(`PMI: rank ${client.rank} called abort with exit code ${exitcode}${message ? `: ${message}` : ''}`);
    // PMI-1 gives abort no reply: the client exits right after sending it.
    this.emit('abort', client.rank, exitcode, message);
  }

  private publish(client: Client, args: Map<string, string>): void {
    const [service, port] = [args.get('service'), args.get('port')];
    if (!service || port === undefined) return this.send(client, formatReply('publish_result', { rc: -1, info: 'missing_service_or_port', msg: 'missing_service_or_port' }));
    if (this.services.has(service)) return this.send(client, formatReply('publish_result', { rc: -1, info: 'service_already_published', msg: 'service_already_published' }));
    if (this.services.size >= 10_000) return this.send(client, formatReply('publish_result', { rc: -1, info: 'too_many_services', msg: 'too_many_services' }));
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
    this.log.warn(`PMI: ${this.who(client)} sent ${what}; answered with an error`);
    this.send(client, formatReply(replyCmd, { rc: -1, msg: token(code) }));
  }

  private send(client: Client | undefined, text: string): void {
    if (!client || client.socket.destroyed || !client.socket.writable) return;
    // A client that sends without reading would make us buffer its replies without bound.
    if (client.socket.writableLength > MAX_UNREAD_REPLIES) {
      this.log.warn(`PMI: ${this.who(client)} does not read its replies; closing its connection`);
      client.socket.destroy();
      return;
    }
    client.socket.write(text, 'latin1');
  }

  private who(client: Client): string {
    return client.rank !== undefined ? `rank ${client.rank}` : `unidentified client ${client.socket.remoteAddress ?? '?'}:${client.socket.remotePort ?? '?'}`;
  }
}
