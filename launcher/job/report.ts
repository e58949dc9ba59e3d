/**
 * The --report FILE record of one job: phase timings (provision, launch, run, teardown, in
 * milliseconds), the ticket and its clones, each rank's clone and how it ended, and the job's status.
 * Written once at the very end, after teardown, so its timings are complete.
 */
import { writeFile } from 'node:fs/promises';
import type { RankOutcome } from './exit.js';

export type Phase = 'provision' | 'launch' | 'run' | 'teardown';

export interface JobReport {
  version: 1;
  provider: string | null;
  launch: 'pmi' | 'native';
  mpi: 'mpich' | 'openmpi' | 'none';
  ticket: string | null;
  np: number;
  clones: Array<{ id: number; hostname: string; address: string }>;
  phases: Partial<Record<Phase, number>>;
  ranks: Array<RankOutcome & { clone: number }>;
  exitCode: number;
  summary: string | null;
  kept: boolean;
}

/** Measures phases in order; each phase ends where the next begins or at `end`. */
export class PhaseClock {
  readonly phases: Partial<Record<Phase, number>> = {};
  private current: { phase: Phase; t0: number } | null = null;

  begin(phase: Phase): void {
    this.end();
    this.current = { phase, t0: performance.now() };
  }

  end(): void {
    if (!this.current) return;
    this.phases[this.current.phase] = Math.round((performance.now() - this.current.t0) * 10) / 10;
    this.current = null;
  }
}

export async function writeReport(path: string, report: JobReport): Promise<void> {
  await writeFile(path, JSON.stringify(report, null, 2) + '\n');
}
