/**
 * The `vm` provider: real virtual machines under QEMU, cloned from a warm template with
 * copy-on-write memory (SnowFlock's VM fork, on a stock Linux host). checkpoint() builds the guest
 * image and the template (both cached), or only the image when the clones are to cold-boot;
 * createClones() starts the clones from it, and has them mount the ticket's shared directories
 * from its file server (src/workdir/) before it returns them. Memory on demand (memory.ts): a
 * checkpoint whose source names a MemorySource has clones here from a template on another host;
 * serveMemory() serves a template's memory to such hosts.
 */
import { existsSync } from 'node:fs';
import { HostError, UsageError } from '../../common/errors.js';
import { nativeHelpersProblem, VM_HELPERS } from '../../doctor/checks.js';
import type { Logger } from '../../common/log.js';
import { guestImage, type GuestImage } from '../../image/index.js';
import type { Ticket } from '../../ticket/ticket.js';
import { exportsFor, requireGanesha } from '../../workdir/server.js';
import { mountShare, serveShare } from '../../workdir/share.js';
import type { Checkpoint, CheckpointSource } from '../checkpoint.js';
import type { Clone, CloneInfo } from '../clone.js';
import type { MemoryFigures } from '../../memory/report.js';
import type { MemoryOffer, ServeOptions } from '../../memory/source.js';
import type { CreateContext, Provider } from '../provider.js';
import { ensureTemplate, guestRamMiB, removeTemplates, templateKey, type Template } from './checkpoint.js';
import { attachVmClones, createVmClones } from './clone.js';
import { chooseAccel, qemuBinary, QEMU } from './machine.js';
import { memoryFigures, remoteMemory, serveTemplate, startTaps, type RemoteMemory } from './memory.js';

/**
 * What a VM checkpoint holds: the guest image, and the template (null: every clone cold-boots, or
 * the template is another host's and `memory` says where its memory comes from).
 */
export interface VmCheckpointDetail {
  image: GuestImage;
  template: Template | null;
  memory?: RemoteMemory;
}

export class VmProvider implements Provider<VmCheckpointDetail> {
  readonly name = 'vm' as const;

  constructor(readonly nativeDir: string) {}

  async unavailable(): Promise<string | null> {
    if (!qemuBinary()) return `${QEMU} is not installed; install the Debian package qemu-system-x86 (snowflock setup, or npm run setup in a checkout, does)`;
    if (!existsSync('/dev/net/tun')) return '/dev/net/tun is missing; load the tun module (modprobe tun)';
    return nativeHelpersProblem(this.nativeDir, VM_HELPERS);
  }

  /** Nothing to refuse cheaply: images carry programs, whatever their size (their libraries are checked as the image is built). */
  check(_source: CheckpointSource): void {}

  /** Directories the clones can mount: existing, not hiding the guest's own system, quotable in the server's configuration. */
  checkShare(dirs: readonly string[]): void {
    exportsFor([...dirs]);
    if (dirs.length > 0) requireGanesha();
  }

  async checkpoint(source: CheckpointSource, log: Logger): Promise<Checkpoint<VmCheckpointDetail>> {
    const why = await this.unavailable();
    if (why) throw new HostError('the vm provider cannot run here', why);
    const image = await guestImage({ programs: source.programs, mpi: source.mpi, nativeDir: this.nativeDir }, log);
    if (source.coldBoot) return { provider: 'vm', key: image.key, detail: { image, template: null } };
    if (source.memory) {
      const accel = chooseAccel();
      const memory = remoteMemory(source.memory, templateKey(image, accel, guestRamMiB(image)), guestRamMiB(image), this.nativeDir);
      log.info(`template ${memory.descriptor.key}: memory on demand from ${source.memory.server}`);
      return { provider: 'vm', key: memory.descriptor.key, detail: { image, template: null, memory } };
    }
    const template = await ensureTemplate(image, chooseAccel(), this.nativeDir, log);
    return { provider: 'vm', key: template.key, detail: { image, template } };
  }

  async createClones(ctx: CreateContext, checkpoint: Checkpoint<VmCheckpointDetail>, count: number, ids?: number[]): Promise<Clone[]> {
    const { image, template, memory } = checkpoint.detail;
    // This host's clones: all of the ticket, or those a ticket spanning hosts puts here.
    const mine = ids ?? Array.from({ length: count }, (_, i) => i);
    const server = await serveShare({ ...ctx, nativeDir: this.nativeDir }, mine);
    // Memory on demand: the memtaps first, so that teardown (reverse order) ends the QEMUs before them.
    const originOf = memory ? await startTaps({ ...ctx, nativeDir: this.nativeDir }, memory, count) : undefined;
    const clones = await createVmClones(
      {
        ticket: ctx.ticket,
        ledger: ctx.ledger,
        log: ctx.log,
        image,
        accel: template?.accel ?? chooseAccel(),
        ramMiB: template?.ramMiB ?? guestRamMiB(image),
        template,
        ...(originOf ? { originOf } : {}),
        nativeDir: this.nativeDir,
      },
      mine,
    );
    if (server) await mountShare(ctx, server, clones);
    return clones;
  }

  attach(ticket: Ticket, clones: CloneInfo[]): Clone[] {
    return attachVmClones(ticket, clones);
  }

  async serveMemory(ctx: CreateContext, checkpoint: Checkpoint<VmCheckpointDetail>, opts: ServeOptions): Promise<MemoryOffer> {
    const { template } = checkpoint.detail;
    if (!template) throw new UsageError('only a checkpoint with its template on this host can serve memory (not a cold-boot or remote one)');
    return serveTemplate({ ...ctx, nativeDir: this.nativeDir }, template, opts);
  }

  memoryFigures(ticket: Ticket): Promise<MemoryFigures | null> {
    return memoryFigures(ticket.id);
  }
}

/** For `snowflock cleanup --templates`: removes every cached template; returns what it removed. */
export function cleanupTemplates(): string[] {
  return removeTemplates();
}
