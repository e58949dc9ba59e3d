/**
 * VM clones against cold boots, side by side in one run, for N = 1, 8, 16, 32:
 *   - time until all N VMs are ready (agent answered with the clone's identity applied), by
 *     booting each from the image (--cold-boot) and by cloning the cached template;
 *   - the N QEMU processes' summed PSS right after, both ways (copy on write shares the template's RAM);
 *   - end to end, `sfmpirun --provider vm -np N hello` (MPICH) with ranks launched through the
 *     guest agent and through SSH.
 * Under TCG (no hardware virtualization here) everything in the guest is emulated; the ratio
 * boot/clone is the number to compare with SnowFlock's (new workers 20 times faster than booting).
 *
 * Also whole `snowflock run -n N --provider vm -- true`, with another build's (--baseline
 * OTHER/dist/launcher/bin/sfmpirun.js: its snowflock.js beside it) in turn.
 *
 * Run: node dist/benchmarks/vm.js [--sizes 1,8,16,32] [--cold-sizes 1,8,16] [--run-sizes 8,16,32] [--e2e-sizes 1,8,16,32] [--baseline P]
 *      (or through the harness: npm run bench -- --only vm, once registered in run.ts)
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { rereadSettings, settings } from '../src/common/config.js';
import { Engine } from '../src/engine.js';
import type { Checkpoint } from '../src/providers/checkpoint.js';
import { chooseAccel } from '../src/providers/vm/machine.js';
import type { CloneTimings, VmClone } from '../src/providers/vm/clone.js';
import { VmProvider, type VmCheckpointDetail } from '../src/providers/vm/provider.js';
import type { StateRecord } from '../src/ticket/record.js';
import { benchProgram } from './lib/programs.js';
import type { Benchmark, BenchmarkResult } from './run.js';
import { projectRoot } from '../src/common/paths.js';

const root = projectRoot();
/** The benchmark's own address pool (SNOWFLOCK_POOL when set: the host is shared). */
const POOL = process.env.SNOWFLOCK_POOL || '10.242.0.0/16';

export interface VmReadyRow {
  n: number;
  /** null: the run failed (see errors). */
  coldMs: number | null;
  cloneMs: number | null;
  /** cold / clone */
  ratio: number | null;
  coldPssMiB: number | null;
  clonePssMiB: number | null;
  /** The clones' PSS SETTLE_MS after they were ready. */
  cloneSettledPssMiB: number | null;
  /** CPU seconds the N clones' processes had used when all were ready. */
  cloneCpuS: number | null;
  coldCpuS: number | null;
  /** Where a clone's start went: the median over the N clones of each mark (ms from its QEMU's spawn). */
  cloneMarks: Partial<CloneTimings> | null;
  coldMarks: Partial<CloneTimings> | null;
  errors: string[];
}

/** The median of each mark over the clones. */
function medianMarks(all: CloneTimings[]): Partial<CloneTimings> {
  const out: Partial<CloneTimings> = {};
  for (const k of ['started', 'qmp', 'loaded', 'running', 'hello', 'ready'] as const) {
    const xs = all.map((t) => t[k]).filter((x): x is number => x !== undefined).sort((a, b) => a - b);
    if (xs.length) out[k] = xs[Math.floor(xs.length / 2)]!;
  }
  return out;
}

/** Whole `snowflock run -n N --provider vm -- true`: wall seconds and its report's provision phase (template cached). */
export interface VmRunRow {
  n: number;
  wallS: number | null;
  provisionS: number | null;
  /** The same with the baseline build's snowflock (--baseline), in turn with this one's. */
  baselineWallS?: number | null;
  baselineProvisionS?: number | null;
}

export interface VmE2eRow {
  np: number;
  agentS: number | null;
  sshS: number | null;
}

/** A process and all its descendants (a recorded PID is QEMU's lifeline; QEMU is its child). */
function withDescendants(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length; i++) {
    try {
      for (const tid of readdirSync(`/proc/${out[i]}/task`)) {
        const kids = readFileSync(`/proc/${out[i]}/task/${tid}/children`, 'utf8').trim();
        if (kids) out.push(...kids.split(/\s+/).map(Number));
      }
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/** CPU seconds (user + system) the processes and everything they started have used so far. */
export function cpuSeconds(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids.flatMap(withDescendants)) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]);
    } catch {
      /* gone meanwhile */
    }
  }
  return ticks / 100; // USER_HZ
}

