/**
 * Isolation probes (issue 8, harness 9), for any provider: what a clone must not reach, the host
 * listeners that would catch a probe that got through, the nftables counter that tells whether a
 * packet of the ticket left by another device than its bridge, and the scene that runs them all
 * from a clone of one ticket against another ticket. The probing itself is test/programs/netprobe.c,
 * run inside the clone.
 */
import { execFileSync } from 'node:child_process';
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { networkInterfaces } from 'node:os';
import { dirname, join } from 'node:path';
import { expect } from 'chai';
import type { Engine } from '../../src/engine.js';
import { projectRoot } from '../../src/common/paths.js';
import type { Clone, CloneProcess } from '../../src/providers/clone.js';
import type { Ticket } from '../../src/ticket/ticket.js';

/** test/programs/netprobe.c built with the host's C compiler (no MPI) into test/.build/probe/. */
export function netprobe(): string {
  const src = join(projectRoot(), 'test/programs/netprobe.c');
  const out = join(projectRoot(), 'test/.build/probe/netprobe');
  if (!existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs) {
    mkdirSync(dirname(out), { recursive: true });
    execFileSync('gcc', ['-O1', '-Wall', '-o', out, src], { stdio: ['ignore', 'ignore', 'inherit'] });
  }
  return out;
}

export const SUCCESS = new Set(['connected', 'replied']);

export interface Collected {
  code: number | null;
  signal: NodeJS.Signals | null;
  out: string;
  err: string;
}

export async function collect(p: CloneProcess): Promise<Collected> {
  let out = '';
  let err = '';
  p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  p.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const s = await p.exited;
  return { ...s, out, err };
}

/** Resolves once the process has printed a line matching `re` (or fails when it exits first). */
export function waitForLine(p: CloneProcess, re: RegExp, timeoutMs = 30_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => reject(new Error(`no line matching ${re} within ${timeoutMs} ms; got ${JSON.stringify(seen)}`)), timeoutMs);
    p.stdout.on('data', (d: Buffer) => {
      seen += d.toString();
      if (re.test(seen)) {
        clearTimeout(timer);
        resolve();
      }
    });
    void p.exited.then((s) => {
      clearTimeout(timer);
      reject(new Error(`exited (${JSON.stringify(s)}) before a line matching ${re}; got ${JSON.stringify(seen)}`));
    });
  });
}

/** Every address of every host interface, as a clone would name it (link-local IPv6 with %eth0). */
export function hostAddresses(): string[] {
  const out = new Set<string>();
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) out.add(a.family === 'IPv6' && a.address.startsWith('fe80:') ? `${a.address}%eth0` : a.address);
  }
  return [...out];
}

/** Addresses outside the machine: TEST-NET and documentation ranges, and the host's own gateways. */
export function outsideAddresses(): string[] {
  const out = new Set(['192.0.2.1', '198.51.100.1', '2001:db8::1']);
  // The host's default gateways are outside it too (here 192.0.2.1 is the real uplink's router).
  for (const args of [['-4', 'route', 'show', 'default'], ['-6', 'route', 'show', 'default']]) {
    const text = execFileSync('ip', args, { encoding: 'utf8' });
    for (const m of text.matchAll(/default via (\S+)/g)) out.add(m[1]!);
  }
  return [...out];
}

/** Host listeners (TCP and UDP echo, IPv4 and IPv6, every address) on a port; counts who came. */
export class HostListener {
  readonly hits: string[] = [];
  private servers: Server[] = [];
  private sockets: UdpSocket[] = [];

  private constructor(readonly port: number) {}

  static async open(port = 0): Promise<HostListener> {
    for (let attempt = 0; ; attempt++) {
      const l = new HostListener(port || (await freeTcpPort()));
      try {
        await l.listen();
        return l;
      } catch (e) {
        await l.close();
        if (port || attempt >= 5) throw e;
      }
    }
  }

  private async listen(): Promise<void> {
    for (const host of ['0.0.0.0', '::']) {
      const server = createServer((s) => {
        this.hits.push(`tcp ${s.remoteAddress}:${s.remotePort} -> ${s.localAddress}:${this.port}`);
        // The probe closes at once (a reset, maybe): only the connection counts.
        s.on('error', () => undefined);
        s.end('hello from the host\n');
      });
      this.servers.push(server);
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ host, port: this.port, ipv6Only: host === '::' }, () => resolve());
      });
      const udp = createSocket({ type: host === '::' ? 'udp6' : 'udp4', ipv6Only: host === '::' });
      this.sockets.push(udp);
      udp.on('message', (msg, from) => {
        this.hits.push(`udp ${from.address}:${from.port} -> :${this.port}`);
        udp.send(msg, from.port, from.address);
      });
      await new Promise<void>((resolve, reject) => {
        udp.once('error', reject);
        udp.bind(this.port, host, () => resolve());
      });
    }
  }

  async close(): Promise<void> {
    for (const s of this.servers) await new Promise<void>((r) => s.close(() => r()));
    for (const u of this.sockets) await new Promise<void>((r) => u.close(() => r()));
    this.servers = [];
    this.sockets = [];
  }
}

