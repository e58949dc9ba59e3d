/**
 * The rank probe (launcher/pmi/rank-probe.ts) and native/sockets, on real processes with real TCP
 * connections on this host: two child processes stand for ranks, each connected to a server of
 * ours as to the PMI server, and one sends bytes to the other, which never reads them, as a rank
 * closing its UCX endpoints does to a rank blocked in the finalize barrier. Needs no root.
 */
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { RankProbe } from '../../launcher/pmi/rank-probe.js';
import { endpoint, hostHelper, parseEndpoint, parseSockets, SocketLister, socketsHelper } from '../../launcher/pmi/sockets.js';

/**
 * A child that connects to `pmiPort` (its "PMI connection"), listens, and optionally connects to
 * a peer and writes `send` bytes to it. It never reads what it is sent. Prints its listening port.
 */
const RANK = `
const net = require('node:net');
const [pmiPort, peerPort, send] = process.argv.slice(1).map(Number);
const pmi = net.connect(pmiPort, '127.0.0.1').on('error', () => {});
const hold = [];
const server = net.createServer({ pauseOnConnect: true }, (s) => hold.push(s.on('error', () => {})));
server.listen(0, '127.0.0.1', () => {
  pmi.once('connect', () => {
    if (peerPort) {
      const c = net.connect(peerPort, '127.0.0.1', () => c.write(Buffer.alloc(send))).on('error', () => {});
      hold.push(c);
    }
    process.stdout.write(server.address().port + '\\n');
  });
});
setInterval(() => {}, 1000);
`;

