/**
 * Open MPI through our PMIx server, the default, end to end through the real sfmpirun on netns
 * clones: programs wrapped or not (a C program, Python with mpi4py, a #!/bin/sh wrapper, MPMD),
 * and what the launcher must handle itself because libpmix does not: MPI_Abort, a rank killed
 * before the first fence or between fences, a rank leaving without finalizing, hostile clients,
 * ranks that ran as singletons, refused calls, sf-pmix itself dying. Every test checks that
 * nothing is left: the ticket's resources (namespaces, links, table, record, processes naming it),
 * every sf-pmix the report names, and, in a cluster kept after the job, the job's directory.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { buildDir, program, sourceDir } from '../helpers/programs.js';
import { cli, leftovers, sfmpirun, stateDir, type Run } from '../helpers/sfmpirun.js';
import { alive, pmixClient } from './pmix-harness.js';

const python = '/usr/bin/python3'; // Debian's, where python3-mpi4py is installed
const safety = ['--timeout', '120']; // a hang fails as status 124 instead of stalling the suite

function lines(run: Run): string[] {
  return run.stdout.toString().split('\n').filter(Boolean).sort();
}

/** Nothing of the job is left on the host: its ticket's resources and its sf-pmix servers. */
async function expectClean(run: Run): Promise<void> {
  expect(run.report, `no report; stderr: ${run.stderr}`).to.not.equal(null);
  expect(leftovers(run.report!.ticket!)).to.deep.equal([]);
  const pids = run.report!.processManagers?.pmix.map((s) => s.pid) ?? [];
  expect(pids, 'the report names the PMIx server').to.have.length(1);
  const deadline = Date.now() + 3000;
  while (alive(pids).length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  expect(alive(pids), 'sf-pmix outlived its job').to.deep.equal([]);
}

/** Every rank printed "rank r of n app a sum n(n+1)/2 prog p" and contacted our PMIx server. */
function expectRightWorld(run: Run, apps: number[], progs: string[]): void {
  expect(run.code, run.stderr).to.equal(0);
  const n = apps.length;
  const want = apps.map((a, r) => `rank ${r} of ${n} app ${a} sum ${(n * (n + 1)) / 2} prog ${progs[r]}`).sort();
  expect(lines(run).filter((l) => l.startsWith('rank ')), run.stderr).to.deep.equal(want);
  expect(run.report!.launch).to.equal('direct');
  for (const r of run.report!.ranks) {
    expect(r.contacted, `rank ${r.rank}`).to.deep.equal(['pmix']);
    expect(r.finalized, `rank ${r.rank}`).to.equal(true);
    expect(r.singleton).to.equal(false);
  }
}

/** The sf-pmix child of a running sfmpirun. */
function pmixChild(parent: number): number | undefined {
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const m = /^\d+ \((.*)\) \S (\d+)/.exec(stat);
      if (m && m[1] === 'sf-pmix' && Number(m[2]) === parent) return Number(pid);
    } catch {
      /* gone */
    }
  }
  return undefined;
}

