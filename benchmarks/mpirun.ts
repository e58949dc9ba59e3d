/**
 * Startup overhead of sfmpirun against the native launchers, side by side in one run:
 *   sfmpirun --provider netns -np N hello   (MPICH hello through our PMI server, N fresh clones)
 *   mpiexec.hydra -n N hello                (MPICH's own launcher, on the host)
 *   mpirun.openmpi -np N hello              (Open MPI's own launcher, on the host, its own hello)
 * for N = 1, 8, 32. Each round runs every launcher once, in turn, so that the machine's load falls on
 * all of them alike; the medians and the ratios sfmpirun / native go to benchmarks/out/mpirun.json and
 * to the mpirun section of benchmarks/RESULTS.md.
 *
 * With a warm service (`snowflock warm`, src/warm/) running on a state directory of its own, each
 * round also runs sfmpirun on its networks (the warm figure; the plain sfmpirun column is the cold
 * one, SNOWFLOCK_WARM=off), and after the rounds the service's idle cost is measured: its CPU over
 * an idle stretch, and the PSS of the service and of its networks' reapers.
 *
 * Also the commands' own start: `sfmpirun --version` and `--help` against `node -e 0` (Node's own
 * start, the floor under any command written for Node). With a baseline (another build's
 * sfmpirun.js, e.g. of main), every sfmpirun figure is measured for it too, in the same rounds.
 *
 * Run: npm run build && npm run bench -- --only mpirun [--rounds R] [--baseline OTHER/dist/launcher/bin/sfmpirun.js]
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { benchProgram } from './lib/programs.js';
import { projectRoot } from '../src/common/paths.js';
import type { StateRecord } from '../src/ticket/record.js';
import { ask } from '../src/warm/client.js';
import type { WarmStatus } from '../src/warm/protocol.js';
import { median } from './lib/stats.js';

const root = projectRoot();

export interface MpirunBenchRow {
  np: number;
  /** Median wall seconds per launcher. */
  sfmpirun: number;
  /** sfmpirun with every rank in one clone (-ppn N): the launcher's own cost, without MPI over TCP between clones. */
  sfmpirunOneClone: number;
  hydra: number;
  openmpi: number;
  /** sfmpirun / hydra, sfmpirun / openmpi. */
  vsHydra: number;
  vsOpenmpi: number;
  /** Runs that failed and were run again, per launcher. */
  failures: { sfmpirun: number; hydra: number; openmpi: number };
  /** The baseline build's sfmpirun, N clones and one clone (when one was given). */
  baseline?: { sfmpirun: number; sfmpirunOneClone: number };
  /** sfmpirun taking its network from the warm service (median seconds), and how many runs did (a run finding none ready makes its own). */
  warm?: { sfmpirun: number; leased: number };
}

/** What the warm service costs while it waits: CPU share over an idle stretch, memory. */
export interface WarmIdleCost {
  networks: number;
  idleSeconds: number;
  /** CPU seconds of the service per second of wall time, in percent of one core. */
  cpuPercent: number;
  /** PSS of the service process, and of all its reapers together (MiB). */
  servicePssMiB: number;
  reapersPssMiB: number;
}

/** A command's own start: median wall seconds of `sfmpirun --version`, `--help`, and `node -e 0`. */
export interface StartRow {
  what: '--version' | '--help';
  sfmpirun: number;
  baseline?: number;
  node: number;
}

export interface MpirunBenchResult {
  when: string;
  rounds: number;
  /** 1-minute load average before and after: the machine is shared, the ratios are side by side. */
  load: [number, number];
  /** How sfmpirun was started: the compiled bin, or the TypeScript sources through tsx. */
  sfmpirunFrom: 'dist' | 'tsx';
  rows: MpirunBenchRow[];
  starts: StartRow[];
  /** The baseline's sfmpirun.js, when one was measured. */
  baselineFrom?: string;
  warmIdle?: WarmIdleCost;
}


/**
 * Wall seconds of one successful run. A failed run is counted and run again (up to 3 tries): its
 * time would measure the failure, not the launch. Throws when every try failed.
 */
function timeRun(argv: string[], env: NodeJS.ProcessEnv, failures: { count: number }): number {
  let last = '';
  for (let attempt = 0; attempt < 3; attempt++) {
    const t0 = performance.now();
    const r = spawnSync(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'ignore', 'pipe'], timeout: 300000 });
    const seconds = (performance.now() - t0) / 1000;
    if (r.status === 0) return seconds;
    failures.count++;
    last = `${argv.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr?.toString().slice(0, 2000)}`;
    process.stderr.write(`${last}\n`);
  }
  throw new Error(last);
}

