/**
 * The native core under AddressSanitizer, LeakSanitizer and UBSan (make -C native SANITIZE=1, into
 * native/build-asan/): holder and enter on real namespaces (root), a real bridge and veths, the
 * lifeline, the protocol codec and the agent (on this host, --control-fd). Any sanitizer report
 * fails the test: reports go to files in a log directory (the clones' /tmp is private, so that
 * directory is one holder shares with them), and the test fails if any file appears there.
 * LeakSanitizer checks every program at exit except enter, which cannot be checked (see enter.c).
 *
 * Network resources are this helper's own: links named sfncs*, addresses from 10.233.250.0/24.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess, type SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import {
  decodeExit,
  decodeHello,
  encodeExec,
  encodeFrame,
  encodeHeader,
  encodeIdent,
  encodeStdin,
  FrameDecoder,
  FrameType,
  MAX_PAYLOAD,
  type Frame,
} from '../../src/providers/vm/agent/protocol.js';

const nativeDir = join(resolve(dirname(fileURLToPath(import.meta.url)), '..', '..'), 'native');
const bin = (name: string) => join(nativeDir, 'build-asan', name);
const BRIDGE = 'sfncsbr';
const veth = (i: number) => `sfncsv${i}`;
const clones = [0, 1].map((i) => ({
  name: `sfnc-asan-${i}`,
  address: `10.233.250.${10 + i}`,
  mac: `52:54:00:e9:fa:${(10 + i).toString(16).padStart(2, '0')}`,
}));

/** A directory under /tmp that holder shares with its clones, for the sanitizers' report files. */
const logDir = mkdtempSync('/tmp/sfnc-asan-');
const sanitizerEnv = {
  ...process.env,
  ASAN_OPTIONS: `log_path=${logDir}/asan:halt_on_error=1:detect_stack_use_after_return=1`,
  UBSAN_OPTIONS: `log_path=${logDir}/ubsan:print_stacktrace=1:halt_on_error=1`,
  LSAN_OPTIONS: `log_path=${logDir}/lsan`,
};

/** Sanitizer output seen on the stderr of the programs run (UBSan writes there only). */
const onStderr: string[] = [];
const SANITIZER = /runtime error:|ERROR: [A-Za-z]*Sanitizer|SUMMARY: [A-Za-z]*Sanitizer/;

function scan(what: string, stderr: string): void {
  if (SANITIZER.test(stderr)) onStderr.push(`${what}:\n${stderr}`);
}

/** Fails on any report written so far (each test ends with it: its processes have exited then). */
function expectNoReports(): void {
  const found = readdirSync(logDir).map((f) => `${f}:\n${readFileSync(join(logDir, f), 'utf8')}`);
  found.push(...onStderr.splice(0));
  // Emptied, so that the next test is judged on its own reports.
  for (const f of readdirSync(logDir)) rmSync(join(logDir, f), { force: true });
  expect(found, 'sanitizer reports').to.deep.equal([]);
}

function ip(...args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function run(name: string, args: string[], input?: Buffer | string): SpawnSyncReturns<Buffer> {
  const r = spawnSync(bin(name), args, { env: sanitizerEnv, input, maxBuffer: 256 << 20 });
  scan(`${name} ${args.join(' ')}`, r.stderr.toString());
  return r;
}

/** A sanitized program in the background; its stderr is scanned when it closes. */
function start(name: string, args: string[], opts: { stdin?: 'pipe' | 'ignore'; detached?: boolean; extraFd?: boolean } = {}): ChildProcess {
  const stdio: Array<'pipe' | 'ignore'> = [opts.stdin ?? 'ignore', 'pipe', 'pipe'];
  if (opts.extraFd) stdio.push('pipe');
  const child = spawn(bin(name), args, { env: sanitizerEnv, stdio, detached: opts.detached ?? false });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  child.stderr!.on('close', () => scan(name, err));
  return child;
}

function startTime(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[0] === 'Z' || rest[0] === 'X' ? null : Number(rest[19]);
  } catch {
    return null;
  }
}

/** How the child ended, once its stdio has closed too (its stderr has been scanned then). */
function exitOf(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((r) => child.once('close', (code, signal) => r({ code, signal })));
}

/** Processes to SIGKILL later, by identity (PID and start time): never a successor of one. */
class Reaper {
  private readonly ps: Array<{ pid: number; start: number | null }> = [];

  push(...pids: number[]): void {
    for (const pid of pids) this.ps.push({ pid, start: startTime(pid) });
  }

  killAll(): void {
    for (const p of this.ps.splice(0)) if (p.start !== null && startTime(p.pid) === p.start) process.kill(p.pid, 'SIGKILL');
  }
}

