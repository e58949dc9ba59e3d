/**
 * The address pool: a private IPv4 range split into /24 subnets, one per ticket. In a subnet the
 * host (bridge) takes .1, and clone i takes .(10 + i).
 */
import ipaddr from 'ipaddr.js';
import { CLONE_OFFSET, MAX_CLONES_PER_SUBNET } from '../common/config.js';
import { UsageError } from '../common/errors.js';

export const SUBNET_PREFIX = 24;

export interface Pool {
  cidr: string;
  base: number;
  prefix: number;
}

const PRIVATE: Array<[string, number]> = [
  ['10.0.0.0', 8],
  ['172.16.0.0', 12],
  ['192.168.0.0', 16],
];

export function parsePool(cidr: string): Pool {
  const bad = (why: string) =>
    new UsageError(`address pool ${JSON.stringify(cidr)} ${why}; give a private IPv4 range such as 10.213.0.0/16 (SNOWFLOCK_POOL)`);
  let addr: ipaddr.IPv4;
  let prefix: number;
  try {
    [addr, prefix] = ipaddr.IPv4.parseCIDR(cidr);
  } catch {
    throw bad('is not an IPv4 range in CIDR form');
  }
  if (prefix > SUBNET_PREFIX) throw bad(`is smaller than one /${SUBNET_PREFIX}`);
  if (!PRIVATE.some(([net, bits]) => prefix >= bits && addr.match(ipaddr.IPv4.parse(net), bits))) {
    throw bad('is not inside a private range (10/8, 172.16/12, 192.168/16)');
  }
  const base = toInt(addr) & mask(prefix);
  return { cidr: `${fromInt(base)}/${prefix}`, base, prefix };
}

/** The pool's /24s in order. */
export function* subnets(pool: Pool): Generator<string> {
  const count = 2 ** (SUBNET_PREFIX - pool.prefix);
  for (let i = 0; i < count; i++) yield `${fromInt(pool.base + i * 256)}/${SUBNET_PREFIX}`;
}

export function gatewayOf(subnet: string): string {
  return fromInt(networkOf(subnet) + 1);
}

/** The address at `offset` from the subnet's base (1: the gateway). */
export function addressAt(subnet: string, offset: number): string {
  if (!Number.isInteger(offset) || offset < 1 || offset > 254) throw new RangeError(`offset ${offset} does not fit a /24`);
  return fromInt(networkOf(subnet) + offset);
}

export function cloneAddress(subnet: string, clone: number): string {
  if (!Number.isInteger(clone) || clone < 0 || clone >= MAX_CLONES_PER_SUBNET) {
    throw new RangeError(`clone number ${clone} does not fit a /24`);
  }
  return fromInt(networkOf(subnet) + CLONE_OFFSET + clone);
}

/** Whether two CIDR ranges share any address. */
export function overlaps(a: string, b: string): boolean {
  const [an, ap] = splitCidr(a);
  const [bn, bp] = splitCidr(b);
  const bits = Math.min(ap, bp);
  return ((an ^ bn) & mask(bits)) === 0;
}

function networkOf(subnet: string): number {
  const [n, p] = splitCidr(subnet);
  return n & mask(p);
}

function splitCidr(cidr: string): [number, number] {
  const [a, p] = ipaddr.IPv4.parseCIDR(cidr);
  return [toInt(a), p];
}

const mask = (bits: number): number => (bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0) | 0;
const toInt = (a: ipaddr.IPv4): number => a.toByteArray().reduce((n, b) => (n << 8) | b, 0);
const fromInt = (n: number): string => [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
