/**
 * mcdist benchmark (issue 12): one sender pushes a template's RAM (4 KiB granules, zero pages
 * skipped) to H = 1, 2, 4, 8 simulated clone hosts, side by side: our multicast transport
 * (native/mcast), the NORM library (libnorm 1.5.9, fixed rate and NORM-CC) and TCP unicast to
 * each host (what a unicast memserver costs), with and without 1% injected loss.
 *
 * Per run: the sender's wire bytes (its veth, Ethernet frames) over one host's data bytes; the
 * time from the push's start until every host has everything, and until every host has the
 * working set; CPU seconds of the sender and of the mean receiver; every granule checked against
 * its CRC32C and the digest of the whole image compared on every host.
 *
 *   npx tsx benchmarks/mcast.ts [--rounds R] [--hosts 1,2,4,8] [--transports sfmc,norm,tcp]
 *       [--loss 0,1] [--rate BYTES] [--image FILE]
 *   npx tsx benchmarks/mcast.ts --render [FILE]     (the section and plot again from a run's JSON)
 *
 * As root. The image is a real 320 MiB template RAM file from /dev/shm/snowflock-tpl-* when there
 * is one (read with pread only, never faulted in; the sender maps only its data pages), else a
 * synthetic one (60% zero pages). Data into benchmarks/out/mcast.json, the section into
 * benchmarks/RESULTS.md, the plot into benchmarks/mcast.svg.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { projectRoot } from '../src/common/paths.js';
import { driverArgs, McCluster, nativeDir, newToken, type Driver } from '../test/system/mcast-hosts.js';

export type Transport = 'sfmc' | 'norm' | 'norm-cc' | 'tcp';

export interface RunResult {
  transport: Transport;
  hosts: number;
  loss: number;
  ok: boolean;
  dataBytes: number;           // one host's data
  senderWire: number;          // bytes on the sender's veth, out
  receiverWire: number;        // bytes on one host's veth, in (mean)
  ratio: number;               // senderWire / dataBytes
  seconds: number;             // push start to the last host complete
  wsSeconds: number;           // push start to the last host with the working set
  senderCpu: number;
  receiverCpu: number;         // mean over hosts
  dropped: number;             // datagrams the loss rules dropped, all hosts
  detail: Record<string, unknown>;
}

export interface Image {
  path: string;
  geometry: string;
  ws: string;
  dataGranules: number;
  granules: number;
  source: string;
}

const bin = (p: string) => join(nativeDir(), p);

/** A real 320 MiB template if one exists (the newest), else a synthetic image in dir. */
export function prepareImage(dir: string, explicit?: string): Image {
  mkdirSync(dir, { recursive: true });
  let path = explicit;
  let source = explicit ? `given: ${explicit}` : '';
  if (!path) {
    const tpls = readdirSync('/dev/shm')
      .filter((d) => d.startsWith('snowflock-tpl-'))
      .map((d) => join('/dev/shm', d, 'ram'))
      .filter((f) => existsSync(f) && statSync(f).size === 320 * 2 ** 20 && Date.now() - statSync(f).mtimeMs > 60_000)
      .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
    if (tpls[0]) (path = tpls[0]), (source = `template RAM file ${tpls[0]} (read-only)`);
  }
  if (!path) {
    path = join(dir, 'synthetic.img');
    execFileSync(bin('mcgeom'), ['synth', path, '320', '60']);
    source = 'synthetic 320 MiB, 60% zero pages';
  }
  const geometry = join(dir, 'geometry');
  const ws = join(dir, 'ws');
  const info = JSON.parse(execFileSync(bin('mcgeom'), ['build', path, geometry, '--ws', ws, '--ws-percent', '5'], { encoding: 'utf8' })) as {
    granules: number;
    data_granules: number;
  };
  return { path, geometry, ws, dataGranules: info.data_granules, granules: info.granules, source };
}

