/**
 * What a simulated cluster may be and where it lives: the settings (options, then SNOWFLOCK_*
 * variables, then defaults), the checks of what `up` is asked for, and its prerequisites. All of it
 * runs before anything is created, so that bad input costs one line and leaves nothing behind.
 */
import { accessSync, constants, existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { delimiter, join } from 'node:path';
import { settings } from '../common/config.js';
import { UserError } from '../common/errors.js';
import { signalStatus } from '../common/signals.js';

/**
 * What went wrong with a simulated cluster: a UserError (src/common/errors.ts), one line that says
 * what to do, with simcluster's exit codes. `argument` (2): the caller asked for something invalid
 * and nothing was created; `failure` (1): a prerequisite is missing or the cluster failed;
 * `interrupted` (128+N): signal N stopped `up`, and what it made is removed.
 */
export class SimClusterError extends UserError {
  constructor(
    message: string,
    readonly kind: 'argument' | 'failure' | 'interrupted' = 'failure',
    readonly signal?: NodeJS.Signals,
  ) {
    super(message, kind === 'argument' ? 2 : kind === 'interrupted' && signal ? signalStatus(signal) : 1);
    this.name = 'SimClusterError';
  }
}

export function badArgument(message: string): SimClusterError {
  return new SimClusterError(message, 'argument');
}

export const DEFAULT_NAME = 'sim';
export const DEFAULT_POOL = '10.234.0.0/16';
export const DEFAULT_PORTS = '16800-16899';
export const DEFAULT_PREFIX = 'sfsc';
/** Host i takes the subnet's address HOST_OFFSET + i (as clones do in a ticket's subnet). */
export const HOST_OFFSET = 10;
export const MAX_HOSTS = 254 - HOST_OFFSET;

/** Where simulated clusters live and which names, addresses and ports they may take. */
export interface SimSettings {
  /** snowflock's state directory; clusters go in its simclusters/ (SNOWFLOCK_STATE_DIR). */
  stateDir: string;
  /** IPv4 range split into one /24 underlay per cluster (SNOWFLOCK_SIM_POOL). */
  pool: string;
  /** "LOW-HIGH": cluster slot k takes LOW+2k for slurmctld and LOW+2k+1 for slurmd (SNOWFLOCK_SIM_PORTS). */
  ports: string;
  /** Start of every link name (SNOWFLOCK_SIM_PREFIX). */
  prefix: string;
  /** Directory of native/build (simhost, enter) (SNOWFLOCK_NATIVE_DIR). */
  nativeDir: string;
}

export interface UpOptions extends Partial<SimSettings> {
  hosts: number;
  /** Cluster name: lowercase letters and digits, starting with a letter; hosts are NAME-0 ... */
  name?: string;
  /** CPUs each host offers to Slurm (default: the machine's). */
  cpus?: number;
  /** SlurmdTimeout: how soon a dead host is marked down (default 10 s). */
  slurmdTimeoutS?: number;
  /** How long to wait for every node to be idle (default 60 s). */
  timeoutMs?: number;
  /** Steps with timings, for -v. */
  log?: (line: string) => void;
}

const TOOLS = [
  ['slurmctld', 'slurmctld'],
  ['slurmd', 'slurmd'],
  ['sinfo', 'slurm-client'],
  ['munged', 'munge'],
  ['mungekey', 'munge'],
  ['ip', 'iproute2'],
  ['nsenter', 'util-linux'],
] as const;

/** Options first, then the environment (read and checked in src/common/config.ts). */
export function resolveSettings(opts: Partial<SimSettings> = {}, env: NodeJS.ProcessEnv = process.env): SimSettings {
  const s = settings(env);
  return {
    stateDir: opts.stateDir ?? s.stateDir,
    pool: opts.pool ?? s.simPool,
    ports: opts.ports ?? s.simPorts,
    prefix: opts.prefix ?? s.simPrefix,
    nativeDir: opts.nativeDir ?? s.nativeDir,
  };
}

// ---------------------------------------------------------------------------------------------
// Checking what we were asked, before anything exists.

export interface Plan {
  settings: SimSettings;
  name: string;
  hosts: number;
  cpus: number;
  slurmdTimeoutS: number;
  timeoutMs: number;
  pool: { base: number; slots: number };
  ports: { low: number; slots: number };
  prefix: string;
}

function checkWhole(what: string, v: unknown, min: number, max: number): number {
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
    throw badArgument(`${what} must be a whole number from ${min} to ${max} (got ${JSON.stringify(v)})`);
  }
  return n;
}

