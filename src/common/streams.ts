/**
 * Stream plumbing shared by the ways into a clone (the guest agent's channel, SSH, QMP): connecting
 * to a socket that may not exist yet, and ending a process's output streams in an order consumers
 * can rely on.
 */
import { connect, type Socket } from 'node:net';
import type { PassThrough } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

/** Connects to a unix socket, retrying every `retryMs` until it accepts or `deadline` (ms since epoch) passes. */
export async function connectWhenReady(path: string, deadline: number, retryMs = 10): Promise<Socket> {
  for (;;) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(path, () => {
          s.off('error', reject);
          resolve(s);
        });
        s.once('error', reject);
      });
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await sleep(retryMs);
    }
  }
}

/**
 * Ends a process's stdout and stderr, then calls `done` once a consumer reading them has seen both
 * ends (so output is complete when "exited" resolves); a stream nobody reads does not hold it back.
 */
export function endStreams(streams: PassThrough[], done: () => void): void {
  let open = streams.length;
  const one = () => --open === 0 && done();
  for (const st of streams) {
    if (!st.writableEnded) st.end();
    if (st.readableEnded || st.readableFlowing !== true) one();
    else st.once('end', one);
  }
}
