/**
 * The shared working directory (issue 15), side by side in one run, through the real engine:
 *   - reading a 1 GiB input (each of 4 clones reads its quarter) and writing 256 MiB of output
 *     (each clone writes its own 64 MiB file), from 4 VM clones through the ticket's file server
 *     (nfs-ganesha, src/workdir/) and from 4 netns clones, which see the host's files directly;
 *     the same busybox dd in both, the input warm in the host's page cache for both;
 *   - the file server: start time, idle cost (RSS, threads, CPU over an idle interval with 4
 *     clients mounted), CPU during the VM reads; mounting in TCG clones (one, then 3 at once);
 *   - the template-reuse saving: a second job of the same program from another directory reuses
 *     the image and template (they are keyed by programs and MPI, not by the directory), so its
 *     checkpoint costs a cache lookup where it used to cost an image build and a template boot.
 * Every output is checked on the host right after the writers exit (no sync in the guest): the
 * close-to-open guarantee jobs rely on.
 *
 * The VM tickets share nothing through the engine; the benchmark runs the sharing steps the vm
 * provider runs (serveShare, mountShare of src/workdir/share.ts) itself, to time them apart.
 *
 * Run (root): SNOWFLOCK_POOL=<a pool of your own> npx tsx benchmarks/workdir.ts [--rounds R] [--dir D] [--no-write]
 *   --dir: where the 1 GiB input and the outputs go (default /var/tmp; not /tmp: netns clones have
 *   a private /tmp); --no-write: print, do not update RESULTS.md.
 */
import { createHash, randomFillSync } from 'node:crypto';
import { closeSync, copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { rereadSettings } from '../src/common/config.js';
import { logger } from '../src/common/log.js';
import { Engine } from '../src/engine.js';
import type { Checkpoint } from '../src/providers/checkpoint.js';
import type { Clone } from '../src/providers/clone.js';
import type { VmCheckpointDetail } from '../src/providers/vm/provider.js';
import type { Ticket } from '../src/ticket/ticket.js';
import { mountInClone } from '../src/workdir/mount.js';
import { serveShare, type ShareContext } from '../src/workdir/share.js';
import { benchProgram } from './lib/programs.js';
import { median, writeSection, type Benchmark } from './run.js';

const log = logger('bench-workdir');
const ENV = { PATH: '/usr/bin:/bin:/usr/sbin:/sbin', HOME: '/root' };
const CLONES = 4;
const INPUT_MIB = 1024;
const OUTPUT_MIB = 256;
const BB = '/bin/busybox';

async function run(c: Clone, script: string): Promise<void> {
  const p = c.spawn([BB, 'sh', '-c', script], { env: ENV, cwd: '/' });
  let err = '';
  p.stdout.resume();
  p.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const s = await p.exited;
  if (s.code !== 0) throw new Error(`${c.hostname}: ${script}: exit ${s.code ?? s.signal}: ${err.trim()}`);
}

/** Wall seconds for all clones to run their script at once. */
async function timedAll(clones: Clone[], script: (i: number) => string): Promise<number> {
  const t0 = performance.now();
  await Promise.all(clones.map((c, i) => run(c, script(i))));
  return (performance.now() - t0) / 1000;
}

const readQuarter = (dir: string) => (i: number) => {
  const part = INPUT_MIB / CLONES;
  return `${BB} dd if=${dir}/input.bin of=/dev/null bs=1M skip=${i * part} count=${part} 2>/dev/null`;
};
/** Each clone writes its own 64 MiB file, no sync. */
const writeOwn = (dir: string) => (i: number) => `${BB} dd if=/dev/zero of=${dir}/out${i}.bin bs=1M count=${OUTPUT_MIB / CLONES} 2>/dev/null`;

function makeInput(dir: string): void {
  const fd = openSync(join(dir, 'input.bin'), 'w');
  const buf = Buffer.alloc(1 << 20);
  for (let i = 0; i < INPUT_MIB; i++) writeSync(fd, randomFillSync(buf));
  closeSync(fd);
}

/** The outputs are complete on the host as soon as the writers have exited. */
function checkOutputs(dir: string): void {
  const zero = createHash('sha256').update(Buffer.alloc((OUTPUT_MIB / CLONES) << 20)).digest('hex');
  for (let i = 0; i < CLONES; i++) {
    const f = join(dir, `out${i}.bin`);
    const sum = createHash('sha256').update(readFileSync(f)).digest('hex');
    if (statSync(f).size !== (OUTPUT_MIB / CLONES) << 20 || sum !== zero) throw new Error(`${f} is incomplete on the host right after its writer exited`);
    rmSync(f);
  }
}

function procStat(pid: number): { cpuTicks: number; rssKiB: number; threads: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return {
    cpuTicks: Number(f[11]) + Number(f[12]),
    rssKiB: Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0),
    threads: Number(/Threads:\s+(\d+)/.exec(status)?.[1] ?? 0),
  };
}

