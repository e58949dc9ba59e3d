/**
 * Memory on demand over hosts, multicast push against unicast (issue 12), with real VM clones: on
 * a simulated cluster with a real Slurm, `salloc -N H sfmpirun --provider vm -np H ./hello` (one VM
 * clone per host; salloc's shell runs on this machine, the parent's host, so every clone host
 * gets its memory from this machine's memserver), for H = 1, 2, 4 (8 with --hosts 8), the two
 * transports interleaved in every round. From each job's --report:
 * - parent bytes: everything the memserver sent (unicast and to the group), divided by one clone
 *   host's received bytes (the mean over hosts): unicast is about H;
 * - provision: sfmpirun's provision phase, until every clone's agent answered (agent-ready);
 * - job: the whole command's wall time; push: the memserver's push until every host had
 *   everything (when that happened before the job ended).
 *
 *   npx tsx benchmarks/memory-push.ts [--rounds R] [--hosts 1,2,4]
 *   npx tsx benchmarks/memory-push.ts --plot     (benchmarks/memory-push.svg from the last run's JSON)
 * Exports memoryPushBenchmark for the harness (benchmarks/run.ts). Needs root, Slurm and munge
 * (npm run setup), and SNOWFLOCK_SIM_* / SNOWFLOCK_STATE_DIR when others share the machine.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import type { JobReport } from '../launcher/job/report.js';
import { projectRoot } from '../src/common/paths.js';
import { benchProgram } from './lib/programs.js';
import { lineChart } from './lib/svg.js';
import { withSimCluster } from './lib/simcluster.js';
import { median } from './lib/stats.js';
import type { Benchmark } from './run.js';

const root = projectRoot();
const SFMPIRUN = import.meta.url.endsWith('.ts')
  ? [process.execPath, '--import', join(root, 'node_modules/tsx/dist/esm/index.mjs'), join(root, 'launcher/bin/sfmpirun.ts')]
  : [process.execPath, join(root, 'dist/launcher/bin/sfmpirun.js')];
const TRANSPORTS = ['multicast', 'unicast'] as const;
type Transport = (typeof TRANSPORTS)[number];

interface Run {
  hosts: number;
  transport: Transport;
  parentBytes: number;
  hostBytes: number;
  ratio: number;
  provisionMs: number;
  jobMs: number;
  pushMs: number | null;
}

async function job(slurmConf: string, work: string, hosts: number, transport: Transport): Promise<Run> {
  const file = join(work, `push-${hosts}-${transport}.json`);
  const argv = ['-N', String(hosts), ...SFMPIRUN, '--provider', 'vm', '--memory-transport', transport, '--report', file, '-np', String(hosts), benchProgram('hello', 'mpich')];
  const t0 = performance.now();
  const r = await execa('salloc', argv, { env: { ...process.env, SLURM_CONF: slurmConf }, cwd: work, reject: false, timeout: 600_000 });
  const jobMs = performance.now() - t0;
  if (r.exitCode !== 0) throw new Error(`salloc -N ${hosts} sfmpirun --memory-transport ${transport} failed (${r.exitCode}): ${r.stderr.slice(-1500)}`);
  const rep = JSON.parse(readFileSync(file, 'utf8')) as JobReport;
  const mem = rep.memory!;
  const server = mem.servers[0]!;
  const hostBytes = mem.hosts.reduce((s, h) => s + h.bytesReceived, 0) / mem.hosts.length;
  const complete = server.multicast?.allComplete;
  return {
    hosts,
    transport,
    parentBytes: server.bytesSent,
    hostBytes,
    ratio: server.bytesSent / hostBytes,
    provisionMs: rep.phases.provision ?? NaN,
    jobMs,
    pushMs: complete ? server.multicast!.pushMs : null,
  };
}

export async function benchMemoryPush(opts: { rounds?: number; hosts?: number[] } = {}): Promise<{ runs: Run[]; markdown: string }> {
  const rounds = opts.rounds ?? 2;
  const sizes = opts.hosts ?? [1, 2, 4];
  const runs: Run[] = [];
  const load: number[] = [];
  await withSimCluster({ hosts: Math.max(...sizes), name: `mp${process.pid % 100000}`, workPrefix: 'sfbench-push-' }, async (rec, work) => {
    // The template is built (or found) by a first job, not measured.
    await job(rec.slurmConf, work, 1, 'unicast');
    for (let r = 0; r < rounds; r++) {
      for (const h of sizes) {
        const order = r % 2 ? [...TRANSPORTS].reverse() : [...TRANSPORTS];
        for (const t of order) {
          load.push(Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]));
          runs.push(await job(rec.slurmConf, work, h, t));
        }
      }
    }
  });
  return { runs, markdown: render(runs, rounds, load) };
}

function render(runs: Run[], rounds: number, load: number[]): string {
  const fmt = (x: number, digits: number) => x.toFixed(digits);
  const mib = (b: number) => (b / 2 ** 20).toFixed(1);
  const rows = [...new Set(runs.map((r) => r.hosts))].flatMap((h) =>
    TRANSPORTS.map((t) => {
      const x = runs.filter((r) => r.hosts === h && r.transport === t);
      const m = (f: (r: Run) => number) => median(x.map(f));
      const pushed = x.filter((r) => r.pushMs !== null).length;
      const pushMs = median(x.filter((r) => r.pushMs !== null).map((r) => r.pushMs!));
      const push = t === 'multicast' ? `${pushed}/${x.length}${pushed ? `, ${fmt(pushMs / 1000, 2)} s` : ''}` : '-';
      return `| ${h} | ${t} | ${mib(m((r) => r.parentBytes))} | ${mib(m((r) => r.hostBytes))} | ${m((r) => r.ratio).toFixed(2)} | ${fmt(m((r) => r.provisionMs) / 1000, 2)} | ${fmt(m((r) => r.jobMs) / 1000, 2)} | ${push} |`;
    }),
  );
  const ratioAt = (h: number) => {
    const x = (t: Transport, f: (r: Run) => number) => median(runs.filter((r) => r.hosts === h && r.transport === t).map(f));
    return `H = ${h}: parent bytes, multicast over unicast, ${fmt(x('multicast', (r) => r.parentBytes) / x('unicast', (r) => r.parentBytes), 2)}; provision, multicast over unicast, ${fmt(x('multicast', (r) => r.provisionMs) / x('unicast', (r) => r.provisionMs), 2)}`;
  };
  return [
    `Measured ${new Date().toISOString().slice(0, 10)} on the shared 2-core machine (load average ${fmt(Math.min(...load), 1)}-${fmt(Math.max(...load), 1)}), ${rounds} interleaved rounds, medians. ` +
      'One VM clone (TCG) per host of a simulated Slurm cluster; salloc\'s shell on this machine, the parent\'s host: every clone host gets its memory from its memserver. ' +
      'parent MiB = everything the memserver sent (unicast and the push); host MiB = what one clone host received (mean); ratio = the two (unicast: about H, the goal at most 1.2); ' +
      'provision = sfmpirun\'s provision phase, until every clone\'s agent answered; job = the whole salloc command; pushed = runs whose push (the recorded working set) reached every host before the job ended, and the time from its start until it had (median).',
    '',
    '| H | transport | parent MiB | host MiB | ratio | provision s | job s | pushed |',
    '|---|---|---|---|---|---|---|---|',
    ...rows,
    '',
    ...[...new Set(runs.map((r) => r.hosts))].map(ratioAt).map((l) => `- ${l}`),
    '',
    `Command: \`npx tsx benchmarks/memory-push.ts --rounds ${rounds}\` (as root).`,
  ].join('\n');
}

/** Parent MiB and provisioning time against H, both transports side by side (medians). */
export function plot(runs: Run[]): string {
  const sizes = [...new Set(runs.map((r) => r.hosts))].sort((a, b) => a - b);
  const series = (f: (r: Run) => number) =>
    TRANSPORTS.map((t) => ({ name: t, points: sizes.map((h): [number, number] => [h, median(runs.filter((r) => r.hosts === h && r.transport === t).map(f))]) }));
  const bytes = lineChart({ title: "MiB the parent's memserver sent", xLabel: 'clone hosts H', yLabel: 'MiB', series: series((r) => r.parentBytes / 2 ** 20), logX: true });
  const time = lineChart({ title: 'seconds until every clone is agent-ready', xLabel: 'clone hosts H', yLabel: 's', series: series((r) => r.provisionMs / 1000), logX: true });
  const width = Number(/width="(\d+)"/.exec(bytes)![1]);
  const height = Number(/height="(\d+)"/.exec(bytes)![1]);
  const place = (svg: string, x: number) => svg.replace('<svg ', `<svg x="${x}" `);
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * width}" height="${height}">\n${place(bytes, 0)}\n${place(time, width)}\n</svg>\n`;
}

export const memoryPushBenchmark: Benchmark = {
  name: 'memory-push',
  run: async ({ rounds }) => {
    const r = await benchMemoryPush(rounds ? { rounds } : {});
    return { data: r.runs, markdown: r.markdown };
  },
};

if (resolve(process.argv[1] ?? '') === fileURLToPath(import.meta.url)) {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i > 0 ? process.argv[i + 1] : undefined;
  };
  const json = join(root, 'benchmarks', 'out', 'memory-push.json');
  if (process.argv.includes('--plot')) {
    writeFileSync(join(root, 'benchmarks', 'memory-push.svg'), plot(JSON.parse(readFileSync(json, 'utf8')) as Run[]));
    process.exit(0);
  }
  const r = await benchMemoryPush({
    ...(arg('--rounds') ? { rounds: Number(arg('--rounds')) } : {}),
    ...(arg('--hosts') ? { hosts: arg('--hosts')!.split(',').map(Number) } : {}),
  });
  mkdirSync(join(root, 'benchmarks', 'out'), { recursive: true });
  writeFileSync(json, JSON.stringify(r.runs, null, 1));
  writeFileSync(join(root, 'benchmarks', 'memory-push.svg'), plot(r.runs));
  console.log(r.markdown);
}
