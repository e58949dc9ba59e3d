/**
 * One ticket network across hosts (src/hosts/vxlan.ts) on a real simulated cluster: a bridge and a
 * VXLAN device per ticket on each of 3 hosts, a namespace clone per host and ticket, and real
 * frames between them.
 */
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { execa } from 'execa';
import { down, hostCommand, up, type SimClusterRecord, type SimHostRecord } from '../../src/hosts/simulated.js';
import { createOverlay, overlay, peerLines, removeOverlay, vniOf, VXLAN_OVERHEAD, type BatchRunner, type Overlay } from '../../src/hosts/vxlan.js';
import { removeEmptyTree } from '../helpers/leaks.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
if (process.env.SNOWFLOCK_STATE_DIR === undefined) {
  // This run's own: gone at exit when nothing is left in it (what is left is a leak to look at).
  const dir = (process.env.SNOWFLOCK_STATE_DIR = join(tmpdir(), `sfsc-test-${process.pid}`));
  process.once('exit', () => removeEmptyTree(dir));
}

describe('vxlan: ticket ids to VNIs', function () {
  it('takes an engine ticket id (6 hex digits) as it is, and never gives VNI 0', function () {
    expect(vniOf('c102de')).to.equal(0xc102de);
    expect(vniOf('000001')).to.equal(1);
    expect(vniOf('000000')).to.equal(0xffffff);
  });

  it('hashes any other id into 24 bits, stably', function () {
    const v = vniOf('job-42');
    expect(v).to.be.within(1, 0xffffff);
    expect(vniOf('job-42')).to.equal(v);
    expect(vniOf('job-43')).to.not.equal(v);
  });

  it('sets the MTU 50 below the underlay and refuses bad names', function () {
    const o = overlay({ ticketId: 'abc', local: '10.0.0.1', peers: ['10.0.0.2'], underlayDev: 'eth0', underlayMtu: 9000, bridge: 'b', vxlan: 'v' });
    expect(o.mtu).to.equal(9000 - VXLAN_OVERHEAD);
    expect(peerLines(o, o.peers)).to.deep.equal(['fdb append 00:00:00:00:00:00 dev v dst 10.0.0.2']);
    expect(() => overlay({ ...o, bridge: 'a-name-far-too-long' })).to.throw(/link name/);
    expect(() => overlay({ ...o, peers: ['10.0.0.1'] })).to.throw(/itself/);
  });
});

/** Runs on a simulated host, in a named netns of that host when given. */
function onHost(h: SimHostRecord, argv: string[], netns?: string) {
  const { file, args } = hostCommand(h, netns ? ['ip', 'netns', 'exec', netns, ...argv] : argv);
  return execa(file, args, { reject: false, timeout: 30_000 });
}

/** IP fragments a host has made so far (Ip: FragCreates of its network namespace). */
async function fragCreates(h: SimHostRecord): Promise<number> {
  const lines = (await onHost(h, ['cat', '/proc/net/snmp'])).stdout.split('\n').filter((l) => l.startsWith('Ip:'));
  const [names, values] = lines.map((l) => l.split(/\s+/));
  return Number(values![names!.indexOf('FragCreates')]);
}

function runnerOn(h: SimHostRecord): BatchRunner {
  return async (tool, args, input) => {
    const { file, args: a } = hostCommand(h, [tool, ...args]);
    const r = await execa(file, a, { input, reject: false });
    if (r.exitCode !== 0) throw new Error(`${tool} ${args.join(' ')} on ${h.name}: ${r.stderr.trim()}`);
  };
}