/** stdout of a child as lines, one at a time. */
function lineReader(child: ChildProcess): () => Promise<string | null> {
  let buf = '';
  const queue: string[] = [];
  let ended = false;
  let wake = () => {};
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) queue.push(buf.slice(0, nl)), (buf = buf.slice(nl + 1));
    wake();
  });
  child.stdout!.on('end', () => ((ended = true), wake()));
  return async () => {
    while (!queue.length && !ended) await new Promise<void>((r) => (wake = r));
    return queue.shift() ?? null;
  };
}

describe('native core under ASan, LSan and UBSan', function () {
  this.timeout(60_000);
  /** Processes of one test, killed after it; and of a whole describe block, killed at the end. */
  const killLater = new Reaper();
  const killAtEnd = new Reaper();

  before(() => {
    execFileSync('make', ['-s', '-C', nativeDir, 'SANITIZE=1'], { stdio: 'inherit' });
  });
  afterEach(() => killLater.killAll());
  after(() => {
    killAtEnd.killAll();
    for (const link of [BRIDGE, ...clones.map((_, i) => veth(i))]) spawnSync('ip', ['link', 'del', link], { stdio: 'ignore' });
    try {
      expectNoReports();
    } finally {
      rmSync(logDir, { recursive: true, force: true });
    }
  });

  describe('holder and enter, on real namespaces', () => {
    let owner: ChildProcess;
    let holder: ChildProcess;
    let pids: number[] = [];
    let nextLine: () => Promise<string | null>;
    const files = mkdtempSync('/tmp/sfnc-asan-files-');

    before(async () => {
      ip('link', 'add', BRIDGE, 'type', 'bridge');
      ip('link', 'set', BRIDGE, 'up');
      owner = spawn('sleep', ['600'], { stdio: 'ignore' });
      killAtEnd.push(owner.pid!);
      writeFileSync(join(files, 'hosts'), clones.map((c) => `${c.address} ${c.name}`).join('\n') + '\n');
      writeFileSync(join(files, 'resolv.conf'), 'nameserver 10.233.250.1\n');
      holder = start(
        'holder',
        [
          '--gateway', '10.233.250.1/24',
          '--share-tmp', logDir,
          '--share-tmp', files,
          '--hosts', join(files, 'hosts'),
          '--resolv', join(files, 'resolv.conf'),
          '--owner', `${owner.pid}:${startTime(owner.pid!)}`,
          ...clones.map((c) => `${c.name}=${c.address},${c.mac}`),
        ],
        { stdin: 'pipe', detached: true },
      );
      nextLine = lineReader(holder);
      for (let l = await nextLine(); l !== 'ready'; l = await nextLine()) {
        expect(l, 'holder ended before ready').to.not.equal(null);
        pids.push(Number(l));
      }
      killAtEnd.push(holder.pid!, ...pids);
    });
    after(() => rmSync(files, { recursive: true, force: true }));

    function enter(args: string[]): SpawnSyncReturns<Buffer> {
      return run('enter', ['--start', String(startTime(pids[0]!)), String(pids[0]), '/', '--', ...args]);
    }

    it('holder configures the clones\' network through netlink ("net" -> "configured")', async () => {
      clones.forEach((c, i) => ip('link', 'add', veth(i), 'master', BRIDGE, 'up', 'type', 'veth', 'peer', 'name', 'eth0', 'address', c.mac, 'netns', String(pids[i])));
      holder.stdin!.write('net\n');
      expect(await nextLine()).to.equal('configured');
      expectNoReports();
    });

    it('enter runs programs inside: address, route, permanent neighbours, hostname, hosts', () => {
      const r = enter(['sh', '-c', 'cat /proc/sys/kernel/hostname; ip -4 -o addr show dev eth0; ip route show default; ip neigh show dev eth0; cat /etc/hosts']);
      const out = r.stdout.toString();
      expect(r.status, r.stderr.toString()).to.equal(0);
      expect(out).to.include(`${clones[0]!.name}\n`);
      expect(out).to.match(new RegExp(`inet ${clones[0]!.address}/24 brd 10\\.233\\.250\\.255`));
      expect(out).to.include('default via 10.233.250.1 dev eth0');
      expect(out).to.match(new RegExp(`${clones[1]!.address} lladdr ${clones[1]!.mac} PERMANENT`));
      expect(out).to.include(`${clones[1]!.address} ${clones[1]!.name}`);
      expectNoReports();
    });

    it("enter ends as the program did, and says why it cannot run one", () => {
      expect(enter(['sh', '-c', 'exit 7']).status).to.equal(7);
      expect(enter(['sh', '-c', 'kill -TERM $$']).signal).to.equal('SIGTERM');
      const missing = enter(['/no/such/program']);
      expect(missing.status).to.equal(127);
      expect(missing.stderr.toString()).to.equal('enter: /no/such/program: command not found\n');
      expect(run('enter', ['--start', '1', String(pids[0]), '/', '--', 'true']).status).to.equal(125);
      expect(run('enter', ['x', '/', '--', 'true']).status).to.equal(125);
      expect(run('enter', [String(pids[0]), '/no/such/dir', '--', 'true']).status).to.equal(125);
      expectNoReports();
    });

    it('after "go", holder ends its clones when the owner is SIGKILLed, and exits cleanly', async () => {
      holder.stdin!.end('go\n');
      expect(await nextLine()).to.equal(null);
      const exited = exitOf(holder);
      owner.kill('SIGKILL');
      expect(await exited).to.deep.equal({ code: 0, signal: null });
      expect(pids.map(startTime)).to.deep.equal(pids.map(() => null));
      expectNoReports();
    });

    it('holder reports a failed "net", kills its clones when the engine goes away before "go"; refuses bad arguments', async () => {
      const h = start('holder', ['sfnc-asan-2', 'sfnc-asan-3=10.233.250.30'], { stdin: 'pipe' });
      const next = lineReader(h);
      const mine: number[] = [];
      for (let l = await next(); l !== 'ready' && l !== null; l = await next()) mine.push(Number(l));
      killLater.push(h.pid!, ...mine);
      // An address but no eth0 moved in: the failure path of "net".
      h.stdin!.write('net\n');
      expect(await next()).to.equal('error: sfnc-asan-3: find the interface: No such device');
      const exited = exitOf(h);
      h.stdin!.end();
      expect(await exited).to.deep.equal({ code: 1, signal: null });
      expect(mine.map(startTime)).to.deep.equal([null, null]);
      for (const args of [[], ['--gateway', '10.1.2.3', 'x'], ['x=1.2.3.4,zz:00'], ['x=300.1.1.1'], ['--owner', '1', 'x']])
        expect(run('holder', args).status, args.join(' ')).to.equal(2);
      expectNoReports();
    });
  });

  describe('lifeline', () => {
    it('runs a program to its end, and kills it and its descendants when the owner dies', async () => {
      const owner = spawn('sleep', ['600'], { stdio: 'ignore' });
      killLater.push(owner.pid!);
      const id = `${owner.pid}:${startTime(owner.pid!)}`;
      expect(run('lifeline', ['--owner', id, '--', 'sh', '-c', 'sleep 600 & exit 4']).status).to.equal(4);
      const l = start('lifeline', ['--owner', id, '--', 'sh', '-c', 'sleep 600 & setsid sleep 601 & echo started; wait']);
      killLater.push(l.pid!);
      expect(await lineReader(l)()).to.equal('started');
      const exited = exitOf(l);
      owner.kill('SIGKILL');
      expect(await exited).to.deep.equal({ code: null, signal: 'SIGKILL' });
      expect(run('lifeline', ['--owner', id, '--', 'true']).status).to.equal(125);
      expect(run('lifeline', []).status).to.equal(125);
      expectNoReports();
    });
  });

  describe('the agent protocol', () => {
    it('proto-codec decodes every kind of input: all types, EXEC, IDENT, too long, truncated', () => {
      const stream = Buffer.concat([
        ...Object.values(FrameType).map((t) => encodeFrame(t, t, `x${t}`)),
        encodeFrame(FrameType.EXEC, 9, encodeExec({ argv: ['a', Buffer.from([0xff])], env: { E: '=' }, cwd: '/', stdin: true })),
        encodeFrame(FrameType.EXEC, 10, Buffer.from('a\0b')),
        encodeFrame(FrameType.IDENT, 0, encodeIdent({ hostname: 'h', addr: '1.2.3.4/5', entropy: 'ab' })),
        encodeFrame(FrameType.IDENT, 0, 'no pairs here\n=\n==\n'),
        Buffer.concat([encodeHeader({ length: MAX_PAYLOAD + 1, type: 3, sid: 1 }), Buffer.alloc(MAX_PAYLOAD + 1)]),
        encodeFrame(FrameType.STDOUT, 1, Buffer.alloc(MAX_PAYLOAD, 7)),
        encodeFrame(FrameType.STDOUT, 1, 'cut').subarray(0, 10),
      ]);
      const r = run('proto-codec', ['decode'], stream);
      expect(r.status, r.stderr.toString()).to.equal(1);
      expect(r.stdout.toString().trimEnd().split('\n').at(-1)).to.equal('truncated 10');
      expectNoReports();
    });

    it('proto-codec encodes every kind of line, and refuses bad ones', () => {
      const good = ['frame EXEC 1 -', 'frame 200 4294967295 00ff', 'header 5 STDOUT 2', 'hello', 'exit 1 code 255', 'exit 1 signal 9', ''];
      expect(run('proto-codec', ['encode'], good.join('\n')).status).to.equal(0);
      for (const bad of ['frame', 'frame EXEC 1 0', 'frame EXEC 1 zz', 'frame EXEC -1 -', 'exit 1 code 256', 'exit 1 signal 0', 'x y z a b c d e f', 'header 1 2'])
        expect(run('proto-codec', ['encode'], bad + '\n').status, bad).to.equal(2);
      expect(run('proto-codec', []).status).to.equal(2);
      expectNoReports();
    });

    it('the agent (on this host) serves a whole session and exits cleanly when the channel closes', async () => {
      const agent = start('agent', ['--control-fd', '3'], { extraFd: true });
      killLater.push(agent.pid!);
      const channel = agent.stdio[3] as Socket;
      const decoder = new FrameDecoder();
      const frames: Frame[] = [];
      let wake = () => {};
      channel.on('data', (d: Buffer) => (frames.push(...decoder.push(d)), wake()));
      const waitFor = async (sid: number, type: number) => {
        while (!frames.some((f) => f.sid === sid && f.type === type)) await new Promise<void>((r) => (wake = r));
      };
      const env = { PATH: '/usr/bin:/bin' };
      await waitFor(0, FrameType.HELLO);
      expect(decodeHello(frames[0]!.payload)).to.equal(1);
      channel.write(encodeFrame(FrameType.EXEC, 1, encodeExec({ argv: ['sh', '-c', 'cat; echo err >&2; exit 2'], env, cwd: '/tmp', stdin: true })));
      channel.write(encodeStdin(1, Buffer.alloc(MAX_PAYLOAD + 3, 0x61)));
      channel.write(encodeStdin(1, Buffer.alloc(0)));
      channel.write(encodeFrame(FrameType.EXEC, 2, encodeExec({ argv: ['sleep', '60'], env, cwd: '/', stdin: true })));
      channel.write(encodeFrame(FrameType.EXEC, 3, encodeExec({ argv: ['/nope'], env, cwd: '/', stdin: false })));
      channel.write(encodeFrame(FrameType.EXEC, 4, Buffer.from('x\0\0\0\0')));
      channel.write(encodeFrame(FrameType.EXEC, 5, encodeExec({ argv: ['true'], env, cwd: '/no/such/dir', stdin: false })));
      channel.write(Buffer.concat([encodeHeader({ length: MAX_PAYLOAD + 1, type: FrameType.STDIN, sid: 2 }), Buffer.alloc(MAX_PAYLOAD + 1)]));
      channel.write(encodeFrame(FrameType.KILL, 2, 'not a number'));
      channel.write(encodeFrame(FrameType.KILL, 2, '9'));
      channel.write(encodeFrame(FrameType.IDENT, 0, encodeIdent({ hostname: 'never' })));
      channel.write(encodeFrame(99, 6, 'unknown type'));
      await waitFor(1, FrameType.EXIT);
      await waitFor(2, FrameType.EXIT);
      await waitFor(5, FrameType.FAILED);
      await waitFor(0, FrameType.FAILED);
      const of = (sid: number, type: number) => frames.filter((f) => f.sid === sid && f.type === type);
      expect(Buffer.concat(of(1, FrameType.STDOUT).map((f) => f.payload)).length).to.equal(MAX_PAYLOAD + 3);
      expect(decodeExit(of(1, FrameType.EXIT)[0]!.payload)).to.deep.equal({ code: 2, signal: null });
      expect(decodeExit(of(2, FrameType.EXIT)[0]!.payload)).to.deep.equal({ code: null, signal: 9 });
      expect(of(3, FrameType.FAILED)).to.have.length(1);
      expect(of(4, FrameType.FAILED)).to.have.length(1);
      // A long-running process when the channel closes: the agent kills it on its way out.
      channel.write(encodeFrame(FrameType.EXEC, 7, encodeExec({ argv: ['sleep', '60'], env, cwd: '/', stdin: false })));
      await waitFor(7, FrameType.STARTED);
      const exited = exitOf(agent);
      channel.end();
      expect(await exited).to.deep.equal({ code: 0, signal: null });
      expectNoReports();
    });
  });
});
