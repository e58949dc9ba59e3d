/** Rank placement: which clone each rank runs on. The PMI form of it is launcher/pmi/mapping.ts. */
import { UsageError } from '../../src/common/errors.js';

export type PlacementMode = 'block' | 'cyclic';

/**
 * Rank → clone index. 'block' fills clone 0 with `ranksPerClone` ranks, then clone 1, ...;
 * 'cyclic' deals ranks round-robin over the clones. More ranks than clones × ranksPerClone
 * wrap around (oversubscription), as Hydra does.
 */
export function placeRanks(np: number, clones: number, ranksPerClone: number, mode: PlacementMode): number[] {
  for (const [name, v] of [['np', np], ['clones', clones], ['ranks per clone', ranksPerClone]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new UsageError(`${name} must be a positive integer, got ${v}`);
  }
  const placement: number[] = [];
  for (let rank = 0; rank < np; rank++) {
    placement.push(mode === 'block' ? Math.floor(rank / ranksPerClone) % clones : rank % clones);
  }
  return placement;
}

/**
 * Clone → host index, for a cluster over several hosts, by their CPUs: a clone of R ranks takes R
 * of its host's CPUs, so host h holds up to floor(cpus_h / R) clones (at least 1). While the clones
 * fit, they fill the hosts in order, as mpirun fills the slots of its nodes; beyond that, every
 * host gets a share proportional to its CPUs (largest remainders first). 'block' numbers the clones
 * host by host; 'cyclic' (--map-by node) deals them round-robin over the hosts, so that
 * consecutive clones, and with cyclic ranks consecutive ranks, land on different hosts.
 */
export function placeClones(clones: number, cpus: number[], ranksPerClone: number, mode: PlacementMode): number[] {
  if (cpus.length === 0) throw new UsageError('no hosts to place clones on');
  const capacity = cpus.map((c) => Math.max(1, Math.floor(c / ranksPerClone)));
  const total = capacity.reduce((a, b) => a + b, 0);
  const counts = new Array<number>(cpus.length).fill(0);
  if (clones <= total) {
    let left = clones;
    capacity.forEach((cap, h) => {
      counts[h] = Math.min(cap, left);
      left -= counts[h]!;
    });
  } else {
    const sum = cpus.reduce((a, b) => a + b, 0);
    const exact = cpus.map((c) => (clones * c) / sum);
    exact.forEach((x, h) => (counts[h] = Math.floor(x)));
    let left = clones - counts.reduce((a, b) => a + b, 0);
    const order = exact.map((x, h) => ({ h, frac: x - Math.floor(x) })).sort((a, b) => b.frac - a.frac || a.h - b.h);
    for (let i = 0; left > 0; i = (i + 1) % order.length, left--) counts[order[i]!.h]!++;
  }
  const out: number[] = [];
  if (mode === 'block') counts.forEach((n, h) => out.push(...new Array<number>(n).fill(h)));
  else {
    const left = [...counts];
    while (out.length < clones) left.forEach((n, h) => n > 0 && (out.push(h), left[h]!--));
  }
  return out;
}
