/**
 * The job runner's parts on their own, with real processes as the ranks' stand-ins: line forwarding
 * (whole lines, tags, binary data, backpressure), stdin routing, the exit policy, the environment
 * rule, and MPI detection of real compiled programs.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { PassThrough, Writable } from 'node:stream';
import { classifyLibraries, detectMpi, neededLibraries, resolveProgram } from '../../launcher/job/detect.js';
import { callerLayer, isInternal, rankEnv, userEnv } from '../../launcher/job/env.js';
import { ExitPolicy, statusOf, summaryLine } from '../../launcher/job/exit.js';
import { expandPattern, JobOutput, linePrefix } from '../../launcher/job/io/output.js';
import { LineForwarder, writeLine } from '../../src/common/lines.js';
import { FailureScanner, nativeOutcome } from '../../launcher/job/launch/native.js';
import { parseReport } from '../../launcher/job/launch/rankwatch.js';
import { StdinRouter } from '../../launcher/job/io/stdin.js';
import { parseShimArgs, withoutRshAgent } from '../../launcher/bin/rsh-shim.js';
import { program } from '../helpers/programs.js';

/** A sink that keeps every write as one chunk, optionally slow to accept (small buffer, late callback). */
class Collector extends Writable {
  readonly writes: Buffer[] = [];
  constructor(slow = false) {
    super({ highWaterMark: slow ? 1024 : 16384 });
    this.slow = slow;
  }
  private readonly slow: boolean;
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null) => void): void {
    this.writes.push(chunk);
    if (this.slow) setImmediate(cb);
    else cb();
  }
  text(): string {
    return Buffer.concat(this.writes).toString('latin1');
  }
}

function child(script: string) {
  return spawn('sh', ['-c', script], { stdio: ['pipe', 'pipe', 'pipe'] });
}

