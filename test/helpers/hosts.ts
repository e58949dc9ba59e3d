/**
 * For tests of clusters that span hosts: the settings every such test runs under (its own pools,
 * ports, link prefix and state directory, from the environment when given), and leak checks on
 * every host of a simulated cluster: each host's own state directory (its /tmp is its own), the
 * namespaces, links and nftables tables inside its network namespace, and its processes.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { expect } from 'chai';
import { down, hostCommand, up, type SimClusterRecord, type SimHostRecord } from '../../src/hosts/simulated.js';
import { rereadSettings } from '../../src/common/config.js';
import { leftovers, removeEmptyTree } from './leaks.js';
import { program, type Mpi } from './programs.js';

/** The resources of this worktree's tests (overridable from the environment). */
export function useHostsSettings(): { stateDir: string } {
  if (!process.env.SNOWFLOCK_STATE_DIR) {
    process.env.SNOWFLOCK_STATE_DIR = `/tmp/sfho-state-${process.pid}`;
    // This run's own: gone at exit when nothing is left in it (what is left is a leak to look at).
    const dir = process.env.SNOWFLOCK_STATE_DIR;
    process.once('exit', () => removeEmptyTree(dir));
  }
  process.env.SNOWFLOCK_POOL ??= '10.245.0.0/16';
  process.env.SNOWFLOCK_SIM_POOL ??= '10.236.0.0/16';
  process.env.SNOWFLOCK_SIM_PORTS ??= '16900-16999';
  process.env.SNOWFLOCK_SIM_PREFIX ??= 'sfhs';
  // Simulated hosts share this machine's root filesystem but each has its own /tmp, /run and
  // /dev/shm: a state directory elsewhere would be one directory for all hosts (each host's agent
  // would find the launcher's tickets as taken on its host).
  if (!/^\/(tmp|run|dev\/shm)\//.test(process.env.SNOWFLOCK_STATE_DIR)) {
    throw new Error(`SNOWFLOCK_STATE_DIR=${process.env.SNOWFLOCK_STATE_DIR}: the hosts tests need it under /tmp, /run or /dev/shm (private to each simulated host)`);
  }
  rereadSettings();
  return { stateDir: process.env.SNOWFLOCK_STATE_DIR };
}

export function onHost(h: SimHostRecord, argv: string[], opts: { cwd?: string; input?: string; timeout?: number } = {}) {
  const { file, args } = hostCommand(h, argv, { cwd: opts.cwd });
  return execa(file, args, { reject: false, timeout: opts.timeout ?? 60_000, input: opts.input });
}

const SURVEY = `
ip netns list; echo ---
ip -o link show; echo ---
nft list tables; echo ---
ls -1 "$1/tickets" "$1/subnets" 2>/dev/null; echo ---
cut -d' ' -f5,9 /proc/self/mountinfo; echo ---
for p in /proc/[0-9]*; do c=$(tr '\\0' ' ' < $p/cmdline 2>/dev/null); [ -n "$c" ] && echo "\${p#/proc/} $c"; done
`;

/** What of these tickets is left on one simulated host. */
export async function leftoversOn(h: SimHostRecord, ids: string[], stateDir: string): Promise<string[]> {
  const r = await onHost(h, ['sh', '-c', SURVEY, 'survey', stateDir]);
  if (r.exitCode !== 0 && !r.stdout) return [`host ${h.name}: cannot look (${r.stderr.trim()})`];
  const [netns = '', links = '', tables = '', files = '', mounts = '', procs = ''] = r.stdout.split('---\n');
  const found: string[] = [];
  for (const id of ids) {
    for (const l of netns.split('\n')) if (l.startsWith(`sf${id}`)) found.push(`${h.name}: netns ${l.trim()}`);
    for (const l of links.split('\n')) {
      const name = /^\d+: ([^:@]+)/.exec(l)?.[1];
      if (name?.startsWith(`sf${id}`)) found.push(`${h.name}: link ${name}`);
    }
    for (const l of tables.split('\n')) if (l.trim() === `table inet sf_${id}`) found.push(`${h.name}: ${l.trim()}`);
    for (const l of files.split('\n')) if (l.startsWith(id)) found.push(`${h.name}: state ${l.trim()}`);
    // A memtap's FUSE mount (memory on demand) lives in the ticket's directory.
    for (const l of mounts.split('\n')) if (l.includes(`/tickets/${id}`)) found.push(`${h.name}: mount ${l.trim()}`);
    for (const l of procs.split('\n')) {
      if (l.includes(`sf${id}`) || l.includes(`${stateDir} ${id}`) || l.includes(`/tickets/${id}`)) found.push(`${h.name}: process ${l.slice(0, 120)}`);
    }
  }
  // Agents of these tests that still run (they name the launcher's address in --connect).
  for (const l of procs.split('\n')) if (/ agent --connect /.test(l)) found.push(`${h.name}: agent ${l.slice(0, 120)}`);
  return found;
}

