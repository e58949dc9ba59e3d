/* rtnetlink requests with one receive loop: see netlink.h. */
#define _GNU_SOURCE
#include "netlink.h"
#include "sf.h"

#include <arpa/inet.h>
#include <linux/if.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Longest wait for the kernel's answer on a non-blocking socket: only a wedged kernel hits it. */
#define NL_ANSWER_TIMEOUT_MS 10000

/* One request being built: a header, its fixed message and attributes. */
struct nl_msg {
  struct nlmsghdr h;
  char body[256];
};

static void *nl_msg__init(struct nl_msg *m, unsigned short type, unsigned short flags, size_t fixed) {
  memset(m, 0, sizeof *m);
  m->h.nlmsg_len = NLMSG_LENGTH(fixed);
  m->h.nlmsg_type = type;
  m->h.nlmsg_flags = flags;
  return NLMSG_DATA(&m->h);
}

static int nl_msg__attr(struct nl_msg *m, unsigned short type, const void *data, unsigned short len) {
  size_t at = NLMSG_ALIGN(m->h.nlmsg_len);
  if (at + RTA_SPACE(len) > sizeof *m) return -EMSGSIZE;
  struct rtattr *a = (struct rtattr *)((char *)m + at);
  a->rta_type = type;
  a->rta_len = RTA_LENGTH(len);
  if (len) memcpy(RTA_DATA(a), data, len);
  m->h.nlmsg_len = at + RTA_ALIGN(a->rta_len);
  return 0;
}

/* A nested attribute: begin returns where it starts, end sets its length to what was added since. */
static int nl_msg__nest_begin(struct nl_msg *m, unsigned short type) {
  int at = (int)NLMSG_ALIGN(m->h.nlmsg_len);
  int rc = nl_msg__attr(m, type | NLA_F_NESTED, NULL, 0);
  return rc < 0 ? rc : at;
}

static void nl_msg__nest_end(struct nl_msg *m, int at) {
  struct rtattr *a = (struct rtattr *)((char *)m + at);
  a->rta_len = (unsigned short)(m->h.nlmsg_len - (unsigned)at);
}

int nl__open(struct nl *nl, int watch_links) {
  nl->seq = 0;
  nl->watching = watch_links;
  nl->fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | (watch_links ? SOCK_NONBLOCK : 0), NETLINK_ROUTE);
  if (nl->fd < 0) return -errno;
  if (!watch_links) return 0;
  struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK};
  if (bind(nl->fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    int err = -errno;
    nl__close(nl);
    return err;
  }
  return 0;
}

void nl__close(struct nl *nl) {
  if (nl->fd >= 0) close(nl->fd);
  nl->fd = -1;
}

/* Called with each message answering the request, before its acknowledgement. */
typedef void (*nl_reply_fn)(const struct nlmsghdr *h, void *ctx);

static int nl__send(struct nl *nl, struct nl_msg *m) {
  m->h.nlmsg_seq = ++nl->seq;
  if (send(nl->fd, m, m->h.nlmsg_len, 0) < 0) return -errno;
  return 0;
}

static int nl__wait_readable(struct nl *nl) {
  struct pollfd p = {.fd = nl->fd, .events = POLLIN};
  int r = poll(&p, 1, NL_ANSWER_TIMEOUT_MS);
  if (r < 0) return errno == EINTR ? 0 : -errno;
  return r == 0 ? -ETIMEDOUT : 0;
}

/*
 * The receive loop. Every request asks for an acknowledgement, so its end is always the
 * NLMSG_ERROR carrying its sequence number (error 0 for success); answers before it go to
 * on_reply. A socket that hears notifications may overflow (ENOBUFS): the kernel may then have
 * dropped our answer, so the request is sent again under a new number. Only read requests may be
 * repeated that way, which is why a watching socket refuses any other.
 */
static int nl__request(struct nl *nl, struct nl_msg *m, nl_reply_fn on_reply, void *ctx) {
  int reading = m->h.nlmsg_type == RTM_GETLINK;
  if (nl->watching && !reading) return -EINVAL;
  m->h.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
  int rc = nl__send(nl, m);
  if (rc < 0) return rc;
  char buf[32768] __attribute__((aligned(NLMSG_ALIGNTO)));
  for (;;) {
    ssize_t n = recv(nl->fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ENOBUFS && nl->watching) {
        if ((rc = nl__send(nl, m)) < 0) return rc;
        continue;
      }
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if ((rc = nl__wait_readable(nl)) < 0) return rc;
        continue;
      }
      return -errno;
    }
    size_t left = (size_t)n;
    for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_seq != m->h.nlmsg_seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR) {
        if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct nlmsgerr))) return -EPROTO;
        return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
      }
      if (on_reply) on_reply(h, ctx);
    }
  }
}

