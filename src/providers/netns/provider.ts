/**
 * The `netns` provider: a clone is a set of namespaces (network, UTS, IPC, mount, PID) held by a
 * native holder process, with a veth into the ticket's bridge. It sees the host's files, like a
 * cluster node sharing a home directory, except /tmp and /dev/shm, which are its own.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { ProvisionError, UsageError } from '../../common/errors.js';
import { ownerArg } from '../../common/lifeline.js';
import { NETNS_HELPERS, nativeHelpersProblem } from '../../doctor/checks.js';
import { timed, type Logger } from '../../common/log.js';
import { isRunning, startTime, type ProcessIdentity } from '../../common/processes.js';
import { CommandError } from '../../common/command.js';
import { ipBatch } from '../../network/ip.js';
import { cloneAddress } from '../../network/pool.js';
import { cloneMac, cloneName, gatewayHostname, linkGroup, vethName } from '../../ticket/names.js';
import type { Resource } from '../../ticket/resources.js';
import type { Ticket } from '../../ticket/ticket.js';
import type { Checkpoint, CheckpointSource } from '../checkpoint.js';
import type { Clone, CloneInfo } from '../clone.js';
import type { CreateContext, Provider } from '../provider.js';
import { NetnsClone } from './clone.js';
import { HolderBatch } from './holder.js';

/**
 * The MTU of both ends of every clone's veth: the largest a veth takes, as near as it gets to
 * loopback's 64 KiB. Clones of one host talk through the bridge without a wire in between, so
 * nothing needs 1500-byte frames; with 1500, TCP between two clones carried a ping-pong's large
 * messages at about 0.7 of loopback's bandwidth (per-segment work in the stack), with 65535 at par
 * (benchmarks/traffic.ts). The bridge follows its ports' MTU by itself (it was never set on it), so a
 * ticket with taps of VM clones (1500) keeps 1500.
 */
export const VETH_MTU = 65535;

/**
 * The largest packet a clone's TCP builds for its eth0 on one host (BIG TCP, Linux 6.3 and later;
 * older kernels ignore it): 6 × 64 KiB. At an MTU of 64 KiB every packet already crosses unsegmented,
 * so per-packet work is what is left (veths, and the bridge with the host's netfilter hooks where
 * the shortcut between clones does not apply); larger packets make it rarer. Measured
 * (benchmarks/traffic.ts, before the shortcut): peak bandwidth from 0.76 to 1.21 of Hydra's over
 * loopback. Not for a ticket spanning hosts: those packets would meet the tunnel.
 */
export const VETH_GSO_MAX = 6 * 65536;

/**
 * A namespace checkpoint is the host as it is; it only notes the directories under /tmp that its
 * programs live in, which the clones must share (their /tmp is their own). On another host of the
 * ticket (an agent's), neither the launcher's working directory nor its programs' are the agent's
 * own: the checkpoint carries them there.
 */
export interface NetnsCheckpointDetail {
  tmpDirs: string[];
}

export class NetnsProvider implements Provider<NetnsCheckpointDetail> {
  readonly name = 'netns' as const;

  constructor(private readonly nativeDir: string) {}

  async unavailable(): Promise<string | null> {
    return nativeHelpersProblem(this.nativeDir, NETNS_HELPERS);
  }

  /** Namespace clones see the host's files: any source will do. */
  check(source: CheckpointSource): void {
    if (source.memory) throw new UsageError('memory on demand is for VM clones: namespace clones share the host\'s memory; use the vm provider');
  }

  /**
   * ...and any directory, without a server (Ticket.shared is for VM clones), but for /tmp itself:
   * each clone's is its own (as on cluster nodes), and the job's directory lives there.
   */
  checkShare(dirs: readonly string[]): void {
    if (dirs.includes('/tmp')) {
      throw new UsageError(
        'the working directory /tmp is private to each namespace clone: what runs there would not see its files, and what it writes there would be lost; work in a directory under /tmp (mkdir /tmp/job && cd /tmp/job) or elsewhere',
      );
    }
  }

