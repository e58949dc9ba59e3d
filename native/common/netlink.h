/*
 * rtnetlink, the few requests a clone's network needs: bring a link up, set its MAC, add an IPv4
 * address, a default route and a permanent neighbour, read a link's state, and put a BPF filter on
 * a link's ingress (shortcut.h). Done in-process so
 * that configuring dozens of clones costs no process start per clone (an `ip -n` costs tens of ms
 * on a loaded host; these take microseconds), and so that the guest agent needs no `ip` binary.
 *
 * A struct nl is one NETLINK_ROUTE socket of the network namespace the caller was in when it
 * opened it. Every request goes through one receive loop (nl__request): it waits for the answer
 * carrying the request's sequence number and skips everything else (notifications, late answers).
 * Every function returns 0 or a negative errno (sf.h).
 */
#ifndef SF_NETLINK_H
#define SF_NETLINK_H

#include <netinet/in.h>

struct nl {
  int fd;
  unsigned seq;
  /* Joined to the link notification group: non-blocking, and it may overflow (ENOBUFS). */
  int watching;
};

/* Opens a socket; with watch_links, it also hears every link change (RTMGRP_LINK). */
int nl__open(struct nl *nl, int watch_links);
void nl__close(struct nl *nl);

int nl__link_up(struct nl *nl, int ifindex);
int nl__link_set_mac(struct nl *nl, int ifindex, const unsigned char mac[6]);
int nl__link_set_mtu(struct nl *nl, int ifindex, unsigned mtu);
/* The largest packet the stack builds for the link before segmentation (IPv4 and IPv6): above 64 KiB is BIG TCP. */
int nl__link_set_gso_max(struct nl *nl, int ifindex, unsigned bytes);
int nl__addr_add(struct nl *nl, int ifindex, struct in_addr addr, int prefix);
/* A clsact qdisc on a link (tc's "clsact"): hooks for filters on its ingress and egress. */
int nl__qdisc_add_clsact(struct nl *nl, int ifindex);
/* A loaded BPF program (its fd) as the direct-action filter on the ingress of a link's clsact. */
int nl__filter_add_ingress_bpf(struct nl *nl, int ifindex, int prog_fd, const char *name);
int nl__route_add_default(struct nl *nl, struct in_addr gateway);
/* A permanent neighbour entry (IPv4 address -> MAC) on a link: no ARP for it, ever. */
int nl__neigh_add(struct nl *nl, int ifindex, struct in_addr addr, const unsigned char mac[6]);

struct nl_link_state {
  int operstate;  /* IF_OPER_*, or -1 if the kernel did not say */
  unsigned flags; /* IFF_* */
  int peer;       /* IFLA_LINK: for a veth, the other end's ifindex (in the peer's namespace); 0 if none */
};
int nl__link_state(struct nl *nl, int ifindex, struct nl_link_state *out);

/* Drains queued notifications without blocking: only the wake-up mattered. */
void nl__drain(struct nl *nl);

#endif