/* A request to change link ifindex (RTM_NEWLINK on an existing link); attributes say what. */
static struct ifinfomsg *nl_msg__setlink(struct nl_msg *m, int ifindex) {
  struct ifinfomsg *i = nl_msg__init(m, RTM_NEWLINK, 0, sizeof *i);
  i->ifi_family = AF_UNSPEC;
  i->ifi_index = ifindex;
  return i;
}

int nl__link_up(struct nl *nl, int ifindex) {
  struct nl_msg m;
  struct ifinfomsg *i = nl_msg__setlink(&m, ifindex);
  i->ifi_flags = IFF_UP;
  i->ifi_change = IFF_UP;
  return nl__request(nl, &m, NULL, NULL);
}

int nl__link_set_mac(struct nl *nl, int ifindex, const unsigned char mac[6]) {
  struct nl_msg m;
  nl_msg__setlink(&m, ifindex);
  int rc = nl_msg__attr(&m, IFLA_ADDRESS, mac, 6);
  return rc < 0 ? rc : nl__request(nl, &m, NULL, NULL);
}

int nl__link_set_mtu(struct nl *nl, int ifindex, unsigned mtu) {
  struct nl_msg m;
  nl_msg__setlink(&m, ifindex);
  int rc = nl_msg__attr(&m, IFLA_MTU, &mtu, sizeof mtu);
  return rc < 0 ? rc : nl__request(nl, &m, NULL, NULL);
}

/* Linux 6.3; older headers lack it, and older kernels ignore an attribute they do not know. */
#ifndef IFLA_GSO_IPV4_MAX_SIZE
#define IFLA_GSO_IPV4_MAX_SIZE 63
#endif

int nl__link_set_gso_max(struct nl *nl, int ifindex, unsigned bytes) {
  struct nl_msg m;
  nl_msg__setlink(&m, ifindex);
  int rc = nl_msg__attr(&m, IFLA_GSO_MAX_SIZE, &bytes, sizeof bytes);
  if (rc == 0) rc = nl_msg__attr(&m, IFLA_GSO_IPV4_MAX_SIZE, &bytes, sizeof bytes);
  return rc < 0 ? rc : nl__request(nl, &m, NULL, NULL);
}

int nl__addr_add(struct nl *nl, int ifindex, struct in_addr addr, int prefix) {
  if (prefix < 0 || prefix > 32) return -EINVAL;
  struct nl_msg m;
  struct ifaddrmsg *a = nl_msg__init(&m, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, sizeof *a);
  a->ifa_family = AF_INET;
  a->ifa_prefixlen = (unsigned char)prefix;
  a->ifa_index = (unsigned)ifindex;
  struct in_addr brd = addr;
  if (prefix < 31) brd.s_addr |= htonl(0xffffffffu >> prefix);
  int rc = nl_msg__attr(&m, IFA_LOCAL, &addr, sizeof addr);
  if (rc == 0) rc = nl_msg__attr(&m, IFA_ADDRESS, &addr, sizeof addr);
  if (rc == 0) rc = nl_msg__attr(&m, IFA_BROADCAST, &brd, sizeof brd);
  return rc < 0 ? rc : nl__request(nl, &m, NULL, NULL);
}

int nl__qdisc_add_clsact(struct nl *nl, int ifindex) {
  struct nl_msg m;
  struct tcmsg *t = nl_msg__init(&m, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, sizeof *t);
  t->tcm_family = AF_UNSPEC;
  t->tcm_ifindex = ifindex;
  t->tcm_parent = TC_H_CLSACT;
  t->tcm_handle = TC_H_MAKE(TC_H_CLSACT, 0);
  int rc = nl_msg__attr(&m, TCA_KIND, "clsact", sizeof "clsact");
  return rc < 0 ? rc : nl__request(nl, &m, NULL, NULL);
}

