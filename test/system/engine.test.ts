/**
 * Engine behaviour around its edges, on the real host: the record names what exists, a full pool is
 * one clear line with nothing created, cleanup removes only what records name, a ticket that lost
 * its clones can still be removed, and requests that make no sense are refused.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Engine } from '../../src/engine.js';
import { UserError } from '../../src/common/errors.js';
import type { StateRecord } from '../../src/ticket/record.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { buildNative } from '../helpers/native.js';

const sh = (cmd: string): string => execFileSync('sh', ['-c', cmd], { encoding: 'utf8' });

async function rejects(p: Promise<unknown>, message: RegExp): Promise<void> {
  try {
    await p;
  } catch (e) {
    expect(e).to.be.instanceOf(UserError);
    expect((e as Error).message).to.match(message);
    return;
  }
  expect.fail(`expected a UserError matching ${message}`);
}

describe('clone engine', function () {
  this.timeout(60_000);
  let stateDir: string;
  let engine: Engine;
  const ours: string[] = [];

  before(() => buildNative());
  beforeEach(() => {
    stateDir = mkdtempSync(join(tmpdir(), 'sf-engine-test-'));
    engine = new Engine({ stateDir });
  });
  afterEach(async () => {
    await engine.killAll();
    await assertNoLeaks(ours.splice(0), stateDir);
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('names in the state record exactly the links, namespaces, table and processes that exist', async () => {
    const ticket = await engine.requestTicket(3, { provider: 'netns' });
    ours.push(ticket.id);
    await engine.createClones(ticket, await engine.checkpoint(ticket, {}));
    const record = JSON.parse(readFileSync(join(stateDir, 'tickets', `${ticket.id}.json`), 'utf8')) as StateRecord;
    const recorded = (kind: string) => record.resources.filter((r) => r.kind === kind);
    const links = (JSON.parse(sh('ip -j link show')) as Array<{ ifname: string }>)
      .map((l) => l.ifname)
      .filter((n) => n.startsWith(`sf${ticket.id}`))
      .sort();
    expect(recorded('link').map((r) => (r as { name: string }).name).sort()).to.deep.equal(links);
    const netns = sh(`ip netns list | grep -o '^sf${ticket.id}-[0-9]*' | sort`).trim().split('\n');
    expect(recorded('netns').map((r) => (r as { name: string }).name).sort()).to.deep.equal(netns);
    expect(recorded('nft-table')).to.deep.equal([{ kind: 'nft-table', family: 'inet', name: `sf_${ticket.id}` }]);
    const processes = recorded('process') as Array<{ pid: number; start: number; what: string }>;
    const holders = processes.filter((p) => p.what.startsWith('holder'));
    expect(holders).to.have.length(3);
    for (const h of holders) expect(readFileSync(`/proc/${h.pid}/comm`, 'utf8').trim()).to.equal('holder');
    // And the ticket's reaper, which tears it down if this process dies (issue 8).
    expect(processes.map((p) => p.what).sort()).to.deep.equal(['holder of ' + `sf${ticket.id}-0`, `holder of sf${ticket.id}-1`, `holder of sf${ticket.id}-2`, 'reaper'].sort());
    for (const p of processes) expect(readFileSync(`/proc/${p.pid}/comm`, 'utf8').trim()).to.be.oneOf(['holder', 'reaper']);
    expect(record.clones.map((c) => c.hostname)).to.deep.equal([0, 1, 2].map((i) => `sf${ticket.id}-${i}`));
    const report = await engine.kill(ticket);
    expect(report.failed).to.deep.equal([]);
  });

  it('leaves an empty state directory once the last ticket is gone, and recreates its folders for the next', async () => {
    const a = await engine.requestTicket(1, { provider: 'netns' });
    const b = await engine.requestTicket(1, { provider: 'netns' });
    ours.push(a.id, b.id);
    await engine.kill(a);
    // b still lives: its record and subnet claim keep the folders.
    expect(readdirSync(stateDir).sort()).to.deep.equal(['subnets', 'tickets']);
    await engine.kill(b);
    expect(readdirSync(stateDir)).to.deep.equal([]);
    // The next ticket recreates the folders.
    const c = await engine.requestTicket(1, { provider: 'netns' });
    ours.push(c.id);
    expect(existsSync(join(stateDir, 'tickets', `${c.id}.json`))).to.equal(true);
    await engine.kill(c);
    expect(readdirSync(stateDir)).to.deep.equal([]);
  });

  it('refuses a ticket when the pool is full, in one line, creating nothing', async () => {
    const small = new Engine({ stateDir, pool: '10.213.251.0/24' });
    const first = await small.requestTicket(1, { provider: 'netns' });
    ours.push(first.id);
    await rejects(small.requestTicket(1, { provider: 'netns' }), /^no free subnet left in the address pool 10\.213\.251\.0\/24/);
    expect(sh(`ls ${stateDir}/tickets`).trim().split('\n')).to.deep.equal([`${first.id}.d`, `${first.id}.json`]);
    await small.kill(first);
  });

  it('refuses requests that make no sense', async () => {
    await rejects(engine.requestTicket(0), /at least 1, not 0/);
    await rejects(engine.requestTicket(-4), /at least 1, not -4/);
    await rejects(engine.requestTicket(Number.NaN), /at least 1, not NaN/);
    await rejects(engine.requestTicket(2.5), /at least 1, not 2.5/);
    await rejects(new Engine({ stateDir, maxClones: 4 }).requestTicket(5), /limit is 4 per ticket/);
    await rejects(new Engine({ stateDir, pool: '100.64.0.0/16' }).requestTicket(1), /not inside a private range/);
    await rejects(engine.requestTicket(1, { provider: 'lxc' as never }), /unknown provider "lxc"/);
    await rejects(new Engine({ stateDir, nativeDir: '/nonexistent' }).requestTicket(1, { provider: 'netns' }), /native helper \/nonexistent\/holder is missing; build them into \/nonexistent \(make -C native/);
    await rejects(engine.attach('zzz'), /is not a ticket id/);
    await rejects(engine.attach('abcdef'), /no ticket abcdef/);
    expect(existsSync(join(stateDir, 'tickets')) ? sh(`ls ${stateDir}/tickets`).trim() : '').to.equal('');

    const ticket = await engine.requestTicket(2, { provider: 'netns' });
    ours.push(ticket.id);
    await rejects(engine.openPort(ticket, 0), /not a TCP port/);
    await rejects(engine.createClones(ticket, await engine.checkpoint(ticket, {}), { count: 3 }), /grants 2/);
    await engine.kill(ticket);
  });

  it('cleanup removes only what records name, and a ticket that lost its clones', async () => {
    // Look-alikes that no record names: cleanup must leave them.
    const fake = 'fa4e00';
    sh(`ip link add sf${fake} type bridge && ip netns add sf${fake}-0 && nft add table inet sf_${fake}`);
    try {
      const ticket = await engine.requestTicket(2, { provider: 'netns' });
      ours.push(ticket.id);
      await engine.createClones(ticket, await engine.checkpoint(ticket, {}));
      // The clones die behind the engine's back, and the bridge is gone too.
      const record = JSON.parse(readFileSync(join(stateDir, 'tickets', `${ticket.id}.json`), 'utf8')) as StateRecord;
      for (const r of record.resources) if (r.kind === 'process') process.kill(r.pid, 'SIGKILL');
      sh(`ip link del sf${ticket.id}`);
      await rejects(new Engine({ stateDir }).attach(ticket.id), /lost clones/);

      // An orphan subnet claim (its owner died between claim and record removal) goes too.
      writeFileSync(join(stateDir, 'subnets', '10.213.252.0'), 'dead00\n');
      const report = await new Engine({ stateDir }).cleanup({ all: true });
      expect(report.tickets.map((t) => t.id)).to.deep.equal([ticket.id]);
      expect(report.tickets[0]!.failed).to.deep.equal([]);
      expect(report.claims).to.deep.equal([join(stateDir, 'subnets', '10.213.252.0')]);
      expect(sh(`ip -o link show sf${fake} | wc -l`).trim()).to.equal('1');
      expect(sh('ip netns list')).to.include(`sf${fake}-0`);
      expect(sh('nft list tables')).to.include(`sf_${fake}`);
    } finally {
      sh(`ip link del sf${fake}; ip netns delete sf${fake}-0; nft delete table inet sf_${fake}`);
    }
  });

  it('cleanup leaves tickets of live owners and kept tickets alone unless told', async () => {
    const live = await engine.requestTicket(1, { provider: 'netns' });
    const kept = await engine.requestTicket(1, { provider: 'netns', keep: true });
    ours.push(live.id, kept.id);
    const other = new Engine({ stateDir });
    expect((await other.cleanup()).tickets).to.deep.equal([]);
    expect((await other.list()).map((t) => t.ticket.id).sort()).to.deep.equal([live.id, kept.id].sort());
    expect((await other.cleanup({ ticketId: kept.id })).tickets.map((t) => t.id)).to.deep.equal([kept.id]);
    await engine.kill(live);
  });
});