function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen({ host: '0.0.0.0', port: 0 }, () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

/**
 * A table of the test's own that counts packets that came in from the ticket's bridge and go out
 * by any other device (postrouting: they would leave the ticket's network, maybe the host), and
 * those that reached the forward hook at all (before the ticket's own table drops them).
 */
export class LeaveCounter {
  readonly table: string;

  constructor(private readonly bridge: string) {
    this.table = `sfch_probe_${process.pid}`;
  }

  create(): void {
    const br = JSON.stringify(this.bridge);
    nft(`table inet ${this.table} {
  chain forward { type filter hook forward priority filter - 10; policy accept; iifname ${br} oifname != ${br} counter comment "forwarded"; }
  chain postrouting { type filter hook postrouting priority -300; policy accept; iifname ${br} oifname != ${br} counter comment "left"; }
}
`);
  }

  /** Packets counted by the rule with that comment. */
  packets(comment: 'forwarded' | 'left'): number {
    const text = execFileSync('nft', ['list', 'table', 'inet', this.table], { encoding: 'utf8' });
    const line = text.split('\n').find((l) => l.includes(`comment "${comment}"`)) ?? '';
    return Number(/counter packets (\d+)/.exec(line)?.[1] ?? NaN);
  }

  remove(): void {
    try {
      execFileSync('nft', ['delete', 'table', 'inet', this.table], { stdio: 'ignore' });
    } catch {
      /* not there */
    }
  }
}

function nft(script: string): void {
  execFileSync('nft', ['-f', '-'], { input: script, stdio: ['pipe', 'ignore', 'inherit'] });
}

/** "probe SPEC RESULT" lines as a map from spec to result. */
export function parseProbes(out: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of out.split('\n')) {
    const f = /^probe (\S+) (\S+)$/.exec(line);
    if (f) m.set(f[1]!, f[2]!);
  }
  return m;
}

export interface ProbeTargets {
  /** The probing clone's gateway, and the port opened for its ticket there. */
  gateway: string;
  openPort: number;
  /** A port with a real host listener that nobody opened. */
  closedPort: number;
  /** A port with a real host listener that only the other ticket opened (on its own gateway). */
  otherOpenPort: number;
  /** Another ticket: its clone (running `netprobe listen closedPort`) and its gateway. */
  otherClone: string;
  otherGateway: string;
}

const isLoopback = (a: string): boolean => a === '::1' || a.startsWith('127.');

/** Every attempt that must fail, with no duplicates. */
export function forbiddenSpecs(t: ProbeTargets): string[] {
  const specs = new Set<string>();
  for (const a of [...hostAddresses(), t.otherGateway]) {
    specs.add(`tcp,${a},${t.closedPort}`);
    specs.add(`udp,${a},${t.closedPort}`);
    // A clone's own loopback answers pings to 127.0.0.1 and ::1 (the host's never can: martians);
    // TCP and UDP there still show that the host's listeners on loopback are out of reach.
    if (!isLoopback(a)) specs.add(`icmp,${a}`);
    // Opened for the other ticket only.
    specs.add(`tcp,${a},${t.otherOpenPort}`);
    // Opened for this ticket, but on its gateway address and for TCP only.
    if (a !== t.gateway) specs.add(`tcp,${a},${t.openPort}`);
    specs.add(`udp,${a},${t.openPort}`);
  }
  // The clones' resolv.conf names the gateway: DNS must be refused, not answered.
  specs.add(`udp,${t.gateway},53`);
  specs.add(`tcp,${t.gateway},53`);
  for (const a of [t.otherClone]) {
    specs.add(`tcp,${a},${t.closedPort}`);
    specs.add(`udp,${a},${t.closedPort}`);
    specs.add(`icmp,${a}`);
  }
  for (const a of outsideAddresses()) {
    specs.add(`tcp,${a},80`);
    specs.add(`udp,${a},53`);
    specs.add(`icmp,${a}`);
  }
  return [...specs];
}

