/**
 * How MPICH learns the job's layout: the PMI key PMI_process_mapping, a "vector" of blocks
 * `(start, count, size)`: `count` consecutive nodes starting at node `start`, each holding `size`
 * consecutive ranks. MPICH uses it to decide which ranks share a node (and so shared memory), so it
 * must describe the real placement exactly, uneven layouts included.
 */

interface Block {
  start: number;
  count: number;
  size: number;
}

/**
 * The PMI_process_mapping value for a placement (rank → node index), e.g.
 * `(vector,(0,4,2))` for 8 ranks in blocks of 2 on 4 nodes, or
 * `(vector,(0,2,1),(0,2,1))` for 4 ranks dealt round-robin over 2 nodes.
 */
export function processMapping(placement: number[]): string {
  if (placement.length === 0) throw new Error('processMapping: empty placement');
  return `(vector,${mappingBlocks(placement)
    .map((b) => `(${b.start},${b.count},${b.size})`)
    .join(',')})`;
}

/** Runs of consecutive ranks on one node, then runs of equal-sized runs on consecutive nodes. */
function mappingBlocks(placement: number[]): Block[] {
  const runs: Array<{ node: number; size: number }> = [];
  for (const node of placement) {
    const last = runs[runs.length - 1];
    if (last && last.node === node) last.size++;
    else runs.push({ node, size: 1 });
  }
  const blocks: Block[] = [];
  for (const run of runs) {
    const last = blocks[blocks.length - 1];
    if (last && last.size === run.size && last.start + last.count === run.node) last.count++;
    else blocks.push({ start: run.node, count: 1, size: run.size });
  }
  return blocks;
}

/** Inverse of processMapping, for tests and diagnostics: the rank → node list a mapping describes. */
export function parseProcessMapping(mapping: string): number[] {
  const m = /^\(vector,(.*)\)$/.exec(mapping.trim());
  if (!m) throw new Error(`not a PMI process mapping: ${mapping}`);
  const placement: number[] = [];
  for (const b of m[1]!.matchAll(/\((\d+),(\d+),(\d+)\)/g)) {
    const [start, count, size] = [Number(b[1]), Number(b[2]), Number(b[3])];
    for (let node = start; node < start + count; node++) for (let i = 0; i < size; i++) placement.push(node);
  }
  return placement;
}
