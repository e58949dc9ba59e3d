/**
 * The MPICH/UCX finalize stall on VM clones (launcher/pmi/rank-probe.ts), through the real
 * sfmpirun: the ranks live in guests, so the PMI server's probe asks native/sockets inside each
 * clone (the MPICH image carries it) which bytes a rank has not read. Before, ranks in VMs were
 * invisible to it, and 4 of 6 rings on 4 VM clones waited for the 3 s watchdog.
 *
 * Asserted is behaviour, as for netns clones (test/system/finalize-stall.test.ts): no barrier is
 * released by the watchdog, every rank comes through MPI_Finalize and exits 0, nothing is left.
 */
import { expect } from 'chai';
import { program } from '../helpers/programs.js';
import { leftovers, sfmpirun } from '../helpers/sfmpirun.js';

describe('the MPICH/UCX finalize stall (VM clones)', function () {
  this.timeout(600_000);

  it('ends 3 rings of 4 ranks on VM clones without the watchdog, every rank through MPI_Finalize', async () => {
    const ring = program('ring_late');
    let proven = 0;
    for (let i = 0; i < 3; i++) {
      const run = await sfmpirun(['--provider', 'vm', '-v', '-np', '4', '-genv', 'UCX_TLS', 'tcp,self', ring, '0']);
      expect(run.code, `exit status; stderr: ${run.stderr}`).to.equal(0);
      expect(run.stderr, 'the watchdog released a barrier').to.not.match(/released by the finalize watchdog/);
      const out = run.stdout.toString().split('\n').filter(Boolean);
      expect(out.filter((l) => l.startsWith('rank ')).sort()).to.deep.equal([0, 1, 2, 3].map((r) => `rank ${r} finalized`));
      expect(run.report!.ranks.map((r) => r.code)).to.deep.equal([0, 0, 0, 0]);
      expect(leftovers(run.report!.ticket!)).to.deep.equal([]);
      if (/PMI barrier \d+ released after \d+ ms without rank\(s\) [\d,]+ \(stall seen within/.test(run.stderr)) proven++;
    }
    // Not asserted: the stall is frequent, not certain. Reported for the reader.
    console.log(`      (${proven} of 3 finalize barriers released on proof of the stall)`);
  });
});
