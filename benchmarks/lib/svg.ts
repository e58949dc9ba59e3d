/**
 * Charts for the benchmark results, as plain SVG text (no plotting dependency): lines of points
 * against a linear or logarithmic x axis, and grouped bars. Just enough for benchmarks/plots/.
 */

export interface Series {
  name: string;
  points: Array<[number, number]>;
  /** Drawn dashed: a goal or a bound rather than a measurement. */
  dashed?: boolean;
}

export interface LineChart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  logX?: boolean;
  logY?: boolean;
}

export interface BarChart {
  title: string;
  yLabel: string;
  /** One group per category, one bar per series name. */
  groups: Array<{ label: string; bars: Array<{ name: string; value: number }> }>;
  /** Shown instead of bars when there are none (data another benchmark has not written yet). */
  empty?: string;
}

const W = 640;
const H = 400;
const M = { left: 70, right: 170, top: 40, bottom: 55 };
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#17becf'];

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** A number as an axis label: short, no float noise. */
export function tick(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1 << 20 && Number.isInteger(Math.log2(a))) return `${a / (1 << 20)}M`;
  if (a >= 1024 && Number.isInteger(Math.log2(a))) return `${a / 1024}K`;
  if (a >= 100) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1).replace(/\.0$/, '');
  return v.toPrecision(2).replace(/\.?0+$/, '');
}

function niceTicks(lo: number, hi: number, count = 5): number[] {
  const span = hi - lo || 1;
  const step0 = span / count;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((k) => k * mag).find((s) => s >= step0) ?? step0;
  const out: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Math.round(v / step) * step);
  return out;
}

function logTicks(lo: number, hi: number): number[] {
  const out: number[] = [];
  const base = hi / lo > 1e4 ? 16 : hi / lo > 100 ? 10 : 2;
  for (let v = base ** Math.floor(Math.log(lo) / Math.log(base)); v <= hi * 1.0001; v *= base) if (v >= lo / 1.0001) out.push(v);
  return out;
}

function frame(title: string, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`,
    ...body,
    '</svg>',
    '',
  ].join('\n');
}

export function lineChart(c: LineChart): string {
  const pts = c.series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!c.logX || x > 0) && (!c.logY || y > 0));
  if (pts.length === 0) return frame(c.title, [`<text x="${W / 2}" y="${H / 2}" text-anchor="middle">no data</text>`]);
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = c.logX ? [x0 / 2, x1 * 2] : [x0 - 1, x1 + 1];
  let [y0, y1] = c.logY ? [Math.min(...ys), Math.max(...ys)] : [0, Math.max(...ys) * 1.08];
  if (y0 === y1) [y0, y1] = c.logY ? [y0 / 2, y1 * 2] : [0, y1 + 1];
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const sx = (x: number) => M.left + (c.logX ? Math.log(x / x0) / Math.log(x1 / x0) : (x - x0) / (x1 - x0)) * pw;
  const sy = (y: number) => M.top + ph - (c.logY ? Math.log(y / y0) / Math.log(y1 / y0) : (y - y0) / (y1 - y0)) * ph;
  const body: string[] = [];
  const xt = c.logX ? logTicks(x0, x1) : niceTicks(x0, x1);
  const yt = c.logY ? logTicks(y0, y1) : niceTicks(y0, y1);
  for (const t of yt) {
    body.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${sy(t).toFixed(1)}" y2="${sy(t).toFixed(1)}" stroke="#e5e5e5"/>`);
    body.push(`<text x="${M.left - 6}" y="${(sy(t) + 4).toFixed(1)}" text-anchor="end">${tick(t)}</text>`);
  }
  for (const t of xt) body.push(`<text x="${sx(t).toFixed(1)}" y="${M.top + ph + 16}" text-anchor="middle">${tick(t)}</text>`);
  body.push(`<rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="#444"/>`);
  body.push(`<text x="${M.left + pw / 2}" y="${H - 14}" text-anchor="middle">${esc(c.xLabel)}</text>`);
  body.push(`<text transform="translate(16 ${M.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`);
  c.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length]!;
    const p = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y) && (!c.logX || x > 0) && (!c.logY || y > 0)).sort((a, b) => a[0] - b[0]);
    if (p.length) {
      const d = p.map(([x, y], k) => `${k ? 'L' : 'M'}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ');
      body.push(`<path d="${d}" fill="none" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
      if (!s.dashed) for (const [x, y] of p) body.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${color}"/>`);
    }
    const ly = M.top + 10 + i * 18;
    body.push(`<line x1="${W - M.right + 12}" x2="${W - M.right + 36}" y1="${ly}" y2="${ly}" stroke="${color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''}/>`);
    body.push(`<text x="${W - M.right + 42}" y="${ly + 4}">${esc(s.name)}</text>`);
  });
  return frame(c.title, body);
}

export function barChart(c: BarChart): string {
  const values = c.groups.flatMap((g) => g.bars.map((b) => b.value)).filter(Number.isFinite);
  if (values.length === 0) return frame(c.title, [`<text x="${W / 2}" y="${H / 2}" text-anchor="middle">${esc(c.empty ?? 'no data')}</text>`]);
  const names = [...new Set(c.groups.flatMap((g) => g.bars.map((b) => b.name)))];
  const pw = W - M.left - M.right;
  const ph = H - M.top - M.bottom;
  const y1 = Math.max(...values) * 1.1 || 1;
  const sy = (y: number) => M.top + ph - (y / y1) * ph;
  const body: string[] = [];
  for (const t of niceTicks(0, y1)) {
    body.push(`<line x1="${M.left}" x2="${M.left + pw}" y1="${sy(t).toFixed(1)}" y2="${sy(t).toFixed(1)}" stroke="#e5e5e5"/>`);
    body.push(`<text x="${M.left - 6}" y="${(sy(t) + 4).toFixed(1)}" text-anchor="end">${tick(t)}</text>`);
  }
  const gw = pw / c.groups.length;
  const bw = (gw * 0.8) / names.length;
  c.groups.forEach((g, gi) => {
    body.push(`<text x="${(M.left + gw * (gi + 0.5)).toFixed(1)}" y="${M.top + ph + 16}" text-anchor="middle">${esc(g.label)}</text>`);
    for (const b of g.bars) {
      const k = names.indexOf(b.name);
      const x = M.left + gw * gi + gw * 0.1 + bw * k;
      body.push(`<rect x="${x.toFixed(1)}" y="${sy(b.value).toFixed(1)}" width="${bw.toFixed(1)}" height="${(M.top + ph - sy(b.value)).toFixed(1)}" fill="${COLORS[k % COLORS.length]}"/>`);
      body.push(`<text x="${(x + bw / 2).toFixed(1)}" y="${(sy(b.value) - 4).toFixed(1)}" text-anchor="middle" font-size="10">${tick(b.value)}</text>`);
    }
  });
  body.push(`<rect x="${M.left}" y="${M.top}" width="${pw}" height="${ph}" fill="none" stroke="#444"/>`);
  body.push(`<text transform="translate(16 ${M.top + ph / 2}) rotate(-90)" text-anchor="middle">${esc(c.yLabel)}</text>`);
  names.forEach((n, i) => {
    const ly = M.top + 10 + i * 18;
    body.push(`<rect x="${W - M.right + 12}" y="${ly - 6}" width="24" height="10" fill="${COLORS[i % COLORS.length]}"/>`);
    body.push(`<text x="${W - M.right + 42}" y="${ly + 4}">${esc(n)}</text>`);
  });
  return frame(c.title, body);
}
