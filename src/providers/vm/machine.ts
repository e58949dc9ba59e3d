/**
 * One QEMU virtual machine as a process: its command line (one for templates, clones and cold
 * boots, so that a clone's devices match the template's exactly, as migration requires), its files
 * (sockets, console, pidfile), starting it, booting it until the guest agent says HELLO, and what
 * its console says when it fails. KVM where the host has hardware virtualization, TCG otherwise
 * (PVM's /dev/kvm cannot boot a stock guest, so a /dev/kvm without vmx/svm does not count).
 */
import { execFileSync, spawn, type StdioOptions } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { settings } from '../../common/config.js';
import { ProvisionError } from '../../common/errors.js';
import { onLifeline } from '../../common/lifeline.js';
import { hasHardwareVirtualization } from '../../doctor/checks.js';
import { AgentChannel } from './agent/channel.js';
import { ProtocolError } from './agent/protocol.js';

export const QEMU = 'qemu-system-x86_64';

export type Accel = 'kvm' | 'tcg';

export function chooseAccel(): Accel {
  const forced = settings().vmAccel;
  if (forced !== 'auto') return forced;
  return hasHardwareVirtualization() ? 'kvm' : 'tcg';
}

export function qemuBinary(): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const p = join(dir, QEMU);
    if (existsSync(p)) return p;
  }
  return null;
}

export interface VmSpec {
  accel: Accel;
  ramMiB: number;
  /**
   * What to boot: the image's kernel and root file system. Only a boot reads them. QEMU reads both
   * files whole into its own memory at start (14 MB of kernel, and 8-60 MB of initramfs, per
   * process) and hands them to the firmware (fw_cfg), which is not part of the migrated state; a
   * clone's guest booted long ago (in the template), so clones get neither (issue 13: a clone's
   * own memory).
   */
  boot?: { kernel: string; initramfs: string; cmdline: string };
  /** TCG's translation cache (MiB); QEMU's default is 1 GiB, of which a clone touched about 28 MB. */
  tbSizeMiB?: number;
  /** Guest RAM backing file; shared with the file for a template, private copy-on-write for a clone. */
  ram?: { path: string; share: boolean };
  /** Unix sockets QEMU listens on. */
  qmp: string;
  control: string;
  console: string;
  pidfile: string;
  /** QEMU's own stderr goes here (its complaints end up in error messages). */
  stderr: string;
  /** Where native/build/lifeline is: QEMU runs on a lifeline to this process (see common/lifeline.ts). */
  lifeline?: string;
  /** The tap to attach eth0 to; none for a template (its NIC talks to nobody). */
  tap?: string;
  /** Wait for device state (a clone). */
  incoming?: boolean;
  /**
   * An open file QEMU gets as its fd 3 (through the lifeline, which keeps it): the template's
   * device state, loaded with `migrate-incoming fd:3` (see INCOMING_FD). Before, each clone ran
   * `exec:cat FILE`, a shell and a cat per clone.
   */
  incomingFile?: number;
  /** Added to QEMU's environment (memory on demand: the preload shim that keeps huge pages off a memtap file). */
  env?: Record<string, string>;
  /** Prepended inside the lifeline: how QEMU reaches a simulated host's files (src/memory/place.ts). */
  prefix?: string[];
}

// init_on_free=1: memory the guest kernel frees is zero, so a template's memory descriptor skips it
// (native/memory/README.md, "Zero pages are never fetched").
const BASE_CMDLINE = 'console=ttyS0 quiet panic=-1 reboot=t init_on_free=1';

/** What the template key says of the command line (checkpoint.ts): templates of another kind are not reused. */
export const CMDLINE_KIND = 'tsc-rate,init_on_free';

/**
 * The CPU the guest sees: the host's under KVM; under TCG, QEMU's `max` without ERMS. With ERMS
 * the guest kernel and glibc copy and clear memory with `rep movsb`/`rep stosb`, which TCG runs one
 * byte per emulated iteration; without it they use `rep movsq` and vector loops, 8 or more bytes a
 * step. Measured in a TCG clone (issue 13): MPI ping-pong between two VM clones 48 -> 70-81 MiB/s
 * at 1 MiB, 22-25 -> 33-34 MiB/s at 64 KiB; reading 64 MiB over the NFS working directory 1.06 ->
 * 0.86 s; writing 64 MiB to the guest's /tmp 0.60 -> 0.19-0.39 s. Part of the template key: a
 * guest booted on one CPU model must not be resumed on another.
 */
