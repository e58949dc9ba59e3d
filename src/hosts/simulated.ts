/**
 * A simulated cluster: N hosts on this machine, each running a real Debian slurmd under one real
 * slurmctld and munged, for tests and for users without a cluster.
 *
 * A simulated host is what a cluster node is to the programs on it: its own network namespace (eth0
 * on an underlay bridge of the cluster, with an address), hostname, IPC namespace (UCX decides that
 * two ranks share a node by it), PID namespace, and mount namespace with private /run, /tmp and
 * /dev/shm; everything else is the machine's root filesystem, like a cluster's shared filesystem.
 * native/simhost holds each host's namespaces; its init is PID 1 of the host, so killing it ends
 * every process of the host. Processes "run on" a host by joining its namespaces (native/enter):
 * slurmd is started that way, and whatever it launches (srun tasks, batch scripts) is its child.
 *
 * The daemons are long-lived on purpose: `up` returns once `sinfo` shows every node idle, and the
 * cluster stays until `down`. Everything is written to the cluster's record (cluster-record.ts)
 * before it is created; a failing or interrupted `up` removes what it made, and `down` removes a
 * cluster whatever state its creator left it in.
 */
import { spawn } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { hostname, totalmem } from 'node:os';
import { join } from 'node:path';
import { runCommand } from '../common/command.js';
import { projectRoot } from '../common/paths.js';
import { ClusterStore, isFull, type SimClusterRecord, type SimHostRecord } from './cluster-record.js';
import { identify, isRunning, killAll, mentioning, waitGone, withDescendants, type ProcessIdentity } from '../common/processes.js';
import { badArgument, checkName, checkPrerequisites, formatIpv4, HOST_OFFSET, plan, resolveSettings, SimClusterError, type Plan, type SimSettings, type UpOptions } from './sim-settings.js';
import { cgroupConf, hostsFile, resolvConf, slurmConf } from './slurm-config.js';

export type { SimClusterRecord, SimHostRecord } from './cluster-record.js';
export { DEFAULT_NAME, DEFAULT_POOL, DEFAULT_PORTS, DEFAULT_PREFIX, HOST_OFFSET, MAX_HOSTS, resolveSettings, SimClusterError } from './sim-settings.js';
export type { SimSettings, UpOptions } from './sim-settings.js';

/** The processes only a cluster's own `up` starts: `down` sweeps them by the cluster's directory. */
const DAEMONS = ['simhost', 'enter', 'munged', 'slurmctld', 'slurmd'] as const;

/** One cluster as `status` reports it. */
export interface SimClusterStatus {
  name: string;
  state: 'creating' | 'up' | 'removing' | 'broken';
  /** What is wrong when state is broken, or why it is still creating. */
  problems: string[];
  record: SimClusterRecord | null;
}

function storeOf(s: SimSettings): ClusterStore {
  return new ClusterStore(join(s.stateDir, 'simclusters'));
}

// ---------------------------------------------------------------------------------------------
// Up.

/** Whether something accepts TCP connections at address:port. */
function listening(address: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ host: address, port });
    const done = (ok: boolean): void => {
      sock.destroy();
      resolve(ok);
    };
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
    sock.setTimeout(1000, () => done(false));
  });
}

/** Slot k is usable if nothing of someone else's has its bridge name or its slurmctld port. */
async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen({ port, host: '0.0.0.0', exclusive: true }, () => srv.close(() => resolve(true)));
  });
}

function linkExists(name: string): boolean {
  return existsSync(`/sys/class/net/${name}`);
}

function bridgeName(prefix: string, k: number): string {
  return `${prefix}${k}-br`;
}

function vethName(prefix: string, k: number, i: number): string {
  return `${prefix}${k}-h${i}`;
}

/** A directory of the cluster's own. munged insists that every user can traverse to its socket, whatever the umask. */
function mkdirOpen(path: string): void {
  mkdirSync(path, { recursive: true });
  chmodSync(path, 0o755);
}

