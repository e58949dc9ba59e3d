/**
 * How a snowflock VM is started: one QEMU command line for templates, clones and cold boots, so
 * that a clone's devices match the template's exactly (migration requires it). KVM where the host
 * has hardware virtualization, TCG otherwise (see shared/DESIGN.md: PVM's /dev/kvm cannot boot a
 * stock guest, so a /dev/kvm without vmx/svm does not count).
 */
import { spawn } from 'node:child_process';
import { existsSync, openSync, closeSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { hasHardwareVirtualization } from '../../host/checks.js';

export const QEMU = 'qemu-system-x86_64';

export type Accel = 'kvm' | 'tcg';

export function chooseAccel(): Accel {
  const forced = process.env.SNOWFLOCK_VM_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') return forced;
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
  kernel: string;
  initramfs: string;
  /** Guest RAM backing file; shared with the file for a template, private copy-on-write for a clone. */
  ram?: { path: string; share: boolean };
  /** Unix sockets QEMU listens on. */
  qmp: string;
  control: string;
  console: string;
  pidfile: string;
  /** The tap to attach eth0 to; none for a template (its NIC talks to nobody). */
  tap?: string;
  /** Wait for device state (a clone). */
  incoming?: boolean;
}

const CMDLINE = 'console=ttyS0 tsc_early_khz=1000000 quiet panic=-1 reboot=t';

export function qemuArgs(s: VmSpec): string[] {
  const machine = ['microvm', 'pit=on', 'pic=on', 'rtc=on', ...(s.ram ? ['memory-backend=mem'] : [])].join(',');
  const args = [
    ...(s.accel === 'kvm' ? ['-accel', 'kvm', '-cpu', 'host'] : ['-accel', 'tcg', '-cpu', 'max']),
    '-M', machine, '-m', `${s.ramMiB}M`, '-smp', '1',
    '-nodefaults', '-no-user-config', '-nographic', '-display', 'none',
    '-kernel', s.kernel, '-initrd', s.initramfs, '-append', CMDLINE,
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

export interface Started {
  pid: number;
  /** Makes this process keep Node's event loop alive again (while someone waits for its exit). */
  ref(): void;
  /** Resolves with QEMU's exit code and the end of its stderr when it exits. */
  exited: Promise<{ code: number | null; stderr: string }>;
}

/**
 * Starts QEMU in its own process group, detached: a VM of a kept ticket must outlive the process
 * that made it, and its removal belongs to the ticket's record, not to this process.
 */
export function startQemu(s: VmSpec, stderrFile: string): Started {
  const errFd = openSync(stderrFile, 'w');
  const child = spawn(qemuBinary() ?? QEMU, qemuArgs(s), { detached: true, stdio: ['ignore', 'ignore', errFd] });
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
