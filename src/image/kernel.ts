/**
 * The guest kernel: Debian's cloud kernel package, fetched with `apt-get download` and unpacked
 * into the cache (never installed on the host). Its virtio drivers are modules; the guest agent
 * loads them in the order below (each needs the ones before it).
 */
import { existsSync, readdirSync, rmSync, mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { runCommand } from '../common/command.js';
import { settings } from '../common/config.js';
import { HostError } from '../common/errors.js';
import { cacheDir } from './cache.js';
import { WORKDIR_GUEST_MODULES } from '../workdir/guest-modules.js';

export interface GuestKernel {
  version: string;
  /** The bzImage. */
  vmlinuz: string;
  /** Host paths of the modules to load, in load order. */
  modules: string[];
}

/** Module paths under lib/modules/<version>/kernel, in load order. */
const MODULES = [
  'drivers/virtio/virtio_ring',
  'drivers/virtio/virtio',
  'drivers/virtio/virtio_pci_modern_dev',
  'drivers/virtio/virtio_pci_legacy_dev',
  'drivers/virtio/virtio_pci',
  'drivers/virtio/virtio_mmio',
  'net/core/failover',
  'drivers/net/net_failover',
  'drivers/net/virtio_net',
  'drivers/char/virtio_console',
  // The NFS client that mounts the job's working directory from the host.
  ...WORKDIR_GUEST_MODULES,
];

const META_PACKAGE = 'linux-image-cloud-amd64';

/** The cloud kernel version Debian currently ships (e.g. 6.1.0-56-cloud-amd64), via apt-cache. */
async function currentVersion(): Promise<string> {
  const r = await runCommand('apt-cache', ['depends', META_PACKAGE], { reject: false });
  const m = /Depends: linux-image-(\S+-cloud-amd64)/.exec(r.stdout ?? '');
  if (r.failed || !m) {
    throw new HostError(
      `cannot find Debian's cloud kernel package (${META_PACKAGE})`,
      'run `apt-get update` on a Debian 12 host (the VM provider boots that kernel)',
    );
  }
  return m[1];
}

function unpacked(dir: string, version: string): GuestKernel | null {
  const vmlinuz = join(dir, 'boot', `vmlinuz-${version}`);
  const modules = MODULES.map((m) => join(dir, 'lib', 'modules', version, 'kernel', `${m}.ko`));
  if (!existsSync(vmlinuz) || !modules.every(existsSync)) return null;
  return { version, vmlinuz, modules };
}

/** The newest kernel already unpacked in the cache, or null. Never fetches, never creates the cache. */
export function cachedGuestKernel(): GuestKernel | null {
  const root = join(settings().cacheDir, 'kernel');
  if (!existsSync(root)) return null;
  for (const v of readdirSync(root).sort().reverse()) {
    const k = unpacked(join(root, v), v);
    if (k) return k;
  }
  return null;
}

/**
 * Returns the cached kernel, fetching and unpacking it first when needed. With a cache already
 * filled, no apt call is made (offline runs work): the newest unpacked version is used.
 */
export async function guestKernel(opts: { refresh?: boolean } = {}): Promise<GuestKernel> {
  const root = cacheDir('kernel');
  const cached = opts.refresh ? null : cachedGuestKernel();
  if (cached) return cached;
  const version = await currentVersion();
  const dir = join(root, version);
  const have = unpacked(dir, version);
  if (have) return have;
  const tmp = join(root, `.fetch-${process.pid}`);
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(tmp, { recursive: true });
  try {
    const dl = await runCommand('apt-get', ['download', `linux-image-${version}`], { cwd: tmp, reject: false });
    const deb = readdirSync(tmp).find((f) => f.endsWith('.deb'));
    if (!deb) {
      throw new HostError(
        `cannot download linux-image-${version}: ${(dl.stderr || dl.stdout || '').trim().split('\n').pop()}`,
        'check the network and run `apt-get update`',
      );
    }
    await runCommand('dpkg-deb', ['-x', join(tmp, deb), join(tmp, 'x')]);
    rmSync(dir, { recursive: true, force: true });
    renameSync(join(tmp, 'x'), dir);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  const k = unpacked(dir, version);
  if (!k) throw new Error(`the kernel package ${version} lacks the expected virtio modules`);
  return k;
}
