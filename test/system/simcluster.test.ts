/**
 * Simulated clusters (src/hosts/simulated.ts) with the real thing: Debian's slurmctld, slurmd and
 * munged, real namespaces and links. Settings come from the environment like everywhere else
 * (SNOWFLOCK_STATE_DIR, SNOWFLOCK_SIM_POOL, SNOWFLOCK_SIM_PORTS, SNOWFLOCK_SIM_PREFIX), so that
 * parallel runs on one machine keep apart.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { execa } from 'execa';
import {
  crashHost,
  down,
  hostCommand,
  resolveSettings,
  SimClusterError,
  status,
  up,
  type SimClusterRecord,
  type SimHostRecord,
  setHostLink,
} from '../../src/hosts/simulated.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const cli = join(root, 'launcher', 'bin', 'simcluster.ts');
// Our own state directory unless the caller gave one: nothing here may touch someone else's.
const ownStateDir = process.env.SNOWFLOCK_STATE_DIR === undefined;
process.env.SNOWFLOCK_STATE_DIR ??= join(tmpdir(), `sfsc-test-${process.pid}`);
const settings = resolveSettings();
/** Cluster names unique to this run (a concurrent run may share the state directory). */
const tag = (letter: string): string => `t${letter}${process.pid % 100000}`;

function onHost(h: SimHostRecord, script: string) {
  const { file, args } = hostCommand(h, ['sh', '-c', script]);
  return execa(file, args);
}

function slurm(rec: SimClusterRecord, cmd: string, args: string[], cwd?: string) {
  return execa(cmd, args, { env: { SLURM_CONF: rec.slurmConf }, cwd, timeout: 60_000 });
}

const NS_KINDS = ['net', 'ipc', 'uts', 'mnt', 'pid'] as const;

/** What a cluster consists of, taken while it runs, to check afterwards that none of it is left. */
interface Snapshot {
  rec: SimClusterRecord;
  namespaces: Set<string>;
  pids: number[];
  links: string[];
}

function snapshot(rec: SimClusterRecord): Snapshot {
  const namespaces = new Set<string>();
  for (const h of rec.hosts) for (const k of NS_KINDS) namespaces.add(readlinkSync(`/proc/${h.init!.pid}/ns/${k}`));
  const pids = [rec.munged, rec.slurmctld, ...rec.hosts.flatMap((h) => [h.init, h.holder, h.slurmd])].map((p) => p!.pid);
  return { rec, namespaces, pids, links: [rec.bridge, ...rec.hosts.map((h) => h.veth)] };
}

function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return !/^\S+ \(.*\) [ZX]/.test(stat);
  } catch {
    return false;
  }
}

/** Everything of a cluster that still exists on the machine. */
/** What is left, after a short grace: processes of a killed PID namespace take a moment to be gone. */
async function settledLeftovers(s: Snapshot, graceMs = 5000): Promise<string[]> {
  const deadline = Date.now() + graceMs;
  let left = leftovers(s);
  while (left.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    left = leftovers(s);
  }
  return left;
}

function leftovers(s: Snapshot): string[] {
  const left: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    if (!alive(Number(pid))) continue;
    for (const k of NS_KINDS) {
      try {
        if (s.namespaces.has(readlinkSync(`/proc/${pid}/ns/${k}`))) left.push(`process ${pid} in a host's ${k} namespace`);
      } catch {
        /* gone meanwhile, or a kernel thread */
      }
    }
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmd.includes(s.rec.dir + '/') || cmd.includes(s.rec.dir + ' ')) left.push(`process ${pid}: ${cmd.slice(0, 100)}`);
    } catch {
      /* gone */
    }
  }
  for (const pid of s.pids) if (alive(pid)) left.push(`recorded process ${pid}`);
  for (const l of s.links) if (existsSync(`/sys/class/net/${l}`)) left.push(`link ${l}`);
  if (readFileSync('/proc/self/mountinfo', 'utf8').includes(s.rec.dir)) left.push(`a mount under ${s.rec.dir}`);
  const simDir = join(settings.stateDir, 'simclusters');
  if (existsSync(s.rec.dir)) left.push(`directory ${s.rec.dir}`);
  if (existsSync(join(simDir, `${s.rec.name}.json`))) left.push(`record ${s.rec.name}.json`);
  for (const c of existsSync(join(simDir, 'index')) ? readdirSync(join(simDir, 'index')) : []) {
    if (readFileSync(join(simDir, 'index', c), 'utf8').trim() === s.rec.name) left.push(`slot claim ${c}`);
  }
  return left;
}

