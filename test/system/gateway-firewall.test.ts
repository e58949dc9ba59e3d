/**
 * The ticket's gateway address is reached only through the ticket's bridge (and from this host over
 * lo): a connection to a port the ticket opened there, arriving on any other interface, is refused
 * by the ticket's nftables table, while the same interface reaches the host's other addresses.
 * The foreign sender is a network namespace of the test's own, routed to the gateway through a veth,
 * as a host on the LAN (or a container) would be.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Engine } from '../../src/engine.js';
import type { Clone } from '../../src/providers/clone.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { buildNative } from '../helpers/native.js';

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });

/** A TCP listener on host:0 that counts the connections it accepted. */
async function listener(host: string): Promise<{ server: Server; port: number; accepted: () => number }> {
  let n = 0;
  const server = createServer((s) => {
    n++;
    s.on('error', () => undefined);
    s.end();
  });
  await new Promise<void>((res) => server.listen({ host, port: 0 }, res));
  return { server, port: (server.address() as { port: number }).port, accepted: () => n };
}

/**
 * Exit status of a TCP connect from the namespace (bash's /dev/tcp), bounded by timeout(1): 0
 * connected, 1 refused, 124 timed out. Asynchronous: the listeners run in this process.
 */
function connectFrom(ns: string, host: string, port: number): Promise<number> {
  return new Promise((res) => {
    execFile('ip', ['netns', 'exec', ns, 'timeout', '5', 'bash', '-c', `exec 3<>/dev/tcp/${host}/${port}`], (e) => res(e ? (typeof e.code === 'number' ? e.code : -1) : 0));
  });
}

const settle = () => new Promise((r) => setTimeout(r, 200));

describe("the ticket's gateway: reached through its bridge only", function () {
  this.timeout(60_000);
  let stateDir: string;
  let engine: Engine;
  let ticket: Ticket;
  let clone: Clone;
  let ns: string;
  let hostSide: string;
  const hostAddr = `169.254.${20 + (process.pid % 200)}.1`;
  const nsAddr = hostAddr.replace(/\.1$/, '.2');

  before(async () => {
    buildNative();
    stateDir = mkdtempSync(join(tmpdir(), 'sf-gwfw-state-'));
    engine = new Engine({ stateDir });
    ticket = await engine.requestTicket(1, { provider: 'netns' });
    [clone] = await engine.createClones(ticket, await engine.checkpoint(ticket, {}));
    // Named after the ticket, so the leak check below also covers them.
    ns = `sf${ticket.id}x`;
    hostSide = `sf${ticket.id}xh`;
    ip('netns', 'add', ns);
    ip('link', 'add', hostSide, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns);
    ip('addr', 'add', `${hostAddr}/30`, 'dev', hostSide);
    ip('link', 'set', hostSide, 'up');
    ip('-n', ns, 'addr', 'add', `${nsAddr}/30`, 'dev', 'eth0');
    ip('-n', ns, 'link', 'set', 'eth0', 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    ip('-n', ns, 'route', 'add', `${ticket.network.gateway}/32`, 'via', hostAddr);
  });

  after(async () => {
    try {
      execFileSync('ip', ['netns', 'delete', ns], { stdio: 'ignore' });
    } catch {
      /* not made */
    }
    await engine.killAll();
    await assertNoLeaks([ticket.id], stateDir);
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('refuses an open gateway port to another interface, which still reaches the host elsewhere', async () => {
    const gw = await listener(ticket.network.gateway);
    const other = await listener(hostAddr);
    try {
      await engine.openPort(ticket, gw.port);
      // The ticket's clone reaches the open port through the bridge; this host over lo.
      const p = clone.spawn(['timeout', '5', 'bash', '-c', `exec 3<>/dev/tcp/${ticket.network.gateway}/${gw.port}`], { env: { PATH: '/usr/bin:/bin' } });
      expect((await p.exited).code, 'from the clone').to.equal(0);
      await new Promise<void>((res, rej) => {
        const s = connect({ host: ticket.network.gateway, port: gw.port });
        s.once('connect', () => {
          s.destroy();
          res();
        });
        s.once('error', rej);
      });
      await settle();
      expect(gw.accepted()).to.equal(2);

      // The foreign namespace: the path to this host works (its own address on the veth)...
      expect(await connectFrom(ns, hostAddr, other.port), 'foreign namespace to the host').to.equal(0);
      await settle();
      expect(other.accepted()).to.equal(1);
      // ...but the gateway's open port is refused at once, and the listener never sees it.
      const t0 = Date.now();
      expect(await connectFrom(ns, ticket.network.gateway, gw.port), 'foreign namespace to the gateway').to.equal(1);
      expect(Date.now() - t0, 'refused, not timed out').to.be.below(4000);
      await settle();
      expect(gw.accepted()).to.equal(2);
    } finally {
      gw.server.close();
      other.server.close();
    }
  });
});
