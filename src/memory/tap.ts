/**
 * The memtap of one clone host (native/memory/memtap.c): a FUSE mount whose `ram` file is the
 * RAM of every clone of the template on that host (QEMU maps it with share=off) and whose `state`
 * file is the template's device state. Pages come from the ticket's memserver on demand.
 *
 * Resources of the ticket, recorded before they exist: the mount (teardown unmounts it lazily,
 * in the host's mount namespace, whatever state memtap left it in) and the process (behind the
 * gate of helper.ts, on a lifeline to its owner unless the ticket is kept). memtap unmounts on
 * every exit it sees; after a SIGKILL the record's mount entry takes the dead mount down.
 */
import { join } from 'node:path';
import { ProvisionError } from '../common/errors.js';
import type { Resource } from '../ticket/resources.js';
import { Helper, nativeProgram } from './helper.js';
import { enterPrefix, type SimulatedHost } from './place.js';

export type FillMode = 'none' | 'seq' | 'ws' | 'ws-only';

export interface TapOptions {
  nativeDir: string;
  /** The descriptor, at a path the clone host sees. */
  descriptor: string;
  /** The memserver's ADDR:PORT. */
  server: string;
  token: string;
  /** Where to mount; memtap creates the directory when it is missing (and removes it then). */
  mountpoint: string;
  /** Records the mount and the process before they exist (the ticket's record). */
  record: (r: Resource) => Promise<void>;
  /** Names the ticket in the process record. */
  ticket?: string;
  /** A kept ticket's memtap outlives this process; any other is on a lifeline to it. */
  kept?: boolean;
  /** Runs in a simulated host's network and mount namespaces (tests, benchmarks). */
  host?: SimulatedHost;
  /** This host's name in memtap's messages (default: the simulated host's, or the hostname). */
  hostName?: string;
  /**
   * Background fill: the recorded working set, then everything else (ws, the default); the working
   * set only, the rest on demand (ws-only, REAP); everything in order (seq); demand only (none).
   */
  fill?: FillMode;
  fillDelayMs?: number;
  fillBatch?: number;
  /** How long a fault may wait for the memserver before memtap fails it. */
  timeoutMs?: number;
  /** Poll the memserver's socket this long while a fault waits, before sleeping, while a CPU is free (memtap's default if unset; 0: never). */
  spinUs?: number;
  /** Poll even when every CPU has work (benchmarks). */
  spinAlways?: boolean;
  /** Reply to reads by splicing from a memfd store instead of writing from memory (benchmarks). */
  splice?: boolean;
  /**
   * The ticket's group, where the memserver pushes the working set (or all of the template) and
   * what other hosts fault on (its port is the memserver's): the push replaces the fill. Without
   * multicast on the network memtap says so and fills by unicast.
   */
  multicastGroup?: string;
  /** Called with memtap's one-line reason when it fails (memserver gone, checksum, timeout). */
  onFailure?: (reason: string) => void;
}

export interface TapCounters {
  host: string;
  granuleSize: number;
  guestPages: number;
  dataPages: number;
  zeroPages: number;
  reads: number;
  readsHit: number;
  readsWaited: number;
  readsFailed: number;
  readBytes: number;
  maxRead: number;
  readSizes: { '4K': number; to64K: number; to1M: number; above1M: number };
  /** Zero pages answered locally: fetches the page map avoided. */
  zeroPagesServed: number;
  /** Data pages received (demand + fill): each at most once per host. */
  pagesFetched: number;
  demandPages: number;
  fillPages: number;
  demandGranules: number;
  fillGranules: number;
  demandRequests: number;
  bytesReceived: number;
  checksumFailures: number;
  refetches: number;
  waitedOnFill: number;
  /** Faults whose answer memtap polled for (a CPU was free). */
  spins: number;
  storedGranules: number;
  storeErrors: number;
  faults: number;
  faultP50Us: number;
  faultP99Us: number;
  faultMaxUs: number;
  hitP50Us: number;
  hitP99Us: number;
  fill: 'idle' | 'running' | 'done' | 'failed' | 'stopped';
  fillMs: number;
  /** Granules of the recorded working set, fetched first. */
  wsGranules: number;
  /** Data pages stored from the memserver's multicast push (counted in pagesFetched too). */
  pushPages: number;
  /** The receiver of the push (null: unicast only). */
  multicast: ReceiverCounters | null;
  failed: string | null;
}

/** The multicast receiver's figures (native/memory/multicast.c). */
export interface ReceiverCounters {
  datagrams: number;
  /** Everything that arrived from the group (and the end game's unicast), UDP payload bytes. */
  bytes: number;
  granules: number;
  granuleBytes: number;
  duplicates: number;
  authFailures: number;
  foreign: number;
  checksumFailures: number;
  refused: number;
  nackEntries: number;
  demands: number;
  overflows: number;
  have: number;
  need: number;
  /** From joining until all the push brings was here (-1: not yet). */
  completeMs: number;
  complete: boolean;
  /** Why the push stopped short (memtap went on by unicast), or "". */
  error: string;
}

