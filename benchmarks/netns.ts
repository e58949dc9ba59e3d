/**
 * Provisioning and teardown time of netns clones: for N = 1, 8, 32, 64, the wall time of
 * requestTicket + checkpoint + createClones (ticket network and N clones ready to run processes),
 * and of kill (everything removed, record last). Median of several runs, in a state directory of
 * its own; every run must leave nothing behind.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Engine } from '../src/engine.js';
import { median, type Benchmark } from './run.js';

export interface NetnsBenchRow {
  clones: number;
  provisionMs: number;
  teardownMs: number;
  provisionRunsMs: number[];
  teardownRunsMs: number[];
}

const SIZES = [1, 8, 32, 64];

async function measure(engine: Engine, n: number): Promise<{ provision: number; teardown: number }> {
  const t0 = performance.now();
  const ticket = await engine.requestTicket(n, { provider: 'netns' });
  await engine.createClones(ticket, await engine.checkpoint(ticket, {}));
  const t1 = performance.now();
  await engine.kill(ticket);
  const t2 = performance.now();
  return { provision: t1 - t0, teardown: t2 - t1 };
}

export const netnsBenchmark: Benchmark = {
  name: 'netns',
  async run({ rounds = 5 }) {
    const stateDir = mkdtempSync(join(tmpdir(), 'sf-bench-netns-'));
    const engine = new Engine({ stateDir });
    const rows: NetnsBenchRow[] = [];
    const load = loadavg()[0]!;
    try {
      await measure(engine, 1); // warm-up: page cache, first process starts
      for (const n of SIZES) {
        const p: number[] = [];
        const t: number[] = [];
        for (let i = 0; i < rounds; i++) {
          const m = await measure(engine, n);
          p.push(m.provision);
          t.push(m.teardown);
        }
        rows.push({ clones: n, provisionMs: median(p), teardownMs: median(t), provisionRunsMs: p, teardownRunsMs: t });
      }
      // The engine removes its tickets directory with the last record.
      const records = join(stateDir, 'tickets');
      const left = existsSync(records) ? readdirSync(records) : [];
      if (left.length) throw new Error(`records left behind: ${left.join(', ')}`);
    } finally {
      await engine.killAll();
      rmSync(stateDir, { recursive: true, force: true });
    }
    const data = { when: new Date().toISOString(), rounds, cpus: cpus().length, loadAverage1m: load, rows };
    const table = [
      '| clones | provision (median) | teardown (median) | per clone (provision) |',
      '|---:|---:|---:|---:|',
      ...rows.map((r) => `| ${r.clones} | ${r.provisionMs.toFixed(0)} ms | ${r.teardownMs.toFixed(0)} ms | ${(r.provisionMs / r.clones).toFixed(1)} ms |`),
    ].join('\n');
    const markdown =
      `## netns clones: provision and teardown\n\n` +
      `Provision = requestTicket + checkpoint + createClones (bridge, subnet, nftables table, N holders with ` +
      `their namespaces, veths and addresses: ready to run processes). Teardown = kill (everything removed, ` +
      `record last). Median of ${rounds} runs each, ${data.when}, ${data.cpus} cores, load average ` +
      `${load.toFixed(1)} at the start (this machine is shared: other jobs ran at the same time).\n\n` +
      `${table}\n\nCommand: \`npm run build && npm run bench -- --only netns\` (as root).\n`;
    return { data, markdown };
  },
};
