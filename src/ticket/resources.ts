/**
 * What a ticket creates on a host, as its state record names it. Every resource is written to the
 * record before it is created and removed (in reverse order of recording) on every path out, or by
 * `snowflock cleanup` after a crash. Providers see the record through ResourceLedger only.
 */
import type { ProcessIdentity } from '../common/processes.js';
import type { CloneInfo } from '../providers/clone.js';

export type Resource =
  | { kind: 'process'; pid: number; /** /proc/PID/stat starttime, guards against PID reuse */ start: number; what: string }
  | { kind: 'netns'; name: string }
  /** group: the ticket's device group (names.ts linkGroup), when the link was created in it. */
  | { kind: 'link'; name: string; group?: number }
  | { kind: 'nft-table'; family: 'inet'; name: string }
  | { kind: 'file'; path: string }
  | { kind: 'dir'; path: string }
  /**
   * A FUSE mount (a memtap's): unmounted lazily at teardown, whatever state its process left it
   * in. ns: the process whose mount namespace holds it, when not this host's own (a simulated
   * host); when that process is gone, so is the namespace and the mount with it.
   */
  | { kind: 'mount'; path: string; ns?: ProcessIdentity };

/**
 * The ticket's state record as providers see it: every resource goes in (and is persisted) before
 * it is created; the clones' CloneInfo lets another process reattach (snowflock exec).
 */
export interface ResourceLedger {
  /** The ticket's own directory (recorded; removed with the ticket). */
  readonly dir: string;
  add(...resources: Resource[]): Promise<void>;
  /** Persists per-clone information for reattaching (see Provider.attach). */
  setClones(clones: CloneInfo[]): Promise<void>;
}

/** One line naming a resource, for reports and errors ("link sf1a2b3c"). */
export function describe(r: Resource): string {
  switch (r.kind) {
    case 'process':
      return `process ${r.pid} (${r.what})`;
    case 'netns':
      return `netns ${r.name}`;
    case 'link':
      return `link ${r.name}`;
    case 'nft-table':
      return `nft table ${r.family} ${r.name}`;
    case 'file':
      return `file ${r.path}`;
    case 'dir':
      return `dir ${r.path}`;
    case 'mount':
      return `mount ${r.path}${r.ns ? ` (mount namespace of ${r.ns.pid})` : ''}`;
  }
}
