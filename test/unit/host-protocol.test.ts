/**
 * The host agent protocol (src/hosts/protocol.ts) and its channel (src/hosts/channel.ts): frames
 * whole and in pieces, the size limit before the handshake, and the mutual HMAC handshake over a
 * real TCP connection on loopback: the right secret passes both ways; a wrong secret, another
 * version or another host's name is refused, and nothing of the job reaches the wrong side.
 */
import { createServer, connect, type Server, type Socket } from 'node:net';
import { expect } from 'chai';
import { agentHandshake, Channel, coordinatorHandshake } from '../../src/hosts/channel.js';
import {
  AGENT_PROTOCOL_VERSION,
  encodeFrame,
  FrameReader,
  MAX_HANDSHAKE_FRAME,
  newSecret,
  proof,
  type Frame,
  type HostFacts,
} from '../../src/hosts/protocol.js';

const facts: HostFacts = { pid: 1, underlay: { address: '127.0.0.1', dev: 'lo', mtu: 65536 }, cpus: 2 };

describe('host agent protocol: frames', function () {
  it('round-trips a header and a binary payload, whole and byte by byte', function () {
    const data = Buffer.from([0, 1, 2, 255, 10, 13]);
    const bytes = Buffer.concat([encodeFrame({ t: 'output', proc: 7, fd: 2 }, data), encodeFrame({ t: 'beat' })]);
    const whole = new FrameReader().push(bytes);
    expect(whole.map((f) => f.msg)).to.deep.equal([{ t: 'output', proc: 7, fd: 2 }, { t: 'beat' }]);
    expect(whole[0]!.data.equals(data)).to.equal(true);
    const r = new FrameReader();
    const pieces: Frame[] = [];
    for (const b of bytes) pieces.push(...r.push(Buffer.from([b])));
    expect(pieces.map((f) => f.msg.t)).to.deep.equal(['output', 'beat']);
    expect(pieces[0]!.data.equals(data)).to.equal(true);
  });

  it('refuses a frame above the limit before reading it, and a header that is not a message', function () {
    const head = Buffer.alloc(4);
    head.writeUInt32LE(MAX_HANDSHAKE_FRAME + 1);
    expect(() => new FrameReader().push(head)).to.throw(/at most/);
    const bad = Buffer.alloc(12);
    bad.writeUInt32LE(8, 0);
    bad.writeUInt32LE(4, 4);
    bad.write('nope', 8);
    expect(() => new FrameReader().push(bad)).to.throw(/not JSON/);
  });

  it('proofs depend on the secret, the role, both nonces and the host', function () {
    const k = newSecret();
    const p = proof(k, 'agent', 'a', 'b', 'h');
    expect(proof(k, 'agent', 'a', 'b', 'h')).to.equal(p);
    for (const other of [proof(newSecret(), 'agent', 'a', 'b', 'h'), proof(k, 'coordinator', 'a', 'b', 'h'), proof(k, 'agent', 'b', 'a', 'h'), proof(k, 'agent', 'a', 'b', 'g')]) {
      expect(other).to.not.equal(p);
    }
  });
});

