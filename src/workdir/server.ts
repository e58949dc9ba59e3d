/**
 * The file server through which a ticket's VM clones mount the job's working directory from their
 * host, read-write: one nfs-ganesha 4.3 process per ticket (Debian's nfs-ganesha and
 * nfs-ganesha-vfs), in user space, NFSv4.1/4.2 over TCP only.
 *
 * Confinement: it listens on the ticket's gateway address only (one port; no rpcbind, no mountd,
 * no NLM, no UDP), exports only the job's directories, and admits only the ticket's clone
 * addresses (its CLIENT list); the ticket's nftables table admits only its own clones to the
 * gateway's open ports and refuses anything else addressed to the gateway (other tickets' clones,
 * other interfaces; src/network/firewall.ts). Nothing of it
 * lives in the host kernel: killing the process leaves no export, mount or kernel state behind.
 *
 * Why ganesha (measured for issue 15): the host kernel here has no NFS server at all (no nfsd,
 * no module loading), and where it has one, its exports and nfsd threads are per network
 * namespace but its module, lockd and the export cache are host-wide; ganesha is one process whose
 * removal is a kill. The guest kernel has NFS, SMB and FUSE clients but no 9p, and virtio-fs needs
 * guest RAM shared with its daemon, which copy-on-write clones do not have.
 *
 * Resources: the server's directory (config, log, pid file, NFSv4 client-recovery records) and
 * the process are recorded before they exist. The process is started behind a gate (a shell
 * waiting for one line on its stdin, then exec'ing ganesha in place), so its pid and start time
 * are recorded before ganesha runs: an owner killed at any moment leaves nothing unrecorded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { isAbsolute, join, resolve, sep } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { HostError, ProvisionError, UsageError } from '../common/errors.js';
import { startTime } from '../common/processes.js';
import type { ResourceLedger } from '../ticket/resources.js';
import { nfsNull } from './probe.js';
import { onLifeline } from '../common/lifeline.js';

/** Where resources are recorded before they are created: the ticket's record (engine.resources(ticket), a provider's ledger). */
export type ResourceRecorder = Pick<ResourceLedger, 'add'>;

export interface WorkdirServerOptions {
  /** Names the server in messages and in its process record (the ticket id). */
  name: string;
  /** The ticket's gateway address: the only address the server listens on. */
  gateway: string;
  /** TCP port on the gateway (default 2049, NFS's own; the gateway address is the ticket's). */
  port?: number;
  /** Addresses allowed to mount (the ticket's clones). */
  clients: string[];
  /** Host directories to export read-write (the job's working directory, -wdir directories). */
  dirs: string[];
  /** A directory of the server's own (created here, recorded first), e.g. in the ticket's state dir. */
  dir: string;
  recorder: ResourceRecorder;
  /** native/build: the server runs on a lifeline to this process (none for a kept ticket's). */
  lifeline?: string;
  /** How long to wait for the server to answer (default 20 s: TCG guests load the host). */
  readyTimeoutMs?: number;
  /** How often the server is asked an NFS NULL call, and how long it may take to answer (default 5 s, 20 s). */
  watchdog?: { intervalMs: number; timeoutMs: number };
}

export interface Export {
  /** The host directory ganesha serves (symlinks resolved). */
  path: string;
  /** The path clones mount it at, and its NFSv4 pseudo path: the directory as the job named it. */
  pseudo: string;
}

export const GANESHA = '/usr/bin/ganesha.nfsd';
const FSAL_DIR = '/usr/lib/x86_64-linux-gnu/ganesha';
export const DEFAULT_PORT = 2049;

/**
 * Directories of the guest's own system, which a mount must not hide: the guest's root, its scratch
 * /tmp, and the directories its programs and libraries are in. A job directory below them is fine;
 * nothing below INSIDE is (pseudo file systems, and /etc with the clone's identity: hosts, passwd).
 * /root is allowed (root's home is a common place to run from); mounted, it hides the guest's
 * authorized_keys, so only the agent channel (the default) reaches such clones, not SSH.
 */
