/**
 * Every setting snowflock takes from the environment, in one table: name, default, meaning and how
 * it is checked. Nothing else reads a SNOWFLOCK_* variable. A bad value is one line naming the
 * variable and what it accepts, raised when the settings are first read (before anything exists).
 * The README's table of variables is this table.
 */
import { accessSync, constants } from 'node:fs';
import { join, resolve } from 'node:path';
import { UsageError } from './errors.js';
import { isSourceCheckout, projectRoot } from './paths.js';

/** Each ticket gets one /24; clone i takes host address CLONE_OFFSET + i, so 244 fit. */
export const CLONE_OFFSET = 10;
export const MAX_CLONES_PER_SUBNET = 254 - CLONE_OFFSET;

export interface Settings {
  /** Where state records and subnet claims live. */
  stateDir: string;
  /** IPv4 private range split into one /24 per ticket. */
  pool: string;
  /** Most clones one ticket may ask for. */
  maxClones: number;
  /** Directory of the native helpers (holder, enter, agent, ...). */
  nativeDir: string;
  /** What snowflock builds once and reuses: guest kernel, images, SSH keys. */
  cacheDir: string;
  /** Where VM templates (RAM file and device state) are kept. */
  templateRoot: string;
  vmBootTimeoutMs: number;
  vmReadyTimeoutMs: number;
  vmAccel: 'auto' | 'kvm' | 'tcg';
  /** How VM clones' processes are started: the guest agent or SSH. */
  launchChannel: 'agent' | 'ssh';
  /** A native launcher's daemons must all call back within this. */
  daemonTimeoutMs: number;
  /** A job over hosts: every agent must connect back within this. */
  agentTimeoutMs: number;
  /** A job over hosts: a host silent for this long is lost (the job fails naming it). */
  hostTimeoutMs: number;
  /** Memory on demand: how long a clone's page fault may wait for the memserver before the clone fails. */
  memoryTimeoutMs: number;
  /** Simulated clusters (src/hosts/simulated.ts): their underlay range, Slurm ports and link names. */
  simPool: string;
  simPorts: string;
  simPrefix: string;
  /** Set by sfmpirun for the processes it starts on the host (the remote-shell shim): the job's ticket. */
  ticket: string | undefined;
  /** Whether a ticket takes a network made ahead by this host's warm service (snowflock warm), when one runs. */
  warm: 'auto' | 'off';
}

interface Setting<K extends keyof Settings> {
  key: K;
  name: string;
  default: string;
  meaning: string;
  parse(value: string | undefined): Settings[K];
}

const seconds = (name: string, fallback: number) => (v: string | undefined) => {
  if (v === undefined || v === '') return fallback * 1000;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw bad(name, v, 'a number of seconds above 0');
  return n * 1000;
};

const oneOf =
  <T extends string>(name: string, values: readonly T[], fallback: T) =>
  (v: string | undefined): T => {
    if (v === undefined || v === '') return fallback;
    if (!(values as readonly string[]).includes(v)) throw bad(name, v, `one of ${values.join(', ')}`);
    return v as T;
  };

const path = (fallback: () => string) => (v: string | undefined) => (v ? resolve(v) : fallback());

export const SYSTEM_CACHE_DIR = '/var/cache/snowflock';

/**
 * `.cache` in a source checkout we may write to. An installed package's directory is npm's: often
 * not writable, and replaced (cache and all) by every upgrade, so an install caches where a system
 * keeps caches.
 */
function defaultCacheDir(): string {
  const root = projectRoot();
  if (!isSourceCheckout(root)) return SYSTEM_CACHE_DIR;
  try {
    accessSync(root, constants.W_OK);
    return join(root, '.cache');
  } catch {
    return SYSTEM_CACHE_DIR;
  }
}

function bad(name: string, value: string, accepted: string): UsageError {
  return new UsageError(`${name}=${value} is not valid: it takes ${accepted}; fix or unset it`);
}