/** Starts a daemon that outlives us: own session, output to a log file, not waited for. */
function startDaemon(file: string, args: string[], logFile: string, env: NodeJS.ProcessEnv = process.env): ProcessIdentity {
  const out = openSync(logFile, 'a');
  try {
    const child = spawn(file, args, { detached: true, stdio: ['ignore', out, out], env });
    child.unref();
    child.on('error', () => {
      /* reported by the readiness checks, which see it is not running */
    });
    if (child.pid === undefined) throw new SimClusterError(`cannot start ${file}`);
    // Identity as soon as it exists: /proc/PID is there from fork on.
    return identify(child.pid) ?? { pid: child.pid, start: 0 };
  } finally {
    closeSync(out);
  }
}

function tail(file: string, lines = 5): string {
  try {
    return readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join(' | ');
  } catch {
    return '(no log)';
  }
}

async function ipBatch(lines: string[], netnsOf?: number, force = false): Promise<void> {
  const args = [...(force ? ['-force'] : []), '-batch', '-'];
  const r =
    netnsOf === undefined
      ? await runCommand('ip', args, { input: lines.join('\n') + '\n', reject: false })
      : await runCommand('nsenter', [`--net=/proc/${netnsOf}/ns/net`, 'ip', ...args], { input: lines.join('\n') + '\n', reject: false });
  if (r.exitCode !== 0 && !force) throw new Error(`ip -batch failed: ${r.stderr.trim().split('\n').slice(0, 3).join('; ')}`);
}

/** One running `up`: the record it keeps, and whether its teardown has begun. */
class Creation {
  closing = false;
  private removal: Promise<void> | null = null;

  constructor(
    readonly store: ClusterStore,
    readonly rec: SimClusterRecord,
    readonly settings: SimSettings,
    private readonly log: (line: string) => void,
  ) {}

  /** Records a change, unless teardown has begun (then nothing new may be created). */
  record(change: () => void): void {
    if (this.closing) throw new SimClusterError(`simulated cluster ${this.rec.name}: torn down while being created`);
    change();
    this.store.write(this.rec);
  }

  /** Removes everything made so far; once, however many paths (failure, signals) ask. */
  teardown(): Promise<void> {
    this.closing = true;
    return (this.removal ??= removeCluster(this.store, this.rec));
  }

  step(what: string, t0: number): void {
    this.log(`${what} (${Date.now() - t0} ms)`);
  }
}

/**
 * What stays the machine's on every host although it lies where a host has its own /run and /tmp:
 * the cluster's directory, and this checkout, whose programs the hosts run (agents, helpers; a
 * checkout cloned into /tmp would otherwise not exist on them). /dev/shm cannot be kept (simhost).
 */
function keptDirs(clusterDir: string): string[] {
  const root = projectRoot();
  if (!/^\/(tmp|run)\//.test(root)) return [clusterDir];
  return clusterDir.startsWith(root + '/') ? [root] : [clusterDir, root];
}

/** Starts one host's holder and records it; its namespaces exist from here on. */
async function startHost(c: Creation, h: SimHostRecord, hostsPath: string): Promise<void> {
  const simhost = join(c.settings.nativeDir, 'simhost');
  if (c.closing) throw new SimClusterError(`simulated cluster ${c.rec.name}: torn down while being created`);
  const child = spawn(simhost, [...keptDirs(c.rec.dir).flatMap((d) => ['--keep', d]), '--hosts', hostsPath, '--resolv', join(c.rec.dir, 'resolv.conf'), h.name], { detached: true, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  child.once('error', (e) => (err += e.message));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const ready = new Promise<boolean>((resolve) => {
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      if (/\nready\n/.test(out)) resolve(true);
    });
  });
  try {
    if (!(await Promise.race([ready, exited.then(() => false)]))) throw new SimClusterError(`host ${h.name}: ${err.trim() || 'simhost exited during setup'}`);
    const init = identify(Number(out.split('\n')[0]));
    const holder = child.pid !== undefined ? identify(child.pid) : null;
    if (!init || !holder) throw new SimClusterError(`host ${h.name}: its init died during setup`);
    c.record(() => {
      h.init = init;
      h.holder = holder;
    });
  } catch (e) {
    // Not recorded: the holder must not outlive this failure (its init dies with it).
    child.kill('SIGKILL');
    throw e;
  }
  // Until "go", the holder ends the host if we die: its stdin is our lifeline.
  child.stdin.end('go\n');
  child.stdout.destroy();
  child.stderr.destroy();
  child.unref();
}

async function waitFor(what: string, timeoutMs: number, ready: () => Promise<boolean> | boolean, problem: () => string | null): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let delay = 5;
  for (;;) {
    if (await ready()) return;
    const p = problem();
    if (p) throw new SimClusterError(p);
    if (Date.now() >= deadline) throw new SimClusterError(`${what}: not so after ${Math.round(timeoutMs / 1000)} s`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 100);
  }
}