const SYSTEM = ['/', '/bin', '/sbin', '/lib', '/lib64', '/usr', '/usr/bin', '/usr/sbin', '/usr/lib', '/usr/lib64', '/var', '/var/run', '/tmp'];
/** Nothing below these may be mounted over either. */
const INSIDE = ['/proc', '/sys', '/dev', '/run', '/etc'];

function systemDir(path: string): boolean {
  return SYSTEM.includes(path) || INSIDE.some((d) => path === d || path.startsWith(d + sep));
}

/**
 * The directories to export: absolute, existing directories, each once, none inside another
 * (a nested one is reachable through its parent's mount). The guest's own system directories are
 * refused (see SYSTEM): "/" would show the clones the host's whole file system and hide their own.
 * A refusal is a UsageError: it comes from what the job named, before anything exists.
 */
export function exportsFor(dirs: string[]): Export[] {
  const out: Export[] = [];
  for (const d of dirs) {
    const pseudo = resolve(d);
    if (!existsSync(pseudo) || !statSync(pseudo).isDirectory()) throw new UsageError(`${d} is not a directory; give an existing directory to share with VM clones`);
    const path = realpathSync(pseudo);
    if (systemDir(path) || systemDir(pseudo)) {
      throw new UsageError(`cannot share ${pseudo} with VM clones: it would hide the guest's own ${pseudo === '/' ? 'file system' : 'system files'}; run the job from (or give -wdir) a directory of your own, e.g. below /home, /srv or /var/tmp`);
    }
    if (/["\n\r\\]/.test(pseudo) || /["\n\r\\]/.test(path)) throw new UsageError(`cannot share ${JSON.stringify(d)} with VM clones: its path holds a quote, backslash or newline; rename it or run from another directory`);
    out.push({ path, pseudo });
  }
  const inside = (a: string, b: string) => a === b || a.startsWith(b + sep);
  const kept: Export[] = [];
  for (const e of out.sort((a, b) => a.pseudo.length - b.pseudo.length)) {
    if (!kept.some((k) => inside(e.pseudo, k.pseudo) && inside(e.path, k.path))) kept.push(e);
  }
  return kept;
}

/** Refuses (HostError) a host without ganesha and its VFS back end. */
export function requireGanesha(): void {
  if (!existsSync(GANESHA) || !existsSync(join(FSAL_DIR, 'libfsalvfs.so'))) {
    throw new HostError(`${GANESHA} or its VFS back end is missing (VM clones mount their working directory from it)`, 'install the Debian packages nfs-ganesha and nfs-ganesha-vfs (npm run setup does)');
  }
}

/** Files of a server in its directory. */
export function serverFiles(dir: string) {
  return { conf: join(dir, 'ganesha.conf'), log: join(dir, 'ganesha.log'), pid: join(dir, 'ganesha.pid'), recovery: join(dir, 'recovery'), ccache: join(dir, 'ccache') };
}

/**
 * ganesha's configuration for one ticket. Notes on the choices:
 * - Protocols 4 only, no NLM/RQUOTA/UDP: one TCP listener; ganesha then tries to register with a
 *   local rpcbind, finds none, logs it and goes on (NFSv4 clients never ask rpcbind).
 * - Graceless: a fresh server has no clients to recover; the 90 s NFSv4 grace period would make
 *   every OPEN wait.
 * - Attr_Expiration_Time 0: ganesha revalidates attributes on every request instead of caching
 *   them for 60 s, so changes made on the host (or by another host's clones on a shared file
 *   system) are seen by the clones' close-to-open checks.
 * - Squash none: ranks run as root in the guest and write as root, as netns clones do.
 */
