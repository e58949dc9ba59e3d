/**
 * A SIGKILLed sfmpirun's VM cluster dies by itself (issue 8 finding 2): the QEMUs run on lifelines
 * to the launcher, and the ticket's reaper removes taps, bridge, table and record. Nobody runs
 * `snowflock cleanup`.
 */
import { expect } from 'chai';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { buildDir, program } from '../helpers/programs.js';
import { leftovers, recordOf, sfmpirun, stateRecords } from '../helpers/sfmpirun.js';

describe('VM clones die with their launcher', function () {
  this.timeout(600_000);
  let cwd: string;
  before(() => {
    mkdirSync(buildDir, { recursive: true });
    cwd = mkdtempSync(join(buildDir, 'vm-lifeline-cwd-'));
  });
  after(() => rmSync(cwd, { recursive: true, force: true }));

  it('leaves no QEMU, tap or record once a SIGKILLed sfmpirun is gone', async () => {
    let ticket: string | undefined;
    let qemus = 0;
    const run = await sfmpirun(['--provider', 'vm', '-np', '2', program('sleeper')], {
      cwd,
      onStdout: (text, child) => {
        if (ticket === undefined && (text.match(/ready/g) ?? []).length === 2) {
          ticket = stateRecords().find((f) => f.endsWith('.json'))?.slice(0, 6);
          qemus = ticket ? recordOf(ticket).resources.filter((r) => r.kind === 'process' && r.what.startsWith('qemu')).length : 0;
          child.kill('SIGKILL');
        }
      },
    });
    expect(run.signal).to.equal('SIGKILL');
    expect(ticket, 'the ticket of the killed job').to.match(/^[0-9a-f]{6}$/);
    expect(qemus, 'QEMUs in the record').to.equal(2);
    const deadline = Date.now() + 20_000;
    while (leftovers(ticket!).length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(leftovers(ticket!), 'left after the owner died').to.deep.equal([]);
  });
});