/** One push to `hosts` clone hosts of cluster c (host 0 sends). */
/**
 * NORM at a fixed rate cannot follow its receivers: at the 125 MB/s ceiling it lost so much that
 * H=8 with 1% loss took 42 s, at 50 MB/s 25 s (both with NACK backoff 0, which beat its default 4).
 */
export const NORM_RATE = 50_000_000;

export async function runOnce(
  c: McCluster,
  img: Image,
  o: { transport: Transport; hosts: number; loss: number; rate: number; normRate?: number; ticket?: number; timeout?: number },
): Promise<RunResult> {
  const sender = c.hosts[0]!;
  const receivers = c.hosts.slice(1, 1 + o.hosts);
  const token = newToken();
  const k = o.ticket ?? 0;
  const group = c.group(k);
  const port = c.port(k);
  const transport = o.transport === 'norm-cc' ? 'norm' : o.transport;
  for (const h of receivers) h.loss(o.loss);
  const before = { s: sender.counters(), r: receivers.map((h) => h.counters()), d: receivers.map((h) => h.dropped()) };
  const rx: Driver[] = receivers.map((h, i) =>
    h.run(driverArgs({ role: 'recv', transport, group, port, sender, local: h, geometry: img.geometry, ws: img.ws, node: i + 1, timeout: o.timeout ?? 300 }), token),
  );
  try {
    await Promise.all(rx.map((d) => d.ready()));
    const tx = sender.run(
      driverArgs({
        role: 'push', transport, group, port, sender, local: sender, geometry: img.geometry, ws: img.ws, image: img.path, hosts: o.hosts,
        rate: o.transport === 'norm' ? Math.min(o.rate, o.normRate ?? NORM_RATE) : o.rate, cc: o.transport === 'norm-cc',
        normBackoff: o.transport === 'norm' ? 0 : undefined, timeout: o.timeout ?? 300,
      }),
      token,
    );
    const codes = await Promise.all(rx.map((d) => d.exited));
    tx.stop();
    const txCode = await tx.exited;
    const after = { s: sender.counters(), r: receivers.map((h) => h.counters()), d: receivers.map((h) => h.dropped()) };
    const rres = rx.map((d) => d.result ?? {});
    const tres = tx.result ?? {};
    const start = Number(tres.start_ns ?? 0);
    const ok = txCode === 0 && codes.every((x) => x === 0) && rres.every((r) => r.digest_ok === true && r.bad === 0 && r.missing === 0);
    const last = Math.max(...rres.map((r) => Number(r.complete_ns ?? 0)));
    const lastWs = Math.max(...rres.map((r) => Number(r.ws_ns ?? 0)));
    const dataBytes = Number(rres[0]?.need ?? img.dataGranules) * 4096;
    const senderWire = after.s.sent - before.s.sent;
    const receiverWire = after.r.reduce((a, r, i) => a + r.received - before.r[i]!.received, 0) / receivers.length;
    if (!ok) {
      process.stderr.write(`run failed: ${o.transport} H=${o.hosts} loss=${o.loss}: sender ${txCode} ${tx.stderr.trim().slice(-300)}; receivers ${codes.join(',')} ${rx.map((d) => d.stderr.trim().slice(-200)).join(' | ')}\n`);
    }
    return {
      transport: o.transport,
      hosts: o.hosts,
      loss: o.loss,
      ok,
      dataBytes,
      senderWire,
      receiverWire,
      ratio: senderWire / dataBytes,
      seconds: start && last ? (last - start) / 1e9 : NaN,
      wsSeconds: start && lastWs ? (lastWs - start) / 1e9 : NaN,
      senderCpu: Number(tres.cpu ?? NaN),
      receiverCpu: rres.reduce((a, r) => a + Number(r.cpu ?? NaN), 0) / rres.length,
      dropped: after.d.reduce((a, x, i) => a + x - before.d[i]!, 0),
      detail: { sender: tres, receivers: rres, senderCode: txCode, receiverCodes: codes, senderStderr: tx.stderr.slice(-4000), receiverStderr: rx.map((d) => d.stderr.slice(-2000)) },
    };
  } finally {
    for (const d of rx) d.stop();
    await Promise.all(rx.map((d) => Promise.race([d.exited, sleep(3000).then(() => d.kill())])));
    for (const h of receivers) h.loss(0);
  }
}

