/**
 * The checkpoint of the vm provider: the warm template, a VM booted once per guest image until its
 * agent says HELLO, then frozen: paused, device state saved with x-ignore-shared (RAM is not
 * copied), RAM left in its backing file. Clones map that file privately (copy on write) and load
 * the device state. The template's QEMU process is gone once the checkpoint is written; what stays
 * is a directory <templateRoot>/snowflock-tpl-<key>/ with the RAM file, the device state, the
 * memory descriptor and a note. Templates are shared by all jobs and tickets, never part of a
 * ticket's record; they go with `removeTemplates()` (snowflock cleanup --templates).
 *
 * The memory descriptor (src/memory/descriptor.ts) is what clones on other hosts start from
 * instead of the RAM file: made once, when the template is checkpointed, so that its zero-page map
 * and checksums are computed once. Then the RAM file's zero pages are given back (holes punched,
 * contents unchanged): under init_on_free=1 the guest wrote every page it freed, so the file would
 * otherwise hold all of guest RAM in /dev/shm. The memservers of the template record the working
 * set of its clones next to it (memory.ws), and hand it to the next run's memtaps as fill order.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statfsSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { settings } from '../../common/config.js';
import { logger, timed, type Logger } from '../../common/log.js';
import { contentKey } from '../../image/cache.js';
import type { GuestImage } from '../../image/index.js';
import { buildDescriptor, descriptorPath, worksetPath } from '../../memory/descriptor.js';
import { type Accel, bootAndGreet, CMDLINE_KIND, cpuModel, kernelCommandLine, killQuietly, qemuBinary, type VmSpec, vmFiles } from './machine.js';
import { Qmp } from './qmp.js';

const PREFIX = 'snowflock-tpl-';
/**
 * Bumped when the way templates are made changes. 2: booted with init_on_free=1, a memory
 * descriptor next to the RAM file, zero pages punched out of it (format-1 templates, booted
 * without init_on_free, would otherwise be reused silently: their key did not cover the kernel's
 * command line, which it now does).
 */
const FORMAT = '2';

export interface Template {
  key: string;
  dir: string;
  ram: string;
  state: string;
  /** The memory descriptor (4 KiB granules): what clones on other hosts start from. */
  descriptor: string;
  /** The working set its memservers recorded (may not exist yet). */
  workset: string;
  ramMiB: number;
  accel: Accel;
}

/** Guest RAM: the initramfs is unpacked into RAM (and held twice while it is), plus room to run. */
export function guestRamMiB(image: GuestImage): number {
  const need = (2 * image.contentBytes) / 1048576 + 192;
  return Math.max(256, Math.ceil(need / 64) * 64);
}

/** The key of the template of an image on this host: what a memory descriptor from another host must name. */
export function templateKey(image: GuestImage, accel: Accel, ramMiB: number): string {
  const qemu = qemuBinary() ?? '';
  const st = qemu ? statSync(qemu) : null;
  // The kind of kernel command line and the CPU model too: a template booted with others would clone their behaviour.
  return contentKey(FORMAT, image.key, accel, String(ramMiB), qemu, String(st?.mtimeMs ?? 0), CMDLINE_KIND, cpuModel(accel));
}

function readTemplate(dir: string): Template | null {
  try {
    const t = JSON.parse(readFileSync(join(dir, 'template.json'), 'utf8')) as Template;
    return existsSync(t.ram) && existsSync(t.state) && existsSync(t.descriptor ?? '') ? t : null;
  } catch {
    return null;
  }
}

