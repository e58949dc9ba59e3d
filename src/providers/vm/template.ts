/**
 * The warm template: a VM booted once per guest image until its agent says HELLO, then
 * checkpointed: paused, device state saved with x-ignore-shared (RAM is not copied), RAM left in
 * its backing file under /dev/shm. Clones map that file privately (copy on write) and load the
 * device state. The template's QEMU process is gone once the checkpoint is written; what stays is
 * a directory /dev/shm/snowflock-tpl-<key>/ with the RAM file, the device state and a note.
 * Templates are shared by all jobs and tickets, never part of a ticket's record; they go with
 * `removeTemplates()` (snowflock cleanup --templates).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { contentKey } from '../../image/cache.js';
import type { GuestImage } from '../../image/index.js';
import { UserError } from '../../errors.js';
import type { Logger } from '../../log.js';
import { AgentChannel, Frame } from './agent-client.js';
import { Qmp } from './qmp.js';
import { type Accel, consoleTail, panicLine, qemuBinary, startQemu, type Started, type VmSpec } from './qemu.js';

export const TEMPLATE_ROOT = process.env.SNOWFLOCK_TEMPLATE_ROOT ?? '/dev/shm';
const PREFIX = 'snowflock-tpl-';
/** Bumped when the way templates are made changes. */
const FORMAT = '1';

export interface Template {
  key: string;
  dir: string;
  ram: string;
  state: string;
  ramMiB: number;
  accel: Accel;
}

/** Guest RAM: the initramfs is unpacked into RAM (and held twice while it is), plus room to run. */
export function guestRamMiB(image: GuestImage): number {
  const need = (2 * image.contentBytes) / 1048576 + 192;
  return Math.max(256, Math.ceil(need / 64) * 64);
}

export function bootTimeoutMs(): number {
  return Number(process.env.SNOWFLOCK_VM_BOOT_TIMEOUT ?? 120) * 1000;
}

function templateKey(image: GuestImage, accel: Accel, ramMiB: number): string {
  const qemu = qemuBinary() ?? '';
  const st = qemu ? statSync(qemu) : null;
  return contentKey(FORMAT, image.key, accel, String(ramMiB), qemu, String(st?.mtimeMs ?? 0));
}

function readTemplate(dir: string): Template | null {
  try {
    const t = JSON.parse(readFileSync(join(dir, 'template.json'), 'utf8')) as Template;
    return existsSync(t.ram) && existsSync(t.state) ? t : null;
  } catch {
    return null;
  }
}

/** The files of one VM under `dir` (sockets, console, pidfile). */
export function vmFiles(dir: string) {
  return {
    qmp: join(dir, 'qmp.sock'),
    control: join(dir, 'ctl.sock'),
    console: join(dir, 'console.log'),
    pidfile: join(dir, 'qemu.pid'),
    stderr: join(dir, 'qemu.err'),
  };
}

/**
 * Boots a VM from the image and waits for its agent's HELLO; on failure, says why in one line
 * (QEMU's own complaint, or the guest console's last lines) after stopping the VM.
 */
export async function bootAndGreet(
  spec: VmSpec,
  stderrFile: string,
  label: string,
  timeoutMs: number,
  /** Called as soon as QEMU runs (to record the process before anything else happens). */
  onStart?: (pid: number) => Promise<void>,
): Promise<{ pid: number; channel: AgentChannel; started: Started }> {
  const started = startQemu(spec, stderrFile);
  const deadline = Date.now() + timeoutMs;
  try {
    await onStart?.(started.pid);
    const greeted = (async () => {
      const channel = await AgentChannel.connect(spec.control, label, deadline);
      try {
        await channel.expect(Frame.HELLO, deadline);
      } catch (e) {
        channel.close();
        throw e;
      }
      return channel;
    })();
    const died = started.exited.then(({ code, stderr }) => {
      throw new UserError(`QEMU for ${label} exited (code ${code}) before the guest booted: ${stderr || consoleTail(spec.console)}`);
    });
    died.catch(() => undefined); // QEMU exits later, at teardown: not an error then
    greeted.catch(() => undefined); // the race below reports it
    const channel = await Promise.race([greeted, died]);
    return { pid: started.pid, channel, started };
  } catch (e) {
    // A closed channel usually means QEMU is exiting: give it a moment to say so.
    const exit = await Promise.race([started.exited, sleep(300).then(() => null)]);
    killQuietly(started.pid);
    if (e instanceof UserError) throw e;
    const panic = panicLine(spec.console);
    if (exit) {
      throw new UserError(
        `the guest of ${label} stopped before it booted (QEMU exit code ${exit.code}${exit.stderr ? `: ${exit.stderr}` : ''}): ` +
          (panic ?? `last console lines: ${consoleTail(spec.console)}`),
      );
    }
    throw new UserError(
      `the guest of ${label} did not boot within ${Math.round(timeoutMs / 1000)} s; ${panic ?? `last console lines: ${consoleTail(spec.console)}`}`,
    );
  }
}

export function killQuietly(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone already */
  }
}

async function buildTemplate(image: GuestImage, accel: Accel, ramMiB: number, key: string, final: string, log?: Logger): Promise<void> {
  const dir = join(TEMPLATE_ROOT, `${PREFIX}${key}.build-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const f = vmFiles(dir);
  const ram = join(dir, 'ram');
  const state = join(dir, 'state');
  const spec: VmSpec = { accel, ramMiB, kernel: image.kernel.vmlinuz, initramfs: image.initramfs, ram: { path: ram, share: true }, ...f };
  let pid = 0;
  try {
    const t0 = performance.now();
    const vm = await bootAndGreet(spec, f.stderr, `the template VM (image ${image.key})`, bootTimeoutMs());
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
    const t: Template = { key, dir: final, ram: join(final, 'ram'), state: join(final, 'state'), ramMiB, accel };
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

/** The cached template for `image`, booting and checkpointing it first when there is none. */
export async function ensureTemplate(image: GuestImage, accel: Accel, log?: Logger): Promise<Template> {
  const ramMiB = guestRamMiB(image);
  const key = templateKey(image, accel, ramMiB);
  const final = join(TEMPLATE_ROOT, `${PREFIX}${key}`);
  const have = readTemplate(final);
  if (have) return have;
  rmSync(final, { recursive: true, force: true });
  removeStaleBuilds();
  await buildTemplate(image, accel, ramMiB, key, final, log);
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
  for (const name of readdirSync(TEMPLATE_ROOT)) {
    const m = new RegExp(`^${PREFIX}[0-9a-f]+\\.build-(\\d+)$`).exec(name);
    if (!m || (!all && alive(Number(m[1])))) continue;
    const dir = join(TEMPLATE_ROOT, name);
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

/** Removes every cached template (and any half-built one); returns the directories removed. */
export function removeTemplates(): string[] {
  const removed = removeStaleBuilds(true);
  for (const name of readdirSync(TEMPLATE_ROOT)) {
    if (!name.startsWith(PREFIX) || name.includes('.build-')) continue;
    const dir = join(TEMPLATE_ROOT, name);
    rmSync(dir, { recursive: true, force: true });
    removed.push(dir);
  }
  return removed;
}
