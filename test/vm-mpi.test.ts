/**
 * Unmodified MPICH programs on VM clones, started by the job runner (the code behind sfmpirun):
 * hello, ring and allreduce across 4 clones of one template, ranks launched through the guest
 * agent, PMI over the ticket's network. The engine here is made of the engine's own parts (see
 * vm-fixture.ts) so that this runs before and independently of src/engine.ts.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { logger } from '../src/log.js';
import { openPorts } from '../src/net/firewall.js';
import { VmProvider } from '../src/providers/vm/index.js';
import type { Ticket } from '../src/types.js';
import { parseMpirunArgs } from '../launcher/mpirun/options.js';
import { runJob, type JobEngine } from '../launcher/job/run.js';
import { program } from './helpers/programs.js';
import { leftovers, testTicket, type TestTicket } from './vm-fixture.js';

const log = logger('test-vm-mpi');

function vmEngine(stateDir: string, coldBoot = false): JobEngine & { made: TestTicket[] } {
  const provider = new VmProvider();
  const made: TestTicket[] = [];
  const of = (t: Ticket) => made.find((m) => m.ticket.id === t.id)!;
  return {
    made,
    async requestTicket(n) {
      const t = await testTicket(stateDir, n);
      made.push(t);
      return t.ticket;
    },
    checkpoint: (_t, source) => provider.checkpoint(source, log),
    createClones: (cp, t) => provider.createClones({ ticket: t, ledger: of(t).ledger, log, coldBoot }, cp, t.granted),
    async openPort(t, port) {
      t.openPorts.push(port);
      await openPorts(t.network, [port]);
    },
    async kill(t) {
      const failed = await of(t).teardown();
      if (failed.length) throw new Error(`teardown: ${failed.join('; ')}`);
    },
  };
}

async function sfmpirun(args: string[], cwd: string, engine: JobEngine): Promise<{ status: number; out: string; err: string }> {
  const parsed = parseMpirunArgs(args, process.env, cwd);
  if (parsed.kind !== 'job') throw new Error('not a job');
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  let out = '';
  let err = '';
  stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const status = await runJob(parsed.job, engine, { stdin: Readable.from([]), stdout, stderr, env: process.env });
  return { status, out, err };
}

describe('MPICH on VM clones (job runner + vm provider)', function () {
  this.timeout(600_000);
  let stateDir: string;
  let cwd: string;
  let engine: ReturnType<typeof vmEngine>;

  before(() => {
    stateDir = mkdtempSync(join(tmpdir(), 'sf-vmmpi-state-'));
    // A small working directory: it is copied into the guest image.
    cwd = mkdtempSync(join(tmpdir(), 'sf-vmmpi-cwd-'));
    engine = vmEngine(stateDir);
  });

  afterEach(() => {
    for (const t of engine.made) expect(leftovers(t.ticket.id), `left of ticket ${t.ticket.id}`).to.deep.equal([]);
  });

  after(() => {
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(cwd, { recursive: true, force: true });
  });

  it('runs hello on 4 VM clones, one rank each', async () => {
    const r = await sfmpirun(['-np', '4', '--provider', 'vm', program('hello')], cwd, engine);
    expect(r.status, r.err).to.equal(0);
    const lines = r.out.trim().split('\n').sort();
    expect(lines).to.have.length(4);
    const hosts = new Set(lines.map((l) => /sf[0-9a-f]{6}-\d+/.exec(l)?.[0]));
    expect(hosts.size, r.out).to.equal(4);
  });

  it('passes a token around a ring of 4 VM clones', async () => {
    const r = await sfmpirun(['-np', '4', '--provider', 'vm', program('ring')], cwd, engine);
    expect(r.status, r.err).to.equal(0);
    expect(r.out).to.include('ring token 8 after 2 laps of 4 ranks');
  });

  it('reduces across 4 VM clones with 2 ranks each', async () => {
    const r = await sfmpirun(['-np', '8', '-ppn', '2', '--provider', 'vm', program('allreduce')], cwd, engine);
    expect(r.status, r.err).to.equal(0);
    const sums = r.out.trim().split("\n").map((l) => /sum (\d+)/.exec(l)?.[1]);
    expect(sums, r.out).to.have.length(8);
    expect(new Set(sums).size, r.out).to.equal(1);
  });
});