export class MemTap {
  private failure: string | null = null;
  /** Resolves, once, with memtap's one line when it fails or dies while it should be serving. */
  readonly failed: Promise<string>;
  private reportFailure!: (line: string) => void;
  private stopping = false;

  private constructor(
    private readonly helper: Helper,
    readonly mountpoint: string,
    readonly hostName: string,
  ) {
    let settled = false;
    this.failed = new Promise((res) => {
      this.reportFailure = (line) => {
        if (!settled) res(line);
        settled = true;
      };
    });
    void helper.exited.then((x) => {
      if (this.stopping) return;
      this.reportFailure(this.failure ?? `memtap of host ${hostName} ${x.signal ? `was killed by ${x.signal}` : `exited with code ${x.code}`}${helper.lastError() ? `: ${helper.lastError()}` : ''}`);
    });
  }

  /** The file QEMU maps as guest RAM (memory-backend-file,mem-path=...,share=off). */
  get ramPath(): string {
    return join(this.mountpoint, 'ram');
  }

  /** The device state, which QEMU reads on an inherited fd (migrate-incoming fd:3; see clone.ts). */
  get statePath(): string {
    return join(this.mountpoint, 'state');
  }

  get pid(): number {
    return this.helper.pid;
  }

  get running(): boolean {
    return this.helper.running;
  }

  /** memtap's one-line reason, once it failed. */
  get failedWith(): string | null {
    return this.failure;
  }

  static async start(o: TapOptions): Promise<MemTap> {
    const argv = [nativeProgram(o.nativeDir, 'memtap'), '--desc', o.descriptor, '--server', o.server, '--mount', o.mountpoint];
    argv.push('--fill', o.fill ?? 'ws');
    if (o.fillDelayMs !== undefined) argv.push('--fill-delay', String(o.fillDelayMs));
    if (o.fillBatch !== undefined) argv.push('--fill-batch', String(o.fillBatch));
    if (o.timeoutMs !== undefined) argv.push('--timeout', String(o.timeoutMs));
    if (o.spinUs !== undefined) argv.push('--spin-us', String(o.spinUs));
    if (o.spinAlways) argv.push('--spin-always');
    if (o.splice) argv.push('--splice');
    if (o.multicastGroup) argv.push('--mcast-group', o.multicastGroup);
    const hostName = o.hostName ?? o.host?.name;
    if (hostName) argv.push('--host', hostName);
    if (o.kept) argv.push('--stay');
    // The mount first: the record must name it before memtap can make it.
    await o.record({ kind: 'mount', path: o.mountpoint, ...(o.host ? { ns: { pid: o.host.pid, start: o.host.start } } : {}) });
    let tap: MemTap | null = null;
    const { helper } = await Helper.start(argv, {
      label: `memtap${hostName ? ` of host ${hostName}` : ''}`,
      token: o.token,
      readyPrefix: 'ready ',
      timeoutMs: (o.timeoutMs ?? 5000) + 30_000,
      prefix: enterPrefix(o.host, ['net', 'mnt']),
      ...(o.kept ? {} : { lifeline: o.nativeDir }),
      record: (pid, start) => o.record({ kind: 'process', pid, start, what: `memtap ${o.ticket ?? ''}`.trim() }),
      onEvent: (line) => {
        if (!line.startsWith('failed ') || !tap || tap.failure) return;
        tap.failure = line.slice('failed '.length);
        o.onFailure?.(tap.failure);
        tap.reportFailure(tap.failure);
      },
    });
    if (o.kept) helper.unref();
    tap = new MemTap(helper, o.mountpoint, hostName ?? 'this host');
    return tap;
  }

  async counters(): Promise<TapCounters> {
    const line = await this.helper.request('counters', 'counters ');
    return JSON.parse(line.slice('counters '.length)) as TapCounters;
  }

  /** Resolves when the background fill has every data granule (or throws when memtap failed). */
  async filled(timeoutMs: number): Promise<void> {
    if (this.helper.sawEvent('filled')) return;
    await this.helper.next('filled', timeoutMs);
  }

  /**
   * Stops memtap (it unmounts). Exit code 3 says it had failed (and said why when it did);
   * anything else but 0 is a fault of memtap itself. The record's mount entry stays: teardown
   * finds nothing left to unmount.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    const x = await this.helper.stop();
    if (x.signal === null && x.code !== 0 && x.code !== 3) {
      throw new ProvisionError(`memtap of host ${this.hostName} exited with code ${x.code}: ${this.helper.lastError()}`);
    }
  }

  /** SIGKILL, for tests of an owner that dies: the mount must still go (teardown's lazy unmount). */
  kill(): void {
    this.helper.kill('SIGKILL');
  }

  get exited() {
    return this.helper.exited;
  }
}