/** Summed PSS of the processes and everything they started. */
export function pssMiB(pids: number[]): number {
  let kb = 0;
  for (const pid of pids.flatMap(withDescendants)) {
    try {
      const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
      kb += Number(m?.[1] ?? 0);
    } catch {
      /* gone meanwhile */
    }
  }
  return kb / 1024;
}

/** N VMs ready, cold or cloned: wall ms and summed PSS (null and why, when it failed); everything removed afterwards. */
async function readyOnce(engine: Engine, checkpoints: Record<'cold' | 'clone', Checkpoint>, n: number, coldBoot: boolean) {
  try {
    return await readyRun(engine, checkpoints[coldBoot ? 'cold' : 'clone'], n);
  } catch (e) {
    const error = `${coldBoot ? 'cold' : 'clone'} N=${n}: ${(e as Error).message}`;
    process.stderr.write(`bench vm: ${error}\n`);
    return { ms: null, pss: null, settledPss: null, marks: null, error };
  }
}

/** How long after READY the second PSS reading is taken. */
const SETTLE_MS = 5000;

async function readyRun(
  engine: Engine,
  checkpoint: Checkpoint,
  n: number,
): Promise<{ ms: number | null; pss: number | null; settledPss: number | null; cpu?: number; marks: Partial<CloneTimings> | null; error?: string }> {
  const t = await engine.requestTicket(n, { provider: 'vm' });
  try {
    const t0 = performance.now();
    const clones = (await engine.createClones(t, checkpoint)) as VmClone[];
    const ms = performance.now() - t0;
    const record = JSON.parse(readFileSync(join(engine.stateDir, 'tickets', `${t.id}.json`), 'utf8')) as StateRecord;
    const pids = record.resources.flatMap((r) => (r.kind === 'process' ? [r.pid] : []));
    const marks = medianMarks(clones.flatMap((c) => (c.timings ? [c.timings] : [])));
    const pss = pssMiB(pids);
    const cpu = cpuSeconds(pids);
    // And once the guests have settled (their agents keep working a little after READY).
    await new Promise((r) => setTimeout(r, SETTLE_MS));
    const settled = pssMiB(pids);
    process.stderr.write(`bench vm: N=${n} PSS at ready ${pss.toFixed(0)} MiB, ${SETTLE_MS / 1000} s later ${settled.toFixed(0)} MiB; CPU at ready ${cpu.toFixed(2)} s\n`);
    return { ms, pss, settledPss: settled, cpu, marks };
  } finally {
    const report = await engine.kill(t);
    if (report.failed.length) throw new Error(`ticket ${t.id} left: ${report.failed.join('; ')}`);
  }
}

function sfmpirun(np: number, channel: 'agent' | 'ssh', cwd: string, stateDir: string): number | null {
  const t0 = performance.now();
  // The built command, as users run it (from the sources through tsx when there is no build).
  const dist = join(root, 'dist/launcher/bin/sfmpirun.js');
  const sf = existsSync(dist) ? [dist] : ['--import', join(root, 'node_modules/tsx/dist/esm/index.mjs'), join(root, 'launcher/bin/sfmpirun.ts')];
  const r = spawnSync(
    process.execPath,
    [...sf, '--provider', 'vm', '-np', String(np), './hello'],
    { cwd, env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir, SNOWFLOCK_POOL: POOL, SNOWFLOCK_LAUNCH_CHANNEL: channel }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 150_000, encoding: 'utf8' },
  );
  const s = (performance.now() - t0) / 1000;
  const lines = (r.stdout ?? '').split('\n').filter((l) => l.startsWith('hello rank')).length;
  if (r.status !== 0 || lines !== np) {
    process.stderr.write(`bench vm: sfmpirun -np ${np} (${channel}) failed: status ${r.status}, ${lines} lines; ${(r.stderr ?? '').trim().split('\n').slice(-3).join(' | ')}\n`);
    return null;
  }
  return s;
}