export function ganeshaConfig(o: { gateway: string; port: number; clients: string[]; exports: Export[]; dir: string }): string {
  const f = serverFiles(o.dir);
  if (o.clients.length === 0) throw new Error('a file server needs the addresses of the clones it admits');
  const exportsText = o.exports
    .map(
      (e, i) => `EXPORT {
  Export_Id = ${i + 1};
  Path = "${e.path}";
  Pseudo = "${e.pseudo}";
  Protocols = 4;
  Transports = TCP;
  SecType = sys;
  Squash = None;
  Access_Type = None;
  Attr_Expiration_Time = 0;
  CLIENT { Clients = ${o.clients.join(', ')}; Access_Type = RW; }
  FSAL { Name = VFS; }
}
`,
    )
    .join('');
  return `# Written by snowflock for one ticket; removed with it.
NFS_CORE_PARAM {
  Bind_addr = ${o.gateway};
  NFS_Port = ${o.port};
  Protocols = 4;
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
  Clustered = false;
  Plugins_Dir = "${FSAL_DIR}";
}
NFSv4 {
  Graceless = true;
  Minor_Versions = 1, 2;
  Only_Numeric_Owners = true;
  RecoveryBackend = fs;
  RecoveryRoot = "${f.recovery}";
}
NFS_KRB5 {
  Active_krb5 = false;
  CCacheDir = "${f.ccache}";
}
LOG {
  Default_Log_Level = WARN;
}
${exportsText}`;
}

/** What ganesha's log says about why it stopped (its harmless complaints left out), or null. */
function logComplaint(logFile: string): string | null {
  try {
    const noise = /DBUS|Cannot register|krb5|keytab|RADOS|fixing up|gssd|lower_my_caps/;
    const lines = readFileSync(logFile, 'utf8')
      .split('\n')
      .filter((l) => /:(FATAL|CRIT|MAJ|WARN) :/.test(l) && !noise.test(l))
      .map((l) => l.replace(/^.*?\]\s*\S+\s*:\w+\s*:\w+\s*:/, '').trim());
    // The last complaint says what failed; the last system error before it, why (e.g. "error 98 (Address already in use)").
    const last = lines.pop();
    const cause = lines.reverse().find((l) => /error \d+ \(/.test(l));
    return last ? (cause ? `${cause}; ${last}` : last) : null;
  } catch {
    return null;
  }
}

export class WorkdirServer {
  /**
   * Resolves, once, with one line when the clones have lost the server: its process exited, or it
   * stopped answering NFS NULL calls. The launcher fails the job with that line: the guests'
   * NFS clients alone do not fail every call in bounded time (see probe.ts).
   */
  readonly failed: Promise<string>;
  private exited = false;
  private stopping = false;
  private fail!: (line: string) => void;

  private constructor(
    readonly name: string,
    readonly gateway: string,
    readonly port: number,
    readonly exports: Export[],
    readonly dir: string,
    readonly pid: number,
    private readonly child: ChildProcess,
  ) {
    let settled = false;
    this.failed = new Promise((res) => {
      this.fail = (line) => {
        if (!settled) res(line);
        settled = true;
      };
    });
    child.once('exit', (code, signal) => {
      this.exited = true;
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      const why = logComplaint(serverFiles(dir).log);
      this.fail(`${this.label} ${how}${why ? `: ${why}` : ''}; the clones lost the working directory`);
    });
  }

  private get label(): string {
    return `the file server of ticket ${this.name} (nfs-ganesha, pid ${this.pid})`;
  }

  /** Asks the server a NULL call every interval, while it runs; a missing answer fails it. */
  private watch(w: { intervalMs: number; timeoutMs: number }): void {
    const tick = async () => {
      if (this.exited || this.stopping) return;
      try {
        await nfsNull(this.gateway, this.port, w.timeoutMs);
      } catch (e) {
        if (this.exited || this.stopping) return;
        this.fail(`${this.label} stopped answering: ${(e as Error).message}; the clones lost the working directory`);
        return;
      }
      setTimeout(() => void tick(), w.intervalMs).unref();
    };
    setTimeout(() => void tick(), w.intervalMs).unref();
  }

  /** Directories as the clones mount them (see mount.ts). */
  get dirs(): string[] {
    return this.exports.map((e) => e.pseudo);
  }

  get running(): boolean {
    return !this.exited;
  }

  private exitedNow(): Promise<true> {
    return this.exited ? Promise.resolve(true) : new Promise((res) => this.child.once('exit', () => res(true)));
  }

