/**
 * The Slurm allocation a launcher runs in (an sbatch script or a salloc shell), read from the
 * environment Slurm gives it, without asking Slurm anything: SLURM_JOB_ID, SLURM_JOB_NODELIST (a
 * hostlist expression such as `node[01-03,07],gpu5`), SLURM_JOB_CPUS_PER_NODE (`2(x3),4`: counts
 * in node order, `(xN)` repeating one N times), and SLURMD_NODENAME where the launcher itself runs
 * on a node of it (the batch script does; salloc's shell usually runs on the submit host).
 */

export interface AllocationNode {
  name: string;
  cpus: number;
}

export interface Allocation {
  jobId: string;
  nodes: AllocationNode[];
  /** The node this process runs on, if it is one of the allocation's. */
  here: string | null;
}

/** The allocation of this environment, or null outside one. Malformed values are an Error with one line. */
export function readAllocation(env: NodeJS.ProcessEnv, localHostname: string): Allocation | null {
  const jobId = env.SLURM_JOB_ID ?? env.SLURM_JOBID;
  const list = env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST;
  const cpus = env.SLURM_JOB_CPUS_PER_NODE;
  if (!jobId || !list || !cpus) return null;
  const names = expandHostlist(list);
  const counts = expandCounts(cpus, names.length);
  const nodes = names.map((name, i) => ({ name, cpus: counts[i]! }));
  const short = localHostname.split('.')[0]!;
  const here = env.SLURMD_NODENAME && names.includes(env.SLURMD_NODENAME) ? env.SLURMD_NODENAME : names.includes(short) ? short : null;
  return { jobId, nodes, here };
}

/** `a[1-3,5],b` -> a1 a2 a3 a5 b; numbers keep their zero padding (`n[01-03]`). */
export function expandHostlist(list: string): string[] {
  return splitTop(list).flatMap((item) => expandItem(item, item));
}

function expandItem(item: string, whole: string): string[] {
  const open = item.indexOf('[');
  if (open < 0) {
    if (item !== '' && !/^[A-Za-z0-9._-]+$/.test(item)) throw new Error(`SLURM_JOB_NODELIST: cannot read ${JSON.stringify(whole)}`);
    return [item];
  }
  const close = item.indexOf(']', open);
  if (close < 0) throw new Error(`SLURM_JOB_NODELIST: unclosed [ in ${JSON.stringify(whole)}`);
  const prefix = expandItem(item.slice(0, open), whole)[0]!;
  const tails = expandItem(item.slice(close + 1), whole);
  const out: string[] = [];
  for (const range of item.slice(open + 1, close).split(',')) {
    const r = /^(\d+)(?:-(\d+))?$/.exec(range);
    if (!r) throw new Error(`SLURM_JOB_NODELIST: cannot read the range ${JSON.stringify(range)} of ${JSON.stringify(whole)}`);
    const width = r[1]!.length;
    const lo = Number(r[1]);
    const hi = r[2] === undefined ? lo : Number(r[2]);
    for (let n = lo; n <= hi; n++) for (const tail of tails) out.push(`${prefix}${String(n).padStart(width, '0')}${tail}`);
  }
  return out;
}

/** Splits at commas outside brackets. */
function splitTop(list: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of list) {
    if (ch === '[') depth++;
    if (ch === ']') depth--;
    if (ch === ',' && depth === 0) {
      if (cur) out.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (cur) out.push(cur);
  return out;
}

/** `2(x3),4` -> 2 2 2 4; must give exactly one count per node. */
export function expandCounts(text: string, nodes: number): number[] {
  const out: number[] = [];
  for (const part of text.split(',')) {
    const m = /^(\d+)(?:\(x(\d+)\))?$/.exec(part.trim());
    if (!m) throw new Error(`SLURM_JOB_CPUS_PER_NODE: cannot read ${JSON.stringify(part)}`);
    for (let i = 0; i < Number(m[2] ?? 1); i++) out.push(Number(m[1]));
  }
  if (out.length !== nodes) throw new Error(`SLURM_JOB_CPUS_PER_NODE=${text} gives ${out.length} counts for ${nodes} nodes`);
  return out;
}