/**
 * `snowflock run -n N --provider vm -- true` with the given build's snowflock.js; with `report`
 * (a build that has -q and --report), its report's provision phase too.
 */
function snowflockRun(bin: string, n: number, stateDir: string, report: boolean): { wallS: number | null; provisionS: number | null } {
  const file = join(stateDir, `run-report-${n}.json`);
  rmSync(file, { force: true });
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [bin, 'run', '-n', String(n), '--provider', 'vm', ...(report ? ['-q', '--report', file] : []), '--', 'true'], {
    env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir, SNOWFLOCK_POOL: POOL },
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 300_000,
    encoding: 'utf8',
  });
  const wallS = (performance.now() - t0) / 1000;
  if (r.status !== 0) {
    process.stderr.write(`bench vm: ${bin} run -n ${n} failed: status ${r.status}; ${(r.stderr ?? '').trim().split('\n').slice(-3).join(' | ')}\n`);
    return { wallS: null, provisionS: null };
  }
  let provisionS: number | null = null;
  try {
    const phases = (JSON.parse(readFileSync(file, 'utf8')) as { phases?: Record<string, number> }).phases;
    provisionS = phases?.provision !== undefined ? phases.provision / 1000 : null;
  } catch {
    /* a build without --report: wall time only */
  }
  return { wallS, provisionS };
}

