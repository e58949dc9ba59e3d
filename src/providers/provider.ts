/**
 * What a provider is: the one thing that differs between a namespace clone and a VM clone.
 * The engine owns tickets, networks, state records and teardown; a provider makes checkpoints and
 * clones, records each resource in the ledger before creating it, and can reattach to clones of a
 * live ticket from their CloneInfo. Teardown is generic: the engine removes the recorded resources
 * in reverse order, so a provider needs no destroy code of its own.
 */
import type { Logger } from '../common/log.js';
import type { MemoryFigures } from '../memory/report.js';
import type { MemoryOffer, ServeOptions } from '../memory/source.js';
import type { ResourceLedger } from '../ticket/resources.js';
import type { Ticket } from '../ticket/ticket.js';
import type { Checkpoint, CheckpointSource } from './checkpoint.js';
import type { Clone, CloneInfo } from './clone.js';

export type ProviderName = 'netns' | 'vm';
export type ProviderChoice = ProviderName | 'auto';

export interface CreateContext {
  ticket: Ticket;
  ledger: ResourceLedger;
  log: Logger;
  /** Lets the clones reach this host port on the gateway (Engine.openPort). */
  openPort(port: number): Promise<void>;
  /**
   * The clones lost something on the host they depend on (their file server): one line naming
   * the ticket and the cause. The engine hands it to the job (Engine.failure), which fails.
   */
  fail(line: string): void;
}

/** D: the provider's own checkpoint detail (nothing for netns; image and template for vm). */
export interface Provider<D = unknown> {
  readonly name: ProviderName;
  /** Why this provider cannot run on this host (one line with the fix), or null when it can. */
  unavailable(): Promise<string | null>;
  /** Refuses (UsageError) a source it could not make a checkpoint of; cheap, before anything exists. */
  check(source: CheckpointSource): void;
  /** Refuses (UsageError) host directories its clones could not be given (Ticket.shared); cheap, before anything exists. */
  checkShare(dirs: readonly string[]): void;
  /** Makes (or finds cached) the parent state that clones start from. */
  checkpoint(source: CheckpointSource, log: Logger): Promise<Checkpoint<D>>;
  /**
   * Creates clones 0..count-1 on the ticket's network (or those of `ids`, count of them, on this
   * host's part of a ticket spanning hosts); returns when all are ready and see Ticket.shared.
   */
  createClones(ctx: CreateContext, checkpoint: Checkpoint<D>, count: number, ids?: number[]): Promise<Clone[]>;
  /** Rebuilds Clone handles for a live ticket from its record; a UserError when they are gone. */
  attach(ticket: Ticket, clones: CloneInfo[]): Clone[];
  /** Memory on demand: serves the checkpoint's memory to the ticket's clone hosts (vm only). */
  serveMemory?(ctx: CreateContext, checkpoint: Checkpoint<D>, opts: ServeOptions): Promise<MemoryOffer>;
  /** Memory on demand: the ticket's figures on this host, while its helpers run (null: none). */
  memoryFigures?(ticket: Ticket): Promise<MemoryFigures | null>;
}
