/**
 * Fences across servers, for one PMIx server per host: each server reports a fence once all its
 * local participants are in ('fence', with its blob); when every server that serves a
 * participant has reported that fence, each gets the concatenation of all their blobs, in host
 * order (the servers' order here), and completes it in its ranks.
 *
 * Matching: every server sees the collectives of a participant set in the same program order, so
 * the k-th fence a server reports for a set is the k-th of every other server serving that set.
 *
 * Failure: fail() answers every open fence with ok = 0 (the ranks' PMIx_Fence fails instead of
 * waiting for a rank that is gone), and every later one as it arrives.
 */
import type { FenceEvent, PmixServer, Ranks } from './server.js';

interface Round {
  /** Per server index: the seq and blob it reported, once it has. */
  parts: Map<number, { seq: number; data: Buffer }>;
  expected: number[];
}

export class FenceRelay {
  /** Per participant set: its rounds in order, and how many each server has reported. */
  private readonly rounds = new Map<string, { open: Round[]; done: number; reported: Map<number, number> }>();
  private failure: string | undefined;
  /** Fences completed across servers. */
  completed = 0;

  /**
   * servers in host order; localRanks[i] = the ranks server i serves (its register() result).
   */
  constructor(
    private readonly servers: PmixServer[],
    private readonly localRanks: number[][],
  ) {
    servers.forEach((s, i) => s.on('fence', (e) => this.onFence(i, e)));
  }

  /** Fails every open fence and all later ones; why is kept for the log. */
  fail(why: string): void {
    this.failure ??= why;
    for (const set of this.rounds.values()) {
      for (const round of set.open) for (const [i, p] of round.parts) this.servers[i].completeFence(p.seq, false);
      set.open = [];
    }
  }

  get failed(): string | undefined {
    return this.failure;
  }

  /** The servers that serve at least one participant. */
  private serversOf(participants: Ranks): number[] {
    const out: number[] = [];
    this.localRanks.forEach((ranks, i) => {
      if (ranks.length && (participants === 'all' || participants.some((r) => ranks.includes(r)))) out.push(i);
    });
    return out;
  }

  private onFence(server: number, e: FenceEvent): void {
    if (this.failure) {
      this.servers[server].completeFence(e.seq, false);
      return;
    }
    const key = e.participants === 'all' ? 'all' : [...e.participants].sort((a, b) => a - b).join(',');
    let set = this.rounds.get(key);
    if (!set) this.rounds.set(key, (set = { open: [], done: 0, reported: new Map() }));
    const k = set.reported.get(server) ?? 0; // this server's k-th fence of the set
    set.reported.set(server, k + 1);
    const index = k - set.done;
    while (set.open.length <= index) set.open.push({ parts: new Map(), expected: this.serversOf(e.participants) });
    const round = set.open[index];
    round.parts.set(server, { seq: e.seq, data: e.data });
    // Rounds complete in order: a later round cannot be whole before an earlier one.
    while (set.open.length && set.open[0].expected.every((i) => set.open[0].parts.has(i))) {
      const done = set.open.shift()!;
      set.done++;
      const blob = Buffer.concat(done.expected.map((i) => done.parts.get(i)!.data));
      for (const i of done.expected) this.servers[i].completeFence(done.parts.get(i)!.seq, true, blob);
      this.completed++;
    }
  }
}