async function buildTemplate(image: GuestImage, accel: Accel, ramMiB: number, key: string, final: string, nativeDir: string, log?: Logger): Promise<void> {
  const dir = join(settings().templateRoot, `${PREFIX}${key}.build-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const f = vmFiles(dir);
  const ram = join(dir, 'ram');
  const state = join(dir, 'state');
  // On a lifeline: a template whose builder dies is of no use to anyone.
  const spec: VmSpec = { accel, ramMiB, boot: { kernel: image.kernel.vmlinuz, initramfs: image.initramfs, cmdline: kernelCommandLine(nativeDir) }, ram: { path: ram, share: true }, ...f, lifeline: nativeDir };
  let pid = 0;
  try {
    const t0 = performance.now();
    const vm = await bootAndGreet(spec, `the template VM (image ${image.key})`, settings().vmBootTimeoutMs);
    pid = vm.pid;
    log?.info(`template boot (${accel}): ${(performance.now() - t0).toFixed(0)} ms`);
    // No connection may be open into the template when it is frozen: clones would inherit it.
    vm.channel.close();
    const qmp = await Qmp.open(f.qmp, Date.now() + 10_000);
    try {
      await qmp.execute('stop');
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
      await qmp.execute('migrate', { uri: `exec:cat > ${state}` });
      await qmp.migrationDone(Date.now() + 60_000);
    } finally {
      qmp.close();
    }
    killQuietly(pid);
    vm.started.ref();
    await vm.started.exited;
    await describe({ key, dir, ram, state }, nativeDir, log);
    const t: Template = {
      key, dir: final, ram: join(final, 'ram'), state: join(final, 'state'), descriptor: descriptorPath(final), workset: worksetPath(final), ramMiB, accel,
    };
    for (const p of Object.values(f)) rmSync(p, { force: true });
    writeFileSync(join(dir, 'template.json'), JSON.stringify(t, null, 2));
    try {
      renameSync(dir, final);
    } catch {
      // Another job built the same template at the same time: use theirs.
      rmSync(dir, { recursive: true, force: true });
    }
    log?.info(`template ${key} checkpointed: ${(performance.now() - t0).toFixed(0)} ms in all`);
  } catch (e) {
    if (pid) killQuietly(pid);
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
}

/** The template's memory descriptor, then its zero pages given back; logs what each heuristic found. */
async function describe(t: { key: string; dir: string; ram: string; state: string }, nativeDir: string, log?: Logger): Promise<void> {
  const t0 = performance.now();
  const { descriptor: d, punchedBytes } = await buildDescriptor(nativeDir, t, { punch: true });
  const pct = (n: number) => `${((100 * n) / d.pages).toFixed(1)}%`;
  log?.info(
    `template ${t.key}: memory descriptor ${(d.fileBytes / 1024).toFixed(0)} KiB in ${(performance.now() - t0).toFixed(0)} ms; ` +
      `data ${pct(d.dataPages)} of ${d.pages} pages, never touched ${pct(d.holePages)}, zeroed (init_on_free) ${pct(d.zeroedPages)}; ` +
      `${(punchedBytes / 1048576).toFixed(0)} MiB of /dev/shm given back`,
  );
}

/** The cached template for `image`, booting and checkpointing it first when there is none. */
export async function ensureTemplate(image: GuestImage, accel: Accel, nativeDir: string, log?: Logger): Promise<Template> {
  const ramMiB = guestRamMiB(image);
  const key = templateKey(image, accel, ramMiB);
  const final = join(settings().templateRoot, `${PREFIX}${key}`);
  const have = readTemplate(final);
  if (have) {
    markUsed(final);
    return have;
  }
  rmSync(final, { recursive: true, force: true });
  removeStaleBuilds();
  evictTemplates(ramMiB, log ?? logger('vm'));
  // A step of its own: the first job of an image waits for it, tens of seconds under TCG (progress shows it).
  await timed(log ?? logger('vm'), 'template boot', () => buildTemplate(image, accel, ramMiB, key, final, nativeDir, log));
  const t = readTemplate(final);
  if (!t) throw new Error(`template ${final} is incomplete after its build`);
  return t;
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Build directories of processes that died mid-build; their QEMU, if any, goes too. */
function removeStaleBuilds(all = false): string[] {
  const removed: string[] = [];
  for (const name of readdirSync(settings().templateRoot)) {
    const m = new RegExp(`^${PREFIX}[0-9a-f]+\\.build-(\\d+)$`).exec(name);
    if (!m || (!all && alive(Number(m[1])))) continue;
    const dir = join(settings().templateRoot, name);
    killQemuOf(dir);
    rmSync(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}

function killQemuOf(dir: string): void {
  try {
    const pid = Number(readFileSync(vmFiles(dir).pidfile, 'utf8').trim());
    // Only a QEMU whose command line names this directory: the pid may have been reused.
    if (pid > 0 && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(dir)) killQuietly(pid);
  } catch {
    /* no pidfile or no such process */
  }
}

/** A template's directory's mtime says when a job last used it (eviction takes the oldest first). */
function markUsed(dir: string): void {
  try {
    const now = new Date();
    utimesSync(dir, now, now);
  } catch {
    /* removed meanwhile: the next job builds it again */
  }
}

/** At most this many templates are kept: each holds its guest's RAM in tmpfs, that is in memory. */
export const MAX_TEMPLATES = 8;
/** A template used this recently is never evicted: a job may be making clones from it right now. */
const IN_USE_MS = 30 * 60_000;

/**
 * Makes room for a new template of `ramMiB` before it is built. Templates live in tmpfs (RAM), and
 * every new image, QEMU or guest kernel command line gives a new key, so without a bound the cache
 * grows until the host runs out of memory (here: 23 GiB of /dev/shm, then the OOM killer took a
 * template's QEMU). The least recently used go first, until at most MAX_TEMPLATES - 1 remain and the
 * file system has room for the new one twice over; running clones keep their RAM file open, so
 * removing it takes nothing from them.
 */
export function evictTemplates(ramMiB: number, log: Logger): void {
  const root = settings().templateRoot;
  const cached = readdirSync(root)
    .filter((n) => n.startsWith(PREFIX) && !n.includes('.build-'))
    .map((n) => {
      const dir = join(root, n);
      try {
        return { dir, used: statSync(dir).mtimeMs };
      } catch {
        return null;
      }
    })
    .filter((t): t is { dir: string; used: number } => t !== null)
    .sort((a, b) => a.used - b.used);
  const roomMiB = () => {
    const fs = statfsSync(root);
    return (fs.bavail * fs.bsize) / (1 << 20);
  };
  for (const [i, t] of cached.entries()) {
    if (cached.length - i < MAX_TEMPLATES && roomMiB() >= 2 * ramMiB) break;
    if (Date.now() - t.used < IN_USE_MS) continue;
    killQemuOf(t.dir);
    rmSync(t.dir, { recursive: true, force: true });
    log.info(`template cache: removed ${t.dir}, least recently used (at most ${MAX_TEMPLATES} are kept, in memory)`);
  }
}

/** Removes every cached template (and any half-built one); returns the directories removed. */
export function removeTemplates(): string[] {
  const removed = removeStaleBuilds(true);
  for (const name of readdirSync(settings().templateRoot)) {
    if (!name.startsWith(PREFIX) || name.includes('.build-')) continue;
    const dir = join(settings().templateRoot, name);
    rmSync(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}
