import { expect } from 'chai';
import { placeRanks } from '../../launcher/job/placement.js';
import { processMapping, parseProcessMapping } from '../../launcher/pmi/mapping.js';
import { UserError } from '../../src/common/errors.js';

describe('placement', () => {
  const cases: Array<[string, number, number, number, 'block' | 'cyclic', number[], string]> = [
    ['one rank', 1, 1, 1, 'block', [0], '(vector,(0,1,1))'],
    ['block, even', 8, 4, 2, 'block', [0, 0, 1, 1, 2, 2, 3, 3], '(vector,(0,4,2))'],
    ['block, one rank per clone', 4, 4, 1, 'block', [0, 1, 2, 3], '(vector,(0,4,1))'],
    ['block, uneven tail', 5, 3, 2, 'block', [0, 0, 1, 1, 2], '(vector,(0,2,2),(2,1,1))'],
    ['block, fewer ranks than slots', 3, 4, 2, 'block', [0, 0, 1], '(vector,(0,1,2),(1,1,1))'],
    ['cyclic, even', 4, 2, 2, 'cyclic', [0, 1, 0, 1], '(vector,(0,2,1),(0,2,1))'],
    ['cyclic, uneven', 5, 2, 3, 'cyclic', [0, 1, 0, 1, 0], '(vector,(0,2,1),(0,2,1),(0,1,1))'],
    ['block, oversubscribed wraps', 6, 2, 2, 'block', [0, 0, 1, 1, 0, 0], '(vector,(0,2,2),(0,1,2))'],
  ];
  for (const [name, np, clones, rpc, mode, placement, mapping] of cases) {
    it(`${name}: ${np} ranks on ${clones}×${rpc} ${mode}`, () => {
      const p = placeRanks(np, clones, rpc, mode);
      expect(p).to.deep.equal(placement);
      expect(processMapping(p)).to.equal(mapping);
      expect(parseProcessMapping(processMapping(p))).to.deep.equal(p);
    });
  }

  it('round-trips arbitrary placements through the mapping', () => {
    const layouts = [
      [2, 2, 0, 1, 1, 1],
      [0, 0, 0, 3, 3, 1],
      [5],
    ];
    for (const p of layouts) expect(parseProcessMapping(processMapping(p))).to.deep.equal(p);
  });

  it('rejects non-positive counts with a UserError', () => {
    expect(() => placeRanks(0, 1, 1, 'block')).to.throw(UserError, /np must be a positive integer/);
    expect(() => placeRanks(2, 0, 1, 'block')).to.throw(UserError, /clones/);
    expect(() => placeRanks(2, 1, -1, 'cyclic')).to.throw(UserError, /ranks per clone/);
  });
});
