/*
 * The shortcut between the namespace clones of one host. Through the bridge, a frame from one clone
 * to a sibling costs the bridge's work and, where br_netfilter is loaded (a host-wide switch, on in
 * many hosts), a pass through the host's netfilter hooks; then a second trip through a veth and the
 * CPU's backlog. Loopback does none of that, and small messages between two clones took 1.45 times
 * as long as between two processes on loopback.
 *
 * The shortcut is a BPF program on the ingress of every clone's host-side veth: a frame addressed
 * to the MAC of a sibling on this host is handed straight to that sibling's eth0
 * (bpf_redirect_peer: no bridge, no second veth, no second backlog). Any other frame (to the
 * gateway, a broadcast, a clone on another host) goes on to the bridge and the ticket's firewall as
 * before. Isolation is unchanged: the program names this batch's clones only, which the bridge lets
 * talk to each other anyway.
 *
 * Nothing to clean up: the filters hold the program, the qdiscs hold the filters, and the qdiscs go
 * with their veths, which go with the clones' namespaces.
 */
#ifndef SF_SHORTCUT_H
#define SF_SHORTCUT_H

#include "netlink.h"

struct shortcut_port {
  unsigned char mac[6]; /* the clone's eth0 */
  int veth;             /* ifindex of its host-side veth, in the namespace of `host` */
};

/*
 * Puts the shortcut between the n ports, through `host` (a netlink socket of the host's network
 * namespace, not a watching one). 0 or -errno; *step then names what failed.
 */
int shortcut__attach(struct nl *host, const struct shortcut_port *ports, int n, const char **step);

#endif
