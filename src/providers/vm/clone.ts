/**
 * VM clones of one ticket: a QEMU process per clone that maps the template's RAM file privately
 * (copy on write), loads the template's device state and continues, on its own tap on the
 * ticket's bridge; or, for a cold boot, boots the image. Either way the guest agent then receives
 * the clone's identity and reports ready. Every tap, file and process is recorded in the ticket's
 * ledger before it exists; the engine's teardown removes them.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { settings } from '../../common/config.js';
import { ProvisionError } from '../../common/errors.js';
import type { Logger } from '../../common/log.js';
import { startTime } from '../../common/processes.js';
import type { GuestImage } from '../../image/index.js';
import { ipBatch } from '../../network/ip.js';
import { cloneAddress } from '../../network/pool.js';
import { cloneMac, cloneName, linkGroup, tapName } from '../../ticket/names.js';
import type { ResourceLedger } from '../../ticket/resources.js';
import type { Ticket } from '../../ticket/ticket.js';
import type { Clone, CloneInfo, CloneProcess, SpawnOptions } from '../clone.js';
import { AgentChannel } from './agent/channel.js';
import { encodeIdent, FrameType } from './agent/protocol.js';
import type { Template } from './checkpoint.js';
import { type Accel, bootAndGreet, consoleTail, INCOMING_FD, kernelCommandLine, killQuietly, startQemu, type VmSpec, vmFiles } from './machine.js';
import { Qmp } from './qmp.js';
import { SshLink } from './ssh.js';

/**
 * Where a clone's start went, in ms from the moment its QEMU was asked for (0), for the benchmark
 * (benchmarks/vm.ts) and for -vv: QEMU's process started; its QMP socket answered; the device
 * state was loaded; the guest continued; the agent reported ready with the clone's identity.
 * Cold boots have only `started` and `ready` (and `hello`: the booted agent's greeting).
 */
export interface CloneTimings {
  started: number;
  qmp?: number;
  loaded?: number;
  running?: number;
  hello?: number;
  ready: number;
}

/** What the ticket's record keeps of a VM clone, for another process to reach its agent. */
export interface VmHandle {
  control: string;
  dir: string;
}

/**
 * A VM clone as the engine hands it out. It holds a connection to its agent only while it has
 * processes running: QEMU serves one client per control socket, so an idle launcher must leave the
 * channel free for another process (Open MPI's remote-shell shim, snowflock exec).
 */
export class VmClone implements Clone {
  private channel: AgentChannel | null;
  private ssh: SshLink | null = null;
  private running = 0;
  /**
   * How spawn() starts processes: through the guest agent (default), or over SSH
   * (sfmpirun --launch-channel ssh; also SNOWFLOCK_LAUNCH_CHANNEL=ssh).
   */
  launchChannel: 'agent' | 'ssh' = settings().launchChannel;

  constructor(
    readonly ticket: Ticket,
    readonly id: number,
    readonly hostname: string,
    readonly address: string,
    readonly mac: string,
    readonly handle: VmHandle,
    channel: AgentChannel | null,
    /** How this process made the clone (none for a clone attached from the record). */
    readonly timings?: CloneTimings,
  ) {
    this.channel = channel;
  }

  spawn(argv: string[], opts: SpawnOptions): CloneProcess {
    return (opts.channel ?? this.launchChannel) === 'ssh' ? this.sshSpawn(argv, opts) : this.agentSpawn(argv, opts);
  }

  agentSpawn(argv: string[], opts: SpawnOptions): CloneProcess {
    if (!this.channel || this.channel.closed) this.channel = AgentChannel.connectNow(this.handle.control, `clone ${this.hostname}`);
    return this.track(this.channel.spawn(argv, opts));
  }

  /** Starts a process over SSH (dropbear in the guest); see ssh.ts. */
  sshSpawn(argv: string[], opts: SpawnOptions): CloneProcess {
    this.ssh ??= new SshLink(this.address, `clone ${this.hostname}`);
    return this.track(this.ssh.spawn(argv, opts));
  }

  private track(proc: CloneProcess): CloneProcess {
    this.running++;
    void proc.exited.then(() => {
      if (--this.running === 0) this.release();
    });
    return proc;
  }

  /** Closes this process's connections to the clone (the VM keeps running). */
  release(): void {
    this.channel?.close();
    this.channel = null;
    this.ssh?.close();
    this.ssh = null;
  }

  info(): CloneInfo {
    return { id: this.id, hostname: this.hostname, address: this.address, mac: this.mac, handle: { ...this.handle } };
  }
}

/** Where a restored clone's RAM and device state come from, and how its QEMU is started. */
export interface CloneOrigin {
  /** The RAM file QEMU maps copy-on-write (share=off): the template's, or a memtap's. */
  ram: string;
  /** The device state for migrate-incoming. */
  state: string;
  env?: Record<string, string>;
  prefix?: string[];
  /** Resolves with one line when the RAM stops being served (its memtap failed). */
  lost?: Promise<string>;
}