/** `snowflock warm --networks N` on a state directory of its own, once its networks are ready. */
async function startWarm(snowflock: string[], networks: number): Promise<{ child: ChildProcess; stateDir: string; stop(): Promise<void> }> {
  const stateDir = mkdtempSync(join(tmpdir(), 'sf-bench-warm-'));
  const child = spawn(snowflock[0]!, [...snowflock.slice(1), 'warm', '--networks', String(networks)], { env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir }, stdio: ['ignore', 'ignore', 'pipe'] });
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    let err = '';
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      if (err.includes('ready for jobs')) resolve();
    });
    void closed.then(() => reject(new Error(`snowflock warm ended: ${err}`)));
  });
  return {
    child,
    stateDir,
    stop: async () => {
      child.kill('SIGTERM');
      await closed;
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

const cpuSeconds = (pid: number): number => {
  const rest = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(rest[11]) + Number(rest[12])) / 100; // utime, stime in clock ticks (USER_HZ 100)
};
const pssMiB = (pid: number): number => Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1] ?? 0) / 1024;

/** The service's CPU over `seconds` of idleness, and the PSS of it and of the reapers its records name. */
async function warmIdleCost(service: { child: ChildProcess; stateDir: string }, networks: number, seconds: number): Promise<WarmIdleCost> {
  const pid = service.child.pid!;
  await new Promise((r) => setTimeout(r, 2000)); // the last job's network torn down, a fresh one made
  const c0 = cpuSeconds(pid);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const cpu = cpuSeconds(pid) - c0;
  const wall = (performance.now() - t0) / 1000;
  const tickets = join(service.stateDir, 'tickets');
  const reapers = readdirSync(tickets)
    .filter((f) => f.endsWith('.json'))
    .flatMap((f) => (JSON.parse(readFileSync(join(tickets, f), 'utf8')) as StateRecord).resources)
    .flatMap((r) => (r.kind === 'process' && r.what === 'reaper' ? [r.pid] : []));
  return { networks, idleSeconds: Math.round(wall), cpuPercent: (100 * cpu) / wall, servicePssMiB: pssMiB(pid), reapersPssMiB: reapers.reduce((a, p) => a + pssMiB(p), 0) };
}

/** `sfmpirun --version` and `--help`, and `node -e 0`, in turn, `rounds` times. */
function benchStarts(sf: string[], baseline: string[] | null, rounds: number): StartRow[] {
  const rows: StartRow[] = [];
  for (const what of ['--version', '--help'] as const) {
    const t = { sf: [] as number[], base: [] as number[], node: [] as number[] };
    const f = { count: 0 };
    for (let i = 0; i < rounds * 3; i++) {
      t.sf.push(timeRun([...sf, what], process.env, f));
      if (baseline) t.base.push(timeRun([...baseline, what], process.env, f));
      t.node.push(timeRun([process.execPath, '-e', '0'], process.env, f));
    }
    rows.push({ what, sfmpirun: median(t.sf), ...(baseline ? { baseline: median(t.base) } : {}), node: median(t.node) });
    process.stderr.write(`${what}: sfmpirun ${median(t.sf).toFixed(3)} s${baseline ? `, baseline ${median(t.base).toFixed(3)} s` : ''}, node -e 0 ${median(t.node).toFixed(3)} s\n`);
  }
  return rows;
}

