/**
 * State records: one JSON file per live ticket under <stateDir>/tickets/<id>.json, naming every
 * resource of the ticket before it is created. Creating the file with O_EXCL is how a ticket id is
 * claimed; removing it is the last step of teardown. Updates replace the file atomically (rename).
 */
import { mkdir, open, readdir, readFile, rename, rm, rmdir, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { join } from 'node:path';
import type { CloneInfo } from '../providers/clone.js';
import type { Resource } from './resources.js';
import type { Ticket } from './ticket.js';
import type { ProcessIdentity } from '../common/processes.js';

export interface StateRecord {
  version: 1;
  ticket: Ticket;
  /** The process that created the ticket; when it is gone (and the ticket is not kept), cleanup may remove it. */
  owner: ProcessIdentity;
  createdAt: string;
  /** In order of creation; teardown goes in reverse. */
  resources: Resource[];
  clones: CloneInfo[];
}

export class RecordStore {
  readonly ticketsDir: string;
  readonly claimsDir: string;

  constructor(readonly stateDir: string) {
    this.ticketsDir = join(stateDir, 'tickets');
    this.claimsDir = join(stateDir, 'subnets');
  }

  async init(): Promise<void> {
    await mkdir(this.ticketsDir, { recursive: true, mode: 0o755 });
    await mkdir(this.claimsDir, { recursive: true, mode: 0o755 });
  }

  pathOf(id: string): string {
    return join(this.ticketsDir, `${id}.json`);
  }

  /** Writes a new record; false when a record of that id exists (the id is taken). */
  async createExclusive(record: StateRecord): Promise<boolean> {
    let fh;
    try {
      fh = await openExclusive(this.pathOf(record.ticket.id));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    }
    try {
      await fh.writeFile(JSON.stringify(record, null, 1));
    } finally {
      await fh.close();
    }
    return true;
  }

  /** The name a writer's half-done update has until it is renamed over the record. */
  private tmpPathOf(id: string, pid: number): string {
    return `${this.pathOf(id)}.${pid}.tmp`;
  }

  /** Half-written updates in the store and the PIDs of their writers (for the sweep of dead ones). */
  async pendingWrites(): Promise<Array<{ path: string; writer: number }>> {
    const names = await readdir(this.ticketsDir).catch(() => [] as string[]);
    return names.flatMap((name) => {
      const m = /^[0-9a-f]{6}\.json\.(\d+)\.tmp$/.exec(name);
      return m ? [{ path: join(this.ticketsDir, name), writer: Number(m[1]) }] : [];
    });
  }

  async write(record: StateRecord): Promise<void> {
    const path = this.pathOf(record.ticket.id);
    const tmp = this.tmpPathOf(record.ticket.id, process.pid);
    await writeFile(tmp, JSON.stringify(record, null, 1), { mode: 0o644 });
    await rename(tmp, path);
  }

  async read(id: string): Promise<StateRecord | null> {
    try {
      return JSON.parse(await readFile(this.pathOf(id), 'utf8')) as StateRecord;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return null;
      // A record cut short (the disk filled up, the owner died mid-write) is still ours to clean.
      if (e instanceof SyntaxError) return null;
      throw e;
    }
  }

  async ids(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.ticketsDir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    return names.filter((n) => /^[0-9a-f]{6}\.json$/.test(n)).map((n) => n.slice(0, 6));
  }

  async list(): Promise<StateRecord[]> {
    const records = await Promise.all((await this.ids()).map((id) => this.read(id)));
    return records.filter((r): r is StateRecord => r !== null);
  }

  /** Removes a record; with the last one gone, the store's folders go too, so nothing is left. */
  async remove(id: string): Promise<void> {
    await rm(this.pathOf(id), { force: true });
    await this.pruneEmpty();
  }

  /** Removes the store's folders when they are empty. A creator racing with this recreates them
   * (openExclusive), and rmdir never removes a folder with anything in it. */
  async pruneEmpty(): Promise<void> {
    for (const dir of [this.claimsDir, this.ticketsDir]) {
      await rmdir(dir).catch(() => undefined);
    }
  }
}

/** Creates a file that must not exist yet (O_EXCL), recreating its folder if a concurrent
 * RecordStore.pruneEmpty removed it. */
export async function openExclusive(path: string): Promise<FileHandle> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await open(path, 'wx', 0o644);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 3) throw e;
      await mkdir(dirname(path), { recursive: true, mode: 0o755 });
    }
  }
}
