/**
 * The lifeline (issue 8): a cluster dies with its owner by itself, within 2 s, however the owner
 * dies. The owner here is a real process that is SIGKILLed; holder (with --owner, root: real
 * namespaces) must then kill its clones and everything in them, and native/lifeline the program it
 * runs and all that program's descendants. Without --owner, holder's clones stay (a kept cluster).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';

const nativeDir = join(resolve(dirname(fileURLToPath(import.meta.url)), '..', '..'), 'native');
const bin = (name: string) => join(nativeDir, 'build', name);
/** The bound issue 8 sets. */
const DEADLINE_MS = 2000;

interface Identity {
  pid: number;
  start: number;
}

/** Start time (field 22 of /proc/PID/stat) of a live, non-zombie process, or null. */
function startTime(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[0] === 'Z' || rest[0] === 'X' ? null : Number(rest[19]);
  } catch {
    return null;
  }
}

const identity = (pid: number): Identity => ({ pid, start: startTime(pid) ?? -1 });
const alive = (p: Identity) => startTime(p.pid) === p.start;

/** Milliseconds until none of ps runs, or null if some still run after `limit` ms. */
async function goneWithin(ps: Identity[], limit: number): Promise<number | null> {
  const t0 = Date.now();
  while (ps.some(alive)) {
    if (Date.now() - t0 > limit) return null;
    await new Promise((r) => setTimeout(r, 10));
  }
  return Date.now() - t0;
}

/** Whatever a test started: killed afterwards if still there (the test failed, or it is kept). */
const started: Identity[] = [];
function track(pid: number): Identity {
  const id = identity(pid);
  started.push(id);
  return id;
}

/** A real owner: a process of its own, which the test SIGKILLs as a batch system would. */
function startOwner(): { child: ChildProcess; id: Identity; arg: string } {
  const child = spawn('sleep', ['600'], { stdio: 'ignore' });
  const id = track(child.pid!);
  return { child, id, arg: `${id.pid}:${id.start}` };
}

function lines(child: ChildProcess): AsyncIterator<string> {
  let buf = '';
  const queue: string[] = [];
  let wake: (() => void) | null = null;
  let ended = false;
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) queue.push(buf.slice(0, nl)), (buf = buf.slice(nl + 1));
    wake?.();
  });
  child.stdout!.on('end', () => ((ended = true), wake?.()));
  return {
    async next() {
      while (!queue.length && !ended) await new Promise<void>((r) => (wake = r));
      return queue.length ? { value: queue.shift()!, done: false } : { value: undefined, done: true };
    },
  };
}

/** Starts holder for `names`, takes its clones through "net" and "go"; returns the clones' PID 1s. */
async function startClones(names: string[], extra: string[]): Promise<{ holder: ChildProcess; clones: Identity[] }> {
  const holder = spawn(bin('holder'), [...extra, ...names], { stdio: ['pipe', 'pipe', 'inherit'], detached: true });
  track(holder.pid!);
  const it = lines(holder);
  const clones: Identity[] = [];
  for (let l = await it.next(); !l.done && l.value !== 'ready'; l = await it.next()) clones.push(track(Number(l.value)));
  expect(clones).to.have.length(names.length);
  holder.stdin!.write('net\n');
  expect((await it.next()).value).to.equal('configured');
  holder.stdin!.end('go\n');
  expect((await it.next()).done).to.equal(true);
  return { holder, clones };
}

/** A process inside a clone, through enter: it must die with its clone. */
async function runInClone(clone: Identity, hostname: string): Promise<Identity> {
  const child = spawn(bin('enter'), ['--start', String(clone.start), String(clone.pid), '/', '--', 'sh', '-c', 'cat /proc/sys/kernel/hostname; exec sleep 600'], {
    stdio: ['ignore', 'pipe', 'inherit'],
    detached: true,
  });
  const enter = track(child.pid!);
  const first = await lines(child).next();
  expect(first.value).to.equal(hostname); // it runs inside
  return enter;
}