export function cpuModel(accel: Accel): string {
  return accel === 'kvm' ? 'host' : 'max,erms=off';
}

let cmdline: string | null = null;

/**
 * The guest kernel's command line. The guest keeps time on the TSC, told its rate
 * (tsc_early_khz, measured by native/build/tsc-khz: TCG's rdtsc is the host's) and that it can
 * trust it (tsc=reliable). Before, it was told 1 GHz (TSC calibration can hang under TCG) and
 * found no clocksource it trusted, so it fell back to jiffies, which needs the periodic tick: an
 * idle clone took 250 emulated timer interrupts a second, about 60 ms of host CPU per second
 * (issue 13: 32 clones waiting for each other kept both cores busy); on the TSC it runs tickless
 * (about 18 ms). Without a rate (no helper, no constant TSC) it is the old line.
 */
export function kernelCommandLine(nativeDir: string): string {
  if (cmdline) return cmdline;
  let khz = 0;
  try {
    khz = Number(execFileSync(join(nativeDir, 'tsc-khz'), { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] }).trim());
  } catch {
    /* no rate: jiffies */
  }
  cmdline = Number.isInteger(khz) && khz > 0 ? `${BASE_CMDLINE} tsc_early_khz=${khz} tsc=reliable` : `${BASE_CMDLINE} tsc_early_khz=1000000`;
  return cmdline;
}

export function qemuArgs(s: VmSpec): string[] {
  const machine = ['microvm', 'pit=on', 'pic=on', 'rtc=on', ...(s.ram ? ['memory-backend=mem'] : [])].join(',');
  const args = [
    ...(s.accel === 'kvm' ? ['-accel', 'kvm'] : ['-accel', s.tbSizeMiB ? `tcg,tb-size=${s.tbSizeMiB}` : 'tcg']),
    '-cpu', cpuModel(s.accel),
    '-M', machine, '-m', `${s.ramMiB}M`, '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-display', 'none',
    ...(s.boot ? ['-kernel', s.boot.kernel, '-initrd', s.boot.initramfs, '-append', s.boot.cmdline] : []),
    '-serial', `file:${s.console}`,
    '-device', 'virtio-serial-device',
    '-chardev', `socket,id=ctl,path=${s.control},server=on,wait=off`,
    '-device', 'virtserialport,chardev=ctl,name=sf.ctl',
    '-netdev', s.tap ? `tap,id=n0,ifname=${s.tap},script=no,downscript=no` : 'hubport,id=n0,hubid=0',
    '-device', 'virtio-net-device,netdev=n0',
    '-qmp', `unix:${s.qmp},server=on,wait=off`,
    '-pidfile', s.pidfile,
    // A guest that panics or reboots ends QEMU, so a failed boot is seen at once.
    '-no-reboot',
  ];
  if (s.ram) {
    args.push('-object', `memory-backend-file,id=mem,size=${s.ramMiB}M,mem-path=${s.ram.path},share=${s.ram.share ? 'on' : 'off'}`);
  }
  if (s.incoming) args.push('-incoming', 'defer');
  return args;
}

/** The fd number a clone's QEMU has its device state on (VmSpec.incomingFile). */
export const INCOMING_FD = 3;

export interface Started {
  pid: number;
  /** Makes this process keep Node's event loop alive again (while someone waits for its exit). */
  ref(): void;
  /** Resolves with QEMU's exit code and the end of its stderr when it exits. */
  exited: Promise<{ code: number | null; stderr: string }>;
}

/**
 * Starts QEMU in its own process group, detached: a VM of a kept ticket must outlive the process
 * that made it, and its removal belongs to the ticket's record, not to this process. With
 * `lifeline`, it runs on one instead, and dies with this process whatever way this one ends; its
 * PID is then the lifeline's (killing that kills QEMU).
 */
