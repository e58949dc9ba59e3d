/* A memtap's connection to the memserver (link.h). */
#define _GNU_SOURCE
#include "memory/link.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/sf.h"
#include "memory/crc32c.h"

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int parse_addr(const char *spec, struct sockaddr_in *sa) {
  char host[64];
  const char *colon = strrchr(spec, ':');
  long port;
  if (!colon || (size_t)(colon - spec) >= sizeof host || sf_parse_long(colon + 1, 1, 65535, &port) < 0) return -EINVAL;
  memcpy(host, spec, (size_t)(colon - spec));
  host[colon - spec] = 0;
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)port);
  return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -EINVAL;
}

/* Waits until fd is ready for events or the deadline passes; 0, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, short events, int64_t deadline) {
  for (;;) {
    int64_t left = deadline - now_ms();
    if (left <= 0) return -ETIMEDOUT;
    struct pollfd p = {.fd = fd, .events = events};
    int n = poll(&p, 1, (int)left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n > 0) return 0;
  }
}

/* Reads exactly len bytes before the deadline (non-blocking socket). */
static int read_by(int fd, void *buf, size_t len, int64_t deadline) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = recv(fd, (char *)buf + got, len - got, 0);
    if (n > 0) {
      got += (size_t)n;
      continue;
    }
    if (n == 0) return -EPIPE;
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
    int err = wait_fd(fd, POLLIN, deadline);
    if (err) return err;
  }
  return 0;
}

static int write_by(int fd, const void *buf, size_t len, int64_t deadline) {
  size_t put = 0;
  while (put < len) {
    ssize_t n = send(fd, (const char *)buf + put, len - put, MSG_NOSIGNAL);
    if (n > 0) {
      put += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return -errno;
    int err = wait_fd(fd, POLLOUT, deadline);
    if (err) return err;
  }
  return 0;
}

int link__connect(struct link *l, const char *server, uint32_t role, const struct descriptor *d,
                  const struct wire_token *token, unsigned char *store, int timeout_ms, int nonblock,
                  char *why, size_t whylen) {
  memset(l, 0, sizeof *l);
  l->fd = -1;
  l->role = role;
  l->server = server;
  l->d = d;
  l->store = store;
  struct sockaddr_in sa;
  if (parse_addr(server, &sa) < 0) {
    snprintf(why, whylen, "%s is not ADDR:PORT", server);
    return -EINVAL;
  }
  int64_t deadline = now_ms() + timeout_ms;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1, err = 0;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  /* Data sent and not acknowledged within the timeout fails the socket instead of retrying for
   * minutes: a dead network path must end in an error, not a hang. */
  unsigned int uto = (unsigned int)timeout_ms;
  setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof uto);
  if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    if (errno != EINPROGRESS) err = -errno;
    else if ((err = wait_fd(fd, POLLOUT, deadline)) == 0) {
      socklen_t sl = sizeof err;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl);
      err = -err;
    }
  }
  if (err) {
    snprintf(why, whylen, "cannot connect to the memserver %s: %s", server, strerror(-err));
    close(fd);
    return err;
  }
  unsigned char hdr[WIRE_HDR], ch[W_CHALLENGE_LEN];
  const char *step = "reading its challenge";
  if ((err = read_by(fd, hdr, sizeof hdr, deadline)) == 0) {
    if (wire_get32(hdr) != W_CHALLENGE || wire_get32(hdr + 4) != W_CHALLENGE_LEN) err = -EPROTO;
    else err = read_by(fd, ch, sizeof ch, deadline);
  }
  if (!err && wire_get32(ch) != WIRE_VERSION) {
    snprintf(why, whylen, "the memserver %s speaks wire version %u, this memtap %u", server, wire_get32(ch), WIRE_VERSION);
    close(fd);
    return -EPROTO;
  }
  unsigned char hello[WIRE_HDR + W_HELLO_LEN], cnonce[WIRE_NONCE];
  if (!err) {
    step = "sending the hello";
    wire_put32(hello, W_HELLO);
    wire_put32(hello + 4, W_HELLO_LEN);
    unsigned char *b = hello + WIRE_HDR;
    wire_put32(b, WIRE_VERSION);
    wire_put32(b + 4, role);
    memcpy(b + 8, d->id, DESC_ID_LEN);
    if ((err = sf_random(cnonce, WIRE_NONCE)) == 0) {
      memcpy(b + 8 + DESC_ID_LEN, cnonce, WIRE_NONCE);
      wire__hello_mac(token, ch + 4, cnonce, d->id, role, b + 8 + DESC_ID_LEN + WIRE_NONCE);
      err = write_by(fd, hello, sizeof hello, deadline);
    }
  }
  if (!err) {
    step = "reading its welcome";
    err = read_by(fd, hdr, sizeof hdr, deadline);
  }
  if (!err && wire_get32(hdr) == W_REFUSED) {
    unsigned char r[4] = {0};
    read_by(fd, r, sizeof r, deadline);
    snprintf(why, whylen, "the memserver %s refused this memtap: %s", server, wire_refusal__name(wire_get32(r)));
    close(fd);
    return -EACCES;
  }
  unsigned char w[W_WELCOME_LEN];
  if (!err) {
    if (wire_get32(hdr) != W_WELCOME || wire_get32(hdr + 4) != W_WELCOME_LEN) err = -EPROTO;
    else err = read_by(fd, w, sizeof w, deadline);
  }
  if (!err) {
    unsigned char want[SHA256_LEN];
    wire__welcome_mac(token, ch + 4, cnonce, d->id, want);
    if (!sf_mac_equal(want, w, SHA256_LEN)) {
      snprintf(why, whylen, "the server at %s does not know the ticket's token: not our memserver", server);
      close(fd);
      return -EACCES;
    }
    if (wire_get32(w + SHA256_LEN) != d->granule_size) err = -EPROTO;
  }
  if (err) {
    snprintf(why, whylen, "hello with the memserver %s failed %s: %s", server, step,
             err == -ETIMEDOUT ? "no answer in time" : err == -EPIPE ? "it closed the connection" : strerror(-err));
    close(fd);
    return err;
  }
  if (!nonblock) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  l->fd = fd;
  return 0;
}

