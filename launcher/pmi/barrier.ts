/**
 * PMI barriers as numbered rounds, with the release on proof and the finalize watchdog.
 *
 * Every rank counts its own barrier_in calls; round k completes when every rank has entered it.
 * Counting per rank (rather than "the next `size` barrier_in lines") keeps the rounds straight
 * when a round is released early and the missing rank arrives later: a rank entering a round that
 * is already released is answered at once instead of opening a new round alone.
 *
 * Why early releases: MPICH 4.0 over UCX TCP closes its UCX endpoints in MPI_Finalize before the
 * finalize barrier, and a close waits for an acknowledgement from every peer it sent data to. A peer
 * already in the barrier is blocked on its PMI socket and never answers, so the closing rank never
 * arrives (rank-probe.ts has the whole story). Releasing the barrier lets the blocked peers exit;
 * their closed connections end the close on the stuck rank, silently, because it has already closed
 * those endpoints itself. Releasing while a missing rank is still at work is not harmless: its
 * peers would vanish under it, and its own MPI_Finalize then fails ("UCX ERROR ... error during
 * flush: Endpoint timeout", exit status 15). So a round is released early in two ways:
 *
 * - on proof, as soon as it exists: the `prove` hook (the rank probe) shows, for every missing rank,
 *   bytes it sent to a rank inside the barrier that that rank has not read. Looked for shortly after
 *   the round opens and then with a growing interval.
 * - by the watchdog, as the last resort, after `timeoutMs`, when every missing rank is connected and
 *   has been quiet for `timeoutMs`: no PMI traffic and, where the probe can see it, no read or write
 *   calls (a rank spinning in its close makes none; one still exchanging messages does).
 *
 * Neither ever releases the first barrier (MPI_Init's business-card exchange, which a late rank
 * must never miss).
 *
 * Measured here (MPICH 4.0.2): MPI_Init makes two or three barriers, MPI_Finalize one. Ranks enter
 * each init barrier close together, because they all do the same work in between (58 ms from first
 * to last for 32 ranks on 2 loaded cores), far inside the default 3 s; only the first barrier, which
 * waits for the last rank to start, spreads wide (1.6 s there), and it is never released.
 */

export interface BarrierHooks {
  /** Sends barrier_out to `rank`. */
  release(rank: number): void;
  /** Called when the watchdog releases round `round` without `missing`. */
  watchdog(round: number, missing: number[], waitedMs: number): void;
  /** Whether `rank` may be waited out: connected, and quiet since `since` (ms, performance.now). */
  quietSince(rank: number, since: number): boolean;
  /**
   * Optional: for each rank of `missing` that provably cannot arrive while `inside` wait in the
   * barrier, why (one short phrase). Must not reject.
   */
  prove?(round: number, inside: number[], missing: number[]): Promise<Map<number, string>>;
  /**
   * Called when round `round` is released on proof, without `missing`. `seenWithinMs` bounds how
   * long the proof existed before it was seen: the time since the previous look began.
   */
  proven?(round: number, missing: number[], waitedMs: number, why: string[], seenWithinMs: number): void;
}

interface Round {
  entered: Set<number>;
  openedAt: number;
  timer?: NodeJS.Timeout;
  proof?: { timer?: NodeJS.Timeout; running: boolean; lastLookAt: number };
}

/**
 * Looks for a proof come every PROOF_INTERVAL_MS while a round is young, then every tenth of the
 * time it has waited, up to PROOF_MAX_INTERVAL_MS: a stall is seen at most about a tenth later
 * than it formed, and a round that waits long for a rank at work costs a few looks a second.
 */
export const PROOF_INTERVAL_MS = 15;
export const PROOF_MAX_INTERVAL_MS = 250;
/** A missing rank that spoke PMI this recently is at work, whatever the probe says. */
const PROOF_QUIET_MS = 10;

export class BarrierRounds {
  private readonly entered: number[];
  private readonly rounds = new Map<number, Round>();
  /** Every round up to this one is complete or released. */
  private releasedUpTo = 0;
  private closed = false;

  constructor(
    private readonly size: number,
    private readonly timeoutMs: number,
    private readonly hooks: BarrierHooks,
  ) {
    this.entered = new Array<number>(size).fill(0);
  }

