/**
 * Memory on demand through the vm provider's seam (issue 11), on real QEMU clones (TCG here) of a
 * real template: the memserver on one simulated host (the parent's), memtap and clones on others
 * whose mount namespace cannot open the template's RAM file. The seam is the one the host agents
 * will call: Engine.serveMemory on the parent's host, then a checkpoint source naming the memory
 * (its descriptor shipped) and Engine.createClones on the clone hosts. Here one engine stands for
 * all the hosts: its ticket's network is this machine's bridge (a ticket spanning hosts is the
 * host agents' round); the clones' memory crosses the simulated hosts' underlay.
 *
 * Kept few (TCG): MPI hello and ring on 4 clones across 2 clone hosts, by the job runner behind
 * sfmpirun with --report; then 2 clones on one host: each page fetched once, zero pages never, a
 * damaged granule refused and fetched again, and the memserver killed mid-job (one line, no hang);
 * and a memserver gone before the clones (createClones fails with one line). Nothing may be left.
 */
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { parseMpirunArgs } from '../../launcher/mpirun/options.js';
import { runJob, type JobEngine } from '../../launcher/job/run.js';
import type { JobReport } from '../../launcher/job/report.js';
import type { Engine } from '../../src/engine.js';
import type { MemoryOffer } from '../../src/memory/source.js';
import type { Testbed, TestHost } from '../../src/memory/testbed.js';
import type { Checkpoint, CheckpointSource } from '../../src/providers/checkpoint.js';
import type { Clone, CloneProcess, ExitStatus } from '../../src/providers/clone.js';
import * as memory from '../../src/providers/vm/memory.js';
import type { VmCheckpointDetail } from '../../src/providers/vm/provider.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { leftoversOf, memoryEngine, STATE_DIR, testbed } from '../helpers/memory.js';
import { buildNative } from '../helpers/native.js';
import { program } from '../helpers/programs.js';
import { leftovers as vmLeftovers } from '../helpers/vm.js';

const ENV = { PATH: '/usr/bin:/bin:/usr/sbin:/sbin', HOME: '/root' };

async function sh(c: Clone, script: string): Promise<ExitStatus & { out: string }> {
  const p: CloneProcess = c.spawn(['sh', '-c', script], { env: ENV, cwd: '/' });
  let out = '';
  p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  p.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  return { ...(await p.exited), out };
}

