/**
 * Delivering a chaos job's kill: wait for its moment (plan.phase), find the target among the job's
 * processes (or its connections to the launcher), and send the signal, or cut the connection with
 * `ss -K` (the kernel destroys the host's end and sends the rank a reset).
 */
import { spawnSync } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Landing } from './expect.js';
import type { JobPlan } from './plan.js';
import { recordIn, type JobScanner, type Proc, type Role } from './scene.js';

/** What the job runner knows while the launcher runs (updated as it reads its output). */
export interface LiveJob {
  t0: number;
  launcherPid: number;
  exited: boolean;
  /** Ranks that printed "ready" (MPI_Init done). */
  ready: number;
  /** The launcher's -v log said that every clone is made / that it started the ranks. */
  provisioned: boolean;
  launched: boolean;
  stateDir: string;
  scanner: JobScanner;
}

const ROLES: Partial<Record<JobPlan['kind'], Role[]>> = {
  rank: ['rank'],
  holder: ['holder', 'holder-parent'],
  qemu: ['qemu'],
  mpirun: ['mpirun', 'mpiexec'],
};

/** Waits for the moment, then kills; null when the launcher ended first (the kill missed). */
export async function deliver(plan: JobPlan, job: LiveJob): Promise<Landing | null> {
  if (plan.kind === 'none' || plan.kind === 'abort' || plan.kind === 'exit') return null;
  const ok = await waitForMoment(plan, job);
  if (!ok || job.exited) return null;
  const landing = (target: string | null, role: Role | null, delivered: boolean): Landing => ({
    delivered: delivered && !job.exited,
    atMs: Math.round(performance.now() - job.t0),
    target,
    role,
    provisioned: job.provisioned,
    launched: job.launched,
  });
  switch (plan.kind) {
    case 'launcher-kill':
    case 'launcher-term':
      return landing(`launcher ${job.launcherPid}`, 'launcher', signal(job.launcherPid, plan.signal as NodeJS.Signals));
    case 'ctrl-c': {
      const first = landing(`process group ${job.launcherPid}`, 'launcher', signal(-job.launcherPid, 'SIGINT'));
      await sleep(plan.gapMs);
      signal(-job.launcherPid, 'SIGINT');
      return first;
    }
    case 'pmi': {
      const cut = cutConnection(plan, job);
      return landing(cut, null, cut !== null);
    }
    default: {
      const p = pick(plan, job);
      if (!p) return landing(null, null, false);
      return landing(`${p.pid} ${p.cmd.slice(0, 60)}`, p.role, signal(p.pid, plan.signal as NodeJS.Signals));
    }
  }
}

/** Resolves true when cond() holds (checked every 10 ms), false as soon as the launcher has exited. */
async function until(job: LiveJob, cond: () => boolean): Promise<boolean> {
  while (!cond()) {
    if (job.exited) return false;
    await sleep(10);
  }
  return !job.exited;
}

async function waitForMoment(plan: JobPlan, job: LiveJob): Promise<boolean> {
  let from = job.t0;
  if (plan.phase === 'run' && !(await until(job, () => job.ready >= plan.np))) return false;
  if (plan.phase === 'appear' && !(await until(job, () => candidates(plan, job).length > 0))) return false;
  if (plan.phase !== 'launch') from = performance.now();
  return until(job, () => performance.now() - from >= plan.delayMs);
}

function candidates(plan: JobPlan, job: LiveJob): Proc[] {
  const roles = ROLES[plan.kind] ?? [];
  const live = job.scanner.processes().live;
  // In the order of roles, then of pid: the same plan picks the same kind of target.
  return roles.flatMap((r) => live.filter((p) => p.role === r).sort((a, b) => a.pid - b.pid));
}

function pick(plan: JobPlan, job: LiveJob): Proc | null {
  let all = candidates(plan, job);
  // Holders: clones' holders are the usual target; the batch's parent one time in four.
  if (plan.kind === 'holder') {
    const clones = all.filter((p) => p.role === 'holder');
    const parent = all.filter((p) => p.role === 'holder-parent');
    all = plan.which % 4 === 3 && parent.length > 0 ? parent : clones.length > 0 ? clones : parent;
  }
  return all.length > 0 ? all[plan.which % all.length]! : null;
}

function signal(pid: number, sig: NodeJS.Signals): boolean {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

/** Destroys one established connection to a port the ticket opened; returns "peer" or null. */
function cutConnection(plan: JobPlan, job: LiveJob): string | null {
  const id = job.scanner.ticketId;
  const record = id ? recordIn(job.stateDir, id) : null;
  if (!record) return null;
  const gw = record.ticket.network.gateway;
  const conns: Array<{ local: string; peer: string }> = [];
  for (const port of record.ticket.openPorts) {
    const r = spawnSync('ss', ['-Htn', 'state', 'established', 'src', `${gw}:${port}`], { encoding: 'utf8' });
    for (const line of (r.stdout ?? '').split('\n')) {
      const f = line.trim().split(/\s+/);
      if (f.length >= 4) conns.push({ local: f[2]!, peer: f[3]! });
    }
  }
  if (conns.length === 0) return null;
  conns.sort((a, b) => a.peer.localeCompare(b.peer));
  const c = conns[plan.which % conns.length]!;
  const r = spawnSync('ss', ['-K', '-Htn', 'state', 'established', 'src', c.local, 'dst', c.peer], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() ? `${c.peer}->${c.local}` : null;
}
