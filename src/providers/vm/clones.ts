/**
 * VM clones of one ticket: a QEMU process per clone that maps the template's RAM file privately
 * (copy on write), loads the template's device state and continues, on its own tap on the
 * ticket's bridge; or, for a cold boot, boots the image. Either way the guest agent then receives
 * the clone's identity and reports ready. Every tap, file and process is recorded in the ticket's
 * ledger before it exists; the engine's teardown removes them.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { UserError } from '../../errors.js';
import type { Logger } from '../../log.js';
import type { GuestImage } from '../../image/index.js';
import type { Clone, CloneInfo, CloneProcess, ResourceLedger, SpawnOptions, Ticket } from '../../types.js';
import { cloneAddress } from '../../net/pool.js';
import { cloneMac, cloneName } from '../../net/names.js';
import { AgentChannel, Frame } from './agent-client.js';
import { Qmp } from './qmp.js';
import { SshLink } from './ssh.js';
import { type Accel, consoleTail, startQemu, type VmSpec } from './qemu.js';
import { startTime } from '../../state/process.js';
import { bootAndGreet, bootTimeoutMs, killQuietly, type Template, vmFiles } from './template.js';

/** Tap of clone i: sf<ticket>t<i>, at most 15 characters. */
export const tapName = (ticketId: string, clone: number): string => `sf${ticketId}t${clone}`;

