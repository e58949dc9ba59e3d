/**
 * One ticket's private L2 network across hosts: on every host of the ticket a bridge (the clones'
 * veths are its ports) and a VXLAN device on it that tunnels the bridge's frames to the ticket's
 * other hosts over the underlay (UDP 4789).
 *
 * Discovery is static unicast: every host knows every other host's underlay address (from the
 * Slurm allocation or --hosts), so the VXLAN device gets one all-zeros FDB entry per peer and the
 * kernel replicates broadcast and unknown frames to each (head-end replication), then learns which
 * clone MAC lives behind which peer. No multicast on the underlay is needed, which HPC fabrics and
 * clouds often do not route, and a host is added or removed by one FDB entry.
 *
 * The VNI is the ticket id (24 random bits), so that two tickets on the same hosts can never share
 * a segment: the kernel refuses a second device with the same VNI on one host (EEXIST), which
 * tells a launcher to pick another id.
 */
import { runCommand } from '../common/command.js';

/** Outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8 bytes: clones' MTU is this much below the underlay's. */
export const VXLAN_OVERHEAD = 50;
/** IANA's VXLAN port. */
export const VXLAN_PORT = 4789;
const MAX_VNI = 0xffffff;

/** The VNI of a ticket: its id when that is 1-6 hex digits (as engine ids are), else a 24-bit hash. */
export function vniOf(ticketId: string): number {
  if (/^[0-9a-f]{1,6}$/.test(ticketId)) {
    const v = parseInt(ticketId, 16);
    // VNI 0 is legal but reads as "unset" in too many tools: id 000000 takes the top VNI instead.
    return v === 0 ? MAX_VNI : v;
  }
  // FNV-1a, folded to 24 bits.
  let h = 0x811c9dc5;
  for (const ch of Buffer.from(ticketId, 'utf8')) {
    h ^= ch;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  const v = ((h >>> 24) ^ h) & MAX_VNI;
  return v === 0 ? MAX_VNI : v;
}

export interface OverlaySpec {
  ticketId: string;
  /** This host's underlay address (the VXLAN source). */
  local: string;
  /** The ticket's other hosts' underlay addresses. */
  peers: string[];
  /** The underlay device on this host. */
  underlayDev: string;
  underlayMtu: number;
  /** Link names on this host (at most 15 characters each). */
  bridge: string;
  vxlan: string;
}

export interface Overlay extends OverlaySpec {
  vni: number;
  /** MTU of the bridge, the VXLAN device and every clone's veth. */
  mtu: number;
}

export function overlay(spec: OverlaySpec): Overlay {
  for (const name of [spec.bridge, spec.vxlan]) {
    if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) throw new Error(`link name ${JSON.stringify(name)}: 1-15 letters, digits, '_', '.' or '-'`);
  }
  if (spec.peers.includes(spec.local)) throw new Error(`the peers of ${spec.local} include itself`);
  const mtu = spec.underlayMtu - VXLAN_OVERHEAD;
  if (mtu < 576) throw new Error(`underlay MTU ${spec.underlayMtu} leaves ${mtu} for clones; IPv4 needs 576`);
  return { ...spec, vni: vniOf(spec.ticketId), mtu };
}

/** `ip -batch` lines that create this host's part of the ticket network (bridge first, then the tunnel on it). */
export function createLines(o: Overlay): string[] {
  return [`link add ${o.bridge} mtu ${o.mtu} type bridge`, ...tunnelLines(o), `link set ${o.bridge} up`];
}

/** `ip -batch` lines that put the tunnel on an existing bridge (the engine makes its bridges itself). */
export function tunnelLines(o: Pick<Overlay, 'bridge' | 'vxlan' | 'mtu' | 'vni' | 'local' | 'underlayDev'>): string[] {
  return [
    // learning stays on: replies teach each host which peer holds which clone MAC, so that only
    // broadcasts are replicated. dstport given: the kernel's default is the pre-IANA 8472.
    `link add ${o.vxlan} mtu ${o.mtu} type vxlan id ${o.vni} local ${o.local} dev ${o.underlayDev} dstport ${VXLAN_PORT}`,
    `link set ${o.vxlan} master ${o.bridge}`,
    `link set ${o.vxlan} up`,
  ];
}

/** `bridge -batch` lines: head-end replication of broadcast and unknown frames to each peer. */
export function peerLines(o: Pick<Overlay, 'vxlan'>, peers: string[], op: 'append' | 'del' = 'append'): string[] {
  return peers.map((p) => `fdb ${op} 00:00:00:00:00:00 dev ${o.vxlan} dst ${p}`);
}

/** `ip -batch` lines that remove this host's part (the tunnel goes with its FDB). */
export function removeLines(o: Pick<Overlay, 'bridge' | 'vxlan'>): string[] {
  return [`link del ${o.vxlan}`, `link del ${o.bridge}`];
}

/**
 * Runs a tool (ip or bridge) with lines on stdin where this host's network is: directly on a real
 * host, or inside a simulated host (see simulated.ts hostCommand).
 */
export type BatchRunner = (tool: 'ip' | 'bridge', args: string[], input: string) => Promise<void>;

export const runHere: BatchRunner = async (tool, args, input) => {
  const r = await runCommand(tool, args, { input, reject: false });
  if (r.exitCode !== 0) throw new Error(`${tool} ${args.join(' ')}: ${r.stderr.trim().split('\n').slice(0, 3).join('; ') || `exit ${r.exitCode}`}`);
};

/** Creates this host's part of the ticket network; on failure removes what it made and rethrows. */
export async function createOverlay(o: Overlay, run: BatchRunner = runHere): Promise<void> {
  try {
    await run('ip', ['-batch', '-'], createLines(o).join('\n') + '\n');
    if (o.peers.length > 0) await run('bridge', ['-batch', '-'], peerLines(o, o.peers).join('\n') + '\n');
  } catch (e) {
    await removeOverlay(o, run).catch(() => {});
    if (/already exists|File exists/.test(String(e))) throw new Error(`VNI ${o.vni} (ticket ${o.ticketId}) or its links already exist on ${o.local}: ${(e as Error).message}`);
    throw e;
  }
}

/** Removes this host's part; what is already gone is no error. */
export async function removeOverlay(o: Pick<Overlay, 'bridge' | 'vxlan'>, run: BatchRunner = runHere): Promise<void> {
  await run('ip', ['-force', '-batch', '-'], removeLines(o).join('\n') + '\n').catch((e: unknown) => {
    if (!/Cannot find device/.test(String(e))) throw e;
  });
}