export function checkName(name: string): string {
  if (!/^[a-z][a-z0-9]{0,11}$/.test(name)) {
    throw badArgument(`cluster name ${JSON.stringify(name)}: use 1-12 lowercase letters and digits, starting with a letter`);
  }
  return name;
}

export function parseIpv4(s: string): number | null {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(s);
  if (!m) return null;
  const b = m.slice(1).map(Number);
  if (b.some((x) => x > 255)) return null;
  return ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0;
}

export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

function parsePool(pool: string): Plan['pool'] {
  const [addr, len] = pool.split('/');
  const base = addr !== undefined ? parseIpv4(addr) : null;
  const prefix = len !== undefined && /^\d+$/.test(len) ? Number(len) : NaN;
  if (base === null || !(prefix >= 8 && prefix <= 24) || (base & ((2 ** (32 - prefix) - 1) >>> 0)) !== 0) {
    throw badArgument(`pool ${JSON.stringify(pool)} is not an IPv4 network from /8 to /24 (like ${DEFAULT_POOL}); fix SNOWFLOCK_SIM_POOL`);
  }
  return { base, slots: 2 ** (24 - prefix) };
}

function parsePorts(ports: string): Plan['ports'] {
  const m = /^(\d+)-(\d+)$/.exec(ports);
  const low = m ? Number(m[1]) : NaN;
  const high = m ? Number(m[2]) : NaN;
  if (!(low >= 1024 && high <= 65535 && high > low)) {
    throw badArgument(`port range ${JSON.stringify(ports)} is not LOW-HIGH within 1024-65535 (like ${DEFAULT_PORTS}); fix SNOWFLOCK_SIM_PORTS`);
  }
  return { low, slots: Math.floor((high - low + 1) / 2) };
}

function checkPrefix(prefix: string): string {
  // The longest link name is PREFIX + "99-h243": it must fit the kernel's 15 characters.
  if (!/^[a-z][a-z0-9]{0,7}$/.test(prefix) || prefix.length + 7 > 15) {
    throw badArgument(`link prefix ${JSON.stringify(prefix)}: use 1-8 lowercase letters and digits, starting with a letter; fix SNOWFLOCK_SIM_PREFIX`);
  }
  return prefix;
}

function onPath(program: string): boolean {
  for (const dir of (process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin').split(delimiter)) {
    try {
      accessSync(join(dir, program), constants.X_OK);
      return true;
    } catch {
      /* next */
    }
  }
  return false;
}

/** Every prerequisite of `up`, with one line naming what to install or build. */
export function checkPrerequisites(s: SimSettings): void {
  if (process.getuid?.() !== 0) throw new SimClusterError('simulated hosts need root (namespaces, bridges); run as root');
  for (const [program, pkg] of TOOLS) {
    if (!onPath(program)) throw new SimClusterError(`${program} not found: install the Debian package ${pkg} (npm run setup does)`);
  }
  for (const program of ['simhost', 'enter']) {
    if (!existsSync(join(s.nativeDir, program))) throw new SimClusterError(`${join(s.nativeDir, program)} not found: run npm run build`);
  }
}

export function plan(opts: UpOptions): Plan {
  const settings = resolveSettings(opts);
  return {
    settings,
    name: checkName(opts.name ?? DEFAULT_NAME),
    hosts: checkWhole('--hosts', opts.hosts, 1, MAX_HOSTS),
    cpus: checkWhole('--cpus', opts.cpus ?? availableParallelism(), 1, 1024),
    slurmdTimeoutS: checkWhole('slurmd timeout', opts.slurmdTimeoutS ?? 10, 1, 3600),
    timeoutMs: opts.timeoutMs ?? 60_000,
    pool: parsePool(settings.pool),
    ports: parsePorts(settings.ports),
    prefix: checkPrefix(settings.prefix),
  };
}