/** PIDs of the ticket's QEMU processes, from its state record. */
function qemuPids(stateDir: string, ticket: Ticket): number[] {
  const record = JSON.parse(readFileSync(join(stateDir, 'tickets', `${ticket.id}.json`), 'utf8')) as { resources: Array<{ kind: string; what?: string; pid?: number }> };
  return record.resources.flatMap((r) => (r.kind === 'process' && r.what?.startsWith('qemu') ? [r.pid!] : []));
}

export interface WorkdirBenchData {
  when: string;
  cpus: number;
  loadAverage1m: number;
  rounds: number;
  vm: { readS: number[]; writeS: number[]; /** CPU seconds during the reads: the 4 QEMUs, the server */ readCpu: { qemuS: number; serverS: number }[] };
  netns: { readS: number[]; writeS: number[] };
  server: { startMs: number[]; idleRssMiB: number; idleThreads: number; idleCpuPercent: number; idleSeconds: number };
  mount: { oneMs: number[]; threeMs: number[] };
  reuse: { firstMs: number; secondMs: number; imageMiB: number };
}

/**
 * The template-reuse saving: the checkpoint of a program no image holds yet (a fresh copy of the
 * benchmarks' MPICH hello: an image build and a template boot), then the same program's again
 * for a job from another directory (the cache). What the first made is removed: its key is ours.
 */
async function templateReuse(engine: Engine, base: string): Promise<WorkdirBenchData['reuse']> {
  const prog = join(base, 'hello-reuse');
  copyFileSync(benchProgram('hello'), prog);
  const source = { programs: [prog], mpi: 'mpich' as const };
  const timeCheckpoint = async (): Promise<{ ms: number; cp: Checkpoint<VmCheckpointDetail> }> => {
    const t = await engine.requestTicket(1, { provider: 'vm', checkpoint: source, share: [base] });
    try {
      const t0 = performance.now();
      const cp = (await engine.checkpoint(t, source)) as Checkpoint<VmCheckpointDetail>;
      return { ms: performance.now() - t0, cp };
    } finally {
      await engine.kill(t);
    }
  };
  const first = await timeCheckpoint();
  try {
    const second = await timeCheckpoint();
    if (second.cp.key !== first.cp.key) throw new Error('bench workdir: the second job did not reuse the first one\'s template');
    return { firstMs: first.ms, secondMs: second.ms, imageMiB: first.cp.detail.image.contentBytes / 1048576 };
  } finally {
    const { image, template } = first.cp.detail;
    if (template) rmSync(template.dir, { recursive: true, force: true });
    rmSync(image.initramfs, { force: true });
    rmSync(image.initramfs.replace(/\.cpio$/, '.json'), { force: true });
  }
}

