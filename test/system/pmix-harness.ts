/**
 * Plays the launcher's part around sf-pmix for tests that start real ranks directly on this host
 * (no clones): one server for the job or one per simulated node with a FenceRelay, each rank
 * spawned with the environment the driver gives, per-node Open MPI directories, and the failure
 * policy a launcher has (an abort, a disconnect, or a rank exiting before it finalized ends the
 * job: the other ranks are killed). Everything it creates is removed before runJob returns.
 *
 * Simulated nodes share this host, so each gets its own Open MPI directories: Open MPI names its
 * shared-memory segments after the real hostname and the local rank, which two nodes here share.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FenceRelay } from '../../launcher/pmix/fence-relay.js';
import { OPENMPI_DIRECT_LAUNCH, openMpiJobDirs } from '../../launcher/pmix/openmpi.js';
import type { PmixServer, JobSpec } from '../../launcher/pmix/server.js';
import { PmixJob, type PmixHost } from '../../launcher/pmix/servers.js';
import { removeEmptyTree } from '../helpers/leaks.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const ownStateDir = !process.env.SNOWFLOCK_STATE_DIR;
export const stateDir = process.env.SNOWFLOCK_STATE_DIR ?? join(tmpdir(), 'snowflock-test');

// A root hook: once the run is over, our own default state directory goes if it is empty (a job
// directory left in it is a leftover the tests report, and stays to be seen).
after(() => {
  if (ownStateDir) removeEmptyTree(stateDir);
});

/** sf-pmix as built by make (or make SANITIZE=1 with PMIX_SANITIZE=1 in the environment). */
export function serverBinary(sanitized = process.env.PMIX_SANITIZE === '1'): string {
  const build = sanitized ? 'build-asan' : 'build';
  const args = ['-s', '-C', join(root, 'native'), ...(sanitized ? ['SANITIZE=1'] : []), `${build}/sf-pmix`];
  execFileSync('make', args, { stdio: ['ignore', 'ignore', 'inherit'] });
  return join(root, 'native', build, 'sf-pmix');
}

/** The environment of a server built with make SANITIZE=1: any finding fails its exit status. */
export function sanitizerEnv(): NodeJS.ProcessEnv {
  return {
    ...process.env,
    ASAN_OPTIONS: 'detect_leaks=1:fast_unwind_on_malloc=0:exitcode=99',
    LSAN_OPTIONS: `suppressions=${join(root, 'native/pmix/lsan.supp')}:print_suppressions=0`,
    UBSAN_OPTIONS: 'halt_on_error=1:print_stacktrace=1:exitcode=98',
  };
}

/** test/programs/pmix-client.c, a bare libpmix client, built with gcc and pkg-config pmix. */
export function pmixClient(): string {
  const src = join(root, 'test/programs/pmix-client.c');
  const out = join(root, 'test/.build/pmix/pmix-client');
  if (!existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs) {
    mkdirSync(dirname(out), { recursive: true });
    const flags = execFileSync('pkg-config', ['--cflags', '--libs', 'pmix'], { encoding: 'utf8' }).trim().split(/\s+/);
    execFileSync('gcc', ['-O1', '-Wall', '-o', out, src, ...flags], { stdio: ['ignore', 'ignore', 'inherit'] });
  }
  return out;
}

// ---- the address servers listen on ----

const link = process.env.SNOWFLOCK_TEST_LINK ?? 'sfpx0';

/** The last /24 of SNOWFLOCK_POOL, host 1: away from the tickets other tests carve from the pool's start. */
export function listenAddress(): string {
  const [base, len] = (process.env.SNOWFLOCK_POOL ?? '10.213.0.0/16').split('/');
  const n = base.split('.').reduce((a, o) => a * 256 + Number(o), 0);
  const size = 2 ** (32 - Number(len));
  const addr = n + (size >= 256 ? size - 256 : 0) + 1;
  return [24, 16, 8, 0].map((s) => Math.floor(addr / 2 ** s) % 256).join('.');
}

/** Mocha hooks: a portless bridge with listenAddress() for the servers of this file, removed after. */
export function useListenLink(): string {
  const addr = listenAddress();
  const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  before(() => {
    if (existsSync(`/sys/class/net/${link}`)) ip('link', 'del', link); // left by a killed run
    ip('link', 'add', link, 'type', 'bridge'); // dummy is not in every kernel; a bridge without ports is just as local
    ip('addr', 'add', `${addr}/32`, 'dev', link);
    ip('link', 'set', link, 'up');
  });
  after(() => {
    if (existsSync(`/sys/class/net/${link}`)) ip('link', 'del', link);
  });
  return addr;
}

// ---- jobs ----

export interface AppPlan {
  argv: string[];
  np: number;
}

