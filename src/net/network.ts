/**
 * A ticket's private network: a /24 claimed from the pool, a bridge holding the gateway address,
 * and the nftables table that isolates it. Each piece is recorded in the ledger before it exists.
 */
import { openExclusive } from '../state/record.js';
import { join } from 'node:path';
import { UserError } from '../errors.js';
import type { Ledger } from '../state/ledger.js';
import type { Resource, TicketNetwork } from '../types.js';
import { createTable } from './firewall.js';
import { hostPrefixes, isUsed } from './hostroutes.js';
import { ipBatch } from './ip.js';
import { bridgeName, tableName } from './names.js';
import { gatewayOf, SUBNET_PREFIX, subnets, type Pool } from './pool.js';

/**
 * Claims the first free /24 of the pool: not routed or addressed on the host, and not claimed by
 * another ticket. A claim is a file named after the subnet, created with O_EXCL, holding the ticket id.
 */
export async function claimSubnet(pool: Pool, claimsDir: string, ledger: Ledger): Promise<TicketNetwork> {
  const used = await hostPrefixes();
  const id = ledger.ticket.id;
  for (const subnet of subnets(pool)) {
    if (isUsed(subnet, used)) continue;
    const claim: Resource = { kind: 'file', path: join(claimsDir, subnet.split('/')[0]!) };
    await ledger.add(claim);
    try {
      const fh = await openExclusive(claim.path);
      await fh.writeFile(id + '\n');
      await fh.close();
    } catch (e) {
      await ledger.forget(claim);
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') continue;
      throw e;
    }
    return {
      subnet,
      prefixLength: SUBNET_PREFIX,
      gateway: gatewayOf(subnet),
      bridge: bridgeName(id),
      table: tableName(id),
    };
  }
  throw new UserError(
    `no free subnet left in the address pool ${pool.cidr}; end other tickets (snowflock ps, snowflock down, snowflock cleanup) or give a larger pool (SNOWFLOCK_POOL)`,
  );
}

/** Creates the bridge with the gateway address, and the isolation table. */
export async function createNetwork(net: TicketNetwork, ledger: Ledger): Promise<void> {
  await ledger.add({ kind: 'link', name: net.bridge }, { kind: 'nft-table', family: 'inet', name: net.table });
  // Both at once: the rules name the bridge by name, so it need not exist yet. Until both are done,
  // no clone is attached, so there is no moment of missing isolation.
  await Promise.all([
    // Multicast snooping off: multicast between clones then works without a querier.
    ipBatch([
      `link add ${net.bridge} type bridge mcast_snooping 0`,
      `addr add ${net.gateway}/${net.prefixLength} dev ${net.bridge}`,
      `link set ${net.bridge} up`,
    ]),
    createTable(net),
  ]);
}
