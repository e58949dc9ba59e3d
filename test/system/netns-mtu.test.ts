/**
 * The ticket network of namespace clones carries large frames (issue 13: traffic between clones at
 * loopback's pace): both ends of every veth have the veth's largest MTU, the bridge follows them,
 * each clone's eth0 takes packets of several MTUs (BIG TCP), and a large TCP transfer between
 * siblings and to the gateway arrives whole.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Engine } from '../../src/engine.js';
import type { Clone, CloneProcess } from '../../src/providers/clone.js';
import { VETH_GSO_MAX, VETH_MTU } from '../../src/providers/netns/provider.js';
import { vethName } from '../../src/ticket/names.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { buildNative } from '../helpers/native.js';

const env = (): Record<string, string> =>
  Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined));

async function output(p: CloneProcess): Promise<string> {
  let out = '';
  p.stdout.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const s = await p.exited;
  if (s.code !== 0) throw new Error(`exited ${JSON.stringify(s)}: ${out}`);
  return out.trim();
}

const run = (clone: Clone, argv: string[]) => output(clone.spawn(argv, { env: env() }));

/** Node inside a clone: sends `bytes` bytes to host:port and prints how many the other side counted. */
const sender = (host: string, port: number, bytes: number) => [
  process.execPath,
  '-e',
  `const s=require('net').connect(${port},'${host}',()=>{s.end(Buffer.alloc(${bytes},7))});let d='';s.on('data',b=>d+=b);s.on('end',()=>console.log(d))`,
];

/** Node inside a clone: counts the bytes of one connection and answers with the count. */
const counter = (port: number) => [
  process.execPath,
  '-e',
  `require('net').createServer(c=>{let n=0;c.on('data',b=>n+=b.length);c.on('end',()=>c.end(String(n)))}).listen(${port},()=>console.log('listening'))`,
];

describe('netns clones: large frames on the ticket network', function () {
  this.timeout(60_000);
  let stateDir: string;
  let engine: Engine;
  const ours: string[] = [];

  before(() => {
    buildNative();
    stateDir = mkdtempSync(join(tmpdir(), 'sf-mtu-test-'));
    engine = new Engine({ stateDir });
  });

  afterEach(async () => {
    await engine.killAll();
    await assertNoLeaks(ours.splice(0), stateDir);
  });

  after(() => rmSync(stateDir, { recursive: true, force: true }));

  it('gives every veth end and the bridge the largest MTU, and carries 16 MiB between siblings and to the gateway', async () => {
    const ticket = await engine.requestTicket(2, { provider: 'netns' });
    ours.push(ticket.id);
    const clones = await engine.createClones(ticket, await engine.checkpoint(ticket, {}));
    const mtu = (link: string) => Number(readFileSync(`/sys/class/net/${link}/mtu`, 'utf8'));
    expect(VETH_MTU).to.equal(65535);
    for (const c of clones) {
      expect(mtu(vethName(ticket.id, c.id)), 'host end').to.equal(VETH_MTU);
      expect(Number(await run(c, ['cat', '/sys/class/net/eth0/mtu'])), 'clone end').to.equal(VETH_MTU);
      const [eth0] = JSON.parse(await run(c, ['ip', '-d', '-j', 'link', 'show', 'dev', 'eth0'])) as Array<{ gso_max_size: number }>;
      expect(eth0!.gso_max_size, 'BIG TCP: packets of several MTUs').to.equal(VETH_GSO_MAX);
    }
    expect(mtu(ticket.network.bridge), 'the bridge follows its ports').to.equal(VETH_MTU);

    const bytes = 16 << 20;
    const srv = clones[1]!.spawn(counter(7100), { env: env() });
    await new Promise<void>((resolve, reject) => {
      srv.stdout.on('data', (d: Buffer) => d.toString().includes('listening') && resolve());
      void srv.exited.then((s) => reject(new Error(`counter ended early: ${JSON.stringify(s)}`)));
    });
    expect(await run(clones[0]!, sender(clones[1]!.address, 7100, bytes)), 'sibling to sibling').to.equal(String(bytes));
    srv.kill('SIGTERM');

    // To the gateway: a port opened in the ticket's firewall, a counter on the host.
    const host = createServer((c) => {
      let n = 0;
      c.on('data', (b: Buffer) => (n += b.length));
      c.on('end', () => c.end(String(n)));
    });
    await new Promise<void>((resolve) => host.listen(0, ticket.network.gateway, resolve));
    const port = (host.address() as { port: number }).port;
    await engine.openPort(ticket, port);
    expect(await run(clones[0]!, sender(ticket.network.gateway, port, bytes)), 'clone to gateway').to.equal(String(bytes));
    host.close();
    await engine.kill(ticket);
  });
});
