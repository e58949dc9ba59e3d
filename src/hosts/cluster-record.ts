/**
 * The state record of a simulated cluster: everything its `up` creates is written here before it is
 * created, so that `down` (or a later `down` after the creator was killed) can remove all of it.
 *
 * Layout under ROOT (= <state dir>/simclusters):
 *   NAME.json     the record (written whole, by rename, so a reader never sees half of one)
 *   index/K       claim of cluster slot K (its subnet and ports); holds NAME
 *   NAME/         the cluster's directory: slurm.conf, munge key and socket, spool and logs
 *
 * Writes are synchronous on purpose: a record write and the creation it announces follow each other
 * without any other work in between.
 */
import { closeSync, mkdirSync, openSync, readFileSync, readdirSync, renameSync, rmdirSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { ProcessIdentity } from '../common/processes.js';

export interface SimHostRecord {
  /** Node name and UTS hostname. */
  name: string;
  /** Underlay address (eth0 inside the host). */
  address: string;
  /** Host side of the host's veth, a port of the cluster's bridge. */
  veth: string;
  /** simhost, the holder that is the init's parent on the machine. */
  holder?: ProcessIdentity;
  /** The host's init (PID 1 of its PID namespace, as the machine sees it): the host's namespaces. */
  init?: ProcessIdentity;
  /** The `enter` process that runs the host's slurmd (slurmd dies with it). */
  slurmd?: ProcessIdentity;
}

export interface SimClusterRecord {
  version: 1;
  name: string;
  state: 'creating' | 'up' | 'removing';
  /** The process that ran `up`. */
  creator: ProcessIdentity;
  createdAt: string;
  /** Cluster slot: picks the subnet and the ports. */
  index: number;
  subnet: string;
  gateway: string;
  prefixLen: number;
  bridge: string;
  ctldPort: number;
  slurmdPort: number;
  controlHost: string;
  partition: string;
  cpusPerHost: number;
  dir: string;
  slurmConf: string;
  mungeSocket: string;
  hosts: SimHostRecord[];
  munged?: ProcessIdentity;
  slurmctld?: ProcessIdentity;
}

/** A record that exists only as a name claim: `up` was killed before it wrote the first full one. */
export interface ClaimOnly {
  version: 1;
  name: string;
  state: 'creating';
  creator: ProcessIdentity;
}

export class ClusterStore {
  constructor(readonly root: string) {}

  recordPath(name: string): string {
    return join(this.root, `${name}.json`);
  }

  clusterDir(name: string): string {
    return join(this.root, name);
  }

  /** Claims NAME (exclusive creation of its record); false if a cluster of that name exists. */
  claimName(name: string, creator: ProcessIdentity): boolean {
    const claim: ClaimOnly = { version: 1, name, state: 'creating', creator };
    let fd: number;
    for (;;) {
      mkdirSync(join(this.root, 'index'), { recursive: true, mode: 0o755 });
      try {
        fd = openSync(this.recordPath(name), 'wx', 0o644);
        break;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EEXIST') return false;
        if (code !== 'ENOENT') throw e; // the last cluster's release removed the directories meanwhile
      }
    }
    try {
      writeSync(fd, JSON.stringify(claim, null, 2) + '\n');
    } finally {
      closeSync(fd);
    }
    return true;
  }

  /** Claims cluster slot K for NAME (exclusive creation); false if it is taken. */
  claimSlot(name: string, k: number): boolean {
    let fd: number;
    for (;;) {
      try {
        fd = openSync(join(this.root, 'index', String(k)), 'wx', 0o644);
        break;
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EEXIST') return false;
        // The last cluster's release removed the empty index meanwhile (see release): make it again.
        if (code !== 'ENOENT') throw e;
        mkdirSync(join(this.root, 'index'), { recursive: true, mode: 0o755 });
      }
    }
    try {
      writeSync(fd, name + '\n');
    } finally {
      closeSync(fd);
    }
    return true;
  }

  write(rec: SimClusterRecord): void {
    const tmp = `${this.recordPath(rec.name)}.tmp-${process.pid}`;
    writeFileSync(tmp, JSON.stringify(rec, null, 2) + '\n');
    renameSync(tmp, this.recordPath(rec.name));
  }

  read(name: string): SimClusterRecord | ClaimOnly | null {
    try {
      return JSON.parse(readFileSync(this.recordPath(name), 'utf8')) as SimClusterRecord | ClaimOnly;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }

  names(): string[] {
    return safeList(this.root).filter((f) => /^[a-z][a-z0-9]*\.json$/.test(f)).map((f) => f.slice(0, -'.json'.length)).sort();
  }

  /**
   * Forgets a cluster whose every resource is gone: its slot claim (found by name when the record is
   * only a name claim: `up` may have claimed a slot before it was killed), the half-written record
   * updates of a writer killed between write and rename, then, last, its record.
   */
  release(name: string, index: number | undefined): void {
    const indexDir = join(this.root, 'index');
    const slots = index !== undefined ? [String(index)] : safeList(indexDir);
    for (const slot of slots) {
      const path = join(indexDir, slot);
      try {
        if (readFileSync(path, 'utf8').trim() === name) rmSync(path);
      } catch {
        /* never claimed, or gone */
      }
    }
    for (const f of safeList(this.root)) if (f.startsWith(`${name}.json.tmp-`)) rmSync(join(this.root, f), { force: true });
    rmSync(this.recordPath(name), { force: true });
    // The last cluster takes the store's directories along: nothing of simulated clusters stays in
    // the state directory once none exists (a concurrent claim keeps them: rmdir of a non-empty
    // directory fails, and claimSlot makes the index again if it lost the race).
    for (const dir of [indexDir, this.root]) {
      try {
        rmdirSync(dir);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') break; // not empty: another cluster's
      }
    }
  }
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

export function isFull(rec: SimClusterRecord | ClaimOnly): rec is SimClusterRecord {
  return 'index' in rec;
}
