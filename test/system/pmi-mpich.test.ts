/**
 * The PMI-1 server against real MPICH ranks: host processes, no clones (the ranks are the real
 * MPICH 4.0 client; see test/unit/pmi.test.ts for the wire protocol itself).
 */
import { expect } from 'chai';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { PmiServer } from '../../launcher/pmi/server.js';
import { placeRanks } from '../../launcher/job/placement.js';
import { processMapping } from '../../launcher/pmi/mapping.js';
import { closeServers, RawClient, started } from '../helpers/pmi.js';

const here = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const buildDir = resolve(here, '.build/pmi');

/** Compiles test/programs/<name>.c with mpicc.mpich into test/.build/pmi/ when its source is newer. */
function mpichProgram(name: string): string {
  const src = join(here, 'programs', `${name}.c`);
  const out = join(buildDir, name);
  if (!existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs) {
    mkdirSync(buildDir, { recursive: true });
    try {
      execFileSync('mpicc.mpich', ['-O1', '-Wall', '-o', out, src], { stdio: ['ignore', 'ignore', 'pipe'] });
    } catch (e) {
      throw new Error(`cannot compile ${src} with mpicc.mpich (install libmpich-dev): ${String((e as { stderr?: Buffer }).stderr ?? e)}`);
    }
  }
  return out;
}

interface RankResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Starts `np` ranks of `program` as host processes with the server's rankEnv, in parallel, and
 * resolves when all have exited. `tcp` forces UCX over TCP, as between clones (where MPICH's
 * finalize hang lives); otherwise ranks on one host use shared memory.
 */
/** Rank processes still running; afterEach kills and reports any, so no test leaves one behind. */
const live = new Set<ChildProcess>();
// mocha --exit ends the process without waiting for hooks of a cut run; take the ranks along.
process.on('exit', () => live.forEach((c) => c.kill('SIGKILL')));

