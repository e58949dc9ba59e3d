/**
 * The PMI barrier rounds (launcher/pmi/barrier.ts): release on proof, the watchdog as the last
 * resort, and what a client cannot make them do. The hooks stand in for the server: they are the
 * rounds' inputs (who is quiet, what is proven), and the rounds are what is under test.
 */
import { expect } from 'chai';
import { BarrierRounds, type BarrierHooks } from '../../launcher/pmi/barrier.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function rounds(size: number, timeoutMs: number, over: Partial<BarrierHooks> = {}) {
  const released: number[] = [];
  const events: string[] = [];
  const hooks: BarrierHooks = {
    release: (rank) => released.push(rank),
    watchdog: (round, missing) => events.push(`watchdog ${round} without ${missing.join(',')}`),
    quietSince: () => true,
    proven: (round, missing, _waited, why) => events.push(`proven ${round} without ${missing.join(',')}: ${why.join('; ')}`),
    ...over,
  };
  return { b: new BarrierRounds(size, timeoutMs, hooks), released, events };
}

/** Runs `n` complete rounds of all ranks. */
function complete(b: BarrierRounds, size: number, n: number): void {
  for (let i = 0; i < n; i++) for (let r = 0; r < size; r++) b.enter(r);
}

describe('PMI barrier rounds', () => {
  it('releases a round on proof that every missing rank waits on one inside, and answers the latecomer at once', async () => {
    const asked: Array<[number, number[], number[]]> = [];
    const { b, released, events } = rounds(3, 0, {
      prove: async (round, inside, missing) => {
        asked.push([round, inside.sort(), missing]);
        return new Map(missing.map((m) => [m, `rank ${m} waits on rank 1`]));
      },
    });
    complete(b, 3, 1);
    released.length = 0;
    b.enter(1);
    b.enter(2);
    await sleep(100);
    expect(asked[0]).to.deep.equal([2, [1, 2], [0]]);
    expect(released).to.deep.equal([1, 2]);
    expect(events).to.deep.equal(['proven 2 without 0: rank 0 waits on rank 1']);
    expect(b.enter(0)).to.equal(true);
    expect(released).to.deep.equal([1, 2, 0]);
    b.close();
  });

  it('does not release while one missing rank is unproven, nor ever the first round', async () => {
    const { b, released, events } = rounds(3, 0, { prove: async (_r, _i, missing) => new Map(missing.filter((m) => m === 0).map((m) => [m, 'x'])) });
    b.enter(2);
    await sleep(100);
    expect(released, 'the first round').to.deep.equal([]);
    b.enter(0);
    b.enter(1);
    released.length = 0;
    b.enter(2); // round 2: 0 proven, 1 not
    await sleep(150);
    expect(released).to.deep.equal([]);
    expect(events).to.deep.equal([]);
    b.enter(1);
    await sleep(100);
    expect(released).to.deep.equal([1, 2]);
    b.close();
  });

  it('does not release on proof while a missing rank still speaks PMI', async () => {
    let talking = true;
    const { b, released } = rounds(2, 0, {
      quietSince: () => !talking,
      prove: async (_r, _i, missing) => new Map(missing.map((m) => [m, 'x'])),
    });
    complete(b, 2, 1);
    released.length = 0;
    b.enter(1);
    await sleep(100);
    expect(released).to.deep.equal([]);
    talking = false;
    await sleep(100);
    expect(released).to.deep.equal([1]);
    b.close();
  });

  it('lets the watchdog wait as long as a missing rank is active, then release and say so', async () => {
    let active = true;
    const { b, released, events } = rounds(2, 150, { quietSince: () => !active });
    complete(b, 2, 1);
    released.length = 0;
    b.enter(0);
    await sleep(400);
    expect(released).to.deep.equal([]);
    active = false;
    await sleep(300);
    expect(released).to.deep.equal([0]);
    expect(events).to.deep.equal(['watchdog 2 without 1']);
    b.close();
  });

  it('refuses a second barrier_in from a rank that waits, so rounds cannot pile up', () => {
    const { b } = rounds(2, 0);
    expect(b.enter(0)).to.equal(true);
    for (let i = 0; i < 1000; i++) expect(b.enter(0)).to.equal(false);
    expect(b.openRounds()).to.equal(1);
    expect(b.roundsEntered(0)).to.equal(1);
    expect(b.enter(1)).to.equal(true);
    expect(b.openRounds()).to.equal(0);
    b.close();
  });

  it('counts a rank that connects again from the current round, forgetting what it entered before', () => {
    const { b, released } = rounds(2, 0);
    b.enter(0); // a stray client as rank 0 enters round 1 and leaves
    b.rejoin(0);
    expect(b.roundsEntered(0)).to.equal(0);
    b.enter(1);
    expect(released, 'round 1 is not complete without the new rank 0').to.deep.equal([]);
    b.enter(0);
    expect(released).to.deep.equal([0, 1]);
    complete(b, 2, 1);
    expect(released).to.deep.equal([0, 1, 0, 1]);
    b.close();
  });
});
