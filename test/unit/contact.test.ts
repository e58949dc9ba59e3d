/**
 * The rules of launcher/job/contact.ts and the layer-0 defaults of env.ts: which ranks left a job
 * unfinished while others waited, which ran as singletons, and when ranks are told to yield.
 */
import { expect } from 'chai';
import { RankContacts, type Left } from '../../launcher/job/contact.js';
import { defaultsLayer } from '../../launcher/job/env.js';
import { failed, reasonOf, statusOf } from '../../launcher/job/exit.js';

function contacts(np: number): { c: RankContacts; stuck: [number, Left][] } {
  const stuck: [number, Left][] = [];
  return { c: new RankContacts(np, (r, l) => stuck.push([r, l])), stuck };
}

describe('rank contacts', () => {
  it('a rank that finalized and exited 0 leaves nothing unfinished', () => {
    const { c, stuck } = contacts(2);
    for (const r of [0, 1]) c.contact(r, 'pmix');
    c.finalize(0);
    c.exit(0, true, true);
    c.finalize(1);
    c.exit(1, true, true);
    expect(stuck).to.deep.equal([]);
    expect(c.singletons(() => true)).to.deep.equal([]);
  });

  it('a rank that exits 0 without finalizing while another waits is reported once', () => {
    const { c, stuck } = contacts(3);
    for (const r of [0, 1, 2]) c.contact(r, 'pmix');
    c.exit(1, true, true);
    c.exit(2, true, true);
    expect(stuck).to.deep.equal([[1, 'unfinalized']]);
  });

  it('a singleton that exits before the others contact is reported when they do', () => {
    const { c, stuck } = contacts(2);
    c.exit(0, true, true);
    expect(stuck).to.deep.equal([]);
    c.contact(1, 'pmi');
    expect(stuck).to.deep.equal([[0, 'never-contacted']]);
    expect(c.singletons(() => true)).to.deep.equal([0]);
  });

  it('ranks that all ran as singletons leave nobody waiting; stopped or failed ranks are not singletons', () => {
    const { c, stuck } = contacts(4);
    c.exit(0, true, true);
    c.exit(1, true, true);
    c.exit(2, true, false);
    c.exit(3, false, true);
    expect(stuck).to.deep.equal([]);
    expect(c.singletons(() => true)).to.deep.equal([0, 1]);
    expect(c.singletons((r) => r === 1)).to.deep.equal([1]);
  });

  it('a failing exit is a failure of its own, not an unfinished one', () => {
    const { c, stuck } = contacts(2);
    c.contact(0, 'pmix');
    c.contact(1, 'pmix');
    c.exit(1, false, true);
    expect(stuck).to.deep.equal([]);
    expect(c.left(1)).to.equal(undefined);
  });

  it('an unfinished rank fails with status 1 and says why', () => {
    const o = { rank: 1, hostname: 'c1', code: 0, signal: null, left: 'unfinalized' as const };
    expect(failed(o)).to.equal(true);
    expect(statusOf(o)).to.equal(1);
    expect(reasonOf(o)).to.equal('exited with code 0 without finalizing MPI while other ranks waited for it');
  });
});

describe('layer 0 of the ranks\u2019 environment', () => {
  it('tells Open MPI ranks to yield only when they outnumber the cores', () => {
    expect(defaultsLayer({ ranksOnHost: 3, cores: 2 })).to.deep.equal({ OMPI_MCA_mpi_yield_when_idle: '1' });
    expect(defaultsLayer({ ranksOnHost: 2, cores: 2 })).to.deep.equal({});
  });
});
