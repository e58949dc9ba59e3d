/**
 * Guest images: a kernel plus an initramfs that holds everything a VM clone runs. The initramfs is
 * content-addressed: its key covers the agent, the kernel, and the name, size and modification
 * time of every file it holds, so an unchanged job reuses the cached image and a changed file
 * (a rebuilt program, an upgraded library) makes a new one.
 *
 * Contents: the guest agent as /init, static busybox (the shell and tools), the virtio modules,
 * dropbear with the installation's host key and the client's public key, the MPI runtime the job
 * needs with its run-time plugins, the job's programs with their library closure, and the job's
 * working directory up to a size limit (SNOWFLOCK_VM_WORKDIR_MAX_MB, default 64): above it the
 * build stops with an error naming the directory, because the guest's root lives in its RAM.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { execa } from 'execa';
import { HostError, UserError } from '../errors.js';
import type { Logger } from '../log.js';
import { cacheDir, contentKey, projectRoot } from './cache.js';
import { closure, lddLibraries, type MpiRuntime } from './closure.js';
import { writeCpio } from './cpio.js';
import { guestKernel, type GuestKernel } from './kernel.js';
import { sshKeys } from './ssh-keys.js';
import { GuestTree, treeSize } from './tree.js';

export interface ImageSource {
  programs?: string[];
  workdir?: string;
  mpi?: MpiRuntime;
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

export function agentPath(): string {
  return join(projectRoot(), 'native', 'build', 'agent');
}

export function workdirLimit(): number {
  const mb = Number(process.env.SNOWFLOCK_VM_WORKDIR_MAX_MB ?? 64);
  return (Number.isFinite(mb) && mb >= 0 ? mb : 64) * 1024 * 1024;
}

function requireHostFile(path: string, pkg: string): void {
  if (!existsSync(path)) throw new HostError(`${path} is missing`, `install the Debian package ${pkg} (npm run setup does)`);
}

async function composeTree(src: ImageSource, kernel: GuestKernel): Promise<GuestTree> {
  const agent = agentPath();
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
  for (const f of [...files, DROPBEAR, ...dropbear.libs, ...dbclient, BUSYBOX]) t.hostPath(f);
  if (dbclient.length && !t.has('/usr/bin/ssh')) t.symlink('/usr/bin/ssh', 'dbclient');

  if (src.workdir) addWorkdir(t, resolve(src.workdir));

  // busybox applets as links next to busybox, where they do not shadow a real program.
  const bbDir = dirname(realpathSync(BUSYBOX));
  const applets = (await execa(BUSYBOX, ['--list'])).stdout.split('\n').filter(Boolean);
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

function addWorkdir(t: GuestTree, dir: string): void {
  const limit = workdirLimit();
  const size = treeSize(dir, limit);
  if (size > limit) {
    throw new UserError(
      `the working directory ${dir} holds more than ${limit >> 20} MiB, the limit for copying it into VM clones; ` +
        'run from a smaller directory or raise SNOWFLOCK_VM_WORKDIR_MAX_MB',
    );
  }
  t.hostPath(dir);
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
    await writeCpio(tmp, t.list());
    renameSync(tmp, initramfs);
  } finally {
    rmSync(tmp, { force: true });
  }
  writeFileSync(join(dir, `${key}.json`), JSON.stringify({ key, kernel: kernel.version, contentBytes, src }, null, 2));
  log?.info(`guest image ${key} built: ${(contentBytes / 1048576).toFixed(1)} MiB`);
  return { key, kernel, initramfs, contentBytes };
}