export function startQemu(s: VmSpec): Started {
  const stderrFile = s.stderr;
  const errFd = openSync(stderrFile, 'w');
  const qemu = [...(s.prefix ?? []), qemuBinary() ?? QEMU, ...qemuArgs(s)];
  const argv = s.lifeline ? onLifeline(s.lifeline, qemu) : qemu;
  const stdio: StdioOptions = s.incomingFile === undefined ? ['ignore', 'ignore', errFd] : ['ignore', 'ignore', errFd, s.incomingFile];
  const env = s.env ? { ...process.env, ...s.env } : process.env;
  const child = spawn(argv[0]!, argv.slice(1), { detached: true, stdio, env });
  closeSync(errFd);
  const exited = new Promise<{ code: number | null; stderr: string }>((resolve) => {
    const done = (code: number | null) => {
      let stderr = '';
      try {
        // The template's NIC talks to nobody on purpose: QEMU's warning about it is noise.
        const lines = readFileSync(stderrFile, 'utf8').split('\n').filter((l) => l.trim() && !/warning: hub \d+ is not connected/.test(l));
        stderr = lines.slice(-3).join(' | ');
      } catch {
        /* removed already */
      }
      resolve({ code, stderr });
    };
    child.once('exit', (code) => done(code));
    child.once('error', () => done(null));
  });
  child.unref();
  if (child.pid === undefined) throw new Error(`cannot start ${QEMU}`);
  return { pid: child.pid, exited, ref: () => child.ref() };
}

/** The last lines of a guest's console, for an error message. */
export function consoleTail(file: string, lines = 5): string {
  try {
    const text = readFileSync(file, 'utf8').replace(/\r/g, '').trim();
    return text ? text.split('\n').slice(-lines).join(' / ') : '(the console is empty)';
  } catch {
    return '(no console output)';
  }
}

/** The kernel's panic line on a guest's console, if it panicked (the line that says why). */
export function panicLine(file: string): string | null {
  try {
    const line = readFileSync(file, 'utf8').split('\n').find((l) => l.includes('Kernel panic'));
    return line ? line.replace(/^\[[\s\d.]+\]\s*/, '').replace(/\r/g, '').trim() : null;
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
  label: string,
  timeoutMs: number,
  /** Called as soon as QEMU runs (to record the process before anything else happens). */
  onStart?: (pid: number) => Promise<void>,
): Promise<{ pid: number; channel: AgentChannel; started: Started }> {
  const started = startQemu(spec);
  const deadline = Date.now() + timeoutMs;
  try {
    await onStart?.(started.pid);
    const greeted = (async () => {
      const channel = await AgentChannel.connect(spec.control, label, deadline);
      try {
        await channel.expectHello(deadline);
      } catch (e) {
        channel.close();
        throw e;
      }
      return channel;
    })();
    const died = started.exited.then(({ code, stderr }) => {
      throw new ProvisionError(`QEMU for ${label} exited (code ${code}) before the guest booted: ${stderr || consoleTail(spec.console)}`);
    });
    died.catch(() => undefined); // QEMU exits later, at teardown: not an error then
    greeted.catch(() => undefined); // the race below reports it
    const channel = await Promise.race([greeted, died]);
    return { pid: started.pid, channel, started };
  } catch (e) {
    // A closed channel usually means QEMU is exiting: give it a moment to say so.
    const exit = await Promise.race([started.exited, sleep(300).then(() => null)]);
    killQuietly(started.pid);
    if (e instanceof ProvisionError) throw e;
    // An agent of another protocol version: one line saying so, not a boot timeout.
    if (e instanceof ProtocolError) throw new ProvisionError(e.message);
    const panic = panicLine(spec.console);
    if (exit) {
      throw new ProvisionError(
        `the guest of ${label} stopped before it booted (QEMU exit code ${exit.code}${exit.stderr ? `: ${exit.stderr}` : ''}): ` +
          (panic ?? `last console lines: ${consoleTail(spec.console)}`),
      );
    }
    throw new ProvisionError(
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

