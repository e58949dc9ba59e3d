/**
 * Teardown against the real host (needs root): the isolation table is one nft accepts, and
 * resources that are already gone (links, namespaces, tables, processes, files) are no failure.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { tableScript } from '../../src/network/firewall.js';
import { linkGroup } from '../../src/ticket/names.js';
import { RecordStore } from '../../src/ticket/record.js';
import type { Resource } from '../../src/ticket/resources.js';
import { removeResources } from '../../src/ticket/teardown.js';

describe('teardown on the host', () => {
  let dir: string;
  let store: RecordStore;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sf-teardown-'));
    store = new RecordStore(dir);
    await store.init();
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('teardown takes what is already gone in its stride', async () => {
    const gone: Resource[] = [
      { kind: 'link', name: 'sfnone0v0' },
      { kind: 'netns', name: 'sfnone0-0' },
      { kind: 'nft-table', family: 'inet', name: 'sf_none00' },
      { kind: 'process', pid: 999999999, start: 1, what: 'test' },
      { kind: 'file', path: join(dir, 'no-such-file') },
      { kind: 'dir', path: join(dir, 'no-such-dir') },
    ];
    const report = await removeResources(gone, { ticketId: 'none00', claimsDir: store.claimsDir });
    expect(report.failed).to.deep.equal([]);
  });

  it("deletes a ticket's device group, and a recorded link that never joined it", async () => {
    // A unique, unused group and names (sftd...): a bridge and a tap in the group, a tap outside
    // it (its creation stopped between `tuntap add` and `link set ... group`), a gone group link.
    const group = linkGroup('fd0' + process.pid.toString(16).slice(-3).padStart(3, '0'));
    const [br, inTap, stray] = ['sftdbr', 'sftdt0', 'sftdt1'];
    const links: Resource[] = [br, inTap, stray, 'sftdgone'].map((name) => ({ kind: 'link', name, group }));
    const ip = (args: string[]) => execFileSync('ip', args, { stdio: 'pipe' });
    try {
      ip(['link', 'add', br, 'group', String(group), 'type', 'bridge']);
      ip(['tuntap', 'add', 'dev', inTap, 'mode', 'tap']);
      ip(['link', 'set', inTap, 'group', String(group), 'master', br]);
      ip(['tuntap', 'add', 'dev', stray, 'mode', 'tap']);
      const report = await removeResources(links, { ticketId: 'fd0000', claimsDir: store.claimsDir });
      expect(report.failed).to.deep.equal([]);
      expect(report.removed).to.include.members([`link ${br}`, `link ${inTap}`, `link ${stray}`]);
      for (const name of [br, inTap, stray]) expect(existsSync(`/sys/class/net/${name}`), name).to.equal(false);
    } finally {
      for (const name of [br, inTap, stray]) if (existsSync(`/sys/class/net/${name}`)) ip(['link', 'del', name]);
    }
  });
});

describe('isolation table (nft)', () => {
  it('is a table nft accepts (checked without applying)', () => {
    const script = tableScript({ subnet: '10.213.9.0/24', prefixLength: 24, gateway: '10.213.9.1', bridge: 'sfcafe00', table: 'sf_cafe00' });
    expect(script).to.include('iifname "sfcafe00" oifname "sfcafe00" accept');
    // The gateway address is refused to every interface but lo and the ticket's bridge.
    expect(script).to.include('ip daddr 10.213.9.1 iifname != { "lo", "sfcafe00" } meta l4proto tcp reject with tcp reset');
    execFileSync('nft', ['-c', '-f', '-'], { input: script });
  });
});