  /**
   * Rank `rank` sent barrier_in. False (and nothing changes) when it is already waiting in a
   * barrier: PMI_Barrier blocks until barrier_out, so a second barrier_in is a broken or hostile
   * client, and counting it would open rounds without end.
   */
  enter(rank: number): boolean {
    if (this.waiting(rank)) return false;
    const round = ++this.entered[rank]!;
    if (round <= this.releasedUpTo) {
      this.hooks.release(rank);
      return true;
    }
    let r = this.rounds.get(round);
    if (!r) {
      r = { entered: new Set(), openedAt: performance.now() };
      this.rounds.set(round, r);
      this.arm(round, r);
      this.armProof(round, r);
    }
    r.entered.add(rank);
    this.completeReadyRounds();
    return true;
  }

  /** Whether `rank` has entered a round that is still open. */
  waiting(rank: number): boolean {
    return this.entered[rank]! > this.releasedUpTo && (this.rounds.get(this.entered[rank]!)?.entered.has(rank) ?? false);
  }

  /**
   * A new connection claims `rank` after its earlier one closed: whatever that one entered is
   * forgotten, and the rank counts from the current round, as a process that starts now would.
   */
  rejoin(rank: number): void {
    for (const r of this.rounds.values()) r.entered.delete(rank);
    this.entered[rank] = this.releasedUpTo;
  }

  /** The number of barrier rounds `rank` has entered. */
  roundsEntered(rank: number): number {
    return this.entered[rank]!;
  }

  /** Rounds waiting for ranks (bounded: a rank can only be ahead of the oldest open round). */
  openRounds(): number {
    return this.rounds.size;
  }

  close(): void {
    this.closed = true;
    for (const r of this.rounds.values()) {
      clearTimeout(r.timer);
      clearTimeout(r.proof?.timer);
    }
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
    clearTimeout(r.proof?.timer);
    this.rounds.delete(round);
    this.releasedUpTo = round;
    for (const rank of [...r.entered].sort((a, b) => a - b)) this.hooks.release(rank);
  }

  private missing(r: Round): number[] {
    return [...Array(this.size).keys()].filter((rank) => !r.entered.has(rank));
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
    const missing = this.missing(r);
    if (missing.every((rank) => this.hooks.quietSince(rank, now - this.timeoutMs))) {
      this.hooks.watchdog(round, missing, now - r.openedAt);
      this.releaseRound(round, r);
      this.completeReadyRounds();
    } else {
      this.arm(round, r);
    }
  }

  private armProof(round: number, r: Round): void {
    if (round < 2 || !this.hooks.prove) return;
    r.proof = { running: false, lastLookAt: r.openedAt };
    this.scheduleProof(round, r);
  }

  private scheduleProof(round: number, r: Round): void {
    const waited = performance.now() - r.openedAt;
    const delay = Math.min(PROOF_MAX_INTERVAL_MS, Math.max(PROOF_INTERVAL_MS, waited / 10));
    r.proof!.timer = setTimeout(() => void this.tryProof(round, r), delay);
    r.proof!.timer.unref();
  }

  private async tryProof(round: number, r: Round): Promise<void> {
    const proof = r.proof!;
    if (this.rounds.get(round) !== r || proof.running) return;
    // Later rounds wait until they are the oldest; every missing rank must be quiet on PMI.
    const now = performance.now();
    const missing = this.missing(r);
    if (round !== this.releasedUpTo + 1 || !missing.every((rank) => this.hooks.quietSince(rank, now - PROOF_QUIET_MS))) {
      this.scheduleProof(round, r);
      return;
    }
    proof.running = true;
    const before = proof.lastLookAt;
    proof.lastLookAt = now;
    const why = await this.hooks.prove!(round, [...r.entered], missing).catch(() => new Map<number, string>());
    proof.running = false;
    if (this.closed || this.rounds.get(round) !== r) return;
    // Ranks may have arrived meanwhile; those still missing must all be proven.
    const still = this.missing(r);
    if (still.length > 0 && still.every((rank) => why.has(rank))) {
      const at = performance.now();
      this.hooks.proven?.(round, still, at - r.openedAt, still.map((rank) => why.get(rank)!), at - before);
      this.releaseRound(round, r);
      this.completeReadyRounds();
    } else {
      this.scheduleProof(round, r);
    }
  }
}
