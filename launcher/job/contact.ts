/**
 * Which process manager each rank contacted (PMI-1: its initack; PMIx: its connection's handshake)
 * and whether it finalized with it. Every rank gets both managers' wiring, so either MPI finds its
 * own; these facts are what the job then knows about a rank beyond its exit status:
 *
 *   - A rank that exits (with code 0) without finalizing while another rank is inside the job
 *     leaves that rank waiting for it in a collective that never completes: neither process manager
 *     can tell. `stuck` names such a rank, once, so that the job can end with a failure (status 1,
 *     as Open MPI's mpirun does for "exited improperly"). A rank inside the job is one that
 *     contacted a manager and has neither finalized nor exited. The rank that left is either one
 *     that contacted a manager and exited without finalizing, or one that never contacted any
 *     (a singleton: every MPI rank waits for the whole world in MPI_Init).
 *   - A rank of an MPI program that exits with code 0 without ever contacting either manager ran
 *     as a singleton (rank 0 of 1): `singletons` lists them for the job's warning line and the
 *     report. A rank that failed is not counted: it may never have reached MPI_Init (a missing
 *     library, a bad argument), and its failure has its own line.
 */

export type ProcessManager = 'pmi' | 'pmix';

/** How a rank left the job without finalizing: after contacting a manager, or never having done so. */
export type Left = 'unfinalized' | 'never-contacted';

interface RankState {
  contacted: ProcessManager[];
  finalized: boolean;
  exited: boolean;
  /** Exited on its own, before the launcher began stopping ranks. */
  ownExit: boolean;
  /** Exited with code 0. */
  clean: boolean;
  left?: Left;
}

export class RankContacts {
  private readonly ranks: RankState[];
  private stuckReported = false;

  constructor(
    np: number,
    /** Called once when a rank left the job unfinished while another rank is inside it. */
    private readonly onStuck: (rank: number, left: Left) => void,
  ) {
    this.ranks = Array.from({ length: np }, () => ({ contacted: [], finalized: false, exited: false, ownExit: false, clean: false }));
  }

  contact(rank: number, pm: ProcessManager): void {
    const s = this.ranks[rank];
    if (!s || s.contacted.includes(pm)) return;
    s.contacted.push(pm);
    this.check();
  }

  finalize(rank: number): void {
    const s = this.ranks[rank];
    if (s) s.finalized = true;
  }

  /**
   * The rank's process ended. `clean`: it exited with code 0 (a failing rank is a failure of its
   * own, whatever it did with the managers). `ownExit`: before the launcher stopped the job.
   */
  exit(rank: number, clean: boolean, ownExit: boolean): void {
    const s = this.ranks[rank];
    if (!s) return;
    s.exited = true;
    s.ownExit = ownExit;
    s.clean = clean;
    if (clean && !s.finalized) s.left = s.contacted.length ? 'unfinalized' : 'never-contacted';
    this.check();
  }

  contacted(rank: number): ProcessManager[] {
    return [...(this.ranks[rank]?.contacted ?? [])];
  }

  finalized(rank: number): boolean {
    return this.ranks[rank]?.finalized ?? false;
  }

  left(rank: number): Left | undefined {
    return this.ranks[rank]?.left;
  }

  /** Ranks that exited on their own with code 0 without ever contacting a manager, among `candidates`. */
  singletons(candidates: (rank: number) => boolean): number[] {
    return this.ranks.flatMap((s, r) => (s.exited && s.ownExit && s.clean && s.contacted.length === 0 && candidates(r) ? [r] : []));
  }

  private check(): void {
    if (this.stuckReported) return;
    const inside = this.ranks.some((s) => s.contacted.length > 0 && !s.finalized && !s.exited);
    if (!inside) return;
    const r = this.ranks.findIndex((s) => s.left !== undefined && s.ownExit);
    if (r < 0) return;
    this.stuckReported = true;
    this.onStuck(r, this.ranks[r]!.left!);
  }
}