// A probe run inside clones: "reach ADDR" connects to a closed TCP port (a RST proves L2 and L3
// reachability without a server; silence means the frames go nowhere); "udp-send"/"udp-recv"
// send one datagram with Don't Fragment set and report what arrived.
const PROBE = `
import errno, socket, sys
cmd = sys.argv[1]
if cmd == 'reach':
    s = socket.socket(); s.settimeout(2.0)
    try:
        s.connect((sys.argv[2], 9)); print('connected')
    except ConnectionRefusedError: print('reachable')
    except (socket.timeout, OSError) as e: print('unreachable', getattr(e, 'errno', ''))
elif cmd == 'udp-recv':
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('0.0.0.0', 9999)); s.settimeout(10.0)
    print('ready', flush=True)
    try: print('got', len(s.recv(65536)))
    except socket.timeout: print('nothing')
elif cmd == 'udp-send':
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO
    s.connect((sys.argv[2], 9999))
    try: s.send(b'x' * int(sys.argv[3])); print('sent')
    except OSError as e: print('refused', errno.errorcode.get(e.errno))
`;

describe('vxlan: one ticket network across simulated hosts', function () {
  this.timeout(180_000);
  let rec: SimClusterRecord;
  let probe: string;
  // Two tickets on the same three hosts, with clones in the same IP subnet: only L2 keeps them apart.
  const tickets = [
    { id: 'a1b2c3', bridge: 'sfscbr1', vxlan: 'sfscvx1', clone: 'sfscc1', address: (i: number) => `10.99.0.${10 + i}` },
    { id: 'a1b2c4', bridge: 'sfscbr2', vxlan: 'sfscvx2', clone: 'sfscc2', address: (i: number) => `10.99.0.${20 + i}` },
  ];
  const overlays: Overlay[][] = [];

  before(async function () {
    execFileSync('make', ['-s', '-C', join(root, 'native')], { stdio: 'inherit' });
    rec = await up({ hosts: 3, name: `tv${process.pid % 100000}` });
    probe = join(rec.dir, 'probe.py');
    writeFileSync(probe, PROBE);
    for (const t of tickets) {
      const perHost = rec.hosts.map((h) =>
        overlay({
          ticketId: t.id,
          local: h.address,
          peers: rec.hosts.filter((o) => o !== h).map((o) => o.address),
          underlayDev: 'eth0',
          underlayMtu: 1500,
          bridge: t.bridge,
          vxlan: t.vxlan,
        }),
      );
      overlays.push(perHost);
      await Promise.all(
        rec.hosts.map(async (h, i) => {
          const o = perHost[i]!;
          await createOverlay(o, runnerOn(h));
          // The clone: a network namespace of the host with a veth into the ticket's bridge.
          await runnerOn(h)(
            'ip',
            ['-batch', '-'],
            [
              `netns add ${t.clone}`,
              `link add ${t.clone}-h mtu ${o.mtu} type veth peer name eth0 mtu ${o.mtu} netns ${t.clone}`,
              `link set ${t.clone}-h master ${o.bridge} up`,
            ].join('\n') + '\n',
          );
          await runnerOn(h)('ip', ['-n', t.clone, '-batch', '-'], [`link set lo up`, `addr add ${t.address(i)}/24 dev eth0`, `link set eth0 up`].join('\n') + '\n');
        }),
      );
    }
  });

  after(async function () {
    if (rec) await down(rec.name);
  });

  const reach = async (host: number, ticket: number, address: string) =>
    (await onHost(rec.hosts[host]!, ['python3', probe, 'reach', address], tickets[ticket]!.clone)).stdout.trim();

  it('clones of one ticket on different hosts reach each other at L2', async function () {
    const t = tickets[0]!;
    for (const [from, to] of [[0, 1], [0, 2], [2, 1]] as const) {
      expect(await reach(from, 0, t.address(to)), `${from} -> ${to}`).to.equal('reachable');
    }
    // Same segment, not routed: the neighbour's MAC is the remote clone's own.
    const mac = (await onHost(rec.hosts[1]!, ['cat', '/sys/class/net/eth0/address'], t.clone)).stdout.trim();
    const neigh = (await onHost(rec.hosts[0]!, ['ip', 'neigh', 'show', t.address(1)], t.clone)).stdout;
    expect(neigh).to.include(mac);
    // And host 0 learned that MAC behind host 1's underlay address.
    const fdb = (await onHost(rec.hosts[0]!, ['bridge', 'fdb', 'show', 'dev', t.vxlan])).stdout;
    expect(fdb).to.match(new RegExp(`${mac} dst ${rec.hosts[1]!.address.replace(/\./g, '\\.')}`));
  });

  it('clones get an MTU 50 below the underlay, and full-size frames cross hosts unfragmented', async function () {
    const t = tickets[0]!;
    const mtu = Number((await onHost(rec.hosts[0]!, ['cat', '/sys/class/net/eth0/mtu'], t.clone)).stdout);
    const underlay = Number((await onHost(rec.hosts[0]!, ['cat', '/sys/class/net/eth0/mtu'])).stdout);
    expect(mtu).to.equal(underlay - 50);
    const payload = mtu - 28; // IPv4 20 + UDP 8
    const { file, args } = hostCommand(rec.hosts[1]!, ['ip', 'netns', 'exec', t.clone, 'python3', '-u', probe, 'udp-recv']);
    const receiver = execa(file, args, { reject: false, timeout: 30_000 });
    await new Promise<void>((resolve) => receiver.stdout!.on('data', (d: Buffer) => String(d).includes('ready') && resolve()));
    expect((await onHost(rec.hosts[0]!, ['python3', probe, 'udp-send', t.address(1), String(payload + 1)], t.clone)).stdout.trim()).to.equal('refused EMSGSIZE');
    const fragmentsBefore = await fragCreates(rec.hosts[0]!);
    expect((await onHost(rec.hosts[0]!, ['python3', probe, 'udp-send', t.address(1), String(payload)], t.clone)).stdout.trim()).to.equal('sent');
    expect((await receiver).stdout.trim().split('\n')).to.deep.equal(['ready', `got ${payload}`]);
    // The tunnelled packet fit the underlay whole: host 0 made no IP fragments for it.
    expect(await fragCreates(rec.hosts[0]!)).to.equal(fragmentsBefore);
  });

  it('a second ticket on the same hosts (another VNI, another bridge) cannot reach the first', async function () {
    const [a, b] = tickets;
    expect(overlays[0]![0]!.vni).to.not.equal(overlays[1]![0]!.vni);
    // The second ticket works in itself...
    expect(await reach(0, 1, b!.address(1))).to.equal('reachable');
    // ...but not across: neither way, neither on another host nor on the same one.
    expect(await reach(0, 1, a!.address(1))).to.match(/^unreachable/);
    expect(await reach(1, 0, b!.address(2))).to.match(/^unreachable/);
    expect(await reach(0, 0, b!.address(0))).to.match(/^unreachable/);
  });

  it('a second device with a VNI in use on a host is refused, naming the VNI', async function () {
    const o = overlays[0]![0]!;
    let err: unknown;
    await createOverlay({ ...o, bridge: 'sfscbr9', vxlan: 'sfscvx9' }, runnerOn(rec.hosts[0]!)).catch((e: unknown) => (err = e));
    expect(String(err)).to.match(new RegExp(`VNI ${o.vni}`));
    const links = (await onHost(rec.hosts[0]!, ['ip', '-o', 'link', 'show'])).stdout;
    expect(links).to.not.match(/sfscbr9|sfscvx9/);
  });

  it('removing a ticket network leaves its links on no host and keeps the other ticket working', async function () {
    await Promise.all(rec.hosts.map((h, i) => removeOverlay(overlays[0]![i]!, runnerOn(h))));
    for (const h of rec.hosts) {
      const links = (await onHost(h, ['ip', '-o', 'link', 'show'])).stdout;
      expect(links).to.not.match(/sfscbr1|sfscvx1/);
    }
    expect(await reach(2, 1, tickets[1]!.address(0))).to.equal('reachable');
  });
});