/** The CLI in one process of its own (node with tsx's loader), as a user runs it. */
const CLI = [process.execPath, ['--import', 'tsx', cli]] as const;
/**
 * The CLI's environment names our state directory itself: settings are read once per process, so
 * another test file loaded first may have fixed this process's before this file set the variable.
 */
const cliEnv = { ...process.env, SNOWFLOCK_STATE_DIR: settings.stateDir };

function runCli(args: string[]) {
  return execa(CLI[0], [...CLI[1], ...args], { cwd: root, env: cliEnv, reject: false, timeout: 120_000 });
}

/** Cluster names in the records of our state directory. */
function recordNames(): string[] {
  const dir = join(settings.stateDir, 'simclusters');
  return existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.json')) : [];
}

describe('simulated cluster', function () {
  this.timeout(180_000);

  before(function () {
    execFileSync('make', ['-s', '-C', join(root, 'native')], { stdio: 'inherit' });
  });

  // A test that fails before its own down (an assertion, a timeout) must not leave its cluster:
  // every cluster of this run (named by tag()) still recorded is removed, and the state directory
  // then holds nothing of simulated clusters (the store goes with its last cluster).
  after(async function () {
    const dir = join(settings.stateDir, 'simclusters');
    const ours = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(`${process.pid % 100000}.json`)) : [];
    for (const f of ours) await down(f.slice(0, -'.json'.length));
    const left = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.json')) : [];
    if (left.length === 0) expect(existsSync(dir), `${dir} after the last cluster's down`).to.equal(false);
    if (ownStateDir) rmSync(settings.stateDir, { recursive: true, force: true }); // the directory this file made
  });

  describe('three hosts', function () {
    let rec: SimClusterRecord;
    let snap: Snapshot;

    before(async function () {
      rec = await up({ hosts: 3, name: tag('a') });
      snap = snapshot(rec);
    });

    after(async function () {
      // A failed test must not leave its cluster behind.
      if (rec && existsSync(join(settings.stateDir, 'simclusters', `${rec.name}.json`))) await down(rec.name);
    });

    it('is up with every node idle, and says how to use it', async function () {
      const r = await slurm(rec, 'sinfo', ['-h', '-N', '-o', '%N %T']);
      expect(r.stdout.trim().split('\n').sort()).to.deep.equal(rec.hosts.map((h) => `${h.name} idle`));
      const [st] = await status(rec.name);
      expect(st!.state).to.equal('up');
      expect(st!.problems).to.deep.equal([]);
    });

    it('srun -N3 hostname prints the three host names', async function () {
      const r = await slurm(rec, 'srun', ['-N3', 'hostname']);
      expect(r.stdout.trim().split('\n').sort()).to.deep.equal(rec.hosts.map((h) => h.name));
    });

    it("srun's tasks run inside their host's namespaces", async function () {
      const r = await slurm(rec, 'srun', ['-N3', 'sh', '-c', 'echo $(hostname) $(readlink /proc/self/ns/net) $(readlink /proc/self/ns/ipc) $(readlink /proc/self/ns/mnt)']);
      const seen = r.stdout.trim().split('\n').sort();
      const expected = rec.hosts.map((h) => [h.name, ...['net', 'ipc', 'mnt'].map((k) => readlinkSync(`/proc/${h.init!.pid}/ns/${k}`))].join(' '));
      expect(seen).to.deep.equal(expected);
    });

    it('an sbatch -N 3 --wait script runs on the hosts and its output file appears', async function () {
      // The script's directory must be visible on the hosts: the cluster's directory is, /tmp is not.
      const work = join(rec.dir, 'work');
      mkdirSync(work, { recursive: true });
      writeFileSync(join(work, 'job.sh'), '#!/bin/sh\necho "batch on $(hostname)"\nsrun hostname | sort\n', { mode: 0o755 });
      const r = await slurm(rec, 'sbatch', ['-N', '3', '--wait', '-o', join(work, 'out-%j.txt'), 'job.sh'], work);
      const id = /Submitted batch job (\d+)/.exec(r.stdout)?.[1];
      expect(id, r.stdout).to.be.a('string');
      const out = readFileSync(join(work, `out-${id}.txt`), 'utf8').trim().split('\n');
      expect(out[0]).to.equal(`batch on ${rec.hosts[0]!.name}`);
      expect(out.slice(1)).to.deep.equal(rec.hosts.map((h) => h.name));
    });

    it('each host has its own /tmp, /dev/shm, /run and IPC namespace', async function () {
      const [a, b] = rec.hosts;
      const marker = `sfsc-marker-${process.pid}`;
      await onHost(a!, `echo a > /tmp/${marker} && echo a > /dev/shm/${marker} && echo a > /run/${marker} && ipcmk -M 4096 -p 0600`);
      const seenOnA = await onHost(a!, `cat /tmp/${marker} /dev/shm/${marker} /run/${marker}; ipcs -m | grep -c 4096`);
      expect(seenOnA.stdout.trim().split('\n')).to.deep.equal(['a', 'a', 'a', '1']);
      const seenOnB = await onHost(b!, `ls /tmp/${marker} /dev/shm/${marker} /run/${marker} 2>/dev/null; ipcs -m | grep -c 4096 || true`);
      expect(seenOnB.stdout.trim()).to.equal('0');
      for (const d of ['/tmp', '/dev/shm', '/run']) expect(existsSync(join(d, marker)), `${d} of the machine`).to.equal(false);
      const machineIpc = readlinkSync('/proc/self/ns/ipc');
      const ipcs = new Set(rec.hosts.map((h) => readlinkSync(`/proc/${h.init!.pid}/ns/ipc`)));
      expect(ipcs.size).to.equal(3);
      expect(ipcs.has(machineIpc)).to.equal(false);
    });

    it('hosts know each other by name and share the rest of the filesystem', async function () {
      const [a, b] = rec.hosts;
      const r = await onHost(a!, `getent hosts ${b!.name}; test -f ${rec.slurmConf} && echo shared`);
      expect(r.stdout.trim().split(/\s+/)).to.deep.equal([b!.address, b!.name, 'shared']);
    });

    it('down leaves nothing: namespaces, links, processes, files, mounts', async function () {
      await down(rec.name);
      expect(await settledLeftovers(snap)).to.deep.equal([]);
    });
  });

  it('two clusters started at once coexist on different ports and subnets', async function () {
    const [x, y] = await Promise.all([up({ hosts: 2, name: tag('b') }), up({ hosts: 1, name: tag('c') })]);
    try {
      expect(x.subnet).to.not.equal(y.subnet);
      expect(x.ctldPort).to.not.equal(y.ctldPort);
      expect(x.bridge).to.not.equal(y.bridge);
      const [rx, ry] = await Promise.all([slurm(x, 'srun', ['-N2', 'hostname']), slurm(y, 'srun', ['-N1', 'hostname'])]);
      expect(rx.stdout.trim().split('\n').sort()).to.deep.equal(x.hosts.map((h) => h.name));
      expect(ry.stdout.trim()).to.equal(y.hosts[0]!.name);
    } finally {
      const snaps = [snapshot(x), snapshot(y)];
      await down(x.name);
      expect(await settledLeftovers(snaps[0]!)).to.deep.equal([]);
      // The other cluster is untouched by the first one's down.
      expect((await slurm(y, 'srun', ['-N1', 'hostname'])).stdout.trim()).to.equal(y.hosts[0]!.name);
      await down(y.name);
      expect(await settledLeftovers(snaps[1]!)).to.deep.equal([]);
    }
  });

  it('a host can be cut off and crashed; status says so and down still removes everything', async function () {
    const rec = await up({ hosts: 3, name: tag('g') });
    const snap = snapshot(rec);
    try {
      const [a, b, c] = rec.hosts;
      const reach = async (to: SimHostRecord) => (await onHost(a!, `timeout 2 bash -c 'echo > /dev/tcp/${to.address}/${rec.slurmdPort}' 2>/dev/null && echo yes || echo no`)).stdout.trim();
      expect(await reach(b!)).to.equal('yes');
      await setHostLink(rec, b!.name, false);
      expect(await reach(b!)).to.equal('no');
      await setHostLink(rec, b!.name, true);
      expect(await reach(b!)).to.equal('yes');
      await crashHost(rec, c!.name);
      const [st] = await status(rec.name);
      expect(st!.state).to.equal('broken');
      expect(st!.problems).to.deep.equal([`host ${c!.name} is gone`]);
    } finally {
      await down(rec.name);
    }
    expect(await settledLeftovers(snap)).to.deep.equal([]);
  });

  describe('bad input', function () {
    for (const [args, pattern] of [
      [['up', '--hosts', '0'], /--hosts must be a whole number from 1 to 244/],
      [['up', '--hosts', 'three'], /--hosts must be a whole number/],
      [['up', '--hosts', '2', '--name', 'Bad_Name'], /cluster name "Bad_Name"/],
      [['up', '--hosts', '2', '--bogus'], /unknown option '--bogus'/],
      [['down', 'nosuch'], /no simulated cluster named nosuch /],
    ] as [string[], RegExp][]) {
      it(`simcluster ${args.join(' ')}: one line, exit 2, nothing created`, async function () {
        const before = recordNames();
        const r = await runCli(args);
        expect(r.exitCode).to.equal(2);
        expect(r.stderr.trim().split('\n')).to.have.length(1);
        expect(r.stderr).to.match(pattern);
        expect(r.stdout).to.equal('');
        expect(recordNames()).to.deep.equal(before);
      });
    }

    it('up with the name of a running cluster is refused and leaves that cluster alone', async function () {
      const rec = await up({ hosts: 1, name: tag('d') });
      try {
        let err: unknown;
        await up({ hosts: 2, name: rec.name }).catch((e: unknown) => (err = e));
        expect(err).to.be.instanceOf(SimClusterError);
        expect((err as SimClusterError).kind).to.equal('argument');
        expect((err as Error).message).to.match(new RegExp(`a simulated cluster named ${rec.name} exists`));
        expect((await slurm(rec, 'srun', ['-N1', 'hostname'])).stdout.trim()).to.equal(rec.hosts[0]!.name);
      } finally {
        await down(rec.name);
      }
    });
  });

  it('an up killed midway (SIGKILL) is removed completely by down', async function () {
    const name = tag('e');
    const child = spawn(CLI[0], [...CLI[1], 'up', '--hosts', '3', '--name', name], { cwd: root, env: cliEnv, stdio: 'ignore' });
    const closed = new Promise((r) => child.once('close', r));
    // Kill it once a host exists: the record is all that is left to find the rest by.
    const recordPath = join(settings.stateDir, 'simclusters', `${name}.json`);
    let rec: SimClusterRecord | undefined;
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      try {
        const r = JSON.parse(readFileSync(recordPath, 'utf8')) as SimClusterRecord;
        if (r.hosts?.some((h) => h.init)) {
          rec = r;
          break;
        }
      } catch {
        /* not yet written */
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGKILL');
    await closed;
    expect(rec, 'the record of the killed up').to.not.equal(undefined);
    rec = JSON.parse(readFileSync(recordPath, 'utf8')) as SimClusterRecord;
    const namespaces = new Set<string>();
    for (const h of rec.hosts) {
      for (const k of NS_KINDS) {
        try {
          namespaces.add(readlinkSync(`/proc/${h.init!.pid}/ns/${k}`));
        } catch {
          /* a host whose holder saw its creator die before "go" ended itself */
        }
      }
    }
    const [st] = await status(name);
    expect(st!.state).to.equal('broken');
    await down(name);
    const snap: Snapshot = { rec, namespaces, pids: [], links: [rec.bridge, ...rec.hosts.map((h) => h.veth)] };
    expect(await settledLeftovers(snap)).to.deep.equal([]);
  });

  it('an up interrupted by SIGINT removes what it made and exits 130', async function () {
    const name = tag('f');
    const child = execa(CLI[0], [...CLI[1], 'up', '--hosts', '2', '--name', name], { cwd: root, env: cliEnv, reject: false });
    const recordPath = join(settings.stateDir, 'simclusters', `${name}.json`);
    let rec: SimClusterRecord | undefined;
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline && !rec) {
      try {
        const r = JSON.parse(readFileSync(recordPath, 'utf8')) as SimClusterRecord;
        if (r.munged) rec = r;
      } catch {
        /* not yet */
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    child.kill('SIGINT');
    const r = await child;
    expect(rec, 'the record of the interrupted up').to.not.equal(undefined);
    expect(r.exitCode, r.stderr).to.equal(130);
    const snap: Snapshot = { rec: rec!, namespaces: new Set(), pids: [rec!.munged!.pid], links: [rec!.bridge, ...rec!.hosts.map((h) => h.veth)] };
    expect(await settledLeftovers(snap)).to.deep.equal([]);
  });
});
