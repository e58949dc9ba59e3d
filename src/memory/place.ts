/**
 * Where a memory helper (or a clone that maps a memtap) runs. Normally on this host, as the host
 * agent that starts it does; in tests and benchmarks, on a simulated host of this machine (a
 * native/simhost: its own network and mount namespaces, /dev/shm private, so the template's RAM
 * file cannot be opened there), entered with nsenter. Only the namespaces a helper needs are
 * entered, never the PID namespace: its pid stays this machine's, so that the ticket's record, its
 * lifeline and its teardown see it as any other process.
 */
import { ProvisionError } from '../common/errors.js';
import { isRunning, type ProcessIdentity } from '../common/processes.js';

/** A simulated host: its name, and its init (the process whose namespaces are the host's). */
export interface SimulatedHost extends ProcessIdentity {
  name: string;
}

/** net: its network (a memserver's or memtap's socket); mnt: its files (a memtap's mount, a QEMU mapping it). */
export type Namespace = 'net' | 'mnt';

/** argv prefix that runs a program in those namespaces of the host; nothing for this host. */
export function enterPrefix(host: SimulatedHost | undefined, namespaces: Namespace[]): string[] {
  if (!host) return [];
  if (!isRunning(host)) throw new ProvisionError(`simulated host ${host.name} is gone (its init ${host.pid} ended)`);
  const flag = { net: '--net', mnt: '--mount' } as const;
  return ['nsenter', ...namespaces.map((n) => `${flag[n]}=/proc/${host.pid}/ns/${n}`), '--'];
}
