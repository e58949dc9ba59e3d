/**
 * The job's exit status, and the one summary line that explains it.
 *
 * Policy (what mpiexec users expect, and what scripts can rely on):
 *   - 0 when every rank exits 0;
 *   - otherwise the status of the first rank that failed, in the order failures were seen:
 *     its exit code, 128+N when it was killed by signal N, or the errorcode it gave MPI_Abort
 *     (over PMI-1 or PMIx);
 *   - 1 for a rank that exited with code 0 but left the job unfinished while other ranks waited
 *     for it (contact.ts): it did not finalize, or never contacted a process manager at all (a
 *     singleton among ranks waiting for it in MPI_Init). Open MPI's mpirun also gives 1 there;
 *   - 1 for a rank whose connection to the PMIx server closed before it finalized and that did
 *     not exit within the grace period (it is stopped with the others);
 *   - 124 when the job ran past --timeout / MPIEXEC_TIMEOUT (as timeout(1) does; distinct from any
 *     status a rank could cause through exit(), which scripts seldom use above 100);
 *   - 128+N when the launcher itself was stopped by signal N (SIGINT, SIGTERM, SIGHUP), like a shell.
 * The summary line goes to stderr, one line, in a fixed form scripts can parse:
 *   sfmpirun: rank 2 (clone sf1a2b3c-2) exited with code 3
 *   sfmpirun: rank 1 (clone sf1a2b3c-1) was killed by signal 11 (SIGSEGV)
 *   sfmpirun: rank 0 (clone sf1a2b3c-0) called MPI_Abort with errorcode 7
 *   sfmpirun: rank 1 (clone sf1a2b3c-1) exited with code 0 without finalizing MPI while other ranks waited for it
 */
import { signalNumber, signalStatus } from '../../src/common/signals.js';
import type { Left } from './contact.js';

export const timeoutExitCode = 124;

/** How a rank ended. */
export interface RankOutcome {
  rank: number;
  hostname: string;
  code: number | null;
  signal: NodeJS.Signals | null;
  /** The errorcode of MPI_Abort, when the rank asked the process manager to abort. */
  abortCode?: number;
  abortMessage?: string;
  /** It exited with code 0 but left the job unfinished (see contact.ts), or was lost to its PMIx server. */
  left?: Left | 'lost';
}

export function failed(o: RankOutcome): boolean {
  return o.abortCode !== undefined || o.signal !== null || (o.code ?? 0) !== 0 || o.left !== undefined;
}

/** The exit status one failed (or successful) rank stands for. */
export function statusOf(o: RankOutcome): number {
  if (o.abortCode !== undefined) return o.abortCode & 0xff;
  if (o.signal) return signalStatus(o.signal);
  if (o.left && !o.code) return 1;
  return (o.code ?? 0) & 0xff;
}

/** Why the rank failed, as the end of the summary line. */
export function reasonOf(o: RankOutcome): string {
  if (o.abortCode !== undefined) return `called MPI_Abort with errorcode ${o.abortCode}${o.abortMessage ? ` (${o.abortMessage})` : ''}`;
  if (o.signal) return `was killed by signal ${signalNumber(o.signal)} (${o.signal})`;
  if (o.left === 'unfinalized') return `exited with code ${o.code ?? 0} without finalizing MPI while other ranks waited for it`;
  if (o.left === 'never-contacted') {
    return `exited with code ${o.code ?? 0} without ever contacting the process managers while other ranks waited for it (it ran as a singleton)`;
  }
  if (o.left === 'lost') return 'closed its connection to the PMIx server without finalizing, and did not exit';
  return `exited with code ${o.code ?? 0}`;
}

export function summaryLine(o: RankOutcome): string {
  return `sfmpirun: rank ${o.rank} (clone ${o.hostname}) ${reasonOf(o)}`;
}

/**
 * Keeps the first failure in the order it was seen. An MPI_Abort reported over PMI counts from the
 * moment it arrives, before the aborting rank's own exit. The two come by different channels (the
 * process manager's, the clone's), so the exit may be heard first: an abort of the rank that is
 * the first failure then says why it failed, in place of its bare exit code.
 */
export class ExitPolicy {
  private first: RankOutcome | null = null;
  /** Set when the launcher ended the job (timeout or signal); wins over rank statuses. */
  private stopped: { status: number; line: string } | null = null;

  /** Records a rank's end or abort; returns true when this is the job's first failure. */
  record(o: RankOutcome): boolean {
    if (this.first && !this.stopped && o.abortCode !== undefined && this.first.rank === o.rank && this.first.abortCode === undefined) {
      this.first = { ...this.first, abortCode: o.abortCode, abortMessage: o.abortMessage };
      return false;
    }
    if (!failed(o) || this.first || this.stopped) return false;
    this.first = o;
    return true;
  }

  /** The launcher stopped the job itself (timeout, signal); the first such reason counts. */
  stop(status: number, line: string): void {
    if (!this.stopped) this.stopped = { status, line };
  }

  get wasStopped(): boolean {
    return this.stopped !== null;
  }

  get firstFailure(): RankOutcome | null {
    return this.first;
  }

  /** The job's exit status and its summary line (null when every rank exited 0). */
  verdict(): { status: number; line: string | null } {
    if (this.stopped) return this.stopped;
    if (this.first) return { status: statusOf(this.first), line: summaryLine(this.first) };
    return { status: 0, line: null };
  }
}
