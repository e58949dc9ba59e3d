/**
 * snowflock's clone engine as a library: the Engine (requestTicket, checkpoint, createClones,
 * attach, join, kill, cleanup), its vocabulary, and the pieces launchers reuse.
 */
export { Engine, installTeardownOnSignals } from './engine.js';
export type { CleanupOptions, CleanupReport, CreateClonesOptions, TicketStatus } from './engine.js';
export { resolveConfig, CLONE_OFFSET, MAX_CLONES_PER_SUBNET } from './config.js';
export type { EngineConfig, EngineOptions } from './config.js';
export { UserError, HostError, isUserError } from './errors.js';
export { configureLogging, logger } from './log.js';
export { parseProviderChoice, resolveProvider, PROVIDERS } from './providers/index.js';
export type { Provider, CreateContext } from './providers/provider.js';
export type { TeardownReport } from './state/teardown.js';
export * from './types.js';