int link__get(struct link *l, const uint32_t *ranges, uint32_t n) {
  size_t len = WIRE_HDR + 8 * (size_t)n;
  unsigned char stackbuf[WIRE_HDR + 8 * 64], *b = len <= sizeof stackbuf ? stackbuf : sf_malloc(len);
  if (!b) return -ENOMEM;
  wire_put32(b, W_GET);
  wire_put32(b + 4, 8 * n);
  for (uint32_t i = 0; i < 2 * n; i++) wire_put32(b + WIRE_HDR + 4 * i, ranges[i]);
  /* Requests are small: even on the non-blocking demand socket they fit its send buffer; the
   * bounded wait only covers a send buffer full because the server stopped reading. */
  int err = write_by(l->fd, b, len, now_ms() + 10000);
  if (b != stackbuf) free(b);
  return err;
}

/* Starts a DATA message from its 16-byte prefix. */
static int start_payload(struct link *l) {
  uint32_t type = wire_get32(l->prefix), len = wire_get32(l->prefix + 4);
  l->first = wire_get32(l->prefix + 8);
  l->count = wire_get32(l->prefix + 12);
  const struct descriptor *d = l->d;
  if (type != W_DATA || l->count == 0 || l->first >= d->n_granules || l->count > d->n_granules - l->first) return -EPROTO;
  uint64_t pages = 0;
  for (uint64_t g = l->first; g < (uint64_t)l->first + l->count; g++) pages += descriptor__granule_data_pages(d, g);
  if ((uint64_t)len != 8 + pages * DESC_PAGE) return -EPROTO;
  l->page = (uint64_t)l->first * d->pages_per_granule;
  l->page_end = (uint64_t)(l->first + l->count) * d->pages_per_granule;
  l->page_done = 0;
  l->in_payload = 1;
  return 0;
}

/* The next data page at or after p, or page_end. */
static uint64_t next_data_page(const struct link *l, uint64_t p) {
  while (p < l->page_end && !descriptor__page_has_data(l->d, p)) p++;
  return p;
}

/* Counts n received payload bytes against the pages of the current message. */
static void advance(struct link *l, size_t n) {
  while (n) {
    size_t room = DESC_PAGE - l->page_done;
    if (n < room) {
      l->page_done += (uint32_t)n;
      return;
    }
    n -= room;
    l->page_done = 0;
    l->pages_received++;
    l->page = next_data_page(l, l->page + 1);
  }
}

/* iovecs for the pages still to come of the current message, from iov[at]; returns the count. */
static int page_iov(struct link *l, struct iovec *iov, int at) {
  int k = at;
  uint64_t p = l->page;
  uint32_t skip = l->page_done;
  while (k < LINK_IOV && p < l->page_end) {
    iov[k].iov_base = l->store + p * DESC_PAGE + skip;
    iov[k].iov_len = DESC_PAGE - skip;
    skip = 0;
    k++;
    p = next_data_page(l, p + 1);
  }
  return k;
}

