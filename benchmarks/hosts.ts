/**
 * Clusters that span hosts, on a simulated cluster of 4 hosts with a real Slurm:
 * - provisioning (sfmpirun's provision phase, from its --report): 8 clones on this machine alone
 *   (no agent), and 8 clones on each of 1, 2 and 4 hosts of an allocation (salloc's shell runs on
 *   this machine, so every clone is on a node and every node has an agent);
 * - inside one allocation of 4 nodes, side by side, an Open MPI hello at np 8 and 32: sfmpirun (one
 *   sf-pmix per host, fences relayed by the launcher), `srun --mpi=pmix` (Slurm's own PMIx plugin)
 *   and `mpirun.openmpi` (its orteds through srun); wall time of the whole command;
 * - NetPIPE (NPmpich2) ping-pong between two ranks on two hosts: in clones, over the ticket's VXLAN
 *   network (sfmpirun), against two ranks placed directly on the two hosts (Hydra with -launcher
 *   slurm), 1 byte (latency) and 4 MiB (bandwidth);
 * - PMI-1 over the ticket network: round trips of a PMI get from a clone on the launcher's host
 *   and from a clone on another host (the cost a per-host proxy could save at best).
 * Rounds interleave the sides; ratios are taken per round and their medians reported.
 *
 *   npx tsx benchmarks/hosts.ts [--rounds R] [--only provision,hello,pingpong,pmi]
 * Exports hostsBenchmark for the harness (benchmarks/run.ts). Needs root, Slurm and munge
 * (npm run setup), and the settings of a simulated cluster (SNOWFLOCK_SIM_*, SNOWFLOCK_POOL,
 * SNOWFLOCK_STATE_DIR) when others share the machine.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { projectRoot } from '../src/common/paths.js';
import type { SimClusterRecord } from '../src/hosts/simulated.js';
import { benchProgram } from './lib/programs.js';
import { withSimCluster } from './lib/simcluster.js';
import type { Benchmark } from './run.js';

const root = projectRoot();
const fromSources = import.meta.url.endsWith('.ts');
const SFMPIRUN = fromSources
  ? [process.execPath, '--import', join(root, 'node_modules/tsx/dist/esm/index.mjs'), join(root, 'launcher/bin/sfmpirun.ts')]
  : [process.execPath, join(root, 'dist/launcher/bin/sfmpirun.js')];


/**
 * An allocation held open by a salloc whose command waits on its stdin; commands run in it with
 * its environment. Closing that stdin ends the command, and salloc then gives the allocation back
 * (a signal to salloc would cancel the job but leave salloc waiting on its command). If this
 * process dies, the pipe closes all the same.
 */
interface Allocation {
  env: NodeJS.ProcessEnv;
  release(): Promise<void>;
}

async function allocate(rec: SimClusterRecord, nodes: number): Promise<Allocation> {
  const child = spawn('salloc', ['-N', String(nodes), '-O', '--', 'sh', '-c', 'env; echo ENV-END; exec cat >/dev/null'], {
    env: { ...process.env, SLURM_CONF: rec.slurmConf },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const closed = new Promise<number | null>((r) => child.once('close', r));
  let out = '';
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const env = await new Promise<NodeJS.ProcessEnv>((resolveEnv, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (!out.includes('ENV-END\n')) return;
      const e: NodeJS.ProcessEnv = { ...process.env, SLURM_CONF: rec.slurmConf };
      for (const line of out.slice(0, out.indexOf('ENV-END')).split('\n')) {
        const eq = line.indexOf('=');
        if (line.startsWith('SLURM_') && eq > 0) e[line.slice(0, eq)] = line.slice(eq + 1);
      }
      resolveEnv(e);
    });
    void closed.then((code) => reject(new Error(`salloc -N ${nodes} ended (${code}): ${err.trim()}`)));
  });
  return {
    env,
    release: async () => {
      child.stdin.end();
      const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
      await closed;
      clearTimeout(timer);
    },
  };
}

