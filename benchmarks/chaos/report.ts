/**
 * What a chaos run prints and keeps: one parseable line per job (key=value, no spaces in values),
 * a summary table per kind of kill (jobs, right statuses, jobs that left something, kill-to-gone
 * times), and the Markdown section for benchmarks/RESULTS.md.
 */
import type { JobResult } from './job.js';

export function jobLine(r: JobResult): string {
  const p = r.plan;
  const fields: Array<[string, string | number | null]> = [
    ['seed', p.seed],
    ['job', p.index],
    ['provider', p.provider],
    ['mpi', p.mpi],
    ['np', p.np],
    ['ppn', p.ppn],
    ['kill', r.kill],
    ['landed', r.landing ? (r.landing.delivered ? `${r.landing.role ?? 'conn'}@${r.landing.atMs}ms${r.landing.launched ? '/launched' : r.landing.provisioned ? '/provisioned' : '/provisioning'}` : 'no-target') : 'no'],
    ['ticket', r.ticket],
    ['status', r.hydraFinalizeHang ? 'hydra-finalize-hang' : r.hang ? 'hang' : r.status],
    ['expect', r.expected.statuses ? r.expected.statuses.join('|') : 'any'],
    ['exit_ms', r.exitMs],
    ['gone_ms', r.goneMs === null ? 'never' : r.goneMs],
    ['exit_gone_ms', r.exitGoneMs === null ? 'never' : r.exitGoneMs],
    ['leftovers', r.leftovers.length],
    ['after_cleanup', r.afterCleanup.length],
    ['zombies', r.zombies.length],
    ['ok', r.ok ? 'yes' : 'NO'],
  ];
  return `chaos ${fields.map(([k, v]) => `${k}=${v ?? '-'}`).join(' ')}`;
}

/** The lines that say what went wrong with a job (empty when it is fine). */
export function problems(r: JobResult): string[] {
  const out: string[] = [];
  if (r.hang) out.push(r.hydraFinalizeHang ? "Hydra's finalize deadlock (MPICH 4.0/UCX, README): every rank was done, mpiexec did not exit; killed after the bound" : `hang: the launcher did not exit; killed after the bound`);
  else if (!r.statusOk) out.push(`status ${r.status}, expected ${r.expected.statuses?.join(' or ')} (${r.expected.rule})${r.summary ? `; it said: ${r.summary}` : ''}`);
  for (const l of r.leftovers) out.push(`left after ${r.goneMs === null ? 'the grace' : 'the grace (gone later)'}: ${l}`);
  if (r.leftovers.length > 0 && r.goneMs !== null) out.push(`everything was gone ${r.goneMs} ms after the ${r.landing?.delivered ? 'kill' : 'exit'}`);
  for (const l of r.afterCleanup) out.push(`left even after snowflock cleanup: ${l}`);
  for (const l of r.unremovable) out.push(`could not be removed: ${l}`);
  if (r.silent) out.push(`status ${r.status} with no sfmpirun: line saying why`);
  return out;
}

export interface KindSummary {
  kind: string;
  provider: string;
  jobs: number;
  landed: number;
  statusOk: number;
  leaky: number;
  goneMs: { median: number | null; max: number | null; never: number };
  /** Launcher exit to gone, over every job of the kind. */
  exitGoneMs: { median: number | null; max: number | null };
}

function median(xs: number[]): number | null {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : Math.round((s[m - 1]! + s[m]!) / 2);
}

/** Per provider and kind of kill (launcher kills also per signal). */
export function summarize(results: JobResult[]): KindSummary[] {
  const groups = new Map<string, JobResult[]>();
  for (const r of results) {
    const sig = r.plan.signal && r.plan.kind !== 'launcher-kill' && r.plan.kind !== 'launcher-term' && r.plan.kind !== 'ctrl-c' ? `:${r.plan.signal}` : '';
    const key = `${r.plan.provider} ${r.plan.kind}${sig}`;
    groups.set(key, [...(groups.get(key) ?? []), r]);
  }
  return [...groups.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([key, rs]) => {
      const [provider, kind] = key.split(' ') as [string, string];
      const gone = rs.filter((r) => r.landing?.delivered && r.goneMs !== null).map((r) => r.goneMs!);
      const afterExit = rs.filter((r) => r.exitGoneMs !== null).map((r) => r.exitGoneMs!);
      return {
        kind,
        provider,
        jobs: rs.length,
        landed: rs.filter((r) => r.landing?.delivered).length,
        statusOk: rs.filter((r) => r.statusOk).length,
        leaky: rs.filter((r) => r.leftovers.length > 0).length,
        goneMs: { median: median(gone), max: gone.length ? Math.max(...gone) : null, never: rs.filter((r) => r.landing?.delivered && r.goneMs === null).length },
        exitGoneMs: { median: median(afterExit), max: afterExit.length ? Math.max(...afterExit) : null },
      };
    });
}

export function summaryTable(rows: KindSummary[]): string {
  const head = '| provider | kill | jobs | landed | right status | left something | kill→gone median | max | not gone in 5 s | exit→gone median | max |';
  const sep = '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|';
  const ms = (v: number | null) => (v === null ? '–' : `${v} ms`);
  const lines = rows.map(
    (r) =>
      `| ${r.provider} | ${r.kind} | ${r.jobs} | ${r.landed} | ${r.statusOk} | ${r.leaky} | ${ms(r.goneMs.median)} | ${ms(r.goneMs.max)} | ${r.goneMs.never} | ${ms(r.exitGoneMs.median)} | ${ms(r.exitGoneMs.max)} |`,
  );
  const total = rows.reduce((a, r) => ({ jobs: a.jobs + r.jobs, ok: a.ok + r.statusOk, leaky: a.leaky + r.leaky }), { jobs: 0, ok: 0, leaky: 0 });
  return [head, sep, ...lines, `| all | | ${total.jobs} | | ${total.ok} | ${total.leaky} | | | | | |`].join('\n');
}

export function markdownSection(opts: { command: string; seed: number; started: string; load: string; results: JobResult[] }): string {
  const rows = summarize(opts.results);
  const failed = opts.results.filter((r) => !r.ok);
  return [
    '## Chaos: jobs killed at random points',
    '',
    `${opts.results.length} jobs, seed ${opts.seed}, ${opts.started}, load average ${opts.load} at the start (shared 2-core machine). ` +
      'Each job runs the chaos program (benchmarks/programs/chaos.c) under sfmpirun from dist/ and is killed as its line says; ' +
      '"left something" counts jobs with anything of theirs (process, namespace, link, nft table, state record, temporary file, /dev/shm file) ' +
      'still there 2 s after the kill (or the exit); kill→gone is the time from the kill until nothing of the job was left (for a kill the job ' +
      'survives, such as SIGTERM to a holder, that includes the rest of the job), exit→gone the time from the launcher\'s exit.',
    '',
    summaryTable(rows),
    '',
    failed.length ? `Failed jobs (replay one with \`npm run chaos -- --seed ${opts.seed} --only K\`): ${failed.map((r) => `${r.plan.provider} job ${r.plan.index} (${r.kill})`).join(', ')}.` : 'No job failed.',
    '',
    `Command: \`${opts.command}\` (as root).`,
  ].join('\n');
}