export async function benchWorkdir(rounds = 3, dir = '/var/tmp'): Promise<WorkdirBenchData> {
  process.env.SNOWFLOCK_VM_BOOT_TIMEOUT ??= '600';
  process.env.SNOWFLOCK_VM_READY_TIMEOUT ??= '300';
  rereadSettings();
  const base = mkdtempSync(join(dir, 'sf-bench-workdir-'));
  const stateDir = join(base, 'state');
  const share = join(base, 'share');
  mkdirSync(share, { recursive: true });
  const data: WorkdirBenchData = {
    when: new Date().toISOString(),
    cpus: cpus().length,
    loadAverage1m: loadavg()[0]!,
    rounds,
    vm: { readS: [], writeS: [], readCpu: [] },
    netns: { readS: [], writeS: [] },
    server: { startMs: [], idleRssMiB: 0, idleThreads: 0, idleCpuPercent: 0, idleSeconds: 10 },
    mount: { oneMs: [], threeMs: [] },
    reuse: { firstMs: 0, secondMs: 0, imageMiB: 0 },
  };
  const engine = new Engine({ stateDir });
  try {
    data.reuse = await templateReuse(engine, share);
    process.stderr.write(`bench workdir: checkpoint of a new program ${data.reuse.firstMs.toFixed(0)} ms, again from another directory ${data.reuse.secondMs.toFixed(0)} ms\n`);

    makeInput(share);
    readFileSync(join(share, 'input.bin')); // warm the host's page cache for both kinds
    const netTicket = await engine.requestTicket(CLONES, { provider: 'netns', share: [share] });
    const nsClones = await engine.createClones(netTicket, await engine.checkpoint(netTicket, {}));

    for (let r = 0; r < rounds; r++) {
      const t = await engine.requestTicket(CLONES, { provider: 'vm' });
      let measuring = true;
      let lost: string | null = null;
      try {
        const vmClones = await engine.createClones(t, await engine.checkpoint(t, { programs: [], mpi: 'none' }));
        // What the vm provider does for a ticket that shares `share`, step by step.
        const ctx: ShareContext = {
          ticket: { ...t, shared: [share] },
          ledger: engine.resources(t),
          log,
          nativeDir: engine.config.nativeDir,
          openPort: (port) => engine.openPort(t, port),
          fail: (line) => {
            if (measuring) lost = line;
          },
        };
        const t0 = performance.now();
        const server = (await serveShare(ctx, Array.from({ length: CLONES }, (_, i) => i)))!;
        data.server.startMs.push(performance.now() - t0);
        const target = { server: server.gateway, port: server.port, dirs: server.dirs };
        let m0 = performance.now();
        await mountInClone(vmClones[0]!, target);
        data.mount.oneMs.push(performance.now() - m0);
        m0 = performance.now();
        await Promise.all(vmClones.slice(1).map((c) => mountInClone(c, target)));
        data.mount.threeMs.push(performance.now() - m0);

        if (r === 0) {
          const a = procStat(server.pid);
          await new Promise((res) => setTimeout(res, data.server.idleSeconds * 1000));
          const b = procStat(server.pid);
          data.server.idleRssMiB = b.rssKiB / 1024;
          data.server.idleThreads = b.threads;
          data.server.idleCpuPercent = ((b.cpuTicks - a.cpuTicks) / 100 / data.server.idleSeconds) * 100;
        }

        // Side by side, alternating which kind goes first.
        const kinds: Array<['vm' | 'netns', Clone[]]> = [['vm', vmClones], ['netns', nsClones]];
        if (r % 2) kinds.reverse();
        const qemus = qemuPids(stateDir, t);
        const cpu = () => ({ qemu: qemus.reduce((a, p) => a + procStat(p).cpuTicks, 0) / 100, server: procStat(server.pid).cpuTicks / 100 });
        for (const [kind, clones] of kinds) {
          const c0 = cpu();
          data[kind].readS.push(await timedAll(clones, readQuarter(share)));
          const c1 = cpu();
          if (kind === 'vm') data.vm.readCpu.push({ qemuS: c1.qemu - c0.qemu, serverS: c1.server - c0.server });
          data[kind].writeS.push(await timedAll(clones, writeOwn(share)));
          checkOutputs(share);
          if (lost) throw new Error(`bench workdir: ${lost}`);
          process.stderr.write(`bench workdir: round ${r} ${kind}: read ${data[kind].readS.at(-1)!.toFixed(2)} s, write ${data[kind].writeS.at(-1)!.toFixed(2)} s\n`);
        }
      } finally {
        measuring = false;
        await engine.kill(t);
      }
    }
    return data;
  } finally {
    await engine.killAll();
    rmSync(base, { recursive: true, force: true });
  }
}

