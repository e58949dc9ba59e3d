/* mcast: the helpers both ends share (geometry, addresses, token, clocks) and the sockets. */
#define _GNU_SOURCE
#include "mcast/common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/sf.h"
#include "memory/crc32c.h"

static const unsigned char ZERO_PAGE[MC_PAGE];

uint64_t mc_now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

uint64_t mc_wall_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static inline int page_has_data(const struct mc_geometry *g, uint64_t page) {
  return (int)((g->data_map[page >> 6] >> (page & 63)) & 1);
}

uint32_t mc_geometry__data_pages(const struct mc_geometry *g, uint64_t granule) {
  uint32_t per = g->granule_size / MC_PAGE, n = 0;
  uint64_t first = granule * per;
  for (uint32_t i = 0; i < per; i++) n += (uint32_t)page_has_data(g, first + i);
  return n;
}

uint64_t mc_geometry__data_granules(const struct mc_geometry *g) {
  uint64_t n = 0;
  for (uint64_t i = 0; i < g->n_granules; i++) n += g->sum_index[i] != MC_NO_SUM;
  return n;
}

int mc_geometry__check(const struct mc_geometry *g) {
  uint32_t gs = g->granule_size;
  if (gs < MC_PAGE || gs > (2u << 20) || (gs & (gs - 1))) return -EINVAL;
  if (!g->data_map || !g->sum_index || !g->sums || !g->n_granules) return -EINVAL;
  if (g->ram_size != g->n_granules * gs || g->n_granules > UINT32_MAX - 1) return -EINVAL;
  return 0;
}

int mc_geometry__granule_ok(const struct mc_geometry *g, uint64_t granule, const unsigned char *pages, size_t len) {
  uint32_t idx = g->sum_index[granule];
  if (idx == MC_NO_SUM) return 0;
  uint32_t per = g->granule_size / MC_PAGE;
  uint64_t first = granule * per;
  if (len != (size_t)mc_geometry__data_pages(g, granule) * MC_PAGE) return 0;
  uint32_t crc = 0;
  size_t at = 0;
  for (uint32_t i = 0; i < per; i++) {
    if (page_has_data(g, first + i)) crc = crc32c(crc, pages + at, MC_PAGE), at += MC_PAGE;
    else crc = crc32c(crc, ZERO_PAGE, MC_PAGE);
  }
  return crc == g->sums[idx];
}

int mc_random(void *buf, size_t len) {
  unsigned char *p = buf;
  while (len) {
    ssize_t n = getrandom(p, len, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += n, len -= (size_t)n;
  }
  return 0;
}

int mc_parse_addr(const char *s, struct in_addr *addr) {
  return inet_pton(AF_INET, s, addr) == 1 ? 0 : -EINVAL;
}

int mc_channel__set_token_hex(struct mc_channel *ch, const char *hex) {
  size_t n = strlen(hex);
  if (n % 2 || n / 2 < MC_TOKEN_MIN || n / 2 > MC_TOKEN_MAX) return -EINVAL;
  for (size_t i = 0; i < n / 2; i++) {
    unsigned v = 0;
    for (int k = 0; k < 2; k++) {
      char c = hex[2 * i + (size_t)k];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return -EINVAL;
      v = v * 16 + (unsigned)d;
    }
    ch->token[i] = (unsigned char)v;
  }
  ch->token_len = n / 2;
  return 0;
}

int mc_udp_socket(struct in_addr bind_addr, uint16_t port, int bufsize) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  /* Root may exceed rmem_max/wmem_max; the plain call is the fallback for everyone else. */
  if (bufsize > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsize, sizeof bufsize) < 0)
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
  if (bufsize > 0 && setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsize, sizeof bufsize) < 0)
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
  if (setsockopt(fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one) < 0) goto fail;
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr = bind_addr };
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) goto fail;
  return fd;
fail:;
  int err = -errno;
  close(fd);
  return err;
}

int mc_scope_multicast(int fd, struct in_addr local) {
  unsigned char ttl = 1, loop = 0;
  /* TTL 1: the group never leaves the underlay's segment; no loopback: a host hears only others. */
  if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) < 0) return -errno;
  if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) < 0) return -errno;
  if (setsockopt(fd, IPPROTO_IP, IP_MULTICAST_IF, &local, sizeof local) < 0) return -errno;
  return 0;
}

int mc_epoll_with(int fd) {
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) return -errno;
  struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
  if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
    int err = -errno;
    close(ep);
    return err;
  }
  return ep;
}

int mc_epoll_add(int ep, int fd) {
  struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
  return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

int mc_wait(int ep, int timeout_ms) {
  struct epoll_event ev[4];
  int n = epoll_wait(ep, ev, SF_ARRAY_LEN(ev), timeout_ms);
  if (n < 0 && errno != EINTR) return -errno;
  return 0;
}
