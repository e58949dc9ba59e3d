/**
 * Guest images: the cpio writer read back by the real cpio(1), the contents and library closure of
 * an image, its content-addressed cache (programs and MPI, never the working directory), and the
 * user error of a missing library.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeCpio } from '../../src/image/cpio.js';
import { guestImage } from '../../src/image/index.js';
import { settings } from '../../src/common/config.js';
import { UserError } from '../../src/common/errors.js';
import { program } from '../helpers/programs.js';

const nativeDir = settings().nativeDir;

const list = (cpio: string) => execFileSync('sh', ['-c', `cpio -t --quiet < ${cpio}`], { encoding: 'utf8' }).trim().split('\n');

describe('guest image', function () {
  this.timeout(120_000);
  let dir: string;
  before(() => (dir = mkdtempSync(join(tmpdir(), 'sf-image-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('writes newc archives that cpio reads back, symlinks and contents included', async () => {
    const out = join(dir, 'a.cpio');
    writeFileSync(join(dir, 'src'), 'hello');
    await writeCpio(out, [
      { type: 'dir', path: '/etc' },
      { type: 'data', path: '/etc/x', mode: 0o644, data: Buffer.from('abc') },
      { type: 'symlink', path: '/etc/y', target: 'x' },
      { type: 'file', path: '/etc/z', mode: 0o755, source: join(dir, 'src'), size: 5 },
    ]);
    expect(list(out)).to.deep.equal(['etc', 'etc/x', 'etc/y', 'etc/z']);
    const x = join(dir, 'x');
    execFileSync('sh', ['-c', `mkdir -p ${x} && cd ${x} && cpio -id --quiet < ${out}`]);
    expect(execFileSync('cat', [join(x, 'etc/y'), join(x, 'etc/z')], { encoding: 'utf8' })).to.equal('abchello');
  });

  it('holds the agent, busybox, dropbear, the modules, the program and its whole library closure', async () => {
    const hello = program('hello');
    const img = await guestImage({ nativeDir, programs: [hello], mpi: 'mpich' });
    const names = new Set(list(img.initramfs).map((n) => `/${n}`));
    for (const p of ['/init', '/usr/bin/busybox', '/usr/bin/sh', '/usr/sbin/dropbear', '/etc/dropbear/dropbear_ed25519_host_key', '/root/.ssh/authorized_keys', hello]) {
      expect(names, p).to.include(p);
    }
    // Libraries ldd finds, and UCX transports loaded at run time.
    expect([...names].some((n) => /libmpich\.so\.12/.test(n))).to.equal(true);
    expect([...names].some((n) => /\/ucx\/libuct_tcp\.so|\/libuct\.so/.test(n))).to.equal(true);
    expect([...names].some((n) => /virtio_net\.ko$/.test(n))).to.equal(true);
    // MPICH's helpers at their host paths: rankwatch (ranks under Hydra) and sockets (the rank probe).
    for (const helper of ['rankwatch', 'sockets']) expect(names, helper).to.include(join(nativeDir, helper));
    // The dynamic loader where programs name it (on a merged-/usr host, through the /lib64 link).
    expect(names).to.include('/lib64');
    expect([...names].some((n) => n.endsWith('/ld-linux-x86-64.so.2'))).to.equal(true);
  });

  it('is cached by content: unchanged inputs reuse it, a changed program makes a new one', async () => {
    const prog = join(dir, 'prog');
    execFileSync('cp', ['/usr/bin/true', prog]);
    const a = await guestImage({ nativeDir, programs: [prog], mpi: 'none' });
    const built = statSync(a.initramfs).mtimeMs;
    const b = await guestImage({ nativeDir, programs: [prog], mpi: 'none' });
    expect(b.key).to.equal(a.key);
    expect(statSync(b.initramfs).mtimeMs).to.equal(built);
    utimesSync(prog, new Date(), new Date(Date.now() + 5000));
    const c = await guestImage({ nativeDir, programs: [prog], mpi: 'none' });
    expect(c.key).to.not.equal(a.key);
    rmSync(a.initramfs, { force: true });
    rmSync(c.initramfs, { force: true });
  });

  it('refuses a program whose libraries cannot be found, naming them', async () => {
    const lib = join(dir, 'libsfgone.so');
    const src = join(dir, 'p.c');
    writeFileSync(join(dir, 'l.c'), 'int sfgone(void) { return 0; }\n');
    writeFileSync(src, 'int sfgone(void); int main(void) { return sfgone(); }\n');
    execFileSync('gcc', ['-shared', '-fPIC', '-o', lib, join(dir, 'l.c')]);
    execFileSync('gcc', ['-o', join(dir, 'p'), src, `-L${dir}`, '-lsfgone']);
    rmSync(lib);
    const e = await guestImage({ nativeDir, programs: [join(dir, 'p')], mpi: 'none' }).catch((x: unknown) => x);
    expect(e).to.be.instanceOf(UserError);
    expect((e as Error).message).to.match(/libsfgone\.so.*cannot be found|cannot be found.*libsfgone\.so/);
  });

  it('carries no working directory: the same programs give the same image from any directory, a large one included', async () => {
    const prog = join(dir, 'prog2');
    execFileSync('cp', ['/usr/bin/true', prog]);
    const big = join(dir, 'big');
    execFileSync('mkdir', ['-p', big]);
    // Far more than the 64 MiB a working directory was once limited to: it stays on the host.
    writeFileSync(join(big, 'data'), Buffer.alloc(96 << 20));
    const here = process.cwd();
    try {
      process.chdir(big);
      const a = await guestImage({ nativeDir, programs: [prog], mpi: 'none' });
      process.chdir(dir);
      const b = await guestImage({ nativeDir, programs: [prog], mpi: 'none' });
      expect(b.key).to.equal(a.key);
      expect(a.contentBytes, 'the image holds no part of the directory').to.be.below(64 << 20);
      expect(list(a.initramfs).some((n) => `/${n}`.startsWith(big))).to.equal(false);
      rmSync(a.initramfs, { force: true });
    } finally {
      process.chdir(here);
    }
  });
});