describe('memory on demand: VM clones on hosts that cannot open the template, through the provider seam', function () {
  this.timeout(900_000);
  let engine: Engine;
  let bed: Testbed;
  let parent: TestHost;
  let hostB: TestHost;
  let hostC: TestHost;
  let cwd: string;
  const made: string[] = [];
  let port = 42100 + (process.pid % 400);

  /** The parent's host serves the local checkpoint; the clone hosts get its offer, descriptor shipped. */
  async function serve(ticket: Ticket, local: Checkpoint): Promise<MemoryOffer> {
    const offer = await engine.serveMemory(ticket, local, { listen: `${parent.address}:${port++}`, host: parent });
    const shipped = join(bed.dir, `${ticket.id}.desc`);
    copyFileSync(offer.descriptor, shipped);
    return { ...offer, descriptor: shipped };
  }

  /** The engine as the job runner sees it, with the host agents' steps in its checkpoint. */
  function acrossHosts(hosts: TestHost[]): JobEngine {
    return {
      requestTicket: async (n, opts) => {
        const t = await engine.requestTicket(n, opts);
        made.push(t.id);
        return t;
      },
      checkpoint: async (ticket: Ticket, source: CheckpointSource) => {
        const local = await engine.checkpoint(ticket, source);
        const offer = await serve(ticket, local);
        return engine.checkpoint(ticket, { ...source, memory: { ...offer, hosts } });
      },
      createClones: (t, cp) => engine.createClones(t, cp),
      failure: (t) => engine.failure(t),
      openPort: (t, p) => engine.openPort(t, p),
      resources: (t) => engine.resources(t),
      recordProcess: (t, pid, what) => engine.recordProcess(t, pid, what),
      kill: (t) => engine.kill(t),
      memoryFigures: (t) => engine.memoryFigures(t),
      stateDir: engine.stateDir,
    };
  }

  async function sfmpirun(args: string[], hosts: TestHost[]) {
    const parsed = parseMpirunArgs(args, process.env, cwd);
    if (parsed.kind !== 'job') throw new Error('not a job');
    const [stdout, stderr] = [new PassThrough(), new PassThrough()];
    let out = '';
    let err = '';
    stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const status = await runJob(parsed.job, acrossHosts(hosts), { stdin: Readable.from([]), stdout, stderr, env: process.env });
    return { status, out, err };
  }

  before(async () => {
    buildNative();
    engine = memoryEngine();
    bed = await testbed(['parent', 'b', 'c']);
    [parent, hostB, hostC] = bed.hosts as [TestHost, TestHost, TestHost];
    cwd = mkdtempSync(join(tmpdir(), 'sfmm-cwd-'));
  });

  /** A describe block whose ticket lives across its tests checks for leaks in its own after(). */
  let holding = 0;

  afterEach(async () => {
    if (!holding) await noLeaks();
  });

  /** Nothing left of the tickets made so far (those of a live describe block are not in `made` yet). */
  async function noLeaks() {
    await assertNoLeaks(made, STATE_DIR);
    expect(made.flatMap(vmLeftovers), 'left on the host').to.deep.equal([]);
    const mounts = bed.hosts.flatMap((h) => h.mounts().split('\n').filter((l) => l.includes('fuse.memtap')));
    expect(mounts, 'memtap mounts left on the hosts').to.deep.equal([]);
  }

  after(async () => {
    await bed?.destroy();
    if (bed) expect(leftoversOf(bed), 'left behind').to.deep.equal([]);
    if (cwd) rmSync(cwd, { recursive: true, force: true });
  });

  it('runs MPI hello and ring on 4 clones across 2 hosts whose memory comes from the parent\'s memserver', async () => {
    const report = join(cwd, 'hello.json');
    const hello = await sfmpirun(['-np', '4', '--provider', 'vm', '--report', report, program('hello')], [hostB, hostC]);
    expect(hello.status, hello.err).to.equal(0);
    const lines = hello.out.trim().split('\n');
    expect(lines, hello.out).to.have.length(4);
    expect(new Set(lines.map((l) => /sf[0-9a-f]{6}-\d+/.exec(l)?.[0])).size, hello.out).to.equal(4);

    // What the clone hosts fetched, as --report carries it: a small part of guest RAM, per host.
    const r = JSON.parse(readFileSync(report, 'utf8')) as JobReport;
    expect(r.memory?.hosts.map((h) => h.host).sort()).to.deep.equal([hostB.name, hostC.name]);
    for (const h of r.memory!.hosts) {
      expect(h.failed, h.host).to.equal(null);
      expect(h.pagesFetched, h.host).to.be.above(0);
      expect(h.pagesFetched / h.guestPages, `${h.host}: share of guest pages fetched`).to.be.below(0.25);
      expect(h.pagesAvoided.untouched + h.pagesAvoided.freed, h.host).to.be.above(h.guestPages / 2);
      expect(h.bytesReceived, h.host).to.be.at.least(h.pagesFetched * 4096);
    }
    const [server] = r.memory!.servers;
    expect(server!.dataBytes).to.equal(r.memory!.hosts.reduce((n, h) => n + h.pagesFetched, 0) * 4096);
    expect(server!.bytesSent).to.be.at.least(server!.dataBytes);

    const ring = await sfmpirun(['-np', '4', '--provider', 'vm', program('ring')], [hostB, hostC]);
    expect(ring.status, ring.err).to.equal(0);
    expect(ring.out).to.include('ring token 8 after 2 laps of 4 ranks');
  });

  describe('two clones on one host', () => {
    let ticket: Ticket;
    let local: Checkpoint<VmCheckpointDetail>;
    let offer: MemoryOffer;
    let clones: Clone[];

    before(async () => {
      holding++;
      ticket = await engine.requestTicket(2, { provider: 'vm' });
      local = (await engine.checkpoint(ticket, { programs: [], mpi: 'none' })) as Checkpoint<VmCheckpointDetail>;
      offer = await serve(ticket, local);
      const remote = await engine.checkpoint(ticket, { programs: [], mpi: 'none', memory: { ...offer, hosts: [hostB] } });
      clones = await engine.createClones(ticket, remote);
    });

    after(async () => {
      holding--;
      if (!ticket) return;
      await engine.kill(ticket).catch(() => undefined);
      made.push(ticket.id);
      await noLeaks();
    });

    it('the host cannot open the template; its clones ran from memtap, fetching each page once and no zero page', async () => {
      const open = await hostB.sh(`head -c1 ${local.detail.template!.ram}`);
      expect(open.exitCode, 'the clone host opened the template RAM file').to.not.equal(0);
      expect(open.stderr).to.match(/No such file/);
      for (const [i, c] of clones.entries()) expect((await sh(c, 'hostname')).out.trim()).to.equal(`sf${ticket.id}-${i}`);
      // The guests still run and may fault a page between the reading of the memserver's counters
      // and the memtap's: read again until the two agree (they settle once the guests are idle).
      let figures = (await engine.memoryFigures(ticket))!;
      for (let i = 0; i < 20 && figures.servers[0]?.dataBytes !== (figures.hosts[0]?.pagesFetched ?? 0) * 4096; i++) {
        await new Promise((r) => setTimeout(r, 250));
        figures = (await engine.memoryFigures(ticket))!;
      }
      const [h] = figures.hosts;
      expect(figures.hosts).to.have.length(1);
      expect(h!.host).to.equal(hostB.name);
      const [s] = figures.servers;
      // One host: every data page it got crossed once (the memserver counts granules sent twice).
      expect(s!.dataBytes).to.equal(h!.pagesFetched * 4096);
      expect(h!.pagesFetched).to.be.below(h!.guestPages - h!.pagesAvoided.untouched - h!.pagesAvoided.freed);
    });

    it('zero pages are never fetched, and a damaged granule is refused and fetched again', async () => {
      const server = await counters(ticket, 'server');
      expect(server.resent, 'granules sent twice to the one host').to.equal(0);
      expect(server.zeroRequests, 'zero granules requested').to.equal(0);
      await corruptNext(ticket);
      // busybox lives in guest RAM (the initramfs): hashing it faults in pages not fetched yet.
      const r = await sh(clones[1]!, 'md5sum /bin/busybox');
      expect(r.out.split(' ')[0]).to.equal(createHash('md5').update(readFileSync('/bin/busybox')).digest('hex'));
      const tap = await counters(ticket, 'tap');
      expect(tap.checksumFailures).to.equal(1);
      expect(tap.refetches).to.equal(1);
      expect(tap.failed).to.equal(null);
      expect((await counters(ticket, 'server')).corrupted).to.equal(1);
    });

    it('the memserver killed mid-job: the ticket fails with one line naming the host and the cause, without a hang', async () => {
      const lost = engine.failure(ticket);
      killServer(ticket);
      // Touch guest memory never fetched: every file of the guest's root, read once.
      const touch = sh(clones[0]!, 'find / -xdev -type f -exec cat {} + > /dev/null 2>&1; echo survived');
      const line = await Promise.race([lost, new Promise<null>((res) => setTimeout(() => res(null), 60_000))]);
      expect(line, 'no failure a minute after the memserver died').to.not.equal(null);
      expect(line!.split('\n')).to.have.length(1);
      expect(line).to.match(new RegExp(`ticket ${ticket.id}.*(host ${hostB.name}: memserver [\\d.]+:\\d+: it closed the connection|memserver .* was killed by SIGKILL)`));
      await engine.kill(ticket);
      expect((await touch).out).to.not.include('survived');
    });
  });

  it('a memserver gone before the clones start: createClones fails with one line naming the host, and leaves nothing', async () => {
    const ticket = await engine.requestTicket(1, { provider: 'vm' });
    made.push(ticket.id);
    const local = await engine.checkpoint(ticket, { programs: [], mpi: 'none' });
    const offer = await serve(ticket, local);
    killServer(ticket);
    await new Promise((r) => setTimeout(r, 300));
    const remote = await engine.checkpoint(ticket, { programs: [], mpi: 'none', memory: { ...offer, hosts: [hostC] } });
    let err: Error | null = null;
    await engine.createClones(ticket, remote).catch((e: Error) => (err = e));
    expect(err, 'createClones succeeded').to.not.equal(null);
    expect(err!.name).to.equal('ProvisionError');
    expect(err!.message.split('\n')).to.have.length(1);
    expect(err!.message).to.match(new RegExp(`host ${hostC.name}: cannot connect to the memserver [\\d.]+:\\d+: Connection refused`));
  });
});

// The helpers' live counters and test hooks, reached through the provider's registry of them.
async function counters(ticket: Ticket, which: 'tap'): Promise<Awaited<ReturnType<memory.TestHooks['tap']>>>;
async function counters(ticket: Ticket, which: 'server'): Promise<Awaited<ReturnType<memory.TestHooks['server']>>>;
async function counters(ticket: Ticket, which: 'tap' | 'server') {
  const hooks = memory.testHooks(ticket.id);
  return which === 'tap' ? hooks.tap() : hooks.server();
}
const corruptNext = (ticket: Ticket) => memory.testHooks(ticket.id).corrupt();
const killServer = (ticket: Ticket) => memory.testHooks(ticket.id).killServer();