// ---------------------------------------------------------------------------------------------
// The whole benchmark, its table and plot.

function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (!s.length) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function parse(argv: string[]) {
  const o = { rounds: 3, hosts: [1, 2, 4, 8], transports: ['sfmc', 'norm', 'norm-cc', 'tcp'] as Transport[], loss: [0, 1], rate: 125_000_000, image: undefined as string | undefined };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[++i] ?? '';
    if (argv[i - 1] === '--rounds') o.rounds = Number(v);
    else if (argv[i - 1] === '--hosts') o.hosts = v.split(',').map(Number);
    else if (argv[i - 1] === '--transports') o.transports = v.split(',') as Transport[];
    else if (argv[i - 1] === '--loss') o.loss = v.split(',').map(Number);
    else if (argv[i - 1] === '--rate') o.rate = Number(v);
    else if (argv[i - 1] === '--image') o.image = v;
    else throw new Error(`unknown option ${argv[i - 1]}; see the top of benchmarks/mcast.ts`);
  }
  return o;
}

/** Writes the section and the plot again from a run's JSON (benchmarks/out/mcast.json), running nothing. */
async function render(file: string): Promise<void> {
  const { readFileSync } = await import('node:fs');
  const saved = JSON.parse(readFileSync(file, 'utf8')) as { image: Image; options: ReturnType<typeof parse>; loads: number[]; results: RunResult[]; argv?: string[] };
  const root = projectRoot();
  writeFileSync(join(root, 'benchmarks', 'mcast.svg'), plot(saved.results, saved.options));
  const { writeSection } = await import('./run.js');
  writeSection('mcast', section(saved.results, saved.options, saved.image, saved.loads, saved.argv ?? []));
}

export async function main(argv: string[]): Promise<void> {
  if (argv[0] === '--render') return render(argv[1] ?? join(projectRoot(), 'benchmarks', 'out', 'mcast.json'));
  const o = parse(argv);
  const maxHosts = Math.max(...o.hosts);
  const c = await McCluster.create(maxHosts + 1);
  const results: RunResult[] = [];
  const loads: number[] = [];
  let img: Image | null = null;
  const stop = () => void c.destroy().then(() => process.exit(130));
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  try {
    img = prepareImage(join(c.dir, 'image'), o.image);
    process.stderr.write(`image: ${img.source}: ${img.dataGranules} data granules of ${img.granules}\n`);
    for (let round = 0; round < o.rounds; round++)
      for (const loss of o.loss)
        for (const hosts of o.hosts)
          // Interleaved: every transport once per (round, loss, hosts), so that load drifts hit all alike.
          for (const transport of o.transports) {
            loads.push(loadavg()[0]!);
            const r = await runOnce(c, img, { transport, hosts, loss, rate: o.rate });
            results.push(r);
            process.stderr.write(
              `round ${round} loss ${loss}% H=${hosts} ${transport}: ratio ${r.ratio.toFixed(3)} time ${r.seconds.toFixed(2)} s ws ${r.wsSeconds.toFixed(2)} s cpu ${r.senderCpu.toFixed(2)}/${r.receiverCpu.toFixed(2)} ${r.ok ? 'ok' : 'FAILED'}\n`,
            );
          }
  } finally {
    await c.destroy();
  }
  const root = projectRoot();
  mkdirSync(join(root, 'benchmarks', 'out'), { recursive: true });
  writeFileSync(join(root, 'benchmarks', 'out', 'mcast.json'), JSON.stringify({ image: img, options: o, loads, results, argv }, null, 2) + '\n');
  writeFileSync(join(root, 'benchmarks', 'mcast.svg'), plot(results, o));
  const { writeSection } = await import('./run.js');
  writeSection('mcast', section(results, o, img!, loads, argv));
}