function readTrim(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return '';
  }
}

/**
 * Whether a host's underlay carries frames yet. An administratively up veth does not: the kernel
 * acts on its carrier later (link-watch work), and until then both ends drop what is sent and the
 * bridge port drops what arrives. A slurmd that sends then loses its first ARP request or SYN and
 * retries only after a second (up took 1.1 s instead of 0.1 s about half the time). Both ends must
 * be operationally up and the bridge port forwarding; the host's end is read through its own sysfs
 * (/proc/INIT/root is the host's view of the filesystem).
 */
function forwarding(h: SimHostRecord): boolean {
  return (
    readTrim(`/sys/class/net/${h.veth}/operstate`) === 'up' &&
    readTrim(`/sys/class/net/${h.veth}/brport/state`) === '3' &&
    readTrim(`/proc/${h.init!.pid}/root/sys/class/net/eth0/operstate`) === 'up'
  );
}

/** Node states as sinfo sees them ("idle", "unknown*", ...), by node name. */
export async function nodeStates(rec: Pick<SimClusterRecord, 'slurmConf'>): Promise<Map<string, string>> {
  const r = await runCommand('sinfo', ['-h', '-N', '-o', '%N %T'], { env: { SLURM_CONF: rec.slurmConf }, reject: false, timeout: 10_000 });
  const states = new Map<string, string>();
  if (r.exitCode !== 0) return states;
  for (const line of r.stdout.split('\n')) {
    const [node, state] = line.trim().split(/\s+/);
    if (node && state) states.set(node, state);
  }
  return states;
}

/** What is dead that should run, as one line per problem (empty when all runs). */
function deadParts(rec: SimClusterRecord): string[] {
  const problems: string[] = [];
  if (rec.munged && !isRunning(rec.munged)) problems.push(`munged died: ${tail(join(rec.dir, 'munge', 'munged.log'))}`);
  if (rec.slurmctld && !isRunning(rec.slurmctld)) problems.push(`slurmctld died: ${tail(join(rec.dir, 'ctld', 'slurmctld.log'))}`);
  for (const h of rec.hosts) {
    if (h.init && !isRunning(h.init)) problems.push(`host ${h.name} is gone`);
    else if (h.slurmd && !isRunning(h.slurmd)) problems.push(`slurmd of ${h.name} died: ${tail(join(rec.dir, 'nodes', h.name, 'out'))}`);
  }
  return problems;
}

