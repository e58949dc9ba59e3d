/**
 * What this host has and lacks for snowflock, each with the line that fixes it. The engine calls the
 * required ones before creating anything; `snowflock doctor` runs them all.
 */
import { accessSync, closeSync, constants, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { runCommand } from '../common/command.js';
import { settings } from '../common/config.js';
import { HostError } from '../common/errors.js';
import { isSourceCheckout, projectRoot } from '../common/paths.js';
import { cachedGuestKernel } from '../image/kernel.js';

export interface CheckResult {
  name: string;
  ok: boolean;
  /** What was found (or what is missing). */
  detail: string;
  /** How to fix it; empty when ok. */
  fix: string;
  /** Whether snowflock cannot work at all without it (otherwise only some features are lost). */
  required: boolean;
}

export function findInPath(cmd: string, path = process.env.PATH ?? ''): string | null {
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    const full = join(dir, cmd);
    try {
      accessSync(full, constants.X_OK);
      return full;
    } catch {
      /* not here */
    }
  }
  return null;
}

/** Hardware virtualization that KVM can use (vmx/svm flags, usable /dev/kvm). PVM does not count. */
export function hasHardwareVirtualization(): boolean {
  try {
    const flags = readFileSync('/proc/cpuinfo', 'utf8');
    if (!/^flags\s*:.*\b(vmx|svm)\b/m.test(flags)) return false;
    accessSync('/dev/kvm', constants.R_OK | constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

const isRoot = (): boolean => process.getuid?.() === 0;

/** `snowflock setup` installs every Debian package snowflock drives (setup/packages.txt). */
const viaSetup = (pkg: string): string => `apt-get install ${pkg} (snowflock setup installs all that snowflock drives)`;

function tool(name: string, cmd: string, pkg: string, required: boolean): CheckResult {
  const found = findInPath(cmd);
  return {
    name,
    ok: found !== null,
    detail: found ?? `${cmd} not found in PATH`,
    fix: found ? '' : viaSetup(pkg),
    required,
  };
}

function root(): CheckResult {
  return {
    name: 'root',
    ok: isRoot(),
    detail: isRoot() ? 'running as root' : `running as uid ${process.getuid?.()}`,
    fix: isRoot() ? '' : 'run snowflock as root (sudo): namespaces, bridges and nftables need it',
    required: true,
  };
}

/** ELF e_machine of the architectures Node names (process.arch), for "built for X, this host is Y". */
const ELF_MACHINE: Record<string, number> = { ia32: 3, arm: 40, ppc64: 21, s390x: 22, x64: 62, arm64: 183, riscv64: 243, loong64: 258 };

export interface HelperProblem {
  what: string;
  fix: string;
}

/** The first bytes of a file (enough for an ELF header), or null when it cannot be read. */
function head(path: string, bytes: number): Buffer | null {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return null;
  }
  try {
    const buf = Buffer.alloc(bytes);
    return buf.subarray(0, readSync(fd, buf, 0, bytes, 0));
  } finally {
    closeSync(fd);
  }
}

/**
 * What to do about a helper that is missing or cannot run, which depends on where it comes from: a
 * source checkout builds its own; an installed package carries them prebuilt for x86-64 Linux; a
 * directory the user named is theirs to fill.
 */
function helperFix(nativeDir: string, wrongHost: boolean): string {
  const root = projectRoot();
  const ours = nativeDir === join(root, 'native', 'build');
  if (ours && isSourceCheckout(root)) return 'build them: make -C native (or npm run build)';
  const fromSources = 'build them from a source checkout (make -C native) and set SNOWFLOCK_NATIVE_DIR to its native/build';
  if (!ours) return `build them into ${nativeDir} (make -C native in a source checkout), or point SNOWFLOCK_NATIVE_DIR where they are`;
  if (wrongHost) return `the npm package carries helpers for x86-64 Linux only; ${fromSources}`;
  return `reinstall snowflock (npm install -g snowflock), or ${fromSources}`;
}

/**
 * Why native helper `name` of `nativeDir` cannot run on this host (missing, not a program of this
 * architecture, not executable), with what to do; null when it can. Reads the ELF header instead of
 * running the helper, so that the engine can ask before every ticket.
 */
export function nativeHelperProblem(nativeDir: string, name: string): HelperProblem | null {
  const path = join(nativeDir, name);
  const elf = head(path, 20);
  if (!elf) return { what: `the native helper ${path} is missing`, fix: helperFix(nativeDir, false) };
  const isElf = elf.length === 20 && elf.readUInt32BE(0) === 0x7f454c46;
  const machine = isElf ? (elf[5] === 1 ? elf.readUInt16LE(18) : elf.readUInt16BE(18)) : -1;
  const here = ELF_MACHINE[process.arch];
  if (!isElf || process.platform !== 'linux' || machine !== here) {
    const built = isElf ? `a program for ${Object.keys(ELF_MACHINE).find((a) => ELF_MACHINE[a] === machine) ?? `ELF machine ${machine}`}` : 'not a Linux program';
    return { what: `the native helper ${path} is ${built}, but this host is ${process.platform} ${process.arch}`, fix: helperFix(nativeDir, true) };
  }
  try {
    accessSync(path, constants.X_OK);
  } catch {
    return { what: `the native helper ${path} is not executable (lost its mode, or on a noexec mount)`, fix: `chmod +x it, or ${helperFix(nativeDir, false)}` };
  }
  return null;
}

/** The first problem of these helpers, as one line (what; what to do), or null. */
export function nativeHelpersProblem(nativeDir: string, names: string[]): string | null {
  for (const name of names) {
    const p = nativeHelperProblem(nativeDir, name);
    if (p) return `${p.what}; ${p.fix}`;
  }
  return null;
}

function helpersCheck(name: string, nativeDir: string, helpers: string[], required: boolean): CheckResult {
  const problem = helpers.map((h) => nativeHelperProblem(nativeDir, h)).find((p) => p !== null);
  return {
    name,
    ok: !problem,
    detail: problem ? problem.what : `${helpers.join(', ')} in ${nativeDir}`,
    fix: problem ? problem.fix : '',
    required,
  };
}

/** The helpers every ticket needs on the host: its processes' lifelines and its reaper. */
export const ENGINE_HELPERS = ['lifeline', 'reaper'];
/** The helpers namespace clones need on the host. */
export const NETNS_HELPERS = ['holder', 'enter'];
/** The helper every VM guest image carries (static: guests have no libc of ours). */
export const VM_HELPERS = ['agent'];

const nativeHelpers = (nativeDir: string): CheckResult => helpersCheck('native helpers', nativeDir, [...ENGINE_HELPERS, ...NETNS_HELPERS], true);

/** Whether the guest kernel is already in the cache (VM clones fetch it at first use otherwise). */
function guestKernelCached(): CheckResult {
  const k = cachedGuestKernel();
  const dir = join(settings().cacheDir, 'kernel');
  return {
    name: 'guest kernel',
    ok: k !== null,
    detail: k ? `${k.version} in ${dir}` : `not fetched yet into ${dir} (the first VM job would fetch it)`,
    fix: k ? '' : 'snowflock setup fetches it now',
    required: false,
  };
}

async function commandWorks(name: string, argv: string[], fix: string, required: boolean): Promise<CheckResult> {
  const r = await runCommand(argv[0]!, argv.slice(1), { reject: false, timeout: 10_000 });
  const ok = r.exitCode === 0;
  return { name, ok, detail: ok ? argv.join(' ') + ': ok' : firstLine(r.stderr || (r.timedOut ? "timed out" : String(r.signal ?? r.exitCode))), fix: ok ? '' : fix, required };
}

const firstLine = (text: string): string => text.split('\n')[0] ?? '';

function bridgeSupport(): CheckResult {
  const ok = existsSync('/sys/module/bridge') || existsSync(`/lib/modules/${kernelRelease()}/kernel/net/bridge`);
  return {
    name: 'bridges',
    ok,
    detail: ok ? 'bridge support present' : 'the kernel has no bridge module',
    fix: ok ? '' : 'load it: modprobe bridge (or use a kernel with CONFIG_BRIDGE)',
    required: true,
  };
}

function kernelRelease(): string {
  try {
    return readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  } catch {
    return '';
  }
}

function kvm(): CheckResult {
  const ok = hasHardwareVirtualization();
  return {
    name: 'KVM',
    ok,
    detail: ok ? 'hardware virtualization with /dev/kvm' : 'no usable hardware virtualization (vm clones run under TCG, slower)',
    fix: ok ? '' : 'optional: a host with vmx/svm and /dev/kvm makes vm clones fast',
    required: false,
  };
}

/** Every check, for snowflock doctor. */
export async function runAllChecks(nativeDir: string): Promise<CheckResult[]> {
  const nsWorks = isRoot()
    ? await commandWorks(
        'namespaces',
        ['unshare', '--net', '--uts', '--ipc', '--mount', '--pid', '--fork', 'true'],
        'a kernel with network, UTS, IPC, mount and PID namespaces, and root (not inside a restricted container)',
        true,
      )
    : { name: 'namespaces', ok: false, detail: 'not checked: needs root', fix: 'run as root', required: true };
  const nftWorks =
    isRoot() && findInPath('nft')
      ? await commandWorks('nftables', ['nft', 'list', 'tables'], 'a kernel with nf_tables (modprobe nf_tables)', true)
      : { name: 'nftables', ok: false, detail: 'not checked: needs root and nft', fix: `run as root; ${viaSetup('nftables')}`, required: true };
  return [
    root(),
    tool('ip', 'ip', 'iproute2', true),
    tool('nft', 'nft', 'nftables', true),
    nsWorks,
    nftWorks,
    bridgeSupport(),
    nativeHelpers(nativeDir),
    tool('QEMU', 'qemu-system-x86_64', 'qemu-system-x86', false),
    helpersCheck('guest agent', nativeDir, VM_HELPERS, false),
    guestKernelCached(),
    tool('nfs-ganesha (working directories of VM clones)', 'ganesha.nfsd', 'nfs-ganesha nfs-ganesha-vfs', false),
    kvm(),
    tool('MPICH', 'mpiexec.hydra', 'mpich libmpich-dev', false),
    tool('MPICH compiler', 'mpicc.mpich', 'libmpich-dev', false),
    tool('Open MPI', 'mpirun.openmpi', 'openmpi-bin libopenmpi-dev', false),
  ];
}

/** Fails with one line on the first missing thing the engine cannot start without. */
export function requireEngineHost(): void {
  const checks = [root(), tool('ip', 'ip', 'iproute2', true), tool('nft', 'nft', 'nftables', true)];
  const bad = checks.find((c) => !c.ok);
  if (bad) throw new HostError(bad.name === 'root' ? 'not running as root' : bad.detail, bad.fix);
}

export function requireNativeHelpers(nativeDir: string): void {
  const c = nativeHelpers(nativeDir);
  if (!c.ok) throw new HostError(c.detail, c.fix);
}