function runRanks(srv: PmiServer, program: string, np: number, opts: { args?: string[]; tcp?: boolean; onStart?: (kill: () => void) => void } = {}): Promise<RankResult[]> {
  const children = [...Array(np).keys()].map((rank) => {
    const child = spawn(program, opts.args ?? [], {
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...(opts.tcp ? { UCX_TLS: 'tcp,self' } : {}), UCX_NET_DEVICES: 'lo', ...srv.rankEnv(rank) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    live.add(child);
    child.on('exit', () => live.delete(child));
    return child;
  });
  opts.onStart?.(() => children.forEach((c) => c.kill('SIGKILL')));
  return Promise.all(
    children.map(
      (child) =>
        new Promise<RankResult>((resolvePromise, reject) => {
          let stdout = '';
          let stderr = '';
          child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
          child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
          child.on('error', reject);
          child.on('close', (code, signal) => resolvePromise({ code, signal, stdout, stderr }));
        }),
    ),
  );
}

describe('PMI-1 server with real MPICH ranks', function () {
  this.timeout(180_000);
  const programs: Record<string, string> = {};

  before(() => {
    for (const p of ['pmi-hello', 'pmi-ring', 'pmi-allreduce', 'pmi-abort', 'pmi-names']) programs[p] = mpichProgram(p);
  });

  afterEach(async function () {
    await closeServers();
    const left = [...live];
    if (left.length === 0) return;
    await Promise.all(left.map((c) => new Promise((r) => (c.once('exit', r), c.kill('SIGKILL')))));
    if (this.currentTest?.state === 'passed') throw new Error(`${left.length} rank process(es) still running after the test`);
  });

    it('runs a 4-rank hello: every rank learns its rank, the size and the universe size', async () => {
      const { srv } = await started(4, { universeSize: 6 });
      const finalized: number[] = [];
      srv.on('finalize', (r) => finalized.push(r));
      const results = await runRanks(srv, programs['pmi-hello']!, 4);
      expect(results.map((r) => r.code)).to.deep.equal([0, 0, 0, 0]);
      results.forEach((r, rank) => expect(r.stdout).to.equal(`pmi-hello rank ${rank} of 4 appnum 0 universe 6\n`));
      expect(finalized.sort()).to.deep.equal([0, 1, 2, 3]);
      expect(srv.finalizedRanks()).to.deep.equal([0, 1, 2, 3]);
    });

    it('gives each MPMD section its appnum', async () => {
      const { srv } = await started(3, { appnums: [0, 1, 1] });
      const results = await runRanks(srv, programs['pmi-hello']!, 3);
      expect(results.map((r) => /appnum (\d+)/.exec(r.stdout)?.[1])).to.deep.equal(['0', '1', '1']);
    });

    it('runs an allreduce over 4 ranks', async () => {
      const { srv } = await started(4);
      const results = await runRanks(srv, programs['pmi-allreduce']!, 4);
      expect(results.map((r) => r.code)).to.deep.equal([0, 0, 0, 0]);
      results.forEach((r, rank) => expect(r.stdout).to.equal(`pmi-allreduce rank ${rank} sum 10\n`));
    });

    it('accepts a cyclic process mapping over two nodes', async () => {
      const { srv } = await started(4, { processMapping: processMapping(placeRanks(4, 2, 2, 'cyclic')) });
      const results = await runRanks(srv, programs['pmi-allreduce']!, 4, { tcp: true });
      expect(results.map((r) => r.code)).to.deep.equal([0, 0, 0, 0]);
      expect(results[3]!.stdout).to.equal('pmi-allreduce rank 3 sum 10\n');
    });

    it('serves MPI_Publish_name, MPI_Lookup_name and MPI_Unpublish_name', async () => {
      const { srv } = await started(2);
      const results = await runRanks(srv, programs['pmi-names']!, 2);
      expect(results.map((r) => r.code)).to.deep.equal([0, 0]);
      expect(results[0]!.stdout).to.include('pmi-names publish rc 0');
      expect(results[0]!.stdout).to.include('pmi-names rank 0 lookup rc 0 port tag#0$port#4242$');
      expect(results[1]!.stdout).to.include('pmi-names rank 1 lookup rc 0 port tag#0$port#4242$');
      expect(results[0]!.stdout).to.include('pmi-names unpublish rc 0');
      expect(results[0]!.stdout).to.include('pmi-names lookup after unpublish not found');
    });

    it("reports MPI_Abort as an 'abort' event with the rank and its error code", async () => {
      const { srv } = await started(3);
      const aborts: Array<[number, number]> = [];
      let killAll = (): void => undefined;
      srv.on('abort', (rank, code) => {
        aborts.push([rank, code]);
        killAll(); // what the job runner does: stop the other ranks
      });
      const results = await runRanks(srv, programs['pmi-abort']!, 3, { args: ['5'], onStart: (k) => (killAll = k) });
      expect(aborts).to.deep.equal([[2, 5]]);
      expect(results[2]!.stderr).to.include('pmi-abort rank 2 aborting with 5');
    });

    it("reports a rank that exits without finalize as a 'disconnect' event", async () => {
      const { srv } = await started(2);
      const disconnects: Array<[number, boolean]> = [];
      srv.on('disconnect', (rank, finalized) => disconnects.push([rank, finalized]));
      let killAll = (): void => undefined;
      srv.on('abort', () => killAll());
      await runRanks(srv, programs['pmi-abort']!, 2, { args: ['3'], onStart: (k) => (killAll = k) });
      await new Promise((r) => setTimeout(r, 100));
      expect(disconnects.sort()).to.deep.equal([
        [0, false],
        [1, false],
      ]);
    });

    it('runs the MPICH ring over UCX TCP 20 times in a row, the watchdog ending every finalize hang', async function () {
      // Up to 20 watchdog releases of 3 s each, on a loaded 2-core host.
      this.timeout(600_000);
      let watchdogReleases = 0;
      for (let run = 0; run < 20; run++) {
        const { srv, lines } = await started(4, { finalizeTimeoutMs: 1000 });
        const results = await runRanks(srv, programs['pmi-ring']!, 4, { args: ['2'], tcp: true });
        expect(results.map((r) => r.code), `run ${run}`).to.deep.equal([0, 0, 0, 0]);
        expect(results[0]!.stdout).to.equal('pmi-ring token 8 after 2 laps of 4 ranks\n');
        watchdogReleases += lines.filter((l) => /released by the finalize watchdog/.test(l)).length;
        await srv.close();
      }
      // Not asserted above zero: the hang is frequent, not certain. Reported for the reader.
      console.log(`      (finalize watchdog released ${watchdogReleases} of 20 finalize barriers)`);
    });

    it('answers malformed, unknown, binary and overlong lines with errors and keeps serving', async () => {
      const { srv, port, lines } = await started(2);
      const c = await RawClient.open(port);
      expect(await c.ask('hello there\n')).to.equal('cmd=error rc=-1 msg=malformed_command');
      expect(await c.ask('cmd=\n')).to.equal('cmd=error rc=-1 msg=malformed_command');
      expect(await c.ask('cmd=get key\n')).to.equal('cmd=error rc=-1 msg=malformed_command');
      expect(await c.ask('cmd=frobnicate x=1\n')).to.equal('cmd=error rc=-1 msg=unknown_command');
      c.send(Buffer.from([0x00, 0xff, 0xfe, 0x80, 0x0a]));
      expect(await c.line()).to.equal('cmd=error rc=-1 msg=malformed_command');
      c.send(`cmd=put key=big value=${'x'.repeat(100 * 1024)}`);
      expect(await c.line()).to.equal('cmd=error rc=-1 msg=line_too_long');
      c.send(`${'y'.repeat(10)}\n`); // the rest of the overlong line: skipped, no reply
      expect(await c.ask('cmd=get_maxes\n')).to.match(/^cmd=maxes /);
      expect(await c.ask(`cmd=put key=${'k'.repeat(65)} value=1\n`)).to.match(/^cmd=put_result rc=-1 msg=key_longer_than_64/);
      expect(await c.ask(`cmd=put key=k value=${'v'.repeat(1025)}\n`)).to.match(/^cmd=put_result rc=-1 msg=value_longer_than_1024/);
      expect(await c.ask('cmd=barrier_in\n')).to.equal('cmd=error rc=-1 msg=barrier_needs_initack');
      expect(await c.ask('cmd=abort exitcode=1\n')).to.equal('cmd=error rc=-1 msg=abort_needs_initack');
      expect(await c.ask('cmd=initack pmiid=7\n')).to.equal('cmd=initack rc=-1 msg=bad_pmiid');
      expect(await c.ask('cmd=initack pmiid=-1\n')).to.equal('cmd=initack rc=-1 msg=bad_pmiid');
      expect(await c.ask('cmd=init pmi_version=2 pmi_subversion=0\n')).to.match(/^cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=-1 /);
      expect((await c.initack(1))[0]).to.equal('cmd=initack');
      const d = await RawClient.open(port);
      expect(await d.ask('cmd=initack pmiid=1\n')).to.equal('cmd=initack rc=-1 msg=pmiid_in_use');
      d.close();
      c.close();
      expect(lines.some((l) => /malformed line/.test(l))).to.equal(true);
      expect(lines.some((l) => /longer than 64 KiB/.test(l))).to.equal(true);
      // And the server still runs a real job.
      const results = await runRanks(srv, programs['pmi-hello']!, 2);
      expect(results.map((r) => r.code)).to.deep.equal([0, 0]);
    });
});
