/**
 * The memserver of a ticket, on the parent's host: serves the template's frozen RAM to the
 * memtaps of the ticket's clone hosts (native/memory/memserver.c). It listens on the underlay
 * address the caller gives, checks the RAM file against the descriptor before it serves, and
 * admits only memtaps that prove the ticket's token. It is a resource of the ticket: recorded
 * before it runs, on a lifeline to its owner unless the ticket is kept.
 *
 * The working set: the memserver records the pages the clones faulted on, in order, and writes
 * them next to the template (worksetPath) when it stops, and whenever its last memtap leaves, so
 * that the next memserver of the template hands them to its memtaps as their fill order (REAP).
 */
import { randomBytes } from 'node:crypto';
import { ProvisionError } from '../common/errors.js';
import type { Resource } from '../ticket/resources.js';
import { Helper, nativeProgram } from './helper.js';
import { enterPrefix, type SimulatedHost } from './place.js';

/** A fresh per-ticket secret for the memserver's hello (hex, 32 bytes). */
export function newToken(): string {
  return randomBytes(32).toString('hex');
}

/**
 * A fresh multicast group for a ticket's push, in the organization-local scope 239.192.0.0/14
 * (RFC 2365), whose MAC addresses never alias 224.0.0.x's (which every switch floods). Two tickets
 * drawing the same group stay apart anyway: each listens on its own memserver's port, and every
 * datagram carries a MAC under its ticket's token.
 */
export function newGroup(): string {
  const [a, b, c] = randomBytes(3);
  return `239.${192 + (a! & 3)}.${b}.${c! === 0 ? 1 : c}`;
}

export interface ServerOptions {
  nativeDir: string;
  descriptor: string;
  ram: string;
  /** ADDR:PORT on the underlay; port 0 picks one. */
  listen: string;
  token: string;
  /** A working set recorded earlier, handed to memtaps for their fill order. */
  workset?: string;
  /** Where to record this run's working set. */
  recordWorkset?: string;
  /** Records the process before it runs (the ticket's record). */
  record?: (r: Resource) => Promise<void>;
  /** Names the ticket in the process record and in messages. */
  ticket?: string;
  /** A kept ticket's memserver outlives this process; any other is on a lifeline to it. */
  kept?: boolean;
  /** Runs in a simulated host's network namespace (tests, benchmarks). */
  host?: SimulatedHost;
  /** Skip the check of the RAM file against the descriptor (benchmarks that start many). */
  noVerify?: boolean;
  /** Poll this long after serving a fault, while a CPU is free (memserver's default if unset; 0: never). */
  spinUs?: number;
  /**
   * Push the template to the ticket's group (native/mcast) from the listen address and port, once
   * `receivers` memtaps joined: its recorded working set (push 'ws', the default; all of it while
   * none is recorded) or all of it; `rate` caps it (bytes/s; the sender's default otherwise).
   */
  multicast?: { group: string; receivers: number; rate?: number; push?: 'ws' | 'all' };
  timeoutMs?: number;
}

export interface ServerCounters {
  clients: number;
  accepted: number;
  refusedAuth: number;
  refusedTemplate: number;
  refusedVersion: number;
  helloTimeouts: number;
  errors: number;
  requests: number;
  ranges: number;
  granulesSent: number;
  demandGranules: number;
  fillGranules: number;
  zeroRequests: number;
  dataBytes: number;
  bytesSent: number;
  sendfileCalls: number;
  corrupted: number;
  /** Data granules sent that had been sent before (to any memtap): with one host, a fetch twice. */
  resent: number;
  recordedPages: number;
  granuleSize: number;
  /** The push to the ticket's group (null: unicast only). */
  multicast: SenderCounters | null;
}

/** The multicast sender's figures (native/memory/multicast.c). */
export interface SenderCounters {
  datagrams: number;
  /** Everything sent to the group or, in the end game, to one receiver: UDP payload bytes. */
  bytes: number;
  pushGranules: number;
  pushBytes: number;
  pushUnicast: number;
  repairGroup: number;
  repairUnicast: number;
  demandGranules: number;
  suppressed: number;
  nackEntries: number;
  authFailures: number;
  foreign: number;
  passes: number;
  /** Granules the push goes round: the recorded working set, or every data granule. */
  pushSet: number;
  receivers: number;
  live: number;
  complete: number;
  dead: number;
  rate: number;
  rateCuts: number;
  /** From the push's start until every live receiver had all it pushes (-1: not yet). */
  pushMs: number;
  allComplete: boolean;
  error: string;
}

