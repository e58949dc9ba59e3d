/**
 * The coordinator (src/hosts/coordinator.ts) and real `snowflock agent`s on the hosts of a
 * simulated cluster, started on each host through its namespaces (the srun and SSH ways in have
 * their own tests): one ticket network across this machine and the hosts, clones on the hosts
 * reaching each other and the gateway over VXLAN, processes driven through the agents, two
 * tickets on the same hosts kept apart (at L2, at L3, and against forged VXLAN traffic), and
 * nothing left anywhere afterwards.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { execa } from 'execa';
import { Engine } from '../../src/engine.js';
import { ClusterEngine, type SpanLayout } from '../../src/hosts/coordinator.js';
import { down, hostCommand, up, type SimClusterRecord } from '../../src/hosts/simulated.js';
import { commandStarter } from '../../src/hosts/starters.js';
import type { Clone } from '../../src/providers/clone.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import { assertNothingLeft, leftoversEverywhere, onHost, useHostsSettings } from '../helpers/hosts.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const { stateDir } = useHostsSettings();
const PATH = '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin';

// Run inside clones: "reach ADDR..." (a closed port's RST proves reachability, silence does not),
// "recv PORT" (one UDP datagram within 5 s), "vxlan DST VNI DSTMAC DSTIP PORT SRCIP" (a forged
// VXLAN frame carrying a UDP datagram for that clone, sent from wherever it runs).
const PROBE = `
import socket, struct, sys
cmd = sys.argv[1]
if cmd == 'reach':
    for a in sys.argv[2:]:
        s = socket.socket(); s.settimeout(2.0)
        try: s.connect((a, 9)); print(a, 'open')
        except ConnectionRefusedError: print(a, 'reachable')
        except OSError: print(a, 'unreachable')
elif cmd == 'recv':
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', int(sys.argv[2]))); s.settimeout(5.0)
    print('ready', flush=True)
    try: print('got', s.recv(100).decode())
    except socket.timeout: print('nothing')
elif cmd == 'vxlan':
    dst, vni, mac, ip, port, srcip = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]), sys.argv[7]
    def csum(b):
        if len(b) % 2: b += b'\\0'
        s = sum(struct.unpack('!%dH' % (len(b) // 2), b)); s = (s >> 16) + (s & 0xffff); s += s >> 16
        return ~s & 0xffff
    payload = b'forged'
    src = socket.inet_aton(srcip); d = socket.inet_aton(ip)
    udp = struct.pack('!HHHH', 40000, port, 8 + len(payload), 0) + payload
    iph = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, src, d)
    iph = iph[:10] + struct.pack('!H', csum(iph)) + iph[12:]
    eth = bytes.fromhex(mac.replace(':', '')) + bytes.fromhex('02aabbccddee') + b'\\x08\\x00'
    vx = struct.pack('!II', 0x08000000, vni << 8)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(vx + eth + iph + udp, (dst, 4789)); print('sent')
`;

describe('hosts: a ticket across simulated hosts, driven through their agents', function () {
  this.timeout(300_000);
  let rec: SimClusterRecord;
  let probe: string;
  let probeDir: string | undefined;
  const engines: ClusterEngine[] = [];

  before(async function () {
    execFileSync('make', ['-s', '-C', join(root, 'native')], { stdio: 'inherit' });
    rec = await up({ hosts: 3, name: `ha${process.pid % 100000}` });
    // Not under /tmp: every host and every clone has a /tmp of its own.
    probeDir = mkdtempSync('/var/tmp/sfho-probe-');
    probe = join(probeDir, 'probe.py');
    writeFileSync(probe, PROBE);
  });

  after(async function () {
    if (rec) await down(rec.name);
    if (probeDir) rmSync(probeDir, { recursive: true, force: true });
  });

  /** This machine (no clones) and the given hosts, with the clones spread over the hosts in order. */
  function cluster(hosts: number[], clones: number): ClusterEngine {
    const layout: SpanLayout = {
      hosts: [{ name: 'launcher', local: true }, ...hosts.map((i) => ({ name: rec.hosts[i]!.name, local: false }))],
      cloneHosts: Array.from({ length: clones }, (_, c) => 1 + (c % hosts.length)),
    };
    const starter = commandStarter('the simulated hosts', (h, argv) => hostCommand(rec.hosts.find((x) => x.name === h)!, argv, { cwd: root }), async () => rec.gateway);
    const ce = new ClusterEngine(new Engine(), layout, starter, { beatMs: 500, deadMs: 4000, startTimeoutMs: 120_000 });
    engines.push(ce);
    return ce;
  }

  async function provision(ce: ClusterEngine, n: number): Promise<{ ticket: Ticket; clones: Clone[] }> {
    const ticket = await ce.requestTicket(n, { provider: 'netns' });
    const cp = await ce.checkpoint(ticket, {});
    return { ticket, clones: await ce.createClones(ticket, cp) };
  }

  async function run(c: Clone, argv: string[], input?: string): Promise<{ code: number | null; out: string; err: string }> {
    const p = c.spawn(argv, { env: { PATH }, cwd: '/', stdin: input === undefined ? 'ignore' : 'pipe' });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    if (input !== undefined) p.stdin!.end(input);
    const st = await p.exited;
    return { code: st.code, out, err };
  }

  it('clones on different hosts share one L2 network with the launcher, at an MTU 50 below the underlay; processes go through the agents', async function () {
    const ce = cluster([0, 1], 4);
    const { ticket, clones } = await provision(ce, 4);
    try {
      expect(clones.map((c) => c.id)).to.deep.equal([0, 1, 2, 3]);
      expect(ticket.network.mtu).to.equal(1450);
      const reach = await run(clones[0]!, ['python3', probe, 'reach', clones[1]!.address, clones[2]!.address, clones[3]!.address, ticket.network.gateway]);
      expect(reach.out.trim().split('\n'), reach.err).to.deep.equal([`${clones[1]!.address} reachable`, `${clones[2]!.address} reachable`, `${clones[3]!.address} reachable`, `${ticket.network.gateway} reachable`]);
      // Clone 1 is on host 1, clone 0 on host 0: the neighbour's MAC is the remote clone's own (one segment, not routed).
      const neigh = await run(clones[0]!, ['ip', 'neigh', 'show', clones[1]!.address]);
      expect(neigh.out).to.include(clones[1]!.mac);
      const mtu = await run(clones[1]!, ['cat', '/sys/class/net/eth0/mtu']);
      expect(mtu.out.trim()).to.equal('1450');
      // Stdin in, stdout and stderr out, the exit status back, through the agent.
      const echo = await run(clones[3]!, ['sh', '-c', 'read x; echo "out $x $(hostname)"; echo err >&2; exit 3'], 'hello\n');
      expect(echo).to.deep.equal({ code: 3, out: `out hello ${clones[3]!.hostname}\n`, err: 'err\n' });
      // A signal reaches the process on its host.
      const p = clones[2]!.spawn(['sleep', '30'], { env: { PATH }, cwd: '/', stdin: 'ignore' });
      setTimeout(() => p.kill('SIGTERM'), 300);
      expect(await p.exited).to.deep.equal({ code: null, signal: 'SIGTERM' });
      // While it lives, the leak check sees the ticket on every host (so that it can fail).
      const live = await leftoversEverywhere(rec, [ticket.id], stateDir);
      for (const where of [`link ${ticket.network.bridge}`, ...rec.hosts.slice(0, 2).flatMap((h) => [`${h.name}: link ${ticket.network.bridge}`, `${h.name}: table inet ${ticket.network.table}`, `${h.name}: state ${ticket.id}.json`, `${h.name}: netns ${clones[h === rec.hosts[0] ? 0 : 1]!.hostname}`])]) {
        expect(live.some((l) => l.startsWith(where)), where).to.equal(true);
      }
    } finally {
      await ce.kill(ticket);
    }
    await assertNothingLeft(rec, [ticket.id], stateDir);
  });

  it('two tickets on the same hosts cannot reach each other, and forged VXLAN traffic for a ticket is dropped unless it comes from its hosts', async function () {
    const a = cluster([0, 1], 2);
    const b = cluster([0, 1], 2);
    const [ta, tb] = await Promise.all([provision(a, 2), provision(b, 2)]);
    try {
      expect(ta.ticket.network.subnet).to.not.equal(tb.ticket.network.subnet);
      expect(ta.ticket.network.vxlan!.vni).to.not.equal(tb.ticket.network.vxlan!.vni);
      // Each ticket works in itself...
      expect((await run(ta.clones[0]!, ['python3', probe, 'reach', ta.clones[1]!.address])).out).to.match(/reachable/);
      expect((await run(tb.clones[1]!, ['python3', probe, 'reach', tb.clones[0]!.address])).out).to.match(/reachable/);
      // ...but not across: not to the other ticket's clones on the other host, nor on the same host, nor its host address.
      const across = await run(ta.clones[0]!, ['python3', probe, 'reach', tb.clones[1]!.address, tb.clones[0]!.address, tb.ticket.network.gateway]);
      expect(across.out.trim().split('\n')).to.deep.equal([`${tb.clones[1]!.address} unreachable`, `${tb.clones[0]!.address} unreachable`, `${tb.ticket.network.gateway} unreachable`]);

      // Forged VXLAN frames for ticket A's clone 0 (on host 0): from host 2, which is not one of
      // A's hosts, nothing arrives; the same from host 1, which is, does (so the probe can tell).
      const target = ta.clones[0]!;
      const forge = async (from: number) => {
        const { file, args } = hostCommand(rec.hosts[0]!, ['ip', 'netns', 'exec', target.hostname, 'python3', '-u', probe, 'recv', '9999']);
        const receiver = execa(file, args, { reject: false, timeout: 30_000 });
        await new Promise<void>((resolve) => receiver.stdout!.on('data', (d: Buffer) => String(d).includes('ready') && resolve()));
        const sent = await onHost(rec.hosts[from]!, ['python3', probe, 'vxlan', rec.hosts[0]!.address, String(ta.ticket.network.vxlan!.vni), target.mac, target.address, '9999', ta.clones[1]!.address]);
        expect(sent.stdout.trim(), sent.stderr).to.equal('sent');
        return (await receiver).stdout.trim().split('\n').pop();
      };
      expect(await forge(2)).to.equal('nothing');
      expect(await forge(1)).to.equal('got forged');
    } finally {
      await Promise.all([a.kill(ta.ticket), b.kill(tb.ticket)]);
    }
    await assertNothingLeft(rec, [ta.ticket.id, tb.ticket.id], stateDir);
  });

  it('snowflock agent without a job secret says so in one line and exits 2', async function () {
    const r = await execa(process.execPath, ['--import', join(root, 'node_modules/tsx/dist/esm/index.mjs'), join(root, 'launcher/bin/snowflock.ts'), 'agent', '--connect', '127.0.0.1:9'], { input: '', reject: false });
    expect(r.exitCode).to.equal(2);
    expect(r.stderr.trim()).to.equal('snowflock: standard input ended before the job secret: snowflock agent is started by sfmpirun, not by hand');
  });
});
