/**
 * Isolation of one ticket's network with nftables, in a table of its own (family inet, so IPv6 too),
 * which makes removal one atomic `delete table`. Policies stay "accept": the table only drops what
 * concerns its own bridge, never anyone else's traffic.
 *
 * - clones of the ticket reach each other: traffic that enters and leaves by the ticket's bridge.
 *   Bridged frames only meet these hooks when br_netfilter is loaded; it reports the bridge itself
 *   as both input and output device then, so the same rule covers both cases.
 * - nothing else is forwarded to or from the bridge: not other tickets' clones, not beyond the host.
 * - the host accepts from the bridge only replies, and new TCP connections to the ports the ticket
 *   opened on its gateway address. Everything else is refused at once (a TCP reset, an ICMP port
 *   unreachable), so that a program in a clone that tries a closed port, or a DNS lookup (the clones'
 *   resolv.conf names the gateway), fails fast instead of hanging.
 */
import type { TicketNetwork } from '../types.js';
import { nftScript } from './ip.js';

export function tableScript(net: TicketNetwork): string {
  const br = JSON.stringify(net.bridge);
  return `table inet ${net.table} {
  set open_ports { type inet_service; }
  chain input {
    type filter hook input priority filter - 5; policy accept;
    iifname ${br} ct state established,related accept
    iifname ${br} ip daddr ${net.gateway} tcp dport @open_ports accept
    iifname ${br} meta l4proto tcp reject with tcp reset
    iifname ${br} reject
  }
  chain forward {
    type filter hook forward priority filter - 5; policy accept;
    iifname ${br} oifname ${br} accept
    iifname ${br} drop
    oifname ${br} drop
  }
}
`;
}

export async function createTable(net: TicketNetwork): Promise<void> {
  await nftScript(tableScript(net));
}

export async function openPorts(net: TicketNetwork, ports: number[]): Promise<void> {
  if (ports.length === 0) return;
  await nftScript(`add element inet ${net.table} open_ports { ${ports.join(', ')} }\n`);
}
