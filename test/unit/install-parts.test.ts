/**
 * The parts of an npm install that need no root: whether a native helper can run on this host (and
 * the line that says what to do when not), the one Debian package list that `snowflock setup` and
 * .ci/setup both read, and the commit that --version names.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { projectRoot } from '../../src/common/paths.js';
import { findInPath, nativeHelperProblem, nativeHelpersProblem } from '../../src/doctor/checks.js';
import { describePlan, missingPackages, parsePackageList, readPackageList } from '../../launcher/cli/setup.js';
import { gitCommit, versionLine } from '../../launcher/cli/version.js';

describe('native helpers on this host', () => {
  let dir: string;
  /** A real program of this host's architecture to stand in as a helper. */
  const real = findInPath('true')!;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sfin-helpers-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('accepts a program of this architecture', () => {
    copyFileSync(real, join(dir, 'ok'));
    chmodSync(join(dir, 'ok'), 0o755);
    expect(nativeHelperProblem(dir, 'ok')).to.equal(null);
  });

  it('says that one is missing, and what to do, in one line', () => {
    const line = nativeHelpersProblem(dir, ['gone']);
    expect(line).to.equal(`the native helper ${join(dir, 'gone')} is missing; build them into ${dir} (make -C native in a source checkout), or point SNOWFLOCK_NATIVE_DIR where they are`);
  });

  it('refuses a program built for another architecture, naming both', () => {
    copyFileSync(real, join(dir, 'arm'));
    chmodSync(join(dir, 'arm'), 0o755);
    const fd = openSync(join(dir, 'arm'), 'r+');
    const machine = Buffer.alloc(2);
    machine.writeUInt16LE(process.arch === 'arm64' ? 62 : 183);
    writeSync(fd, machine, 0, 2, 18);
    closeSync(fd);
    expect(nativeHelperProblem(dir, 'arm')?.what).to.match(new RegExp(`is a program for (arm64|x64), but this host is linux ${process.arch}$`));
  });

  it('refuses what is not a program, and what may not be executed', () => {
    writeFileSync(join(dir, 'text'), '#!/bin/sh\n');
    chmodSync(join(dir, 'text'), 0o755);
    expect(nativeHelperProblem(dir, 'text')?.what).to.match(/is not a Linux program/);
    copyFileSync(real, join(dir, 'noexec'));
    chmodSync(join(dir, 'noexec'), 0o644);
    expect(nativeHelperProblem(dir, 'noexec')?.what).to.match(/is not executable/);
  });
});

describe('the Debian package list', () => {
  it('reads one name a line, without comments and blank lines', () => {
    expect(parsePackageList('# head\n\niproute2\n  nftables   # firewall\n#gone\nzsh')).to.deep.equal(['iproute2', 'nftables', 'zsh']);
  });

  it('is the list .ci/setup installs, read the way .ci/setup reads it', () => {
    const root = projectRoot();
    const line = execFileSync('grep', ['^mapfile', join(root, '.ci/setup')], { encoding: 'utf8' }).trim();
    const fromScript = execFileSync('bash', ['-c', `cd "$1" && ${line} && printf '%s\\n' "\${packages[@]}"`, 'bash', root], { encoding: 'utf8' }).split('\n').filter(Boolean);
    const list = readPackageList();
    expect(fromScript).to.deep.equal(list);
    expect(new Set(list).size, 'no package twice').to.equal(list.length);
    for (const p of ['iproute2', 'nftables', 'mpich', 'libmpich-dev', 'openmpi-bin', 'qemu-system-x86', 'busybox-static', 'dropbear-bin']) expect(list).to.include(p);
  });

  it('finds what dpkg does not have', async () => {
    expect(await missingPackages(['dpkg', 'sfin-no-such-package'])).to.deep.equal(['sfin-no-such-package']);
  });

  it('says what setup will do before it does it', () => {
    expect(describePlan({ missing: ['zsh', 'cpio'], kernel: true }, '/var/cache/snowflock')).to.deep.equal([
      'install Debian packages (apt-get install): zsh cpio',
      "fetch the guest kernel for VM clones (Debian's linux-image-cloud-amd64, unpacked, not installed) into /var/cache/snowflock/kernel",
    ]);
    expect(describePlan({ missing: [], kernel: false }, '/x')).to.deep.equal([]);
  });
});

describe('--version', () => {
  it('names the commit of the checkout it runs from', () => {
    const head = execFileSync('git', ['-C', projectRoot(), 'rev-parse', '--short=12', 'HEAD'], { encoding: 'utf8' }).trim();
    expect(gitCommit(projectRoot())).to.match(new RegExp(`^${head}(\\+dirty)?$`));
    expect(versionLine('sfmpirun')).to.match(new RegExp(`^sfmpirun \\(snowflock\\) \\d+\\.\\d+\\.\\d+, commit ${head}(\\+dirty)?$`));
    expect(versionLine('snowflock')).to.match(/^snowflock \d/);
  });

  it('does not take the commit of a repository it merely sits in', () => {
    // An installed package inside someone's project: git would answer with the project's commit.
    const dir = mkdtempSync(join(tmpdir(), 'sfin-repo-'));
    try {
      const git = (...args: string[]) => execFileSync('git', ['-C', dir, '-c', 'user.name=t', '-c', 'user.email=t@t', ...args], { stdio: 'ignore' });
      git('init', '-q');
      git('commit', '-q', '--allow-empty', '-m', 'theirs');
      mkdirSync(join(dir, 'node_modules', 'snowflock'), { recursive: true });
      expect(gitCommit(join(dir, 'node_modules', 'snowflock'))).to.equal(null);
      expect(gitCommit(dir)).to.match(/^[0-9a-f]{12}$/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
