/**
 * The simulated clusters' store in a state directory: what a cluster claims (its name's record,
 * its slot) goes with it, and the last one takes the store's directories along, so that nothing of
 * simulated clusters stays in a state directory once none exists. Real files in a temporary dir.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { ClusterStore } from '../../src/hosts/cluster-record.js';

describe('simulated clusters: the store in the state directory', () => {
  let state: string;
  const me = { pid: process.pid, start: 1 };
  beforeEach(() => (state = mkdtempSync(join(tmpdir(), 'sf-store-'))));
  afterEach(() => rmSync(state, { recursive: true, force: true }));

  it('leaves no directory once its last cluster is released', () => {
    const store = new ClusterStore(join(state, 'simclusters'));
    expect(store.claimName('a', me)).to.equal(true);
    expect(store.claimSlot('a', 0)).to.equal(true);
    expect(store.claimName('b', me)).to.equal(true);
    expect(store.claimSlot('b', 0)).to.equal(false);
    expect(store.claimSlot('b', 1)).to.equal(true);
    store.release('a', 0);
    expect(readdirSync(join(state, 'simclusters', 'index'))).to.deep.equal(['1']);
    store.release('b', undefined); // found by name, as for a claim-only record
    expect(readdirSync(state)).to.deep.equal([]);
  });

  it("takes along the half-written update of a writer killed between write and rename, and no other cluster's", () => {
    const store = new ClusterStore(join(state, 'simclusters'));
    expect(store.claimName('a', me)).to.equal(true);
    expect(store.claimName('ab', me)).to.equal(true);
    writeFileSync(join(store.root, 'a.json.tmp-4242'), ''); // what an up SIGKILLed in write() leaves
    writeFileSync(join(store.root, 'ab.json.tmp-4243'), '');
    store.release('a', undefined);
    expect(readdirSync(store.root).sort()).to.deep.equal(['ab.json', 'ab.json.tmp-4243']);
    store.release('ab', undefined);
    expect(readdirSync(state)).to.deep.equal([]);
  });

  it('claims again after the store was removed with its last cluster', () => {
    const store = new ClusterStore(join(state, 'simclusters'));
    expect(store.claimName('a', me)).to.equal(true);
    store.release('a', undefined);
    expect(existsSync(store.root)).to.equal(false);
    expect(store.claimName('c', me)).to.equal(true);
    expect(store.claimSlot('c', 0)).to.equal(true);
  });
});