export interface CloneJob {
  ticket: Ticket;
  ledger: ResourceLedger;
  log: Logger;
  image: GuestImage;
  accel: Accel;
  ramMiB: number;
  /** null: cold boot from the image. */
  template: Template | null;
  /** Memory on demand: the origin of this host's k-th clone (instead of the template's files). */
  originOf?: (i: number) => CloneOrigin;
  /** native/build: the lifeline QEMU runs on. */
  nativeDir: string;
}

/** The origin of this host's k-th clone: the template's RAM file and state here, or memory on demand; null: a cold boot. */
function originOf(job: CloneJob, k: number): CloneOrigin | null {
  if (job.originOf) return job.originOf(k);
  return job.template ? { ram: job.template.ram, state: job.template.state } : null;
}

/** Where a ticket's VM files go: in its state directory, unless unix socket paths would get too long. */
function vmDir(ledger: ResourceLedger, ticket: Ticket): string {
  const inState = join(ledger.dir, 'vm');
  return inState.length <= 70 ? inState : `/tmp/snowflock-vm-${ticket.id}`;
}

/** What the guest agent applies to become clone i (see native/proto/agent.h, IDENT); /etc/hosts names every clone of the ticket, on any host. */
function identity(ticket: Ticket, i: number): Buffer {
  const now = Date.now();
  const hosts = Array.from({ length: ticket.granted }, (_, j) => `${cloneAddress(ticket.network.subnet, j)} ${cloneName(ticket.id, j)}`);
  return encodeIdent({
    id: String(i),
    addr: `${cloneAddress(ticket.network.subnet, i)}/${ticket.network.prefixLength}`,
    gw: ticket.network.gateway,
    mac: cloneMac(ticket.id, i),
    hostname: cloneName(ticket.id, i),
    time: `${Math.floor(now / 1000)}.${String((now % 1000) * 1_000_000).padStart(9, '0')}`,
    entropy: randomBytes(64).toString('hex'),
    hosts: hosts.join('|'),
    ssh: '1',
    // A ticket spanning hosts: the tunnel's MTU (one host: the guest's own, 1500).
    ...(ticket.network.mtu ? { mtu: String(ticket.network.mtu) } : {}),
  });
}

/** Creates the taps of the clones `ids` on the ticket's bridge (recorded first). */
async function createTaps(job: CloneJob, ids: readonly number[]): Promise<void> {
  const taps = ids.map((i) => tapName(job.ticket.id, i));
  // In the ticket's device group, with its bridge: teardown deletes them in one kernel batch.
  const group = linkGroup(job.ticket.id);
  await job.ledger.add(...taps.map((name) => ({ kind: 'link' as const, name, group })));
  const mtu = job.ticket.network.mtu ? ` mtu ${job.ticket.network.mtu}` : '';
  await ipBatch(taps.flatMap((t) => [`tuntap add dev ${t} mode tap`, `link set ${t}${mtu} group ${group} master ${job.ticket.network.bridge} up`]));
}

