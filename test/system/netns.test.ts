/**
 * The engine with the netns provider, on real namespaces, bridges and nftables: identities,
 * networking between siblings, isolation between tickets and from the host, processes in clones,
 * and teardown on every path. Every test checks that nothing of its tickets is left.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { Engine } from '../../src/engine.js';
import type { Clone, CloneProcess } from '../../src/providers/clone.js';
import { vethName } from '../../src/ticket/names.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { buildNative } from '../helpers/native.js';

const env = (): Record<string, string> =>
  Object.fromEntries(Object.entries(process.env).filter((e): e is [string, string] => e[1] !== undefined));

interface Output {
  stdout: string;
  stderr: string;
  code: number | null;
  signal: NodeJS.Signals | null;
}

async function collect(p: CloneProcess): Promise<Output> {
  let stdout = '';
  let stderr = '';
  p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const s = await p.exited;
  return { stdout, stderr, ...s };
}

const run = (clone: Clone, argv: string[], extra: Record<string, string> = {}, cwd?: string) =>
  collect(clone.spawn(argv, { env: { ...env(), ...extra }, ...(cwd ? { cwd } : {}) }));

/**
 * A TCP client run inside a clone: prints what the server sent, or "blocked" if it cannot connect.
 * Every target below has a listener, so any failure to connect is the firewall's doing. The timeout
 * only bounds waiting for a dropped SYN; connections that must work get a generous one.
 */
const client = (host: string, port: number, timeoutMs = 3000) => [
  process.execPath,
  '-e',
  `const s=require('net').connect(${port},'${host}');let d='';s.setTimeout(${timeoutMs},()=>{console.log('blocked');process.exit(0)});` +
    `s.on('data',b=>d+=b);s.on('end',()=>{console.log(d);process.exit(0)});s.on('error',e=>{console.log('blocked '+e.code);process.exit(0)})`,
];

/** A TCP server run inside a clone: answers every connection with its hostname. */
const server = (port: number) => [
  process.execPath,
  '-e',
  `require('net').createServer(c=>c.end('hi from '+require('os').hostname())).listen(${port},()=>console.log('listening'))`,
];

function startServer(clone: Clone, port: number): Promise<CloneProcess> {
  const p = clone.spawn(server(port), { env: env() });
  return new Promise((resolve, reject) => {
    p.stdout.on('data', (d: Buffer) => d.toString().includes('listening') && resolve(p));
    void p.exited.then((s) => reject(new Error(`server in ${clone.hostname} ended early: ${JSON.stringify(s)}`)));
  });
}

function hostServer(host: string): Promise<{ server: Server; port: number }> {
  return new Promise((resolve) => {
    const s = createServer((c) => c.end('hi from the host'));
    s.listen(0, host, () => resolve({ server: s, port: (s.address() as { port: number }).port }));
  });
}

