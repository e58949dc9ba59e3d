/**
 * The clone engine's vocabulary, shared by the engine, its providers and the launchers.
 * SnowFlock's calls map onto these (see shared/DESIGN.md): a Ticket grants m <= n clones,
 * a Checkpoint is the immutable parent state, Clones are created from a checkpoint for a ticket,
 * and join/kill end the ticket.
 */
import type { Readable, Writable } from 'node:stream';

export type ProviderName = 'netns' | 'vm';
export type ProviderChoice = ProviderName | 'auto';

/** The private network of one ticket: one bridge, one subnet, isolated by its own nftables table. */
export interface TicketNetwork {
  /** e.g. 10.213.4.0/24 */
  subnet: string;
  prefixLength: number;
  /** The host side of the bridge: first address of the subnet. The launcher serves PMI here. */
  gateway: string;
  bridge: string;
  /** Name of the nftables table (family inet) that isolates this ticket. */
  table: string;
}

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
  /** True for `snowflock up`: the ticket outlives its creating process; cleanup leaves it alone. */
  kept: boolean;
}

export interface TicketOptions {
  provider?: ProviderChoice;
  /** Keep after the creating process exits (snowflock up). */
  keep?: boolean;
  /** For vm: boot every clone from the image instead of cloning the template. */
  coldBoot?: boolean;
}

/** What a checkpoint is made of. netns clones need nothing; VM clones need a guest image. */
export interface CheckpointSource {
  provider: ProviderName;
  /** Host programs (absolute paths) that must run inside the clones, with their library closure. */
  programs?: string[];
  /** A directory whose files the clones need (the job's working directory). */
  workdir?: string;
  /** Which MPI runtime the image must carry. */
  mpi?: 'mpich' | 'openmpi' | 'none';
}

export interface Checkpoint {
  provider: ProviderName;
  /** Content address of what the checkpoint was made from (stable across runs when nothing changed). */
  key: string;
  /** Provider-specific handle (e.g. the template's RAM file and device state). */
  detail: Record<string, unknown>;
}

export interface SpawnOptions {
  /** The complete environment of the new process (nothing is inherited implicitly). */
  env: Record<string, string>;
  /** Working directory inside the clone; defaults to the caller's cwd for netns. */
  cwd?: string;
  /** 'pipe' gives a writable stdin; 'ignore' connects /dev/null. */
  stdin?: 'pipe' | 'ignore';
  /** vm: how the host reaches the guest to start the process (the agent's control channel by
   * default, or SSH); namespace clones have only one way in and ignore it. */
  channel?: 'agent' | 'ssh';
}

export interface ExitStatus {
  /** Exit code, or null when killed by a signal. */
  code: number | null;
  /** Signal name (e.g. 'SIGSEGV') when killed by a signal. */
  signal: NodeJS.Signals | null;
}

/** A process running inside a clone. */
export interface CloneProcess {
  readonly stdin: Writable | null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** Sends a signal to the process inside the clone. Never throws once the process has exited. */
  kill(signal?: NodeJS.Signals): void;
  /** Resolves once when the process has exited and its stdout/stderr have ended. Never rejects. */
  readonly exited: Promise<ExitStatus>;
}

export interface Clone {
  ticket: Ticket;
  /** 0..m-1 */
  id: number;
  hostname: string;
  address: string;
  mac: string;
  /** Starts argv[0] (looked up in PATH of opts.env) inside the clone. */
  spawn(argv: string[], opts: SpawnOptions): CloneProcess;
}

/**
 * One kind of resource that the engine creates, recorded in the ticket's state record before it is
 * created and removed (in reverse order of recording) on every path out, or by `snowflock cleanup`.
 */
export type Resource =
  | { kind: 'process'; pid: number; /** /proc/PID/stat starttime, guards against PID reuse */ start: number; what: string }
  | { kind: 'netns'; name: string }
  | { kind: 'link'; name: string }
  | { kind: 'nft-table'; family: 'inet'; name: string }
  | { kind: 'file'; path: string }
  | { kind: 'dir'; path: string };

/**
 * The ticket's state record as providers see it: every resource goes in (and is persisted) before it
 * is created; `info` holds what another process needs to reattach to the clones (snowflock exec).
 */
export interface ResourceLedger {
  readonly dir: string;
  add(...resources: Resource[]): Promise<void>;
  /** Persists per-clone information for reattaching (see Provider.attach). */
  setClones(clones: CloneInfo[]): Promise<void>;
}

/** What the record keeps of a clone so that another process can reach it. */
export interface CloneInfo {
  id: number;
  hostname: string;
  address: string;
  mac: string;
  /** Provider-specific: the holder PID for netns, the agent socket for vm. */
  handle: Record<string, unknown>;
}
