/**
 * Is the file server answering? One NFS NULL call (procedure 0 of program 100003, version 4) over
 * a fresh TCP connection: the cheapest request an NFS server must answer, and one that goes
 * through its whole RPC path. A TCP connect alone is not enough: the kernel completes the
 * handshake for a process that is stopped or stuck.
 *
 * Why the launcher needs this: the guests' NFSv4 clients do not fail every call in bounded time
 * when the server is gone (measured: a soft mount returns errors for I/O in flight, but a later
 * open() waits in NFSv4 state recovery for ever), so the host must notice a dead or hung server
 * itself and fail the job.
 */
import { connect } from 'node:net';

const NFS_PROGRAM = 100003;
const NFS_V4 = 4;

/** The RPC call on the TCP wire: a record mark, then the call header with AUTH_NONE. */
export function nullCall(xid: number): Buffer {
  const words = [0 /* xid */, 0 /* CALL */, 2 /* RPC version */, NFS_PROGRAM, NFS_V4, 0 /* NULL */, 0, 0 /* cred */, 0, 0 /* verifier */];
  const b = Buffer.alloc(4 + words.length * 4);
  b.writeUInt32BE((0x80000000 | (words.length * 4)) >>> 0, 0);
  words.forEach((w, i) => b.writeUInt32BE(i === 0 ? xid >>> 0 : w, 4 + i * 4));
  return b;
}

/** Whether `reply` (record mark included) accepts the call `xid` with SUCCESS. */
export function isSuccessReply(reply: Buffer, xid: number): boolean {
  if (reply.length < 28) return false;
  const at = (i: number) => reply.readUInt32BE(4 + i * 4);
  // xid, REPLY (1), MSG_ACCEPTED (0), verifier flavor, verifier length (0 for AUTH_NONE), SUCCESS (0)
  return at(0) === xid >>> 0 && at(1) === 1 && at(2) === 0 && at(4) === 0 && at(5) === 0;
}

/** Resolves if the server answers a NULL call within `timeoutMs`; rejects saying what happened. */
export function nfsNull(host: string, port: number, timeoutMs: number): Promise<void> {
  const xid = Math.floor(Math.random() * 0xffffffff);
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const s = connect({ host, port });
    const timer = setTimeout(() => finish(new Error(`no answer to an NFS NULL call within ${Math.round(timeoutMs / 1000)} s`)), timeoutMs);
    function finish(e?: Error) {
      clearTimeout(timer);
      s.destroy();
      if (e) reject(e);
      else resolve();
    }
    s.once('connect', () => s.write(nullCall(xid)));
    s.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 28) finish(isSuccessReply(got, xid) ? undefined : new Error('an NFS NULL call was refused'));
    });
    s.once('error', (e) => finish(new Error(`cannot reach it: ${e.message}`)));
    s.once('close', () => finish(new Error('it closed the connection without answering')));
  });
}