/** Clone i of the ticket, this host's k-th: its QEMU started (and recorded), restored or booted, ready with its identity. */
async function startOne(job: CloneJob, base: string, i: number, k: number): Promise<VmClone> {
  const { ticket } = job;
  const hostname = cloneName(ticket.id, i);
  const dir = join(base, String(i));
  mkdirSync(dir, { recursive: true });
  const f = vmFiles(dir);
  const origin = originOf(job, k);
  const spec: VmSpec = {
    accel: job.accel,
    ramMiB: job.ramMiB,
    // A clone's guest booted in the template: nothing to boot (see VmSpec.boot).
    boot: origin ? undefined : { kernel: job.image.kernel.vmlinuz, initramfs: job.image.initramfs, cmdline: kernelCommandLine(job.nativeDir) },
    ram: origin ? { path: origin.ram, share: false } : undefined,
    incoming: origin !== null,
    tap: tapName(ticket.id, i),
    ...f,
    ...(origin?.env ? { env: origin.env } : {}),
    ...(origin?.prefix ? { prefix: origin.prefix } : {}),
    // A kept ticket's VMs outlive this process; the others die with it.
    ...(ticket.kept ? {} : { lifeline: job.nativeDir }),
  };
  await job.ledger.add({ kind: 'file', path: f.pidfile });
  const t0 = performance.now();
  const marks: Partial<CloneTimings> = {};
  const mark = (k: keyof CloneTimings) => (marks[k] = Math.round((performance.now() - t0) * 10) / 10);
  const channel = origin ? await restore(job, origin, spec, hostname, mark) : await coldBoot(job, spec, hostname, mark);
  try {
    channel.send(FrameType.IDENT, 0, identity(ticket, i));
    const ready = channel.expect(FrameType.READY, Date.now() + settings().vmReadyTimeoutMs);
    ready.catch(() => undefined); // the race below reports it
    const lost = origin?.lost?.then((line) => {
      throw new ProvisionError(line);
    });
    lost?.catch(() => undefined);
    await Promise.race([ready, ...(lost ? [lost] : [])]);
    mark('ready');
  } catch (e) {
    channel.close();
    if (e instanceof ProvisionError) throw new ProvisionError(`clone ${hostname} did not become ready: ${e.message}`);
    throw new ProvisionError(`clone ${hostname} did not become ready (taking its identity): ${(e as Error).message} (console: ${consoleTail(f.console, 3)})`);
  }
  // Ready: the channel is left free until the first process (see VmClone).
  channel.close();
  const timings = marks as CloneTimings;
  job.log.debug(`clone ${hostname} (ms): ${Object.entries(timings).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  return new VmClone(ticket, i, hostname, cloneAddress(ticket.network.subnet, i), cloneMac(ticket.id, i), { control: f.control, dir }, null, timings);
}

type Mark = (k: keyof CloneTimings) => void;

/** A clone from the template: QEMU waits for the device state, maps the RAM file copy-on-write, continues. */
async function restore(job: CloneJob, origin: CloneOrigin, spec: VmSpec, hostname: string, mark: Mark): Promise<AgentChannel> {
  const label = `clone ${hostname}`;
  // The device state on QEMU's fd 3, read from there by migrate-incoming (no shell, no cat).
  const state = openSync(origin.state, 'r');
  let vm: ReturnType<typeof startQemu>;
  try {
    vm = startQemu({ ...spec, incomingFile: state });
  } finally {
    closeSync(state);
  }
  mark('started');
  await recordProcess(job, vm.pid, hostname);
  const deadline = Date.now() + settings().vmReadyTimeoutMs;
  let exitedWith: string | null = null;
  // QEMU dying ends the wait at once: the connects below would otherwise retry until the deadline.
  const died = vm.exited.then((x) => {
    exitedWith = `QEMU exited (code ${x.code}): ${x.stderr}`;
    throw new Error(exitedWith);
  });
  died.catch(() => undefined);
  // Its memory lost (memtap failed): the one line that says why, not QEMU's bus error.
  const lost = origin.lost?.then((line) => {
    throw new ProvisionError(line);
  });
  lost?.catch(() => undefined);
  const restoring = (async () => {
    const qmp = await Qmp.open(spec.qmp, deadline);
    mark('qmp');
    try {
      const channel = await AgentChannel.connect(spec.control, label, deadline);
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
      await qmp.execute('migrate-incoming', { uri: `fd:${INCOMING_FD}` });
      await qmp.migrationDone(deadline);
      mark('loaded');
      await qmp.execute('cont');
      mark('running');
      return channel;
    } finally {
      qmp.close();
    }
  })();
  restoring.catch(() => undefined);
  try {
    return await Promise.race([restoring, died, ...(lost ? [lost] : [])]);
  } catch (e) {
    killQuietly(vm.pid);
    if (e instanceof ProvisionError) throw new ProvisionError(`${label} did not become ready: ${e.message}`);
    throw new ProvisionError(`${label} did not become ready (from the template): ${exitedWith ?? (e as Error).message} (console: ${consoleTail(spec.console, 3)})`);
  }
}

/** --cold-boot: the clone boots from the image like any VM. */
async function coldBoot(job: CloneJob, spec: VmSpec, hostname: string, mark: Mark): Promise<AgentChannel> {
  const vm = await bootAndGreet(spec, `clone ${hostname}`, settings().vmBootTimeoutMs, async (pid) => {
    mark('started');
    await recordProcess(job, pid, hostname);
  });
  mark('hello');
  return vm.channel;
}

async function recordProcess(job: CloneJob, pid: number, hostname: string): Promise<void> {
  const start = startTime(pid);
  if (start === null) return; // already gone: nothing to remove
  await job.ledger.add({ kind: 'process', pid, start, what: `qemu ${hostname}` });
}

/**
 * Starts the clones `ids` of the ticket (all of it, or this host's part of a ticket spanning
 * hosts) in parallel; all ready, or an error naming the first clone that failed.
 */
export async function createVmClones(job: CloneJob, ids: readonly number[]): Promise<VmClone[]> {
  const base = vmDir(job.ledger, job.ticket);
  await job.ledger.add({ kind: 'dir', path: base });
  mkdirSync(base, { recursive: true });
  await createTaps(job, ids);
  const handles: CloneInfo[] = ids.map((i) => ({
    id: i,
    hostname: cloneName(job.ticket.id, i),
    address: cloneAddress(job.ticket.network.subnet, i),
    mac: cloneMac(job.ticket.id, i),
    handle: { control: vmFiles(join(base, String(i))).control, dir: join(base, String(i)) },
  }));
  await job.ledger.setClones(handles);
  const results = await Promise.allSettled(ids.map((i, k) => startOne(job, base, i, k)));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<VmClone>).value);
}

/** Clone handles for a live ticket, from its record (another process: snowflock exec). */
export function attachVmClones(ticket: Ticket, infos: CloneInfo[]): VmClone[] {
  return infos.map((c) => new VmClone(ticket, c.id, c.hostname, c.address, c.mac, c.handle as unknown as VmHandle, null));
}
