/**
 * Unmodified MPICH programs on VM clones, started by the job runner (the code behind sfmpirun):
 * hello, ring and allreduce across 4 clones of one template, ranks launched through the guest
 * agent, PMI over the ticket's network, through the real engine.
 */
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import type { Engine } from '../../src/engine.js';
import { parseMpirunArgs } from '../../launcher/mpirun/options.js';
import { runJob } from '../../launcher/job/run.js';
import { program } from '../helpers/programs.js';
import { leftovers, vmEngine } from '../helpers/vm.js';

async function sfmpirun(args: string[], cwd: string, engine: Engine): Promise<{ status: number; out: string; err: string }> {
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
  let engine: Engine;
  const made: string[] = [];

  before(() => {
    stateDir = mkdtempSync(join(tmpdir(), 'sf-vmmpi-state-'));
    // The jobs' working directory: the clones mount it from the host.
    cwd = mkdtempSync(join(tmpdir(), 'sf-vmmpi-cwd-'));
    engine = vmEngine(stateDir);
    // Every ticket the jobs make, for the leak check after each test.
    const request = engine.requestTicket.bind(engine);
    engine.requestTicket = async (n, opts) => {
      const t = await request(n, opts);
      made.push(t.id);
      return t;
    };
  });

  afterEach(() => {
    expect(made.flatMap(leftovers), 'left on the host').to.deep.equal([]);
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