describe('sfmpirun parts', () => {
  describe('remote-shell shim', () => {
    // The words Open MPI 4.1 passes to its agent, as seen with strace in a netns run.
    const words = ['-x', '10.213.0.10', ' orted', '--daemonize', '-mca', 'ess', '"env"', '--mca', 'plm_rsh_no_tree_spawn', '"1"',
      '-mca', 'plm', '"rsh"', '-mca', 'plm_rsh_agent', '"sh /tmp/sfmpirun-40c787-it4ZpC/rsh"', '-mca', 'rmaps_base_oversubscribe', '"1"'];

    it('finds the host after ssh options and joins the command words', () => {
      const { host, command } = parseShimArgs(words);
      expect(host).to.equal('10.213.0.10');
      expect(command).to.match(/^ orted --daemonize/);
    });

    it("drops the host's agent path from a daemon's command, and nothing else", () => {
      const out = withoutRshAgent(parseShimArgs(words).command);
      expect(out).not.to.include('plm_rsh_agent');
      expect(out).not.to.include('/tmp/sfmpirun');
      expect(out).to.include('-mca plm "rsh" -mca rmaps_base_oversubscribe "1"');
      expect(withoutRshAgent("orted --mca plm_rsh_agent 'ssh -x' -mca a b")).to.equal("orted -mca a b");
    });
  });

  describe('output forwarding', () => {
    it('never mixes two ranks within one line, even when each line is written in pieces', async () => {
      const sink = new Collector();
      const script = (who: string) => `i=0; while [ $i -lt 400 ]; do printf "${who}-$i-"; printf "part2-"; printf "end\\n"; i=$((i+1)); done`;
      const a = child(script('a'));
      const b = child(script('b'));
      const fa = new LineForwarder(a.stdout, [sink], () => null);
      const fb = new LineForwarder(b.stdout, [sink], () => null);
      await Promise.all([fa.done, fb.done]);
      // Every write the sink got is a run of whole lines.
      for (const w of sink.writes) expect(w[w.length - 1]).to.equal(0x0a);
      const lines = sink.text().trimEnd().split('\n');
      expect(lines).to.have.length(800);
      for (const l of lines) expect(l).to.match(/^[ab]-\d+-part2-end$/);
      expect(lines.filter((l) => l.startsWith('a-'))).to.have.length(400);
    });

    it('tags lines in each dialect and flushes a partial last line', async () => {
      expect(linePrefix({ dialect: 'hydra', tag: true, timestamp: false }, 3, 'stdout')).to.equal('[3] ');
      expect(linePrefix({ dialect: 'openmpi', tag: true, timestamp: false }, 3, 'stderr')).to.equal('[1,3]<stderr>:');
      expect(linePrefix({ dialect: 'openmpi', tag: true, timestamp: true }, 0, 'stdout', new Date(2026, 10, 26, 5, 19, 48))).to.equal(
        'Thu Nov 26 05:19:48 2026[1,0]<stdout>:',
      );
      expect(linePrefix({ dialect: 'hydra', tag: false, timestamp: false }, 0, 'stdout')).to.equal(null);
      const sink = new Collector();
      const p = child('printf "one\\ntwo\\nthree"');
      const f = new LineForwarder(p.stdout, [sink], () => '[7] ');
      await f.done;
      expect(sink.text()).to.equal('[7] one\n[7] two\n[7] three');
    });

    it("puts the launcher's own line at the start of a line when a rank's output ended mid-line", async () => {
      const sink = new Collector();
      writeLine(sink, 'sfmpirun: first');
      const p = child('printf "whole\\n[c-2] dying mid-li"');
      await new LineForwarder(p.stdout, [sink], () => null).done;
      writeLine(sink, 'sfmpirun: rank 0 (clone c-0) called MPI_Abort with errorcode 7');
      writeLine(sink, 'sfmpirun: next');
      expect(sink.text()).to.equal(
        'sfmpirun: first\nwhole\n[c-2] dying mid-li\nsfmpirun: rank 0 (clone c-0) called MPI_Abort with errorcode 7\nsfmpirun: next\n',
      );
    });

    it('passes binary data unchanged, through a slow sink, without loss', async function () {
      this.timeout(60000);
      const data = randomBytes(4 << 20);
      const sink = new Collector(true);
      const p = child('cat');
      const f = new LineForwarder(p.stdout, [sink], () => null);
      p.stdin.end(data);
      await f.done;
      await new Promise((resolve) => sink.end(resolve));
      expect(Buffer.concat(sink.writes).equals(data)).to.equal(true);
    });

    it('expands Hydra output file patterns', () => {
      expect(expandPattern('out.%r.%h.%g.%%', 5, 'sfab-1')).to.equal('out.5.sfab-1.0.%');
    });

    it('writes per-rank files for --output-filename in the Open MPI layout', async () => {
      const { mkdtempSync, readFileSync, rmSync } = await import('node:fs');
      const { join } = await import('node:path');
      const { tmpdir } = await import('node:os');
      const dir = mkdtempSync(join(tmpdir(), 'sfout-'));
      try {
        const terminal = { stdout: new Collector(), stderr: new Collector() };
        const out = new JobOutput({ dialect: 'openmpi', tag: false, timestamp: false, outputDirectory: dir }, terminal);
        const p = child('echo out; echo err >&2');
        out.attach(2, 'h', p.stdout, p.stderr);
        await out.finished();
        expect(readFileSync(join(dir, '1', 'rank.2', 'stdout'), 'utf8')).to.equal('out\n');
        expect(readFileSync(join(dir, '1', 'rank.2', 'stderr'), 'utf8')).to.equal('err\n');
        expect(terminal.stdout.text()).to.equal('out\n');
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  describe('stdin routing', () => {
    it('delivers 1 MB to one receiver exactly once, and EOF', async () => {
      const data = randomBytes(1 << 20);
      const source = new PassThrough();
      const router = new StdinRouter(source);
      const p = child('cat');
      const sink = new Collector();
      const f = new LineForwarder(p.stdout, [sink], () => null);
      router.add(p.stdin);
      router.start();
      source.end(data);
      await f.done;
      expect(Buffer.concat(sink.writes).equals(data)).to.equal(true);
    });

    it('delivers to every receiver with all', async () => {
      const source = new PassThrough();
      const router = new StdinRouter(source);
      const procs = [child('wc -c'), child('wc -c')];
      const sinks = procs.map(() => new Collector());
      const fs = procs.map((p, i) => new LineForwarder(p.stdout, [sinks[i]!], () => null));
      for (const p of procs) router.add(p.stdin);
      router.start();
      source.end(Buffer.alloc(300000, 0x41));
      await Promise.all(fs.map((f) => f.done));
      for (const s of sinks) expect(s.text().trim()).to.equal('300000');
    });
  });

  describe('exit policy', () => {
    it('keeps the first failure and says why in one line', () => {
      const policy = new ExitPolicy();
      expect(policy.record({ rank: 0, hostname: 'sfa-0', code: 0, signal: null })).to.equal(false);
      expect(policy.record({ rank: 2, hostname: 'sfa-2', code: 3, signal: null })).to.equal(true);
      expect(policy.record({ rank: 1, hostname: 'sfa-1', code: null, signal: 'SIGTERM' })).to.equal(false);
      expect(policy.verdict()).to.deep.equal({ status: 3, line: 'sfmpirun: rank 2 (clone sfa-2) exited with code 3' });
    });

    it("an MPI_Abort heard after the same rank's exit says why it failed; another rank's does not take over", () => {
      const policy = new ExitPolicy();
      expect(policy.record({ rank: 0, hostname: 'sfa-0', code: 7, signal: null })).to.equal(true);
      expect(policy.record({ rank: 0, hostname: 'sfa-0', code: 7, signal: null, abortCode: 7 })).to.equal(false);
      expect(policy.verdict()).to.deep.equal({ status: 7, line: 'sfmpirun: rank 0 (clone sfa-0) called MPI_Abort with errorcode 7' });
      const other = new ExitPolicy();
      other.record({ rank: 1, hostname: 'sfa-1', code: 3, signal: null });
      other.record({ rank: 0, hostname: 'sfa-0', code: 7, signal: null, abortCode: 7 });
      expect(other.verdict()).to.deep.equal({ status: 3, line: 'sfmpirun: rank 1 (clone sfa-1) exited with code 3' });
    });

    it('maps signals to 128+N, aborts to their errorcode, and stops win', () => {
      const segv = { rank: 1, hostname: 'h', code: null, signal: 'SIGSEGV' as const };
      expect(statusOf(segv)).to.equal(139);
      expect(summaryLine(segv)).to.equal('sfmpirun: rank 1 (clone h) was killed by signal 11 (SIGSEGV)');
      expect(statusOf({ rank: 0, hostname: 'h', code: 1, signal: null, abortCode: 7 })).to.equal(7);
      const policy = new ExitPolicy();
      policy.stop(124, 'timed out');
      expect(policy.record(segv)).to.equal(false);
      expect(policy.verdict()).to.deep.equal({ status: 124, line: 'timed out' });
      expect(new ExitPolicy().verdict()).to.deep.equal({ status: 0, line: null });
    });
  });

  describe("native launchers' failure reports", () => {
    // Texts as Open MPI 4.1.4's mpirun prints them on this machine.
    const reports: Array<[string, number, string]> = [
      ['  Process name: [[18143,1],1]\n  Exit code:    3\n', 3, 'sfmpirun: rank 1 (clone c1) exited with code 3'],
      ['mpirun.openmpi noticed that process rank 1 with PID 0 on node vm exited on signal 11 (Segmentation fault).\n', 139, 'sfmpirun: rank 1 (clone c1) was killed by signal 11 (SIGSEGV)'],
      ['MPI_ABORT was invoked on rank 0 in communicator MPI_COMM_WORLD\nwith errorcode 7.\n', 7, 'sfmpirun: rank 0 (clone c0) called MPI_Abort with errorcode 7'],
      // MPICH 4.0.2's rank under Hydra.
      ['Abort(7) on node 1 (rank 1 in comm 0): application called MPI_Abort(MPI_COMM_WORLD, 7) - process 1\n', 7, 'sfmpirun: rank 1 (clone c1) called MPI_Abort with errorcode 7'],
    ];
    for (const [text, status, line] of reports) {
      it(`names the rank in: ${line}`, () => {
        const scanner = new FailureScanner();
        // Fed in two pieces, as a pipe may deliver it.
        scanner.feed(Buffer.from(text.slice(0, 20)));
        scanner.feed(Buffer.from(text.slice(20)));
        const launcher = status === 139 ? { rank: -1, hostname: 'host', code: null, signal: 'SIGSEGV' as const } : { rank: -1, hostname: 'host', code: status, signal: null };
        expect(nativeOutcome(launcher, 'mpirun', scanner.failure, (r) => `c${r}`)).to.deep.equal({ status, line });
      });
    }
  });

  describe("a rank's failure as native/rankwatch reports it", () => {
    it('reads an exit code or a signal, and nothing else', () => {
      expect(parseReport('3 exit 80\n')).to.deep.equal({ rank: 3, code: 80, signal: null });
      expect(parseReport('0 signal 11')).to.deep.equal({ rank: 0, code: null, signal: 'SIGSEGV' });
      for (const bad of ['3 exit 0', '3 exit 256', '-1 exit 3', 'x exit 3', '3 signal 99', 'GET / HTTP/1.0', '']) expect(parseReport(bad), bad).to.equal(null);
    });
  });

  describe('environment rule', () => {
    const caller = { PATH: '/bin', HOME: '/root', SNOWFLOCK_STATE_DIR: '/x', npm_config_x: '1', NODE_OPTIONS: '--x', PMI_RANK: '9', HOSTNAME: 'host', OMPI_MCA_btl: 'tcp', FOO: 'caller' };

    it('passes the caller environment minus the launcher internals and host identity', () => {
      const env = callerLayer({ envMode: 'all', envList: [] }, caller);
      expect(env).to.deep.equal({ PATH: '/bin', HOME: '/root', OMPI_MCA_btl: 'tcp', FOO: 'caller' });
      expect(isInternal('SNOWFLOCK_TICKET')).to.equal(true);
      expect(isInternal('LD_LIBRARY_PATH')).to.equal(false);
    });

    it('honours none and list, then -genv, then -env, then what ranks need', () => {
      expect(callerLayer({ envMode: 'none', envList: [] }, caller)).to.deep.equal({});
      expect(callerLayer({ envMode: 'list', envList: ['FOO', 'NOPE'] }, caller)).to.deep.equal({ FOO: 'caller' });
      const base = userEnv({ envMode: 'all', envList: [], env: { FOO: 'genv', BAR: 'genv' } }, { env: { BAR: 'env' } }, caller);
      expect(base.FOO).to.equal('genv');
      expect(base.BAR).to.equal('env');
      const full = rankEnv({ ...base, PMI_RANK: 'user' }, { pmi: { PMI_PORT: '10.0.0.1:5', PMI_ID: '1' }, pmix: {}, openmpi: {} }, { rank: 1, size: 4, localRank: 1, localSize: 2, wdir: '/w' });
      expect(full).to.include({ PMI_PORT: '10.0.0.1:5', PMI_ID: '1', PMI_RANK: '1', PMI_SIZE: '4', MPI_LOCALRANKID: '1', MPI_LOCALNRANKS: '2', PWD: '/w' });
    });
  });

  describe('MPI detection', function () {
    this.timeout(60000);

    it('tells MPICH, Open MPI and non-MPI programs apart', async () => {
      expect(await detectMpi(program('hello', 'mpich'))).to.equal('mpich');
      expect(await detectMpi(program('hello', 'openmpi'))).to.equal('openmpi');
      expect(await detectMpi('/bin/true')).to.equal('none');
      expect(await detectMpi('/usr/bin/ldd')).to.equal('none');
      expect(classifyLibraries('\tlibmpi.so.12 => /lib/libmpi.so.12')).to.equal('mpich');
    });

    it("reads the libraries an ELF program names itself, and nothing from what is not one", () => {
      expect(neededLibraries(program('hello', 'mpich')).some((l) => /^libmpi(ch)?\.so/.test(l))).to.equal(true);
      expect(neededLibraries(program('hello', 'openmpi'))).to.include('libmpi.so.40');
      expect(neededLibraries('/bin/true')).to.include('libc.so.6');
      expect(neededLibraries('/usr/bin/ldd')).to.deep.equal([]); // a shell script
      expect(neededLibraries('/nonexistent')).to.deep.equal([]);
    });

    it('resolves programs like a shell and refuses missing or non-executable ones in one line', () => {
      expect(resolveProgram('true', '/', '/nonexistent:/bin')).to.equal('/bin/true');
      expect(resolveProgram('./true', '/bin', undefined)).to.equal('/bin/true');
      expect(() => resolveProgram('./no-such-program', '/tmp', '/bin')).to.throw(/program \.\/no-such-program not found in \/tmp\/no-such-program/);
      expect(() => resolveProgram('/etc/passwd', '/', '/bin')).to.throw(/not an executable file/);
    });
  });
});
