/**
 * sf-pmix with real Open MPI 4.1 ranks started directly on this host with the environment the
 * driver gives (no mpirun, no orted): a C program, Python with mpi4py, a #!/bin/sh wrapper, MPMD,
 * one server per simulated node with fences relayed, and the failures a launcher must survive.
 */
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { program } from '../helpers/programs.js';
import { alive, linesOf, pmixClient, runJob, serverBinary, stateDir, useListenLink, type JobOutcome } from './pmix-harness.js';

const python = '/usr/bin/python3'; // Debian's, where python3-mpi4py is installed
const sourceDir = join(import.meta.dirname, '..', 'programs');

/** Every rank printed "rank r of n app a sum n(n+1)/2". */
function expectRightWorld(out: JobOutcome, apps: number[], progs?: string[]): void {
  const n = apps.length;
  expect(out.failure, out.serverLog.join('\n')).to.equal(undefined);
  for (let r = 0; r < n; r++) {
    const line = linesOf(out, r).find((l) => l.startsWith('rank '));
    const prog = progs ? ` prog ${progs[r]}` : '';
    expect(line, `rank ${r}: ${out.ranks[r].stdout}${out.ranks[r].stderr}`).to.match(new RegExp(`^rank ${r} of ${n} app ${apps[r]} sum ${(n * (n + 1)) / 2}${prog}`));
    expect(out.ranks[r].code, `rank ${r} exit`).to.equal(0);
  }
  expect(out.events.filter((e) => e.type === 'connected').map((e) => (e as { rank: number }).rank).sort()).to.deep.equal([...Array(n).keys()]);
  expect(out.events.filter((e) => e.type === 'finalized')).to.have.length(n);
}

/** Nothing of the job is left: no rank or server process, no job directory, nothing libpmix wrote. */
function expectNothingLeft(out: JobOutcome): void {
  expect(alive([...out.ranks.map((r) => r.pid), ...out.serverPids])).to.deep.equal([]);
  expect(existsSync(out.jobDir), out.jobDir).to.equal(false);
  expect(out.leftInJobDir.filter((p) => p.startsWith('server'))).to.deep.equal([]);
  for (const e of out.serverExits) expect(e, `server exit after ${out.closeMs} ms of shutdown; its log:\n${out.serverLog.join('\n')}`).to.deep.equal({ code: 0, signal: null });
}

