/*
 * Network probes from inside a clone, for the isolation tests (test/system/isolation.test.ts,
 * test/vm/isolation.test.ts). Not an MPI program.
 *
 *   netprobe listen PORT           TCP and UDP (echo) on every address of the clone, IPv4 and IPv6;
 *                                  prints "listening PORT", then serves until killed
 *   netprobe probe MS SPEC...      one attempt per SPEC, each bounded by MS milliseconds; SPEC is
 *                                  tcp,ADDRESS,PORT or udp,ADDRESS,PORT or icmp,ADDRESS (ADDRESS IPv4
 *                                  or IPv6, fe80::1%eth0 for a link-local one). Prints one line per
 *                                  SPEC: "probe SPEC RESULT", RESULT one of connected, replied (a
 *                                  success) or refused, unreachable, timeout, error-ERRNO (a failure)
 *   netprobe spoof SRC SPORT DST DPORT TEXT
 *                                  one UDP datagram to DST:DPORT that claims to come from SRC:SPORT
 *                                  (a raw socket: root in the clone can forge its source); prints
 *                                  "spoofed SRC:SPORT DST:DPORT"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

static int resolve(const char *host, const char *port, int socktype, struct sockaddr_storage *sa, socklen_t *len) {
  struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV, .ai_socktype = socktype}, *res;
  if (getaddrinfo(host, port, &hints, &res) != 0) return -1;
  memcpy(sa, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

/* The result word for a failed socket call. */
static const char *failure(int err) {
  static char buf[32];
  switch (err) {
    case ECONNREFUSED: return "refused";
    case EHOSTUNREACH:
    case ENETUNREACH:
    case EADDRNOTAVAIL: return "unreachable";
    case ETIMEDOUT: return "timeout";
  }
  snprintf(buf, sizeof buf, "error-%d", err);
  return buf;
}

/* Waits for fd to become ready for `events`; returns revents, 0 on timeout. */
static int wait_fd(int fd, short events, long deadline) {
  for (;;) {
    long left = deadline - now_ms();
    if (left <= 0) return 0;
    struct pollfd p = {.fd = fd, .events = events};
    int r = poll(&p, 1, (int)left);
    if (r > 0) return p.revents;
    if (r == 0) return 0;
    if (errno != EINTR) return POLLERR;
  }
}

