/**
 * A ticket's shared directories, for its VM clones: what the vm provider's createClones does so
 * that its clones see Ticket.shared at the same paths, read-write, as namespace clones see the
 * host's files. Before the clones start: the port opened on the gateway and the ticket's file
 * server started (server.ts), admitting exactly the clones' addresses. Once they are ready: every
 * clone mounts every directory (mount.ts), before the engine returns them, so no process ever
 * starts in a clone without its working directory.
 *
 * The server is recorded in the ticket's record before the clones, so teardown (reverse order)
 * ends the clones first: no clone ever waits on a server that teardown stopped. A clone's mounts
 * need no removal of their own: they go with its VM.
 */
import { join } from 'node:path';
import { ProvisionError } from '../common/errors.js';
import { timed, type Logger } from '../common/log.js';
import { cloneAddress } from '../network/pool.js';
import type { Clone } from '../providers/clone.js';
import type { ResourceLedger } from '../ticket/resources.js';
import type { Ticket } from '../ticket/ticket.js';
import { mountInClone } from './mount.js';
import { DEFAULT_PORT, WorkdirServer } from './server.js';

export interface ShareContext {
  ticket: Ticket;
  ledger: Pick<ResourceLedger, 'add' | 'dir'>;
  log: Logger;
  openPort(port: number): Promise<void>;
  /** Told, once, with one line, when the server dies or stops answering while the clones run. */
  fail(line: string): void;
  /** native/build, for the server's lifeline. */
  nativeDir: string;
}

/** Starts the ticket's file server for its clones `ids` (this host's), or nothing when the ticket shares no directory. */
export async function serveShare(ctx: ShareContext, ids: readonly number[]): Promise<WorkdirServer | null> {
  const { ticket } = ctx;
  if (ticket.shared.length === 0) return null;
  const net = ticket.network;
  await ctx.openPort(DEFAULT_PORT);
  const server = await timed(ctx.log, `ticket ${ticket.id}: file server`, () =>
    WorkdirServer.start({
      name: ticket.id,
      gateway: net.gateway,
      port: DEFAULT_PORT,
      clients: ids.map((i) => cloneAddress(net.subnet, i)),
      dirs: ticket.shared,
      // In the ticket's directory: recorded, and removed with the ticket.
      dir: join(ctx.ledger.dir, 'workdir'),
      recorder: ctx.ledger,
      // A kept ticket's server outlives this process; the others die with it.
      ...(ticket.kept ? {} : { lifeline: ctx.nativeDir }),
    }),
  );
  void server.failed.then((line) => ctx.fail(line));
  return server;
}

/** Mounts the shared directories in every clone; fails at once, with the server's line, if it is lost meanwhile. */
export async function mountShare(ctx: Pick<ShareContext, 'ticket' | 'log'>, server: WorkdirServer, clones: Clone[]): Promise<void> {
  const target = { server: server.gateway, port: server.port, dirs: server.dirs };
  const lost = server.failed.then((line) => {
    throw new ProvisionError(line);
  });
  await timed(ctx.log, `ticket ${ctx.ticket.id}: ${clones.length} mount(s) of ${server.dirs.join(', ')}`, () =>
    Promise.race([Promise.all(clones.map((c) => mountInClone(c, target))), lost]),
  );
}