describe('sfmpirun: Open MPI through our PMIx server (netns)', function () {
  this.timeout(180_000);
  let scratch: string;
  let rankProg: string;
  /** A #!/bin/sh script in the scratch directory. */
  const script = (name: string, body: string): string => {
    const p = join(scratch, name);
    writeFileSync(p, `#!/bin/sh\n${body}\n`);
    chmodSync(p, 0o755);
    return p;
  };

  before(() => {
    rankProg = program('ompi-rank', 'openmpi');
    mkdirSync(buildDir, { recursive: true });
    // Under the project: a netns clone does not see the host's /tmp.
    scratch = mkdtempSync(join(buildDir, 'sfmpirun-pmix-'));
  });
  after(() => rmSync(scratch, { recursive: true, force: true }));

  describe('programs, wrapped or not', () => {
    it('a C program linked with Open MPI, two ranks per clone', async () => {
      const run = await sfmpirun([...safety, '-ppn', '2', '-np', '4', rankProg]);
      expectRightWorld(run, [0, 0, 0, 0], ['c', 'c', 'c', 'c']);
      expect(run.report!.apps).to.deep.equal([{ program: rankProg, mpi: 'openmpi', via: 'ldd' }]);
      expect(run.report!.clones).to.have.length(2);
      await expectClean(run);
    });

    it('a Python program with mpi4py', async () => {
      const run = await sfmpirun([...safety, '-np', '3', python, join(sourceDir, 'ompi-rank.py')]);
      expectRightWorld(run, [0, 0, 0], ['python', 'python', 'python']);
      expect(run.report!.apps[0]).to.include({ mpi: 'openmpi', via: 'python3 + mpi4py' });
      await expectClean(run);
    });

    it('a #!/bin/sh wrapper that execs an Open MPI program', async () => {
      const wrapper = script('wrapper.sh', `exec "${rankProg}" wrapped "$@"`);
      const run = await sfmpirun([...safety, '-np', '2', wrapper]);
      expectRightWorld(run, [0, 0], ['wrapped', 'wrapped']);
      expect(run.report!.apps[0]).to.include({ mpi: 'openmpi', via: `#!/bin/sh -> ${rankProg} (ldd)` });
      await expectClean(run);
    });

    it('MPMD: an Open MPI program and a wrapper in one world', async () => {
      const wrapper = script('wrapper-mpmd.sh', `exec "${rankProg}" wrapped "$@"`);
      const run = await sfmpirun([...safety, '-np', '2', rankProg, ':', '-np', '2', wrapper]);
      expectRightWorld(run, [0, 0, 1, 1], ['c', 'c', 'wrapped', 'wrapped']);
      await expectClean(run);
    });
  });

  describe('failures are the launcher’s', () => {
    it("MPI_Abort ends the job with its errorcode", async () => {
      const run = await sfmpirun([...safety, '-np', '3', program('abort', 'openmpi')]);
      expect(run.code, run.stderr).to.equal(7);
      expect(run.stderr).to.match(/^sfmpirun: rank 0 \(clone sf[0-9a-f]{6}-0\) called MPI_Abort with errorcode 7$/m);
      await expectClean(run);
    });

    it('a rank killed after connecting, before the first fence: its status, and the others end', async () => {
      const run = await sfmpirun([...safety, '-np', '1', pmixClient(), 'die', ':', '-np', '2', rankProg]);
      expect(run.code, run.stderr).to.equal(137);
      expect(run.stderr).to.match(/^sfmpirun: rank 0 \(clone \S+\) was killed by signal 9 \(SIGKILL\)$/m);
      expect(lines(run)).to.include('init ok rank 0');
      expect(lines(run).filter((l) => l.startsWith('rank '))).to.deep.equal([]);
      await expectClean(run);
    });

    it('a rank killed between fences: its status, and the others end', async () => {
      const run = await sfmpirun([...safety, '-np', '3', program('ompi-stall', 'openmpi'), 'kill']);
      expect(run.code, run.stderr).to.equal(137);
      expect(run.stderr).to.match(/^sfmpirun: rank 2 \(clone \S+\) was killed by signal 9 \(SIGKILL\)$/m);
      expect(lines(run)).to.include.members(['rank 0 initialized', 'rank 1 initialized', 'rank 2 initialized']);
      // Whether ranks 0 and 1 got out of MPI_Finalize is libpmix's doing (with one server it
      // completes their fence as a partial success when rank 2 is lost); the job's status is ours.
      await expectClean(run);
    });

    it('a rank that exits 0 without finalizing while the others wait: status 1, said so', async () => {
      const run = await sfmpirun([...safety, '-np', '1', pmixClient(), 'exit', ':', '-np', '2', rankProg]);
      expect(run.code, run.stderr).to.equal(1);
      expect(run.stderr).to.match(/^sfmpirun: rank 0 \(clone \S+\) exited with code 0 without finalizing MPI while other ranks waited for it$/m);
      expect(run.report!.ranks[0]).to.include({ left: 'unfinalized', finalized: false });
      await expectClean(run);
    });

    it('hostile clients (wrong namespace, wrong rank, garbage) are refused; the job runs right', async () => {
      const client = pmixClient();
      // Rank 0 first plays three hostile clients against the job's own server, then becomes rank 0.
      const hostile = script(
        'hostile.sh',
        [
          `PMIX_NAMESPACE=another-job "${client}" init | sed 's/^/namespace: /'`,
          `PMIX_RANK=7 "${client}" init | sed 's/^/rank: /'`,
          `addr=\${PMIX_SERVER_URI41#*tcp4://}`,
          `/bin/bash -c "head -c 64 /dev/urandom > /dev/tcp/\${addr%:*}/\${addr##*:}" && echo 'garbage: sent'`,
          `exec "${rankProg}" hostile`,
        ].join('\n'),
      );
      const run = await sfmpirun([...safety, '-np', '1', hostile, ':', '-np', '2', rankProg]);
      expect(lines(run)).to.include.members(['garbage: sent']);
      expect(lines(run).find((l) => l.startsWith('namespace: '))).to.match(/^namespace: init failed: /);
      expect(lines(run).find((l) => l.startsWith('rank: '))).to.match(/^rank: init failed: /);
      expectRightWorld(run, [0, 1, 1], ['hostile', 'c', 'c']);
      await expectClean(run);
    });

    it('sf-pmix dying mid-job ends the job with status 4 and one line', async () => {
      let killed = false;
      const run = await sfmpirun([...safety, '-np', '2', program('sleeper', 'openmpi')], {
        onStdout: (text, child) => {
          if (killed || (text.match(/ready/g) ?? []).length < 2) return;
          const pid = pmixChild(child.pid!);
          if (pid) {
            killed = true;
            process.kill(pid, 'SIGKILL');
          }
        },
      });
      expect(killed, 'found and killed sf-pmix').to.equal(true);
      expect(run.code, run.stderr).to.equal(4);
      expect(run.stderr.split('\n').filter((l) => l.startsWith('sfmpirun:'))).to.have.length(1);
      expect(run.stderr).to.match(/^sfmpirun: the PMIx server failed during the job \(sf-pmix exited \(SIGKILL\).*\); stopped every rank$/m);
      await expectClean(run);
    });
  });

  describe('what the launcher tells', () => {
    it('ranks that ran as singletons (a wrapper cleared their environment): one warning line, named in the report', async () => {
      const clear = script('clear.sh', `exec env -i PATH=/usr/bin:/bin "${rankProg}" "$@"`);
      const run = await sfmpirun([...safety, '-np', '2', clear]);
      expect(run.code, run.stderr).to.equal(0);
      expect(lines(run)).to.deep.equal(['rank 0 of 1 app 0 sum 1 prog c', 'rank 0 of 1 app 0 sum 1 prog c']);
      const warnings = run.stderr.split('\n').filter((l) => l.startsWith('sfmpirun: warning:'));
      expect(warnings).to.have.length(1);
      expect(warnings[0]).to.match(/^sfmpirun: warning: ranks 0, 1 \(clones \S+, \S+\) ran as singletons: each exited without ever contacting sfmpirun's process managers \(PMI-1 or PMIx\)/);
      expect(run.report!.ranks.map((r) => r.singleton)).to.deep.equal([true, true]);
      await expectClean(run);
    });

    it('a singleton among ranks waiting for it ends the job (status 1) with the warning', async () => {
      const clear = script('clear-one.sh', `exec env -i PATH=/usr/bin:/bin "${rankProg}" "$@"`);
      const run = await sfmpirun([...safety, '-np', '1', clear, ':', '-np', '2', rankProg]);
      expect(run.code, run.stderr).to.equal(1);
      expect(run.stderr).to.match(/^sfmpirun: rank 0 \(clone \S+\) exited with code 0 without ever contacting the process managers while other ranks waited for it \(it ran as a singleton\)$/m);
      expect(run.stderr).to.match(/^sfmpirun: warning: rank 0 \(clone \S+\) ran as a singleton: /m);
      expect(run.report!.ranks[0]).to.include({ singleton: true, left: 'never-contacted' });
      await expectClean(run);
    });

    it('refused calls (publish, lookup, spawn) fail in the rank and are named in -v and the report', async () => {
      const run = await sfmpirun([...safety, '-v', '-np', '2', program('ompi-unsupported', 'openmpi')]);
      expect(run.code, run.stderr).to.equal(0);
      expect(lines(run).filter((l) => l === 'unsupported done')).to.have.length(2);
      expect(run.stderr).to.match(/rank 0 asked the PMIx server for publish, which sfmpirun does not support; the call failed in the rank/);
      for (const r of run.report!.ranks) expect([...(r.unsupported ?? [])].sort()).to.deep.equal(['lookup', 'publish', 'spawn']);
      await expectClean(run);
    });
  });

  describe('the job’s directory', () => {
    it("holds Open MPI's files in each clone, and is gone from a cluster kept after the job", async () => {
      const lister = script('lister.sh', [`"${rankProg}" listed`, 'echo "jobdir $OMPI_MCA_orte_tmpdir_base $OMPI_MCA_btl_vader_backing_directory"', 'ls "$OMPI_MCA_orte_tmpdir_base" | sed "s/^/in jobdir: /"'].join('\n'));
      const run = await sfmpirun([...safety, '--keep', '-ppn', '2', '-np', '2', lister]);
      const ticket = run.report?.ticket;
      try {
        expect(run.code, run.stderr).to.equal(0);
        const dir = `/tmp/snowflock-job-${ticket}`;
        expect(lines(run)).to.include(`jobdir ${dir} ${dir}`);
        expect(lines(run).some((l) => /^in jobdir: ompi\./.test(l)), lines(run).join('\n')).to.equal(true);
        const inClones = execFileSync(process.execPath, ['--import', 'tsx', cli.replace('sfmpirun.ts', 'snowflock.ts'), 'exec', ticket!, 'all', '--', 'ls', '-a', '/tmp'], {
          env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir },
          encoding: 'utf8',
        });
        expect(inClones).to.not.include('snowflock-job-');
      } finally {
        if (ticket) execFileSync(process.execPath, ['--import', 'tsx', cli.replace('sfmpirun.ts', 'snowflock.ts'), 'down', ticket], { env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir }, stdio: 'ignore' });
      }
      expect(leftovers(ticket!)).to.deep.equal([]);
    });
  });
});
