/*
 * The few rtnetlink requests a clone's network needs inside its namespace: bring a link up, add an
 * IPv4 address, add a default route, add a permanent neighbour, read a link's state. Done in-process so that configuring dozens of clones costs no
 * process start per clone (an `ip -n` costs tens of ms on a loaded host; these take microseconds).
 */
#ifndef NS_NETLINK_H
#define NS_NETLINK_H

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct ns_nlreq {
  struct nlmsghdr h;
  char body[256];
};

static void ns_nl_attr(struct ns_nlreq *r, unsigned short type, const void *data, unsigned short len) {
  struct rtattr *a = (struct rtattr *)((char *)&r->h + NLMSG_ALIGN(r->h.nlmsg_len));
  a->rta_type = type;
  a->rta_len = RTA_LENGTH(len);
  memcpy(RTA_DATA(a), data, len);
  r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

/* Sends one request and waits for its acknowledgement; returns 0 or -errno. */
static int ns_nl_talk(int fd, struct ns_nlreq *r) {
  static unsigned seq;
  r->h.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  r->h.nlmsg_seq = ++seq;
  if (send(fd, r, r->h.nlmsg_len, 0) < 0) return -errno;
  char buf[4096];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != r->h.nlmsg_seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
    }
  }
}

static int ns_nl_link_up(int fd, int ifindex) {
  struct ns_nlreq r;
  memset(&r, 0, sizeof r);
  r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
  r.h.nlmsg_type = RTM_NEWLINK;
  struct ifinfomsg *i = NLMSG_DATA(&r.h);
  i->ifi_family = AF_UNSPEC;
  i->ifi_index = ifindex;
  i->ifi_flags = IFF_UP;
  i->ifi_change = IFF_UP;
  return ns_nl_talk(fd, &r);
}

static int ns_nl_addr_add(int fd, int ifindex, struct in_addr addr, int prefix) {
  struct ns_nlreq r;
  memset(&r, 0, sizeof r);
  r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg));
  r.h.nlmsg_type = RTM_NEWADDR;
  r.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
  struct ifaddrmsg *a = NLMSG_DATA(&r.h);
  a->ifa_family = AF_INET;
  a->ifa_prefixlen = prefix;
  a->ifa_index = ifindex;
  ns_nl_attr(&r, IFA_LOCAL, &addr, sizeof addr);
  ns_nl_attr(&r, IFA_ADDRESS, &addr, sizeof addr);
  struct in_addr brd = addr;
  if (prefix < 31) brd.s_addr |= htonl(0xffffffffu >> prefix);
  ns_nl_attr(&r, IFA_BROADCAST, &brd, sizeof brd);
  return ns_nl_talk(fd, &r);
}

static int ns_nl_default_route(int fd, struct in_addr gw) {
  struct ns_nlreq r;
  memset(&r, 0, sizeof r);
  r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg));
  r.h.nlmsg_type = RTM_NEWROUTE;
  r.h.nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL;
  struct rtmsg *m = NLMSG_DATA(&r.h);
  m->rtm_family = AF_INET;
  m->rtm_table = RT_TABLE_MAIN;
  m->rtm_protocol = RTPROT_BOOT;
  m->rtm_scope = RT_SCOPE_UNIVERSE;
  m->rtm_type = RTN_UNICAST;
  ns_nl_attr(&r, RTA_GATEWAY, &gw, sizeof gw);
  return ns_nl_talk(fd, &r);
}

/* A permanent neighbour entry (IPv4 address -> MAC) on a link: no ARP for it, ever. */
static int ns_nl_neigh_add(int fd, int ifindex, struct in_addr addr, const unsigned char mac[6]) {
  struct ns_nlreq r;
  memset(&r, 0, sizeof r);
  r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ndmsg));
  r.h.nlmsg_type = RTM_NEWNEIGH;
  r.h.nlmsg_flags = NLM_F_CREATE | NLM_F_REPLACE;
  struct ndmsg *m = NLMSG_DATA(&r.h);
  m->ndm_family = AF_INET;
  m->ndm_ifindex = ifindex;
  m->ndm_state = NUD_PERMANENT;
  ns_nl_attr(&r, NDA_DST, &addr, sizeof addr);
  ns_nl_attr(&r, NDA_LLADDR, mac, 6);
  return ns_nl_talk(fd, &r);
}

/*
 * State of one link as the kernel reports it (RTM_GETLINK): its operational state (IF_OPER_*), its
 * flags, and the ifindex of its peer (IFLA_LINK; for a veth, the other end, in the peer's namespace).
 * Returns 0 or -errno. The socket may also carry notifications: they are skipped by sequence number.
 */
static int ns_nl_link_state(int fd, int ifindex, int *operstate, unsigned *flags, int *peer) {
  static unsigned seq = 1u << 30;
  struct ns_nlreq r;
  memset(&r, 0, sizeof r);
  r.h.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg));
  r.h.nlmsg_type = RTM_GETLINK;
  r.h.nlmsg_flags = NLM_F_REQUEST;
  r.h.nlmsg_seq = ++seq;
  struct ifinfomsg *i = NLMSG_DATA(&r.h);
  i->ifi_family = AF_UNSPEC;
  i->ifi_index = ifindex;
  if (send(fd, &r, r.h.nlmsg_len, 0) < 0) return -errno;
  char buf[16384];
  for (;;) {
    ssize_t n = recv(fd, buf, sizeof buf, 0);
    if (n < 0) {
      /* A socket that also hears notifications may be non-blocking, and may have overflowed. */
      if (errno == EINTR || errno == ENOBUFS) continue;
      if (errno == EAGAIN) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        poll(&p, 1, -1);
        continue;
      }
      return -errno;
    }
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != r.h.nlmsg_seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
      if (h->nlmsg_type != RTM_NEWLINK) continue;
      struct ifinfomsg *m = NLMSG_DATA(h);
      *flags = m->ifi_flags;
      *operstate = -1;
      *peer = 0;
      int len = (int)IFLA_PAYLOAD(h);
      for (struct rtattr *a = IFLA_RTA(m); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type == IFLA_OPERSTATE) *operstate = *(unsigned char *)RTA_DATA(a);
        if (a->rta_type == IFLA_LINK) *peer = *(int *)RTA_DATA(a);
      }
      return 0;
    }
  }
}

#endif
