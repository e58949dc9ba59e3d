/**
 * Removing what a state record names, shared by join/kill and by `snowflock cleanup`. What does
 * not depend on each other goes at once, in three waves (issue 13: a one-rank job's teardown was
 * a chain of eight steps, each waiting on the last):
 *
 *   1. the ticket's processes (holders, QEMUs, servers), its named namespaces, firewall tables
 *      and its device group (every link: bridge, host ends of veths, taps, tunnel; names.ts
 *      linkGroup): none holds another up;
 *   2. then files and directories (after the processes that could still write into them);
 *   3. last the ticket's reaper, the safety net for everything above while it goes.
 *
 * Deleting a device waits for RCU grace periods, once per kernel batch: by name, that is once per
 * device (about 20 ms each here: 8 taps took 150-164 ms); `ip link del group` deletes them all in
 * one batch (8 veths and the bridge: 33-42 ms, 8 taps: 33 ms), and the namespaces after it then
 * hold nothing but their loopback and go at once. A record made before device groups names its
 * links only: its veths vanish with their namespaces (the kernel removes them in one batch) and
 * wave 2 waits for that, deleting what is left; one or two are deleted by name right away instead.
 *
 * Within a wave, runs of one kind are removed in one step (the group, namespaces and veths in one
 * `ip -batch`, the other links in another, processes in parallel). Something already gone is
 * fine; a failure to remove something is reported and teardown goes on, so that one stuck item
 * never leaves the rest behind.
 */
import { existsSync, readFileSync } from 'node:fs';
import { readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { logger } from '../common/log.js';
import { isRunning, killAndWait } from '../common/processes.js';
import { runCommand } from '../common/command.js';
import { ipBatch, nft } from '../network/ip.js';
import { describe, type Resource } from './resources.js';

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

/** At most this many veths of a record without device groups are deleted by name rather than left to vanish with their namespaces. */
export const EXPLICIT_VETHS = 2;

type LinkResource = Extract<Resource, { kind: 'link' }>;
const grouped = (r: Resource): r is LinkResource & { group: number } => r.kind === 'link' && r.group !== undefined;

/**
 * The three waves, each a list of runs of one kind (newest resources first; the device group,
 * namespaces and veths make one run, links of an older record outside any group another, each one
 * `ip -batch`). `paired` tells a veth end from other links.
 */
export function teardownWaves(resources: readonly Resource[], paired: (link: string) => boolean = isPaired): Resource[][][] {
  const reversed = [...resources].reverse();
  const loose = (r: Resource) => r.kind === 'link' && !grouped(r) && paired(r.name);
  const veths = reversed.filter(loose).length;
  const wave = (r: Resource): 0 | 1 | 2 => {
    if (r.kind === 'process') return r.what === 'reaper' ? 2 : 0;
    if (r.kind === 'link') return loose(r) && veths > EXPLICIT_VETHS ? 1 : 0;
    return r.kind === 'file' || r.kind === 'dir' ? 1 : 0;
  };
  const runOf = (r: Resource): string => (r.kind === 'netns' || grouped(r) || loose(r) ? 'namespaces' : r.kind);
  const waves: Resource[][][] = [[], [], []];
  for (const w of [0, 1, 2] as const) {
    const runs = new Map<string, Resource[]>();
    for (const r of reversed) if (wave(r) === w) runs.set(runOf(r), [...(runs.get(runOf(r)) ?? []), r]);
    waves[w] = [...runs.values()];
  }
  return waves;
}

/**
 * The `ip -batch` lines of a run of links and namespaces: each device group first (its namespaces
 * are then quick to delete), then one line per resource, in order, after the groups' lines. A grouped link
 * is named too: normally the group took it and its line only finds it gone, but a link whose
 * creation stopped before it joined the group (a tap or tunnel is put in the group by a second
 * command) goes by name.
 */
export function ipLines(run: readonly Resource[]): { lines: string[]; groups: number[] } {
  const groups = [...new Set(run.filter(grouped).map((r) => r.group))];
  const own = run.map((r) => (r.kind === 'link' ? `link del ${r.name}` : `netns delete ${(r as { name: string }).name}`));
  return { lines: [...groups.map((g) => `link del group ${g}`), ...own], groups };
}

export async function removeResources(resources: readonly Resource[], ctx: TeardownContext): Promise<TeardownReport> {
  const report: TeardownReport = { removed: [], failed: [] };
  const waves = teardownWaves(resources);
  for (const [i, wave] of waves.entries()) {
    await Promise.all(
      wave.map(async (run) => {
        const t0 = performance.now();
        // Veths left for wave 2 go with their namespaces: wait for that before deleting what is left.
        await removeRun(run, ctx, report, i === 1);
        log.debug(`wave ${i + 1}: removed ${run.map((r) => describe(r)).join(', ')}: ${(performance.now() - t0).toFixed(1)} ms`);
      }),
    );
  }
  return report;
}

async function removeRun(run: Resource[], ctx: TeardownContext, report: TeardownReport, waitForPaired: boolean): Promise<void> {
  const kind = run[0]!.kind;
  if (kind === 'link' && waitForPaired) run = await linksToDelete(run as Array<Extract<Resource, { kind: 'link' }>>, report);
  if (run.length === 0) return;
  if (kind === 'link' || kind === 'netns') {
    const { lines, groups } = ipLines(run);
    const failures = batchFailures(await ipBatch(lines, { force: true }));
    const groupTook = new Set(groups.filter((_, i) => !failures.has(i + 1)));
    run.forEach((r, i) => {
      const why = failures.get(groups.length + i + 1);
      const gone = why !== undefined && /Cannot find device|No such device|No such file|does not exist/.test(why);
      if (why === undefined || (gone && grouped(r) && groupTook.has(r.group))) report.removed.push(describe(r));
      // Already gone otherwise is not a failure either (a veth goes with its namespace).
      else if (!gone) report.failed.push(`${describe(r)}: ${why}`);
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
      // A ticket's reaper runs its teardown: it does not kill itself on the way.
      if (r.pid === process.pid) return false;
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
    case 'mount':
      return unmountLazily(r);
    default:
      throw new Error(`no removal for ${describe(r)}`);
  }
}

/**
 * Detaches a recorded mount (umount -l: a dead FUSE mount, "transport endpoint is not connected",
 * or one whose server is still busy, goes all the same) and removes its mountpoint if empty; false
 * when there was nothing mounted. In another mount namespace through nsenter; a namespace whose
 * process is gone took its mounts with it.
 */
async function unmountLazily(r: Extract<Resource, { kind: 'mount' }>): Promise<boolean> {
  if (r.ns && !isRunning(r.ns)) return false;
  const enter = r.ns ? ['nsenter', `--mount=/proc/${r.ns.pid}/ns/mnt`, '--'] : [];
  const run = (argv: string[]) => runCommand(argv[0]!, argv.slice(1), { reject: false, timeout: 10_000 });
  const u = await run([...enter, 'umount', '-l', r.path]);
  const notMounted = /not mounted|no mount point|not found|No such file/i.test(u.stderr);
  if (u.exitCode !== 0 && !notMounted) throw new Error(u.stderr.trim() || `umount exited with ${u.exitCode}`);
  await run([...enter, 'rmdir', r.path]);
  return u.exitCode === 0;
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
