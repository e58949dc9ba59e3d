/**
 * The --report FILE record of `snowflock run`, in the shape of sfmpirun's (launcher/job/report.ts,
 * whose phases, clock and writer it shares): the phases in milliseconds (provision, run, teardown:
 * no launch, the command starts in every clone at once), the ticket and its clones with the host
 * each ran on, how the command ended in each clone, and the status snowflock exited with.
 */
import { hostname } from 'node:os';
import { shellStatus } from '../../src/common/signals.js';
import type { Clone, ExitStatus } from '../../src/providers/clone.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import type { JobReport } from '../job/report.js';

export interface RunReport {
  version: 1;
  command: 'run';
  argv: string[];
  provider: string;
  ticket: string;
  /** The ticket's network was made ahead by this host's warm service (snowflock warm). */
  warm: boolean;
  /** The key of the checkpoint the clones started from. */
  checkpoint: string;
  clones: Array<JobReport['clones'][number] & { host: string }>;
  phases: JobReport['phases'];
  /** One per clone, in clone order: how the command ended there, and that as a shell status. */
  exits: Array<{ clone: number; hostname: string; code: number | null; signal: NodeJS.Signals | null; status: number }>;
  exitCode: number;
  /** Why the run failed as a whole (the clones lost their file server), or null. */
  summary: string | null;
}

export function runReport(
  argv: string[],
  ticket: Ticket,
  checkpoint: string,
  clones: Clone[],
  phases: JobReport['phases'],
  statuses: ExitStatus[] | null,
  exitCode: number,
  summary: string | null,
): RunReport {
  const host = hostname();
  return {
    version: 1,
    command: 'run',
    argv,
    provider: ticket.provider,
    ticket: ticket.id,
    warm: ticket.warm === true,
    checkpoint,
    // Every clone is on this host today; clusters spanning hosts (issue 10) will name theirs.
    clones: clones.map((c) => ({ id: c.id, hostname: c.hostname, address: c.address, host })),
    phases,
    exits: (statuses ?? []).map((s, i) => ({ clone: clones[i]!.id, hostname: clones[i]!.hostname, code: s.code, signal: s.signal, status: shellStatus(s) })),
    exitCode,
    summary,
  };
}