describe('rank probe and native/sockets', function () {
  this.timeout(30_000);
  let pmi: Server;
  let pmiPort: number;
  const accepted: Socket[] = [];
  const children: ChildProcess[] = [];

  before(async () => {
    pmi = createServer((s) => accepted.push(s));
    pmi.listen(0, '127.0.0.1');
    await once(pmi, 'listening');
    pmiPort = (pmi.address() as { port: number }).port;
  });

  after(() => {
    children.forEach((c) => c.kill('SIGKILL'));
    accepted.forEach((s) => s.destroy());
    pmi.close();
  });

  /** Starts a "rank"; resolves to its listening port and the server's end of its PMI connection. */
  async function rank(peerPort = 0, send = 0): Promise<{ child: ChildProcess; port: number; conn: Socket }> {
    const before = accepted.length;
    const child = spawn(process.execPath, ['-e', RANK, String(pmiPort), String(peerPort), String(send)], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    const [line] = (await once(child.stdout!, 'data')) as [Buffer];
    while (accepted.length === before) await new Promise((r) => setTimeout(r, 5));
    return { child, port: Number(line.toString().trim()), conn: accepted[accepted.length - 1]! };
  }

  const tracked = (conn: Socket) => ({ rankSide: endpoint(conn.remoteAddress!, conn.remotePort!), serverSide: endpoint(conn.localAddress!, conn.localPort!) });

  it('spells endpoints one way, from Node and from the helper', () => {
    expect(endpoint('::ffff:10.0.0.5', 80)).to.equal('10.0.0.5:80');
    expect(endpoint('::1', 7)).to.equal('[0:0:0:0:0:0:0:1]:7');
    expect(parseEndpoint('[::1]:7')).to.equal('[0:0:0:0:0:0:0:1]:7');
    expect(parseEndpoint('10.0.0.5:80')).to.equal('10.0.0.5:80');
    for (const bad of ['', '-', '10.0.0.5', '[::1]', 'host:80', '10.0.0.5:999999', '1.2.3.4.5:1']) expect(parseEndpoint(bad), bad).to.equal(null);
    expect(parseSockets('1 3 1 10.0.0.5:80 10.0.0.6:81 25 0 25 7\nnonsense\n1 4 10 10.0.0.5:80 - 0 0 0 0\n')).to.deep.equal([
      { pid: 1, fd: 3, state: 1, local: '10.0.0.5:80', remote: '10.0.0.6:81', unread: 25, unsent: 0, received: 25, acked: 7 },
      { pid: 1, fd: 4, state: 10, local: '10.0.0.5:80', remote: '-', unread: 0, unsent: 0, received: 0, acked: 0 },
    ]);
  });

  it('lists the sockets a process holds with the bytes it has not read', async () => {
    const a = await rank();
    const b = await rank(a.port, 25);
    await new Promise((r) => setTimeout(r, 200));
    const gone = spawn('true');
    await once(gone, 'exit');
    const lister = new SocketLister();
    const sockets = await lister.list([a.child.pid!, b.child.pid!, gone.pid!]);
    // Again, from the same helper process.
    expect((await lister.list([a.child.pid!])).filter((s) => s.unread === 25)).to.have.length(1);
    lister.close();
    const inA = sockets.filter((s) => s.pid === a.child.pid && s.state === 1 && s.local === `127.0.0.1:${a.port}`);
    expect(inA, JSON.stringify(sockets)).to.have.length(1);
    expect(inA[0]!.unread).to.equal(25);
    const fromB = sockets.find((s) => s.pid === b.child.pid && s.remote === `127.0.0.1:${a.port}`);
    expect(fromB?.local).to.equal(inA[0]!.remote);
    expect(sockets.some((s) => s.pid === a.child.pid && s.local === tracked(a.conn).rankSide), 'the PMI connection is listed').to.equal(true);
  });

  it('says nothing (and does not fail) for a helper that is missing, or one that dies', async () => {
    const missing = new SocketLister('/nonexistent/sockets');
    expect(await missing.list([process.pid])).to.deep.equal([]);
    expect(await missing.list([process.pid])).to.deep.equal([]);
    missing.close();
    expect(socketsHelper({ SNOWFLOCK_NATIVE_DIR: '/x' })).to.equal('/x/sockets');
    const a = await rank();
    const lister = new SocketLister();
    expect((await lister.list([a.child.pid!])).length).to.be.greaterThan(0);
    // Killed under it: the next request starts another.
    (lister as unknown as { child: ChildProcess }).child.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 100));
    expect((await lister.list([a.child.pid!])).length).to.be.greaterThan(0);
    lister.close();
    expect(await lister.list([a.child.pid!])).to.deep.equal([]);
  });

  it('proves that a rank outside the barrier waits on one inside, and only then', async () => {
    const a = await rank(); // inside the barrier, reads nothing
    const quiet = await rank(); // outside, sent nothing
    const sender = await rank(a.port, 25); // outside, sent 25 bytes a has not read
    const probe = new RankProbe();
    probe.track(0, tracked(a.conn));
    probe.track(1, tracked(quiet.conn));
    probe.track(2, tracked(sender.conn));
    await probe.prepare();
    await new Promise((r) => setTimeout(r, 200));
    const look = await probe.look([0], [1, 2]);
    expect(look.visible).to.equal(true);
    expect([...look.stuck]).to.deep.equal([[2, { waitsOn: 0, unread: 25 }]]);
    // Seen from the other side: nothing is waiting for the quiet rank.
    expect([...(await probe.look([1], [0, 2])).stuck]).to.deep.equal([]);
    probe.close();
  });

  it('finds ranks below a helper started elsewhere, whose PIDs it cannot name, and proves the stall there', async () => {
    const a = await rank(); // inside the barrier, reads nothing
    const sender = await rank(a.port, 25); // outside, sent 25 bytes a has not read
    // This host's own look sees nothing (its helper is missing), as for ranks in a VM. "Elsewhere"
    // is a helper asked for the processes below the one that started it (this test process, as a
    // guest's agent or another host's), as native/sockets is inside a clone.
    const probe = new RankProbe({ helper: '/nonexistent/sockets', elsewhere: [hostHelper()] });
    const blind = new RankProbe({ helper: '/nonexistent/sockets' });
    for (const p of [probe, blind]) {
      p.track(0, tracked(a.conn));
      p.track(1, tracked(sender.conn));
      await p.prepare();
    }
    await new Promise((r) => setTimeout(r, 200));
    const look = await probe.look([0], [1]);
    expect(look.visible).to.equal(true);
    expect([...look.stuck]).to.deep.equal([[1, { waitsOn: 0, unread: 25 }]]);
    // Without it, the same ranks are nowhere to be seen, and nothing is proven.
    const nothing = await blind.look([0], [1]);
    expect(nothing.visible).to.equal(false);
    expect([...nothing.stuck]).to.deep.equal([]);
    probe.close();
    blind.close();
  });

  it('notices a rank that moves data, and one that is gone', async () => {
    const a = await rank();
    const probe = new RankProbe();
    probe.track(0, tracked(a.conn));
    await probe.prepare();
    await probe.look([], [0]);
    expect(probe.lastActive(0)).to.equal(-Infinity);
    await new Promise((r) => setTimeout(r, 100));
    await probe.look([], [0]);
    expect(probe.lastActive(0), 'idle').to.equal(-Infinity);
    const b = await rank(a.port, 4096); // a receives (without reading): bytes moved on its connection
    await new Promise((r) => setTimeout(r, 100));
    await probe.look([], [0]);
    expect(probe.lastActive(0)).to.be.greaterThan(0);
    a.child.kill('SIGKILL');
    await once(a.child, 'exit');
    expect((await probe.look([0], [])).visible).to.equal(false);
    b.child.kill('SIGKILL');
    probe.close();
  });
});
