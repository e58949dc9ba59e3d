/**
 * The launcher's exit status a chaos job must end with, from the README's exit-status table and from
 * where the kill landed. Where the table has no row (a rank's PMI connection cut), any status is
 * accepted, and the job must still end and leave nothing.
 */
import { constants } from 'node:os';
import type { JobPlan } from './plan.js';
import type { Role } from './scene.js';

/** Where the kill landed. */
export interface Landing {
  /** The kill reached its target while the launcher still ran. */
  delivered: boolean;
  /** ms since the launcher was started. */
  atMs: number;
  /** The process killed, or the connection cut ("10.238.0.2:41234"). */
  target: string | null;
  role: Role | null;
  /** The launcher had all its clones when the kill landed (its -v log said so). */
  provisioned: boolean;
  /** The launcher had started the ranks, or the native launcher. */
  launched: boolean;
}

export interface Expectation {
  /** Accepted statuses; null: any. */
  statuses: number[] | null;
  /** The README row (or reason) behind it. */
  rule: string;
}

export const signalStatus = (sig: NodeJS.Signals): number => 128 + (constants.signals[sig] ?? 0);

export function expectedStatus(plan: JobPlan, landing: Landing | null): Expectation {
  const own = launcherOwn(plan, landing);
  if (own) return own;
  if (plan.kind === 'abort') return { statuses: [plan.fail!.code], rule: "MPI_Abort's errorcode" };
  if (plan.kind === 'exit') return { statuses: [plan.fail!.code], rule: "the rank's code" };
  if (plan.kind === 'none' || !landing?.delivered) return { statuses: [0], rule: plan.kind === 'none' ? 'every rank exits 0' : 'missed: the job had ended, every rank exits 0' };
  const sig = plan.signal as NodeJS.Signals;
  const lost = { statuses: [4], rule: 'a clone died while the cluster was being made: 4, the cluster could not be provisioned' };
  switch (plan.kind) {
    case 'launcher-kill':
      return { statuses: [137], rule: 'sfmpirun killed by SIGKILL: 128+9, as its parent sees it' };
    case 'launcher-term':
      return { statuses: [143], rule: 'sfmpirun got SIGTERM: 128+15' };
    case 'ctrl-c':
      return { statuses: [130], rule: 'sfmpirun got SIGINT: 128+2' };
    case 'rank':
      return { statuses: [signalStatus(sig)], rule: `a rank was killed by signal N: 128+N` };
    case 'mpirun':
      return { statuses: [signalStatus(sig)], rule: 'the native launcher, which stands for the ranks, was killed by signal N: 128+N' };
    case 'holder':
      // The holders' parent takes its clones along whenever it dies (they have it as their
      // parent-death signal): as if each clone had been killed.
      if (landing.role === 'holder-parent') return cloneDied(landing, lost);
      if (sig === 'SIGTERM') return { statuses: [0], rule: 'PID 1 of a namespace ignores a signal it has no handler for: the job goes on' };
      return cloneDied(landing, lost);
    case 'qemu':
      return cloneDied(landing, lost);
    case 'pmi':
      return { statuses: null, rule: "no README row: a rank's PMI connection cut; the job must end and leave nothing" };
  }
}

/**
 * Hydra's mpiexec under --launch native reports a rank killed or a proxy lost in its own way (the
 * README says so): the MPI error the failure caused in the other ranks (15), or 255. Its status is
 * then any failure, not the table's number; the job must still end and leave nothing. A rank's exit
 * with a code follows the table (its rankwatch tells sfmpirun), as in a direct launch.
 */
function launcherOwn(plan: JobPlan, landing: Landing | null): Expectation | null {
  if (plan.mpi !== 'hydra' || plan.kind === 'exit') return null;
  // A holder takes SIGTERM without dying (PID 1 of its namespace): no rank fails then.
  const survived = plan.kind === 'holder' && plan.signal === 'SIGTERM' && landing?.role !== 'holder-parent';
  const rankFailed = ((plan.kind === 'rank' || plan.kind === 'holder' || plan.kind === 'qemu') && landing?.delivered && landing.launched && !survived);
  return rankFailed ? { statuses: Array.from({ length: 255 }, (_, i) => i + 1), rule: "--launch native with Hydra: mpiexec's own failure status (README)" } : null;
}

/** A clone (its holder, its QEMU) killed: with its ranks (137), or before they ran (4). */
function cloneDied(landing: Landing, lost: Expectation): Expectation {
  if (landing.launched) return { statuses: [137], rule: 'the clone died with its ranks: a rank killed by signal 9, 128+9' };
  if (!landing.provisioned) return lost;
  // Made, but its ranks not started yet: lost before the job could use it (4), its rank could
  // not be started in it (125, the README's row for a clone that is gone), or its ranks had just
  // started and died with it (137).
  return { statuses: [4, 125, 137], rule: 'a clone died before its ranks started: 4, the cluster could not be provisioned; 125, a rank could not be started in its clone; or its ranks had just started and died with it: 137' };
}
