/**
 * What one chaos job has on the host right now, scoped to that job alone (other people run
 * snowflock on this host at the same time):
 *
 * - processes: every process whose environment carries the job's marker (SFCHAOS=...). The launcher
 *   passes its environment on to everything it starts, directly or not: holders, QEMU, enter, the
 *   ranks (-genvall), mpirun.openmpi, mpiexec.hydra, the remote-shell shims, orted and Hydra's
 *   proxies inside the clones. So the marker finds them all, whatever records them or not.
 * - network: namespaces, links and the nftables table named after the job's ticket id.
 * - state: anything in the job's own state directory (records, claims, half-written updates, the
 *   ticket's folder).
 * - temporary files: the launcher's /tmp/sfmpirun-ID-*, the vm provider's /tmp/snowflock-vm-ID, Open
 *   MPI's session directory of a host mpirun of the job (/tmp/ompi.HOST.UID/pid.PID).
 * - /dev/shm: entries that name the ticket, or that a process of the job had open or mapped (the
 *   scanner notes those as it goes); cached VM templates (snowflock-tpl-*) are not leftovers.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';

export type Role =
  | 'launcher'
  | 'holder'
  | 'holder-parent'
  | 'enter'
  | 'rank'
  | 'qemu'
  | 'mpirun'
  | 'orted'
  | 'mpiexec'
  | 'proxy'
  | 'shim'
  | 'node'
  | 'other';

export interface Proc {
  pid: number;
  ppid: number;
  /** /proc/PID/stat field 22: with the pid, names one process for good. */
  start: number;
  state: string;
  comm: string;
  cmd: string;
  role: Role;
  /** Its PID namespace ("pid:[4026531836]"): a clone's processes share one. */
  pidns: string;
}

export interface Scene {
  processes: Proc[];
  zombies: Proc[];
  netns: string[];
  links: string[];
  tables: string[];
  state: string[];
  temp: string[];
  shm: string[];
}

const TEMPLATE = /^snowflock-tpl-/;

