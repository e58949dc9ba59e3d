/**
 * Test tickets for the vm provider, made of the engine's own parts (state record, ledger, subnet
 * claim, bridge and isolation table, generic teardown), so that VM tests do not wait for the whole
 * engine and still exercise the real record-then-create and teardown paths.
 */
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Ledger } from '../src/state/ledger.js';
import { RecordStore, type StateRecord } from '../src/state/record.js';
import { self } from '../src/state/process.js';
import { removeResources } from '../src/state/teardown.js';
import { claimSubnet, createNetwork } from '../src/net/network.js';
import { parsePool } from '../src/net/pool.js';
import type { Ticket } from '../src/types.js';

export const POOL = process.env.SNOWFLOCK_TEST_VM_POOL ?? '10.241.0.0/16';

export interface TestTicket {
  ticket: Ticket;
  ledger: Ledger;
  teardown(): Promise<string[]>;
}

export async function testTicket(stateDir: string, count: number): Promise<TestTicket> {
  const store = new RecordStore(stateDir);
  await store.init();
  const id = randomBytes(3).toString('hex');
  const record: StateRecord = {
    version: 1,
    ticket: {
      id,
      provider: 'vm',
      requested: count,
      granted: count,
      network: { subnet: '', prefixLength: 24, gateway: '', bridge: '', table: '' },
      openPorts: [],
      kept: false,
    },
    owner: self(),
    createdAt: new Date().toISOString(),
    resources: [],
    clones: [],
  };
  if (!(await store.createExclusive(record))) throw new Error('ticket id collision, run again');
  const dir = join(stateDir, 'run', id);
  mkdirSync(dir, { recursive: true });
  const ledger = new Ledger(store, record, dir);
  const teardown = async () => {
    const report = await removeResources(record.resources, { ticketId: id, claimsDir: store.claimsDir });
    // The record goes last, as in the engine, and only when everything it names is gone.
    if (report.failed.length === 0) rmSync(store.pathOf(id), { force: true });
    return report.failed;
  };
  try {
    record.ticket.network = await claimSubnet(parsePool(POOL), store.claimsDir, ledger);
    await createNetwork(record.ticket.network, ledger);
  } catch (e) {
    await teardown();
    throw e;
  }
  return { ticket: record.ticket, ledger, teardown };
}

/** What is left on the host of a ticket: links or QEMU processes naming its id. */
export function leftovers(ticketId: string): string[] {
  const left: string[] = [];
  const links = execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
  for (const line of links.split('\n')) if (line.includes(`sf${ticketId}`)) left.push(line.split(':')[1]!.trim());
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmd.startsWith('qemu-system') || cmd.includes('/qemu-system')) {
        if (cmd.includes(`sf${ticketId}t`)) left.push(`qemu ${pid}`);
      }
    } catch {
      /* exited meanwhile */
    }
  }
  return left;
}

export function exists(p: string): boolean {
  return existsSync(p);
}
