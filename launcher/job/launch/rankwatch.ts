/**
 * The other end of native/rankwatch, for a native launch through Hydra: a TCP port on the
 * ticket's gateway where each rank's wrapper says, in one line, that its rank failed ("RANK exit
 * CODE" or "RANK signal N"). Hydra alone ends a job early only when a rank is killed by a signal;
 * with this, a rank's exit code ends it as in a direct launch (run.ts applies the same policy).
 */
import { createServer, type Server, type Socket } from 'node:net';
import { logger } from '../../../src/common/log.js';
import { signalName } from '../../../src/common/signals.js';

const log = logger('native');

export interface RankFailure {
  rank: number;
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** One report line, or null if it is not one (anything else connecting is ignored). */
export function parseReport(line: string): RankFailure | null {
  const m = /^(\d+) (exit|signal) (\d+)$/.exec(line.trim());
  if (!m) return null;
  const n = Number(m[3]);
  if (m[2] === 'exit') return n > 0 && n < 256 ? { rank: Number(m[1]), code: n, signal: null } : null;
  const name = signalName(n);
  return name ? { rank: Number(m[1]), code: null, signal: name } : null;
}

export interface RankWatch {
  port: number;
  close(): void;
}

/**
 * Listens on the gateway; `onFailure` hears each rank's failure once. Each rankwatch connects as
 * its rank starts and stays connected while it runs (its report is then one write, ahead of
 * Hydra's cleanup): the connections end with their ranks, or with close().
 */
export function listenForRankFailures(gateway: string, onFailure: (f: RankFailure) => void): Promise<RankWatch> {
  const heard = new Set<number>();
  const open = new Set<Socket>();
  const server: Server = createServer((sock) => {
    open.add(sock);
    let buf = '';
    sock.on('close', () => open.delete(sock));
    sock.on('error', () => sock.destroy());
    sock.on('data', (d) => {
      buf = (buf + d.toString('latin1')).slice(-256);
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      sock.end();
      const f = parseReport(buf.slice(0, nl));
      if (!f || heard.has(f.rank)) return;
      heard.add(f.rank);
      log.debug(`rank ${f.rank} failed: ${f.signal ?? `code ${f.code}`}`);
      onFailure(f);
    });
  });
  const close = () => {
    server.close();
    for (const sock of open) sock.destroy();
  };
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: gateway, port: 0 }, () => {
      const address = server.address();
      resolve({ port: typeof address === 'object' && address ? address.port : 0, close });
    });
  });
}