describe('lifeline: a cluster dies with its owner', function () {
  this.timeout(60_000);
  before(() => execFileSync('make', ['-s', '-C', nativeDir], { stdio: 'inherit' }));
  afterEach(() => {
    for (const p of started.splice(0)) if (alive(p)) process.kill(p.pid, 'SIGKILL');
  });

  describe('holder --owner', () => {
    it('kills every clone, and what runs in it, within 2 s of its owner being SIGKILLed', async () => {
      const owner = startOwner();
      const { holder, clones } = await startClones(['sfnc-lf-0', 'sfnc-lf-1', 'sfnc-lf-2'], ['--owner', owner.arg]);
      const inside = await runInClone(clones[1]!, 'sfnc-lf-1');
      await new Promise((r) => setTimeout(r, 200));
      expect([...clones, inside].every(alive), 'clones live while the owner does').to.equal(true);
      process.kill(owner.id.pid, 'SIGKILL');
      const ms = await goneWithin([...clones, inside, identity(holder.pid!)], DEADLINE_MS);
      expect(ms, `clones still running ${DEADLINE_MS} ms after the owner died`).to.not.equal(null);
    });

    it('without --owner, keeps the clones after the owner dies (a kept cluster)', async () => {
      const owner = startOwner();
      const { clones } = await startClones(['sfnc-lf-3'], []);
      process.kill(owner.id.pid, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 500));
      expect(clones.every(alive)).to.equal(true);
      for (const c of clones) process.kill(c.pid, 'SIGKILL');
      expect(await goneWithin(clones, 5000)).to.not.equal(null);
    });

    it('refuses an owner that is gone already, with one line, before creating anything', async () => {
      const owner = startOwner();
      process.kill(owner.id.pid, 'SIGKILL');
      await new Promise((r) => owner.child.once('exit', r));
      const r = await new Promise<{ code: number | null; out: string; err: string }>((res) => {
        const h = spawn(bin('holder'), ['--owner', owner.arg, 'sfnc-lf-4'], { stdio: ['pipe', 'pipe', 'pipe'] });
        let out = '', err = '';
        h.stdout.on('data', (d) => (out += d));
        h.stderr.on('data', (d) => (err += d));
        h.on('close', (code) => res({ code, out, err }));
      });
      expect(r.code).to.equal(1);
      expect(r.out).to.equal('');
      expect(r.err.trim().split('\n')).to.deep.equal([`holder: the owner ${owner.arg} is gone already; nothing was created`]);
    });

    it('takes its clones along when its reader is gone before the PIDs are read (chaos finding: SIGPIPE)', async () => {
      // The engine died before reading holder's handshake: holder's write fails, and its clones
      // (which no record names yet) must go with it, not stay orphaned.
      const holder = spawn(bin('holder'), ['sfnc-lf-6', 'sfnc-lf-7'], { stdio: ['pipe', 'pipe', 'inherit'], detached: true });
      track(holder.pid!);
      holder.stdout!.destroy();
      await new Promise((r) => holder.once('exit', r));
      await new Promise((r) => setTimeout(r, 300));
      const left = execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' }).split('\n').filter((l) => /holder sfnc-lf-[67]/.test(l));
      expect(left, 'clones of a holder that lost its reader').to.deep.equal([]);
    });

    it('refuses a malformed --owner with one line and status 2', () => {
      try {
        execFileSync(bin('holder'), ['--owner', '12', 'sfnc-lf-5'], { stdio: ['ignore', 'pipe', 'pipe'] });
        expect.fail('holder accepted --owner 12');
      } catch (e) {
        const err = e as { status: number; stderr: Buffer };
        expect(err.status).to.equal(2);
        expect(err.stderr.toString()).to.match(/^holder: bad --owner 12: give PID:START/);
      }
    });
  });

  describe('native/lifeline', () => {
    /** lifeline running `sh -c script`; the script's first lines are PIDs of what it started. */
    async function startLifeline(owner: string, script: string, count: number) {
      const child = spawn(bin('lifeline'), ['--owner', owner, '--', 'sh', '-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      const self = track(child.pid!);
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) => child.once('exit', (code, signal) => r({ code, signal })));
      const it = lines(child);
      const pids: Identity[] = [];
      for (let i = 0; i < count; i++) pids.push(track(Number((await it.next()).value)));
      return { self, pids, exited };
    }

    it("kills its program's process group and every descendant within 2 s of the owner being SIGKILLed", async () => {
      const owner = startOwner();
      // A child in the group, one that left it (setsid), one orphaned to lifeline, and the program itself.
      const script = 'sleep 600 & echo $!; setsid sleep 601 & echo $!; (sleep 602 & echo $!) ; echo $$; exec sleep 603';
      const { self, pids, exited } = await startLifeline(owner.arg, script, 4);
      await new Promise((r) => setTimeout(r, 100));
      expect(pids.every(alive)).to.equal(true);
      process.kill(owner.id.pid, 'SIGKILL');
      const ms = await goneWithin([...pids, self], DEADLINE_MS);
      expect(ms, `the program's processes still run ${DEADLINE_MS} ms after the owner died`).to.not.equal(null);
      expect(await exited).to.deep.equal({ code: null, signal: 'SIGKILL' });
    });

    it('is transparent otherwise: stdout, exit code; and nothing the program left behind survives it', async () => {
      const owner = startOwner();
      const { pids, exited } = await startLifeline(owner.arg, 'sleep 600 & echo $!; exit 7', 1);
      expect(await exited).to.deep.equal({ code: 7, signal: null });
      expect(await goneWithin(pids, DEADLINE_MS)).to.not.equal(null);
    });

    it('forwards SIGTERM to its program, and ends as the program did', async () => {
      const owner = startOwner();
      const { self, exited } = await startLifeline(owner.arg, 'echo $$; exec sleep 600', 1);
      process.kill(self.pid, 'SIGTERM');
      expect(await exited).to.deep.equal({ code: null, signal: 'SIGTERM' });
    });

    it('takes its program along when lifeline itself is SIGKILLed (PR_SET_PDEATHSIG)', async () => {
      const owner = startOwner();
      const { self, pids } = await startLifeline(owner.arg, 'echo $$; exec sleep 600', 1);
      process.kill(self.pid, 'SIGKILL');
      expect(await goneWithin(pids, DEADLINE_MS)).to.not.equal(null);
    });

    it('refuses an owner that is gone already (125, one line) without starting the program', async () => {
      const owner = startOwner();
      process.kill(owner.id.pid, 'SIGKILL');
      await new Promise((r) => owner.child.once('exit', r));
      const dir = mkdtempSync(join(tmpdir(), 'sfnc-lifeline-'));
      try {
        const marker = join(dir, 'ran');
        execFileSync(bin('lifeline'), ['--owner', owner.arg, '--', 'touch', marker], { stdio: ['ignore', 'pipe', 'pipe'] });
        expect.fail('lifeline ran with a dead owner');
      } catch (e) {
        const err = e as { status: number; stderr: Buffer };
        expect(err.status).to.equal(125);
        expect(err.stderr.toString().trim().split('\n')).to.deep.equal([`lifeline: the owner ${owner.arg} is gone already; touch was not started`]);
        expect(existsSync(join(dir, 'ran'))).to.equal(false);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it('says how to call it, with status 125, on bad usage', () => {
      for (const args of [[], ['--owner', '1:2'], ['--owner', 'x:2', '--', 'true'], ['--owner', '1:2', 'true']]) {
        try {
          execFileSync(bin('lifeline'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
          expect.fail(`lifeline accepted ${args.join(' ')}`);
        } catch (e) {
          const err = e as { status: number; stderr: Buffer };
          expect(err.status, args.join(' ')).to.equal(125);
          expect(err.stderr.toString().trim().split('\n')).to.have.length(1);
        }
      }
    });
  });
});
