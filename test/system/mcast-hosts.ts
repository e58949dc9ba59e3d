/**
 * Simulated hosts for the multicast tests and benchmark: each a holder process in its own network,
 * mount, UTS and IPC namespaces (its own hostname; clone hosts a private /dev/shm, so they cannot open
 * the template there, while the parent's host sees the machine's), with eth0 on one
 * bridge of the run's own, as machines on one switch: host 0 is the parent's (the sender), the
 * others clone hosts. The bridge snoops IGMP and is the querier, so a group's frames reach only
 * the ports of hosts that joined it (another ticket's hosts never see them); every host has a
 * route for 224.0.0.0/4 on eth0.
 *
 * TSO, GSO and GRO are off on both ends of every veth, so that every frame on the bridge is at most
 * the MTU, as on a real wire.
 *
 * Loss without netem (not in this kernel): an nftables netdev table in a host's namespace drops
 * `numgen random mod 100 < P` of the IP datagrams (UDP and TCP) on eth0's ingress and egress.
 *
 * Lifetime: a holder lives as long as its stdin pipe from this process; the drivers (mcpush,
 * mcrecv) end when their stdin closes. So a test process killed outright takes its hosts, their
 * veths and its drivers with it; what remains (the bridge, the run directory) is named in the
 * run's record, written before anything is created, and sweep() removes the runs of dead owners.
 * Names: sfmc<run id>..., addresses 10.243.<net>.0/24 (a range no other test takes), groups 239.243.<net>.*, ports 46000-46999.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../src/common/paths.js';

/** Read when used, not when loaded: another test file may set the variable after this one loads. */
export const stateRoot = (): string => process.env.SNOWFLOCK_STATE_DIR ?? '/tmp/sfmc-state';
const PREFIX = 'sfmc';
const HOST_OFFSET = 10;

export const nativeDir = (): string => join(projectRoot(), 'native', process.env.SFMC_SANITIZE ? 'build-asan' : 'build');

