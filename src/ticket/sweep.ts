/**
 * What `snowflock cleanup` sweeps besides the tickets themselves: subnet claims that no record owns,
 * and half-written record updates of writers that died mid-write. Both only ever exist after a
 * crash; the record is always created before its claim and removed after it.
 */
import { readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { startTime } from '../common/processes.js';
import type { RecordStore } from './record.js';
import { TICKET_ID } from './ticket.js';

/** Removes subnet claims whose ticket has no record; returns their paths. */
export async function removeOrphanClaims(store: RecordStore, liveHere: Set<string>): Promise<string[]> {
  const names = await readdir(store.claimsDir).catch(() => [] as string[]);
  const records = new Set(await store.ids());
  const removed: string[] = [];
  for (const name of names) {
    const path = join(store.claimsDir, name);
    const owner = (await readFile(path, 'utf8').catch(() => '')).trim();
    if (TICKET_ID.test(owner) && !records.has(owner) && !liveHere.has(owner) && (await store.read(owner)) === null) {
      await rm(path, { force: true });
      removed.push(path);
    }
  }
  return removed;
}

/** Removes half-written updates of writers that are gone; returns their paths. */
export async function removeStaleWrites(store: RecordStore): Promise<string[]> {
  const removed: string[] = [];
  for (const w of await store.pendingWrites()) {
    if (startTime(w.writer) !== null) continue;
    await rm(w.path, { force: true });
    removed.push(w.path);
  }
  return removed;
}