function read(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

function list(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

function nsOf(pid: number | 'self', kind: string): string {
  try {
    return readlinkSync(`/proc/${pid}/ns/${kind}`);
  } catch {
    return '';
  }
}

/** Everything a scene names, one line each ("process 123 (holder): ...", "link sf1a2b3cv0"). */
export function describeScene(s: Scene): string[] {
  return [
    ...s.processes.map((p) => `process ${p.pid} (${p.role}): ${p.cmd.slice(0, 100)}`),
    ...s.netns.map((n) => `netns ${n}`),
    ...s.links.map((l) => `link ${l}`),
    ...s.tables.map((t) => `nft table ${t}`),
    ...s.state.map((f) => `state ${f}`),
    ...s.temp.map((f) => `temporary ${f}`),
    ...s.shm.map((f) => `/dev/shm ${f}`),
  ];
}

export function isEmpty(s: Scene): boolean {
  return describeScene(s).length === 0;
}

export class JobScanner {
  private readonly needle: Buffer;
  /** PIDs seen without the marker: their environment is never read again. */
  private readonly strangers = new Set<number>();
  /** Every process of the job ever seen, by pid (the last look at it). */
  readonly seen = new Map<number, Proc>();
  /** /dev/shm inodes (of the host's /dev/shm) that processes of the job had open or mapped. */
  private readonly shmInodes = new Set<number>();
  private readonly shmDev: number;
  private readonly hostPidNs = nsOf('self', 'pid');
  ticketId: string | null = null;
  /** Wall-clock time the job started (Date.now()). */
  readonly startedAt = Date.now();

  constructor(
    marker: string,
    private readonly stateDir: string,
    private readonly program: string,
    /** The launcher, once started. */
    public launcherPid = 0,
  ) {
    this.needle = Buffer.from(`SFCHAOS=${marker}\0`);
    this.shmDev = statSync('/dev/shm').dev;
  }

  /** The job's live processes now; zombies apart. Notes /dev/shm files they use. */
  processes(): { live: Proc[]; zombies: Proc[] } {
    const live: Proc[] = [];
    const zombies: Proc[] = [];
    const present = new Set<number>();
    for (const name of list('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      const pid = Number(name);
      present.add(pid);
      if (this.strangers.has(pid)) continue;
      if (!this.seen.has(pid) && !this.hasMarker(pid)) {
        this.strangers.add(pid);
        continue;
      }
      const p = this.look(pid);
      if (!p) continue;
      this.seen.set(pid, p);
      if (p.state === 'Z' || p.state === 'X') zombies.push(p);
      else {
        live.push(p);
        this.noteShm(pid);
      }
    }
    for (const pid of this.strangers) if (!present.has(pid)) this.strangers.delete(pid);
    return { live, zombies };
  }

  /** Everything of the job on the host now. */
  scene(): Scene {
    const { live, zombies } = this.processes();
    const id = this.ticketId;
    const named = (names: string[], prefix: string) => (id ? names.filter((n) => n.startsWith(prefix)) : []);
    return {
      processes: live,
      zombies,
      netns: named(list('/run/netns'), `sf${id}-`),
      links: named(list('/sys/class/net'), `sf${id}`),
      tables: id ? nftTables().filter((t) => t === `inet sf_${id}`) : [],
      state: this.stateLeft(),
      temp: this.tempLeft(),
      shm: this.shmLeft(),
    };
  }

  private hasMarker(pid: number): boolean {
    try {
      const env = readFileSync(`/proc/${pid}/environ`);
      const i = env.indexOf(this.needle);
      return i === 0 || (i > 0 && env[i - 1] === 0);
    } catch {
      return false;
    }
  }

  private look(pid: number): Proc | null {
    const stat = read(`/proc/${pid}/stat`);
    if (!stat) return null;
    const close = stat.lastIndexOf(')');
    const comm = stat.slice(stat.indexOf('(') + 1, close);
    const f = stat.slice(close + 2).split(' ');
    const cmd = (read(`/proc/${pid}/cmdline`) ?? '').replace(/\0/g, ' ').trim();
    const p: Proc = { pid, ppid: Number(f[1]), start: Number(f[19]), state: f[0]!, comm, cmd, role: 'other', pidns: nsOf(pid, 'pid') };
    p.role = this.roleOf(p);
    return p;
  }

  private roleOf(p: Proc): Role {
    if (p.pid === this.launcherPid) return 'launcher';
    let exe = '';
    try {
      exe = readlinkSync(`/proc/${p.pid}/exe`);
    } catch {
      /* a zombie, or gone */
    }
    if (exe === this.program || basename(exe) === basename(this.program)) return 'rank';
    switch (p.comm) {
      case 'holder':
        // A clone's holder is PID 1 of the clone's own PID namespace; the batch's parent is not.
        return p.pidns && p.pidns !== this.hostPidNs ? 'holder' : 'holder-parent';
      case 'enter':
        return 'enter';
      case 'mpirun.openmpi':
      case 'mpirun':
      case 'orterun':
        return 'mpirun';
      case 'orted':
        return 'orted';
      case 'mpiexec.hydra':
      case 'mpiexec':
        return 'mpiexec';
      case 'hydra_pmi_proxy':
        return 'proxy';
    }
    if (p.comm.startsWith('qemu-system')) return 'qemu';
    if (p.comm === 'node' || p.comm.startsWith('node')) return p.cmd.includes('rsh-shim') ? 'shim' : 'node';
    return 'other';
  }

  /** Notes which files of the host's /dev/shm the process has open or mapped. */
  private noteShm(pid: number): void {
    for (const fd of list(`/proc/${pid}/fd`)) {
      try {
        const st = statSync(`/proc/${pid}/fd/${fd}`);
        if (st.dev === this.shmDev) this.shmInodes.add(st.ino);
      } catch {
        /* closed meanwhile */
      }
    }
    const maps = read(`/proc/${pid}/maps`) ?? '';
    for (const line of maps.split('\n')) {
      if (!line.includes(' /dev/shm/')) continue;
      try {
        const st = statSync(`/proc/${pid}/map_files/${line.slice(0, line.indexOf(' '))}`);
        if (st.dev === this.shmDev) this.shmInodes.add(st.ino);
      } catch {
        /* unmapped meanwhile */
      }
    }
  }

  private stateLeft(): string[] {
    const out: string[] = [];
    const walk = (dir: string, rel: string) => {
      for (const name of list(dir)) {
        const path = join(dir, name);
        const r = rel ? `${rel}/${name}` : name;
        let isDir = false;
        try {
          isDir = statSync(path).isDirectory();
        } catch {
          continue;
        }
        if (!isDir) {
          out.push(r);
          continue;
        }
        const before = out.length;
        walk(path, r);
        // The store's own folders, once empty, are not a leftover; any other empty folder is.
        const storeFolder = !rel && (name === 'tickets' || name === 'subnets');
        if (out.length === before && !storeFolder) out.push(`${r}/`);
      }
    };
    walk(this.stateDir, '');
    return out;
  }

  private tempLeft(): string[] {
    const out: string[] = [];
    const id = this.ticketId;
    for (const name of list('/tmp')) {
      if (id && (name.startsWith(`sfmpirun-${id}-`) || name === `snowflock-vm-${id}`)) out.push(`/tmp/${name}`);
      // Open MPI's session directory of a host mpirun of the job.
      if (name.startsWith('ompi.')) {
        for (const sub of list(`/tmp/${name}`)) {
          const m = /^pid\.(\d+)$/.exec(sub);
          const owner = m ? this.seen.get(Number(m[1])) : undefined;
          if (owner && (owner.role === 'mpirun' || owner.role === 'orted') && this.madeSinceStart(`/tmp/${name}/${sub}`)) out.push(`/tmp/${name}/${sub}`);
        }
      }
    }
    return out;
  }

  /** Made after the job started: a PID can be reused, and another job's directory may carry it. */
  private madeSinceStart(path: string): boolean {
    try {
      const st = statSync(path);
      return (st.birthtimeMs || st.ctimeMs) >= this.startedAt - 1000;
    } catch {
      return false;
    }
  }

  private shmLeft(): string[] {
    const out: string[] = [];
    const id = this.ticketId;
    for (const name of list('/dev/shm')) {
      if (TEMPLATE.test(name)) continue;
      if (id && name.includes(id)) {
        out.push(name);
        continue;
      }
      if (this.shmInodes.size === 0) continue;
      try {
        if (this.shmInodes.has(statSync(join('/dev/shm', name)).ino)) out.push(name);
      } catch {
        /* removed meanwhile */
      }
    }
    return out;
  }
}

/** "inet sf_1a2b3c" for every nftables table. */
function nftTables(): string[] {
  const r = spawnSync('nft', ['list', 'tables'], { encoding: 'utf8' });
  return (r.stdout ?? '')
    .split('\n')
    .map((l) => l.trim().replace(/^table /, ''))
    .filter(Boolean);
}

/** The ticket a job's launcher claimed: the one record in its state directory (null before). */
export function ticketIn(stateDir: string): string | null {
  const dir = join(stateDir, 'tickets');
  if (!existsSync(dir)) return null;
  const ids = list(dir).filter((n) => /^[0-9a-f]{6}\.json$/.test(n));
  return ids.length > 0 ? ids[0]!.slice(0, 6) : null;
}

/** The ticket's state record as the launcher last wrote it (null when gone or half-written). */
export function recordIn(stateDir: string, id: string): { resources: Array<Record<string, unknown>>; ticket: { openPorts: number[]; network: { gateway: string } } } | null {
  const text = read(join(stateDir, 'tickets', `${id}.json`));
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