/** The table, in the order the README shows it. */
export const SETTINGS: ReadonlyArray<Setting<keyof Settings>> = [
  { key: 'stateDir', name: 'SNOWFLOCK_STATE_DIR', default: '/run/snowflock', meaning: 'where the records of live clusters are kept', parse: path(() => '/run/snowflock') },
  { key: 'pool', name: 'SNOWFLOCK_POOL', default: '10.213.0.0/16', meaning: 'private IPv4 range the ticket subnets (/24 each) are taken from', parse: (v) => v || '10.213.0.0/16' },
  {
    key: 'maxClones',
    name: 'SNOWFLOCK_MAX_CLONES',
    default: String(MAX_CLONES_PER_SUBNET),
    meaning: 'most clones one ticket may have',
    parse: (v) => {
      if (v === undefined || v === '') return MAX_CLONES_PER_SUBNET;
      const n = Number(v);
      if (!Number.isInteger(n) || n < 1 || n > MAX_CLONES_PER_SUBNET) throw bad('SNOWFLOCK_MAX_CLONES', v, `a whole number from 1 to ${MAX_CLONES_PER_SUBNET}`);
      return n;
    },
  },
  { key: 'nativeDir', name: 'SNOWFLOCK_NATIVE_DIR', default: 'native/build', meaning: 'the native helpers (holder, enter, agent)', parse: path(() => join(projectRoot(), 'native', 'build')) },
  {
    key: 'cacheDir',
    name: 'SNOWFLOCK_CACHE',
    default: '.cache',
    meaning: `guest kernel, guest images and SSH keys, built once; \`${SYSTEM_CACHE_DIR}\` for an installed package (or a read-only checkout)`,
    parse: path(defaultCacheDir),
  },
  { key: 'templateRoot', name: 'SNOWFLOCK_TEMPLATE_ROOT', default: '/dev/shm', meaning: "VM templates (frozen RAM and device state); tmpfs keeps clones' page faults cheap", parse: path(() => '/dev/shm') },
  { key: 'vmBootTimeoutMs', name: 'SNOWFLOCK_VM_BOOT_TIMEOUT', default: '120', meaning: 'seconds a VM may take to boot (templates, --cold-boot)', parse: seconds('SNOWFLOCK_VM_BOOT_TIMEOUT', 120) },
  { key: 'vmReadyTimeoutMs', name: 'SNOWFLOCK_VM_READY_TIMEOUT', default: '60', meaning: 'seconds a VM clone may take to become ready', parse: seconds('SNOWFLOCK_VM_READY_TIMEOUT', 60) },
  { key: 'vmAccel', name: 'SNOWFLOCK_VM_ACCEL', default: 'auto', meaning: 'auto (KVM with hardware virtualization, else TCG), kvm or tcg', parse: oneOf('SNOWFLOCK_VM_ACCEL', ['auto', 'kvm', 'tcg'] as const, 'auto') },
  { key: 'launchChannel', name: 'SNOWFLOCK_LAUNCH_CHANNEL', default: 'agent', meaning: "how ranks start in VM clones: the guest agent's channel or ssh", parse: oneOf('SNOWFLOCK_LAUNCH_CHANNEL', ['agent', 'ssh'] as const, 'agent') },
  { key: 'daemonTimeoutMs', name: 'SNOWFLOCK_DAEMON_TIMEOUT', default: '60', meaning: "seconds Open MPI's or Hydra's daemons may take to report (--launch native)", parse: seconds('SNOWFLOCK_DAEMON_TIMEOUT', 60) },
  { key: 'agentTimeoutMs', name: 'SNOWFLOCK_AGENT_TIMEOUT', default: '60', meaning: "seconds the agents of a job over hosts may take to start and connect back (srun, SSH)", parse: seconds('SNOWFLOCK_AGENT_TIMEOUT', 60) },
  { key: 'hostTimeoutMs', name: 'SNOWFLOCK_HOST_TIMEOUT', default: '5', meaning: 'seconds a host of a job over hosts may stay silent before the job fails as having lost it', parse: seconds('SNOWFLOCK_HOST_TIMEOUT', 5) },
  {
    key: 'memoryTimeoutMs',
    name: 'SNOWFLOCK_MEMORY_TIMEOUT',
    default: '5',
    meaning: "seconds a VM clone's page fault may wait for the memserver of another host before the clone and its job fail (memory on demand)",
    parse: seconds('SNOWFLOCK_MEMORY_TIMEOUT', 5),
  },
  { key: 'simPool', name: 'SNOWFLOCK_SIM_POOL', default: '10.234.0.0/16', meaning: 'simulated clusters: the range their underlays (/24 each) are taken from', parse: (v) => v || '10.234.0.0/16' },
  { key: 'simPorts', name: 'SNOWFLOCK_SIM_PORTS', default: '16800-16899', meaning: "simulated clusters: ports for their slurmctld and slurmds (never Slurm's own 6817/6818)", parse: (v) => v || '16800-16899' },
  { key: 'simPrefix', name: 'SNOWFLOCK_SIM_PREFIX', default: 'sfsc', meaning: "simulated clusters: the start of their links' names", parse: (v) => v || 'sfsc' },
  {
    key: 'warm',
    name: 'SNOWFLOCK_WARM',
    default: 'auto',
    meaning: "auto: a job takes one of the networks this host's warm service (snowflock warm) made ahead, when one runs and has one ready; off: every job makes its own",
    parse: oneOf('SNOWFLOCK_WARM', ['auto', 'off'] as const, 'auto'),
  },
  { key: 'ticket', name: 'SNOWFLOCK_TICKET', default: '', meaning: "set by sfmpirun for Open MPI's and Hydra's remote shell: the job's ticket", parse: (v) => v || undefined },
];

let cached: { key: string; settings: Settings } | null = null;

/**
 * The settings of this process's environment, or of another environment. This process's are
 * parsed again only when one of its SNOWFLOCK_* variables changed since: a library user (or a test
 * file) may set one after something else read them, and must not get the old values.
 */
export function settings(env: NodeJS.ProcessEnv = process.env): Settings {
  const key = env === process.env ? SETTINGS.map((s) => env[s.name] ?? '\0').join('\n') : null;
  if (key !== null && cached?.key === key) return cached.settings;
  const out = {} as Record<keyof Settings, unknown>;
  for (const s of SETTINGS) out[s.key] = s.parse(env[s.name]);
  const result = out as unknown as Settings;
  if (key !== null) cached = { key, settings: result };
  return result;
}

/** Forgets what settings() read (for a process that changes its own environment, e.g. tests). */
export function rereadSettings(): void {
  cached = null;
}

/** The engine's part of the settings; explicit options win over the environment. */
export type EngineConfig = Pick<Settings, 'stateDir' | 'pool' | 'maxClones' | 'nativeDir' | 'warm'>;
export type EngineOptions = Partial<EngineConfig>;

export function resolveConfig(opts: EngineOptions = {}, env: NodeJS.ProcessEnv = process.env): EngineConfig {
  const s = settings(env);
  return {
    stateDir: opts.stateDir ?? s.stateDir,
    pool: opts.pool ?? s.pool,
    maxClones: opts.maxClones ?? s.maxClones,
    nativeDir: opts.nativeDir ?? s.nativeDir,
    warm: opts.warm ?? s.warm,
  };
}
