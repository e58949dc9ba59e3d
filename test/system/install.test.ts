/**
 * snowflock as a new user gets it from npm: `npm pack` (which builds: prepack), `npm install -g` of
 * the tarball into a temporary prefix whose path has a space in it, `snowflock setup --yes`, then an
 * unmodified script calling `mpirun -np 4 ./hello` (MPICH) under `eval "$(snowflock shell-env)"`
 * runs on fresh namespace clones through the installed sfmpirun, and leaves nothing behind. The
 * npm dependencies come from npm's cache when it has them (--prefer-offline), else the registry.
 *
 * Uses SNOWFLOCK_POOL and SNOWFLOCK_STATE_DIR when set (its own state directory inside the latter).
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, renameSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { expect } from 'chai';
import { projectRoot } from '../../src/common/paths.js';
import { gitCommit } from '../../launcher/cli/version.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { sourceDir } from '../helpers/programs.js';

const root = projectRoot();

interface Ran {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number } = {}): Ran {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: opts.cwd ?? root, env: opts.env ?? process.env, timeout: opts.timeout ?? 120_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(r: Ran, what: string): string {
  expect(r.status, `${what}: ${r.stderr}`).to.equal(0);
  return r.stdout;
}

describe('npm install -g of the packed tarball', function () {
  this.timeout(240_000);

  // Namespace clones get a private /tmp, but the top directory of a working directory under /tmp
  // stays shared: the job's files in /tmp/sfin-*/ are seen by the ranks.
  const work = mkdtempSync(join(tmpdir(), 'sfin-'));
  const prefix = join(work, 'npm prefix');
  const bin = join(prefix, 'bin');
  const pkg = join(prefix, 'lib', 'node_modules', 'snowflock');
  const stateParent = process.env.SNOWFLOCK_STATE_DIR ?? tmpdir();
  mkdirSync(stateParent, { recursive: true });
  const stateDir = mkdtempSync(join(stateParent, 'install-test-'));
  /** What a user's shell has: the prefix's bin/ and the system's, and node (found as npm's links expect). */
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: [bin, dirname(process.execPath), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'].join(':'),
    SNOWFLOCK_STATE_DIR: stateDir,
  };
  // The installed package's own cache default is under /var/cache; the tests use the checkout's,
  // which setup filled with the guest kernel, so that setup has nothing to download.
  const withCache = { ...env, SNOWFLOCK_CACHE: join(root, '.cache') };
  let tarball = '';
  let listing: string[] = [];

  before(() => {
    const packed = ok(run('npm', ['pack', '--pack-destination', work], { timeout: 200_000 }), 'npm pack');
    tarball = join(work, packed.trim().split('\n').pop()!);
    listing = ok(run('tar', ['tzf', tarball]), 'tar').split('\n').filter(Boolean);
    ok(run('npm', ['install', '-g', '--prefix', prefix, tarball, '--prefer-offline', '--no-audit', '--no-fund'], { cwd: work }), 'npm install -g');
  });

  after(() => {
    rmSync(work, { recursive: true, force: true });
    if (existsSync(join(stateDir, 'tickets')) && readdirSync(join(stateDir, 'tickets')).length > 0) return; // keep what leaked
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('carries the prebuilt helpers and only what runs, not sources, tests or build files', () => {
    const files = listing.map((f) => f.replace(/^package\//, ''));
    for (const f of ['native/build/holder', 'native/build/enter', 'native/build/agent', 'dist/launcher/bin/sfmpirun.js', 'dist/src/engine.js', 'dist/man/sfmpirun.1', 'dist/man/snowflock.1', 'dist/dropin/mpirun', 'dist/dropin/mpiexec', 'dist/build-info.json', 'dist/completion/snowflock.bash', 'setup/packages.txt', 'README.md', 'LICENSE', 'package.json']) {
      expect(files, f).to.include(f);
    }
    const unwanted = files.filter((f) => /^(test|benchmarks|\.ci|src|launcher|dist\/test|dist\/benchmarks|dist\/launcher\/build)\//.test(f) || /\.(ts|c|h|o|map)$/.test(f) || f.includes('/obj/') || f === 'native/Makefile');
    expect(unwanted).to.deep.equal([]);
    // The guest agent runs in guests with no libc of ours; the host helpers must not depend on the host's.
    for (const helper of ['agent', 'holder', 'enter']) {
      const path = join(pkg, 'native', 'build', helper);
      expect(ok(run('file', ['-b', path]), 'file'), helper).to.match(/ELF 64-bit .*x86-64.*statically linked/);
      expect(statSync(path).mode & 0o111, `${helper} is executable`).to.not.equal(0);
    }
  });

  it('installs its man pages, and --version names the commit it was packed from', () => {
    for (const page of ['sfmpirun.1', 'sfmpiexec.1', 'snowflock.1']) expect(existsSync(join(prefix, 'share', 'man', 'man1', page)), page).to.equal(true);
    const shown = ok(run('man', ['-P', 'cat', 'sfmpirun'], { env: { ...env, MANPATH: join(prefix, 'share', 'man'), MANWIDTH: '100' } }), 'man sfmpirun');
    expect(shown).to.include('--launch-channel');
    const commit = gitCommit(root);
    expect(commit, 'the checkout is a git checkout').to.be.a('string');
    expect(ok(run(join(bin, 'sfmpirun'), ['--version'], { env }), 'sfmpirun --version').split('\n')[0]).to.equal(`sfmpirun (snowflock) 0.1.0, commit ${commit}`);
    expect(ok(run(join(bin, 'snowflock'), ['--version'], { env }), 'snowflock --version').trim()).to.equal(`snowflock 0.1.0, commit ${commit}`);
  });

  it('snowflock setup --yes has nothing left to do on a set-up host; doctor finds the helpers and the system cache', () => {
    const setup = ok(run(join(bin, 'snowflock'), ['setup', '--yes'], { env: withCache }), 'snowflock setup --yes');
    expect(setup).to.match(/^snowflock setup: nothing to do: the \d+ Debian packages are installed/);
    const doctor = ok(run(join(bin, 'snowflock'), ['doctor'], { env }), 'snowflock doctor');
    expect(doctor).to.match(new RegExp(`ok +native helpers +lifeline, reaper, holder, enter in ${pkg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}/native/build`));
    // An installed package does not cache inside npm's directory.
    expect(doctor).to.include('/var/cache/snowflock/kernel');
  });

  it('runs an unmodified script calling mpirun -np 4 ./hello on 4 fresh clones under shell-env, and leaves nothing', () => {
    const job = join(work, 'my job');
    mkdirSync(job);
    ok(run('mpicc.mpich', ['-O1', '-o', join(job, 'hello'), join(sourceDir, 'hello.c')]), 'mpicc.mpich (libmpich-dev)');
    writeFileSync(join(job, 'job.sh'), '#!/bin/sh\nset -e\nmpirun -np 4 ./hello\n', { mode: 0o755 });
    // Evaluated twice, as a login script and a job script might: the same as once.
    const script = 'eval "$(snowflock shell-env)"; eval "$(snowflock shell-env)"; command -v mpiexec; cd "$JOB" && ./job.sh';
    const r = run('sh', ['-c', script], { env: { ...env, JOB: job } });
    const out = ok(r, 'the job script').split('\n').filter(Boolean);
    expect(out[0]).to.equal(join(pkg, 'dist', 'dropin', 'mpiexec'));
    const lines = out.slice(1).sort();
    expect(lines).to.have.length(4);
    const hosts = lines.map((l, i) => {
      const m = /^hello rank (\d) of 4 on (sf([0-9a-f]+)-\d+)$/.exec(l);
      expect(m, l).to.not.equal(null);
      expect(Number(m![1])).to.equal(i);
      return m![2]!;
    });
    expect(new Set(hosts).size, 'one clone per rank').to.equal(4);
    const ticket = /^sf([0-9a-f]+)-/.exec(hosts[0]!)![1]!;
    return assertNoLeaks([ticket], stateDir);
  });

  it('says in one line what to do when a helper is missing or built for another machine, before provisioning anything', () => {
    const holder = join(pkg, 'native', 'build', 'holder');
    const sfmpirun = (): Ran => run(join(bin, 'sfmpirun'), ['--provider', 'netns', '-np', '1', '/bin/true'], { env });
    const fromSources = 'build them from a source checkout (make -C native) and set SNOWFLOCK_NATIVE_DIR to its native/build';
    renameSync(holder, `${holder}.away`);
    try {
      const r = sfmpirun();
      expect(r.status).to.equal(3);
      expect(r.stderr).to.equal(`sfmpirun: the netns provider cannot run on this host; the native helper ${holder} is missing; reinstall snowflock (npm install -g snowflock), or ${fromSources}\n`);
    } finally {
      renameSync(`${holder}.away`, holder);
    }
    // The same helper as if packed for arm64: its ELF header names another machine.
    const fd = openSync(holder, 'r+');
    const arm64 = Buffer.alloc(2);
    arm64.writeUInt16LE(183);
    writeSync(fd, arm64, 0, 2, 18);
    closeSync(fd);
    const r = sfmpirun();
    expect(r.status).to.equal(3);
    expect(r.stderr).to.equal(`sfmpirun: the netns provider cannot run on this host; the native helper ${holder} is a program for arm64, but this host is linux x64; the npm package carries helpers for x86-64 Linux only; ${fromSources}\n`);
    expect(existsSync(join(stateDir, 'tickets')) ? readdirSync(join(stateDir, 'tickets')) : []).to.deep.equal([]);
  });

  it('takes itself off PATH with --undo', () => {
    const r = run('sh', ['-c', 'eval "$(snowflock shell-env)"; eval "$(snowflock shell-env --undo)"; command -v mpirun || echo none; printf "%s\\n" "$PATH"'], { env });
    const [mpirun, path] = ok(r, 'shell-env --undo').trim().split('\n');
    expect(mpirun).to.not.include(pkg);
    expect(path).to.equal(env.PATH);
  });
});