describe('netns clones (engine)', function () {
  this.timeout(60_000);
  let stateDir: string;
  let engine: Engine;
  const ours: string[] = [];

  async function ticketWithClones(n: number): Promise<{ ticket: Ticket; clones: Clone[] }> {
    const ticket = await engine.requestTicket(n, { provider: 'netns' });
    ours.push(ticket.id);
    const clones = await engine.createClones(ticket, await engine.checkpoint(ticket, {}));
    return { ticket, clones };
  }

  before(() => {
    buildNative();
    stateDir = mkdtempSync(join(tmpdir(), 'sf-netns-test-'));
    engine = new Engine({ stateDir });
  });

  afterEach(async () => {
    await engine.killAll();
    await assertNoLeaks(ours.splice(0), stateDir);
  });

  after(() => rmSync(stateDir, { recursive: true, force: true }));

  it('gives N clones distinct hostnames and addresses, each seen from inside', async () => {
    const { ticket, clones } = await ticketWithClones(4);
    expect(clones.map((c) => c.id)).to.deep.equal([0, 1, 2, 3]);
    expect(new Set(clones.map((c) => c.hostname)).size).to.equal(4);
    expect(new Set(clones.map((c) => c.address)).size).to.equal(4);
    for (const c of clones) {
      const out = await run(c, ['sh', '-c', 'hostname; ip -4 -o addr show dev eth0; ip route show default; cat /proc/1/comm; getent hosts ' + clones[3]!.hostname]);
      const [hostname, addr, route, init, peer] = out.stdout.trim().split('\n');
      expect(hostname).to.equal(c.hostname);
      expect(addr).to.include(`inet ${c.address}/24`);
      expect(route).to.include(`default via ${ticket.network.gateway}`);
      expect(init, 'a PID namespace with its own /proc').to.equal('holder');
      expect(peer, 'siblings known by name').to.match(new RegExp(`^${clones[3]!.address.replace(/\./g, '\\.')}\\s+${clones[3]!.hostname}$`));
    }
    // No DNS beyond the host: a name outside the ticket fails (at once: the gateway refuses port 53).
    const dns = await run(clones[0]!, ['sh', '-c', 'getent hosts no-such-host.invalid; echo "status $?"; cat /etc/resolv.conf']);
    expect(dns.stdout).to.include('status 2').and.include(`nameserver ${ticket.network.gateway}`);
    // Its own sysfs: the network devices it has, and no others.
    expect((await run(clones[0]!, ['ls', '/sys/class/net'])).stdout.split(/\s+/).filter(Boolean).sort()).to.deep.equal(['eth0', 'lo']);
    await engine.kill(ticket);
  });

  it('lets siblings reach each other over TCP', async () => {
    const { ticket, clones } = await ticketWithClones(2);
    const srv = await startServer(clones[1]!, 7000);
    const out = await run(clones[0]!, client(clones[1]!.address, 7000, 30_000));
    expect(out.stdout.trim()).to.equal(`hi from ${clones[1]!.hostname}`);
    srv.kill('SIGTERM');
    await engine.kill(ticket);
  });

  it('carries frames between siblings by the shortcut, past the bridge, and the rest by the bridge', async () => {
    const { ticket, clones } = await ticketWithClones(3);
    const stat = (c: Clone, what: 'rx_bytes' | 'tx_bytes') => Number(readFileSync(`/sys/class/net/${vethName(ticket.id, c.id)}/statistics/${what}`, 'utf8'));
    const bytes = 4 << 20;
    const srv = clones[2]!.spawn([process.execPath, '-e', `require('net').createServer(c=>{let n=0;c.on('data',b=>n+=b.length);c.on('end',()=>c.end(String(n)))}).listen(7001,()=>console.log('listening'))`], { env: env() });
    await new Promise((resolve) => srv.stdout.once('data', resolve));
    const [in0, out2] = [stat(clones[0]!, 'rx_bytes'), stat(clones[2]!, 'tx_bytes')];
    const sent = await run(clones[0]!, [process.execPath, '-e', `const s=require('net').connect(7001,'${clones[2]!.address}',()=>s.end(Buffer.alloc(${bytes})));let d='';s.on('data',b=>d+=b);s.on('end',()=>console.log(d))`]);
    srv.kill('SIGTERM');
    expect(sent.stdout.trim()).to.equal(String(bytes));
    // The frames left clone 0 by its veth, and reached clone 2 without going out of clone 2's veth.
    expect(stat(clones[0]!, 'rx_bytes') - in0, 'into the host side of clone 0').to.be.at.least(bytes);
    expect(stat(clones[2]!, 'tx_bytes') - out2, 'out of the bridge to clone 2').to.be.below(bytes / 16);
    // The gateway is not a sibling: the host is reached by the bridge as before.
    const { server: hs, port } = await hostServer(ticket.network.gateway);
    try {
      await engine.openPort(ticket, port);
      expect((await run(clones[1]!, client(ticket.network.gateway, port, 30_000))).stdout.trim()).to.equal('hi from the host');
    } finally {
      hs.close();
    }
    await engine.kill(ticket);
  });

  it('keeps flows between clones out of the host\'s connection tracking, the shortcut off', async () => {
    const { ticket, clones } = await ticketWithClones(2);
    // Without the shortcut, frames between the clones take the bridge (and br_netfilter, where loaded).
    for (const c of clones) execFileSync('tc', ['qdisc', 'del', 'dev', vethName(ticket.id, c.id), 'clsact']);
    expect(execFileSync('tc', ['filter', 'show', 'dev', vethName(ticket.id, 0), 'ingress'], { encoding: 'utf8' })).to.equal('');
    // This flow's entries: its addresses and the server's port (the host's table keeps other tests'
    // flows for days, and a later ticket may have the same addresses), new since the start.
    const flows = () =>
      readFileSync('/proc/net/nf_conntrack', 'utf8')
        .split('\n')
        .map((l) => /src=\S+ dst=\S+ sport=\d+ dport=\d+/.exec(l)?.[0] ?? '')
        .filter((t) => t.startsWith(`src=${clones[0]!.address} dst=${clones[1]!.address} `) && t.endsWith(' dport=7002'));
    const before = new Set(flows());
    const srv = await startServer(clones[1]!, 7002);
    expect((await run(clones[0]!, client(clones[1]!.address, 7002, 30_000))).stdout.trim()).to.equal(`hi from ${clones[1]!.hostname}`);
    srv.kill('SIGTERM');
    expect(flows().filter((t) => !before.has(t))).to.deep.equal([]);
    await engine.kill(ticket);
  });

  it('returns 32 clones whose network forwards at once: every clone reaches every sibling on its first try', async function () {
    this.timeout(240_000);
    const n = 32;
    const { ticket, clones } = await ticketWithClones(n);
    // Right away, all to all (as MPI_Init does), on a port where nothing listens: a sibling whose
    // network forwards answers each SYN with a reset (ECONNREFUSED) within one round trip, and so
    // does the gateway (its firewall refuses ports not opened). A lost
    // ARP request or SYN, a port not yet forwarding, or a full neighbour table (the host's ARP
    // table is shared by all namespaces: 32 clones need 992 entries) shows up as EHOSTUNREACH or
    // as "blocked" (the bound only ends a connect the kernel would keep retrying).
    // The gateway too, as every rank's PMI connection does: the host then also learns every clone.
    const addresses = [ticket.network.gateway, ...clones.map((c) => c.address)];
    const probe = (self: string) => [
      process.execPath,
      '-e',
      `const net=require('net');const all=${JSON.stringify(addresses)}.filter(a=>a!=='${self}');` +
        `Promise.all(all.map(a=>new Promise(r=>{const s=net.connect(9,a);s.setTimeout(60000,()=>{s.destroy();r(a+' blocked')});` +
        `s.on('connect',()=>{s.destroy();r(a+' connected')});s.on('error',e=>r(e.code==='ECONNREFUSED'?'ok':a+' '+e.code))})))` +
        `.then(rs=>{const bad=rs.filter(x=>x!=='ok');console.log(bad.length?bad.join(', '):'all '+rs.length+' refused');process.exit(0)})`,
    ];
    const outs = await Promise.all(clones.map((c) => run(c, probe(c.address))));
    const results = outs.map((o, i) => `${clones[i]!.hostname}: ${o.stdout.trim() || o.stderr.trim()}`);
    expect(results).to.deep.equal(clones.map((c) => `${c.hostname}: all ${n} refused`));
    await engine.kill(ticket);
  });

  it('isolates two live tickets from each other, and from host ports not opened', async () => {
    const a = await ticketWithClones(2);
    const b = await ticketWithClones(1);
    expect(a.ticket.network.subnet).to.not.equal(b.ticket.network.subnet);
    const srvB = await startServer(b.clones[0]!, 7001);
    const srvA = await startServer(a.clones[1]!, 7001);
    // The same client reaches a sibling, so "blocked" below means the firewall, not a broken client.
    expect((await run(a.clones[0]!, client(a.clones[1]!.address, 7001, 30_000))).stdout).to.include('hi from');
    expect((await run(a.clones[0]!, client(b.clones[0]!.address, 7001))).stdout).to.match(/^blocked/);
    expect((await run(b.clones[0]!, client(a.clones[1]!.address, 7001))).stdout).to.match(/^blocked/);

    const host = await hostServer('0.0.0.0');
    try {
      expect((await run(a.clones[0]!, client(a.ticket.network.gateway, host.port))).stdout).to.match(/^blocked/);
      await engine.openPort(a.ticket, host.port);
      expect(a.ticket.openPorts).to.include(host.port);
      expect((await run(a.clones[0]!, client(a.ticket.network.gateway, host.port, 30_000))).stdout.trim()).to.equal('hi from the host');
      // Opened for ticket a only: b still cannot reach it, not even through a's gateway address.
      expect((await run(b.clones[0]!, client(b.ticket.network.gateway, host.port))).stdout).to.match(/^blocked/);
      expect((await run(b.clones[0]!, client(a.ticket.network.gateway, host.port))).stdout).to.match(/^blocked/);
    } finally {
      host.server.close();
    }
    srvA.kill();
    srvB.kill();
  });

  it('runs a process with the given working directory, environment and exit status', async () => {
    const { clones } = await ticketWithClones(1);
    const cwd = join(process.cwd(), 'test');
    const out = await run(clones[0]!, ['sh', '-c', 'pwd; echo "$SF_TEST_VAR"; echo oops >&2; exit 7'], { SF_TEST_VAR: 'value 42' }, cwd);
    expect(out.stdout).to.equal(`${cwd}\nvalue 42\n`);
    expect(out.stderr).to.equal('oops\n');
    expect(out.code).to.equal(7);
    expect(out.signal).to.equal(null);
    // The caller's cwd by default.
    expect((await run(clones[0]!, ['pwd'])).stdout.trim()).to.equal(process.cwd());
  });

  it('reports death by signal, forwards signals, and tells a missing program from a failing one', async () => {
    const { clones } = await ticketWithClones(1);
    const c = clones[0]!;
    expect(await run(c, ['sh', '-c', 'kill -SEGV $$'])).to.include({ code: null, signal: 'SIGSEGV' });
    const sleeper = c.spawn(['sh', '-c', 'echo started; exec sleep 60'], { env: env() });
    await new Promise((r) => sleeper.stdout.once('data', r));
    sleeper.kill('SIGINT');
    expect(await sleeper.exited).to.deep.equal({ code: null, signal: 'SIGINT' });
    const missing = await run(c, ['no-such-program-sf']);
    expect(missing.code).to.equal(127);
    expect(missing.stderr).to.include('command not found');
    expect((await run(c, [join(process.cwd(), 'package.json')])).code, 'not executable').to.equal(126);
  });

  it('gives each clone a private /tmp and /dev/shm, but the caller a shared working directory under /tmp', async () => {
    const marker = `sf-host-marker-${process.pid}`;
    writeFileSync(join('/tmp', marker), 'x');
    const work = mkdtempSync(join(tmpdir(), 'sf-cwd-'));
    writeFileSync(join(work, 'input.txt'), 'shared');
    const old = process.cwd();
    process.chdir(work);
    try {
      const { clones } = await ticketWithClones(2);
      const a = await run(clones[0]!, ['sh', '-c', `ls /tmp; test -e /tmp/${marker} && echo LEAKED; cat input.txt; touch /dev/shm/mine`]);
      expect(a.stdout).to.not.include('LEAKED');
      expect(a.stdout).to.include('shared');
      expect(a.code).to.equal(0);
      const b = await run(clones[1]!, ['sh', '-c', 'test -e /dev/shm/mine && echo SEEN || echo private']);
      expect(b.stdout.trim()).to.equal('private');
    } finally {
      process.chdir(old);
      rmSync(join('/tmp', marker), { force: true });
      rmSync(work, { recursive: true, force: true });
    }
  });

  it('runs a program built straight into /tmp, with the rest of /tmp still private', async () => {
    const program = join('/tmp', `sf-prog-${process.pid}`);
    const marker = join('/tmp', `sf-host-marker-${process.pid}`);
    writeFileSync(program, '#!/bin/sh\necho "from $(hostname)"\n', { mode: 0o755 });
    writeFileSync(marker, 'x');
    try {
      const ticket = await engine.requestTicket(1, { provider: 'netns' });
      ours.push(ticket.id);
      const [clone] = await engine.createClones(ticket, await engine.checkpoint(ticket, { programs: [program] }));
      const out = await run(clone!, ['sh', '-c', `${program}; test -e ${marker} && echo LEAKED; true`]);
      expect(out.stdout.trim()).to.equal(`from ${clone!.hostname}`);
    } finally {
      rmSync(program, { force: true });
      rmSync(marker, { force: true });
    }
  });

  it('refuses /tmp itself as a working directory to share, before anything is made', async () => {
    let error: Error | undefined;
    await engine.requestTicket(2, { provider: 'netns', share: ['/tmp'] }).catch((e: Error) => (error = e));
    expect(error?.name).to.equal('UsageError');
    expect(error?.message).to.include('/tmp is private to each namespace clone').and.include('mkdir /tmp/job');
    expect(await engine.list()).to.deep.equal([]);
  });

  it('makes a directory in a clone\'s private /tmp from the host, without a process in the clone', async () => {
    const { clones } = await ticketWithClones(2);
    const dir = `/tmp/sf-made-${process.pid}/job`;
    await clones[0]!.makeDir!(dir);
    const inside = await run(clones[0]!, ['stat', '-c', '%a %F', dir]);
    expect(inside.stdout.trim()).to.equal('700 directory');
    expect((await run(clones[1]!, ['sh', '-c', `test -e ${dir} && echo SEEN || echo private`])).stdout.trim()).to.equal('private');
    expect(existsSync(dir), 'not on the host').to.equal(false);
  });

  it('join waits for running processes, then removes everything', async () => {
    const { ticket, clones } = await ticketWithClones(2);
    const procs = clones.map((c) => collect(c.spawn(['sh', '-c', 'sleep 0.3; echo done'], { env: env() })));
    const report = await engine.join(ticket);
    expect((await Promise.all(procs)).map((o) => o.stdout)).to.deep.equal(['done\n', 'done\n']);
    expect(report.failed).to.deep.equal([]);
    await assertNoLeaks([ticket.id], stateDir);
  });

  it('kill during a running process removes everything and ends the process', async () => {
    const { ticket, clones } = await ticketWithClones(3);
    const p = clones[2]!.spawn(['sh', '-c', 'echo up; exec sleep 600'], { env: env() });
    await new Promise((r) => p.stdout.once('data', r));
    await engine.kill(ticket);
    expect(await p.exited).to.deep.equal({ code: null, signal: 'SIGKILL' });
    await assertNoLeaks([ticket.id], stateDir);
  });

  it('kill while clones are being created stops the creation and removes everything', async () => {
    const ticket = await engine.requestTicket(8, { provider: 'netns' });
    ours.push(ticket.id);
    const creating = engine.createClones(ticket, await engine.checkpoint(ticket, {}));
    const killed = engine.kill(ticket);
    let failure: Error | null = null;
    await creating.catch((e: Error) => (failure = e));
    expect(failure, 'createClones must fail').to.be.instanceOf(Error);
    expect((await killed).failed).to.deep.equal([]);
    await assertNoLeaks([ticket.id], stateDir);
  });

  it('attach from the record reaches the same clones', async () => {
    const { ticket, clones } = await ticketWithClones(2);
    const other = new Engine({ stateDir });
    const attached = await other.attach(ticket.id);
    expect(attached.clones.map((c) => c.hostname)).to.deep.equal(clones.map((c) => c.hostname));
    expect((await run(attached.clones[1]!, ['hostname'])).stdout.trim()).to.equal(clones[1]!.hostname);
  });
});
