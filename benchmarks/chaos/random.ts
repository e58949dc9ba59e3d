/**
 * The chaos harness's randomness: one seed for a run, and from it an independent stream per job,
 * so that job K of seed S is the same plan whether the run has 10 jobs or 500, and can be replayed
 * alone (`npm run chaos -- --seed S --only K`).
 */

/** A small, fast, seedable generator (mulberry32); plenty for choosing kill points. */
export class Random {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from nothing');
    return items[Math.floor(this.next() * items.length)]!;
  }
}

/** The stream of job `index` of run `seed` (a hash of both, so neighbouring jobs are unrelated). */
export function jobRandom(seed: number, index: number): Random {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  h = Math.imul(h ^ (index + 0x85ebca6b), 0xc2b2ae35) >>> 0;
  h ^= h >>> 16;
  return new Random(h);
}

/** A fresh seed for a run that was not given one (printed, so that the run can be replayed). */
export function freshSeed(): number {
  return Math.floor(Math.random() * 2 ** 31);
}
