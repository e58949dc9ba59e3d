/**
 * Open MPI on VM clones through the real sfmpirun: Open MPI's own mpirun on the host starts its
 * daemons inside the VMs through the remote-shell shim and the guest agent, and the ranks talk over
 * the ticket's network.
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { buildDir, program } from '../helpers/programs.js';
import { leftovers, sfmpirun } from '../helpers/sfmpirun.js';

describe('Open MPI on VM clones (sfmpirun --provider vm)', function () {
  this.timeout(600_000);
  // The job's working directory (the clones mount it from the host); inside the project, as a
  // user's build directory would be.
  let cwd: string;
  before(() => {
    mkdirSync(buildDir, { recursive: true });
    cwd = mkdtempSync(join(buildDir, 'vm-openmpi-cwd-'));
  });
  after(() => rmSync(cwd, { recursive: true, force: true }));

  it('runs an Open MPI hello on 2 VM clones with --launch native, one rank each, and leaves nothing', async () => {
    const run = await sfmpirun(['--provider', 'vm', '--launch', 'native', '-np', '2', program('hello', 'openmpi')], { cwd });
    expect(run.code, run.stderr).to.equal(0);
    const out = run.stdout.toString().trim().split('\n').sort();
    expect(out, run.stderr).to.have.length(2);
    out.forEach((l, i) => expect(l).to.match(new RegExp(`^hello rank ${i} of 2 on sf[0-9a-f]{6}-\\d+$`)));
    expect(new Set(out.map((l) => l.split(' on ')[1])).size).to.equal(2);
    expect(run.report!.provider).to.equal('vm');
    expect(run.report!.launch).to.equal('native');
    expect(leftovers(run.report!.ticket!)).to.deep.equal([]);
  });
});
