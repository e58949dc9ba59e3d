/**
 * native/enter's gate (issue 13): a process started behind it runs only once the gate opens, and
 * never when its launcher goes away first; processes a launcher starts in one turn all run.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { expect } from 'chai';
import { settings } from '../../src/common/config.js';
import { Engine } from '../../src/engine.js';
import type { NetnsClone } from '../../src/providers/netns/clone.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { buildNative } from '../helpers/native.js';

describe('enter --gate', function () {
  this.timeout(60_000);
  let stateDir: string;
  let scratch: string;
  let engine: Engine;
  const ours: string[] = [];

  before(() => {
    buildNative();
    stateDir = mkdtempSync(join(tmpdir(), 'sf-gate-test-'));
    // Not under /tmp: a clone's /tmp is its own.
    scratch = mkdtempSync(join(process.cwd(), '.sf-gate-'));
    engine = new Engine({ stateDir });
  });

  afterEach(async () => {
    await engine.killAll();
    await assertNoLeaks(ours.splice(0), stateDir);
  });

  after(() => {
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(scratch, { recursive: true, force: true });
  });

  async function clone(): Promise<NetnsClone> {
    const ticket = await engine.requestTicket(1, { provider: 'netns' });
    ours.push(ticket.id);
    return (await engine.createClones(ticket, await engine.checkpoint(ticket, {})))[0] as NetnsClone;
  }

  /** enter behind a gate on fd 3, touching `marker` if it ever runs. */
  function gated(c: NetnsClone, marker: string) {
    const child = spawn(join(settings().nativeDir, 'enter'), ['--start', String(c.holder.start), '--gate', '3', String(c.holder.pid), '/', '--', 'touch', marker], {
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    return { gate: child.stdio[3] as Writable, exited, stderr: () => stderr };
  }

  it('runs the program only once a byte comes through, and never when the gate closes without one', async () => {
    const c = await clone();
    const opened = gated(c, join(scratch, 'opened'));
    const closed = gated(c, join(scratch, 'closed'));
    await new Promise((r) => setTimeout(r, 300));
    expect(existsSync(join(scratch, 'opened')), 'waits behind the gate').to.equal(false);
    opened.gate.end('g');
    closed.gate.end();
    expect(await opened.exited).to.equal(0);
    expect(existsSync(join(scratch, 'opened'))).to.equal(true);
    expect(await closed.exited).to.equal(125);
    expect(closed.stderr()).to.include('went away before the start');
    expect(existsSync(join(scratch, 'closed'))).to.equal(false);
    await engine.kill(c.ticket);
  });

  it('starts every process a caller spawns in one turn (the clone opens their gates together)', async () => {
    const c = await clone();
    const procs = Array.from({ length: 8 }, (_, i) => c.spawn(['touch', join(scratch, `rank${i}`)], { env: { PATH: process.env.PATH ?? '/usr/bin:/bin' } }));
    const statuses = await Promise.all(procs.map((p) => p.exited));
    expect(statuses.map((s) => s.code)).to.deep.equal(new Array(8).fill(0));
    for (let i = 0; i < 8; i++) expect(existsSync(join(scratch, `rank${i}`))).to.equal(true);
    await engine.kill(c.ticket);
  });
});
