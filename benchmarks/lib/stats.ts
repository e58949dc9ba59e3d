/** The summaries the benchmarks print: median, and median with its range. */

export interface Stats {
  median: number;
  min: number;
  max: number;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export function stats(xs: number[]): Stats {
  const s = [...xs].sort((a, b) => a - b);
  return { median: median(s), min: s[0]!, max: s[s.length - 1]! };
}

/** "median (min-max)". */
export const fmt = (s: Stats, digits = 2): string => `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}-${s.max.toFixed(digits)})`;
