/**
 * The checkpoint: SnowFlock's sf_checkpoint_parent(), the immutable parent state clones start from.
 * Namespace clones start from the host as it is; VM clones from a warm template (device state and a
 * frozen RAM file), or from the guest image alone when they cold-boot. `detail` is the provider's
 * own, typed by the provider (Checkpoint<D>). A checkpoint is made of programs and the MPI runtime,
 * never of a job's directories: those the clones see through the ticket (Ticket.shared), so jobs of
 * one program from different directories share one checkpoint.
 */
import type { MemorySource } from '../memory/source.js';
import type { ProviderName } from './provider.js';

/** The MPI runtime a guest image must carry. */
export type MpiRuntime = 'mpich' | 'openmpi' | 'none';

/**
 * How the memory of VM clones on other hosts travels (memory on demand): its working set pushed
 * once to every clone host over IP multicast, on the ticket's own group, with faults answered by
 * unicast beside it and sent to the group for the other hosts (native/mcast); or fetched by each
 * host for itself, by unicast only.
 */
export type MemoryTransport = 'multicast' | 'unicast';

/** What a checkpoint is made of. */
export interface CheckpointSource {
  /** Host programs (absolute paths) that must run inside the clones, with their library closure. */
  programs?: string[];
  mpi?: MpiRuntime;
  /** vm: no template; every clone boots from the image (to compare against cloning). */
  coldBoot?: boolean;
  /**
   * vm, memory on demand: the template lives on another host; its clones here start from its
   * descriptor and fetch its memory from the memserver there (src/memory/source.ts). The image is
   * made here as usual; the template is not booted here.
   */
  memory?: MemorySource;
  /** vm over hosts: how the template's memory reaches the other hosts (default multicast). */
  memoryTransport?: MemoryTransport;
}

export interface Checkpoint<D = unknown> {
  provider: ProviderName;
  /** Content address of what the checkpoint was made from (stable across runs when nothing changed). */
  key: string;
  detail: D;
}
