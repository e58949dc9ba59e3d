/**
 * The chaos harness (benchmarks/chaos/, issue 8 harness 7) in CI: a fixed seed, 10 netns jobs (every
 * kind of kill once: launcher SIGKILL and SIGTERM, ^C twice, a rank, a holder, a PMI connection, the
 * native launcher, MPI_Abort, a rank's exit code, none) and 2 vm jobs (a QEMU killed, the launcher
 * SIGKILLed). Each job runs sfmpirun from dist/ (npm test builds it first) and must exit with the
 * README's status and leave nothing of its own on the host 2 s after the kill. Each test's title
 * says what its job does; a failure prints the job's line and its problems, and the job's log goes
 * to benchmarks/out/chaos/.
 *
 * A SIGKILLed launcher's cluster dies by itself: its processes on their lifelines, its network and
 * record by the ticket's reaper (issue 8 finding 2).
 * CHAOS_SEED=S runs another seed (replay a job with `npm run chaos -- --seed S --providers P --only K`).
 */
import { rmSync } from 'node:fs';
import { expect } from 'chai';
import { harnessOptions, plansOf, warmups } from '../../benchmarks/chaos/main.js';
import { requireBuild, runChaosJob } from '../../benchmarks/chaos/job.js';
import type { JobPlan } from '../../benchmarks/chaos/plan.js';
import { jobLine, problems } from '../../benchmarks/chaos/report.js';

// Chosen so that the launcher kills, the holder kill and the QEMU kill land while the cluster runs.
const seed = Number(process.env.CHAOS_SEED ?? 38);
const h = harnessOptions(seed);

function title(p: JobPlan): string {
  const what = p.fail ? `${p.kind} (rank ${p.fail.rank}, lap ${p.fail.lap}, code ${p.fail.code})` : p.signal ? `${p.kind} ${p.signal} at ${p.phase}+${p.delayMs} ms` : p.kind;
  return `${p.provider} job ${p.index}: ${p.mpi}, ${p.np} ranks, ${p.ppn} per clone, ${what}`;
}

function cases(plans: JobPlan[]): void {
  for (const plan of plans) {
    it(title(plan), async () => {
      const r = await runChaosJob(plan, h);
      const why = [jobLine(r), ...problems(r)].join('\n  ');
      // Hydra's own finalize deadlock (an upstream bug, README) is the one hang allowed, and only
      // after every rank is done; its launcher is then SIGKILLed and must still leave nothing.
      expect(r.hang && !r.hydraFinalizeHang, why).to.equal(false);
      if (!r.hydraFinalizeHang) expect(r.statusOk, why).to.equal(true);
      expect(r.leftovers, why).to.deep.equal([]);
    });
  }
}

describe(`chaos: jobs killed at random points (seed ${seed})`, function () {
  before(() => requireBuild());
  after(() => rmSync(h.runDir, { recursive: true, force: true }));

  describe('netns', function () {
    this.timeout(180_000);
    cases(plansOf({ seed, counts: { netns: 10 }, graceMs: 2000, observeMs: 5000, results: false }));
  });

  describe('vm', function () {
    this.timeout(600_000);
    const plans = plansOf({ seed, counts: { vm: 2 }, kinds: ['qemu', 'launcher-kill'], graceMs: 2000, observeMs: 5000, results: false });
    // The guest image and template of each MPI, built once before the timed jobs.
    before(async function () {
      for (const w of warmups(plans, seed)) {
        const r = await runChaosJob(w, h);
        expect(r.status, `warm-up of vm/${w.mpi}: ${problems(r).join('; ')}`).to.equal(0);
      }
    });
    cases(plans);
  });
});
