/**
 * The shortcut between the namespace clones of one host. Through the bridge, a frame from one clone
 * to a sibling costs the bridge's own work and, where br_netfilter is loaded (it is on many hosts,
 * and its switch is host-wide), a pass through the host's netfilter hooks as well: about 2.7 µs
 * more per one-way message than loopback, against 0.9 µs with the shortcut (benchmarks/traffic.ts).
 *
 * Every clone's host-side veth gets a clsact qdisc whose ingress is one filter block of the ticket.
 * The block sends a frame addressed to a clone's MAC straight out of that clone's veth (u32 on the
 * destination MAC, mirred), hashed on the MAC's last byte (the clone's id) so that a frame meets
 * one filter, not one per clone. A frame to anything else (the gateway, a broadcast, a clone on
 * another host) matches nothing and goes on to the bridge and the ticket's firewall as before.
 *
 * Isolation is unchanged: the block names this ticket's clones and veths only, which the bridge's
 * forward rule lets talk to each other anyway. Nothing to record: the qdiscs go with their veths,
 * the block with its last qdisc. A kernel without clsact, u32 or mirred keeps the bridge's path.
 */
import type { Logger } from '../common/log.js';
import { tcBatch } from './ip.js';

export interface ShortcutPort {
  id: number;
  mac: string;
  /** The clone's host-side veth. */
  veth: string;
}

/** Shared blocks are numbered per network namespace: the ticket's id, above what tools pick by hand. */
export function shortcutBlock(ticketId: string): number {
  return 0x50000000 + parseInt(ticketId, 16);
}

/** The tc lines for a ticket's clones on this host (one call per ticket and host: it makes the block's hash table). */
export function shortcutLines(ticketId: string, ports: readonly ShortcutPort[]): string[] {
  const block = shortcutBlock(ticketId);
  const filter = `filter add block ${block} protocol all prio 1`;
  return [
    ...ports.map((p) => `qdisc add dev ${p.veth} ingress_block ${block} clsact`),
    `${filter} handle 1: u32 divisor 256`,
    // The key: the low byte of the 32-bit word 12 bytes before the IP header, the destination MAC's last.
    `${filter} u32 ht 800:: match u32 0 0 hashkey mask 0x000000ff at -12 link 1:`,
    ...ports.map((p) => `${filter} u32 ht 1:${(p.id & 0xff).toString(16)}: match ether dst ${p.mac} action mirred egress redirect dev ${p.veth}`),
  ];
}

/** Adds the shortcut; speed only, so a host that cannot have it is said in the log and keeps the bridge's path. */
export async function addShortcut(ticketId: string, ports: readonly ShortcutPort[], log: Logger): Promise<void> {
  await tcBatch(shortcutLines(ticketId, ports)).catch((e: Error) => log.info(`no shortcut between clones (the bridge carries their traffic): ${e.message}`));
}