static const char *probe_tcp(const char *host, const char *port, long deadline) {
  struct sockaddr_storage sa;
  socklen_t len;
  if (resolve(host, port, SOCK_STREAM, &sa, &len) < 0) return "error-address";
  int fd = socket(sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return failure(errno);
  const char *result = "connected";
  if (connect(fd, (struct sockaddr *)&sa, len) < 0) {
    if (errno != EINPROGRESS) {
      result = failure(errno);
    } else if (!wait_fd(fd, POLLOUT, deadline)) {
      result = "timeout";
    } else {
      int err = 0;
      socklen_t el = sizeof err;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
      if (err) result = failure(err);
    }
  }
  close(fd);
  return result;
}

/* A connected UDP socket: an ICMP port unreachable comes back as ECONNREFUSED on the next call. */
static const char *probe_udp(const char *host, const char *port, long deadline) {
  struct sockaddr_storage sa;
  socklen_t len;
  if (resolve(host, port, SOCK_DGRAM, &sa, &len) < 0) return "error-address";
  int fd = socket(sa.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return failure(errno);
  /* Broadcast addresses are probes too: what matters is whether a host listener hears them. */
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
  const char *result = "timeout";
  if (connect(fd, (struct sockaddr *)&sa, len) < 0 || send(fd, "probe", 5, 0) < 0) {
    result = failure(errno);
  } else {
    while (wait_fd(fd, POLLIN, deadline)) {
      char buf[64];
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n >= 0) { result = "replied"; break; }
      if (errno == EAGAIN || errno == EINTR) continue;
      result = failure(errno);
      break;
    }
  }
  close(fd);
  return result;
}

static unsigned short checksum(const void *data, size_t len) {
  const unsigned char *p = data;
  unsigned long sum = 0;
  for (size_t i = 0; i + 1 < len; i += 2) sum += (p[i] << 8) | p[i + 1];
  if (len & 1) sum += p[len - 1] << 8;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return htons((unsigned short)~sum);
}

/* Whether an ICMP error quotes our echo request (so a late error about another probe is not ours). */
static int quotes_ours(const unsigned char *icmp, ssize_t n, int v6, unsigned short id) {
  const unsigned char *orig = icmp + 8;
  ssize_t left = n - 8;
  ssize_t hdr = v6 ? 40 : (left > 0 ? (orig[0] & 0x0f) * 4 : 0);
  if (left < hdr + 8) return 0;
  const unsigned char *echo = orig + hdr;
  return echo[0] == (v6 ? ICMP6_ECHO_REQUEST : ICMP_ECHO) && memcmp(echo + 4, &id, 2) == 0;
}

/* An echo request on a raw socket; "replied" only for our echo reply from that very address. */
static const char *probe_icmp(const char *host, long deadline) {
  struct sockaddr_storage sa;
  socklen_t len;
  if (resolve(host, NULL, SOCK_RAW, &sa, &len) < 0) return "error-address";
  int v6 = sa.ss_family == AF_INET6;
  int fd = socket(sa.ss_family, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, v6 ? IPPROTO_ICMPV6 : IPPROTO_ICMP);
  if (fd < 0) return failure(errno);
  unsigned short id = (unsigned short)(getpid() ^ now_ms());
  unsigned char pkt[16] = {0};
  pkt[0] = v6 ? ICMP6_ECHO_REQUEST : ICMP_ECHO;
  memcpy(pkt + 4, &id, 2);
  pkt[7] = 1;
  memcpy(pkt + 8, "sfprobe!", 8);
  if (!v6) {
    unsigned short c = checksum(pkt, sizeof pkt);
    memcpy(pkt + 2, &c, 2);
  } /* the kernel computes ICMPv6 checksums */
  const char *result = "timeout";
  if (connect(fd, (struct sockaddr *)&sa, len) < 0 || send(fd, pkt, sizeof pkt, 0) < 0) {
    result = failure(errno);
  } else {
    while (wait_fd(fd, POLLIN, deadline)) {
      unsigned char buf[1500];
      ssize_t n = recv(fd, buf, sizeof buf, 0);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) continue;
        result = failure(errno);
        break;
      }
      const unsigned char *icmp = buf;
      if (!v6) {
        if (n < 20) continue;
        icmp = buf + (buf[0] & 0x0f) * 4;
        n -= icmp - buf;
      }
      if (n < 8) continue;
      int type = icmp[0];
      if (type == (v6 ? ICMP6_ECHO_REPLY : ICMP_ECHOREPLY) && memcmp(icmp + 4, &id, 2) == 0) { result = "replied"; break; }
      if (type == (v6 ? ICMP6_DST_UNREACH : ICMP_DEST_UNREACH) && quotes_ours(icmp, n, v6, id)) { result = "unreachable"; break; }
    }
  }
  close(fd);
  return result;
}

static int probe(int argc, char **argv) {
  long ms = atol(argv[2]);
  for (int i = 3; i < argc; i++) {
    char spec[256];
    snprintf(spec, sizeof spec, "%s", argv[i]);
    char *proto = spec, *host = strchr(spec, ','), *port = NULL;
    if (host) *host++ = 0, port = strchr(host, ',');
    if (port) *port++ = 0;
    const char *r;
    long deadline = now_ms() + ms;
    if (!host) r = "error-spec";
    else if (strcmp(proto, "tcp") == 0 && port) r = probe_tcp(host, port, deadline);
    else if (strcmp(proto, "udp") == 0 && port) r = probe_udp(host, port, deadline);
    else if (strcmp(proto, "icmp") == 0) r = probe_icmp(host, deadline);
    else r = "error-spec";
    printf("probe %s %s\n", argv[i], r);
    fflush(stdout);
  }
  return 0;
}