export async function benchMpirun(opts: { sizes?: number[]; rounds?: number; baseline?: string } = {}): Promise<MpirunBenchResult> {
  const sizes = opts.sizes ?? [1, 8, 32];
  const rounds = opts.rounds ?? 5;
  const helloMpich = benchProgram('hello', 'mpich');
  const helloOmpi = benchProgram('hello', 'openmpi');
  const dist = join(root, 'dist/launcher/bin/sfmpirun.js');
  const sfmpirunFrom = existsSync(dist) ? 'dist' : 'tsx';
  const sf = sfmpirunFrom === 'dist' ? [process.execPath, dist] : [process.execPath, '--import', 'tsx', join(root, 'launcher/bin/sfmpirun.ts')];
  const env = { ...process.env, SNOWFLOCK_WARM: 'off' };
  const snowflock = sfmpirunFrom === 'dist' ? [process.execPath, join(root, 'dist/launcher/bin/snowflock.js')] : [process.execPath, '--import', 'tsx', join(root, 'launcher/bin/snowflock.ts')];
  const warm = await startWarm(snowflock, WARM_NETWORKS);
  const warmEnv = { ...process.env, SNOWFLOCK_STATE_DIR: warm.stateDir, SNOWFLOCK_WARM: 'auto' };
  try {
    const base = opts.baseline ? [process.execPath, resolve(opts.baseline)] : null;
    const rows: MpirunBenchRow[] = [];
    const load0 = loadavg()[0]!;
    const starts = benchStarts(sf, base, rounds);
    for (const np of sizes) {
      const t = { sfmpirun: [] as number[], sfmpirunOneClone: [] as number[], hydra: [] as number[], openmpi: [] as number[], base: [] as number[], baseOne: [] as number[], warm: [] as number[] };
      const leases0 = (await warmStatus(warm.stateDir)).leases;
      const failures = { sfmpirun: { count: 0 }, hydra: { count: 0 }, openmpi: { count: 0 } };
      for (let i = 0; i < rounds; i++) {
        t.sfmpirun.push(timeRun([...sf, '--provider', 'netns', '-np', String(np), helloMpich], env, failures.sfmpirun));
        t.warm.push(timeRun([...sf, '--provider', 'netns', '-np', String(np), helloMpich], warmEnv, failures.sfmpirun));
        if (base) t.base.push(timeRun([...base, '--provider', 'netns', '-np', String(np), helloMpich], env, failures.sfmpirun));
        t.sfmpirunOneClone.push(timeRun([...sf, '--provider', 'netns', '-ppn', String(np), '-np', String(np), helloMpich], env, failures.sfmpirun));
        if (base) t.baseOne.push(timeRun([...base, '--provider', 'netns', '-ppn', String(np), '-np', String(np), helloMpich], env, failures.sfmpirun));
        t.hydra.push(timeRun(['mpiexec.hydra', '-n', String(np), helloMpich], env, failures.hydra));
        t.openmpi.push(timeRun(['mpirun.openmpi', '--allow-run-as-root', '--oversubscribe', '-np', String(np), helloOmpi], env, failures.openmpi));
      }
      const m = { sfmpirun: median(t.sfmpirun), sfmpirunOneClone: median(t.sfmpirunOneClone), hydra: median(t.hydra), openmpi: median(t.openmpi) };
      rows.push({
        np,
        ...m,
        vsHydra: m.sfmpirun / m.hydra,
        vsOpenmpi: m.sfmpirun / m.openmpi,
        failures: { sfmpirun: failures.sfmpirun.count, hydra: failures.hydra.count, openmpi: failures.openmpi.count },
        ...(base ? { baseline: { sfmpirun: median(t.base), sfmpirunOneClone: median(t.baseOne) } } : {}),
        warm: { sfmpirun: median(t.warm), leased: (await warmStatus(warm.stateDir)).leases - leases0 },
      });
      process.stderr.write(
        `np ${np}: sfmpirun ${m.sfmpirun.toFixed(3)} s, warm ${median(t.warm).toFixed(3)} s, one clone ${m.sfmpirunOneClone.toFixed(3)} s, hydra ${m.hydra.toFixed(3)} s, openmpi ${m.openmpi.toFixed(3)} s` +
          (base ? `, baseline ${median(t.base).toFixed(3)} s / one clone ${median(t.baseOne).toFixed(3)} s` : '') +
          '\n',
      );
    }
    const warmIdle = await warmIdleCost(warm, WARM_NETWORKS, WARM_IDLE_SECONDS);
    return { when: new Date().toISOString(), rounds, load: [load0, loadavg()[0]!], sfmpirunFrom, rows, starts, warmIdle, ...(opts.baseline ? { baselineFrom: opts.baseline } : {}) };
  } finally {
    await warm.stop();
  }
}

const WARM_NETWORKS = 2;
const WARM_IDLE_SECONDS = 10;

async function warmStatus(stateDir: string): Promise<WarmStatus> {
  const r = await ask(stateDir, { op: 'status' });
  if (!r?.ok || !r.status) throw new Error('the warm service does not answer');
  return r.status;
}

