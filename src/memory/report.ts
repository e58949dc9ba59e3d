/**
 * Memory figures of a job that used memory on demand, as `--report` carries them (issue 11): for
 * each clone host, its guest pages, the pages it fetched, the pages the heuristics spared it, the
 * bytes it received; for each memserver, the bytes it sent. Collected from the live helpers'
 * counters (memtap and memserver answer "counters" on their control channel), before teardown.
 */
import type { ServerCounters } from './server.js';
import type { TapCounters } from './tap.js';

export interface MemoryHostFigures {
  host: string;
  /** Pages of guest RAM (4 KiB). */
  guestPages: number;
  /** Data pages this host received from the memserver (demand, fill and push): each at most once. */
  pagesFetched: number;
  /** Of those, on demand (a clone waited), by the background fill, and from the multicast push. */
  demandPages: number;
  fillPages: number;
  pushPages: number;
  /**
   * Pages never fetched because the descriptor maps them zero, by heuristic: never touched by the
   * guest (holes of the template's RAM file), and freed by the guest kernel under init_on_free=1.
   * Of every zero page, those the clones did read were answered on this host (zeroPagesServed).
   */
  pagesAvoided: { untouched: number; freed: number };
  zeroPagesServed: number;
  /** Everything that came from the memserver: unicast, and the multicast push (of which, multicastBytes). */
  bytesReceived: number;
  multicastBytes: number;
  /** Datagrams of the group refused: another ticket's or a forger's (MAC), or damaged (checksum). */
  multicastRefused: number;
  /** The push: all it pushes here, the working set or all of it (false also when the job ended first, or it stopped short). */
  pushComplete: boolean | null;
  /** Fault latency on this host's memtap (reads that waited for the network), microseconds. */
  faultP50Us: number;
  faultP99Us: number;
  /** memtap's one line when it failed. */
  failed: string | null;
}

export interface MemoryServerFigures {
  address: string;
  /** Everything sent: unicast, and to the ticket's group (of which, multicastBytes). */
  bytesSent: number;
  multicastBytes: number;
  dataBytes: number;
  clients: number;
  /** The group it pushed to, when it did. */
  multicast: { group: string; receivers: number; pushSet: number; passes: number; allComplete: boolean; pushMs: number } | null;
}

export interface MemoryFigures {
  hosts: MemoryHostFigures[];
  servers: MemoryServerFigures[];
}

/** The descriptor's counts of zero pages by heuristic (DescriptorInfo's holePages, zeroedPages). */
export interface AvoidedPages {
  holePages: number;
  zeroedPages: number;
}

export function hostFigures(c: TapCounters, avoided: AvoidedPages): MemoryHostFigures {
  return {
    host: c.host,
    guestPages: c.guestPages,
    pagesFetched: c.pagesFetched,
    demandPages: c.demandPages,
    fillPages: c.fillPages,
    pushPages: c.pushPages,
    pagesAvoided: { untouched: avoided.holePages, freed: avoided.zeroedPages },
    zeroPagesServed: c.zeroPagesServed,
    bytesReceived: c.bytesReceived + (c.multicast?.bytes ?? 0),
    multicastBytes: c.multicast?.bytes ?? 0,
    multicastRefused: c.multicast ? c.multicast.authFailures + c.multicast.foreign + c.multicast.checksumFailures : 0,
    pushComplete: c.multicast ? c.multicast.complete : null,
    faultP50Us: c.faultP50Us,
    faultP99Us: c.faultP99Us,
    failed: c.failed,
  };
}

export function serverFigures(address: string, c: ServerCounters, group?: string): MemoryServerFigures {
  const m = c.multicast;
  return {
    address,
    bytesSent: c.bytesSent + (m?.bytes ?? 0),
    multicastBytes: m?.bytes ?? 0,
    dataBytes: c.dataBytes,
    clients: c.accepted,
    multicast: m && group ? { group, receivers: m.receivers, pushSet: m.pushSet, passes: m.passes, allComplete: m.allComplete, pushMs: m.pushMs } : null,
  };
}

/** Longest readSettled waits for the counters to stop moving, and the pause between two reads. */
const SETTLE_MS = 1000;
const SETTLE_STEP_MS = 50;

/** What must agree between two reads: every host's pages fetched and every server's data sent. */
function moving(f: MemoryFigures | null): string {
  return f ? JSON.stringify([f.hosts.map((h) => [h.host, h.pagesFetched, h.bytesReceived]), f.servers.map((s) => [s.address, s.dataBytes, s.bytesSent])]) : 'none';
}

/**
 * The figures once two reads 50 ms apart agree (within a second; the last read otherwise). The
 * helpers are read while the clones still run, on several hosts at once: a page the memserver has
 * sent and a memtap not yet counted made the report's sums disagree (server data 6 pages more than
 * the hosts' pages, once in a CI run), and a report that does not add up is not one to parse.
 */
export async function readSettled(read: () => Promise<MemoryFigures | null>): Promise<MemoryFigures | null> {
  const until = performance.now() + SETTLE_MS;
  let last = await read();
  while (last && performance.now() < until) {
    await new Promise((r) => setTimeout(r, SETTLE_STEP_MS));
    const now = await read();
    if (moving(now) === moving(last)) return now;
    last = now;
  }
  return last;
}
