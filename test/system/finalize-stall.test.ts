/**
 * Finding 6 of issue 8, the finalize stall, through the real sfmpirun on real netns clones with
 * real MPICH ranks over UCX TCP. MPICH 4.0 closes its UCX endpoints before the finalize barrier and
 * the close waits for acknowledgements that ranks already in the barrier never send
 * (launcher/pmi/rank-probe.ts). Before the fix about 9 in 10 rings waited for the 3 s watchdog;
 * now the PMI server sees the stall on the ranks' sockets and releases the barrier at once.
 *
 * Asserted is behaviour, not timing: no run is released by the watchdog (its warning is on
 * sfmpirun's stderr by default), every rank comes through MPI_Finalize (each prints a line after
 * it), every rank exits 0, and nothing is left behind.
 */
import { expect } from 'chai';
import { program } from '../helpers/programs.js';
import { leftovers, sfmpirun, type Run } from '../helpers/sfmpirun.js';

const WATCHDOG = /released by the finalize watchdog/;

function expectComplete(run: Run, firstLine: RegExp, np: number): void {
  expect(run.code, `exit status; stderr: ${run.stderr}`).to.equal(0);
  expect(run.stderr, 'the watchdog released a barrier').to.not.match(WATCHDOG);
  const out = run.stdout.toString().split('\n').filter(Boolean);
  expect(out.filter((l) => firstLine.test(l)), out.join('\n')).to.have.length(1);
  expect(out.filter((l) => !firstLine.test(l)).sort()).to.deep.equal([...Array(np).keys()].map((r) => `rank ${r} finalized`));
  expect(run.report!.ranks.map((r) => r.code)).to.deep.equal(new Array(np).fill(0));
  expect(leftovers(run.report!.ticket!)).to.deep.equal([]);
}

describe('the MPICH/UCX finalize stall (netns clones)', function () {
  this.timeout(300_000);

  it('ends 10 rings of 4 ranks without the watchdog, every rank through MPI_Finalize', async () => {
    const ring = program('ring_late');
    let proven = 0;
    for (let i = 0; i < 10; i++) {
      const run = await sfmpirun(['--provider', 'netns', '-v', '-np', '4', ring, '0']);
      expectComplete(run, /^ring token 8 after 2 laps of 4 ranks$/, 4);
      if (/PMI barrier \d+ released after \d+ ms without rank\(s\) [\d,]+ \(stall seen within/.test(run.stderr)) proven++;
    }
    // Not asserted: the stall is frequent, not certain. Reported for the reader.
    console.log(`      (${proven} of 10 finalize barriers released on proof of the stall)`);
  });

  it('lets ranks that still exchange messages past the watchdog period finish, rather than release the others under them', async () => {
    // Ranks 2 and 3 finalize at once; 0 and 1 go on for 3.5 s, longer than the 3 s watchdog. A
    // release while 0 and 1 still talk made the others exit under them, and MPI_Finalize of 0 and 1
    // then failed ("error during flush: Endpoint timeout", exit 15).
    const run = await sfmpirun(['--provider', 'netns', '-np', '4', program('tail_pingpong'), '3500']);
    expectComplete(run, /^sum 6, tail of \d+ exchanges$/, 4);
  });
});