/** Whether a build's `snowflock run` has --report (older baselines do not). */
function hasReport(bin: string): boolean {
  const r = spawnSync(process.execPath, [bin, 'run', '--help'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  return /--report\b/.test(r.stdout ?? '');
}

/** The template (for clones) and the image alone (for cold boots), made through a ticket of one. */
async function makeCheckpoints(engine: Engine): Promise<Record<'cold' | 'clone', Checkpoint>> {
  const t = await engine.requestTicket(1, { provider: 'vm' });
  try {
    const clone = await engine.checkpoint(t, { programs: [], mpi: 'none' });
    const cold = await engine.checkpoint(t, { programs: [], mpi: 'none', coldBoot: true });
    return { clone, cold };
  } finally {
    await engine.kill(t);
  }
}

export async function benchVm(
  sizes = [1, 8, 16, 32],
  e2eSizes = [1, 8, 16, 32],
  coldSizes = sizes,
  runSizes = sizes,
  baseline?: string,
): Promise<{ data: unknown; ready: VmReadyRow[]; e2e: VmE2eRow[]; runs: VmRunRow[]; baselineFrom?: string; argv: string }> {
  process.env.SNOWFLOCK_VM_BOOT_TIMEOUT ??= '300';
  process.env.SNOWFLOCK_VM_READY_TIMEOUT ??= '300';
  rereadSettings();
  const why = await new VmProvider(settings().nativeDir).unavailable();
  if (why) throw new Error(`bench vm: ${why}`);
  const stateDir = mkdtempSync(join(tmpdir(), 'sf-bench-vm-'));
  const engine = new Engine({ stateDir, pool: POOL });
  const load = loadavg()[0]!;
  const ready: VmReadyRow[] = [];
  const e2e: VmE2eRow[] = [];
  const runs: VmRunRow[] = [];
  try {
    const t0 = performance.now();
    const checkpoints = await makeCheckpoints(engine);
    const templateMs = performance.now() - t0;
    await readyOnce(engine, checkpoints, 1, false); // warm-up: page cache, first QEMU start
    for (const n of sizes) {
      const clone = await readyOnce(engine, checkpoints, n, false);
      const cold = coldSizes.includes(n) ? await readyOnce(engine, checkpoints, n, true) : { ms: null, pss: null, settledPss: null, marks: null, error: `cold N=${n}: not run (--cold-sizes)` };
      const ratio = cold.ms !== null && clone.ms !== null ? cold.ms / clone.ms : null;
      const errors = [cold.error, clone.error].filter((x): x is string => !!x);
      ready.push({ n, coldMs: cold.ms, cloneMs: clone.ms, ratio, coldPssMiB: cold.pss, clonePssMiB: clone.pss, cloneSettledPssMiB: clone.settledPss, cloneCpuS: clone.cpu ?? null, coldCpuS: cold.cpu ?? null, cloneMarks: clone.marks, coldMarks: cold.marks, errors });
      process.stderr.write(`bench vm: N=${n} cold ${cold.ms?.toFixed(0)} ms, clone ${clone.ms?.toFixed(0)} ms (${JSON.stringify(clone.marks)}), PSS ${clone.pss?.toFixed(0)} MiB\n`);
    }
    // Whole `snowflock run`, this build and the baseline's in turn (each first once to make its template).
    const mine = join(root, 'dist/launcher/bin/snowflock.js');
    const theirs = baseline ? join(dirname(resolve(baseline)), 'snowflock.js') : null;
    const theirsReport = theirs ? hasReport(theirs) : false;
    if (runSizes.length) {
      snowflockRun(mine, 1, stateDir, true);
      if (theirs) snowflockRun(theirs, 1, stateDir, theirsReport);
    }
    for (const n of runSizes) {
      const a = snowflockRun(mine, n, stateDir, true);
      const b = theirs ? snowflockRun(theirs, n, stateDir, theirsReport) : null;
      runs.push({ n, wallS: a.wallS, provisionS: a.provisionS, ...(b ? { baselineWallS: b.wallS, baselineProvisionS: b.provisionS } : {}) });
      process.stderr.write(`bench vm: snowflock run -n ${n}: ${JSON.stringify(runs.at(-1))}\n`);
    }
    // End to end: a working directory with the MPICH hello (the clones mount it from the host).
    const cwd = mkdtempSync(join(tmpdir(), 'sf-bench-vm-cwd-'));
    try {
      if (e2eSizes.length) {
        copyFileSync(benchProgram('hello'), join(cwd, 'hello'));
        sfmpirun(1, 'agent', cwd, stateDir); // builds the job's image and template once
      }
      for (const np of e2eSizes) {
        e2e.push({ np, agentS: sfmpirun(np, 'agent', cwd, stateDir), sshS: sfmpirun(np, 'ssh', cwd, stateDir) });
        process.stderr.write(`bench vm: e2e np=${np} ${JSON.stringify(e2e.at(-1))}\n`);
      }
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
    const template = (checkpoints.clone as Checkpoint<VmCheckpointDetail>).detail.template!;
    const argv = `--sizes ${sizes.join(',')} --cold-sizes ${coldSizes.join(',') || "''"} --run-sizes ${runSizes.join(',') || "''"} --e2e-sizes ${e2eSizes.join(',') || "''"}${baseline ? ` --baseline ${baseline}` : ''}`;
    const data = { when: new Date().toISOString(), cpus: cpus().length, loadAverage1m: load, accel: chooseAccel(), guestRamMiB: template.ramMiB, templateMs, ready, runs, e2e, argv, ...(baseline ? { baselineFrom: baseline } : {}) };
    return { data, ready, e2e, runs, argv, ...(baseline ? { baselineFrom: baseline } : {}) };
  } finally {
    rmSync(stateDir, { recursive: true, force: true });
  }
}

export function markdown(r: Awaited<ReturnType<typeof benchVm>>): string {
  const d = r.data as { when: string; cpus: number; loadAverage1m: number; accel: string; guestRamMiB: number };
  const f = (x: number | null, unit = 's', digits = 2) => (x === null ? 'failed' : `${x.toFixed(digits)} ${unit}`);
  return [
    '## VM clones: cold boot against cloning the template',
    '',
    `Time until all N VMs are ready (QEMU started, guest agent has applied the clone's identity and answered), ` +
      `booting each VM from the image (\`--cold-boot\`) and cloning the cached template (RAM file mapped copy on write, ` +
      `device state loaded), measured side by side; the QEMU processes' summed PSS right after. ` +
      `${d.accel.toUpperCase()} (no hardware virtualization on this host), guest RAM ${d.guestRamMiB} MiB, ` +
      `${d.cpus} cores shared with other jobs (load average ${d.loadAverage1m.toFixed(1)} at the start), ${d.when}.`,
    '',
    '| N | cold boot | clone | boot / clone | PSS cold | PSS clones | same, 5 s later | N × guest RAM | PSS clones / N × guest RAM | CPU of clones until ready |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
    ...r.ready.map(
      (x) =>
        `| ${x.n} | ${x.coldMs === null ? 'not run' : f(x.coldMs / 1000)} | ${f(x.cloneMs && x.cloneMs / 1000)} | ${x.ratio === null ? '–' : `${x.ratio.toFixed(1)}×`} | ` +
        `${x.coldPssMiB === null ? '–' : f(x.coldPssMiB, 'MiB', 0)} | ${f(x.clonePssMiB, 'MiB', 0)} | ${f(x.cloneSettledPssMiB, 'MiB', 0)} | ${x.n * d.guestRamMiB} MiB | ` +
        `${x.clonePssMiB === null ? '–' : `${((100 * x.clonePssMiB) / (x.n * d.guestRamMiB)).toFixed(1)}%`} | ${f(x.cloneCpuS)} |`,
    ),
    ...(r.runs.length
      ? [
          '',
          `Whole \`snowflock run -n N --provider vm -- true\` (template cached; provision is its report's phase: ticket, network, N clones ready, the working directory mounted in each)${r.baselineFrom ? `, this build and the baseline (${r.baselineFrom.replace(/sfmpirun\.js$/, 'snowflock.js')}) in turn` : ''}:`,
          '',
          '| N | wall | provision |' + (r.baselineFrom ? ' baseline wall | baseline provision | wall this / baseline |' : ''),
          '|---:|---:|---:|' + (r.baselineFrom ? '---:|---:|---:|' : ''),
          ...r.runs.map(
            (x) =>
              `| ${x.n} | ${f(x.wallS)} | ${f(x.provisionS)} |` +
              (r.baselineFrom
                ? ` ${f(x.baselineWallS ?? null)} | ${x.baselineProvisionS == null ? '–' : f(x.baselineProvisionS)} | ${x.wallS && x.baselineWallS ? (x.wallS / x.baselineWallS).toFixed(2) : '–'} |`
                : ''),
          ),
        ]
      : []),
    ...r.ready.flatMap((x) => x.errors.filter((e) => !/not run/.test(e))).map((e) => `\nFailed: ${e}`),
    '',
    ...(r.e2e.length
      ? [
          'End to end, `sfmpirun --provider vm -np N ./hello` (MPICH, one rank per VM clone, template cached), ranks started through the guest agent and through SSH:',
          '',
          '| np | agent | SSH |',
          '|---:|---:|---:|',
          ...r.e2e.map((x) => `| ${x.np} | ${f(x.agentS)} | ${f(x.sshS)} |`),
          '',
        ]
      : []),
    `Command: \`npm run build && node dist/benchmarks/vm.js ${r.argv}\` (as root; SnowFlock reported new workers about 20 times faster than booting).`,
    '',
  ].join('\n');
}

export const vmBenchmark: Benchmark = {
  name: 'vm',
  async run({ baseline }): Promise<BenchmarkResult> {
    const r = await benchVm(undefined, undefined, undefined, undefined, baseline);
    return { data: r.data, markdown: markdown(r) };
  },
};

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? (process.argv[i + 1] ?? '').split(',').filter(Boolean).map(Number) : undefined;
  };
  const { writeSection } = await import('./run.js');
  const { writeFileSync, mkdirSync } = await import('node:fs');
  const b = process.argv.indexOf('--baseline');
  const r = await benchVm(arg('--sizes'), arg('--e2e-sizes'), arg('--cold-sizes') ?? arg('--sizes'), arg('--run-sizes') ?? arg('--sizes'), b > 0 ? process.argv[b + 1] : undefined);
  mkdirSync(join(root, 'benchmarks', 'out'), { recursive: true });
  writeFileSync(join(root, 'benchmarks', 'out', 'vm.json'), JSON.stringify(r.data, null, 2) + '\n');
  const md = markdown(r);
  writeSection('vm', md);
  process.stdout.write(md);
}
