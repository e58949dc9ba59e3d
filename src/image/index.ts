/**
 * Guest images: a kernel plus an initramfs that holds everything a VM clone runs. The initramfs is
 * content-addressed: its key covers the agent, the kernel, and the name, size and modification
 * time of every file it holds, so an unchanged job reuses the cached image and a changed file
 * (a rebuilt program, an upgraded library) makes a new one.
 *
 * Contents: the guest agent as /init, static busybox (the shell and tools), the virtio modules and
 * the NFS client's, dropbear with the installation's host key and the client's public key, the MPI
 * runtime the job needs with its run-time plugins, and the job's programs with their library
 * closure. Never the job's working directory: clones mount it from their host (src/workdir/), so
 * an image, and the template booted from it, serve every directory a program is run from.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { runCommand } from '../common/command.js';
import { HostError } from '../common/errors.js';
import { logger, timed, type Logger } from '../common/log.js';
import { cacheDir, contentKey } from './cache.js';
import type { MpiRuntime } from '../providers/checkpoint.js';
import { closure, lddLibraries } from './closure.js';
import { writeCpio } from './cpio.js';
import { guestKernel, type GuestKernel } from './kernel.js';
import { sshKeys } from './ssh-keys.js';
import { GuestTree } from './tree.js';

export interface ImageSource {
  programs?: string[];
  mpi?: MpiRuntime;
  /** Where the guest agent (native/build/agent) is. */
  nativeDir: string;
}

export interface GuestImage {
  key: string;
  kernel: GuestKernel;
  initramfs: string;
  /** Bytes of file content in the image: the guest's RAM must hold it. */
  contentBytes: number;
}

/** Bumped when the layout of images changes, so old cached images are not reused. */
const FORMAT = '1';
const BUSYBOX = '/bin/busybox';
const DROPBEAR = '/usr/sbin/dropbear';
/** dropbear's client, as the guests' `ssh`: cluster nodes have one, and Open MPI's daemons look for it. */
const DBCLIENT = '/usr/bin/dbclient';


function requireHostFile(path: string, pkg: string): void {
  if (!existsSync(path)) throw new HostError(`${path} is missing`, `install the Debian package ${pkg} (npm run setup does)`);
}

async function composeTree(src: ImageSource, kernel: GuestKernel): Promise<GuestTree> {
  const agent = join(src.nativeDir, 'agent');
  if (!existsSync(agent)) throw new HostError(`the guest agent ${agent} is not built`, 'run `make -C native` (npm run build does)');
  requireHostFile(BUSYBOX, 'busybox-static');
  requireHostFile(DROPBEAR, 'dropbear-bin');
  const keys = await sshKeys();
  const t = new GuestTree();
  for (const d of ['/proc', '/sys', '/dev', '/run', '/var/run', '/etc', '/root', '/usr/bin', '/usr/sbin']) t.dir(d);
  t.dir('/tmp', 0o1777);
  t.file('/init', agent, 0o755);

  // Programs first, so that their files win over anything below with the same path.
  const files = await closure((src.programs ?? []).map((p) => resolve(p)), src.mpi ?? 'none');
  const dropbear = await lddLibraries(DROPBEAR);
  const dbclient = existsSync(DBCLIENT) ? [DBCLIENT, ...(await lddLibraries(DBCLIENT)).libs] : [];
  // For MPICH, at their host paths: native/rankwatch, in which ranks run under Hydra (--launch
  // native), and native/sockets, which the PMI server's rank probe runs in the guest to see a
  // finalize stall (launcher/pmi/rank-probe.ts).
  const mpichHelpers = src.mpi === 'mpich' ? ['rankwatch', 'sockets'].map((p) => join(src.nativeDir, p)).filter((f) => existsSync(f)) : [];
  for (const f of [...files, ...mpichHelpers, DROPBEAR, ...dropbear.libs, ...dbclient, BUSYBOX]) t.hostPath(f);
  if (dbclient.length && !t.has('/usr/bin/ssh')) t.symlink('/usr/bin/ssh', 'dbclient');

  // busybox applets as links next to busybox, where they do not shadow a real program.
  const bbDir = dirname(realpathSync(BUSYBOX));
  const applets = (await runCommand(BUSYBOX, ['--list'])).stdout.split('\n').filter(Boolean);
  for (const a of applets) for (const d of [bbDir, '/usr/sbin']) if (!t.has(join(d, a))) t.symlink(join(d, a), join(bbDir, 'busybox'));
  if (!t.has('/bin')) t.symlink('/bin', 'usr/bin');
  if (!t.has('/sbin')) t.symlink('/sbin', 'usr/sbin');

  const modDir = `/usr/lib/modules/${kernel.version}`;
  for (const m of kernel.modules) t.file(join(modDir, basename(m)), m, 0o644);
  t.data('/etc/snowflock/modules', kernel.modules.map((m) => join(modDir, basename(m))).join('\n') + '\n');

  t.data('/etc/passwd', 'root:x:0:0:root:/root:/bin/sh\n');
  t.data('/etc/group', 'root:x:0:\n');
  t.data('/etc/shells', '/bin/sh\n');
  t.data('/etc/hosts', '127.0.0.1 localhost\n');
  t.dir('/root/.ssh', 0o700);
  t.data('/root/.ssh/authorized_keys', keys.clientPublic + '\n', 0o600);
  t.dir('/etc/dropbear', 0o700);
  t.data('/etc/dropbear/dropbear_ed25519_host_key', readFileSync(keys.hostKey), 0o600);
  return t;
}

/** The cache key: everything that decides the image's bytes. */
function imageKey(t: GuestTree, kernel: GuestKernel): string {
  const h = createHash('sha256');
  for (const e of t.list()) {
    h.update(`${e.type} ${e.path} `);
    if (e.type === 'file') {
      const st = statSync(e.source);
      h.update(`${e.source} ${st.size} ${st.mtimeMs} ${e.mode}`);
    } else if (e.type === 'data') h.update(e.data);
    else if (e.type === 'symlink') h.update(e.target);
    h.update('\n');
  }
  return contentKey(FORMAT, kernel.version, h.digest('hex'));
}

/** Builds (or finds cached) the guest image for a job. */
export async function guestImage(src: ImageSource, log?: Logger): Promise<GuestImage> {
  const kernel = await guestKernel();
  const t = await composeTree(src, kernel);
  const key = imageKey(t, kernel);
  const dir = cacheDir('images');
  const initramfs = join(dir, `${key}.cpio`);
  const contentBytes = t.size();
  if (existsSync(initramfs)) {
    log?.debug(`guest image ${key} cached`);
    return { key, kernel, initramfs, contentBytes };
  }
  const tmp = `${initramfs}.${process.pid}.tmp`;
  try {
    // A step of its own: the first job of a program waits for it (progress shows it).
    await timed(log ?? logger('image'), 'guest image build', () => writeCpio(tmp, t.list()));
    renameSync(tmp, initramfs);
  } finally {
    rmSync(tmp, { force: true });
  }
  writeFileSync(join(dir, `${key}.json`), JSON.stringify({ key, kernel: kernel.version, contentBytes, src }, null, 2));
  log?.info(`guest image ${key} built: ${(contentBytes / 1048576).toFixed(1)} MiB`);
  return { key, kernel, initramfs, contentBytes };
}
