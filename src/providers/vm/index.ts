/**
 * The `vm` provider: real virtual machines under QEMU, cloned from a warm template with
 * copy-on-write memory (SnowFlock's VM fork, on a stock Linux host). checkpoint() builds the guest
 * image and the template (both cached); createClones() starts the clones from it, or boots each
 * one from the image with --cold-boot.
 */
import { existsSync } from 'node:fs';
import { HostError } from '../../errors.js';
import { guestImage, type GuestImage } from '../../image/index.js';
import type { Logger } from '../../log.js';
import type { Checkpoint, CheckpointSource, Clone, CloneInfo, Ticket } from '../../types.js';
import type { CreateContext, Provider } from '../provider.js';
import { attachVmClones, createVmClones } from './clones.js';
import { chooseAccel, qemuBinary, QEMU } from './qemu.js';
import { ensureTemplate, guestRamMiB, removeTemplates, type Template } from './template.js';

export { removeTemplates } from './template.js';
export { VmClone, tapName } from './clones.js';

/** Checkpoint.detail of a VM checkpoint. */
export interface VmCheckpointDetail {
  image: GuestImage;
  template: Template;
}

export class VmProvider implements Provider {
  readonly name = 'vm' as const;

  async unavailable(): Promise<string | null> {
    if (!qemuBinary()) return `${QEMU} is not installed; install the Debian package qemu-system-x86 (npm run setup does)`;
    if (!existsSync('/dev/net/tun')) return '/dev/net/tun is missing; load the tun module (modprobe tun)';
    return null;
  }

  async checkpoint(source: CheckpointSource, log: Logger): Promise<Checkpoint> {
    const why = await this.unavailable();
    if (why) throw new HostError('the vm provider cannot run here', why);
    const image = await guestImage({ programs: source.programs, workdir: source.workdir, mpi: source.mpi }, log);
    const template = await ensureTemplate(image, chooseAccel(), log);
    const detail: VmCheckpointDetail = { image, template };
    return { provider: 'vm', key: template.key, detail: detail as unknown as Record<string, unknown> };
  }

  async createClones(ctx: CreateContext, checkpoint: Checkpoint, count: number): Promise<Clone[]> {
    const { image, template } = checkpoint.detail as unknown as VmCheckpointDetail;
    return createVmClones(
      {
        ticket: ctx.ticket,
        ledger: ctx.ledger,
        log: ctx.log,
        image,
        accel: template.accel,
        ramMiB: template.ramMiB ?? guestRamMiB(image),
        template: ctx.coldBoot ? null : template,
      },
      count,
    );
  }

  attach(ticket: Ticket, clones: CloneInfo[]): Clone[] {
    return attachVmClones(ticket, clones);
  }
}

/** For `snowflock cleanup --templates`: removes every cached template; returns what it removed. */
export function cleanupTemplates(): string[] {
  return removeTemplates();
}
