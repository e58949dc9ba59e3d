/**
 * The PMI-1 server against real MPICH ranks (host processes, no clones) and against raw sockets
 * speaking the wire protocol, well and badly.
 */
import { expect } from 'chai';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import winston from 'winston';
import { placeRanks, processMapping } from '../launcher/placement.js';
import { PmiServer, type PmiServerOptions } from '../launcher/pmi/server.js';

const here = dirname(fileURLToPath(import.meta.url));
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

/** A logger that keeps its lines, so tests can check what the server said. */
function capturingLog(): { log: winston.Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(String(JSON.parse(chunk.toString()).message));
      done();
    },
  });
  const log = winston.createLogger({ level: 'debug', transports: [new winston.transports.Stream({ stream: sink, format: winston.format.json() })] });
  return { log, lines };
}

function server(size: number, extra: Partial<PmiServerOptions> = {}) {
  const { log, lines } = capturingLog();
  const srv = new PmiServer({ size, processMapping: processMapping(placeRanks(size, 1, size, 'block')), log, ...extra });
  return { srv, lines };
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
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin', ...(opts.tcp ? { UCX_TLS: 'tcp,self' } : {}), ...srv.rankEnv(rank) },
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

/** A raw PMI client: send lines, read reply lines. */
class RawClient {
  private buffered = '';
  private waiters: Array<() => void> = [];
  closed = false;

  private constructor(readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      this.buffered += d;
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static open(port: number): Promise<RawClient> {
    return new Promise((resolvePromise, reject) => {
      const s = connect({ host: '127.0.0.1', port }, () => resolvePromise(new RawClient(s)));
      s.once('error', reject);
    });
  }

  send(text: string | Buffer): void {
    this.socket.write(text);
  }

  /** The next reply line, or null when none arrives within `ms`. */
  async line(ms = 2000): Promise<string | null> {
    const deadline = Date.now() + ms;
    for (;;) {
      const nl = this.buffered.indexOf('\n');
      if (nl >= 0) {
        const l = this.buffered.slice(0, nl);
        this.buffered = this.buffered.slice(nl + 1);
        return l;
      }
      const left = deadline - Date.now();
      if (left <= 0 || this.closed) return null;
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async ask(text: string, ms?: number): Promise<string | null> {
    this.send(text);
    return this.line(ms);
  }

  /** initack as rank `rank`; returns the four reply lines. */
  async initack(rank: number): Promise<Array<string | null>> {
    this.send(`cmd=initack pmiid=${rank}\n`);
    return [await this.line(), await this.line(), await this.line(), await this.line()];
  }

  close(): void {
    this.socket.destroy();
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    w.forEach((f) => f());
  }
}

describe('PMI-1 server', function () {
  this.timeout(180_000);
  const programs: Record<string, string> = {};
  const open: PmiServer[] = [];

  before(() => {
    for (const p of ['pmi-hello', 'pmi-ring', 'pmi-allreduce', 'pmi-abort', 'pmi-names']) programs[p] = mpichProgram(p);
  });

  afterEach(async function () {
    await Promise.all(open.splice(0).map((s) => s.close()));
    const left = [...live];
    if (left.length === 0) return;
    await Promise.all(left.map((c) => new Promise((r) => (c.once('exit', r), c.kill('SIGKILL')))));
    if (this.currentTest?.state === 'passed') throw new Error(`${left.length} rank process(es) still running after the test`);
  });

  async function started(size: number, extra: Partial<PmiServerOptions> = {}) {
    const s = server(size, extra);
    open.push(s.srv);
    const port = await s.srv.listen('127.0.0.1');
    return { ...s, port };
  }

  describe('with real MPICH ranks', () => {
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

    it('runs the MPICH ring over UCX TCP 20 times in a row, the watchdog ending every finalize hang', async () => {
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
  });

  describe('with raw sockets', () => {
    it('answers every PMI-1 command of a well-behaved client', async () => {
      const { srv, port } = await started(1, { universeSize: 3, appnums: [2] });
      const c = await RawClient.open(port);
      expect(await c.initack(0)).to.deep.equal(['cmd=initack', 'cmd=set size=1', 'cmd=set rank=0', 'cmd=set debug=0']);
      expect(await c.ask('cmd=init pmi_version=1 pmi_subversion=1\n')).to.equal('cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0');
      expect(await c.ask('cmd=get_maxes\n')).to.equal('cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024');
      expect(await c.ask('cmd=get_appnum\n')).to.equal('cmd=appnum appnum=2');
      expect(await c.ask('cmd=get_universe_size\n')).to.equal('cmd=universe_size size=3');
      expect(await c.ask('cmd=get_my_kvsname\n')).to.equal(`cmd=my_kvsname kvsname=${srv.kvsname}`);
      expect(await c.ask(`cmd=get kvsname=${srv.kvsname} key=PMI_process_mapping\n`)).to.equal('cmd=get_result rc=0 msg=success value=(vector,(0,1,1))');
      expect(await c.ask(`cmd=put kvsname=${srv.kvsname} key=k1 value=v\\ 1\n`)).to.equal('cmd=put_result rc=0 msg=success');
      expect(await c.ask(`cmd=get kvsname=${srv.kvsname} key=k1\n`)).to.equal('cmd=get_result rc=0 msg=success value=v\\ 1');
      expect(await c.ask(`cmd=get kvsname=${srv.kvsname} key=nope\n`)).to.match(/^cmd=get_result rc=-1 /);
      expect(await c.ask('cmd=get kvsname=other_kvs key=k1\n')).to.match(/^cmd=get_result rc=-1 msg=unknown_kvsname/);
      expect(await c.ask('cmd=publish_name service=svc port=p#1\n')).to.equal('cmd=publish_result rc=0 info=ok msg=success');
      expect(await c.ask('cmd=publish_name service=svc port=p#2\n')).to.match(/^cmd=publish_result rc=-1 /);
      expect(await c.ask('cmd=lookup_name service=svc\n')).to.equal('cmd=lookup_result rc=0 info=ok msg=success port=p#1');
      expect(await c.ask('cmd=unpublish_name service=svc\n')).to.equal('cmd=unpublish_result rc=0 info=ok msg=success');
      expect(await c.ask('cmd=lookup_name service=svc\n')).to.match(/^cmd=lookup_result rc=-1 info=service_not_found/);
      expect(await c.ask('cmd=unpublish_name service=svc\n')).to.match(/^cmd=unpublish_result rc=-1 /);
      expect(await c.ask('cmd=barrier_in\n')).to.equal('cmd=barrier_out');
      const finalized = new Promise<number>((r) => srv.once('finalize', r));
      expect(await c.ask('cmd=finalize\n')).to.equal('cmd=finalize_ack');
      expect(await finalized).to.equal(0);
      const aborted = new Promise<unknown[]>((r) => srv.once('abort', (...a) => r(a)));
      c.send('cmd=abort exitcode=9 message=bad\\ thing\n');
      expect(await aborted).to.deep.equal([0, 9, 'bad thing']);
      c.close();
    });

    it('refuses spawn, in the one-line and the multi-line form, with an error reply', async () => {
      const { port } = await started(1);
      const c = await RawClient.open(port);
      await c.initack(0);
      c.send('mcmd=spawn\nnprocs=2\nexecname=/bin/true\ntotspawns=2\nspawnssofar=1\nargcnt=0\npreput_num=0\ninfo_num=0\nendcmd\n');
      expect(await c.line(300)).to.equal(null); // one reply for the whole spawn, after its last block
      c.send('mcmd=spawn\nnprocs=1\nexecname=/bin/true\ntotspawns=2\nspawnssofar=2\nargcnt=0\npreput_num=0\ninfo_num=0\nendcmd\n');
      expect(await c.line()).to.match(/^cmd=spawn_result rc=-1 msg=MPI_Comm_spawn_is_not_supported/);
      expect(await c.ask('cmd=spawn nprocs=1\n')).to.match(/^cmd=spawn_result rc=-1 /);
      c.close();
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

    it('survives a stream of random bytes and random commands, then still serves', async () => {
      const { port } = await started(2);
      let seed = 42;
      const random = (n: number): number => {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        return seed % n;
      };
      const words = ['cmd=', 'get', 'put', 'barrier_in', 'initack', 'pmiid=', 'key=', 'value=', '=', ' ', '\\', 'mcmd=spawn', 'endcmd', '\r', '\n', '\u0000', 'é'];
      const c = await RawClient.open(port);
      for (let i = 0; i < 300; i++) {
        const bytes = random(2) ? Buffer.from(Array.from({ length: random(200) }, () => random(256))) : Buffer.from(Array.from({ length: random(12) }, () => words[random(words.length)]).join(''), 'latin1');
        c.send(bytes);
      }
      c.send('\nendcmd\n'); // leave any open mcmd block
      c.close();
      const d = await RawClient.open(port);
      expect(await d.ask('cmd=get_maxes\n')).to.match(/^cmd=maxes /);
      d.close();
    });

    it("survives a client disconnecting mid-barrier and reports it as 'disconnect'", async () => {
      const { srv, port } = await started(2);
      const events: Array<[number, boolean]> = [];
      srv.on('disconnect', (r, f) => events.push([r, f]));
      const a = await RawClient.open(port);
      const b = await RawClient.open(port);
      await a.initack(0);
      await b.initack(1);
      a.send('cmd=barrier_in\n');
      b.close();
      await new Promise((r) => setTimeout(r, 100));
      expect(events).to.deep.equal([[1, false]]);
      expect(await a.ask('cmd=get_maxes\n')).to.match(/^cmd=maxes /); // still served while waiting
      a.close();
    });

    it('releases a stalled finalize barrier after the timeout, logs it, and answers the latecomer at once', async () => {
      const { port, lines } = await started(2, { finalizeTimeoutMs: 300 });
      const a = await RawClient.open(port);
      const b = await RawClient.open(port);
      await a.initack(0);
      await b.initack(1);
      for (let round = 1; round <= 3; round++) {
        a.send('cmd=barrier_in\n');
        b.send('cmd=barrier_in\n');
        expect([await a.line(), await b.line()]).to.deep.equal(['cmd=barrier_out', 'cmd=barrier_out']);
      }
      // Round 4 (MPI_Finalize's barrier): b never comes.
      expect(await a.ask('cmd=barrier_in\n', 5000)).to.equal('cmd=barrier_out');
      expect(lines.filter((l) => /barrier 4 released by the finalize watchdog .* without rank\(s\) 1/.test(l))).to.have.length(1);
      expect(await b.ask('cmd=barrier_in\n')).to.equal('cmd=barrier_out');
      expect(await a.ask('cmd=finalize\n')).to.equal('cmd=finalize_ack');
      a.close();
      b.close();
    });

    it('never releases the first barrier (MPI_Init), nor one whose missing rank is still talking', async () => {
      const { port, lines } = await started(2, { finalizeTimeoutMs: 1000 });
      const a = await RawClient.open(port);
      const b = await RawClient.open(port);
      await a.initack(0);
      await b.initack(1);
      a.send('cmd=barrier_in\n');
      expect(await a.line(2500)).to.equal(null);
      b.send('cmd=barrier_in\n');
      expect([await a.line(), await b.line()]).to.deep.equal(['cmd=barrier_out', 'cmd=barrier_out']);
      a.send('cmd=barrier_in\n');
      for (let i = 0; i < 25; i++) {
        await new Promise((r) => setTimeout(r, 100));
        expect(await b.ask('cmd=get_maxes\n')).to.match(/^cmd=maxes/); // b is busy, not hung
      }
      expect(await a.line(50)).to.equal(null);
      expect(lines.some((l) => /watchdog/.test(l))).to.equal(false);
      a.close();
      b.close();
    });

    it('closes every connection on close()', async () => {
      const { srv, port } = await started(1);
      const c = await RawClient.open(port);
      await c.initack(0);
      await srv.close();
      expect(await c.line(1000)).to.equal(null);
      expect(c.closed).to.equal(true);
    });
  });
});
