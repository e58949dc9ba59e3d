/**
 * The guest side of the shared working directory: how a VM clone mounts the job's directories
 * from its host's file server (server.ts). The host runs one small shell script in the guest
 * through the agent channel, as an ordinary process: busybox `mkdir -p` and busybox `mount`,
 * which passes the kernel's text mount options straight to mount(2). No helper (mount.nfs,
 * rpc.statd, rpcbind) is needed in the guest: NFSv4 has none of v3's side protocols.
 *
 * Each directory is mounted at its own host path, so paths mean the same in the clone as on the
 * host (the server exports each directory with its host path as the NFSv4 pseudo path).
 */
import { ProvisionError } from '../common/errors.js';
import type { Clone } from '../providers/clone.js';

/** What the mount needs to know of the server. */
export interface MountTarget {
  /** The server's address: the ticket's gateway. */
  server: string;
  port: number;
  /** Absolute host paths, as exported (see server.ts). */
  dirs: string[];
}

/**
 * How the client behaves when the server stops answering. Hard, by measurement (issue 15): a soft
 * mount (soft,softerr,timeo=100,retrans=3) did not bound the wait either way. With the server
 * SIGSTOPped, I/O in flight and a new open() were still waiting after 150 s; with it SIGKILLed,
 * I/O in flight failed after 33 s but a later open() waited in NFSv4 state recovery for good. And
 * a soft mount turns a passing stall into a write error that a rank may ignore (data lost), where
 * a hard mount waits and resumes (seen after SIGCONT). So the bound comes from the host instead:
 * the launcher watches the server (server.ts: failed, within a second of its death, within about
 * 25 s of it hanging), fails the job with that line, and teardown kills the clones, which ends
 * every guest call still waiting. A hard mount's wait is killable, so a user's command in a kept
 * ticket (snowflock exec) still ends with Ctrl-C.
 */
export interface MountPolicy {
  soft: boolean;
  /** Tenths of a second per RPC try (NFS over TCP: each retry waits this much longer). */
  timeo: number;
  retrans: number;
}

/** The kernel's defaults for NFS over TCP, written out. */
export const DEFAULT_POLICY: MountPolicy = { soft: false, timeo: 600, retrans: 2 };

/**
 * The kernel's NFS mount options. `addr=` is required when mount(2) is called without mount.nfs
 * (which would resolve the host name and add it); vers=4.2 gives sessions (no callback
 * connection from the server to the clone, which the ticket's firewall would not carry anyway).
 */
export function nfsMountOptions(t: Pick<MountTarget, 'server' | 'port'>, policy: MountPolicy = DEFAULT_POLICY): string {
  const recovery = policy.soft ? ['soft', 'softerr'] : ['hard'];
  return ['vers=4.2', 'proto=tcp', `port=${t.port}`, `addr=${t.server}`, ...recovery, `timeo=${policy.timeo}`, `retrans=${policy.retrans}`].join(',');
}

/**
 * The script run in the guest. Arguments are passed as positional parameters, never spliced into
 * the script, so any path is safe. It stops at the first failure and names the directory.
 */
const SCRIPT = [
  'opts=$1; srv=$2; shift 2',
  'for d in "$@"; do',
  '  mkdir -p "$d" || exit 1',
  '  out=$(mount -t nfs4 -o "$opts" "$srv:$d" "$d" 2>&1) || { echo "$d: ${out:-mount failed}" >&2; exit 1; }',
  'done',
].join('\n');

/** argv for the guest: /bin/sh with the script and its parameters. */
export function guestMountArgv(t: MountTarget, policy: MountPolicy = DEFAULT_POLICY): string[] {
  for (const d of t.dirs) if (!d.startsWith('/')) throw new Error(`mount: ${d} is not an absolute path`);
  return ['/bin/sh', '-c', SCRIPT, 'sf-mount', nfsMountOptions(t, policy), t.server, ...t.dirs];
}

const GUEST_ENV = { PATH: '/usr/bin:/bin:/usr/sbin:/sbin' };

/** Mounts the directories in one clone; fails with one line naming the clone and the directory. */
export async function mountInClone(clone: Pick<Clone, 'hostname' | 'spawn'>, t: MountTarget, policy: MountPolicy = DEFAULT_POLICY): Promise<void> {
  // Through the agent, whatever the job's launch channel: it is always there (SSH may not be,
  // when the mount hides the guest's /root/.ssh).
  const p = clone.spawn(guestMountArgv(t, policy), { env: GUEST_ENV, cwd: '/', stdin: 'ignore', channel: 'agent' });
  let err = '';
  p.stdout.resume();
  p.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const s = await p.exited;
  if (s.code === 0) return;
  const why = err.trim().split('\n').pop() || (s.signal ? `killed by ${s.signal}` : `exit code ${s.code}`);
  throw new ProvisionError(`clone ${clone.hostname} cannot mount the working directory from ${t.server}:${t.port}: ${why}`);
}
