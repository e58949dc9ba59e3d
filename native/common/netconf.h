/*
 * One way to configure a clone's network, from inside its network namespace: the holder does it
 * for netns clones, the guest agent for VM clones. Steps, in order: lo up; then, for a named
 * interface, its MAC (before anything is sent: a VM clone starts with the template's MAC), its
 * MTU (a ticket spanning hosts: the tunnel's), its largest GSO packet, its IPv4 address, up, the default route, and permanent neighbours for the clone's siblings.
 */
#ifndef SF_NETCONF_H
#define SF_NETCONF_H

#include <netinet/in.h>

struct netconf_neigh {
  struct in_addr addr;
  unsigned char mac[6];
};

struct netconf {
  const char *ifname; /* NULL: lo only */
  int has_mac;
  unsigned char mac[6];
  int has_addr;
  struct in_addr addr;
  int prefix;
  int has_gateway;
  struct in_addr gateway;
  unsigned mtu; /* 0: the interface's own */
  unsigned gso_max; /* 0: the interface's own; best effort (a kernel may refuse it: then it stays) */
  const struct netconf_neigh *neigh;
  int n_neigh;
};

/*
 * Applies c to the current network namespace. Returns 0 or -errno; *step then names what failed
 * ("eth0 up", "default route", ...). *ifindex gets the interface's index (0 without ifname).
 */
int netconf__apply(const struct netconf *c, int *ifindex, const char **step);

/* "a.b.c.d/len" -> address and prefix length; 0 or -EINVAL. */
int netconf__parse_cidr(const char *s, struct in_addr *addr, int *prefix);
/* "a.b.c.d" -> address; 0 or -EINVAL. */
int netconf__parse_addr(const char *s, struct in_addr *addr);
/* "xx:xx:xx:xx:xx:xx" (hex) -> 6 bytes; 0 or -EINVAL. */
int netconf__parse_mac(const char *s, unsigned char mac[6]);

#endif