interface Row {
  transport: Transport;
  hosts: number;
  loss: number;
  ratio: number;
  mb: number;
  seconds: number;
  ws: number;
  scpu: number;
  rcpu: number;
  ok: string;
}

function rows(results: RunResult[], o: ReturnType<typeof parse>): Row[] {
  const out: Row[] = [];
  for (const loss of o.loss)
    for (const transport of o.transports)
      for (const hosts of o.hosts) {
        const rs = results.filter((r) => r.transport === transport && r.hosts === hosts && r.loss === loss);
        if (!rs.length) continue;
        const good = rs.filter((r) => r.ok);
        out.push({
          transport, hosts, loss,
          ratio: median(good.map((r) => r.ratio)),
          mb: median(good.map((r) => r.senderWire / 1e6)),
          seconds: median(good.map((r) => r.seconds)),
          ws: median(good.map((r) => r.wsSeconds)),
          scpu: median(good.map((r) => r.senderCpu)),
          rcpu: median(good.map((r) => r.receiverCpu)),
          ok: `${good.length}/${rs.length}`,
        });
      }
  return out;
}

const NAMES: Record<Transport, string> = { sfmc: 'ours (sfmc)', norm: `NORM fixed ${NORM_RATE / 1e6} MB/s`, 'norm-cc': 'NORM-CC', tcp: 'TCP unicast' };