/*
 * The start of the message the caller expects (link__expect): prefix and pages in one readv, so a
 * fault costs one receive call, not two.
 */
static int receive_expected(struct link *l) {
  const struct descriptor *d = l->d;
  uint32_t first = l->expect_first, count = l->expect_count;
  l->expect_count = 0;
  l->page_end = (uint64_t)(first + count) * d->pages_per_granule; /* before next_data_page: its bound */
  l->page = next_data_page(l, (uint64_t)first * d->pages_per_granule);
  l->page_done = 0;
  struct iovec iov[LINK_IOV];
  iov[0] = (struct iovec){l->prefix, sizeof l->prefix};
  int k = page_iov(l, iov, 1);
  ssize_t n;
  do n = readv(l->fd, iov, k);
  while (n < 0 && errno == EINTR);
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
  if (n == 0) return -EPIPE;
  l->bytes_received += (uint64_t)n;
  if ((size_t)n < sizeof l->prefix) {
    l->prefix_have = (size_t)n; /* the rest goes the ordinary way */
    return 0;
  }
  int err = start_payload(l);
  if (err) return err;
  if (l->first != first || l->count != count) return -EPROTO;
  l->page = next_data_page(l, l->page);
  advance(l, (size_t)n - sizeof l->prefix);
  return 0;
}

int link__receive(struct link *l) {
  if (!l->in_payload && !l->prefix_have && l->expect_count) {
    int err = receive_expected(l);
    if (err) return err;
  }
  for (;;) {
    if (!l->in_payload) {
      ssize_t n = recv(l->fd, l->prefix + l->prefix_have, sizeof l->prefix - l->prefix_have, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
      if (n == 0) return -EPIPE;
      l->bytes_received += (uint64_t)n;
      if ((l->prefix_have += (size_t)n) < sizeof l->prefix) continue;
      l->prefix_have = 0;
      int err = start_payload(l);
      if (err) return err;
      l->page = next_data_page(l, l->page);
    }
    if (l->page >= l->page_end) {
      l->in_payload = 0;
      return 1;
    }
    /* Each data page straight into its place in the store, up to LINK_IOV pages a call. */
    struct iovec iov[LINK_IOV];
    int k = page_iov(l, iov, 0);
    ssize_t n = readv(l->fd, iov, k);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    if (n == 0) return -EPIPE;
    l->bytes_received += (uint64_t)n;
    advance(l, (size_t)n);
  }
}

void link__expect(struct link *l, uint32_t first, uint32_t count) {
  l->expect_first = first;
  l->expect_count = count;
}

int link__receive_ws(struct link *l, uint32_t **pages, uint32_t *n, int timeout_ms) {
  int64_t deadline = now_ms() + timeout_ms;
  unsigned char hdr[WIRE_HDR] = {0}, req[WIRE_HDR] = {0};
  wire_put32(req, W_WS_GET);
  int err = write_by(l->fd, req, sizeof req, deadline);
  /* The fill socket is blocking: make the reads below bounded all the same. */
  struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
  setsockopt(l->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (!err) err = sf_read_full(l->fd, hdr, sizeof hdr) == (ssize_t)sizeof hdr ? 0 : -EPIPE;
  uint32_t len = wire_get32(hdr + 4);
  if (!err && (wire_get32(hdr) != W_WS || len % 4 || len / 4 > l->d->n_pages)) err = -EPROTO;
  unsigned char *b = NULL;
  if (!err && !(b = sf_malloc(len ? len : 1))) err = -ENOMEM;
  if (!err && len && sf_read_full(l->fd, b, len) != (ssize_t)len) err = -EPIPE;
  if (!err && !(*pages = sf_array(len / 4 ? len / 4 : 1, sizeof(uint32_t)))) err = -ENOMEM;
  if (!err) {
    for (uint32_t i = 0; i < len / 4; i++) (*pages)[i] = wire_get32(b + 4 * i);
    *n = len / 4;
    l->bytes_received += WIRE_HDR + len;
  }
  free(b);
  return err;
}

int link__granule_ok(const struct link *l, uint64_t g) {
  const struct descriptor *d = l->d;
  uint32_t i = d->sum_index[g];
  if (i == DESC_NO_SUM) return 1;
  return crc32c(0, l->store + (g << d->granule_shift), d->granule_size) == d->sums[i];
}

void link__close(struct link *l) {
  if (l->fd >= 0) close(l->fd);
  l->fd = -1;
}
