/**
 * Memory on demand in the vm provider (issue 11): clones of a template on a host that has not its
 * RAM file. Three seams, for the host agents to call through the engine:
 *
 *   serve        on the parent's host: a memserver for the ticket (a token of its own), serving
 *                the template's RAM file to the ticket's clone hosts (Engine.serveMemory);
 *   checkpoint   on a clone host: the checkpoint source names a MemorySource; the guest image is
 *                made here (or found cached), the template is not booted: its descriptor, checked
 *                against what this host would make of the same image, stands for it;
 *   clones       on a clone host: one memtap for the ticket on the host (its mount and process
 *                recorded before they exist), then the clones' QEMUs with mem-path on the memtap's
 *                file and libnohuge.so preloaded (native/memory/nohuge.c: 4 KiB faults).
 *
 * Failure: a memtap that fails (memserver gone, network silent past SNOWFLOCK_MEMORY_TIMEOUT, a
 * granule that keeps failing its checksum) or dies says why in one line naming its host; while the
 * clones are made that line is the ProvisionError, afterwards it goes to CreateContext.fail and so
 * to Engine.failure, as the file server's loss does (src/workdir/share.ts): the job fails with it.
 * A memserver that dies while it serves reaches its own ticket's failure the same way.
 */
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { settings } from '../../common/config.js';
import { ProvisionError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { readDescriptor, type Descriptor } from '../../memory/descriptor.js';
import { nativeProgram, requireMemoryHost } from '../../memory/helper.js';
import { enterPrefix, type SimulatedHost } from '../../memory/place.js';
import { hostFigures, serverFigures, type MemoryFigures } from '../../memory/report.js';
import { MemServer, newGroup, newToken } from '../../memory/server.js';
import type { MemoryOffer, MemorySource, ServeOptions } from '../../memory/source.js';
import { MemTap } from '../../memory/tap.js';
import type { ResourceLedger } from '../../ticket/resources.js';
import type { Ticket } from '../../ticket/ticket.js';
import type { Template } from './checkpoint.js';
import type { CloneOrigin } from './clone.js';

/** A checkpoint whose template lives on another host: what its clones start from here. */
export interface RemoteMemory {
  source: MemorySource;
  /** The template's key, geometry and page counts (the descriptor's). */
  descriptor: Omit<Descriptor, 'dataMap' | 'state'>;
}

/**
 * The descriptor of source, checked: readable, and of the template this host would make of the
 * job's image (same image, accelerator, RAM size, kernel command line and QEMU build: the key of
 * checkpoint.ts). Anything else would restore device state into the wrong machine.
 */
export function remoteMemory(source: MemorySource, expectedKey: string, ramMiB: number, nativeDir: string): RemoteMemory {
  requireMemoryHost(nativeDir, 'tap');
  if (!/^[0-9a-f]{32,128}$/.test(source.token)) throw new ProvisionError('the memory source\'s token is not 32 to 128 hex digits; hand over the token Engine.serveMemory gave');
  if (!/^[^\s:]+:\d+$/.test(source.server)) throw new ProvisionError(`the memory source's server ${JSON.stringify(source.server)} is not ADDR:PORT`);
  const { dataMap: _m, state: _s, ...d } = readDescriptor(source.descriptor);
  if (d.key !== expectedKey) {
    throw new ProvisionError(
      `the memory descriptor ${source.descriptor} describes template ${d.key}, but this host makes template ${expectedKey} of the job's image: ` +
        'the hosts differ in guest image, QEMU or accelerator (install the same snowflock and QEMU on both)',
    );
  }
  if (d.ramSize !== ramMiB * 1048576) throw new ProvisionError(`the memory descriptor ${source.descriptor} has ${d.ramSize} bytes of RAM, the template ${ramMiB} MiB`);
  return { source, descriptor: d };
}

/** The live helpers of a ticket's memory on demand, for its report (memoryFigures). */
interface TicketMemory {
  taps: Array<{ tap: MemTap; avoided: { holePages: number; zeroedPages: number } }>;
  servers: MemServer[];
}

export interface MemoryContext {
  ticket: Ticket;
  ledger: Pick<ResourceLedger, 'add' | 'dir'>;
  log: Logger;
  fail(line: string): void;
  nativeDir: string;
}

const live = new Map<string, TicketMemory>();

function memoryOf(ticketId: string): TicketMemory {
  let m = live.get(ticketId);
  if (!m) live.set(ticketId, (m = { taps: [], servers: [] }));
  return m;
}

/** Clone i of count's host: clones are split over the hosts in equal blocks, in order. */
export function hostIndexOf(i: number, count: number, hosts: number): number {
  return Math.min(hosts - 1, Math.floor((i * hosts) / count));
}

/**
 * Starts the memtaps of a ticket's clones (one per host) and returns each clone's origin. Each
 * memtap's failure after the clones are up fails the ticket (ctx.fail), once, with its one line.
 */
export async function startTaps(ctx: MemoryContext, memory: RemoteMemory, count: number): Promise<(i: number) => CloneOrigin> {
  const { ticket } = ctx;
  const hosts: Array<SimulatedHost | undefined> = memory.source.hosts?.length ? memory.source.hosts.slice(0, count) : [undefined];
  const nohuge = nativeProgram(ctx.nativeDir, 'libnohuge.so');
  const dir = join(ctx.ledger.dir, 'memory');
  await ctx.ledger.add({ kind: 'dir', path: dir });
  mkdirSync(dir, { recursive: true });
  const m = memoryOf(ticket.id);
  const taps = await Promise.all(
    hosts.map(async (host, h) => {
      const tap = await MemTap.start({
        nativeDir: ctx.nativeDir,
        descriptor: memory.source.descriptor,
        server: memory.source.server,
        token: memory.source.token,
        mountpoint: join(dir, `tap-${h}`),
        record: (r) => ctx.ledger.add(r),
        ticket: ticket.id,
        kept: ticket.kept,
        ...(host ? { host } : memory.source.hostName ? { hostName: memory.source.hostName } : {}),
        // REAP: ahead of the faults, only the working set earlier runs of the template recorded;
        // the rest comes on demand or never, so a host gets what its clones touch and little more.
        fill: 'ws-only',
        // Multicast: the memserver pushes everything to every host at once; that push is the fill.
        ...(memory.source.multicast ? { multicastGroup: memory.source.multicast.group } : {}),
        timeoutMs: settings().memoryTimeoutMs,
      });
      m.taps.push({ tap, avoided: { holePages: memory.descriptor.holePages, zeroedPages: memory.descriptor.zeroedPages } });
      void tap.exited.then(() => prune(ticket.id));
      ctx.log.info(`ticket ${ticket.id}: memtap of host ${tap.hostName} serving from ${memory.source.server}`);
      return tap;
    }),
  );
  let told = false;
  for (const tap of taps) {
    void tap.failed.then((line) => {
      if (told) return;
      told = true;
      ctx.fail(`the clones of ticket ${ticket.id} lost their memory: ${line}`);
    });
  }
  return (i) => {
    const h = hostIndexOf(i, count, taps.length);
    const tap = taps[h]!;
    return {
      ram: tap.ramPath,
      // QEMU gets the device state on an fd this process opens (clone.ts); a simulated host's
      // memtap is mounted in that host's mount namespace only, reached through its init's root.
      state: hosts[h] ? `/proc/${hosts[h]!.pid}/root${tap.statePath}` : tap.statePath,
      env: { LD_PRELOAD: nohuge, SF_NOHUGE_PATH: tap.ramPath },
      prefix: enterPrefix(hosts[h], ['mnt']),
      lost: tap.failed,
    };
  };
}

/**
 * Serves the template's RAM to the ticket's clone hosts: a memserver with a fresh token, recorded
 * in the ticket's record before it runs (the token too, in the ticket's directory, readable by
 * root only), on a lifeline unless the ticket is kept. Its working set goes next to the template.
 */
export async function serveTemplate(ctx: MemoryContext, template: Template, o: ServeOptions): Promise<MemoryOffer> {
  requireMemoryHost(ctx.nativeDir, 'server');
  const { ticket } = ctx;
  const token = newToken();
  const multicast = o.multicast ? { group: newGroup(), receivers: o.multicast.receivers } : undefined;
  const dir = join(ctx.ledger.dir, 'memory');
  const tokenFile = join(dir, 'token');
  await ctx.ledger.add({ kind: 'dir', path: dir }, { kind: 'file', path: tokenFile });
  mkdirSync(dir, { recursive: true });
  writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
  chmodSync(tokenFile, 0o600);
  const server = await MemServer.start({
    nativeDir: ctx.nativeDir,
    descriptor: template.descriptor,
    ram: template.ram,
    listen: o.listen,
    token,
    // The working set recorded by earlier runs orders the memtaps' fill; this run's replaces it.
    ...(existsSync(template.workset) ? { workset: template.workset } : {}),
    recordWorkset: template.workset,
    record: (r) => ctx.ledger.add(r),
    ticket: ticket.id,
    kept: ticket.kept,
    ...(o.host ? { host: o.host } : {}),
    ...(multicast ? { multicast } : {}),
  });
  memoryOf(ticket.id).servers.push(server);
  void server.exited.then(() => prune(ticket.id));
  void server.failed.then((line) => ctx.fail(`the memory of ticket ${ticket.id}'s clones is lost: ${line}`));
  ctx.log.info(`ticket ${ticket.id}: memserver on ${server.address} for template ${template.key}${multicast ? `, pushing to ${multicast.group}` : ''}`);
  return { server: server.address, token, descriptor: template.descriptor, ...(multicast ? { multicast: { group: multicast.group } } : {}) };
}

/** The ticket's memory figures (null: it used no memory on demand on this host). */
export async function memoryFigures(ticketId: string): Promise<MemoryFigures | null> {
  const m = live.get(ticketId);
  if (!m) return null;
  const hosts = await Promise.all(m.taps.filter((t) => t.tap.running).map(async (t) => hostFigures(await t.tap.counters(), t.avoided)));
  const servers = await Promise.all(m.servers.filter((s) => s.running).map(async (s) => serverFigures(s.address, await s.counters(), s.group)));
  return { hosts, servers };
}

/** Forgets a ticket whose helpers have all ended (its teardown ended them). */
function prune(ticketId: string): void {
  const m = live.get(ticketId);
  if (m && !m.taps.some((t) => t.tap.running) && !m.servers.some((s) => s.running)) live.delete(ticketId);
}

/** For tests: the ticket's first memtap's and memserver's counters, the damage hook, a memserver's sudden death. */
export function testHooks(ticketId: string) {
  const m = () => {
    const x = live.get(ticketId);
    if (!x) throw new Error(`ticket ${ticketId} has no memory on demand here`);
    return x;
  };
  return {
    tap: () => m().taps[0]!.tap.counters(),
    server: () => m().servers[0]!.counters(),
    corrupt: () => m().servers[0]!.corruptNext('any'),
    killServer: () => m().servers[0]!.kill(),
  };
}
export type TestHooks = ReturnType<typeof testHooks>;
