/**
 * What a user can get wrong or meet with VM clones: QEMU missing, a guest that does not boot, a
 * clone that never becomes ready. Each gives one clear line naming what failed, and leaves nothing.
 */
import { expect } from 'chai';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { rereadSettings, settings } from '../../src/common/config.js';
import { UserError } from '../../src/common/errors.js';
import { logger } from '../../src/common/log.js';
import { guestKernel } from '../../src/image/kernel.js';
import type { Checkpoint } from '../../src/providers/checkpoint.js';
import { ensureTemplate } from '../../src/providers/vm/checkpoint.js';
import { chooseAccel } from '../../src/providers/vm/machine.js';
import { VmProvider, type VmCheckpointDetail } from '../../src/providers/vm/provider.js';
import { leftovers, vmEngine } from '../helpers/vm.js';

const log = logger('test-vm-errors');

async function rejection(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected a rejection');
}

describe('vm provider: faults and bad input', function () {
  this.timeout(300_000);
  const provider = new VmProvider(settings().nativeDir);
  let dir: string;
  before(() => (dir = mkdtempSync(join(tmpdir(), 'sf-vmerr-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('says how to get QEMU when it is missing', async () => {
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      expect(await provider.unavailable()).to.match(/qemu-system-x86_64 is not installed.*qemu-system-x86/);
      const e = await rejection(provider.checkpoint({ mpi: 'none' }, log));
      expect(e).to.be.instanceOf(UserError);
      expect(e.message).to.match(/qemu-system-x86/);
    } finally {
      process.env.PATH = path;
    }
  });

  it('shows the console of a guest that does not boot, and leaves no template behind', async () => {
    const kernel = await guestKernel();
    const junk = join(dir, 'junk.cpio');
    writeFileSync(junk, 'this is not an initramfs\n');
    const image = { key: `broken${process.pid}`, kernel, initramfs: junk, contentBytes: 0 };
    const e = await rejection(ensureTemplate(image, chooseAccel(), settings().nativeDir, log));
    expect(e).to.be.instanceOf(UserError);
    expect(e.message.split('\n')).to.have.length(1);
    expect(e.message).to.match(/template VM .*(stopped before it booted|did not boot)/);
    expect(e.message).to.match(/panic|Kernel|init/i);
    expect(readdirSync(settings().templateRoot).filter((n) => n.includes(`.build-${process.pid}`))).to.deep.equal([]);
  });

  describe('a clone that never becomes ready', () => {
    let checkpoint: Checkpoint<VmCheckpointDetail>;
    before(async () => {
      checkpoint = await provider.checkpoint({ programs: [], mpi: 'none' }, log);
    });

    it('is named with the reason when its device state cannot be loaded; everything is torn down', async () => {
      const detail = checkpoint.detail;
      const template = detail.template!;
      const badState = join(dir, 'state');
      writeFileSync(badState, 'garbage');
      const bad = { ...checkpoint, detail: { ...detail, template: { ...template, state: badState } } };
      const engine = vmEngine(join(dir, 'state1'));
      const t = await engine.requestTicket(2, { provider: 'vm' });
      const e = await rejection(engine.createClones(t, bad));
      expect(e).to.be.instanceOf(UserError);
      expect(e.message).to.match(new RegExp(`clone sf${t.id}-[01] did not become ready`));
      expect((await engine.kill(t)).failed).to.deep.equal([]);
      expect(leftovers(t.id)).to.deep.equal([]);
      expect(existsSync(template.state), 'the template stays').to.equal(true);
    });

    it('times out, naming the clone; everything is torn down', async () => {
      const old = process.env.SNOWFLOCK_VM_READY_TIMEOUT;
      process.env.SNOWFLOCK_VM_READY_TIMEOUT = '0.001';
      rereadSettings();
      const engine = vmEngine(join(dir, 'state2'));
      const t = await engine.requestTicket(1, { provider: 'vm' });
      try {
        const e = await rejection(engine.createClones(t, checkpoint));
        expect(e).to.be.instanceOf(UserError);
        expect(e.message).to.include(`clone sf${t.id}-0 did not become ready`);
      } finally {
        if (old === undefined) delete process.env.SNOWFLOCK_VM_READY_TIMEOUT;
        else process.env.SNOWFLOCK_VM_READY_TIMEOUT = old;
        rereadSettings();
      }
      expect((await engine.kill(t)).failed).to.deep.equal([]);
      expect(leftovers(t.id)).to.deep.equal([]);
    });
  });
});
