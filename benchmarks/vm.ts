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
 * Run: npx tsx benchmarks/vm.ts [--sizes 1,8,16,32] [--cold-sizes 1,8,16] [--e2e-sizes 1,8,16,32]
 *      (or through the harness: npm run bench -- --only vm, once registered in run.ts)
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, copyFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { logger } from '../src/log.js';
import { VmProvider, type VmCheckpointDetail } from '../src/providers/vm/index.js';
import { chooseAccel } from '../src/providers/vm/qemu.js';
import type { Checkpoint } from '../src/types.js';
import { program } from '../test/helpers/programs.js';
import { leftovers, testTicket } from '../test/vm-fixture.js';
import type { Benchmark, BenchmarkResult } from './run.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, import.meta.url.endsWith('.ts') ? '..' : '../..');
const log = logger('bench-vm');

export interface VmReadyRow {
  n: number;
  /** null: the run failed (see errors). */
  coldMs: number | null;
  cloneMs: number | null;
  /** cold / clone */
  ratio: number | null;
  coldPssMiB: number | null;
  clonePssMiB: number | null;
  errors: string[];
}

export interface VmE2eRow {
  np: number;
  agentS: number | null;
  sshS: number | null;
}

function pssMiB(pids: number[]): number {
  let kb = 0;
  for (const pid of pids) {
    const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    kb += Number(m?.[1] ?? 0);
  }
  return kb / 1024;
}

/** N VMs ready, cold or cloned: wall ms and summed PSS (null and why, when it failed); everything removed afterwards. */
async function readyOnce(provider: VmProvider, checkpoint: Checkpoint, stateDir: string, n: number, coldBoot: boolean) {
  try {
    return await readyRun(provider, checkpoint, stateDir, n, coldBoot);
  } catch (e) {
    const error = `${coldBoot ? 'cold' : 'clone'} N=${n}: ${(e as Error).message}`;
    process.stderr.write(`bench vm: ${error}\n`);
    return { ms: null, pss: null, error };
  }
}

async function readyRun(provider: VmProvider, checkpoint: Checkpoint, stateDir: string, n: number, coldBoot: boolean): Promise<{ ms: number | null; pss: number | null; error?: string }> {
  const t = await testTicket(stateDir, n);
  try {
    const t0 = performance.now();
    await provider.createClones({ ticket: t.ticket, ledger: t.ledger, log, coldBoot }, checkpoint, n);
    const ms = performance.now() - t0;
    const pids = t.ledger.record.resources.flatMap((r) => (r.kind === 'process' ? [r.pid] : []));
    return { ms, pss: pssMiB(pids) };
  } finally {
    const failed = await t.teardown();
    const left = leftovers(t.ticket.id);
    if (failed.length || left.length) throw new Error(`ticket ${t.ticket.id} left: ${[...failed, ...left].join('; ')}`);
  }
}

function sfmpirun(np: number, channel: 'agent' | 'ssh', cwd: string, stateDir: string): number | null {
  const t0 = performance.now();
  const r = spawnSync(
    'node',
    ['--import', join(root, 'node_modules/tsx/dist/esm/index.mjs'), join(root, 'launcher/sfmpirun.ts'), '--provider', 'vm', '-np', String(np), './hello'],
    { cwd, env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir, SNOWFLOCK_LAUNCH_CHANNEL: channel }, stdio: ['ignore', 'pipe', 'pipe'], timeout: 150_000, encoding: 'utf8' },
  );
  const s = (performance.now() - t0) / 1000;
  const lines = (r.stdout ?? '').split('\n').filter((l) => l.startsWith('hello rank')).length;
  if (r.status !== 0 || lines !== np) {
    process.stderr.write(`bench vm: sfmpirun -np ${np} (${channel}) failed: status ${r.status}, ${lines} lines; ${(r.stderr ?? '').trim().split('\n').slice(-3).join(' | ')}\n`);
    return null;
  }
  return s;
}

