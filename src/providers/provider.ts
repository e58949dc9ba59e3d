/**
 * What a provider is: the one thing that differs between a namespace clone and a VM clone.
 * The engine owns tickets, networks, state records and teardown; a provider makes checkpoints and
 * clones, records each resource in the ledger before creating it, and can reattach to clones of a
 * live ticket from their CloneInfo. Teardown is generic: the engine removes the recorded resources
 * in reverse order, so a provider needs no destroy code of its own.
 */
import type { Checkpoint, CheckpointSource, Clone, CloneInfo, ProviderName, ResourceLedger, Ticket } from '../types.js';
import type { Logger } from '../log.js';

export interface CreateContext {
  ticket: Ticket;
  ledger: ResourceLedger;
  log: Logger;
  /** Boot each clone instead of cloning (vm only). */
  coldBoot?: boolean;
}

export interface Provider {
  readonly name: ProviderName;
  /** Why this provider cannot run on this host (one line with the fix), or null when it can. */
  unavailable(): Promise<string | null>;
  /** Makes (or finds cached) the parent state that clones start from. */
  checkpoint(source: CheckpointSource, log: Logger): Promise<Checkpoint>;
  /** Creates clones 0..count-1 on the ticket's network; returns when all are ready. */
  createClones(ctx: CreateContext, checkpoint: Checkpoint, count: number): Promise<Clone[]>;
  /** Rebuilds Clone handles for a live ticket from its record. */
  attach(ticket: Ticket, clones: CloneInfo[]): Clone[];
}
