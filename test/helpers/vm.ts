/**
 * VM tests run the real engine (state record, ledger, network, provider, teardown) with a state
 * directory and address pool of their own; these helpers read what a ticket made and find what it
 * left on the host.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Engine } from '../../src/engine.js';
import type { StateRecord } from '../../src/ticket/record.js';

/** The VM tests' own address pool, apart from the netns tests' (SNOWFLOCK_TEST_VM_POOL gives another, on a shared host). */
export const POOL = process.env.SNOWFLOCK_TEST_VM_POOL || '10.241.0.0/16';

export function vmEngine(stateDir: string): Engine {
  return new Engine({ stateDir, pool: POOL });
}

/** The ticket's state record as it is on disk now. */
export function recordOf(stateDir: string, ticketId: string): StateRecord {
  return JSON.parse(readFileSync(join(stateDir, 'tickets', `${ticketId}.json`), 'utf8')) as StateRecord;
}

/** PIDs of the QEMU processes the ticket's record names. */
export function qemuPids(stateDir: string, ticketId: string): number[] {
  return recordOf(stateDir, ticketId).resources.flatMap((r) => (r.kind === 'process' && r.what.startsWith('qemu') ? [r.pid] : []));
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
