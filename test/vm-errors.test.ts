/**
 * What a user can get wrong or meet with VM clones: QEMU missing, a guest that does not boot, a
 * clone that never becomes ready. Each gives one clear line naming what failed, and leaves nothing.
 */
import { expect } from 'chai';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { UserError } from '../src/errors.js';
import { logger } from '../src/log.js';
import { guestKernel } from '../src/image/kernel.js';
import { VmProvider, type VmCheckpointDetail } from '../src/providers/vm/index.js';
import { chooseAccel } from '../src/providers/vm/qemu.js';
import { ensureTemplate, TEMPLATE_ROOT } from '../src/providers/vm/template.js';
import type { Checkpoint } from '../src/types.js';
import { leftovers, testTicket } from './vm-fixture.js';

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
  const provider = new VmProvider();
  let dir: string;
  before(() => (dir = mkdtempSync(join(tmpdir(), 'sf-vmerr-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('says how to get QEMU when it is missing', async () => {
    const path = process.env.PATH;
    process.env.PATH = '/nonexistent';
    try {
      expect(await provider.unavailable()).to.match(/qemu-system-x86_64 is not installed.*qemu-system-x86/);
      const e = await rejection(provider.checkpoint({ provider: 'vm', mpi: 'none' }, log));
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
    const e = await rejection(ensureTemplate(image, chooseAccel(), log));
    expect(e).to.be.instanceOf(UserError);
    expect(e.message.split('\n')).to.have.length(1);
    expect(e.message).to.match(/template VM .*(stopped before it booted|did not boot)/);
    expect(e.message).to.match(/panic|Kernel|init/i);
    expect(readdirSync(TEMPLATE_ROOT).filter((n) => n.includes(`.build-${process.pid}`))).to.deep.equal([]);
  });

  describe('a clone that never becomes ready', () => {
    let checkpoint: Checkpoint;
    before(async () => {
      checkpoint = await provider.checkpoint({ provider: 'vm', programs: [], mpi: 'none' }, log);
    });

    it('is named with the reason when its device state cannot be loaded; everything is torn down', async () => {
      const detail = checkpoint.detail as unknown as VmCheckpointDetail;
      const badState = join(dir, 'state');
      writeFileSync(badState, 'garbage');
      const bad = { ...checkpoint, detail: { ...detail, template: { ...detail.template, state: badState } } };
      const t = await testTicket(join(dir, 'state1'), 2);
      const e = await rejection(provider.createClones({ ticket: t.ticket, ledger: t.ledger, log }, bad, 2));
      expect(e).to.be.instanceOf(UserError);
      expect(e.message).to.match(new RegExp(`clone sf${t.ticket.id}-[01] did not become ready`));
      expect(await t.teardown()).to.deep.equal([]);
      expect(leftovers(t.ticket.id)).to.deep.equal([]);
      expect(existsSync(detail.template.state), 'the template stays').to.equal(true);
    });

    it('times out, naming the clone; everything is torn down', async () => {
      const old = process.env.SNOWFLOCK_VM_READY_TIMEOUT;
      process.env.SNOWFLOCK_VM_READY_TIMEOUT = '0.001';
      const t = await testTicket(join(dir, 'state2'), 1);
      try {
        const e = await rejection(provider.createClones({ ticket: t.ticket, ledger: t.ledger, log }, checkpoint, 1));
        expect(e).to.be.instanceOf(UserError);
        expect(e.message).to.include(`clone sf${t.ticket.id}-0 did not become ready`);
      } finally {
        if (old === undefined) delete process.env.SNOWFLOCK_VM_READY_TIMEOUT;
        else process.env.SNOWFLOCK_VM_READY_TIMEOUT = old;
      }
      expect(await t.teardown()).to.deep.equal([]);
      expect(leftovers(t.ticket.id)).to.deep.equal([]);
    });
  });
});
