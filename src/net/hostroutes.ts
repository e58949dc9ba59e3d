/**
 * What the host already uses: subnets of its routes and addresses, which the pool must skip.
 */
import { ipJson } from './ip.js';
import { overlaps } from './pool.js';

interface RouteEntry {
  dst: string;
}
interface AddrEntry {
  addr_info?: Array<{ family: string; local: string; prefixlen: number }>;
}

/** IPv4 prefixes routed or addressed on the host (the default route excluded). */
export async function hostPrefixes(): Promise<string[]> {
  const [routes, addrs] = await Promise.all([
    ipJson<RouteEntry[]>(['-4', 'route', 'show', 'table', 'all']),
    ipJson<AddrEntry[]>(['-4', 'addr', 'show']),
  ]);
  const out = new Set<string>();
  for (const r of routes) {
    if (!r.dst || r.dst === 'default' || !/^\d/.test(r.dst)) continue;
    out.add(r.dst.includes('/') ? r.dst : `${r.dst}/32`);
  }
  for (const a of addrs) for (const i of a.addr_info ?? []) if (i.family === 'inet') out.add(`${i.local}/${i.prefixlen}`);
  // Loopback and local routes (127/8, broadcast entries) never collide with a private pool anyway.
  return [...out];
}

export function isUsed(subnet: string, used: string[]): boolean {
  return used.some((u) => overlaps(subnet, u));
}
