/**
 * Isolation of one ticket's network with nftables, in a table of its own (family inet, so IPv6 too),
 * which makes removal one atomic `delete table`. Policies stay "accept": the table only drops what
 * concerns its own bridge, never anyone else's traffic.
 *
 * - clones of the ticket reach each other: traffic that enters and leaves by the ticket's bridge.
 *   Bridged frames only meet these hooks when br_netfilter is loaded; it reports the bridge itself
 *   as both input and output device then, so the same rule covers both cases.
 * - nothing else is forwarded to or from the bridge: not other tickets' clones, not beyond the host.
 * - traffic between clones is not tracked: only the host's own flows with them need conntrack (the
 *   input chain's replies), and the host's conntrack table is shared by everyone on it, so a ticket's
 *   internal flows (those of clones on other hosts too, which come in by the tunnel) stay out of it.
 *   Frames between clones of one host mostly skip these hooks already (native/common/shortcut.h).
 * - the host accepts from the bridge only replies, and new TCP connections to the ports the ticket
 *   opened on its gateway address. Everything else is refused at once (a TCP reset, an ICMP port
 *   unreachable), so that a program in a clone that tries a closed port, or a DNS lookup (the clones'
 *   resolv.conf names the gateway), fails fast instead of hanging.
 * - what comes in by the bridge must come from the ticket's subnet (IPv4) or a link-local address
 *   (IPv6), and only IPv4 can be a reply. Ranks are root in their clones and can forge any source;
 *   the host does no reverse-path filtering by default (rp_filter 0), and connection tracking does
 *   not care by which device a reply comes in. Without this, a clone that forges the address of
 *   another ticket's clone (or of any peer the host talks to) gets its datagrams accepted as
 *   "established" into the host's sockets of that other flow (test/system/isolation.test.ts shows
 *   it), and a refusal would be reflected at the forged source. Forged packets are dropped silently.
 * - the gateway address is the ticket's alone: anything addressed to it that does not come in
 *   through the ticket's bridge (another interface, another ticket's bridge, a LAN host that routes
 *   to it) is refused, so the services the ticket opened there (PMI, the clones' file server) are
 *   reached by its clones and by this host (over lo) only. Linux accepts traffic for any of its
 *   addresses on any interface; without this rule only the services' own checks would stand.
 */
import type { TicketNetwork } from './network.js';
import { nftScript } from './ip.js';

export function tableScript(net: TicketNetwork): string {
  const br = JSON.stringify(net.bridge);
  return `table inet ${net.table} {
  set open_ports { type inet_service; }
  chain untracked {
    type filter hook prerouting priority raw; policy accept;
    iifname ${br} ip saddr ${net.subnet} ip daddr ${net.subnet} ip saddr != ${net.gateway} ip daddr != ${net.gateway} notrack
  }
  chain input {
    type filter hook input priority filter - 5; policy accept;
    ip daddr ${net.gateway} iifname != { "lo", ${br} } meta l4proto tcp reject with tcp reset
    ip daddr ${net.gateway} iifname != { "lo", ${br} } reject
    iifname ${br} ip saddr != ${net.subnet} drop
    iifname ${br} ip6 saddr != fe80::/10 drop
    iifname ${br} meta nfproto ipv4 ct state established,related accept
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

/**
 * The rule a spanning ticket adds to its table: the ticket's VXLAN traffic (UDP 4789 with its VNI,
 * read from the VXLAN header: bits 96-119 of the UDP datagram) is dropped unless it comes from one
 * of the ticket's other hosts. Other tickets' VNIs are left alone: they share the port, and each
 * ticket's table speaks for its own. Without it, anyone on the underlay who knows (or guesses) a
 * ticket's VNI can put frames on its segment.
 */
export function spanScript(net: TicketNetwork, vx: { vni: number; peers: string[] }): string {
  const peers = vx.peers.length ? `ip saddr != { ${vx.peers.join(', ')} } ` : '';
  return `table inet ${net.table} {
  chain vxlan_in {
    type filter hook input priority filter - 5; policy accept;
    udp dport 4789 @th,96,24 ${vx.vni} ${peers}drop
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
