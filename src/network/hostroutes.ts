/**
 * What the host already uses: subnets of its routes and addresses, which the pool must skip.
 * Read from the kernel's files rather than `ip`, because a process start costs tens of ms on a busy
 * host and this is on every ticket's path.
 */
import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { overlaps } from './pool.js';

/** IPv4 prefixes routed (main table, default route excluded) or addressed on the host. */
export async function hostPrefixes(): Promise<string[]> {
  const out = new Set<string>();
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && a.cidr) out.add(a.cidr);
  }
  for (const r of routes()) out.add(r);
  return [...out];
}

/** /proc/net/route: destination and mask in host (little-endian) hex. */
function routes(): string[] {
  let text: string;
  try {
    text = readFileSync('/proc/net/route', 'utf8');
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const dest = hexToAddress(f[1]!);
    const bits = maskBits(f[7]!);
    if (bits > 0) out.push(`${dest}/${bits}`);
  }
  return out;
}

/** An IPv4 address as /proc/net/route and /proc/net/tcp write it: 8 hex digits, little-endian. */
export function hexToAddress(hex: string): string {
  const n = parseInt(hex, 16);
  return [0, 8, 16, 24].map((s) => (n >>> s) & 255).join('.');
}

function maskBits(hex: string): number {
  let n = parseInt(hex, 16) >>> 0;
  let bits = 0;
  while (n) {
    bits += n & 1;
    n >>>= 1;
  }
  return bits;
}

export function isUsed(subnet: string, used: string[]): boolean {
  return used.some((u) => overlaps(subnet, u));
}