static int bound(int family, int type, int port) {
  int fd = socket(family, type | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_storage sa = {0};
  socklen_t len;
  if (family == AF_INET6) {
    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)&sa;
    a->sin6_family = AF_INET6, a->sin6_port = htons(port), a->sin6_addr = in6addr_any, len = sizeof *a;
  } else {
    struct sockaddr_in *a = (struct sockaddr_in *)&sa;
    a->sin_family = AF_INET, a->sin_port = htons(port), a->sin_addr.s_addr = htonl(INADDR_ANY), len = sizeof *a;
  }
  if (bind(fd, (struct sockaddr *)&sa, len) < 0 || (type == SOCK_STREAM && listen(fd, 16) < 0)) {
    close(fd);
    return -1;
  }
  return fd;
}

static int listen_all(int port) {
  int fds[4] = {bound(AF_INET, SOCK_STREAM, port), bound(AF_INET, SOCK_DGRAM, port), bound(AF_INET6, SOCK_STREAM, port), bound(AF_INET6, SOCK_DGRAM, port)};
  /* IPv4 is required; IPv6 only where the clone has it. */
  if (fds[0] < 0 || fds[1] < 0) { perror("netprobe: listen"); return 1; }
  printf("listening %d\n", port);
  fflush(stdout);
  for (;;) {
    struct pollfd p[4];
    int n = 0;
    for (int i = 0; i < 4; i++)
      if (fds[i] >= 0) p[n++] = (struct pollfd){.fd = fds[i], .events = POLLIN};
    if (poll(p, n, -1) < 0 && errno != EINTR) return 1;
    for (int i = 0; i < n; i++) {
      if (!(p[i].revents & POLLIN)) continue;
      int type;
      socklen_t tl = sizeof type;
      getsockopt(p[i].fd, SOL_SOCKET, SO_TYPE, &type, &tl);
      if (type == SOCK_STREAM) {
        int c = accept(p[i].fd, NULL, NULL);
        if (c >= 0) close(c);
      } else {
        char buf[64];
        struct sockaddr_storage from;
        socklen_t fl = sizeof from;
        ssize_t r = recvfrom(p[i].fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &fl);
        if (r >= 0) sendto(p[i].fd, buf, (size_t)r, 0, (struct sockaddr *)&from, fl);
      }
    }
  }
}

static int spoof(char **argv) {
  struct in_addr src, dst;
  if (inet_pton(AF_INET, argv[2], &src) != 1 || inet_pton(AF_INET, argv[4], &dst) != 1) { fprintf(stderr, "netprobe: spoof: IPv4 addresses only\n"); return 2; }
  size_t len = strlen(argv[6]);
  if (len > 1000) len = 1000;
  unsigned char pkt[1100] = {0};
  struct iphdr *ip = (struct iphdr *)pkt;
  ip->version = 4, ip->ihl = 5, ip->ttl = 64, ip->protocol = IPPROTO_UDP;
  ip->saddr = src.s_addr, ip->daddr = dst.s_addr;
  ip->tot_len = htons((unsigned short)(20 + 8 + len)); /* the kernel fills in the checksum */
  unsigned char *udp = pkt + 20;
  unsigned short sport = htons((unsigned short)atoi(argv[3])), dport = htons((unsigned short)atoi(argv[5])), ulen = htons((unsigned short)(8 + len));
  memcpy(udp, &sport, 2), memcpy(udp + 2, &dport, 2), memcpy(udp + 4, &ulen, 2); /* checksum 0: none */
  memcpy(udp + 8, argv[6], len);
  int fd = socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
  struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = dst};
  if (fd < 0 || sendto(fd, pkt, 20 + 8 + len, 0, (struct sockaddr *)&to, sizeof to) < 0) { perror("netprobe: spoof"); return 1; }
  close(fd);
  printf("spoofed %s:%s %s:%s\n", argv[2], argv[3], argv[4], argv[5]);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 7 && strcmp(argv[1], "spoof") == 0) return spoof(argv);
  if (argc >= 3 && strcmp(argv[1], "listen") == 0) return listen_all(atoi(argv[2]));
  if (argc >= 3 && strcmp(argv[1], "probe") == 0) return probe(argc, argv);
  fprintf(stderr, "usage: netprobe listen PORT | netprobe probe MS SPEC... | netprobe spoof SRC SPORT DST DPORT TEXT\n");
  return 2;
}
