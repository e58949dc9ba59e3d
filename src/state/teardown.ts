/**
 * Removing what a state record names, shared by join/kill and by `snowflock cleanup`. Resources go in
 * reverse order of recording; runs of the same kind are removed in one step (one `ip -batch`, one
 * nft call, processes in parallel). Something already gone is fine; a failure to remove something
 * is reported and teardown goes on, so that one stuck item never leaves the rest behind.
 */
import { existsSync, readFileSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { Resource } from '../types.js';
import { ipBatch, nft } from '../net/ip.js';
import { killAndWait } from './process.js';
import { logger } from '../log.js';

const log = logger('teardown');

export interface TeardownReport {
  /** One line per removed resource, e.g. "link sf1a2b3c". */
  removed: string[];
  /** What could not be removed, with why. */
  failed: string[];
}

export interface TeardownContext {
  ticketId: string;
  /** Subnet claim files live here; they are removed only if they still name this ticket. */
  claimsDir: string;
}

export function describe(r: Resource): string {
  switch (r.kind) {
    case 'process':
      return `process ${r.pid} (${r.what})`;
    case 'netns':
      return `netns ${r.name}`;
    case 'link':
      return `link ${r.name}`;
    case 'nft-table':
      return `nft table ${r.family} ${r.name}`;
    case 'file':
      return `file ${r.path}`;
    case 'dir':
      return `dir ${r.path}`;
  }
}

export async function removeResources(resources: readonly Resource[], ctx: TeardownContext): Promise<TeardownReport> {
  const report: TeardownReport = { removed: [], failed: [] };
  const reversed = [...resources].reverse();
  for (let i = 0; i < reversed.length; ) {
    let j = i;
    while (j < reversed.length && reversed[j]!.kind === reversed[i]!.kind) j++;
    const t0 = performance.now();
    await removeRun(reversed.slice(i, j), ctx, report);
    log.debug(`removed ${j - i} ${reversed[i]!.kind}: ${(performance.now() - t0).toFixed(1)} ms`);
    i = j;
  }
  return report;
}

async function removeRun(run: Resource[], ctx: TeardownContext, report: TeardownReport): Promise<void> {
  const kind = run[0]!.kind;
  if (kind === 'link') run = await linksToDelete(run as Array<Extract<Resource, { kind: 'link' }>>, report);
  if (kind === 'link' || kind === 'netns') {
    const lines = run.map((r) => (r.kind === 'link' ? `link del ${r.name}` : `netns delete ${(r as { name: string }).name}`));
    const failures = batchFailures(await ipBatch(lines, { force: true }));
    run.forEach((r, i) => {
      const why = failures.get(i + 1);
      if (why === undefined) report.removed.push(describe(r));
      // Already gone is not a failure (a veth goes with its namespace).
      else if (!/Cannot find device|No such file|does not exist/.test(why)) report.failed.push(`${describe(r)}: ${why}`);
    });
    return;
  }
  await Promise.all(
    run.map(async (r) => {
      try {
        if (await removeOne(r, ctx)) report.removed.push(describe(r));
      } catch (e) {
        report.failed.push(`${describe(r)}: ${(e as Error).message}`);
      }
    }),
  );
}

type LinkResource = Extract<Resource, { kind: 'link' }>;

/**
 * Which links still need an explicit delete. A veth whose other end sat in a clone's namespace goes
 * away by itself shortly after that namespace, and the kernel removes those in one batch; deleting
 * them one by one costs a grace period each (about 20 ms). So wait a little for paired links to vanish.
 * Read from /sys (the host's network namespace is ours) to spare a process start per look.
 */
async function linksToDelete(run: LinkResource[], report: TeardownReport): Promise<LinkResource[]> {
  const deadline = Date.now() + PAIRED_GRACE_MS;
  let delay = 5;
  while (run.some((r) => isPaired(r.name)) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 100);
  }
  const present = run.filter((r) => existsSync(`/sys/class/net/${r.name}`));
  for (const r of run) if (!present.includes(r)) report.removed.push(describe(r));
  return present;
}

const PAIRED_GRACE_MS = 2000;

/** A link whose peer is another link (a veth): iflink names the peer's index instead of its own. */
function isPaired(name: string): boolean {
  try {
    const dir = `/sys/class/net/${name}`;
    return readFileSync(`${dir}/iflink`, 'utf8').trim() !== readFileSync(`${dir}/ifindex`, 'utf8').trim();
  } catch {
    return false;
  }
}

/** Removes one resource; false when it was already gone. */
async function removeOne(r: Resource, ctx: TeardownContext): Promise<boolean> {
  switch (r.kind) {
    case 'process':
      return killAndWait({ pid: r.pid, start: r.start });
    case 'nft-table': {
      const res = await nft(['delete', 'table', r.family, r.name]);
      if (!res.ok && !/No such file|does not exist/.test(res.stderr)) throw new Error(res.stderr.trim());
      return res.ok;
    }
    case 'file':
      if (dirname(r.path) === ctx.claimsDir && !(await claimedBy(r.path, ctx.ticketId))) return false;
      await rm(r.path, { force: true });
      return true;
    case 'dir':
      await rm(r.path, { recursive: true, force: true });
      return true;
    default:
      throw new Error(`no removal for ${describe(r)}`);
  }
}

/** A subnet claim is removed only by the ticket it names: a record may list a claim it lost a race for. */
async function claimedBy(path: string, ticketId: string): Promise<boolean> {
  try {
    return (await readFile(path, 'utf8')).trim() === ticketId;
  } catch {
    return false;
  }
}

/** ip -force -batch prints a line's messages, then "Command failed -:N": maps N to its messages. */
function batchFailures(stderr: string[]): Map<number, string> {
  const out = new Map<number, string>();
  let pending: string[] = [];
  for (const line of stderr) {
    const m = /^Command failed -:(\d+)/.exec(line);
    if (m) {
      out.set(Number(m[1]), pending.join('; '));
      pending = [];
    } else pending.push(line);
  }
  return out;
}
