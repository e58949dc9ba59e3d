/**
 * PMI barriers as numbered rounds, with the finalize watchdog.
 *
 * Every rank counts its own barrier_in calls; round k completes when every rank has entered it.
 * Counting per rank (rather than "the next `size` barrier_in lines") keeps the rounds straight
 * when the watchdog releases a round early and the missing rank arrives later: a rank entering a
 * round that is already released is answered at once instead of opening a new round alone.
 *
 * Why a watchdog: MPICH 4.0 over UCX TCP often hangs in MPI_Finalize (DESIGN.md): a rank closing
 * its UCX endpoints waits for peers that already sit in the finalize barrier, blocked on their PMI
 * socket and no longer driving UCX. Releasing that barrier lets those peers exit, which ends the
 * close on the stuck rank. A barrier is only released when it looks like that hang: it has waited
 * `timeoutMs`, it is not the first barrier (MPI_Init's business-card exchange, which a late rank
 * must never miss), and every missing rank is connected and has said nothing for `timeoutMs`
 * (a rank still initialising keeps talking to us).
 *
 * Measured here (MPICH 4.0.2): MPI_Init makes three barriers, MPI_Finalize one. Ranks enter each
 * init barrier close together, because they all do the same work in between (58 ms from first to
 * last for 32 ranks on 2 loaded cores), far inside the default 3 s; only the first barrier, which
 * waits for the last rank to start, spreads wide (1.6 s there), and it is never released.
 */

export interface BarrierHooks {
  /** Sends barrier_out to `rank`. */
  release(rank: number): void;
  /** Called when the watchdog releases round `round` without `missing`. */
  watchdog(round: number, missing: number[], waitedMs: number): void;
  /** Whether `rank` may be waited out: connected, and quiet since `since` (ms, performance.now). */
  quietSince(rank: number, since: number): boolean;
}

interface Round {
  entered: Set<number>;
  openedAt: number;
  timer?: NodeJS.Timeout;
}

export class BarrierRounds {
  private readonly entered: number[];
  private readonly rounds = new Map<number, Round>();
  /** Every round up to this one is complete or released. */
  private releasedUpTo = 0;

  constructor(
    private readonly size: number,
    private readonly timeoutMs: number,
    private readonly hooks: BarrierHooks,
  ) {
    this.entered = new Array<number>(size).fill(0);
  }

  /** Rank `rank` sent barrier_in. */
  enter(rank: number): void {
    const round = ++this.entered[rank]!;
    if (round <= this.releasedUpTo) {
      this.hooks.release(rank);
      return;
    }
    let r = this.rounds.get(round);
    if (!r) {
      r = { entered: new Set(), openedAt: performance.now() };
      this.rounds.set(round, r);
      this.arm(round, r);
    }
    r.entered.add(rank);
    this.completeReadyRounds();
  }

  /** The number of barrier rounds `rank` has entered. */
  roundsEntered(rank: number): number {
    return this.entered[rank]!;
  }

  close(): void {
    for (const r of this.rounds.values()) clearTimeout(r.timer);
    this.rounds.clear();
  }

  private completeReadyRounds(): void {
    for (;;) {
      const next = this.releasedUpTo + 1;
      const r = this.rounds.get(next);
      if (!r || r.entered.size < this.size) return;
      this.releaseRound(next, r);
    }
  }

  private releaseRound(round: number, r: Round): void {
    clearTimeout(r.timer);
    this.rounds.delete(round);
    this.releasedUpTo = round;
    for (const rank of [...r.entered].sort((a, b) => a - b)) this.hooks.release(rank);
  }

  private arm(round: number, r: Round): void {
    if (round < 2 || this.timeoutMs <= 0 || !Number.isFinite(this.timeoutMs)) return;
    r.timer = setTimeout(() => this.check(round), this.timeoutMs);
    r.timer.unref();
  }

  private check(round: number): void {
    const r = this.rounds.get(round);
    if (!r) return;
    // Only the oldest open round can be released; later ones wait for it.
    if (round !== this.releasedUpTo + 1) {
      this.arm(round, r);
      return;
    }
    const now = performance.now();
    const missing = [...Array(this.size).keys()].filter((rank) => !r.entered.has(rank));
    if (missing.every((rank) => this.hooks.quietSince(rank, now - this.timeoutMs))) {
      this.hooks.watchdog(round, missing, now - r.openedAt);
      this.releaseRound(round, r);
      this.completeReadyRounds();
    } else {
      this.arm(round, r);
    }
  }
}
