/**
 * The --report FILE record of one job: phase timings (provision, launch, run, teardown, in
 * milliseconds), the ticket and its clones, each app's MPI as detection saw it, each rank's clone,
 * how it ended and what it did with the process managers, and the job's status. Written once at
 * the very end, after teardown, so its timings are complete.
 *
 * Version 2 (PMIx, issue 9): `launch` says 'direct' where version 1 said 'pmi' (every rank gets
 * both process managers); `apps` is new; a rank started directly has `contacted` (the managers it
 * contacted: 'pmi', 'pmix'), `finalized`, `singleton` (an MPI program's rank that never contacted
 * either), and when they apply `left` (how it left the job unfinished, exit.ts) and `unsupported`
 * (calls a server refused it); `processManagers` says where the servers were. Version 1's fields
 * are unchanged. Since clusters span hosts (issue 10), each clone also names its `host`. `memory` (optional, issue 11) is there for a job whose clones got their memory on
 * demand from a template on another host: per clone host, guest pages, pages fetched, pages the
 * heuristics avoided, bytes received; per memserver, bytes sent (src/memory/report.ts). `warm`
 * (issue 13): the network came from the warm service.
 */
import { writeFile } from 'node:fs/promises';
import type { MemoryFigures } from '../../src/memory/report.js';
import type { MpiRuntime } from '../../src/providers/checkpoint.js';
import type { RankOutcome } from './exit.js';
import type { RankContact } from './launch/direct.js';

export type Phase = 'provision' | 'launch' | 'run' | 'teardown';

export interface JobReport {
  version: 2;
  provider: string | null;
  launch: 'direct' | 'native';
  mpi: MpiRuntime;
  apps: Array<{ program: string; mpi: MpiRuntime; via: string }>;
  /** Direct launch: the PMI-1 server's address and every sf-pmix (pid, URI). */
  processManagers?: { pmi: string | null; pmix: Array<{ pid: number; uri: string }> };
  ticket: string | null;
  /** The ticket's network was made ahead by this host's warm service (snowflock warm). */
  warm: boolean;
  /** The key of the checkpoint the clones started from (jobs of the same programs share it, whatever their directory). */
  checkpoint: string | null;
  np: number;
  /** Each clone, with the host it ran on (this host's name, unless the job spanned hosts). */
  clones: Array<{ id: number; hostname: string; address: string; host: string }>;
  phases: Partial<Record<Phase, number>>;
  ranks: Array<RankOutcome & { clone: number } & Partial<RankContact>>;
  exitCode: number;
  summary: string | null;
  kept: boolean;
  /** Memory on demand: the clone hosts' and memservers' figures (absent when no clone used it). */
  memory?: MemoryFigures;
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

/** Writes a report (a job's, or snowflock run's: launcher/cli/run-report.ts) as indented JSON. */
export async function writeReport(path: string, report: object): Promise<void> {
  await writeFile(path, JSON.stringify(report, null, 2) + '\n');
}
