/**
 * State records: the ledger persists before it returns, concurrent additions are all kept, ticket ids
 * are claimed exclusively, and teardown removes what a record names (already gone is fine), but a
 * subnet claim only when it is the ticket's own.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Ledger } from '../../src/ticket/ledger.js';
import { self } from '../../src/common/processes.js';
import { RecordStore, type StateRecord } from '../../src/ticket/record.js';
import { removeResources } from '../../src/ticket/teardown.js';
import type { Resource } from '../../src/ticket/resources.js';

function newRecord(id: string): StateRecord {
  return {
    version: 1,
    ticket: {
      id,
      provider: 'netns',
      requested: 1,
      granted: 1,
      network: { subnet: '', prefixLength: 24, gateway: '', bridge: '', table: '' },
      openPorts: [],
      kept: false,
      shared: [],
    },
    owner: self(),
    createdAt: new Date().toISOString(),
    resources: [],
    clones: [],
  };
}

describe('state records', () => {
  let dir: string;
  let store: RecordStore;
  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sf-state-test-'));
    store = new RecordStore(dir);
    await store.init();
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('claims a ticket id once', async () => {
    expect(await store.createExclusive(newRecord('abc123'))).to.equal(true);
    expect(await store.createExclusive(newRecord('abc123'))).to.equal(false);
    expect(await store.ids()).to.deep.equal(['abc123']);
  });

  it('creates a record even when a concurrent prune removed the folders after init', async () => {
    await store.pruneEmpty();
    expect(existsSync(store.ticketsDir)).to.equal(false);
    expect(await store.createExclusive(newRecord('abc125'))).to.equal(true);
    await store.pruneEmpty(); // not empty now: must keep the record
    expect(await store.ids()).to.deep.equal(['abc125']);
    await store.remove('abc125');
    expect(existsSync(store.ticketsDir)).to.equal(false);
  });

  it('persists every addition before it returns, concurrent ones included', async () => {
    const record = newRecord('abc124');
    await store.createExclusive(record);
    const ledger = new Ledger(store, record, join(dir, 'x'));
    await ledger.add({ kind: 'file', path: '/nonexistent/one' });
    expect((JSON.parse(readFileSync(store.pathOf('abc124'), 'utf8')) as StateRecord).resources).to.have.length(1);
    await Promise.all(Array.from({ length: 20 }, (_, i) => ledger.add({ kind: 'link', name: `sfzz${i}` })));
    const saved = (await store.read('abc124'))!;
    expect(saved.resources).to.have.length(21);
    expect(saved.owner.pid).to.equal(process.pid);
  });

  it('removes a subnet claim only when it names the ticket', async () => {
    const mine = join(store.claimsDir, '10.213.1.0');
    const theirs = join(store.claimsDir, '10.213.2.0');
    writeFileSync(mine, 'aaaaaa\n');
    writeFileSync(theirs, 'bbbbbb\n');
    const claims: Resource[] = [
      { kind: 'file', path: mine },
      { kind: 'file', path: theirs },
    ];
    await removeResources(claims, { ticketId: 'aaaaaa', claimsDir: store.claimsDir });
    expect(existsSync(mine)).to.equal(false);
    expect(existsSync(theirs)).to.equal(true);
  });
});
