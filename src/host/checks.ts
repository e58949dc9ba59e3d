/**
 * What this host has and lacks for snowflock, each with the line that fixes it. The engine calls the
 * required ones before creating anything; `snowflock doctor` runs them all.
 */
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { execa } from 'execa';
import { HostError } from '../errors.js';

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

function tool(name: string, cmd: string, pkg: string, required: boolean): CheckResult {
  const found = findInPath(cmd);
  return {
    name,
    ok: found !== null,
    detail: found ?? `${cmd} not found in PATH`,
    fix: found ? '' : `apt-get install ${pkg}`,
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

function nativeHelpers(nativeDir: string): CheckResult {
  const missing = ['holder', 'enter'].filter((b) => !existsSync(join(nativeDir, b)));
  return {
    name: 'native helpers',
    ok: missing.length === 0,
    detail: missing.length ? `missing ${missing.map((b) => join(nativeDir, b)).join(', ')}` : nativeDir,
    fix: missing.length ? 'build them: make -C native (or npm run build)' : '',
    required: true,
  };
}

async function commandWorks(name: string, argv: string[], fix: string, required: boolean): Promise<CheckResult> {
  const r = await execa(argv[0]!, argv.slice(1), { reject: false, timeout: 10_000 });
  const ok = r.exitCode === 0;
  return { name, ok, detail: ok ? argv.join(' ') + ': ok' : firstLine(r.stderr || String(r.message ?? r.exitCode)), fix: ok ? '' : fix, required };
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
      : { name: 'nftables', ok: false, detail: 'not checked: needs root and nft', fix: 'run as root; apt-get install nftables', required: true };
  return [
    root(),
    tool('ip', 'ip', 'iproute2', true),
    tool('nft', 'nft', 'nftables', true),
    nsWorks,
    nftWorks,
    bridgeSupport(),
    nativeHelpers(nativeDir),
    tool('QEMU', 'qemu-system-x86_64', 'qemu-system-x86', false),
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
  if (!c.ok) throw new HostError(`native helpers are not built (${c.detail})`, c.fix);
}