async function create(c: Creation, p: Plan): Promise<void> {
  const { rec } = c;
  let t = Date.now();
  const env = { ...process.env, SLURM_CONF: rec.slurmConf };

  for (const d of [rec.dir, join(rec.dir, 'munge'), join(rec.dir, 'ctld'), ...rec.hosts.map((h) => join(rec.dir, 'nodes', h.name, 'spool'))]) mkdirOpen(d);
  const keyFile = join(rec.dir, 'munge', 'munge.key');
  await runCommand('mungekey', ['--create', `--keyfile=${keyFile}`]);
  const layout = {
    clusterName: rec.name,
    controlHost: rec.controlHost,
    controlAddress: rec.gateway,
    ctldPort: rec.ctldPort,
    slurmdPort: rec.slurmdPort,
    mungeSocket: rec.mungeSocket,
    dir: rec.dir,
    partition: rec.partition,
    cpusPerHost: rec.cpusPerHost,
    memoryMiB: Math.floor(totalmem() / 2 ** 20),
    slurmdTimeoutS: p.slurmdTimeoutS,
    hosts: rec.hosts,
  };
  // The final slurm.conf before slurmctld starts (it reads it once).
  writeFileSync(join(rec.dir, 'resolv.conf'), resolvConf());
  writeFileSync(rec.slurmConf, slurmConf(layout));
  writeFileSync(join(rec.dir, 'cgroup.conf'), cgroupConf());
  const hostsPath = join(rec.dir, 'hosts');
  writeFileSync(hostsPath, hostsFile(layout));
  c.step('files', t);

  t = Date.now();
  const mungeDir = join(rec.dir, 'munge');
  c.record(() => {
    rec.munged = startDaemon(
      'munged',
      ['-F', '-S', rec.mungeSocket, `--key-file=${keyFile}`, `--log-file=${join(mungeDir, 'munged.log')}`, `--pid-file=${join(mungeDir, 'munged.pid')}`, `--seed-file=${join(mungeDir, 'munged.seed')}`],
      join(mungeDir, 'out'),
    );
  });

  // The underlay: one bridge, the controller's address on it (recorded with the cluster). It
  // snoops IGMP and is the querier (v3: under v2 a host suppresses its report when it hears
  // another member's, and the bridge stops forwarding the group to it), so that a ticket's memory
  // push reaches only the hosts that joined its group, as a switch with snooping does. Until the
  // first response interval (here 0.5 s) has passed the bridge floods every group.
  await ipBatch([
    `link add ${rec.bridge} type bridge mcast_snooping 1 mcast_igmp_version 3 mcast_query_response_interval 50`,
    `link set ${rec.bridge} type bridge mcast_querier 1`,
    `addr add ${rec.gateway}/${rec.prefixLen} dev ${rec.bridge}`,
    `link set ${rec.bridge} up`,
  ]);
  c.step('bridge', t);

  // slurmctld takes a while to listen: it starts now, while the hosts are made.
  t = Date.now();
  await waitFor('munged ready', 10_000, () => existsSync(rec.mungeSocket), () => (c.closing ? 'torn down while being created' : isRunning(rec.munged) ? null : `munged did not start: ${tail(join(mungeDir, 'out'))}`));
  c.record(() => {
    rec.slurmctld = startDaemon('slurmctld', ['-D', '-f', rec.slurmConf], join(rec.dir, 'ctld', 'out'), env);
  });
  c.step('munged', t);

  // Hosts in parallel: holders, then one batch for all veths, then each host's side.
  t = Date.now();
  const started = await Promise.allSettled(rec.hosts.map((h) => startHost(c, h, hostsPath)));
  const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  c.step(`${rec.hosts.length} host namespaces`, t);
  t = Date.now();
  await ipBatch(rec.hosts.flatMap((h) => [`link add ${h.veth} type veth peer name eth0 netns ${h.init!.pid}`, `link set ${h.veth} master ${rec.bridge} up`]));
  await Promise.all(
    rec.hosts.map((h) =>
      ipBatch([`link set lo up`, `addr add ${h.address}/${rec.prefixLen} dev eth0`, `link set eth0 up`, `route add default via ${rec.gateway}`], h.init!.pid),
    ),
  );
  await waitFor('the underlay forwarding', 20_000, () => rec.hosts.every(forwarding), () => (c.closing ? 'torn down while being created' : null));
  c.step('underlay', t);

  // A slurmd that finds slurmctld not yet listening retries its registration only a second later.
  t = Date.now();
  await waitFor(
    'slurmctld listening',
    p.timeoutMs,
    () => listening(rec.gateway, rec.ctldPort),
    () => (c.closing ? 'torn down while being created' : isRunning(rec.slurmctld) ? null : `slurmctld did not start: ${tail(join(rec.dir, 'ctld', 'slurmctld.log'))}`),
  );
  c.step('slurmctld listening', t);
  t = Date.now();
  const enter = join(c.settings.nativeDir, 'enter');
  for (const h of rec.hosts) {
    c.record(() => {
      h.slurmd = startDaemon(enter, ['--start', String(h.init!.start), String(h.init!.pid), '/', '--', 'slurmd', '-D', '-N', h.name, '-f', rec.slurmConf], join(rec.dir, 'nodes', h.name, 'out'), env);
    });
  }
  await waitFor(
    `simulated cluster ${rec.name}: every node idle`,
    p.timeoutMs,
    async () => {
      const states = await nodeStates(rec);
      return rec.hosts.every((h) => states.get(h.name) === 'idle');
    },
    () => (c.closing ? 'torn down while being created' : (deadParts(rec)[0] ?? null)),
  );
  c.step('slurmds, all nodes idle', t);
}