/** Wall milliseconds of one command; throws with its stderr when it fails. */
async function timed(argv: string[], env: NodeJS.ProcessEnv, cwd: string): Promise<{ ms: number; stdout: string }> {
  const t0 = performance.now();
  const r = await execa(argv[0]!, argv.slice(1), { env, cwd, reject: false, timeout: 600_000 });
  const ms = performance.now() - t0;
  if (r.exitCode !== 0) throw new Error(`${argv.slice(0, 6).join(' ')} ... failed (${r.exitCode}): ${r.stderr.slice(-1500)}`);
  return { ms, stdout: r.stdout };
}

// ---------------------------------------------------------------------------------------------
// Provisioning.

interface ProvisionResult {
  where: string;
  clones: number;
  provisionMs: Stats;
  totalMs: Stats;
}

async function benchProvision(rec: SimClusterRecord, rounds: number, work: string): Promise<ProvisionResult[]> {
  const sides = [
    { where: 'this machine alone', nodes: 0 },
    { where: '1 host', nodes: 1 },
    { where: '2 hosts', nodes: 2 },
    { where: '4 hosts', nodes: 4 },
  ];
  const provision = sides.map(() => [] as number[]);
  const total = sides.map(() => [] as number[]);
  const env = { ...process.env, SLURM_CONF: rec.slurmConf };
  for (let r = 0; r < rounds; r++) {
    for (const [i, side] of sides.entries()) {
      const n = 8 * Math.max(1, side.nodes);
      const report = join(work, `provision-${i}.json`);
      const job = [...SFMPIRUN, '--report', report, '-np', String(n), '/bin/true'];
      const { ms } = await timed(side.nodes ? ['salloc', '-N', String(side.nodes), '-O', ...job] : job, env, work);
      provision[i]!.push((JSON.parse(readFileSync(report, 'utf8')) as { phases: { provision: number } }).phases.provision);
      total[i]!.push(ms);
    }
  }
  return sides.map((s, i) => ({ where: s.where, clones: 8 * Math.max(1, s.nodes), provisionMs: stats(provision[i]!), totalMs: stats(total[i]!) }));
}

// ---------------------------------------------------------------------------------------------
// Hello inside one allocation.

interface HelloResult {
  np: number;
  sfmpirun: Stats;
  srun: Stats;
  mpirun: Stats;
  /** Per round: sfmpirun / srun, sfmpirun / mpirun. */
  vsSrun: Stats;
  vsMpirun: Stats;
}