/** The mpirun section of RESULTS.md, between its markers. */
export function resultsSection(r: MpirunBenchResult): string {
  const f = (x: number) => x.toFixed(3);
  return [
    '<!-- mpirun:begin -->',
    '## sfmpirun startup against the native launchers',
    '',
    `Hello world, median wall time of ${r.rounds} rounds run side by side (${r.when}, sfmpirun from ${r.sfmpirunFrom}, ` +
      `load average ${r.load[0].toFixed(1)} before and ${r.load[1].toFixed(1)} after on this shared 2-core machine); ` +
      'sfmpirun provisions N fresh netns clones (one rank each), runs the MPICH hello through its PMI server, and tears the clones down. ' +
      'Hydra and Open MPI run the ranks directly on the host. "warm": the same sfmpirun with `snowflock warm` running (its networks made ahead; the plain sfmpirun column is cold, SNOWFLOCK_WARM=off).',
    '',
    `Command: \`npm run build && npm run bench -- --only mpirun --rounds ${r.rounds}${r.baselineFrom ? ` --baseline ${r.baselineFrom}` : ''}\` (as root)` +
      (r.baselineFrom ? `; baseline: ${r.baselineFrom}, measured in the same rounds` : ''),
    '',
    '| N | sfmpirun --provider netns (s) | warm (s) | warm / hydra | runs on a warm network | same, -ppn N: one clone (s) | mpiexec.hydra (s) | mpirun.openmpi (s) | sfmpirun / hydra | sfmpirun − hydra | one clone / hydra | sfmpirun / openmpi |' +
      (r.baselineFrom ? ' baseline sfmpirun (s) | baseline one clone (s) | baseline / hydra |' : '') +
      ' failed runs (sf/hydra/ompi) |',
    '|---|---|---|---|---|---|---|---|---|---|---|---|' + (r.baselineFrom ? '---|---|---|' : '') + '---|',
    ...r.rows.map(
      (x) =>
        `| ${x.np} | ${f(x.sfmpirun)} | ${x.warm ? `${f(x.warm.sfmpirun)} | ${(x.warm.sfmpirun / x.hydra).toFixed(2)} | ${x.warm.leased}/${r.rounds}` : '– | – | –'} | ${f(x.sfmpirunOneClone)} | ${f(x.hydra)} | ${f(x.openmpi)} | ${x.vsHydra.toFixed(2)} | ${f(x.sfmpirun - x.hydra)} | ` +
        `${(x.sfmpirunOneClone / x.hydra).toFixed(2)} | ${x.vsOpenmpi.toFixed(2)} | ` +
        (x.baseline ? `${f(x.baseline.sfmpirun)} | ${f(x.baseline.sfmpirunOneClone)} | ${(x.baseline.sfmpirun / x.hydra).toFixed(2)} | ` : '') +
        `${x.failures.sfmpirun}/${x.failures.hydra}/${x.failures.openmpi} |`,
    ),
    '',
    ...(r.warmIdle
      ? [
          `The warm service idle (${r.warmIdle.networks} networks ready, ${r.warmIdle.idleSeconds} s after the rounds): CPU ${r.warmIdle.cpuPercent.toFixed(2)}% of one core; ` +
            `PSS ${r.warmIdle.servicePssMiB.toFixed(1)} MiB (the service) + ${r.warmIdle.reapersPssMiB.toFixed(1)} MiB (its networks' reapers); per network also a bridge, an nftables table and a /24 of the pool.`,
          '',
        ]
      : []),
    `The commands' own start, median of ${r.rounds * 3} runs each, in turn with \`node -e 0\` (Node's start: the floor under any command in Node):`,
    '',
    '| command | sfmpirun (s) |' + (r.baselineFrom ? ' baseline (s) |' : '') + ' node -e 0 (s) | sfmpirun − node |',
    '|---|---|' + (r.baselineFrom ? '---|' : '') + '---|---|',
    ...(r.starts ?? []).map((x) => `| sfmpirun ${x.what} | ${f(x.sfmpirun)} |` + (r.baselineFrom ? ` ${x.baseline === undefined ? '–' : f(x.baseline)} |` : '') + ` ${f(x.node)} | ${f(x.sfmpirun - x.node)} |`),
    '<!-- mpirun:end -->',
  ].join('\n');
}

export function writeResults(r: MpirunBenchResult): void {
  mkdirSync(join(root, 'benchmarks/out'), { recursive: true });
  writeFileSync(join(root, 'benchmarks/out/mpirun.json'), JSON.stringify(r, null, 2) + '\n');
  const file = join(root, 'benchmarks/RESULTS.md');
  const old = existsSync(file) ? readFileSync(file, 'utf8') : '# Benchmark results\n';
  const section = resultsSection(r);
  const next = /<!-- mpirun:begin -->[\s\S]*<!-- mpirun:end -->/.test(old)
    ? old.replace(/<!-- mpirun:begin -->[\s\S]*<!-- mpirun:end -->/, section)
    : `${old.trimEnd()}\n\n${section}\n`;
  writeFileSync(file, next);
}

const invokedDirectly = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (invokedDirectly) {
  const rounds = process.argv[2] ? Number(process.argv[2]) : undefined;
  const result = await benchMpirun({ rounds, baseline: process.argv[3] });
  writeResults(result);
  process.stdout.write(resultsSection(result) + '\n');
}
