/**
 * The seam between hosts for memory on demand: what the parent's host hands a clone host so that
 * clones of a template start there without its RAM file (SnowFlock's VM descriptor and memserver
 * address). The parent's host makes it (Engine.serveMemory: a memserver for the ticket, a token of
 * the ticket's own); the host agents carry it, the descriptor file included; the clone host gives
 * it to its engine as the checkpoint source's `memory` (CheckpointSource.memory), and the vm
 * provider starts one memtap on the host and the clones on it.
 */
import type { SimulatedHost } from './place.js';

export interface MemorySource {
  /** The memserver's ADDR:PORT, as this host reaches it (the underlay). */
  server: string;
  /** The ticket's token (64 hex digits), which the memserver and its memtaps prove to each other. */
  token: string;
  /** The template's memory descriptor, on this host (shipped by the agent; tens of KB). */
  descriptor: string;
  /**
   * Simulated clone hosts of this machine (tests and benchmarks: src/memory/testbed.ts): the clones
   * are split over them in equal blocks, in order, each host with its memtap. Unset: this host.
   */
  hosts?: SimulatedHost[];
  /** This host's name in memtap's lines and figures (the job's name of the host; default: its hostname). */
  hostName?: string;
  /** The ticket's multicast group, where the memserver pushes the template (unset: unicast only). */
  multicast?: { group: string };
}

/** What Engine.serveMemory gives the caller to hand to clone hosts. */
export interface MemoryOffer {
  server: string;
  token: string;
  /** The descriptor on the parent's host: the file to ship. */
  descriptor: string;
  /** The ticket's group, when the memserver pushes to it. */
  multicast?: { group: string };
}

/** How Engine.serveMemory serves: where, and whether it pushes by multicast. */
export interface ServeOptions {
  /** ADDR:PORT the memserver listens on (port 0: any free one): this host's underlay address. */
  listen: string;
  /** A simulated parent's host (tests, benchmarks): the memserver runs in its network namespace. */
  host?: SimulatedHost;
  /**
   * Push the template once to every clone host over multicast, on a group of the ticket's own,
   * starting when this many memtaps joined (the clone hosts); unset: each host fetches by unicast.
   */
  multicast?: { receivers: number };
}