async function benchHello(rec: SimClusterRecord, rounds: number, work: string): Promise<HelloResult[]> {
  const hello = benchProgram('hello', 'openmpi');
  const alloc = await allocate(rec, 4);
  const out: HelloResult[] = [];
  try {
    for (const np of [8, 32]) {
      const launchers = {
        sfmpirun: [...SFMPIRUN, '-np', String(np), hello],
        srun: ['srun', '--overlap', '-O', '--mpi=pmix', '-n', String(np), hello],
        mpirun: ['mpirun.openmpi', '--allow-run-as-root', '--oversubscribe', '--mca', 'pml', 'ob1', '-np', String(np), hello],
      };
      const t: Record<keyof typeof launchers, number[]> = { sfmpirun: [], srun: [], mpirun: [] };
      for (let r = 0; r < rounds; r++) {
        for (const [name, argv] of Object.entries(launchers) as Array<[keyof typeof launchers, string[]]>) {
          const { ms, stdout } = await timed(argv, alloc.env, work);
          const lines = stdout.split('\n').filter((l) => l.startsWith('hello rank'));
          if (lines.length !== np) throw new Error(`${name} at np ${np}: ${lines.length} hello lines`);
          t[name].push(ms / 1000);
        }
      }
      out.push({
        np,
        sfmpirun: stats(t.sfmpirun),
        srun: stats(t.srun),
        mpirun: stats(t.mpirun),
        vsSrun: stats(t.sfmpirun.map((x, i) => x / t.srun[i]!)),
        vsMpirun: stats(t.sfmpirun.map((x, i) => x / t.mpirun[i]!)),
      });
    }
  } finally {
    await alloc.release();
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Ping-pong between two hosts.

interface PingPongResult {
  bytes: number;
  clones: { usec: Stats; gbps: Stats };
  direct: { usec: Stats; gbps: Stats };
  /** Per round, clones / direct: latency (above 1 is slower), bandwidth (below 1 is slower). */
  latencyRatio: Stats;
  bandwidthRatio: Stats;
}

/** NetPIPE's line for one size: bytes, Mbps, seconds per one-way transfer. */
function netpipe(file: string): { usec: number; gbps: number } {
  const f = readFileSync(file, 'utf8').trim().split('\n').pop()!.trim().split(/\s+/).map(Number);
  return { usec: f[2]! * 1e6, gbps: f[1]! / 1000 };
}

/**
 * One NPmpich2 run. MPICH over UCX TCP can hang in MPI_Finalize after NetPIPE wrote its result
 * (DESIGN.md): sfmpirun's PMI watchdog ends such a run; Hydra's is killed a few seconds after the
 * result is there.
 */
async function npRun(argv: string[], env: NodeJS.ProcessEnv, out: string, work: string): Promise<{ usec: number; gbps: number }> {
  rmSync(out, { force: true });
  const run = execa(argv[0]!, argv.slice(1), { env, cwd: work, reject: false, timeout: 300_000 });
  const watch = setInterval(() => {
    if (existsSync(out) && readFileSync(out, 'utf8').trim()) setTimeout(() => run.kill('SIGKILL'), 5000).unref();
  }, 500);
  await run;
  clearInterval(watch);
  if (!existsSync(out) || !readFileSync(out, 'utf8').trim()) throw new Error(`${argv[0]} NPmpich2 gave no result: ${(await run).stderr.slice(-1500)}`);
  return netpipe(out);
}

async function benchPingPong(rec: SimClusterRecord, rounds: number, work: string): Promise<PingPongResult[]> {
  const alloc = await allocate(rec, 2);
  const results: PingPongResult[] = [];
  try {
    for (const [bytes, repeats] of [
      [1, 2000],
      [4 << 20, 20],
    ] as const) {
      const np = ['NPmpich2', '-p', '0', '-l', String(bytes), '-u', String(bytes), '-n', String(repeats)];
      const c: Array<{ usec: number; gbps: number }> = [];
      const d: Array<{ usec: number; gbps: number }> = [];
      for (let r = 0; r < rounds; r++) {
        d.push(await npRun(['mpiexec.hydra', '-launcher', 'slurm', '-n', '2', '-ppn', '1', ...np, '-o', join(work, 'np-direct.out')], alloc.env, join(work, 'np-direct.out'), work));
        c.push(await npRun([...SFMPIRUN, '-np', '2', ...np, '-o', join(work, 'np-clones.out')], alloc.env, join(work, 'np-clones.out'), work));
      }
      results.push({
        bytes,
        clones: { usec: stats(c.map((x) => x.usec)), gbps: stats(c.map((x) => x.gbps)) },
        direct: { usec: stats(d.map((x) => x.usec)), gbps: stats(d.map((x) => x.gbps)) },
        latencyRatio: stats(c.map((x, i) => x.usec / d[i]!.usec)),
        bandwidthRatio: stats(c.map((x, i) => x.gbps / d[i]!.gbps)),
      });
    }
  } finally {
    await alloc.release();
  }
  return results;
}

// ---------------------------------------------------------------------------------------------
// PMI-1 round trips over the ticket network.

/** A PMI-1 client: init, then N gets timed, then barrier and finalize; prints its rank's figure. */
const PMI_PING = `
import os, socket, sys, time
host, port = os.environ['PMI_PORT'].rsplit(':', 1)
s = socket.create_connection((host, int(port))); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile('rwb', buffering=0)
def call(line, until):
    f.write((line + '\\n').encode())
    while True:
        r = f.readline().decode()
        if not r: raise SystemExit('PMI server closed')
        if r.startswith('cmd=' + until): return r
call('cmd=initack pmiid=' + os.environ['PMI_ID'], 'set debug')
call('cmd=init pmi_version=1 pmi_subversion=1', 'response_to_init')
kvs = call('cmd=get_my_kvsname', 'my_kvsname').split('kvsname=')[1].strip()
n = int(sys.argv[1])
t0 = time.perf_counter()
for _ in range(n): call('cmd=get kvsname=%s key=PMI_process_mapping' % kvs, 'get_result')
us = (time.perf_counter() - t0) / n * 1e6
call('cmd=barrier_in', 'barrier_out')
call('cmd=finalize', 'finalize_ack')
print('pmi %s %s %.1f' % (os.environ['PMI_RANK'], open('/run/sfho-bench-host').read().strip(), us), flush=True)
`;
import { fmt, stats, type Stats } from './lib/stats.js';

interface PmiResult {
  local: Stats;
  remote: Stats;
  ratio: Stats;
}

async function benchPmi(rec: SimClusterRecord, rounds: number, work: string): Promise<PmiResult> {
  const script = join(work, 'pmi-ping.py');
  writeFileSync(script, PMI_PING);
  const { hostCommand } = await import('../src/hosts/simulated.js');
  for (const h of rec.hosts) {
    const { file, args } = hostCommand(h, ['sh', '-c', `echo ${h.name} > /run/sfho-bench-host`]);
    await execa(file, args);
  }
  // sbatch: the launcher runs on the first node, which holds clone 0; clone 1 is on the second.
  const job = join(work, 'pmi.sh');
  writeFileSync(job, `#!/bin/sh\n${SFMPIRUN.join(' ')} -np 2 python3 ${script} 2000\n`, { mode: 0o755 });
  const local: number[] = [];
  const remote: number[] = [];
  for (let r = 0; r < rounds; r++) {
    const out = join(work, `pmi-${r}.out`);
    await timed(['sbatch', '-N', '2', '--wait', '-o', out, job], { ...process.env, SLURM_CONF: rec.slurmConf }, work);
    const lines = readFileSync(out, 'utf8').split('\n').filter((l) => l.startsWith('pmi '));
    const of = (host: string) => Number(lines.find((l) => l.split(' ')[2] === host)?.split(' ')[3]);
    local.push(of(rec.hosts[0]!.name));
    remote.push(of(rec.hosts[1]!.name));
  }
  return { local: stats(local), remote: stats(remote), ratio: stats(remote.map((x, i) => x / local[i]!)) };
}

// ---------------------------------------------------------------------------------------------

export interface HostsResults {
  date: string;
  load: string;
  rounds: number;
  /** sfmpirun and its agents from the TypeScript sources (through tsx) or from dist/. */
  from: 'sources' | 'dist';
  provision?: ProvisionResult[];
  hello?: HelloResult[];
  pingpong?: PingPongResult[];
  pmi?: PmiResult;
}

const PARTS = ['provision', 'hello', 'pingpong', 'pmi'] as const;
type Part = (typeof PARTS)[number];

export async function benchHosts(rounds: number, only: readonly Part[] = PARTS): Promise<HostsResults> {
  const load = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const out: HostsResults = { date: new Date().toISOString().slice(0, 10), load, rounds, from: fromSources ? 'sources' : 'dist' };
  await withSimCluster({ hosts: 4, name: 'hostsbench', workPrefix: 'sfho-bench-' }, async (rec, work) => {
    if (only.includes('provision')) out.provision = await benchProvision(rec, rounds, work);
    if (only.includes('hello')) out.hello = await benchHello(rec, rounds, work);
    if (only.includes('pingpong')) out.pingpong = await benchPingPong(rec, rounds, work);
    if (only.includes('pmi')) out.pmi = await benchPmi(rec, rounds, work);
  });
  out.load += ` -> ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}`;
  return out;
}

export function markdown(r: HostsResults): string {
  const lines = [
    '## Clusters that span hosts: provisioning, launchers inside one allocation, ping-pong across hosts',
    '',
    `Measured ${r.date} on a simulated cluster of 4 hosts on this 2-core machine (load average ${r.load}), median (min-max) of ${r.rounds} interleaved rounds; sfmpirun and its agents run from ${r.from === 'sources' ? 'the TypeScript sources (tsx)' : 'dist/'}.`,
    '',
  ];
  if (r.provision) {
    lines.push(
      '### Provisioning: 8 clones per host',
      '',
      "sfmpirun's provision phase (ticket on every host, agents started and connected, clones made), ms; total: the whole `sfmpirun -np N /bin/true` (in `salloc -N H` for hosts; salloc's shell runs on this machine, so each host has an agent).",
      '',
      '| where | clones | provision, ms | whole job, ms |',
      '|---|---|---|---|',
      ...r.provision.map((p) => `| ${p.where} | ${p.clones} | ${fmt(p.provisionMs, 0)} | ${fmt(p.totalMs, 0)} |`),
      '',
    );
  }
  if (r.hello) {
    lines.push(
      '### Open MPI hello inside one allocation of 4 nodes',
      '',
      'Wall seconds of the whole command; ratios per round.',
      '',
      '| np | sfmpirun | srun --mpi=pmix | mpirun.openmpi | sfmpirun / srun | sfmpirun / mpirun |',
      '|---|---|---|---|---|---|',
      ...r.hello.map((h) => `| ${h.np} | ${fmt(h.sfmpirun)} | ${fmt(h.srun)} | ${fmt(h.mpirun)} | ${fmt(h.vsSrun)} | ${fmt(h.vsMpirun)} |`),
      '',
    );
  }
  if (r.pingpong) {
    lines.push(
      '### NetPIPE ping-pong between two hosts (NPmpich2)',
      '',
      'Two ranks, one per host: in clones over the ticket network (sfmpirun: bridge + VXLAN on each host, MTU 1450), against two ranks placed directly on the hosts (`mpiexec.hydra -launcher slurm`, the underlay, MTU 1500). Ratio clones / direct per round.',
      '',
      '| size | clones | direct | ratio |',
      '|---|---|---|---|',
      ...r.pingpong.flatMap((p) =>
        p.bytes === 1
          ? [`| 1 B, µs one way | ${fmt(p.clones.usec)} | ${fmt(p.direct.usec)} | ${fmt(p.latencyRatio)} |`]
          : [`| ${p.bytes >> 20} MiB, Gb/s | ${fmt(p.clones.gbps)} | ${fmt(p.direct.gbps)} | ${fmt(p.bandwidthRatio)} |`],
      ),
      '',
    );
  }
  if (r.pmi) {
    lines.push(
      '### PMI-1 over the ticket network',
      '',
      "µs per PMI-1 `get` round trip to the launcher's PMI server (on the gateway of the launcher's host, sbatch -N 2), from a clone on the launcher's host and from a clone on the other host (over VXLAN):",
      '',
      '| from the launcher\'s host | from the other host | ratio |',
      '|---|---|---|',
      `| ${fmt(r.pmi.local, 1)} | ${fmt(r.pmi.remote, 1)} | ${fmt(r.pmi.ratio)} |`,
      '',
    );
  }
  lines.push(
    `Command: \`${r.from === 'sources' ? '' : 'npm run build && '}SNOWFLOCK_STATE_DIR=/tmp/sfho-state SNOWFLOCK_POOL=10.245.0.0/16 SNOWFLOCK_SIM_POOL=10.236.0.0/16 SNOWFLOCK_SIM_PORTS=16900-16999 SNOWFLOCK_SIM_PREFIX=sfhs ${r.from === 'sources' ? 'npx tsx benchmarks/hosts.ts' : 'node dist/benchmarks/hosts.js'} --rounds ${r.rounds}\` (as root; the state directory must be private to each simulated host: under /tmp or /run; \`--only provision,hello,pingpong,pmi\` for parts; \`npm run bench -- --only hosts\` from dist/ with the default settings).`,
  );
  return lines.join('\n') + '\n';
}

export const hostsBenchmark: Benchmark = {
  name: 'hosts',
  async run({ rounds }) {
    const r = await benchHosts(rounds ?? 5);
    return { data: r, markdown: markdown(r) };
  },
};

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  let rounds = 5;
  let only: Part[] = [...PARTS];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--rounds') rounds = Number(argv[++i]);
    else if (argv[i] === '--only') only = (argv[++i] ?? '').split(',') as Part[];
    else throw new Error(`unknown argument ${argv[i]}; use --rounds R and --only ${PARTS.join(',')}`);
  }
  benchHosts(rounds, only).then(
    (r) => {
      process.stdout.write(markdown(r));
      process.stdout.write(JSON.stringify(r, null, 2) + '\n');
    },
    (e: unknown) => {
      process.stderr.write(`hosts benchmark: ${e instanceof Error ? e.stack : String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
