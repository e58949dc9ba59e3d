/**
 * A ticket's private network: a /24 claimed from the pool, a bridge holding the gateway address,
 * and the nftables table that isolates it. Each piece is recorded in the ledger before it exists.
 *
 * A ticket that spans hosts (src/hosts/) has the same on every host, joined into one L2 segment by
 * a VXLAN device on the bridge (src/hosts/vxlan.ts): its id and subnet are the coordinator's, the
 * bridge holds this host's own address on the subnet (the gateway .1 on the coordinator's host),
 * everything has the MTU the tunnel leaves, and the table also drops the ticket's VXLAN traffic
 * from anything but the ticket's other hosts.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { UsageError } from '../common/errors.js';
import { peerLines, tunnelLines, vniOf } from '../hosts/vxlan.js';
import type { Ledger } from '../ticket/ledger.js';
import { bridgeName, linkGroup, tableName, vxlanName } from '../ticket/names.js';
import { openExclusive } from '../ticket/record.js';
import type { Resource } from '../ticket/resources.js';
import { ClaimClash, type TicketSpan } from '../ticket/ticket.js';
import { createTable, spanScript } from './firewall.js';
import { hostPrefixes, isUsed } from './hostroutes.js';
import { ipBatch, nftScript } from './ip.js';
import { runCommand } from '../common/command.js';
import { addressAt, gatewayOf, SUBNET_PREFIX, subnets, type Pool } from './pool.js';

/** The private network of one ticket: one bridge, one subnet, isolated by its own nftables table. */
export interface TicketNetwork {
  /** e.g. 10.213.4.0/24 */
  subnet: string;
  prefixLength: number;
  /** The host side of the bridge: first address of the subnet. The launcher serves PMI here. */
  gateway: string;
  bridge: string;
  /** Name of the nftables table (family inet) that isolates this ticket. */
  table: string;
  /** A ticket spanning hosts: the MTU of its bridge, tunnel and clones. */
  mtu?: number;
  /** A ticket spanning hosts: the VXLAN device that joins its bridge to the other hosts'. */
  vxlan?: { name: string; vni: number; local: string; dev: string; peers: string[] };
}

/**
 * Claims the first free /24 of the pool: not routed or addressed on the host, and not claimed by
 * another ticket. A claim is a file named after the subnet, created with O_EXCL, holding the ticket id.
 */
export async function claimSubnet(pool: Pool, claimsDir: string, ledger: Ledger, span?: TicketSpan): Promise<TicketNetwork> {
  const used = await hostPrefixes();
  const id = ledger.ticket.id;
  const avoid = span?.avoid ?? [];
  for (const subnet of span?.subnet ? [span.subnet] : subnets(pool)) {
    if (avoid.includes(subnet)) continue;
    if (isUsed(subnet, used)) {
      if (span?.subnet) throw new ClaimClash(`subnet ${subnet} is routed on this host`, await usedSubnets(pool, claimsDir));
      continue;
    }
    const claim: Resource = { kind: 'file', path: join(claimsDir, subnet.split('/')[0]!) };
    await ledger.add(claim);
    try {
      const fh = await openExclusive(claim.path);
      await fh.writeFile(id + '\n');
      await fh.close();
    } catch (e) {
      await ledger.forget(claim);
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      if (span?.subnet) throw new ClaimClash(`subnet ${subnet} is another ticket's on this host`, await usedSubnets(pool, claimsDir));
      continue;
    }
    const net: TicketNetwork = {
      subnet,
      prefixLength: SUBNET_PREFIX,
      gateway: span ? addressAt(subnet, span.hostOffset) : gatewayOf(subnet),
      bridge: bridgeName(id),
      table: tableName(id),
    };
    if (span) {
      net.mtu = span.mtu;
      net.vxlan = { name: vxlanName(id), vni: vniOf(id), local: span.overlay.local, dev: span.overlay.dev, peers: span.overlay.peers };
    }
    return net;
  }
  if (span) throw new ClaimClash(`no subnet of ${pool.cidr} is free on this host and the ticket's others`, await usedSubnets(pool, claimsDir));
  throw new UsageError(
    `no free subnet left in the address pool ${pool.cidr}; end other tickets (snowflock ps, snowflock down, snowflock cleanup) or give a larger pool (SNOWFLOCK_POOL)`,
  );
}

/** The pool's subnets this host routes or has claimed (a spanning ticket's coordinator avoids them). */
export async function usedSubnets(pool: Pool, claimsDir: string): Promise<string[]> {
  const used = await hostPrefixes();
  return [...subnets(pool)].filter((s) => isUsed(s, used) || existsSync(join(claimsDir, s.split('/')[0]!)));
}

/** Creates the bridge with the gateway address, and the isolation table. */
export async function createNetwork(net: TicketNetwork, ledger: Ledger): Promise<void> {
  if (net.vxlan) return createSpanNetwork(net, net.vxlan, ledger);
  const group = linkGroup(ledger.ticket.id);
  await ledger.add({ kind: 'link', name: net.bridge, group }, { kind: 'nft-table', family: 'inet', name: net.table });
  // Both at once: the rules name the bridge by name, so it need not exist yet. Until both are done,
  // no clone is attached, so there is no moment of missing isolation.
  await Promise.all([
    // Multicast snooping off: multicast between clones then works without a querier.
    ipBatch([
      `link add ${net.bridge} group ${group} type bridge mcast_snooping 0`,
      `addr add ${net.gateway}/${net.prefixLength} dev ${net.bridge}`,
      `link set ${net.bridge} up`,
    ]),
    createTable(net),
  ]);
}

/**
 * This host's part of a spanning ticket's network: bridge and table as for any ticket (the table
 * with the tunnel's rule), then the VXLAN device on the bridge and one FDB entry per other host.
 * The VNI is the ticket id, unique on every host of the job (the kernel refuses a second device
 * with the same VNI and port on a host: a clash, and the coordinator picks another id).
 */
async function createSpanNetwork(net: TicketNetwork, vx: NonNullable<TicketNetwork['vxlan']>, ledger: Ledger): Promise<void> {
  const mtu = net.mtu!;
  const group = linkGroup(ledger.ticket.id);
  await ledger.add({ kind: 'link', name: net.bridge, group }, { kind: 'nft-table', family: 'inet', name: net.table });
  await Promise.all([
    ipBatch([
      `link add ${net.bridge} group ${group} mtu ${mtu} type bridge mcast_snooping 0`,
      `addr add ${net.gateway}/${net.prefixLength} dev ${net.bridge}`,
      `link set ${net.bridge} up`,
    ]),
    (async () => {
      await createTable(net);
      await nftScript(spanScript(net, vx));
    })(),
  ]);
  await ledger.add({ kind: 'link', name: vx.name, group });
  const overlay = { bridge: net.bridge, vxlan: vx.name, vni: vx.vni, mtu, local: vx.local, underlayDev: vx.dev };
  try {
    await ipBatch([...tunnelLines(overlay), `link set ${vx.name} group ${group}`]);
  } catch (e) {
    if (/File exists|already exists/.test(String(e))) {
      throw new ClaimClash(`VNI ${vx.vni} (ticket ${ledger.ticket.id}) is in use on this host`, []);
    }
    throw e;
  }
  if (vx.peers.length > 0) {
    const r = await runCommand('bridge', ['-batch', '-'], { input: peerLines(overlay, vx.peers).join('\n') + '\n', reject: false, detached: true });
    if (r.exitCode !== 0) throw new Error(`bridge fdb for ${vx.name}: ${r.stderr.trim()}`);
  }
}