describe('host agent protocol: the handshake over TCP', function () {
  let server: Server;
  let port: number;
  let accepted: Promise<Socket>;

  beforeEach(async function () {
    server = createServer();
    let accept!: (s: Socket) => void;
    accepted = new Promise((r) => (accept = r));
    server.on('connection', accept);
    await new Promise<void>((r) => server.listen({ host: '127.0.0.1', port: 0 }, r));
    port = (server.address() as { port: number }).port;
  });

  afterEach(function () {
    server.close();
  });

  async function pair(): Promise<{ agent: Channel; coordinator: Channel }> {
    const sock = connect({ host: '127.0.0.1', port });
    await new Promise((r) => sock.once('connect', r));
    return { agent: new Channel(sock), coordinator: new Channel(await accepted) };
  }

  it('passes with the same secret, both ways, and carries frames afterwards', async function () {
    const k = newSecret();
    const { agent, coordinator } = await pair();
    const [a, c] = await Promise.all([agentHandshake(agent, k, 'node1', facts), coordinatorHandshake(coordinator, k, new Set(['node1']), { beatMs: 100, deadMs: 1000 })]);
    expect(a).to.deep.equal({ beatMs: 100, deadMs: 1000 });
    expect(c.host).to.equal('node1');
    expect(c.facts).to.deep.equal(facts);
    const got = new Promise<Frame>((r) => coordinator.once('frame', r));
    coordinator.deliver();
    agent.send({ t: 'output', proc: 1, fd: 1 }, Buffer.alloc(MAX_HANDSHAKE_FRAME * 2, 7));
    expect((await got).data.length).to.equal(MAX_HANDSHAKE_FRAME * 2);
    agent.close();
    coordinator.close();
  });

  it('refuses an agent without the secret: the coordinator never welcomes it', async function () {
    const { agent, coordinator } = await pair();
    const results = await Promise.allSettled([agentHandshake(agent, newSecret(), 'node1', facts), coordinatorHandshake(coordinator, newSecret(), new Set(['node1']), { beatMs: 100, deadMs: 1000 })]);
    expect(results[0]!.status).to.equal('rejected');
    expect(String((results[0] as PromiseRejectedResult).reason)).to.match(/refused: not an agent of this job/);
    expect(String((results[1] as PromiseRejectedResult).reason)).to.match(/did not prove the job secret/);
  });

  it('an agent refuses a coordinator that does not know the secret (it answers its challenge, then checks the welcome)', async function () {
    const k = newSecret();
    const { agent, coordinator } = await pair();
    const impostor = (async () => {
      coordinator.send({ t: 'challenge', version: AGENT_PROTOCOL_VERSION, nonce: 'n' });
      await coordinator.next(5000, 'hello');
      coordinator.send({ t: 'welcome', proof: proof(newSecret(), 'coordinator', 'x', 'n', 'node1'), beatMs: 100, deadMs: 1000 });
    })();
    let err: unknown;
    await agentHandshake(agent, k, 'node1', facts).catch((e: unknown) => (err = e));
    await impostor;
    expect(String(err)).to.match(/did not prove that it knows the job secret/);
    expect(agent.closedWhy).to.not.equal(null);
  });

  it('refuses an agent that names a host the job does not have, and another protocol version with one line', async function () {
    const k = newSecret();
    let { agent, coordinator } = await pair();
    let results = await Promise.allSettled([agentHandshake(agent, k, 'stranger', facts), coordinatorHandshake(coordinator, k, new Set(['node1']), { beatMs: 100, deadMs: 1000 })]);
    expect(results.map((r) => r.status)).to.deep.equal(['rejected', 'rejected']);

    server.removeAllListeners('connection');
    let accept!: (s: Socket) => void;
    accepted = new Promise((r) => (accept = r));
    server.on('connection', accept);
    ({ agent, coordinator } = await pair());
    coordinator.send({ t: 'challenge', version: AGENT_PROTOCOL_VERSION + 1, nonce: 'n' });
    let err: unknown;
    await agentHandshake(agent, k, 'node1', facts).catch((e: unknown) => (err = e));
    expect(String(err)).to.match(new RegExp(`the launcher speaks host agent protocol version ${AGENT_PROTOCOL_VERSION + 1}, this side ${AGENT_PROTOCOL_VERSION}: install one snowflock version`));
    const refusal = await coordinator.next(5000, 'refusal');
    expect(refusal.msg).to.deep.include({ t: 'refused' });
  });

  it('a silent peer counts as gone after deadMs, although its connection stays open', async function () {
    const { agent, coordinator } = await pair();
    const closed = new Promise<string>((r) => coordinator.once('closed', r));
    coordinator.startBeats(50, 300);
    // The agent side never reads or beats: its socket is paused.
    agent.socket.pause();
    const t0 = Date.now();
    expect(await closed).to.match(/nothing heard/);
    expect(Date.now() - t0).to.be.below(3000);
    agent.close();
  });
});