export interface JobPlan {
  name: string;
  apps: AppPlan[];
  /** Simulated nodes; ranks fill them in blocks. */
  nodes?: number;
  /** One server per node, fences relayed; else one server for the job. */
  perNode?: boolean;
  listen: string;
  binary?: string;
  handshakeMs?: number;
  shareTopology?: boolean;
  /** Extra or changed variables for one rank (undefined removes a variable). */
  rankEnv?: (rank: number, env: NodeJS.ProcessEnv) => NodeJS.ProcessEnv;
  /** Called as the job runs, to act on it (kill a rank on cue, ...). */
  onEvent?: (e: JobEvent, job: RunningJob) => void;
  /** Runs before any rank starts, with the servers up and the job registered. */
  beforeRanks?: (servers: PmixServer[], job: RunningJob) => Promise<void>;
  timeoutMs?: number;
}

export type JobEvent =
  | { type: 'connected' | 'finalized' | 'disconnected'; server: number; rank: number }
  | { type: 'abort'; server: number; rank: number; status: number; message: string }
  | { type: 'fence' | 'fenceLocal'; server: number; seq: number }
  | { type: 'unsupported'; server: number; rank: number | 'unknown'; call: string }
  | { type: 'line'; rank: number; stream: 'stdout' | 'stderr'; line: string }
  | { type: 'exit'; rank: number; code: number | null; signal: string | null };

export interface RankOutcome {
  rank: number;
  pid: number;
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

export interface JobOutcome {
  ranks: RankOutcome[];
  events: JobEvent[];
  /** Why the harness ended the job early, as a launcher would report it. */
  failure?: string;
  serverExits: { code: number | null; signal: string | null }[];
  /** How long the servers took to stop once asked (all of them, in parallel). */
  closeMs: number;
  serverPids: number[];
  serverLog: string[];
  /** What Open MPI and libpmix had left in the job's directories when the job ended. */
  leftInJobDir: string[];
  jobDir: string;
  relayed: number;
}

export interface RunningJob {
  kill(rank: number, signal?: NodeJS.Signals): void;
  /** Ends the job: kills every rank but `spare` and earlier spares (an aborting rank exits by itself, with its status). */
  fail(why: string, spare?: number): void;
}

let jobs = 0;

function placement(np: number, nodes: number): number[] {
  const per = Math.ceil(np / nodes);
  return Array.from({ length: np }, (_, r) => Math.floor(r / per));
}

function baseEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!/^(PMIX|OMPI)_/.test(k)) env[k] = v;
  return {
    ...env,
    ...OPENMPI_DIRECT_LAUNCH,
    OMPI_MCA_pml: 'ob1', // skips the probing of fabrics this host does not have (MPI_Init 250 -> 50 ms)
    OMPI_MCA_btl: 'self,vader,tcp',
    OMPI_MCA_btl_tcp_if_include: 'lo',
  };
}

