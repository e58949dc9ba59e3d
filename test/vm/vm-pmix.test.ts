/**
 * Open MPI on VM clones through our PMIx server (the default), through the real sfmpirun: the
 * PMIx variables pass through the guest agent like any environment, the guest image carries
 * libpmix's and Open MPI's run-time plugins, and for a wrapper or a Python program also what
 * detection found it to run (the wrapped program; the interpreter, its standard library, mpi4py).
 * Two runs only (TCG is slow): a C program, and MPMD of a C program, a #!/bin/sh wrapper and Python.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { buildDir, program, sourceDir } from '../helpers/programs.js';
import { leftovers, sfmpirun, type Run } from '../helpers/sfmpirun.js';
import { alive } from '../system/pmix-harness.js';

function expectRightWorld(run: Run, apps: number[], progs: string[]): void {
  expect(run.code, run.stderr).to.equal(0);
  const n = apps.length;
  const want = apps.map((a, r) => `rank ${r} of ${n} app ${a} sum ${(n * (n + 1)) / 2} prog ${progs[r]}`).sort();
  const got = run.stdout.toString().split('\n').filter((l) => l.startsWith('rank ')).sort();
  expect(got, run.stderr).to.deep.equal(want);
  expect(run.report!.provider).to.equal('vm');
  expect(run.report!.launch).to.equal('direct');
  for (const r of run.report!.ranks) expect(r.contacted, `rank ${r.rank}`).to.deep.equal(['pmix']);
}

async function expectClean(run: Run): Promise<void> {
  expect(leftovers(run.report!.ticket!)).to.deep.equal([]);
  const pids = run.report!.processManagers!.pmix.map((s) => s.pid);
  const deadline = Date.now() + 3000;
  while (alive(pids).length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  expect(alive(pids)).to.deep.equal([]);
}

describe('Open MPI on VM clones through our PMIx server (sfmpirun --provider vm)', function () {
  this.timeout(900_000);
  // A small working directory (it is copied into the guest image), inside the project so that the
  // CLI, run through tsx, still finds its modules.
  let cwd: string;
  before(() => {
    mkdirSync(buildDir, { recursive: true });
    cwd = mkdtempSync(join(buildDir, 'vm-pmix-cwd-'));
  });
  after(() => rmSync(cwd, { recursive: true, force: true }));

  it('a C program linked with Open MPI on 2 VM clones', async () => {
    const run = await sfmpirun(['--provider', 'vm', '--timeout', '600', '-np', '2', program('ompi-rank', 'openmpi')], { cwd });
    expectRightWorld(run, [0, 0], ['c', 'c']);
    await expectClean(run);
  });

  it('MPMD of a C program, a #!/bin/sh wrapper and Python with mpi4py on 3 VM clones', async () => {
    const rankProg = program('ompi-rank', 'openmpi');
    const wrapper = join(cwd, 'wrapper.sh');
    writeFileSync(wrapper, `#!/bin/sh\nexec "${rankProg}" wrapped "$@"\n`);
    chmodSync(wrapper, 0o755);
    const run = await sfmpirun(
      ['--provider', 'vm', '--timeout', '600', '-np', '1', rankProg, ':', '-np', '1', wrapper, ':', '-np', '1', '/usr/bin/python3', join(sourceDir, 'ompi-rank.py')],
      { cwd },
    );
    expectRightWorld(run, [0, 1, 2], ['c', 'wrapped', 'python']);
    expect(run.report!.apps.map((a) => a.mpi)).to.deep.equal(['openmpi', 'openmpi', 'openmpi']);
    await expectClean(run);
  });
});