/** Claims the first cluster slot whose bridge name and ports nobody else uses; null if none. */
async function claimSlot(store: ClusterStore, p: Plan): Promise<number | null> {
  const slots = Math.min(p.pool.slots, p.ports.slots);
  // Port checks are asynchronous and the claim is not: find a usable slot first, then claim it
  // (a concurrent up that claimed it meanwhile sends us on to the next).
  for (let k = 0; k < slots; k++) {
    if (existsSync(join(store.root, 'index', String(k)))) continue;
    const usable = !linkExists(bridgeName(p.settings.prefix, k)) && (await portFree(p.ports.low + 2 * k)) && (await portFree(p.ports.low + 2 * k + 1));
    if (usable && store.claimSlot(p.name, k)) return k;
  }
  return null;
}

function recordFor(p: Plan, k: number, dir: string, creator: ProcessIdentity): SimClusterRecord {
  const subnet = p.pool.base + 256 * k;
  return {
    version: 1,
    name: p.name,
    state: 'creating',
    creator,
    createdAt: new Date().toISOString(),
    index: k,
    subnet: `${formatIpv4(subnet)}/24`,
    gateway: formatIpv4(subnet + 1),
    prefixLen: 24,
    bridge: bridgeName(p.prefix, k),
    ctldPort: p.ports.low + 2 * k,
    slurmdPort: p.ports.low + 2 * k + 1,
    controlHost: hostname().split('.')[0]!,
    partition: 'main',
    cpusPerHost: p.cpus,
    dir,
    slurmConf: join(dir, 'slurm.conf'),
    mungeSocket: join(dir, 'munge', 'munge.socket'),
    hosts: Array.from({ length: p.hosts }, (_, i) => ({ name: `${p.name}-${i}`, address: formatIpv4(subnet + HOST_OFFSET + i), veth: vethName(p.prefix, k, i) })),
  };
}

function interruptedBy(name: string, sig: NodeJS.Signals): SimClusterError {
  return new SimClusterError(`simulated cluster ${name}: interrupted by ${sig}; removed what was made`, 'interrupted', sig);
}

/**
 * Starts a simulated cluster of `hosts` hosts and returns its record once every node is idle. On
 * any failure, or SIGINT/SIGTERM/SIGHUP meanwhile, everything made so far is removed first.
 */
export async function up(opts: UpOptions): Promise<SimClusterRecord> {
  const p = plan(opts);
  checkPrerequisites(p.settings);
  const store = storeOf(p.settings);
  const creator = identify(process.pid)!;
  mkdirSync(store.root, { recursive: true, mode: 0o755 });
  if (!store.claimName(p.name, creator)) {
    throw badArgument(`a simulated cluster named ${p.name} exists; remove it with: simcluster down ${p.name} (or pick another --name)`);
  }

  let signal: NodeJS.Signals | null = null;
  let c: Creation | null = null;
  const onSignal = (sig: NodeJS.Signals): void => {
    signal ??= sig;
    // The creation stops at its next step; the removal starts now.
    void c?.teardown().catch(() => {});
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const sig of signals) process.on(sig, onSignal);
  try {
    const k = await claimSlot(store, p);
    if (k === null || signal) {
      store.release(p.name, k ?? undefined);
      if (signal) throw interruptedBy(p.name, signal);
      throw new SimClusterError(`no free slot for another simulated cluster (pool ${p.settings.pool}, ports ${p.settings.ports}); remove one with simcluster down NAME`);
    }
    const rec = recordFor(p, k, store.clusterDir(p.name), creator);
    c = new Creation(store, rec, p.settings, opts.log ?? (() => {}));
    store.write(rec);
    try {
      await create(c, p);
      c.record(() => (rec.state = 'up'));
      return rec;
    } catch (e) {
      await c.teardown();
      if (signal) throw interruptedBy(p.name, signal);
      throw e;
    }
  } finally {
    for (const sig of signals) process.off(sig, onSignal);
  }
}

// ---------------------------------------------------------------------------------------------
// Down.

