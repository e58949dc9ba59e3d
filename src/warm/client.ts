/**
 * A job's side of the warm service (./protocol.ts): lease a ready network, give it back. Either
 * call answers null/false when there is no service, it does not answer within a moment, or it
 * refuses: the job then makes (or tears down) its network itself, as without a service.
 */
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { encode, socketPath, type Reply, type Request } from './protocol.js';

/** A live service answers in well under a millisecond; past this, the job goes on without it. */
const ANSWER_MS = 1500;

/** One request, its reply; null if nothing answered in time. */
export function ask(stateDir: string, request: Request, timeoutMs = ANSWER_MS): Promise<Reply | null> {
  const path = socketPath(stateDir);
  if (!existsSync(path)) return Promise.resolve(null);
  return new Promise((resolve) => {
    const sock = connect(path);
    let buf = '';
    const done = (r: Reply | null) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(r);
    };
    const timer = setTimeout(() => done(null), timeoutMs);
    sock.on('connect', () => sock.write(encode(request)));
    sock.on('data', (d) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      try {
        done(JSON.parse(buf.slice(0, nl)) as Reply);
      } catch {
        done(null);
      }
    });
    sock.on('error', () => done(null)); // a stale socket of a killed service: ECONNREFUSED
    sock.on('close', () => done(null));
  });
}

/** The id of a ready network inside `pool` that the service handed over, or null. */
export async function lease(stateDir: string, pool: string): Promise<string | null> {
  const r = await ask(stateDir, { op: 'lease', pool });
  return r?.ok && r.ticket ? r.ticket : null;
}

/** True once the service owns the ticket again (its teardown is then the service's). */
export async function giveBack(stateDir: string, ticket: string): Promise<boolean> {
  const r = await ask(stateDir, { op: 'return', ticket });
  return r?.ok === true;
}