export async function benchVm(sizes = [1, 8, 16, 32], e2eSizes = [1, 8, 16, 32], coldSizes = sizes): Promise<{ data: unknown; ready: VmReadyRow[]; e2e: VmE2eRow[] }> {
  process.env.SNOWFLOCK_VM_BOOT_TIMEOUT ??= '300';
  process.env.SNOWFLOCK_VM_READY_TIMEOUT ??= '300';
  const provider = new VmProvider();
  const why = await provider.unavailable();
  if (why) throw new Error(`bench vm: ${why}`);
  const stateDir = mkdtempSync(join(tmpdir(), 'sf-bench-vm-'));
  const load = loadavg()[0]!;
  const ready: VmReadyRow[] = [];
  const e2e: VmE2eRow[] = [];
  try {
    const t0 = performance.now();
    const checkpoint = await provider.checkpoint({ provider: 'vm', programs: [], mpi: 'none' }, log);
    const templateMs = performance.now() - t0;
    await readyOnce(provider, checkpoint, stateDir, 1, false); // warm-up: page cache, first QEMU start
    for (const n of sizes) {
      const clone = await readyOnce(provider, checkpoint, stateDir, n, false);
      const cold = coldSizes.includes(n) ? await readyOnce(provider, checkpoint, stateDir, n, true) : { ms: null, pss: null, error: `cold N=${n}: not run (--cold-sizes)` };
      const ratio = cold.ms !== null && clone.ms !== null ? cold.ms / clone.ms : null;
      const errors = [cold.error, clone.error].filter((x): x is string => !!x);
      ready.push({ n, coldMs: cold.ms, cloneMs: clone.ms, ratio, coldPssMiB: cold.pss, clonePssMiB: clone.pss, errors });
      process.stderr.write(`bench vm: N=${n} cold ${cold.ms?.toFixed(0)} ms, clone ${clone.ms?.toFixed(0)} ms\n`);
    }
    // End to end: a small working directory with the MPICH hello (it is copied into the image).
    const cwd = mkdtempSync(join(tmpdir(), 'sf-bench-vm-cwd-'));
    try {
      copyFileSync(program('hello'), join(cwd, 'hello'));
      sfmpirun(1, 'agent', cwd, stateDir); // builds the job's image and template once
      for (const np of e2eSizes) {
        e2e.push({ np, agentS: sfmpirun(np, 'agent', cwd, stateDir), sshS: sfmpirun(np, 'ssh', cwd, stateDir) });
        process.stderr.write(`bench vm: e2e np=${np} ${JSON.stringify(e2e.at(-1))}\n`);
      }
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
    const { template } = checkpoint.detail as unknown as VmCheckpointDetail;
    const data = { when: new Date().toISOString(), cpus: cpus().length, loadAverage1m: load, accel: chooseAccel(), guestRamMiB: template.ramMiB, templateMs, ready, e2e };
    return { data, ready, e2e };
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
    '| N | cold boot | clone | boot / clone | PSS cold | PSS clones | N × guest RAM |',
    '|---:|---:|---:|---:|---:|---:|---:|',
    ...r.ready.map(
      (x) =>
        `| ${x.n} | ${f(x.coldMs && x.coldMs / 1000)} | ${f(x.cloneMs && x.cloneMs / 1000)} | ${x.ratio === null ? '–' : `${x.ratio.toFixed(1)}×`} | ` +
        `${f(x.coldPssMiB, 'MiB', 0)} | ${f(x.clonePssMiB, 'MiB', 0)} | ${x.n * d.guestRamMiB} MiB |`,
    ),
    ...r.ready.flatMap((x) => x.errors).map((e) => `\nFailed: ${e}`),
    '',
    'End to end, `sfmpirun --provider vm -np N ./hello` (MPICH, one rank per VM clone, template cached), ranks started through the guest agent and through SSH:',
    '',
    '| np | agent | SSH |',
    '|---:|---:|---:|',
    ...r.e2e.map((x) => `| ${x.np} | ${f(x.agentS)} | ${f(x.sshS)} |`),
    '',
    'Command: `npx tsx benchmarks/vm.ts` (as root; SnowFlock reported new workers about 20 times faster than booting).',
    '',
  ].join('\n');
}

export const vmBenchmark: Benchmark = {
  name: 'vm',
  async run(): Promise<BenchmarkResult> {
    const r = await benchVm();
    return { data: r.data, markdown: markdown(r) };
  },
};

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1]!.split(',').map(Number) : undefined;
  };
  const { writeSection } = await import('./run.js');
  const { writeFileSync, mkdirSync } = await import('node:fs');
  const r = await benchVm(arg('--sizes'), arg('--e2e-sizes'), arg('--cold-sizes') ?? arg('--sizes'));
  mkdirSync(join(root, 'benchmarks', 'out'), { recursive: true });
  writeFileSync(join(root, 'benchmarks', 'out', 'vm.json'), JSON.stringify(r.data, null, 2) + '\n');
  const md = markdown(r);
  writeSection('vm', md);
  process.stdout.write(md);
}