/** What of these tickets is left anywhere: on this machine (the launcher's host) and on every simulated host. */
export async function leftoversEverywhere(rec: SimClusterRecord, ids: string[], stateDir: string): Promise<string[]> {
  const perHost = await Promise.all(rec.hosts.map((h) => leftoversOn(h, ids, stateDir)));
  return [...leftovers(ids, stateDir), ...perHost.flat()];
}

/** Fails with the list of what is left anywhere; waits up to graceMs for what ends by itself. */
export async function assertNothingLeft(rec: SimClusterRecord, ids: string[], stateDir: string, graceMs = 8000): Promise<void> {
  const deadline = Date.now() + graceMs;
  let left = await leftoversEverywhere(rec, ids, stateDir);
  while (left.length > 0 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    left = await leftoversEverywhere(rec, ids, stateDir);
  }
  expect(left, `left behind by tickets ${ids.join(', ')}`).to.deep.equal([]);
}

/** This checkout. */
export const CHECKOUT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const root = CHECKOUT;
const fromSources = (bin: string) => [process.execPath, '--import', join(root, 'node_modules/tsx/dist/esm/index.mjs'), join(root, 'launcher/bin', bin)];

/** This checkout's sfmpirun and snowflock, run from their sources (tsx), as argv. */
export const SFMPIRUN_ARGV = fromSources('sfmpirun.ts');
export const SNOWFLOCK_ARGV = fromSources('snowflock.ts');

export interface SimClusterFixture {
  /** Set before the first test of the block. */
  rec: SimClusterRecord;
  /** A working directory outside /tmp (each host has its own /tmp; the rest is shared, as on a cluster). */
  work: string;
  /** A Slurm command (salloc, sbatch, srun) of the cluster, run in the working directory; never rejects. */
  slurm(cmd: string, args: string[], env?: Record<string, string>): ResultPromise<{ reject: false }>;
}

/**
 * A simulated cluster for the tests of one describe block, named by tag and this process: the
 * native helpers built and the block's programs compiled first, the cluster up (then afterUp)
 * before the tests and down after them, after beforeDown (to mend what a test broke), and a
 * working directory that goes with it.
 */
export function useSimCluster(o: {
  hosts: number;
  tag: string;
  programs?: Array<[name: string, mpi: Mpi]>;
  afterUp?: (rec: SimClusterRecord) => Promise<void>;
  beforeDown?: (rec: SimClusterRecord) => Promise<void>;
}): SimClusterFixture {
  const fixture = {
    slurm: (cmd, args, env = {}) => execa(cmd, args, { env: { SLURM_CONF: fixture.rec.slurmConf, ...env }, cwd: fixture.work, reject: false, timeout: 300_000 }),
  } as SimClusterFixture;
  before(async function () {
    execFileSync('make', ['-s', '-C', join(root, 'native')], { stdio: 'inherit' });
    for (const [name, mpi] of o.programs ?? []) program(name, mpi);
    fixture.rec = await up({ hosts: o.hosts, name: `${o.tag}${process.pid % 100000}` });
    fixture.work = mkdtempSync(`/var/tmp/sfho-${o.tag}-`);
    await o.afterUp?.(fixture.rec);
  });
  after(async function () {
    if (fixture.rec) {
      await o.beforeDown?.(fixture.rec);
      await down(fixture.rec.name);
    }
    if (fixture.work) rmSync(fixture.work, { recursive: true, force: true });
  });
  return fixture;
}