  /** Starts the server and returns once it accepts connections on gateway:port. */
  static async start(o: WorkdirServerOptions): Promise<WorkdirServer> {
    requireGanesha();
    if (!isAbsolute(o.dir)) throw new Error(`the server directory ${o.dir} must be absolute`);
    const port = o.port ?? DEFAULT_PORT;
    const exports = exportsFor(o.dirs);
    const f = serverFiles(o.dir);
    const config = ganeshaConfig({ gateway: o.gateway, port, clients: o.clients, exports, dir: o.dir });

    await o.recorder.add({ kind: 'dir', path: o.dir });
    mkdirSync(f.recovery, { recursive: true });
    mkdirSync(f.ccache, { recursive: true });
    writeFileSync(f.conf, config);

    // The gate: sh reads one line, then becomes ganesha (same pid, same start time). EOF instead
    // (its owner died before recording it) makes sh exit without starting anything.
    const errFd = openSync(f.log, 'a');
    const gate = ['/bin/sh', '-c', 'read -r _ && exec "$0" "$@" </dev/null', GANESHA, '-F', '-f', f.conf, '-L', f.log, '-p', f.pid];
    // On a lifeline, the recorded process is the lifeline's: killing it (teardown) ends ganesha too.
    const argv = o.lifeline ? onLifeline(o.lifeline, gate) : gate;
    const child = spawn(argv[0]!, argv.slice(1), {
      detached: true,
      stdio: ['pipe', errFd, errFd],
    });
    closeSync(errFd);
    child.stdin!.on('error', () => undefined);
    const pid = child.pid;
    const start = pid === undefined ? null : startTime(pid);
    if (pid === undefined || start === null) {
      child.kill('SIGKILL');
      throw new Error(`cannot start the file server of ticket ${o.name}`);
    }
    try {
      await o.recorder.add({ kind: 'process', pid, start, what: `nfs-ganesha ${o.name}` });
    } catch (e) {
      child.kill('SIGKILL');
      throw e;
    }
    child.stdin!.end('go\n');
    // A server that outlives this process (a kept ticket) is removed through its record.
    child.unref();

    const server = new WorkdirServer(o.name, o.gateway, port, exports, o.dir, pid, child);
    await server.waitReady(o.readyTimeoutMs ?? 20_000);
    server.watch(o.watchdog ?? { intervalMs: 5000, timeoutMs: 20_000 });
    return server;
  }

  /** Until the server answers a NULL call (its exports are loaded before it listens). */
  private async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (let delay = 5; ; delay = Math.min(delay * 2, 100)) {
      if (this.exited) {
        const why = logComplaint(serverFiles(this.dir).log);
        rmSync(this.dir, { recursive: true, force: true });
        throw new ProvisionError(
          `the file server of ticket ${this.name} could not start on ${this.gateway}:${this.port}: ${why ?? 'see its log'}` +
            (why?.includes('Address already in use') ? '; another NFS server holds the port on every address (stop it, e.g. the packaged nfs-ganesha service) or give another port' : ''),
        );
      }
      try {
        await nfsNull(this.gateway, this.port, 1000);
        return;
      } catch {
        /* not yet */
      }
      if (Date.now() > deadline) {
        await this.stop();
        throw new ProvisionError(`the file server of ticket ${this.name} did not answer on ${this.gateway}:${this.port} within ${Math.round(timeoutMs / 1000)} s`);
      }
      await sleep(delay);
    }
  }

  /**
   * Stops the server (SIGTERM, then SIGKILL after `graceMs`) and removes its directory. The
   * ticket's teardown does the same from the record (a SIGKILL there), so calling this is optional.
   */
  async stop(graceMs = 2000): Promise<void> {
    this.stopping = true;
    if (!this.exited) {
      this.child.ref();
      try {
        process.kill(this.pid, 'SIGTERM');
      } catch {
        /* gone */
      }
      const killed = await Promise.race([this.exitedNow(), sleep(graceMs).then(() => false)]);
      if (!killed) {
        try {
          process.kill(this.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
        await this.exitedNow();
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}