function section(results: RunResult[], o: ReturnType<typeof parse>, img: Image, loads: number[], argv: string[]): string {
  const f = (x: number, d = 2) => (Number.isFinite(x) ? x.toFixed(d) : '–');
  const lines = [
    '## mcdist: multicast push of a template to H clone hosts (issue 12)',
    '',
    `Measured ${new Date().toISOString().slice(0, 10)} on the shared 2-core machine (load average ${f(Math.min(...loads), 1)}-${f(Math.max(...loads), 1)} during the runs).`,
    `Image: ${img.source}: ${img.dataGranules} data granules of 4 KiB (${f((img.dataGranules * 4096) / 2 ** 20, 0)} MiB) out of ${img.granules}; zero pages are never sent. Push order: a scattered 5% working set first, then the rest.`,
    `Simulated hosts: network, mount, UTS and IPC namespaces on one bridge (IGMP snooping with the bridge as querier, a route for 224.0.0.0/4 per host), MTU 1500. Rate ceiling ${f(o.rate / 1e6, 0)} MB/s for every transport (NORM-CC: its own rate control under that ceiling).`,
    'Loss: no netem in this kernel; an nftables netdev table on each clone host drops `numgen random mod 100 < 1` of its UDP/TCP datagrams in and out of eth0.',
    '',
    `Median of ${o.rounds} interleaved rounds. bytes = sender's wire bytes (Ethernet frames on its veth) / one host's data bytes (unicast is about H); time = push start to the last host complete; ws = to the last host holding the working set; CPU = seconds, sender / mean receiver; ok = runs where every host had every granule right (CRC32C per granule and the image's SHA-256).`,
    '',
    '| loss | transport | H | parent link MB | bytes | time s | ws s | CPU s | ok |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows(results, o))
    lines.push(`| ${r.loss}% | ${NAMES[r.transport]} | ${r.hosts} | ${f(r.mb, 0)} | ${f(r.ratio, 3)} | ${f(r.seconds)} | ${f(r.ws)} | ${f(r.scpu)} / ${f(r.rcpu)} | ${r.ok} |`);
  lines.push('', '![bytes and time against H](mcast.svg)', '', `Command: \`npx tsx benchmarks/mcast.ts ${argv.join(' ')}\` (as root; SNOWFLOCK_STATE_DIR for the run's directory).`);
  return lines.join('\n');
}

/** Two panels (bytes ratio, time) against H, one line per transport and loss; SVG by hand. */
function plot(results: RunResult[], o: ReturnType<typeof parse>): string {
  const rs = rows(results, o);
  const W = 360, H = 240, M = { l: 48, r: 12, t: 28, b: 36 };
  const colors: Record<Transport, string> = { sfmc: '#1f77b4', norm: '#2ca02c', 'norm-cc': '#9467bd', tcp: '#d62728' };
  const xs = o.hosts;
  const xOf = (h: number) => M.l + ((Math.log2(h) - Math.log2(xs[0]!)) / Math.max(1e-9, Math.log2(xs[xs.length - 1]!) - Math.log2(xs[0]!))) * (W - M.l - M.r);
  const panel = (dx: number, title: string, val: (r: Row) => number): string => {
    const vals = rs.map(val).filter(Number.isFinite);
    const ymax = Math.max(1, ...vals) * 1.1;
    const yOf = (v: number) => H - M.b - (v / ymax) * (H - M.t - M.b);
    const out: string[] = [`<g transform="translate(${dx},0)">`, `<text x="${W / 2}" y="16" text-anchor="middle" font-size="13">${title}</text>`];
    out.push(`<line x1="${M.l}" y1="${H - M.b}" x2="${W - M.r}" y2="${H - M.b}" stroke="#000"/>`, `<line x1="${M.l}" y1="${M.t}" x2="${M.l}" y2="${H - M.b}" stroke="#000"/>`);
    for (const h of xs) out.push(`<text x="${xOf(h)}" y="${H - M.b + 14}" text-anchor="middle" font-size="11">${h}</text>`);
    out.push(`<text x="${W / 2}" y="${H - 6}" text-anchor="middle" font-size="11">clone hosts H</text>`);
    for (let k = 0; k <= 4; k++) {
      const v = (ymax * k) / 4;
      out.push(`<text x="${M.l - 4}" y="${yOf(v) + 4}" text-anchor="end" font-size="10">${v.toFixed(v < 10 ? 1 : 0)}</text>`);
      out.push(`<line x1="${M.l}" y1="${yOf(v)}" x2="${W - M.r}" y2="${yOf(v)}" stroke="#ddd"/>`);
    }
    for (const t of o.transports)
      for (const loss of o.loss) {
        const pts = rs.filter((r) => r.transport === t && r.loss === loss && Number.isFinite(val(r)));
        if (!pts.length) continue;
        const d = pts.map((r, i) => `${i ? 'L' : 'M'}${xOf(r.hosts).toFixed(1)},${yOf(val(r)).toFixed(1)}`).join(' ');
        out.push(`<path d="${d}" fill="none" stroke="${colors[t]}" stroke-width="2"${loss ? ' stroke-dasharray="5,3"' : ''}/>`);
        for (const r of pts) out.push(`<circle cx="${xOf(r.hosts).toFixed(1)}" cy="${yOf(val(r)).toFixed(1)}" r="2.5" fill="${colors[t]}"/>`);
      }
    out.push('</g>');
    return out.join('\n');
  };
  const legend = o.transports
    .map((t, i) => `<g transform="translate(${20 + i * 150},${H + 8})"><line x1="0" y1="0" x2="22" y2="0" stroke="${colors[t]}" stroke-width="2"/><text x="26" y="4" font-size="11">${NAMES[t]}</text></g>`)
    .join('\n');
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${2 * W}" height="${H + 40}" font-family="sans-serif">`,
    '<rect width="100%" height="100%" fill="#fff"/>',
    panel(0, "sender's bytes / one host's data", (r) => r.ratio),
    panel(W, 'seconds until every host has everything', (r) => r.seconds),
    legend,
    `<text x="${2 * W - 8}" y="${H + 30}" text-anchor="end" font-size="10">solid: no loss; dashed: 1% loss</text>`,
    '</svg>',
    '',
  ].join('\n');
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/^.*\//, ''))) {
  main(process.argv.slice(2)).catch((e) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
