/**
 * How a job and this host's warm service (./service.ts) talk: one JSON line each way over a Unix
 * socket in the state directory, one connection per request. The service makes ticket networks
 * ahead of time (record, subnet, bridge, firewall table), each under its own ticket and reaper; a
 * job leases one instead of making its own, and gives it back at teardown once its processes are
 * dead, so that deleting the network (the kernel's RCU waits, about 40 ms a bridge) happens after
 * the job, on the service's time.
 *
 *   {"op":"lease","pool":CIDR} -> {"ok":true,"ticket":"1a2b3c"} | {"ok":false,"why":"..."}
 *   {"op":"return","ticket":T} -> {"ok":true} once the service owns T (its reaper, its record)
 *   {"op":"status"}            -> {"ok":true,"status":{...}}
 *
 * A lease hands over the ticket's record: from the reply on, the job owns it (its own reaper, the
 * record's owner) and the service has forgotten it; a return hands it back the same way.
 */
import { join } from 'node:path';

/** The service's socket in a state directory. */
export function socketPath(stateDir: string): string {
  return join(stateDir, 'warm.sock');
}

/** A lease names the job's address pool (SNOWFLOCK_POOL): only a network inside it will do. */
export type Request = { op: 'lease'; pool: string } | { op: 'return'; ticket: string } | { op: 'status' };

export interface WarmStatus {
  pid: number;
  /** How many networks it keeps ready. */
  size: number;
  /** Ticket ids of the networks ready for a lease. */
  ready: string[];
  /** Networks handed back and being torn down. */
  returning: number;
  leases: number;
  returns: number;
  /** Leases refused because none was ready (the job made its own). */
  misses: number;
  /** Leased networks that no job adopted within a few seconds (it died first), torn down. */
  abandoned: number;
}

export type Reply = { ok: true; ticket?: string; status?: WarmStatus } | { ok: false; why: string };

export function encode(m: Request | Reply): string {
  return JSON.stringify(m) + '\n';
}
