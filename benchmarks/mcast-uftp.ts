/**
 * uftp (Debian's uftp 4.10, a multicast file-transfer program) on the same simulated hosts as
 * benchmarks/mcast.ts, for its comparison: the template's data pages (zero pages left out, as every
 * other transport does) as one file, pushed to H clone hosts at the same 1 Gbit/s ceiling, with
 * and without 1% loss. uftp is a program, not a library: it writes whole files into a directory on
 * each host, so it can stand in only for the push, never for a memtap's demand fetches.
 *
 *   npx tsx benchmarks/mcast-uftp.ts [--hosts 1,2,4,8] [--loss 0,1] [--rate KBITS] [--image FILE]
 *
 * As root. Per run: the sender's wire bytes over the file's, the time from the start of uftp until
 * it exits (every host has the file), the file compared byte for byte on every host. The section
 * goes into benchmarks/RESULTS.md (mcast-uftp).
 */
import { execFileSync, spawn } from 'node:child_process';
import { openSync, closeSync, fstatSync, readSync, writeSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { McCluster } from '../test/system/mcast-hosts.js';
import { prepareImage } from './mcast.js';

/** Copies the image's data pages (in order, zero pages left out) into out; returns the page count. */
function dataPages(image: string, out: string): number {
  const fd = openSync(image, 'r'), o = openSync(out, 'w');
  const size = fstatSync(fd).size, page = Buffer.alloc(4096), zero = Buffer.alloc(4096);
  let n = 0;
  try {
    for (let at = 0; at < size; at += 4096) {
      // Plain reads of a tmpfs hole return zeros without allocating anything in the template.
      readSync(fd, page, 0, 4096, at);
      if (!page.equals(zero)) writeSync(o, page), n++;
    }
  } finally {
    closeSync(fd), closeSync(o);
  }
  return n;
}

async function main(argv: string[]): Promise<void> {
  const o = { hosts: [1, 2, 4, 8], loss: [0, 1], rate: 1_000_000, image: undefined as string | undefined };
  for (let i = 0; i < argv.length; i += 2) {
    const v = argv[i + 1] ?? '';
    if (argv[i] === '--hosts') o.hosts = v.split(',').map(Number);
    else if (argv[i] === '--loss') o.loss = v.split(',').map(Number);
    else if (argv[i] === '--rate') o.rate = Number(v);
    else if (argv[i] === '--image') o.image = v;
    else throw new Error(`unknown option ${argv[i]}; see the top of benchmarks/mcast-uftp.ts`);
  }
  const c = await McCluster.create(Math.max(...o.hosts) + 1);
  const rows: string[] = [];
  const loads: number[] = [];
  try {
    const img = prepareImage(join(c.dir, 'image'), o.image);
    const file = join(c.dir, 'data.img');
    const pages = dataPages(img.path, file);
    const bytes = pages * 4096;
    const s = c.hosts[0]!, group = c.group(0), port = String(c.port(0));
    for (const h of c.hosts.slice(1)) {
      const r = h.sh('mkdir -p /run/sfmcu && mount -t tmpfs -o size=400m sfmc-uftp /run/sfmcu');
      if (r.code) throw new Error(`${h.name}: ${r.err}`);
    }
    for (const loss of o.loss)
      for (const H of o.hosts) {
        const rx = c.hosts.slice(1, 1 + H);
        const id = (i: number) => (0x100 + i).toString(16).padStart(8, '0');
        for (const h of rx) h.sh('rm -f /run/sfmcu/*'), h.loss(loss);
        const daemons = rx.map((h, i) => {
          const [cmd, ...pre] = h.enter;
          return spawn(cmd!, [...pre, 'uftpd', '-d', '-I', 'eth0', '-M', group, '-p', port, '-D', '/run/sfmcu', '-U', id(i), '-x', '0', '-B', String(8 << 20)], { stdio: 'ignore' });
        });
        await new Promise((r) => setTimeout(r, 500));
        loads.push(loadavg()[0]!);
        const before = s.counters().sent;
        const t0 = process.hrtime.bigint();
        const [cmd, ...pre] = s.enter;
        let ok = true;
        try {
          execFileSync(cmd!, [...pre, 'uftp', '-I', 'eth0', '-M', group, '-p', port, '-R', String(o.rate), '-Y', 'none', '-x', '0', '-B', String(8 << 20), '-b', '1400', '-H', rx.map((_, i) => `0x${id(i)}`).join(','), file], { stdio: 'ignore', timeout: 300_000 });
        } catch {
          ok = false;
        }
        const secs = Number(process.hrtime.bigint() - t0) / 1e9;
        const sent = s.counters().sent - before;
        for (const d of daemons) d.kill('SIGKILL');
        const same = rx.filter((h) => h.sh(`cmp -s /run/sfmcu/data.img ${file}`).code === 0).length;
        for (const h of rx) h.loss(0);
        const line = `| ${loss}% | uftp | ${H} | ${(sent / 1e6).toFixed(0)} | ${(sent / bytes).toFixed(3)} | ${secs.toFixed(2)} | ${ok && same === H ? '1/1' : `0/1 (${same} of ${H} hosts right)`} |`;
        process.stderr.write(`${line}\n`);
        rows.push(line);
      }
    const section = [
      '### uftp, for comparison (a separate run, same hosts and image)',
      '',
      `Measured ${new Date().toISOString().slice(0, 10)}, load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)}. uftp 4.10 (Debian), no encryption (\`-Y none\`), 1400-byte blocks, rate \`-R ${o.rate}\` Kbit/s, its default congestion control (none); the file is the template's ${pages} data pages (${(bytes / 2 ** 20).toFixed(0)} MiB). time = uftp's start to its exit (every host has the file); ok = the file byte for byte the same on every host. Loss as above (nftables).`,
      '',
      '| loss | transport | H | parent link MB | bytes | time s | ok |',
      '|---|---|---|---|---|---|---|',
      ...rows,
      '',
      `Command: \`npx tsx benchmarks/mcast-uftp.ts ${argv.join(' ')}\` (as root).`,
    ].join('\n');
    const { writeSection } = await import('./run.js');
    writeSection('mcast-uftp', section);
  } finally {
    await c.destroy();
  }
}

main(process.argv.slice(2)).catch((e) => {
  process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