const ENV = { PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin', HOME: '/root' };

export interface ProbeTicket {
  engine: Engine;
  ticket: Ticket;
  clones: Clone[];
}

/**
 * Two tickets set up for probing: A (at least 2 clones: the prober and its sibling) and B (another
 * ticket, at least 1 clone). A host listener sits on a port nobody opened, and netprobe listens on
 * that port in B's clone and in A's sibling.
 */
export class IsolationScene {
  private readonly servers: CloneProcess[] = [];
  private readonly listeners: HostListener[] = [];
  private counter: LeaveCounter | null = null;

  private constructor(
    readonly a: ProbeTicket,
    readonly b: ProbeTicket,
    readonly probe: string,
    readonly closed: HostListener,
  ) {
    this.listeners.push(closed);
  }

  static async start(a: ProbeTicket, b: ProbeTicket, probe: string): Promise<IsolationScene> {
    const scene = new IsolationScene(a, b, probe, await HostListener.open());
    for (const c of [b.clones[0]!, a.clones[1]!]) {
      const s = c.spawn([probe, 'listen', String(scene.closed.port)], { env: ENV });
      scene.servers.push(s);
      await waitForLine(s, /^listening /m, 120_000);
    }
    return scene;
  }

  get prober(): Clone {
    return this.a.clones[0]!;
  }

  /**
   * Every forbidden attempt from A's first clone, counted; each must fail, the host listeners must
   * hear nobody but the control, nothing of A may leave by another device than its bridge; the
   * controls must get through. Returns the tally of results (for the test's log line).
   */
  async network(opts: { routeIpv6: boolean; parallel: number; timeoutMs: number }): Promise<string> {
    const { a, b, closed } = this;
    const [open, otherOpen] = [await HostListener.open(), await HostListener.open()];
    this.listeners.push(open, otherOpen);
    await a.engine.openPort(a.ticket, open.port);
    await b.engine.openPort(b.ticket, otherOpen.port);
    this.counter = new LeaveCounter(a.ticket.network.bridge);
    this.counter.create();
    if (opts.routeIpv6) {
      // A clone has no IPv6 route out, and the host answers no neighbour solicitation from it: so
      // that IPv6 probes reach the host (and test its rules, not the missing route), the prober
      // routes IPv6 to the bridge and knows every host link-local address at the bridge's MAC.
      const setup = await collect(this.prober.spawn(['sh', '-c', ipv6Toward(a.ticket.network.bridge)], { env: ENV }));
      expect(setup.code, setup.err).to.equal(0);
    }
    const targets = {
      gateway: a.ticket.network.gateway,
      openPort: open.port,
      closedPort: closed.port,
      otherOpenPort: otherOpen.port,
      otherClone: b.clones[0]!.address,
      otherGateway: b.ticket.network.gateway,
    };
    // Broadcast and multicast too: a host listener on any address would hear them if let in.
    const everyone = [broadcastOf(a.ticket.network.subnet), '255.255.255.255', '224.0.0.1', 'ff02::1%eth0'];
    const forbidden = [...forbiddenSpecs(targets), ...everyone.map((x) => `udp,${x},${closed.port}`)];
    const sibling = a.clones[1]!.address;
    const controls = [`tcp,${targets.gateway},${open.port}`, `tcp,${sibling},${closed.port}`, `udp,${sibling},${closed.port}`, `icmp,${sibling}`];
    const results = await probeAll(this.prober, this.probe, [...controls, ...forbidden], opts.parallel, opts.timeoutMs);

    // Every attempt was made and answered, and the count is what was asked for.
    expect(results.size).to.equal(controls.length + forbidden.length);
    expect(forbidden.filter((s) => !results.has(s)), 'attempts with no answer').to.deep.equal([]);
    const controlResults = controls.map((s) => `${s} ${results.get(s)}`);
    const wanted = controls.map((s) => `${s} ${s.startsWith('tcp') ? 'connected' : 'replied'}`);
    expect(controlResults, 'controls must get through (else a "failed" probe proves nothing)').to.deep.equal(wanted);
    const through = forbidden.filter((s) => SUCCESS.has(results.get(s) ?? ''));
    expect(through, `${forbidden.length} forbidden attempts; these got through`).to.deep.equal([]);
    // The host's listeners saw only the control (A's open port on A's gateway, from the prober).
    expect(closed.hits, 'the closed port').to.deep.equal([]);
    expect(otherOpen.hits, 'the port only ticket B opened').to.deep.equal([]);
    expect(open.hits.map((h) => h.replace(/:\d+ ->/, ' ->'))).to.deep.equal([`tcp ${this.prober.address} -> ${targets.gateway}:${open.port}`]);
    // Nothing came out of A's bridge by another device (to the uplink, another bridge).
    expect(this.counter.packets('left'), 'packets of ticket A that left its network').to.equal(0);
    const tally = new Map<string, number>();
    for (const s of forbidden) tally.set(results.get(s)!, (tally.get(results.get(s)!) ?? 0) + 1);
    if (process.env.SFCH_PROBE_DETAIL) for (const [k, v] of results) console.log(`      ${v} ${k}`);
    return `${forbidden.length} forbidden attempts, all failed (${[...tally].map(([k, v]) => `${v} ${k}`).join(', ')}); ${this.counter.packets('forwarded')} reached the host's forward hook, 0 left; ${controls.length} controls got through`;
  }

  /**
   * The prober forges UDP datagrams as if they were the replies of flows the host has with B's clone
   * (must not get in) and with A's sibling (the control: within its ticket, it does get in, which
   * shows that a forgery is real).
   */
  async forgery(): Promise<void> {
    const { a, b, closed } = this;
    const victim = await UdpPeer.open();
    const control = await UdpPeer.open();
    try {
      await victim.exchange(b.clones[0]!.address, closed.port);
      await control.exchange(a.clones[1]!.address, closed.port);
      // Sent to the address the host used for each flow: the gateway on that clone's bridge (the
      // prober routes both to its own gateway).
      for (const [from, to, peer, text] of [
        [b.clones[0]!.address, b.ticket.network.gateway, victim, 'forged-as-B'],
        [a.clones[1]!.address, a.ticket.network.gateway, control, 'forged-as-sibling'],
      ] as const) {
        const r = await collect(this.prober.spawn([this.probe, 'spoof', from, String(closed.port), to, String(peer.port), text], { env: ENV }));
        expect(r.code, r.err).to.equal(0);
      }
      await new Promise((r) => setTimeout(r, 1000));
      expect(control.received, 'a forgery within the ticket (the control)').to.include('forged-as-sibling');
      expect(victim.received, "a forgery of another ticket's clone").to.not.include('forged-as-B');
    } finally {
      victim.close();
      control.close();
    }
  }

  async close(): Promise<void> {
    for (const s of this.servers) s.kill('SIGKILL');
    await Promise.all(this.servers.map((s) => s.exited));
    for (const l of this.listeners) await l.close();
    this.counter?.remove();
  }
}

/** The subnet's broadcast address (a /24). */
function broadcastOf(subnet: string): string {
  return subnet.replace(/\.\d+\/24$/, '.255');
}

/** Shell commands that route IPv6 from a clone to the bridge and pin every host link-local address there. */
function ipv6Toward(bridge: string): string {
  const mac = readFileSync(`/sys/class/net/${bridge}/address`, 'utf8').trim();
  const gw = networkInterfaces()[bridge]?.find((x) => x.family === 'IPv6' && x.address.startsWith('fe80:'))?.address;
  if (!gw) throw new Error(`the bridge ${bridge} has no IPv6 link-local address`);
  const lls = hostAddresses().filter((x) => x.startsWith('fe80:')).map((x) => x.replace(/%.*$/, ''));
  return [...lls.map((l) => `ip -6 neigh replace ${l} lladdr ${mac} dev eth0 nud permanent`), `ip -6 route replace default via ${gw} dev eth0`].join(' && ');
}

/** Runs the probes in a few processes at once (a dropped one costs its whole timeout). */
async function probeAll(clone: Clone, probe: string, specs: string[], parallel: number, timeoutMs: number): Promise<Map<string, string>> {
  const chunks: string[][] = Array.from({ length: parallel }, () => []);
  specs.forEach((s, i) => chunks[i % parallel]!.push(s));
  const runs = await Promise.all(chunks.filter((c) => c.length).map((c) => collect(clone.spawn([probe, 'probe', String(timeoutMs), ...c], { env: ENV }))));
  for (const r of runs) expect(r.code, r.err).to.equal(0);
  return parseProbes(runs.map((r) => r.out).join(''));
}

/** A host UDP socket that talks to a clone's echo listener, then notes everything it receives. */
class UdpPeer {
  readonly received: string[] = [];
  private constructor(
    private readonly socket: UdpSocket,
    readonly port: number,
  ) {
    socket.on('message', (m) => this.received.push(m.toString()));
  }

  static async open(): Promise<UdpPeer> {
    const socket = createSocket('udp4');
    await new Promise<void>((r) => socket.bind(0, '0.0.0.0', () => r()));
    return new UdpPeer(socket, socket.address().port);
  }

  /** Sends to the clone until its echo comes back (the kernel then tracks the flow as established). */
  async exchange(address: string, port: number): Promise<void> {
    for (let i = 0; i < 100; i++) {
      this.socket.send('hello', port, address);
      await new Promise((r) => setTimeout(r, 100));
      if (this.received.includes('hello')) return;
    }
    throw new Error(`no echo from ${address}:${port}`);
  }

  close(): void {
    this.socket.close();
  }
}