  /** Namespace clones start from the host as it is: nothing to capture but where its programs are. */
  async checkpoint(source: CheckpointSource, _log: Logger): Promise<Checkpoint<NetnsCheckpointDetail>> {
    return { provider: 'netns', key: 'host', detail: { tmpDirs: tmpTops(source.programs ?? []) } };
  }

  async createClones(ctx: CreateContext, checkpoint: Checkpoint<NetnsCheckpointDetail>, count: number, ids?: number[]): Promise<Clone[]> {
    const { ticket, ledger, log } = ctx;
    const net = ticket.network;
    const info = (i: number): CloneInfo => ({ id: i, hostname: cloneName(ticket.id, i), address: cloneAddress(net.subnet, i), mac: cloneMac(ticket.id, i), handle: {} });
    const infos = (ids ?? Array.from({ length: count }, (_, i) => i)).map(info);
    // Every clone of the ticket by name, those on other hosts too (their addresses follow their ids).
    const everyClone = Array.from({ length: ticket.granted }, (_, i) => info(i));
    // A ticket spanning hosts: both ends of each veth take the tunnel's MTU; on one host, the largest.
    const mtu = net.mtu ?? VETH_MTU;
    // The host ends of the veths are in the ticket's device group, with its bridge: teardown
    // deletes them all in one kernel batch (names.ts linkGroup).
    const group = linkGroup(ticket.id);
    await ledger.add(...infos.map((c): Resource => ({ kind: 'link', name: vethName(ticket.id, c.id), group })));

    // Inside the ticket's directory, which is recorded and goes with it.
    const hostsFile = join(ledger.dir, 'hosts');
    const resolvFile = join(ledger.dir, 'resolv.conf');
    await Promise.all([
      writeFile(hostsFile, await hostsText(ticket.id, net.gateway, everyClone)),
      writeFile(resolvFile, resolvText(net.gateway)),
    ]);
    const { batch, pids } = await timed(log, `holders for ${count} clones`, () =>
      HolderBatch.start(infos, {
        nativeDir: this.nativeDir,
        gateway: net.gateway,
        prefixLength: net.prefixLength,
        ...(net.mtu === undefined ? { gsoMax: VETH_GSO_MAX } : {}),
        shortcut: true,
        shareTmp: [...new Set([...tmpTops([process.cwd(), ...ticket.shared]), ...(checkpoint.detail?.tmpDirs ?? [])])],
        hostsFile,
        resolvFile,
        ...(ticket.kept ? {} : { owner: ownerArg() }),
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
            `link add ${vethName(ticket.id, c.id)} group ${group} mtu ${mtu} master ${net.bridge} up type veth peer name eth0 mtu ${mtu} address ${c.mac} netns ${c.hostname}`,
          ]),
        ),
      );
      const notes = await timed(log, `clone networks configured`, () => batch.configureNetwork());
      for (const note of notes) log.info(note);
      infos.forEach((c, i) => (c.handle = { holder: holders[i]!.pid, start: holders[i]!.start }));
      await ledger.setClones(infos);
      batch.detach();
    } catch (e) {
      batch.abort();
      // A clone killed while it was being made (its holder gone, a namespace vanished): the
      // cluster could not be made, which is the user's to know, not a bug.
      if (e instanceof CommandError) throw new ProvisionError(`the clones of ticket ${ticket.id} could not be made: ${e.message}`);
      throw e;
    }
    return this.attach(ticket, infos);
  }

  attach(ticket: Ticket, clones: CloneInfo[]): Clone[] {
    const attached = clones.map((info) => new NetnsClone(ticket, info, this.nativeDir));
    if (attached.some((c) => !isRunning(c.holder))) {
      throw new UsageError(`ticket ${ticket.id} has lost clones (their holders are gone); remove it with snowflock down ${ticket.id}`);
    }
    return attached;
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
 * working directories and programs there: the top entry under /tmp of each stays shared (a
 * directory, or the program itself where it was built straight into /tmp).
 */
function tmpTops(paths: readonly string[]): string[] {
  const tops = paths.flatMap((p) => {
    const parts = p.split(sep);
    return parts[1] === 'tmp' && parts.length > 2 ? [`/tmp/${parts[2]}`] : [];
  });
  return [...new Set(tops)];
}