export function workdirMarkdown(d: WorkdirBenchData, command: string): string {
  const mibs = (mib: number, s: number[]) => (mib / median(s)).toFixed(0);
  const row = (what: string, mib: number, vm: number[], ns: number[]) =>
    `| ${what} | ${median(vm).toFixed(2)} s (${mibs(mib, vm)} MiB/s) | ${median(ns).toFixed(2)} s (${mibs(mib, ns)} MiB/s) | ${(median(vm) / median(ns)).toFixed(1)}× |`;
  const s = (ms: number) => (ms / 1000).toFixed(1);
  return `## Shared working directory: VM clones over NFS (nfs-ganesha) vs netns clones

${d.when}, ${d.cpus} CPUs, load average ${d.loadAverage1m.toFixed(1)} at start, TCG guests, median of ${d.rounds} rounds (VM first in even rounds, netns first in odd ones).
4 clones; each reads its quarter of a 1 GiB input (warm in the host's page cache) and writes its own 64 MiB file with busybox dd; outputs checked byte for byte on the host right after the writers exit (no sync).

| 4 clones | VM (NFSv4.2 to ganesha on the gateway) | netns (host files) | VM / netns |
|---|---|---|---|
${row('read 1 GiB in all', INPUT_MIB, d.vm.readS, d.netns.readS)}
${row('write 256 MiB in all', OUTPUT_MIB, d.vm.writeS, d.netns.writeS)}

CPU during the VM reads (median round): the 4 QEMUs ${median(d.vm.readCpu.map((c) => c.qemuS)).toFixed(1)} s, the server ${median(d.vm.readCpu.map((c) => c.serverS)).toFixed(1)} s: the emulated guests, not the server, are the limit.

File server per ticket: start (until it answers on the gateway) ${median(d.server.startMs).toFixed(0)} ms median (${d.server.startMs.map((x) => x.toFixed(0)).join(', ')});
idle with 4 clients mounted: ${d.server.idleRssMiB.toFixed(1)} MiB RSS, ${d.server.idleThreads} threads, ${d.server.idleCpuPercent.toFixed(2)} % of a CPU over ${d.server.idleSeconds} s.
Mount in a TCG clone (NFS modules loaded in the template): one clone ${median(d.mount.oneMs).toFixed(0)} ms, 3 more at once ${median(d.mount.threeMs).toFixed(0)} ms.

Template reuse: the checkpoint of a program no image held yet (an MPICH hello, image ${d.reuse.imageMiB.toFixed(0)} MiB: image build and template boot) took ${s(d.reuse.firstMs)} s;
a second job of the same program from another directory reused both, its checkpoint took ${s(d.reuse.secondMs)} s: ${s(d.reuse.firstMs - d.reuse.secondMs)} s saved per new directory
(before issue 15 every new working directory was copied into a new image, and booted a new template; that image also held the directory, so the saving measured here, for an image of the program alone, is its lower bound).

Command: \`${command}\`
`;
}

export const workdirBenchmark: Benchmark = {
  name: 'workdir',
  run: async ({ rounds }) => {
    const data = await benchWorkdir(rounds ?? 3);
    return { data, markdown: workdirMarkdown(data, `npm run bench -- --only workdir${rounds ? ` --rounds ${rounds}` : ''}`) };
  },
};

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  const rounds = Number(arg('--rounds') ?? 3);
  const data = await benchWorkdir(rounds, arg('--dir') ?? '/var/tmp');
  const md = workdirMarkdown(data, `SNOWFLOCK_POOL=10.235.0.0/16 npx tsx benchmarks/workdir.ts --rounds ${rounds} --dir /var/tmp/sfwd2-bench (as root)`);
  process.stdout.write(md);
  process.stdout.write('\n' + JSON.stringify(data) + '\n');
  if (!process.argv.includes('--no-write')) writeSection('workdir', md);
}
