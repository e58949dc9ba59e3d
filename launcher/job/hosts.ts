/**
 * Where a job's clones go: which hosts, and the host of every clone (decided once, by plan.ts).
 *
 *   - Inside a Slurm allocation (sbatch or salloc: SLURM_JOB_ID, SLURM_JOB_NODELIST and
 *     SLURM_JOB_CPUS_PER_NODE set) of more than one node, or of one node that is not this host:
 *     the allocation's nodes, the clones spread over them by their CPUs (placement.ts). Agents are
 *     started as a job step (srun).
 *   - With --real-hosts, the hosts of -hosts, -H or the hostfile, in order, their slots taken as
 *     their CPUs. Agents are started over SSH; a host named like this one (or localhost) is this
 *     host, without SSH.
 *   - Otherwise, and whenever every clone lands on this host: this host alone, as always. No agent.
 * A host that gets no clone is left out (no agent is started there).
 */
import { hostname } from 'node:os';
import { availableParallelism } from 'node:os';
import { UsageError } from '../../src/common/errors.js';
import { readAllocation } from '../../src/hosts/slurm-allocation.js';
import { placeClones } from './placement.js';
import type { JobSpec } from './spec.js';

export interface PlannedHost {
  name: string;
  /** CPUs it offers the job (the allocation's count, a hostfile's slots, this host's cores). */
  cpus: number;
  /** This host: its clones are made by the launcher's own engine. */
  local: boolean;
}

export interface HostPlan {
  source: 'here' | 'slurm' | 'ssh';
  hosts: PlannedHost[];
  /** Clone id -> index into hosts. */
  cloneHosts: number[];
  /** The Slurm job whose nodes these are. */
  allocation?: string;
}

const LOCAL_NAMES = new Set(['localhost', '127.0.0.1', '::1']);

export function planHosts(job: Pick<JobSpec, 'hosts' | 'realHosts' | 'placement'>, env: NodeJS.ProcessEnv, clones: number, ranksPerClone: number): HostPlan {
  const me = hostname().split('.')[0]!;
  const here: HostPlan = { source: 'here', hosts: [{ name: me, cpus: availableParallelism(), local: true }], cloneHosts: new Array<number>(clones).fill(0) };
  let alloc;
  try {
    alloc = readAllocation(env, hostname());
  } catch (e) {
    throw new UsageError(`${(e as Error).message}; this does not look like a Slurm allocation's environment (unset the SLURM_* variables to run on this host alone)`);
  }
  if (job.realHosts && job.hosts?.length) {
    const hosts = job.hosts.map((h) => ({ name: h.name, cpus: h.slots, local: LOCAL_NAMES.has(h.name) || h.name === me || h.name === hostname() }));
    return used('ssh', hosts, placeClones(clones, hosts.map((h) => h.cpus), ranksPerClone, job.placement), here);
  }
  if (job.realHosts && !alloc) throw new UsageError('--real-hosts needs the hosts: name them with -hosts h1,h2 (or a hostfile), or run inside a Slurm allocation');
  if (!alloc || (alloc.nodes.length === 1 && alloc.here !== null)) return here;
  const hosts = alloc.nodes.map((n) => ({ name: n.name, cpus: n.cpus, local: n.name === alloc.here }));
  return { ...used('slurm', hosts, placeClones(clones, hosts.map((h) => h.cpus), ranksPerClone, job.placement), here), allocation: alloc.jobId };
}

/** Only the hosts that got clones; this host alone when it is the only one. */
function used(source: HostPlan['source'], hosts: PlannedHost[], cloneHosts: number[], here: HostPlan): HostPlan {
  const keep = [...new Set(cloneHosts)].sort((a, b) => a - b);
  if (keep.length === 1 && hosts[keep[0]!]!.local) return here;
  const index = new Map(keep.map((h, i) => [h, i]));
  return { source, hosts: keep.map((h) => hosts[h]!), cloneHosts: cloneHosts.map((h) => index.get(h)!) };
}
