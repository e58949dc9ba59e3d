/**
 * The order of teardown (src/ticket/teardown.ts): independent removals go together, processes
 * before the files they could write and the veths that vanish with their namespaces, the reaper last.
 */
import { expect } from 'chai';
import type { Resource } from '../../src/ticket/resources.js';
import { EXPLICIT_VETHS, ipLines, teardownWaves } from '../../src/ticket/teardown.js';

const names = (waves: Resource[][][]) =>
  waves.map((w) => w.map((run) => run.map((r) => ('name' in r ? r.name : 'path' in r ? r.path : r.what))));

describe('teardown waves', () => {
  // In the order a netns ticket of three clones records them.
  const netnsTicket = (): Resource[] => [
      { kind: 'process', pid: 10, start: 1, what: 'reaper' },
      { kind: 'dir', path: '/state/t.d' },
      { kind: 'file', path: '/state/subnets/10.0.0.0' },
      { kind: 'link', name: 'sfbr' },
      { kind: 'nft-table', family: 'inet', name: 'sf_t' },
      { kind: 'link', name: 'sfv0' },
      { kind: 'link', name: 'sfv1' },
      { kind: 'link', name: 'sfv2' },
      { kind: 'process', pid: 11, start: 1, what: 'holder of c0' },
      { kind: 'process', pid: 12, start: 1, what: 'holder of c1' },
      { kind: 'process', pid: 13, start: 1, what: 'holder of c2' },
      { kind: 'netns', name: 'c0' },
      { kind: 'netns', name: 'c1' },
      { kind: 'netns', name: 'c2' },
    ];
  const veth = (link: string) => link.startsWith('sfv');

  it('processes, namespaces, table and bridge at once; then veths (with their namespaces), files, dirs; the reaper last', () => {
    expect(names(teardownWaves(netnsTicket(), veth))).to.deep.equal([
      [['c2', 'c1', 'c0'], ['holder of c2', 'holder of c1', 'holder of c0'], ['sf_t'], ['sfbr']],
      [['sfv2', 'sfv1', 'sfv0'], ['/state/subnets/10.0.0.0'], ['/state/t.d']],
      [['reaper']],
    ]);
  });

  it(`deletes up to ${EXPLICIT_VETHS} veths right away, with the namespaces, beside the bridge`, () => {
    const record = netnsTicket().filter((r) => !('name' in r && /2$/.test(r.name)) && !(r.kind === 'process' && r.what.endsWith('c2')));
    expect(names(teardownWaves(record, veth))).to.deep.equal([
      [['c1', 'c0', 'sfv1', 'sfv0'], ['holder of c1', 'holder of c0'], ['sf_t'], ['sfbr']],
      [['/state/subnets/10.0.0.0'], ['/state/t.d']],
      [['reaper']],
    ]);
  });

  it('deletes the device group (bridge and veths) first, then its namespaces, all in wave 1', () => {
    const group = 0x5f000001;
    const record = netnsTicket().map((r) => (r.kind === 'link' ? { ...r, group } : r));
    const waves = teardownWaves(record, () => {
      throw new Error('a grouped link needs no look at /sys');
    });
    expect(names(waves)).to.deep.equal([
      [['c2', 'c1', 'c0', 'sfv2', 'sfv1', 'sfv0', 'sfbr'], ['holder of c2', 'holder of c1', 'holder of c0'], ['sf_t']],
      [['/state/subnets/10.0.0.0'], ['/state/t.d']],
      [['reaper']],
    ]);
    const { lines, groups } = ipLines(waves[0]![0]!);
    expect(lines).to.deep.equal([
      `link del group ${group}`,
      ...['netns delete c2', 'netns delete c1', 'netns delete c0'],
      // Named as well: one that never joined the group goes by name.
      ...['link del sfv2', 'link del sfv1', 'link del sfv0', 'link del sfbr'],
    ]);
    expect(groups).to.deep.equal([group]);
  });

  it('names every resource exactly once', () => {
    const record: Resource[] = [
      { kind: 'file', path: 'a' },
      { kind: 'link', name: 'tap0' },
      { kind: 'process', pid: 1, start: 1, what: 'qemu' },
      { kind: 'file', path: 'b' },
      { kind: 'process', pid: 2, start: 1, what: 'nfs-ganesha' },
    ];
    const flat = teardownWaves(record, () => false).flat(2);
    const key = (rs: Resource[]) => rs.map((r) => JSON.stringify(r)).sort();
    expect(key(flat)).to.deep.equal(key(record));
  });
});
