/* A clone's network configuration over rtnetlink: see netconf.h. */
#define _GNU_SOURCE
#include "netconf.h"
#include "netlink.h"
#include "sf.h"

#include <arpa/inet.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>

/* The interface's own steps, after lo. */
static int netconf__apply_if(struct nl *nl, const struct netconf *c, int ifindex, const char **step) {
  int rc = 0;
  if (c->has_mac && (rc = nl__link_set_mac(nl, ifindex, c->mac)) < 0) return *step = "set MAC", rc;
  if (c->mtu && (rc = nl__link_set_mtu(nl, ifindex, c->mtu)) < 0) return *step = "set MTU", rc;
  /* Speed only: a kernel whose links cannot take the size leaves them at 64 KiB, which works. */
  if (c->gso_max) (void)nl__link_set_gso_max(nl, ifindex, c->gso_max);
  /* EEXIST: the same request was applied before (an identity sent twice); the result stands. */
  if (c->has_addr && (rc = nl__addr_add(nl, ifindex, c->addr, c->prefix)) < 0 && rc != -EEXIST) return *step = "add address", rc;
  if ((rc = nl__link_up(nl, ifindex)) < 0) return *step = "link up", rc;
  if (c->has_gateway && (rc = nl__route_add_default(nl, c->gateway)) < 0 && rc != -EEXIST) return *step = "default route", rc;
  /*
   * Siblings as permanent neighbours: their MACs are known, so no clone ever ARPs for one. Not only
   * faster: the kernel's ARP table is one for all network namespaces, and its dynamic entries are
   * capped host-wide (net.ipv4.neigh.default.gc_thresh3, 1024 by default). N clones that all talk
   * to each other (MPI_Init does) need N*(N-1) entries: with 32 clones the table overflowed, new
   * entries failed ("neighbor table overflow!"), and connects waited seconds or failed with
   * "destination unreachable". Permanent entries are exempt from that cap.
   */
  for (int j = 0; j < c->n_neigh; j++)
    if ((rc = nl__neigh_add(nl, ifindex, c->neigh[j].addr, c->neigh[j].mac)) < 0) return *step = "sibling neighbour", rc;
  return 0;
}

int netconf__apply(const struct netconf *c, int *ifindex, const char **step) {
  struct nl nl;
  *ifindex = 0;
  int rc = nl__open(&nl, 0);
  if (rc < 0) return *step = "netlink socket", rc;
  rc = nl__link_up(&nl, 1);
  if (rc < 0) *step = "lo up";
  if (rc == 0 && c->ifname) {
    *ifindex = (int)if_nametoindex(c->ifname);
    if (!*ifindex) rc = -ENODEV, *step = "find the interface";
    else rc = netconf__apply_if(&nl, c, *ifindex, step);
  }
  nl__close(&nl);
  return rc;
}

int netconf__parse_addr(const char *s, struct in_addr *addr) {
  return s && inet_pton(AF_INET, s, addr) == 1 ? 0 : -EINVAL;
}

int netconf__parse_cidr(const char *s, struct in_addr *addr, int *prefix) {
  char ip[INET_ADDRSTRLEN];
  const char *slash = s ? strchr(s, '/') : NULL;
  if (!slash || (size_t)(slash - s) >= sizeof ip) return -EINVAL;
  memcpy(ip, s, (size_t)(slash - s));
  ip[slash - s] = 0;
  long len;
  if (netconf__parse_addr(ip, addr) < 0 || sf_parse_long(slash + 1, 0, 32, &len) < 0) return -EINVAL;
  *prefix = (int)len;
  return 0;
}

int netconf__parse_mac(const char *s, unsigned char mac[6]) {
  unsigned v[6];
  int end = -1;
  if (!s || sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%n", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &end) != 6 || end < 0 || s[end])
    return -EINVAL;
  for (int i = 0; i < 6; i++) mac[i] = (unsigned char)v[i];
  return 0;
}
