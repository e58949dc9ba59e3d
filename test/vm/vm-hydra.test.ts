/**
 * MPICH on VM clones through Hydra (sfmpirun --provider vm --launch native): mpiexec on the host
 * starts its proxies inside the VMs through the remote-shell shim and the guest agent (the image
 * carries hydra_pmi_proxy), each rank runs in native/rankwatch there, and a rank that exits with a
 * code ends the job with that status although the others wait for it (exitwait: they see no error).
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { buildDir, program } from '../helpers/programs.js';
import { leftovers, sfmpirun } from '../helpers/sfmpirun.js';

describe('MPICH on VM clones through Hydra (sfmpirun --provider vm --launch native)', function () {
  this.timeout(600_000);
  let cwd: string;
  before(() => {
    mkdirSync(buildDir, { recursive: true });
    cwd = mkdtempSync(join(buildDir, 'vm-hydra-cwd-'));
  });
  after(() => rmSync(cwd, { recursive: true, force: true }));

  it('runs an MPICH hello on 2 VM clones, one rank each, and leaves nothing', async () => {
    const run = await sfmpirun(['--provider', 'vm', '--launch', 'native', '-np', '2', program('hello')], { cwd });
    expect(run.code, run.stderr).to.equal(0);
    const out = run.stdout.toString().trim().split('\n').sort();
    expect(out, run.stderr).to.have.length(2);
    out.forEach((l, i) => expect(l).to.match(new RegExp(`^hello rank ${i} of 2 on sf[0-9a-f]{6}-\\d+$`)));
    expect(run.report!.launch).to.equal('native');
    expect(leftovers(run.report!.ticket!)).to.deep.equal([]);
  });

  it("ends the job when a rank exits with a code while the others wait, with the rank's status", async () => {
    const run = await sfmpirun(['--provider', 'vm', '--launch', 'native', '-np', '3', program('exitwait')], { cwd });
    expect(run.code, run.stderr).to.equal(3);
    expect(run.stderr.trim().split('\n').pop()).to.match(/^sfmpirun: rank 2 \(clone sf[0-9a-f]{6}-2\) exited with code 3$/);
    expect(leftovers(run.report!.ticket!)).to.deep.equal([]);
  });
});