function sh(cmd: string, args: string[], input?: string): { code: number; out: string; err: string } {
  try {
    const out = execFileSync(cmd, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
    return { code: 0, out, err: '' };
  } catch (e) {
    const x = e as { status?: number; stdout?: string; stderr?: string };
    return { code: x.status ?? 1, out: x.stdout ?? '', err: x.stderr ?? String(e) };
  }
}

function must(cmd: string, args: string[], input?: string): string {
  const r = sh(cmd, args, input);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.err.trim()}`);
  return r.out;
}

const linkExists = (name: string): boolean => existsSync(`/sys/class/net/${name}`);

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

interface RunRecord {
  owner: number;
  bridge: string;
  links: string[];
  holders: number[];
}

/** A driver (mcpush or mcrecv) running on a host. */
export class Driver {
  readonly lines: string[] = [];
  stderr = '';
  result: Record<string, unknown> | null = null;
  readonly exited: Promise<number>;
  private waiters: { match: (l: string) => boolean; resolve: (l: string) => void }[] = [];

  constructor(readonly host: McHost, readonly child: ChildProcess, token: string) {
    child.stdin!.write(`token ${token}\n`);
    child.stdin!.on('error', () => undefined);
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let nl;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        this.lines.push(line);
        if (line.startsWith('result ')) this.result = JSON.parse(line.slice(7)) as Record<string, unknown>;
        for (const w of this.waiters.filter((x) => x.match(line))) w.resolve(line);
        this.waiters = this.waiters.filter((x) => !x.match(line));
      }
    });
    child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((resolve) => child.once('exit', (code, sig) => resolve(code ?? (sig ? 128 : 1))));
  }

  /** Resolves with the first line (already seen or to come) that matches; rejects if the driver exits first. */
  waitLine(match: (l: string) => boolean, what: string): Promise<string> {
    const seen = this.lines.find(match);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      this.waiters.push({ match, resolve });
      void this.exited.then((code) => reject(new Error(`${this.host.name}: exited (${code}) before ${what}: ${this.stderr.trim().slice(-500)}`)));
    });
  }

  ready(): Promise<string> {
    return this.waitLine((l) => l === 'ready', 'ready');
  }

  /** Tells the driver to finish (a sender stops pushing; a receiver gives up). */
  stop(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.stdin!.end('stop\n');
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

export class McHost {
  readonly drivers: Driver[] = [];

  constructor(
    readonly index: number,
    readonly name: string,
    readonly addr: string,
    readonly veth: string,
    readonly holder: ChildProcess,
  ) {}

  get pid(): number {
    return this.holder.pid!;
  }

  get enter(): string[] {
    return ['nsenter', '-t', String(this.pid), '-n', '-m', '-u', '-i', '--'];
  }

  run(argv: string[], token: string): Driver {
    const [cmd, ...pre] = this.enter;
    const child = spawn(cmd!, [...pre, ...argv], { stdio: ['pipe', 'pipe', 'pipe'] });
    const d = new Driver(this, child, token);
    this.drivers.push(d);
    return d;
  }

  sh(script: string): { code: number; out: string; err: string } {
    const [cmd, ...pre] = this.enter;
    return sh(cmd!, [...pre, 'sh', '-c', script]);
  }

  /** Bytes this host put on the wire, and bytes the wire carried to it (its veth's far end). */
  counters(): { sent: number; received: number } {
    const read = (f: string) => Number(readFileSync(`/sys/class/net/${this.veth}/statistics/${f}`, 'utf8'));
    return { sent: read('rx_bytes'), received: read('tx_bytes') };
  }

  /** Drops percent of the IP datagrams in and out of eth0 (nftables, netdev family), or stops. */
  loss(percent: number): void {
    this.sh('nft delete table netdev sfmcloss 2>/dev/null || true');
    if (!percent) return;
    const rule = `ip protocol { udp, tcp } numgen random mod 100 < ${percent} counter drop`;
    const r = this.sh(
      `nft -f - <<'EOF'\ntable netdev sfmcloss {\n chain in { type filter hook ingress device "eth0" priority 0; ${rule}; }\n chain out { type filter hook egress device "eth0" priority 0; ${rule}; }\n}\nEOF`,
    );
    if (r.code !== 0) throw new Error(`${this.name}: nft loss: ${r.err}`);
  }

  /** Datagrams the loss rules dropped so far. */
  dropped(): number {
    const r = this.sh('nft list table netdev sfmcloss 2>/dev/null');
    return [...r.out.matchAll(/packets (\d+)/g)].reduce((a, m) => a + Number(m[1]), 0);
  }

  /** Counts IP packets to group arriving on eth0 (an nftables counter of its own). */
  watchGroup(group: string): () => number {
    const r = this.sh(`nft -f - <<'EOF'\ntable netdev sfmcwatch {\n chain in { type filter hook ingress device "eth0" priority 0; ip daddr ${group} counter; }\n}\nEOF`);
    if (r.code !== 0) throw new Error(`${this.name}: nft watch: ${r.err}`);
    return () => {
      const l = this.sh('nft list table netdev sfmcwatch');
      return Number(/packets (\d+)/.exec(l.out)?.[1] ?? NaN);
    };
  }

  /** The host dies: its drivers are killed and its namespaces (eth0 with them) go. */
  async kill(): Promise<void> {
    for (const d of this.drivers) d.kill();
    await Promise.all(this.drivers.map((d) => d.exited));
    if (this.holder.exitCode === null && this.holder.signalCode === null) {
      const gone = new Promise((r) => this.holder.once('exit', r));
      this.holder.kill('SIGKILL');
      await gone;
    }
  }
}

export class McCluster {
  private constructor(
    readonly id: string,
    readonly dir: string,
    readonly net: number,
    readonly bridge: string,
    readonly hosts: McHost[],
  ) {}

  static async create(n: number): Promise<McCluster> {
    sweep();
    const id = randomBytes(2).toString('hex');
    const dir = join(stateRoot(), `${PREFIX}-${id}`);
    const net = 1 + (parseInt(id, 16) % 250);
    const bridge = `${PREFIX}${id}br`;
    const rec: RunRecord = { owner: process.pid, bridge, links: [], holders: [] };
    mkdirSync(dir, { recursive: true });
    const save = () => writeFileSync(join(dir, 'record.json'), JSON.stringify(rec));
    save();
    const c = new McCluster(id, dir, net, bridge, []);
    try {
      // IGMPv3 queries: under the bridge's default v2 queries, hosts fall back to v2 and suppress their
      // report when they hear another member's, and the bridge then stops forwarding the group to them.
      //
      // Until the querier's first response interval has passed (10 s by default, counted from when the
      // querier is switched on), the bridge floods every group to every port: a short interval first,
      // then the querier, and create() returns only once that time is over.
      must('ip', ['link', 'add', bridge, 'type', 'bridge', 'mcast_snooping', '1', 'mcast_igmp_version', '3', 'mcast_query_response_interval', '50']);
      must('ip', ['link', 'set', bridge, 'type', 'bridge', 'mcast_querier', '1']);
      const querierAt = Date.now();
      must('ip', ['link', 'set', bridge, 'up']);
      for (let i = 0; i < n; i++) {
        const name = `${PREFIX}${id}-${i}`;
        const veth = `${PREFIX}${id}h${i}`;
        rec.links.push(veth);
        save();
        const holder = await startHolder(name, i > 0);
        rec.holders.push(holder.pid!);
        save();
        const h = new McHost(i, name, `10.243.${net}.${HOST_OFFSET + i}`, veth, holder);
        c.hosts.push(h);
        must('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', String(h.pid)]);
        must('ip', ['link', 'set', veth, 'master', bridge, 'up']);
        // No frame above the MTU on the "wire": without this, veths pass TCP's 64 KB TSO segments
        // through the bridge whole, which no real network does, and unicast would look cheap.
        must('ethtool', ['-K', veth, 'tso', 'off', 'gso', 'off', 'gro', 'off']);
        const r = h.sh(
          `ip addr add ${h.addr}/24 dev eth0 && ip link set eth0 up && ip route add 224.0.0.0/4 dev eth0 && ethtool -K eth0 tso off gso off gro off >/dev/null`,
        );
        if (r.code !== 0) throw new Error(`${name}: configuring eth0: ${r.err}`);
      }
      const wait = querierAt + 700 - Date.now();
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      return c;
    } catch (e) {
      await c.destroy();
      throw e;
    }
  }

  /** The ticket k's group, and its port. */
  group(k: number): string {
    return `239.243.${this.net}.${1 + k}`;
  }

  port(k: number): number {
    return 46000 + ((this.net * 3 + k) % 1000);
  }

  async destroy(): Promise<void> {
    for (const h of this.hosts) await h.kill();
    removeRun(this.dir);
  }
}

async function startHolder(name: string, privateShm: boolean): Promise<ChildProcess> {
  const script = [
    'set -e',
    `hostname ${name}`,
    'ip link set lo up',
    // A private /dev/shm, as on a separate machine: a clone host cannot open the template.
    ...(privateShm ? [`mount -t tmpfs -o size=64m,mode=1777 ${PREFIX}-shm /dev/shm`] : []),
    'echo ready',
    'read _ || true',
  ].join('; ');
  const child = spawn('unshare', ['--net', '--mount', '--uts', '--ipc', '--propagation', 'private', '--', 'sh', '-c', script], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let err = '';
  child.stderr!.on('data', (d) => (err += d));
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    child.once('exit', (code) => reject(new Error(`host ${name} did not start (${code}): ${err.trim()}`)));
  });
  return child;
}

/** Removes a run: its holders (and with them namespaces, veths, drivers), its links, its directory. */
function removeRun(dir: string): void {
  let rec: RunRecord | null = null;
  try {
    rec = JSON.parse(readFileSync(join(dir, 'record.json'), 'utf8')) as RunRecord;
  } catch {
    /* no record: nothing was created */
  }
  if (rec) {
    for (const pid of rec.holders) if (alive(pid)) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
    for (const l of [...rec.links, rec.bridge]) if (linkExists(l)) sh('ip', ['link', 'del', l]);
  }
  rmSync(dir, { recursive: true, force: true });
}

/** Removes the runs whose owner died (a test killed outright). */
export function sweep(): void {
  const root = stateRoot();
  if (!existsSync(root)) return;
  for (const d of readdirSync(root).filter((x) => x.startsWith(`${PREFIX}-`))) {
    try {
      const rec = JSON.parse(readFileSync(join(root, d, 'record.json'), 'utf8')) as RunRecord;
      if (!alive(rec.owner)) removeRun(join(root, d));
    } catch {
      /* being written, or not a run of ours */
    }
  }
}

/** What a run left on this machine: links, processes, nftables tables of ours, its directory. */
export function leftovers(c: Pick<McCluster, 'id' | 'dir'>): string[] {
  const left: string[] = [];
  for (const l of must('ip', ['-o', 'link', 'show']).split('\n')) {
    const name = /^\d+: ([^:@]+)/.exec(l)?.[1];
    if (name?.startsWith(`${PREFIX}${c.id}`)) left.push(`link ${name}`);
  }
  for (const pid of readdirSync('/proc').filter((x) => /^\d+$/.test(x))) {
    try {
      if (/^\S+ \(.*\) [ZX]/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'))) continue;
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
      if (cmd.includes(`${PREFIX}${c.id}`) || cmd.includes(c.dir)) left.push(`process ${pid}: ${cmd.slice(0, 140)}`);
    } catch {
      /* gone meanwhile */
    }
  }
  const tables = sh('nft', ['list', 'tables']).out;
  for (const t of tables.split('\n')) if (/\bsfmc/.test(t)) left.push(`nft ${t.trim()}`);
  if (existsSync(c.dir)) left.push(`dir ${c.dir}`);
  return left;
}

export function newToken(): string {
  return randomBytes(32).toString('hex');
}

/** The driver's command line: transport, channel, files. */
export function driverArgs(o: {
  role: 'push' | 'recv';
  transport: 'sfmc' | 'norm' | 'tcp';
  group: string;
  port: number;
  sender: McHost;
  local: McHost;
  geometry: string;
  ws?: string;
  image?: string;
  hosts?: number;
  node?: number;
  rate?: number;
  cc?: boolean;
  normBackoff?: number;
  slowUs?: number;
  demand?: number;
  timeout?: number;
}): string[] {
  const a = [
    join(nativeDir(), o.role === 'push' ? 'mcpush' : 'mcrecv'),
    '--transport', o.transport, '--group', o.group, '--port', String(o.port), '--sender', o.sender.addr,
    '--local', o.local.addr, '--if', 'eth0', '--geometry', o.geometry,
  ];
  if (o.ws) a.push('--ws', o.ws);
  if (o.image) a.push('--image', o.image);
  if (o.hosts !== undefined) a.push('--hosts', String(o.hosts));
  if (o.node !== undefined) a.push('--node', String(o.node));
  if (o.rate !== undefined) a.push('--rate', String(o.rate));
  if (o.cc) a.push('--cc');
  if (o.normBackoff !== undefined) a.push('--norm-backoff', String(o.normBackoff));
  if (o.slowUs) a.push('--slow-us', String(o.slowUs));
  if (o.demand) a.push('--demand', String(o.demand));
  if (o.timeout) a.push('--timeout', String(o.timeout));
  return a;
}