describe('sf-pmix with Open MPI ranks on the host', function () {
  this.timeout(120_000);
  const listen = useListenLink();
  let binary: string;
  let rankProg: string;
  let wrapper: string;
  let scratch: string;

  before(() => {
    binary = serverBinary();
    rankProg = program('ompi-rank', 'openmpi');
    mkdirSync(stateDir, { recursive: true });
    scratch = mkdtempSync(join(stateDir, 'pmix-programs-'));
    wrapper = join(scratch, 'ompi-rank-wrapper.sh');
    writeFileSync(wrapper, `#!/bin/sh\n# links no libmpi: only what it execs does\nexec "${rankProg}" wrapped "$@"\n`);
    chmodSync(wrapper, 0o755);
  });
  after(() => rmSync(scratch, { recursive: true, force: true }));

  it('a C program on 2 nodes, one server: right rank, size and allreduce in every rank', async () => {
    const out = await runJob({ name: 'c', apps: [{ argv: [rankProg], np: 4 }], nodes: 2, listen, binary });
    expectRightWorld(out, [0, 0, 0, 0]);
    // One server completes every fence itself: MPI_Init's modex and barrier, MPI_Finalize's barrier.
    expect(out.events.filter((e) => e.type === 'fenceLocal').length).to.be.at.least(2);
    expect(out.events.filter((e) => e.type === 'fence')).to.deep.equal([]);
    expectNothingLeft(out);
  });

  it('Python with mpi4py (the rank links no libmpi itself)', async () => {
    const out = await runJob({ name: 'py', apps: [{ argv: [python, join(sourceDir, 'ompi-rank.py')], np: 3 }], nodes: 2, listen, binary });
    expectRightWorld(out, [0, 0, 0], ['python', 'python', 'python']);
    expectNothingLeft(out);
  });

  it('a #!/bin/sh wrapper that execs an Open MPI program', async () => {
    const out = await runJob({ name: 'sh', apps: [{ argv: [wrapper], np: 2 }], listen, binary });
    expectRightWorld(out, [0, 0], ['wrapped', 'wrapped']);
    expectNothingLeft(out);
  });

  it('MPMD: an Open MPI program and a wrapper as two apps of one world', async () => {
    const out = await runJob({ name: 'mpmd', apps: [{ argv: [rankProg], np: 2 }, { argv: [wrapper], np: 2 }], nodes: 2, listen, binary });
    expectRightWorld(out, [0, 0, 1, 1], ['c', 'c', 'wrapped', 'wrapped']);
    expectNothingLeft(out);
  });

  it('one server per node (PmixJob, the job code\'s seam for hosts): fences relayed, the world still right', async () => {
    const out = await runJob({ name: 'pernode', apps: [{ argv: [rankProg], np: 4 }, { argv: [python, join(sourceDir, 'ompi-rank.py')], np: 2 }], nodes: 3, perNode: true, listen, binary });
    expectRightWorld(out, [0, 0, 0, 0, 1, 1], ['c', 'c', 'c', 'c', 'python', 'python']);
    expect(out.serverPids).to.have.length(3);
    expect(out.relayed).to.be.at.least(2);
    expect(new Set(out.events.filter((e) => e.type === 'fence').map((e) => (e as { server: number }).server))).to.deep.equal(new Set([0, 1, 2]));
    expectNothingLeft(out);
  });

  it('a server that shares its topology: ranks adopt it instead of each discovering the hardware', async () => {
    const out = await runJob({
      name: 'topo',
      apps: [{ argv: [rankProg], np: 2 }],
      listen,
      binary,
      shareTopology: true,
      rankEnv: () => ({ OMPI_MCA_hwloc_base_verbose: '2' }),
    });
    expectRightWorld(out, [0, 0]);
    for (const r of out.ranks) {
      expect(r.stderr).to.include('hwloc:base: topology in shared memory');
      expect(r.stderr).to.not.include('discovering topology');
    }
    // libpmix leaves its topology file in the server's tmpdir: the job directory takes it away.
    expect(out.leftInJobDir).to.include('server0/hwloc.sm');
    expect(existsSync(out.jobDir)).to.equal(false);
  });

  it('ranks still use the server when a Slurm allocation, Flux or jsrun leaks its variables', async () => {
    const leaked = { SLURM_JOBID: '42', SLURM_JOB_ID: '42', SLURM_NODELIST: 'node[1-2]', FLUX_JOB_ID: '7', JSM_JSRUN_PORT: '1', PBS_NODEFILE: '/nonexistent' };
    const out = await runJob({ name: 'leak', apps: [{ argv: [rankProg], np: 2 }], listen, binary, rankEnv: () => leaked });
    expectRightWorld(out, [0, 0]);
    expectNothingLeft(out);
  });

  it('the control: without the direct-launch setting, Open MPI ignores the server and runs singletons', async () => {
    const out = await runJob({ name: 'control', apps: [{ argv: [rankProg], np: 2 }], listen, binary, rankEnv: () => ({ OMPI_MCA_schizo: undefined }) });
    // The first singleton to exit ends the job (it never finalized with us), which may kill the other first.
    const said = out.ranks.map((r) => linesOf(out, r.rank)[0]).filter(Boolean);
    expect(said).to.not.deep.equal([]);
    for (const line of said) expect(line).to.match(/^rank 0 of 1 app -?\d+ sum 1 prog c$/);
    expect(out.events.filter((e) => e.type === 'connected')).to.deep.equal([]);
    expect(out.failure).to.match(/^rank \d exited \(status 0\) before it finalized$/);
    expectNothingLeft(out);
  });

  it('MPI_Abort: reported with its errorcode, the rank exits with it, the others are ended', async () => {
    const out = await runJob({ name: 'abort', apps: [{ argv: [program('abort', 'openmpi')], np: 3 }], nodes: 2, listen, binary });
    const abort = out.events.find((e) => e.type === 'abort');
    expect(abort).to.include({ rank: 0, status: 7 });
    expect(out.failure).to.equal('rank 0 called MPI_Abort with status 7');
    expect(out.ranks[0].code).to.equal(7);
    // The aborting rank's lost connection is not reported as a second failure.
    expect(out.events.filter((e) => e.type === 'disconnected' && e.rank === 0)).to.deep.equal([]);
    expectNothingLeft(out);
  });

  for (const perNode of [false, true]) {
    it(`a rank killed after connecting, before the first fence (${perNode ? 'a server per node' : 'one server'}): reported, the job ends by itself`, async () => {
      const out = await runJob({
        name: 'prefence',
        apps: [{ argv: [pmixClient(), 'sleep'], np: 1 }, { argv: [rankProg], np: 2 }],
        nodes: 3,
        perNode,
        listen,
        binary,
        onEvent: (e, job) => {
          if (e.type === 'connected' && e.rank === 0) job.kill(0);
        },
      });
      // Rank 0's server reports it; with a server per node, the ranks the harness then kills may be
      // reported first by theirs.
      expect(out.events.filter((e) => e.type === 'disconnected').map((e) => (e as { rank: number }).rank)).to.include(0);
      // Whichever the harness heard first: the server's report or the process's exit.
      expect(out.failure).to.match(/^rank 0 (lost its connection to the PMIx server|exited \(SIGKILL\)) before it finalized$/);
      expect(out.ranks[0].signal).to.equal('SIGKILL');
      // The MPI ranks were waiting in MPI_Init's fence; none finished it.
      expect(out.events.filter((e) => e.type === 'finalized')).to.deep.equal([]);
      expectNothingLeft(out);
    });
  }

  it('a rank that dies before it connects: the job ends by itself', async () => {
    const out = await runJob({ name: 'early', apps: [{ argv: ['/bin/sh', '-c', 'exit 3'], np: 1 }, { argv: [rankProg], np: 2 }], listen, binary });
    expect(out.failure).to.equal('rank 0 exited (status 3) before it finalized');
    expect(out.ranks[0].code).to.equal(3);
    expectNothingLeft(out);
  });

  it('a rank killed between fences: reported, the job ends by itself, its files go with the job', async () => {
    let initialized = 0;
    const out = await runJob({
      name: 'midfence',
      apps: [{ argv: [program('ompi-stall', 'openmpi')], np: 3 }],
      listen,
      binary,
      onEvent: (e, job) => {
        if (e.type === 'line' && /initialized$/.test(e.line) && ++initialized === 3) job.kill(2);
      },
    });
    expect(out.events.find((e) => e.type === 'disconnected')).to.include({ rank: 2 });
    expect(out.failure).to.match(/^rank 2 (lost its connection to the PMIx server|exited \(SIGKILL\)) before it finalized$/);
    // Open MPI's session directory and the killed rank's shared-memory segment were in the job's
    // node directory (removed with the job), not in /tmp and /dev/shm.
    expect(out.leftInJobDir.some((p) => p.startsWith('n0/ompi.'))).to.equal(true);
    expect(out.leftInJobDir.some((p) => p.startsWith('n0/vader_segment.'))).to.equal(true);
    expectNothingLeft(out);
  });

  it('spawn, publish and lookup fail in the rank with an error, not a hang', async () => {
    const out = await runJob({ name: 'unsup', apps: [{ argv: [program('ompi-unsupported', 'openmpi')], np: 2 }], listen, binary });
    expect(out.failure, out.ranks.map((r) => r.stdout + r.stderr).join('\n')).to.equal(undefined);
    for (let r = 0; r < 2; r++) {
      const lines = linesOf(out, r);
      for (const call of ['publish', 'lookup', 'spawn']) expect(lines.find((l) => l.startsWith(`${call} `)), `rank ${r} ${call}: ${lines}`).to.match(/ failed: /);
      expect(lines).to.include('unsupported done');
      // Open MPI's own line for the user, from the refusal.
      expect(out.ranks[r].stderr).to.match(/MPI function: MPI_Publish_name\s+Reason: +Underlying runtime environment does not support name publishing/);
    }
    const calls = new Set(out.events.filter((e) => e.type === 'unsupported').map((e) => (e as { call: string }).call));
    expect([...calls].sort()).to.deep.equal(['lookup', 'publish', 'spawn']);
    expectNothingLeft(out);
  });
});
