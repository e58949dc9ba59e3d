/**
 * snowflock's clone engine as a library: the Engine (requestTicket, checkpoint, createClones,
 * attach, join, kill, cleanup) and its vocabulary.
 */
export { Engine } from './engine.js';
export type { CleanupOptions, CleanupReport, TicketResources, TicketStatus } from './engine.js';
export { resolveConfig, settings, CLONE_OFFSET, MAX_CLONES_PER_SUBNET } from './common/config.js';
export type { EngineConfig, EngineOptions, Settings } from './common/config.js';
export { UserError, UsageError, HostError, ProvisionError, isUserError } from './common/errors.js';
export { configureLogging, logger } from './common/log.js';
export { parseProviderChoice, resolveProvider, PROVIDERS } from './providers/registry.js';
export type { TeardownReport } from './ticket/teardown.js';
export type { TicketNetwork } from './network/network.js';
export type * from './providers/checkpoint.js';
export type * from './providers/clone.js';
export type * from './providers/provider.js';
export type { Resource, ResourceLedger } from './ticket/resources.js';
export type * from './ticket/ticket.js';
export { TICKET_ID } from './ticket/ticket.js';
