/**
 * The `netns` provider: a clone is a set of namespaces (network, UTS, IPC, mount, PID) held by a
 * native holder process, with a veth into the ticket's bridge. It sees the host's files, like a
 * cluster node sharing a home directory, except /tmp and /dev/shm, which are its own.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { existsSync } from 'node:fs';
import type { Logger } from '../../log.js';
import { timed } from '../../log.js';
import { ipBatch } from '../../net/ip.js';
import { cloneMac, cloneName, gatewayHostname, vethName } from '../../net/names.js';
import { cloneAddress } from '../../net/pool.js';
import { startTime, type ProcessIdentity } from '../../state/process.js';
import type { Checkpoint, CheckpointSource, Clone, CloneInfo, Resource, SpawnOptions, Ticket } from '../../types.js';
import type { CreateContext, Provider } from '../provider.js';
import { HolderBatch } from './holders.js';
import { spawnInClone } from './process.js';

export class NetnsProvider implements Provider {
  readonly name = 'netns' as const;

  constructor(private readonly nativeDir: string) {}

  async unavailable(): Promise<string | null> {
    for (const bin of ['holder', 'enter']) {
      if (!existsSync(`${this.nativeDir}/${bin}`)) return `the native helper ${bin} is not built; run make -C native (or npm run build)`;
    }
    return null;
  }

  /** Namespace clones start from the host as it is: nothing to capture. */
  async checkpoint(source: CheckpointSource, _log: Logger): Promise<Checkpoint> {
    return { provider: 'netns', key: 'host', detail: { workdir: source.workdir ?? null } };
  }

  async createClones(ctx: CreateContext, _checkpoint: Checkpoint, count: number): Promise<Clone[]> {
    const { ticket, ledger, log } = ctx;
    const net = ticket.network;
    const infos: CloneInfo[] = [];
    for (let i = 0; i < count; i++) {
      infos.push({ id: i, hostname: cloneName(ticket.id, i), address: cloneAddress(net.subnet, i), mac: cloneMac(ticket.id, i), handle: {} });
    }
    // The veths are recorded first so that teardown reaches them last: they vanish with their
    // namespaces, all at once, which is much faster than deleting them one by one.
    await ledger.add(...infos.map((c): Resource => ({ kind: 'link', name: vethName(ticket.id, c.id) })));

    // Inside the ticket's directory, which is recorded and goes with it.
    const hostsFile = join(ledger.dir, 'hosts');
    const resolvFile = join(ledger.dir, 'resolv.conf');
    await Promise.all([
      writeFile(hostsFile, await hostsText(ticket.id, net.gateway, infos)),
      writeFile(resolvFile, resolvText(net.gateway)),
    ]);
    const { batch, pids } = await timed(log, `holders for ${count} clones`, () =>
      HolderBatch.start(infos, {
        nativeDir: this.nativeDir,
        gateway: net.gateway,
        prefixLength: net.prefixLength,
        shareTmp: sharedTmpDirs(),
        hostsFile,
        resolvFile,
      }),
    );
    try {
      const holders = pids.map((pid): ProcessIdentity => ({ pid, start: startTime(pid) ?? 0 }));
      await ledger.add(
        ...holders.map((h, i): Resource => ({ kind: 'process', pid: h.pid, start: h.start, what: `holder of ${infos[i]!.hostname}` })),
        ...infos.map((c): Resource => ({ kind: 'netns', name: c.hostname })),
      );
      await timed(log, `namespaces named and veths created`, () =>
        ipBatch(
          infos.flatMap((c, i) => [
            `netns attach ${c.hostname} ${holders[i]!.pid}`,
            `link add ${vethName(ticket.id, c.id)} master ${net.bridge} up type veth peer name eth0 address ${c.mac} netns ${c.hostname}`,
          ]),
        ),
      );
      await timed(log, `clone networks configured`, () => batch.configureNetwork());
      infos.forEach((c, i) => (c.handle = { holder: holders[i]!.pid, start: holders[i]!.start }));
      await ledger.setClones(infos);
      batch.detach();
    } catch (e) {
      batch.abort();
      throw e;
    }
    return this.attach(ticket, infos);
  }

  attach(ticket: Ticket, clones: CloneInfo[]): Clone[] {
    return clones.map((info) => new NetnsClone(ticket, info, this.nativeDir));
  }
}

export class NetnsClone implements Clone {
  readonly id: number;
  readonly hostname: string;
  readonly address: string;
  readonly mac: string;
  readonly holder: ProcessIdentity;

  constructor(
    readonly ticket: Ticket,
    info: CloneInfo,
    private readonly nativeDir: string,
  ) {
    this.id = info.id;
    this.hostname = info.hostname;
    this.address = info.address;
    this.mac = info.mac;
    this.holder = { pid: Number(info.handle.holder), start: Number(info.handle.start) };
  }

  spawn(argv: string[], opts: SpawnOptions) {
    return spawnInClone(this.nativeDir, this.holder, argv, opts);
  }
}

/** The host's /etc/hosts, then every clone of the ticket and the gateway by name. */
async function hostsText(ticketId: string, gateway: string, clones: CloneInfo[]): Promise<string> {
  const host = await readFile('/etc/hosts', 'utf8').catch(() => '127.0.0.1\tlocalhost\n');
  const ours = [`${gateway}\t${gatewayHostname(ticketId)}`, ...clones.map((c) => `${c.address}\t${c.hostname}`)];
  return `${host.trimEnd()}\n\n# snowflock ticket ${ticketId}\n${ours.join('\n')}\n`;
}

/**
 * Clones reach nothing beyond the host, so the host's name servers would only make every lookup
 * that misses /etc/hosts wait for timeouts (glibc asks for IPv6 first: 10 s per name). The gateway
 * refuses port 53 at once, so such lookups fail fast.
 */
function resolvText(gateway: string): string {
  return `# snowflock: clones have no DNS; names of the ticket are in /etc/hosts\nnameserver ${gateway}\noptions attempts:1 timeout:1\n`;
}

/**
 * The clones' /tmp is private, but a caller working under /tmp (tests, scratch jobs) must find its
 * working directory there: the top directory of the cwd under /tmp stays shared.
 */
function sharedTmpDirs(): string[] {
  const parts = process.cwd().split(sep);
  return parts[1] === 'tmp' && parts.length > 2 ? [`/tmp/${parts[2]}`] : [];
}