/** Removes every resource a record names, then the record. Throws if something would not go. */
async function removeCluster(store: ClusterStore, rec: SimClusterRecord): Promise<void> {
  rec.state = 'removing';
  store.write(rec);
  // Hosts first: killing an init ends its whole PID namespace. Alone, not with the `enter` that runs
  // the host's slurmd from outside: while that parent lives it reaps slurmd at once; killed together,
  // slurmd is orphaned to the machine's PID 1, and the dying init waits until that one reaps it (here
  // PID 1 reaps every few seconds: 1.5 s per down). Holders and enters end by themselves once their
  // child is gone; then the daemons on the machine, then whatever of ours was started but not yet
  // recorded when its creator died.
  const inits = rec.hosts.map((h) => h.init);
  killAll(inits);
  await waitGone(inits, 10_000);
  // slurmctld's children (slurmscriptd) go with it: found before it dies and they are orphaned.
  const procs = withDescendants([...rec.hosts.flatMap((h) => [h.init, h.holder, h.slurmd]), rec.slurmctld, rec.munged]);
  killAll(procs);
  const strays = mentioning(rec.dir, DAEMONS);
  killAll(strays);
  const left = await waitGone([...procs, ...strays], 10_000);
  if (left.length > 0) throw new SimClusterError(`simulated cluster ${rec.name}: processes ${left.map((p) => p.pid).join(', ')} survive SIGKILL; run down again`);

  // A host's veth goes with its namespace, shortly after its last process; delete what remains.
  const links = [...rec.hosts.map((h) => h.veth), rec.bridge].filter(linkExists);
  if (links.length > 0) await ipBatch(links.map((l) => `link del ${l}`), undefined, true);
  const deadline = Date.now() + 5000;
  while (rec.hosts.some((h) => linkExists(h.veth)) || linkExists(rec.bridge)) {
    if (Date.now() > deadline) throw new SimClusterError(`simulated cluster ${rec.name}: links ${[rec.bridge, ...rec.hosts.map((h) => h.veth)].filter(linkExists).join(', ')} remain; run down again`);
    await new Promise((r) => setTimeout(r, 10));
  }
  rmSync(rec.dir, { recursive: true, force: true });
  store.release(rec.name, rec.index);
}

export interface DownOptions extends Partial<SimSettings> {}

/** Removes the simulated cluster NAME completely, whatever state its `up` left it in. */
export async function down(name: string, opts: DownOptions = {}): Promise<void> {
  checkName(name);
  const store = storeOf(resolveSettings(opts));
  const rec = store.read(name);
  if (!rec) throw badArgument(`no simulated cluster named ${name} (see simcluster status)`);
  if (!isFull(rec)) {
    // Only a name claim: its `up` died before it created anything but perhaps a slot claim.
    if (isRunning(rec.creator)) throw new SimClusterError(`simulated cluster ${name} is being created right now (by PID ${rec.creator.pid}); try again in a moment`);
    store.release(name, undefined);
    return;
  }
  await removeCluster(store, rec);
}

// ---------------------------------------------------------------------------------------------
// Status and hosts.

/** Every cluster's record (full ones only) under these settings. */
export function list(opts: Partial<SimSettings> = {}): SimClusterRecord[] {
  const store = storeOf(resolveSettings(opts));
  return store
    .names()
    .map((n) => store.read(n))
    .filter((r): r is SimClusterRecord => r !== null && isFull(r));
}

export async function status(name?: string, opts: Partial<SimSettings> = {}): Promise<SimClusterStatus[]> {
  const store = storeOf(resolveSettings(opts));
  const names = name ? [checkName(name)] : store.names();
  const out: SimClusterStatus[] = [];
  for (const n of names) {
    const rec = store.read(n);
    if (!rec) {
      if (name) throw badArgument(`no simulated cluster named ${name} (see simcluster status)`);
      continue;
    }
    if (!isFull(rec)) {
      out.push({ name: n, state: isRunning(rec.creator) ? 'creating' : 'broken', problems: isRunning(rec.creator) ? [] : ['its up died before creating anything; run down'], record: null });
      continue;
    }
    const creating = rec.state !== 'up';
    const dead = creating ? [] : deadParts(rec);
    const problems = [...dead];
    if (!creating && dead.length === 0) {
      const states = await nodeStates(rec);
      for (const h of rec.hosts) if (states.get(h.name) !== 'idle' && states.get(h.name) !== 'allocated' && states.get(h.name) !== 'mixed') problems.push(`node ${h.name} is ${states.get(h.name) ?? 'not known to slurmctld'}`);
    }
    let state: SimClusterStatus['state'] = rec.state;
    if (creating && !isRunning(rec.creator)) {
      state = 'broken';
      problems.push(`its ${rec.state === 'creating' ? 'up' : 'down'} died midway; run down`);
    } else if (dead.length > 0) state = 'broken';
    out.push({ name: n, state, problems, record: rec });
  }
  return out;
}