export class MemServer {
  /** Resolves, once, with one line when the memserver dies while it should be serving. */
  readonly failed: Promise<string>;
  private stopping = false;

  private constructor(
    private readonly helper: Helper,
    /** The address memtaps connect to. */
    readonly address: string,
    readonly label: string,
    /** The ticket's group it pushes to, or undefined (unicast only). */
    readonly group: string | undefined,
  ) {
    this.failed = helper.exited.then((x) => {
      if (this.stopping) return new Promise<string>(() => undefined);
      return `${label} ${x.signal ? `was killed by ${x.signal}` : `exited with code ${x.code}`}${helper.lastError() ? `: ${helper.lastError()}` : ''}`;
    });
  }

  static async start(o: ServerOptions): Promise<MemServer> {
    const argv = [nativeProgram(o.nativeDir, 'memserver'), '--desc', o.descriptor, '--ram', o.ram, '--listen', o.listen];
    if (o.workset) argv.push('--ws', o.workset);
    if (o.recordWorkset) argv.push('--record-ws', o.recordWorkset);
    if (o.noVerify) argv.push('--no-verify');
    if (o.spinUs !== undefined) argv.push('--spin-us', String(o.spinUs));
    if (o.kept) argv.push('--stay');
    if (o.multicast) {
      argv.push('--mcast-group', o.multicast.group, '--mcast-receivers', String(o.multicast.receivers));
      if (o.multicast.rate) argv.push('--mcast-rate', String(o.multicast.rate));
      if (o.multicast.push) argv.push('--mcast-push', o.multicast.push);
    }
    const where = o.host ? ` on host ${o.host.name}` : '';
    const label = `the memserver${o.ticket ? ` of ticket ${o.ticket}` : ''}${where} (${o.listen})`;
    const { helper, ready } = await Helper.start(argv, {
      label,
      token: o.token,
      readyPrefix: 'listening ',
      timeoutMs: o.timeoutMs ?? 60_000,
      prefix: enterPrefix(o.host, ['net']),
      ...(o.kept ? {} : { lifeline: o.nativeDir }),
      ...(o.record ? { record: (pid: number, start: number) => o.record!({ kind: 'process', pid, start, what: `memserver ${o.ticket ?? ''}`.trim() }) } : {}),
    });
    if (o.kept) helper.unref();
    const address = ready.slice('listening '.length).trim();
    return new MemServer(helper, address, label.replace(o.listen, address), o.multicast?.group);
  }

  get pid(): number {
    return this.helper.pid;
  }

  get running(): boolean {
    return this.helper.running;
  }

  get exited() {
    return this.helper.exited;
  }

  async counters(): Promise<ServerCounters> {
    const line = await this.helper.request('counters', 'counters ');
    return JSON.parse(line.slice('counters '.length)) as ServerCounters;
  }

  /** Writes the recorded working set now; returns how many pages it holds. */
  async saveWorkset(): Promise<number> {
    const line = await this.helper.request('save-ws', 'saved-ws ');
    return Number(line.split(' ')[1]);
  }

  /**
   * Damages the next transmission of granule g, or of whichever data granule goes out next (one
   * bit flipped on the wire): for tests that a memtap refuses a granule whose checksum does not
   * match and fetches it again.
   */
  async corruptNext(g: number | 'any'): Promise<void> {
    await this.helper.request(`corrupt ${g === 'any' ? 'next' : g}`, `corrupt `);
  }

  /** Kills it without warning (tests of a memserver dying mid-job). */
  kill(): void {
    this.helper.kill('SIGKILL');
  }

  /** Stops it (it writes the working set first). */
  async stop(): Promise<void> {
    this.stopping = true;
    const x = await this.helper.stop();
    if (x.code !== 0 && x.code !== null && x.signal === null) {
      throw new ProvisionError(`${this.label} stopped with code ${x.code}: ${this.helper.lastError()}`);
    }
  }
}