int nl__filter_add_ingress_bpf(struct nl *nl, int ifindex, int prog_fd, const char *name) {
  struct nl_msg m;
  struct tcmsg *t = nl_msg__init(&m, RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, sizeof *t);
  t->tcm_family = AF_UNSPEC;
  t->tcm_ifindex = ifindex;
  t->tcm_parent = TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS);
  t->tcm_handle = 1;
  t->tcm_info = TC_H_MAKE(1u << 16, htons(ETH_P_ALL)); /* priority 1, every protocol */
  unsigned fd = (unsigned)prog_fd, flags = TCA_BPF_FLAG_ACT_DIRECT;
  int rc = nl_msg__attr(&m, TCA_KIND, "bpf", sizeof "bpf");
  int nest = rc < 0 ? rc : nl_msg__nest_begin(&m, TCA_OPTIONS);
  if (nest < 0) return nest;
  rc = nl_msg__attr(&m, TCA_BPF_FD, &fd, sizeof fd);
  if (rc == 0) rc = nl_msg__attr(&m, TCA_BPF_NAME, name, (unsigned short)(strlen(name) + 1));
  if (rc == 0) rc = nl_msg__attr(&m, TCA_BPF_FLAGS, &flags, sizeof flags);
  if (rc < 0) return rc;
  nl_msg__nest_end(&m, nest);
  return nl__request(nl, &m, NULL, NULL);
}

int nl__route_add_default(struct nl *nl, struct in_addr gateway) {
  struct nl_msg m;
  struct rtmsg *r = nl_msg__init(&m, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, sizeof *r);
  r->rtm_family = AF_INET;
  r->rtm_table = RT_TABLE_MAIN;
  r->rtm_protocol = RTPROT_BOOT;
  r->rtm_scope = RT_SCOPE_UNIVERSE;
  r->rtm_type = RTN_UNICAST;
  int rc = nl_msg__attr(&m, RTA_GATEWAY, &gateway, sizeof gateway);
  return rc < 0 ? rc : nl__request(nl, &m, NULL, NULL);
}

int nl__neigh_add(struct nl *nl, int ifindex, struct in_addr addr, const unsigned char mac[6]) {
  struct nl_msg m;
  struct ndmsg *n = nl_msg__init(&m, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, sizeof *n);
  n->ndm_family = AF_INET;
  n->ndm_ifindex = ifindex;
  n->ndm_state = NUD_PERMANENT;
  int rc = nl_msg__attr(&m, NDA_DST, &addr, sizeof addr);
  if (rc == 0) rc = nl_msg__attr(&m, NDA_LLADDR, mac, 6);
  return rc < 0 ? rc : nl__request(nl, &m, NULL, NULL);
}

struct link_query {
  int ifindex;
  int found;
  struct nl_link_state *out;
};

static void link_query__reply(const struct nlmsghdr *h, void *ctx) {
  struct link_query *q = ctx;
  if (h->nlmsg_type != RTM_NEWLINK || h->nlmsg_len < NLMSG_LENGTH(sizeof(struct ifinfomsg))) return;
  const struct ifinfomsg *m = NLMSG_DATA(h);
  if (m->ifi_index != q->ifindex) return;
  q->found = 1;
  q->out->flags = m->ifi_flags;
  q->out->operstate = -1;
  q->out->peer = 0;
  int len = (int)IFLA_PAYLOAD(h);
  for (const struct rtattr *a = IFLA_RTA(m); RTA_OK(a, len); a = RTA_NEXT(a, len)) {
    if (a->rta_type == IFLA_OPERSTATE && RTA_PAYLOAD(a) >= 1) q->out->operstate = *(const unsigned char *)RTA_DATA(a);
    if (a->rta_type == IFLA_LINK && RTA_PAYLOAD(a) >= sizeof(int)) memcpy(&q->out->peer, RTA_DATA(a), sizeof(int));
  }
}

int nl__link_state(struct nl *nl, int ifindex, struct nl_link_state *out) {
  struct nl_msg m;
  struct ifinfomsg *i = nl_msg__init(&m, RTM_GETLINK, 0, sizeof *i);
  i->ifi_family = AF_UNSPEC;
  i->ifi_index = ifindex;
  struct link_query q = {.ifindex = ifindex, .out = out};
  int rc = nl__request(nl, &m, link_query__reply, &q);
  if (rc < 0) return rc;
  return q.found ? 0 : -ENODEV;
}

void nl__drain(struct nl *nl) {
  char buf[8192];
  while (recv(nl->fd, buf, sizeof buf, MSG_DONTWAIT) > 0 || errno == ENOBUFS || errno == EINTR) {}
}