/** The host named NODE (e.g. sim-1) among the clusters under these settings. */
export function findHost(node: string, opts: Partial<SimSettings> = {}): { cluster: SimClusterRecord; host: SimHostRecord } {
  for (const cluster of list(opts)) {
    const host = cluster.hosts.find((h) => h.name === node);
    if (host) return { cluster, host };
  }
  throw badArgument(`no simulated host named ${node} (see simcluster status)`);
}

/**
 * The command line that runs argv on a host: inside its network, UTS, IPC, PID and mount
 * namespaces, in `cwd` (default /; /tmp, /run and /dev/shm are the host's own there).
 */
export function hostCommand(host: SimHostRecord, argv: string[], opts: { cwd?: string; nativeDir?: string } = {}): { file: string; args: string[] } {
  if (!host.init) throw new SimClusterError(`host ${host.name} has no namespaces yet`);
  if (argv.length === 0) throw badArgument('no command to run on the host');
  const nativeDir = opts.nativeDir ?? resolveSettings().nativeDir;
  return { file: join(nativeDir, 'enter'), args: ['--start', String(host.init.start), String(host.init.pid), opts.cwd ?? '/', '--', ...argv] };
}

// Failures, for tests of what survives them. The cluster stays recorded: down removes the rest.

function hostOf(rec: SimClusterRecord, node: string): SimHostRecord {
  const h = rec.hosts.find((x) => x.name === node);
  if (!h) throw badArgument(`no host ${node} in simulated cluster ${rec.name}`);
  return h;
}

/** A host crashes: every process on it ends at once (its init is killed), its link goes with it. */
export async function crashHost(rec: SimClusterRecord, node: string): Promise<void> {
  const h = hostOf(rec, node);
  killAll([h.init]);
  const left = await waitGone([h.init, h.holder, h.slurmd], 10_000);
  if (left.length > 0) throw new SimClusterError(`host ${node} did not die`);
}

/** A host's network is cut (or restored): its underlay link goes down on the bridge side, as a pulled cable would. */
export async function setHostLink(rec: SimClusterRecord, node: string, up: boolean): Promise<void> {
  const h = hostOf(rec, node);
  await ipBatch([`link set ${h.veth} ${up ? 'up' : 'down'}`]);
}

/** The environment that points Slurm's commands at the cluster. */
export function slurmEnv(rec: SimClusterRecord): { SLURM_CONF: string } {
  return { SLURM_CONF: rec.slurmConf };
}

/** How to use a cluster, as `up` prints it. */
export function usage(rec: SimClusterRecord, program = 'simcluster'): string {
  const n = rec.hosts.length;
  const range = n === 1 ? rec.hosts[0]!.name : `${rec.hosts[0]!.name} ... ${rec.hosts[n - 1]!.name}`;
  return [
    `simulated cluster ${rec.name}: ${n} host${n === 1 ? '' : 's'} (${range}) on ${rec.subnet}, ${rec.cpusPerHost} CPUs each, slurmctld on port ${rec.ctldPort}`,
    `  export SLURM_CONF=${rec.slurmConf}`,
    `  sinfo`,
    `  srun -N ${n} hostname`,
    `  sbatch -N ${n} job.sh            # from a directory outside /tmp: each host has its own /tmp, /run, /dev/shm`,
    `  ${program} exec ${rec.hosts[0]!.name} -- CMD   # run CMD on a host`,
    `  ${program} down ${rec.name}`,
  ].join('\n');
}
