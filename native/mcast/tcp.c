/*
 * The unicast baseline: what a memserver without multicast costs. One TCP connection per
 * receiver, each sent every data granule in push order ([u32 granule | u32 bytes | data pages]),
 * one thread per connection so that the hosts are served side by side, as the memserver's epoll
 * loop would.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/sf.h"
#include "mcast/packet.h"
#include "mcast/transports.h"

struct conn {
  struct bench_args *a;
  int fd;
  unsigned long long bytes;
  int err;
  pthread_t t;
};

static int writev_all(int fd, struct iovec *iov, int n) {
  while (n) {
    ssize_t w = writev(fd, iov, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    while (n && (size_t)w >= iov->iov_len) w -= (ssize_t)iov->iov_len, iov++, n--;
    if (n) iov->iov_base = (char *)iov->iov_base + w, iov->iov_len -= (size_t)w;
  }
  return 0;
}

static void *serve(void *arg) {
  struct conn *c = arg;
  const struct mc_geometry *g = &c->a->geo.g;
  uint32_t per = g->granule_size / MC_PAGE;
  struct iovec iov[1 + 512];
  for (uint32_t i = 0; i < c->a->n_order && !c->err; i++) {
    uint32_t gr = c->a->order[i];
    unsigned char hdr[8];
    int n = 1;
    uint32_t len = 0;
    for (uint32_t k = 0; k < per; k++) {
      uint64_t p = (uint64_t)gr * per + k;
      if ((g->data_map[p >> 6] >> (p & 63)) & 1) iov[n++] = (struct iovec){ (void *)(c->a->image + p * MC_PAGE), MC_PAGE }, len += MC_PAGE;
    }
    put32(hdr, gr), put32(hdr + 4, len);
    iov[0] = (struct iovec){ hdr, 8 };
    c->err = writev_all(c->fd, iov, n);
    c->bytes += 8 + len;
  }
  shutdown(c->fd, SHUT_WR);
  return NULL;
}

int tcp_push(struct bench_args *a, struct push_result *r) {
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(a->ch.port), .sin_addr = a->ch.sender };
  if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 || bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0 ||
      listen(ls, 64) < 0)
    return sf_err(-errno, "listening on %s:%u", inet_ntoa(a->ch.sender), a->ch.port), -errno;
  printf("ready\n");
  fflush(stdout);
  struct conn c[MC_MAX_RECEIVERS];
  long n = 0;
  int err = 0;
  while (n < a->hosts) {
    struct pollfd p[2] = { { .fd = ls, .events = POLLIN }, { .fd = 0, .events = POLLIN } };
    if (poll(p, 2, 1000) < 0 && errno != EINTR) return -errno;
    if (p[1].revents && bench_stdin_done()) { err = -ECANCELED; break; }
    if (!(p[0].revents & POLLIN)) continue;
    int fd = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) continue;
    c[n] = (struct conn){ .a = a, .fd = fd };
    n++;
  }
  close(ls);
  r->start_ns = mc_wall_ns();
  for (long i = 0; i < n && !err; i++)
    if (pthread_create(&c[i].t, NULL, serve, &c[i]) != 0) err = -EAGAIN, n = i;
  for (long i = 0; i < n; i++) {
    pthread_join(c[i].t, NULL);
    /* Wait for the receiver to close: it has read everything by then. */
    char b;
    while (read(c[i].fd, &b, 1) > 0) {
    }
    close(c[i].fd);
    r->bytes += c[i].bytes;
    if (c[i].err && !err) err = c[i].err;
  }
  if (err && err != -ECANCELED) sf_err(err, "sending");
  return err == -ECANCELED ? 0 : err;
}

int tcp_recv(struct bench_args *a, struct bench_store *s, struct recv_result *r) {
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(a->ch.port), .sin_addr = a->ch.sender };
  printf("ready\n");
  fflush(stdout);
  uint64_t deadline = mc_now_ns() + (uint64_t)a->timeout_s * 1000000000ull;
  int fd = -1;
  while (fd < 0) {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) break;
    if (fd >= 0) close(fd), fd = -1;
    if (mc_now_ns() > deadline) return snprintf(r->error, sizeof r->error, "cannot connect to %s:%u", inet_ntoa(a->ch.sender), a->ch.port), -ETIMEDOUT;
    usleep(20000);
  }
  const struct mc_geometry *g = &a->geo.g;
  unsigned char *buf = sf_malloc(g->granule_size);
  if (!buf) return close(fd), -ENOMEM;
  int err = 0;
  while (s->have < s->need) {
    if ((s->have & 1023) == 0 && bench_stdin_done()) { err = -ECANCELED; break; }
    unsigned char hdr[8];
    ssize_t n = sf_read_full(fd, hdr, 8);
    if (n != 8) { err = n < 0 ? (int)n : -EPIPE; break; }
    uint32_t gr = get32(hdr), len = get32(hdr + 4);
    if (gr >= g->n_granules || len > g->granule_size) { err = -EBADMSG; break; }
    if ((n = sf_read_full(fd, buf, len)) != (ssize_t)len) { err = n < 0 ? (int)n : -EPIPE; break; }
    r->bytes += 8 + len;
    if (mc_geometry__granule_ok(g, gr, buf, len)) bench_store__put(s, gr, buf, len);
    else snprintf(r->error, sizeof r->error, "granule %u: checksum", gr);
    if (s->have * 10 / s->need != (s->have - 1) * 10 / s->need) printf("progress %llu\n", (unsigned long long)(s->have * 10 / s->need)), fflush(stdout);
  }
  free(buf);
  close(fd);
  if (err) snprintf(r->error, sizeof r->error, "connection: %s", strerror(-err));
  return err;
}
