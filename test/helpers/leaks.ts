/**
 * Leak checks for tests: everything on the host that still belongs to the given tickets. Scoped to
 * ticket ids (and one state directory), because other test runs share this host at the same time.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';

/** Removes dir and the directories below it that hold nothing else; leaves any file where it is. */
export function removeEmptyTree(dir: string): void {
  try {
    for (const e of readdirSync(dir, { withFileTypes: true })) if (e.isDirectory()) removeEmptyTree(join(dir, e.name));
    rmdirSync(dir);
  } catch {
    // Not there, or not empty: a file is left, to be seen.
  }
}

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return '';
  }
}

/** Live (non-zombie) processes whose command line mentions one of the needles. */
function processesMentioning(needles: string[]): string[] {
  const found: string[] = [];
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      if (/^\S+ \(.*\) [ZX]/.test(stat)) continue;
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
      if (/\b(holder|qemu-system)/.test(cmd) && needles.some((n) => cmd.includes(n))) found.push(`process ${pid}: ${cmd.slice(0, 120)}`);
    } catch {
      /* gone meanwhile */
    }
  }
  return found;
}

/** What remains of these tickets: namespaces, links, nft tables, holder/QEMU processes, state files. */
export function leftovers(ticketIds: string[], stateDir: string): string[] {
  if (ticketIds.length === 0) return [];
  const found: string[] = [];
  const netns = run('ip', ['netns', 'list']);
  const links = run('ip', ['-o', 'link', 'show']);
  const tables = run('nft', ['list', 'tables']);
  for (const id of ticketIds) {
    for (const l of netns.split('\n')) if (l.startsWith(`sf${id}-`)) found.push(`netns ${l.trim()}`);
    for (const l of links.split('\n')) {
      const name = /^\d+: ([^:@]+)/.exec(l)?.[1];
      if (name?.startsWith(`sf${id}`)) found.push(`link ${name}`);
    }
    for (const l of tables.split('\n')) if (l.trim() === `table inet sf_${id}`) found.push(l.trim());
    if (existsSync(join(stateDir, 'tickets', `${id}.json`))) found.push(`record ${id}.json`);
    if (existsSync(join(stateDir, 'tickets', `${id}.d`))) found.push(`dir ${id}.d`);
    const claims = join(stateDir, 'subnets');
    if (existsSync(claims)) {
      for (const c of readdirSync(claims)) {
        if (readFileSync(join(claims, c), 'utf8').trim() === id) found.push(`subnet claim ${c}`);
      }
    }
  }
  found.push(...processesMentioning(ticketIds.map((id) => `sf${id}`)));
  return found;
}

/**
 * Fails with the list of what is left. Waits up to `graceMs` for things that end asynchronously
 * after a teardown has returned (a holder's supervisor exits once it has reaped its clones).
 */
export async function assertNoLeaks(ticketIds: string[], stateDir: string, graceMs = 3000): Promise<void> {
  const deadline = Date.now() + graceMs;
  let left = leftovers(ticketIds, stateDir);
  while (left.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 50));
    left = leftovers(ticketIds, stateDir);
  }
  expect(left, `left behind by tickets ${ticketIds.join(', ')}`).to.deep.equal([]);
}
