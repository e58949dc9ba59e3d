/**
 * Ways the launcher stops a running job from outside the ranks: signals sent to it, and --timeout.
 *
 * SIGINT, SIGTERM and SIGHUP are forwarded to every rank (so a rank can clean up, as under
 * mpiexec); ranks still running after a grace period are killed; then the normal teardown runs.
 * A second SIGINT (Ctrl-C twice) kills every rank at once. The job's status is 128+N for signal N.
 * --timeout / MPIEXEC_TIMEOUT sends SIGTERM to every rank when the time is up, with the same grace,
 * and the job's status is 124 (see exit.ts) with a line that says it timed out.
 */
import { signalStatus } from '../../src/common/signals.js';
import { timeoutExitCode } from './exit.js';

export const forwardedSignals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** Time ranks get to exit after a forwarded signal or a timeout before they are killed. */
export const stopGraceMs = 3000;

/** What the job offers to the stoppers. */
export interface Stoppable {
  /** Sends a signal to every rank still running. */
  signalRanks(signal: NodeJS.Signals): void;
  /** Records why the launcher stopped the job: its exit status and the line that says so. */
  stopped(status: number, line: string): void;
}

export class JobStopper {
  private signalCount = 0;
  private escalation: NodeJS.Timeout | null = null;
  private deadline: NodeJS.Timeout | null = null;
  private readonly handlers = new Map<NodeJS.Signals, () => void>();
  /** Set once the launcher has decided to stop the job; the provisioning phases check it. */
  stopping: string | null = null;

  constructor(private readonly job: Stoppable) {}

  /** Takes over SIGINT, SIGTERM and SIGHUP until `release()`. */
  install(): void {
    for (const sig of forwardedSignals) {
      const handler = () => this.onSignal(sig);
      this.handlers.set(sig, handler);
      process.on(sig, handler);
    }
  }

  /** Starts the --timeout clock (seconds), if any. */
  startTimeout(seconds: number | undefined): void {
    if (!seconds || seconds <= 0) return;
    this.deadline = setTimeout(() => {
      this.stopping = 'timeout';
      this.job.stopped(timeoutExitCode, `sfmpirun: job timed out after ${seconds} s (--timeout / MPIEXEC_TIMEOUT); stopped every rank`);
      this.stopRanks('SIGTERM');
    }, seconds * 1000);
    this.deadline.unref();
  }

  /** The launcher's stdout or stderr was closed by its reader: stop the job as SIGPIPE would. */
  outputClosed(stream: string): void {
    if (this.stopping) return;
    this.stopping = 'SIGPIPE';
    this.job.stopped(signalStatus('SIGPIPE'), `sfmpirun: ${stream} was closed by its reader; stopped the job`);
    this.stopRanks('SIGTERM');
  }

  private onSignal(sig: NodeJS.Signals): void {
    this.signalCount++;
    if (this.signalCount > 1 && sig === 'SIGINT') {
      this.job.signalRanks('SIGKILL');
      return;
    }
    if (this.signalCount > 1) return;
    this.stopping = sig;
    this.job.stopped(signalStatus(sig), `sfmpirun: received ${sig}; forwarded it to every rank and stopped the job`);
    this.stopRanks(sig);
  }

  private stopRanks(sig: NodeJS.Signals): void {
    this.job.signalRanks(sig);
    if (this.escalation) return;
    this.escalation = setTimeout(() => this.job.signalRanks('SIGKILL'), stopGraceMs);
    this.escalation.unref();
  }

  release(): void {
    for (const [sig, handler] of this.handlers) process.off(sig, handler);
    this.handlers.clear();
    if (this.escalation) clearTimeout(this.escalation);
    if (this.deadline) clearTimeout(this.deadline);
  }
}
