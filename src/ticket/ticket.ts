/**
 * The ticket: SnowFlock's sf_request_ticket(n), a grant of m <= n clones with the private network
 * they will share. Its id names every resource it creates on the host (see names.ts); its state
 * record (record.ts) lists those resources before they exist; teardown.ts removes them.
 */
import type { TicketNetwork } from '../network/network.js';
import type { CheckpointSource } from '../providers/checkpoint.js';
import type { ProviderChoice, ProviderName } from '../providers/provider.js';

/** Ticket ids: 6 lowercase hex characters. */
export const TICKET_ID = /^[0-9a-f]{6}$/;

export interface Ticket {
  /** Short lowercase hex id, unique among live tickets; appears in every resource name. */
  id: string;
  provider: ProviderName;
  requested: number;
  granted: number;
  /** Why fewer than requested were granted, when they were. */
  reason?: string;
  network: TicketNetwork;
  /** Host TCP ports the ticket's clones may reach on the gateway (opened with Engine.openPort). */
  openPorts: number[];
  /** True for `snowflock up` and --keep: the ticket outlives its creating process until `down`. */
  kept: boolean;
  /**
   * Host directories the clones see at the same paths, read-write (the job's working directories):
   * netns clones see the host's files anyway; VM clones mount these from a file server of the
   * ticket on its gateway (src/workdir/).
   */
  shared: string[];
  /** Its network was made ahead by this host's warm service (src/warm/), which also removes it. */
  warm?: boolean;
}

export interface TicketOptions {
  provider?: ProviderChoice;
  /** Keep after the creating process exits (snowflock up, sfmpirun --keep). */
  keep?: boolean;
  /** What the clones will start from: checked by the provider before anything is created. */
  checkpoint?: CheckpointSource;
  /** Host directories the clones must see (Ticket.shared): checked by the provider before anything is created. */
  share?: string[];
  /** This host's part of a ticket whose clones span hosts (src/hosts/); absent: every clone is here. */
  span?: TicketSpan;
  /** Made ahead by the warm service (src/warm/), for a job to lease (Ticket.warm). */
  warm?: boolean;
}

/**
 * This host's part of a ticket that spans hosts: one L2 network over all of them (a bridge per
 * host, joined by VXLAN over the underlay), one /24 for all its clones (clone i has the same
 * address whatever host holds it), one id everywhere. The coordinator (the launcher's host)
 * claims an id and a subnet itself and gives both to every agent, which must claim the same.
 */
export interface TicketSpan {
  /** The id and subnet the coordinator chose; absent on the coordinator, which claims its own. */
  id?: string;
  subnet?: string;
  /** Subnets in use on some host of the job: never claimed here. */
  avoid?: string[];
  /** This host's address on the subnet, as an offset from its base: 1 (the gateway) on the coordinator's host. */
  hostOffset: number;
  /** MTU of the bridge, the tunnel and every clone: 50 below the smallest underlay MTU of the job. */
  mtu: number;
  /** The tunnel: this host's underlay address and device, and the other hosts' underlay addresses. */
  overlay: { local: string; peers: string[]; dev: string };
}

/**
 * A spanning ticket's id or subnet is taken on this host (another ticket has it, or the host
 * routes the subnet): the coordinator retries with another, avoiding `used`.
 */
export class ClaimClash extends Error {
  constructor(
    message: string,
    /** Every subnet of the pool in use on this host. */
    readonly used: string[],
  ) {
    super(message);
    this.name = 'ClaimClash';
  }
}