export function readyTimeoutMs(): number {
  return Number(process.env.SNOWFLOCK_VM_READY_TIMEOUT ?? 60) * 1000;
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
  launchChannel: 'agent' | 'ssh' = process.env.SNOWFLOCK_LAUNCH_CHANNEL === 'ssh' ? 'ssh' : 'agent';

  constructor(
    readonly ticket: Ticket,
    readonly id: number,
    readonly hostname: string,
    readonly address: string,
    readonly mac: string,
    readonly handle: VmHandle,
    channel: AgentChannel | null,
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

export interface CloneJob {
  ticket: Ticket;
  ledger: ResourceLedger;
  log: Logger;
  image: GuestImage;
  accel: Accel;
  ramMiB: number;
  /** null: cold boot from the image. */
  template: Template | null;
}

/** Where a ticket's VM files go: in its state directory, unless unix socket paths would get too long. */
function vmDir(ledger: ResourceLedger, ticket: Ticket): string {
  const inState = join(ledger.dir, 'vm');
  return inState.length <= 70 ? inState : `/tmp/snowflock-vm-${ticket.id}`;
}

function identity(ticket: Ticket, i: number, count: number): string {
  const now = Date.now();
  const hosts = Array.from({ length: count }, (_, j) => `${cloneAddress(ticket.network.subnet, j)} ${cloneName(ticket.id, j)}`);
  return [
    `id=${i}`,
    `addr=${cloneAddress(ticket.network.subnet, i)}/${ticket.network.prefixLength}`,
    `gw=${ticket.network.gateway}`,
    `mac=${cloneMac(ticket.id, i)}`,
    `hostname=${cloneName(ticket.id, i)}`,
    `time=${Math.floor(now / 1000)}.${String((now % 1000) * 1_000_000).padStart(9, '0')}`,
    `entropy=${randomBytes(64).toString('hex')}`,
    `hosts=${hosts.join('|')}`,
    'ssh=1',
    '',
  ].join('\n');
}

/** Creates the taps of clones 0..count-1 on the ticket's bridge (recorded first). */
async function createTaps(job: CloneJob, count: number): Promise<void> {
  const taps = Array.from({ length: count }, (_, i) => tapName(job.ticket.id, i));
  await job.ledger.add(...taps.map((name) => ({ kind: 'link' as const, name })));
  const script = taps.map((t) => `tuntap add dev ${t} mode tap\nlink set ${t} master ${job.ticket.network.bridge} up`).join('\n');
  const r = await execa('ip', ['-batch', '-'], { input: script + '\n', reject: false });
  if (r.failed) throw new Error(`creating taps: ${(r.stderr || r.stdout).trim()}`);
}

async function startOne(job: CloneJob, base: string, i: number, count: number): Promise<VmClone> {
  const { ticket } = job;
  const hostname = cloneName(ticket.id, i);
  const label = `clone ${hostname}`;
  const dir = join(base, String(i));
  mkdirSync(dir, { recursive: true });
  const f = vmFiles(dir);
  const spec: VmSpec = {
    accel: job.accel,
    ramMiB: job.ramMiB,
    kernel: job.image.kernel.vmlinuz,
    initramfs: job.image.initramfs,
    ram: job.template ? { path: job.template.ram, share: false } : undefined,
    incoming: job.template !== null,
    tap: tapName(ticket.id, i),
    ...f,
  };
  await job.ledger.add({ kind: 'file', path: f.pidfile });
  let channel: AgentChannel;
  if (job.template) {
    const vm = startQemu(spec, f.stderr);
    await recordProcess(job, vm.pid, hostname);
    const deadline = Date.now() + readyTimeoutMs();
    let exitedWith: string | null = null;
    void vm.exited.then((x) => (exitedWith = `QEMU exited (code ${x.code}): ${x.stderr}`));
    try {
      const qmp = await Qmp.open(f.qmp, deadline);
      try {
        channel = await AgentChannel.connect(f.control, label, deadline);
        await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
        await qmp.execute('migrate-incoming', { uri: `exec:cat ${job.template.state}` });
        await qmp.migrationDone(deadline);
        await qmp.execute('cont');
      } finally {
        qmp.close();
      }
      channel.send(Frame.IDENT, 0, identity(ticket, i, count));
      await channel.expect(Frame.READY, deadline);
    } catch (e) {
      killQuietly(vm.pid);
      throw new UserError(`${label} did not become ready: ${exitedWith ?? (e as Error).message} (console: ${consoleTail(f.console, 3)})`);
    }
  } else {
    const vm = await bootAndGreet(spec, f.stderr, label, bootTimeoutMs(), (pid) => recordProcess(job, pid, hostname));
    channel = vm.channel;
    try {
      channel.send(Frame.IDENT, 0, identity(ticket, i, count));
      await channel.expect(Frame.READY, Date.now() + readyTimeoutMs());
    } catch (e) {
      killQuietly(vm.pid);
      throw new UserError(`${label} did not become ready: ${(e as Error).message}`);
    }
  }
  // Ready: the channel is left free until the first process (see VmClone).
  channel.close();
  return new VmClone(ticket, i, hostname, cloneAddress(ticket.network.subnet, i), cloneMac(ticket.id, i), { control: f.control, dir }, null);
}

async function recordProcess(job: CloneJob, pid: number, hostname: string): Promise<void> {
  const start = startTime(pid);
  if (start === null) return; // already gone: nothing to remove
  await job.ledger.add({ kind: 'process', pid, start, what: `qemu ${hostname}` });
}

/** Starts `count` clones in parallel; all ready, or an error naming the first clone that failed. */
export async function createVmClones(job: CloneJob, count: number): Promise<VmClone[]> {
  const base = vmDir(job.ledger, job.ticket);
  await job.ledger.add({ kind: 'dir', path: base });
  mkdirSync(base, { recursive: true });
  await createTaps(job, count);
  const handles: CloneInfo[] = Array.from({ length: count }, (_, i) => ({
    id: i,
    hostname: cloneName(job.ticket.id, i),
    address: cloneAddress(job.ticket.network.subnet, i),
    mac: cloneMac(job.ticket.id, i),
    handle: { control: vmFiles(join(base, String(i))).control, dir: join(base, String(i)) },
  }));
  await job.ledger.setClones(handles);
  const results = await Promise.allSettled(Array.from({ length: count }, (_, i) => startOne(job, base, i, count)));
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
  return results.map((r) => (r as PromiseFulfilledResult<VmClone>).value);
}

/** Clone handles for a live ticket, from its record (another process: snowflock exec). */
export function attachVmClones(ticket: Ticket, infos: CloneInfo[]): VmClone[] {
  return infos.map((c) => new VmClone(ticket, c.id, c.hostname, c.address, c.mac, c.handle as unknown as VmHandle, null));
}