export async function runJob(plan: JobPlan): Promise<JobOutcome> {
  const np = plan.apps.reduce((a, p) => a + p.np, 0);
  const nnodes = Math.min(plan.nodes ?? 1, np);
  const nodeOf = placement(np, nnodes);
  const appnums = plan.apps.flatMap((a, i) => Array.from({ length: a.np }, () => i));
  const argvOf = plan.apps.flatMap((a) => Array.from({ length: a.np }, () => a.argv));
  const id = `${process.pid}-${++jobs}`;
  const spec: JobSpec = {
    nspace: `sfpx-${plan.name}-${id}`,
    nodes: Array.from({ length: nnodes }, (_, i) => ({ hostname: `sfpx-n${i}`, ranks: nodeOf.flatMap((n, r) => (n === i ? [r] : [])) })),
    appnums,
  };
  mkdirSync(stateDir, { recursive: true });
  const jobDir = mkdtempSync(join(stateDir, `pmix-${plan.name}-`));
  for (let i = 0; i < nnodes; i++) mkdirSync(join(jobDir, `n${i}`));

  const events: JobEvent[] = [];
  const serverLog: string[] = [];
  const servers: PmixServer[] = [];
  const children = new Map<number, ReturnType<typeof spawn>>();
  const finalized = new Set<number>();
  let failure: string | undefined;
  let relay: FenceRelay | undefined;
  let pmix: PmixJob | undefined;
  let timer: NodeJS.Timeout | undefined;

  // Ranks that called MPI_Abort exit by themselves, with its status: a later failure (another
  // rank's lost connection, as the kill of the others closes it) must not kill them first.
  const aborting = new Set<number>();
  const killAll = (except: Set<number>) => {
    for (const [r, c] of children) if (!except.has(r) && c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  const running: RunningJob = {
    kill: (rank, signal = 'SIGKILL') => {
      children.get(rank)?.kill(signal);
    },
    fail: (why, spare) => {
      failure ??= why;
      relay?.fail(why);
      if (spare !== undefined) aborting.add(spare);
      killAll(aborting);
    },
  };
  const record = (e: JobEvent) => {
    events.push(e);
    plan.onEvent?.(e, running);
  };

  try {
    // Through the job code's seam: one host for the whole job, or one per simulated node.
    const env = plan.binary?.includes('/build-asan/') ? sanitizerEnv() : undefined;
    const groups = plan.perNode ? spec.nodes.map((_, i) => [i]) : [spec.nodes.map((_, i) => i)];
    const hosts: PmixHost[] = groups.map((nodes, i) => {
      const tmpdir = join(jobDir, `server${i}`); // each its own: libpmix names its files without the server in them
      mkdirSync(tmpdir);
      return { nodes, listen: plan.listen, binary: plan.binary, handshakeMs: plan.handshakeMs, tmpdir, shareTopology: plan.shareTopology, env };
    });
    pmix = await PmixJob.start(spec, hosts);
    servers.push(...pmix.servers);
    relay = pmix.relay ?? undefined;
    pmix.on('log', (l, i) => serverLog.push(`[${i}] ${l}`));
    pmix.on('connected', (rank, server) => record({ type: 'connected', server, rank }));
    pmix.on('finalized', (rank, server) => {
      finalized.add(rank);
      record({ type: 'finalized', server, rank });
    });
    pmix.on('disconnected', (rank, server) => {
      record({ type: 'disconnected', server, rank });
      running.fail(`rank ${rank} lost its connection to the PMIx server before it finalized`);
    });
    pmix.on('abort', (a, server) => {
      record({ type: 'abort', server, rank: a.rank, status: a.status, message: a.message });
      running.fail(`rank ${a.rank} called MPI_Abort with status ${a.status}`, a.rank);
    });
    pmix.on('unsupported', (u, server) => record({ type: 'unsupported', server, rank: u.rank, call: u.call }));
    pmix.on('failure', (e, i) => running.fail(`PMIx server ${i}: ${e.message}`));
    servers.forEach((s, i) => {
      s.on('fence', (f) => record({ type: 'fence', server: i, seq: f.seq }));
      s.on('fenceLocal', (f) => record({ type: 'fenceLocal', server: i, seq: f.seq }));
    });
    const envs = await Promise.all(nodeOf.map((_, r) => pmix!.env(r)));
    await plan.beforeRanks?.(servers, running);

    timer = setTimeout(() => {
      running.fail(`timeout: the job ran longer than ${plan.timeoutMs ?? 60_000} ms`);
      killAll(new Set()); // an aborting rank that hangs, too
    }, plan.timeoutMs ?? 60_000);
    const outcomes = await Promise.all(
      nodeOf.map((node, r) => {
        let env: NodeJS.ProcessEnv = { ...baseEnv(), ...openMpiJobDirs(join(jobDir, `n${node}`)), ...envs[r] };
        if (plan.rankEnv) env = { ...env, ...plan.rankEnv(r, env) };
        for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];
        const [cmd, ...args] = argvOf[r];
        const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
        children.set(r, child);
        const out = { stdout: '', stderr: '' };
        for (const stream of ['stdout', 'stderr'] as const) {
          let partial = '';
          child[stream]!.setEncoding('utf8');
          child[stream]!.on('data', (s: string) => {
            out[stream] += s;
            const lines = (partial + s).split('\n');
            partial = lines.pop() ?? '';
            for (const line of lines) record({ type: 'line', rank: r, stream, line });
          });
        }
        return new Promise<RankOutcome>((resolve) => {
          child.on('error', (e) => {
            out.stderr += `spawn failed: ${e.message}\n`;
          });
          child.on('close', (code, signal) => {
            record({ type: 'exit', rank: r, code, signal });
            // A launcher's rule: a rank that ends before it finalized ends the job.
            if (!finalized.has(r) && !failure) running.fail(`rank ${r} exited (${signal ?? `status ${code}`}) before it finalized`);
            resolve({ rank: r, pid: child.pid ?? 0, code, signal, ...out });
          });
        });
      }),
    );
    clearTimeout(timer);
    const serverPids = servers.map((s) => s.pid);
    const closing = Date.now();
    await Promise.all(servers.map((s) => s.close()));
    const closeMs = Date.now() - closing;
    const serverExits = await Promise.all(servers.map((s) => s.whenExited()));
    const leftInJobDir = readdirSync(jobDir, { recursive: true }).map(String).filter((p) => !/^(server|n)\d+$/.test(p));
    return { ranks: outcomes, events, failure, serverExits, closeMs, serverPids, serverLog, leftInJobDir, jobDir, relayed: relay?.completed ?? 0 };
  } finally {
    clearTimeout(timer);
    for (const c of children.values()) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const s of servers) s.kill();
    await Promise.all(servers.map((s) => s.whenExited()));
    rmSync(jobDir, { recursive: true, force: true });
  }
}

/** Live processes among pids (zombies count as gone). */
export function alive(pids: number[]): number[] {
  return pids.filter((pid) => {
    try {
      return !/^\S+ \(.*\) [ZX]/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  });
}

/** The lines of one rank's stdout. */
export function linesOf(outcome: JobOutcome, rank: number): string[] {
  return outcome.ranks[rank].stdout.split('\n').filter(Boolean);
}
