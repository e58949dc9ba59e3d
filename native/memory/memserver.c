/*
 * memserver: serves a template's frozen RAM file to the memtaps of one ticket (SnowFlock's
 * memserver, on the parent's host).
 *
 *   memserver --desc FILE --ram FILE --listen ADDR:PORT [--ws FILE] [--record-ws FILE] [--no-verify] [--stay]
 *             [--spin-us US] [--mcast-group ADDR [--mcast-receivers N] [--mcast-rate BYTES] [--mcast-push ws|all]]
 *
 * stdin: the first line is the ticket's token ("token <hex>", see wire.h); then control lines:
 *   counters        -> "counters {json}"
 *   save-ws         -> "saved-ws N" (writes --record-ws now; it is also written at exit, and
 *                      whenever the last memtap leaves after new pages were recorded, and after a
 *                      second without faults: a memserver ended by SIGKILL loses little or nothing)
 *   corrupt G       -> "corrupt G": damages the next transmission of granule G (a test hook: the
 *                      memtap must refuse it and fetch it again); "corrupt next": of whichever
 *                      data granule goes out next
 *   stop, or EOF    -> exits (EOF: the owner died, so nothing outlives it); with --stay (a kept
 *                      ticket's memserver, which outlives its owner) EOF is ignored and SIGTERM ends it
 * stdout: "listening ADDR:PORT" once it accepts clients, then the answers above.
 *
 * One thread, one epoll loop, non-blocking sockets. Before serving, the RAM file is checked
 * against the descriptor (a template changed under us would hand clones wrong memory).
 *
 * Copies: a DATA message is a small header and the granules' data pages sent with sendfile()
 * straight from the RAM file's page cache (tmpfs): the bytes are never copied into this process.
 * That is safe because the file is frozen: nothing writes a template's RAM after its checkpoint.
 *
 * Polling: after a turn that served a fault, the loop polls (epoll_wait with no timeout) for up to
 * --spin-us (default 30) before it sleeps, while a CPU is free (idle.h): faults come in bursts, and
 * the next one then finds the server awake.
 *
 * Batching: a GET carries many ranges and each range becomes one DATA message; consecutive data
 * pages of a range go out in one sendfile(); every readable request on a connection is parsed
 * before anything is sent, and a connection gets a bounded share of each loop turn so that a
 * fill's big batches never hold up another memtap's fault.
 *
 * Multicast (--mcast-group, SnowFlock's mcdist: native/mcast): a sender beside the unicast
 * queues, on the listen address and port (UDP), pushes to the ticket's group, as soon as
 * --mcast-receivers memtaps joined, the recorded working set (--mcast-push ws, the default) or
 * every data granule, the working set first (all, and ws while none is recorded yet); it
 * repairs what they NACK and paces itself to the slowest. Every demand range that passes
 * serve_ranges() is also handed to it: the faulting host gets its answer by unicast as before, the
 * others, about to fault on the same pages, get them from the group once (duplicates arriving
 * together are dropped). The memtaps then need no unicast fill. Its loop is one more fd of ours,
 * stepped every turn.
 *
 * Why the working set only by default: pushing all of a template costs every host its whole RAM
 * (117 MiB of data pages for the test image) where a job's clones touch a working set (15 MiB for
 * a hello); the push of everything sent more bytes than unicast fetches below 8 hosts and slowed
 * provisioning 1.5-2.2x on a 2-core machine (benchmarks/RESULTS.md, memory-push). Without a
 * working set (a template's first job) there is nothing better to push than everything: that
 * run's recorded working set is then only what faulted ahead of the push, and the next runs add
 * what they fault on beyond it.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "common/sf.h"
#include "memory/crc32c.h"
#include "memory/descriptor.h"
#include "memory/idle.h"
#include "memory/multicast.h"
#include "memory/wire.h"
#include "memory/workset.h"

#define MAX_CONNS 1024
#define IN_CAP (WIRE_HDR + 8 * W_GET_MAX_RANGES)
#define TURN_BUDGET (1u << 20)       /* bytes one connection may send per loop turn */
#define QUEUE_HIGH (8u << 20)        /* stop reading a connection's requests above this backlog */
#define HELLO_TIMEOUT_MS 5000
#define CORRUPT_ANY (-2)

enum tag { T_LISTEN, T_CONTROL, T_SIGNAL, T_TIMER, T_MCAST, T_CONN };

/* One piece of a connection's output: bytes of ours, or a range of the RAM file. */
struct item {
  enum { I_INLINE, I_HEAP, I_FILE } kind;
  uint32_t len;
  uint64_t off;                /* I_FILE */
  unsigned char *heap;         /* I_HEAP */
  unsigned char inl[WIRE_HDR + 8 + SHA256_LEN + 4];
};

struct conn {
  enum tag tag;
  int fd;
  enum { C_HELLO, C_READY, C_CLOSING } state;
  uint32_t role;
  char peer[64];
  unsigned char snonce[WIRE_NONCE], cnonce[WIRE_NONCE];
  uint64_t hello_deadline;
  unsigned char in[IN_CAP];
  size_t in_len;
  struct item *q;
  size_t qhead, qlen, qcap;
  uint32_t qdone;              /* bytes of the head item already sent */
  uint64_t qbytes;
  uint32_t events;
  int dead;
  struct conn *next;
};

struct counters {
  uint64_t accepted, refused_auth, refused_template, refused_version, hello_timeouts, errors;
  uint64_t requests, ranges, granules_sent, zero_requests, data_bytes, bytes_sent, demand_granules, fill_granules;
  uint64_t sendfile_calls, corrupted;
  uint64_t resent;             /* data granules sent before (to any client): with one host, a fetch twice */
};

struct server {
  struct descriptor d;
  int ram_fd;
  struct wire_token token;
  int ep, lfd, sfd, tfd;
  enum tag listen_tag, control_tag, signal_tag, timer_tag, mcast_tag;
  struct conn *conns;
  struct conn *dead;              /* closed this loop turn, freed at its end */
  int n_conns;
  char listen_addr[96];
  struct workset ws;              /* served to memtaps for their fill order */
  const char *record_path;        /* where the working set of this run goes */
  unsigned char *recorded;        /* per granule: already in the recorded working set */
  uint32_t *order;
  uint32_t n_order;
  uint32_t n_saved;               /* n_order when the working set was last written */
  int stay;                       /* --stay: stdin's EOF does not end us */
  int spin_us;                    /* --spin-us: poll this long after serving a fault */
  int spin_now;                   /* the gate (idle.h), as of the last timer tick */
  int served_demand;              /* this loop turn served a demand request */
  uint64_t last_demand_ms;        /* when the last demand request came */
  int64_t corrupt_next;           /* granule whose next transmission is damaged, -1 none */
  unsigned char *sent;            /* per granule: sent at least once */
  struct mc_sender *mc;           /* --mcast-group: the push to the ticket's group, or NULL */
  struct mc_geometry geo;
  const unsigned char *ram_map;   /* the RAM file mapped read-only, for the sender */
  int mc_failed;                  /* the sender failed once: said so, unicast goes on alone */
  char ctl[4096];
  size_t ctl_len;
  int stopping;
  struct counters c;
};

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- output queues ---- */

static struct item *queue__push(struct conn *c) {
  if (c->qlen == c->qcap) {
    size_t cap = c->qcap ? 2 * c->qcap : 16;
    struct item *q = sf_array(cap, sizeof *q);
    if (!q) return NULL;
    for (size_t i = 0; i < c->qlen; i++) q[i] = c->q[(c->qhead + i) % c->qcap];
    free(c->q);
    c->q = q;
    c->qcap = cap;
    c->qhead = 0;
  }
  struct item *it = &c->q[(c->qhead + c->qlen++) % c->qcap];
  memset(it, 0, sizeof *it);
  return it;
}

static void queue__pop(struct conn *c) {
  struct item *it = &c->q[c->qhead];
  if (it->kind == I_HEAP) free(it->heap);
  c->qbytes -= it->len;
  c->qhead = (c->qhead + 1) % c->qcap;
  c->qlen--;
  c->qdone = 0;
}

/* Queues a message of our own (header and a small body). */
static int queue_msg(struct conn *c, uint32_t type, const void *body, uint32_t len) {
  struct item *it = queue__push(c);
  if (!it) return -ENOMEM;
  if (WIRE_HDR + len > sizeof it->inl) return -EINVAL;
  it->kind = I_INLINE;
  wire_put32(it->inl, type);
  wire_put32(it->inl + 4, len);
  memcpy(it->inl + WIRE_HDR, body, len);
  it->len = WIRE_HDR + len;
  c->qbytes += it->len;
  return 0;
}

static int queue_file(struct conn *c, uint64_t off, uint32_t len) {
  struct item *it = queue__push(c);
  if (!it) return -ENOMEM;
  it->kind = I_FILE;
  it->off = off;
  it->len = len;
  c->qbytes += len;
  return 0;
}

/*
 * Queues DATA for granules [first, first + count): a header, then one file range per run of
 * consecutive data pages. A damaged copy (the corrupt hook) is read into memory instead.
 */
static int queue_data(struct server *s, struct conn *c, uint32_t first, uint32_t count) {
  const struct descriptor *d = &s->d;
  uint64_t p0 = (uint64_t)first * d->pages_per_granule, p1 = (uint64_t)(first + count) * d->pages_per_granule;
  uint32_t pages = 0;
  for (uint64_t g = first; g < (uint64_t)first + count; g++) pages += descriptor__granule_data_pages(d, g);
  unsigned char body[8];
  wire_put32(body, first);
  wire_put32(body + 4, count);
  struct item *it = queue__push(c);
  if (!it) return -ENOMEM;
  it->kind = I_INLINE;
  wire_put32(it->inl, W_DATA);
  wire_put32(it->inl + 4, 8 + pages * DESC_PAGE);
  memcpy(it->inl + WIRE_HDR, body, 8);
  it->len = WIRE_HDR + 8;
  c->qbytes += it->len;

  int64_t target = -1;
  if (s->corrupt_next == CORRUPT_ANY) {
    for (uint64_t g = first; g < (uint64_t)first + count && target < 0; g++)
      if (!descriptor__granule_is_zero(d, g)) target = (int64_t)g;
  } else if (s->corrupt_next >= first && s->corrupt_next < (int64_t)first + count && !descriptor__granule_is_zero(d, (uint64_t)s->corrupt_next)) {
    target = s->corrupt_next;
  }
  if (target >= 0) {
    unsigned char *buf = sf_malloc((size_t)pages * DESC_PAGE);
    if (!buf) return -ENOMEM;
    size_t at = 0, flip = SIZE_MAX;
    for (uint64_t p = p0; p < p1; p++) {
      if (!descriptor__page_has_data(d, p)) continue;
      if (flip == SIZE_MAX && p / d->pages_per_granule == (uint64_t)target) flip = at;
      if (pread(s->ram_fd, buf + at, DESC_PAGE, (off_t)(p * DESC_PAGE)) != DESC_PAGE) {
        free(buf);
        return -EIO;
      }
      at += DESC_PAGE;
    }
    buf[flip + 123] ^= 0x40; /* one bit of the granule's first data page */
    struct item *h = queue__push(c);
    if (!h) {
      free(buf);
      return -ENOMEM;
    }
    h->kind = I_HEAP;
    h->heap = buf;
    h->len = (uint32_t)at;
    c->qbytes += at;
    s->corrupt_next = -1;
    s->c.corrupted++;
    return 0;
  }
  for (uint64_t p = p0; p < p1;) {
    if (!descriptor__page_has_data(d, p)) {
      p++;
      continue;
    }
    uint64_t run = p;
    while (run < p1 && descriptor__page_has_data(d, run)) run++;
    int err = queue_file(c, p * DESC_PAGE, (uint32_t)((run - p) * DESC_PAGE));
    if (err) return err;
    p = run;
  }
  s->c.data_bytes += (uint64_t)pages * DESC_PAGE;
  return 0;
}

/* Sends what the connection's queue holds, up to budget bytes; 1 when more is left, 0 done, -errno. */
static int conn__flush(struct server *s, struct conn *c, uint32_t budget) {
  while (c->qlen && budget) {
    struct item *it = &c->q[c->qhead];
    uint32_t left = it->len - c->qdone, want = left < budget ? left : budget;
    ssize_t n;
    if (it->kind == I_FILE) {
      off_t off = (off_t)(it->off + c->qdone);
      n = sendfile(c->fd, s->ram_fd, &off, want);
      s->c.sendfile_calls++;
    } else {
      const unsigned char *p = (it->kind == I_HEAP ? it->heap : it->inl) + c->qdone;
      /* MSG_MORE only when more follows at once: a lone header must not wait for company. */
      n = send(c->fd, p, want, MSG_NOSIGNAL | (c->qlen > 1 ? MSG_MORE : 0));
    }
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
      return -errno;
    }
    if (n == 0) return -EPIPE;
    c->qdone += (uint32_t)n;
    budget -= (uint32_t)n;
    s->c.bytes_sent += (uint64_t)n;
    if (c->qdone == it->len) queue__pop(c);
  }
  return c->qlen ? 1 : 0;
}

/* ---- connections ---- */

static int save_ws(struct server *s);

static void conn__set_events(struct server *s, struct conn *c) {
  uint32_t ev = 0;
  if (c->state != C_CLOSING && c->qbytes < QUEUE_HIGH) ev |= EPOLLIN;
  if (c->qlen) ev |= EPOLLOUT;
  if (ev == c->events) return;
  struct epoll_event e = {.events = ev, .data.ptr = c};
  if (epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &e) == 0) c->events = ev;
}

/*
 * Closes a connection now; its memory goes at the end of the loop turn, because later events of
 * the same turn may still name it.
 */
static void conn__close(struct server *s, struct conn *c) {
  if (c->dead) return;
  for (struct conn **p = &s->conns; *p; p = &(*p)->next) {
    if (*p == c) {
      *p = c->next;
      break;
    }
  }
  epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  while (c->qlen) queue__pop(c);
  c->dead = 1;
  c->next = s->dead;
  s->dead = c;
  s->n_conns--;
  /* The last memtap left (a job's clones are done): keep what it taught us about the template. */
  if (s->n_conns == 0 && s->n_order > s->n_saved) (void)save_ws(s);
}

static void bury(struct server *s) {
  while (s->dead) {
    struct conn *c = s->dead;
    s->dead = c->next;
    free(c->q);
    free(c);
  }
}

static void refuse(struct server *s, struct conn *c, uint32_t reason) {
  unsigned char b[4];
  wire_put32(b, reason);
  if (reason == REFUSE_AUTH) s->c.refused_auth++;
  else if (reason == REFUSE_TEMPLATE) s->c.refused_template++;
  else if (reason == REFUSE_VERSION) s->c.refused_version++;
  sf_err(0, "refused %s: %s", c->peer, wire_refusal__name(reason));
  if (queue_msg(c, W_REFUSED, b, sizeof b) == 0) c->state = C_CLOSING;
}

static int on_hello(struct server *s, struct conn *c, const unsigned char *b, uint32_t len) {
  if (len != W_HELLO_LEN) return -EPROTO;
  uint32_t version = wire_get32(b), role = wire_get32(b + 4);
  const unsigned char *id = b + 8, *cnonce = id + DESC_ID_LEN, *mac = cnonce + WIRE_NONCE;
  if (version != WIRE_VERSION) {
    refuse(s, c, REFUSE_VERSION);
    return 0;
  }
  /* The MAC first: a client without the token learns nothing, not even which template this is. */
  unsigned char want[SHA256_LEN];
  wire__hello_mac(&s->token, c->snonce, cnonce, id, role, want);
  if (!sf_mac_equal(want, mac, SHA256_LEN) || (role != ROLE_DEMAND && role != ROLE_FILL)) {
    refuse(s, c, REFUSE_AUTH);
    return 0;
  }
  if (memcmp(id, s->d.id, DESC_ID_LEN)) {
    refuse(s, c, REFUSE_TEMPLATE);
    return 0;
  }
  memcpy(c->cnonce, cnonce, WIRE_NONCE);
  c->role = role;
  c->state = C_READY;
  unsigned char w[W_WELCOME_LEN];
  wire__welcome_mac(&s->token, c->snonce, c->cnonce, s->d.id, w);
  wire_put32(w + SHA256_LEN, s->d.granule_size);
  return queue_msg(c, W_WELCOME, w, sizeof w);
}

/* The recorded working set: the first page of every granule a demand connection asked for, once,
 * after the working set this memserver was started with (--ws). */
static void record(struct server *s, uint32_t first, uint32_t count) {
  if (!s->record_path) return;
  for (uint64_t g = first; g < (uint64_t)first + count; g++) {
    if (s->recorded[g] || descriptor__granule_is_zero(&s->d, g)) continue;
    s->recorded[g] = 1;
    s->order[s->n_order++] = (uint32_t)(g * s->d.pages_per_granule);
  }
}

/* ---- multicast ---- */

/* The sender failed (its socket, the network): one line, then unicast serves alone. */
static void mcast__failed(struct server *s, int err) {
  if (s->mc_failed) return;
  s->mc_failed = 1;
  sf_err(err, "multicast to the ticket's group stops (%s); the memtaps fetch by unicast", mc_sender__error(s->mc));
}

/* Hosts that have not faulted on these granules yet are about to: they go to the group once. */
static void mcast__demand(struct server *s, uint32_t first, uint32_t count) {
  if (!s->mc || s->mc_failed) return;
  for (uint64_t g = first; g < (uint64_t)first + count; g++) {
    if (descriptor__granule_is_zero(&s->d, g)) continue;
    int err = mc_sender__demand(s->mc, (uint32_t)g);
    if (err < 0) return mcast__failed(s, err);
  }
}

static void mcast__step(struct server *s) {
  if (!s->mc || s->mc_failed) return;
  int err = mc_sender__step(s->mc);
  if (err < 0) mcast__failed(s, err);
}

static int mcast__timeout_ms(const struct server *s) { return s->mc && !s->mc_failed ? mc_sender__timeout_ms(s->mc) : -1; }

/*
 * Opens the sender on the listen address and port, and orders the push: the working set this
 * memserver was given (pages, as granules), then every other data granule. -EINVAL with why set
 * when the channel cannot be (a group out of 239/8, a listen address of 0.0.0.0).
 */
static int mcast__open(struct server *s, const char *group, uint32_t receivers, uint64_t rate, int ws_only, const char **why) {
  char host[64];
  const char *colon = strrchr(s->listen_addr, ':');
  snprintf(host, sizeof host, "%.*s", (int)(colon - s->listen_addr), s->listen_addr);
  struct mc_channel ch;
  int err = multicast__channel(&ch, group, host, (uint16_t)atoi(colon + 1), host, &s->token, why);
  if (err < 0) return err;
  void *map = mmap(NULL, s->d.ram_size, PROT_READ, MAP_SHARED, s->ram_fd, 0);
  if (map == MAP_FAILED) return -errno;
  s->ram_map = map;
  multicast__geometry(&s->d, &s->geo);
  struct mc_sender_options o;
  mc_sender_options__defaults(&o);
  o.ram = s->ram_map;
  o.min_receivers = receivers;
  o.push_first_only = ws_only && s->ws.n > 0;
  if (rate) o.max_rate = rate, o.start_rate = 0;
  if (o.min_rate > o.max_rate) o.min_rate = o.max_rate;
  err = mc_sender__open(&s->mc, &ch, &s->geo, &o);
  explicit_bzero(&ch, sizeof ch);
  if (err < 0) return *why = "the sender did not open", err;
  uint32_t *first = sf_array(s->ws.n ? s->ws.n : 1, sizeof *first);
  if (!first) return -ENOMEM;
  for (uint32_t i = 0; i < s->ws.n; i++) first[i] = (uint32_t)(s->ws.pages[i] >> (s->d.granule_shift - DESC_PAGE_SHIFT));
  err = mc_sender__push(s->mc, first, s->ws.n);
  free(first);
  return err;
}

/* Every request of every client passes here. */
static int serve_ranges(struct server *s, struct conn *c, const unsigned char *b, uint32_t len) {
  if (len % 8 || len / 8 > W_GET_MAX_RANGES) return -EPROTO;
  s->c.requests++;
  uint32_t max_count = W_DATA_MAX / s->d.granule_size;
  uint64_t total = 0;
  for (uint32_t i = 0; i < len / 8; i++) {
    uint32_t first = wire_get32(b + 8 * i), count = wire_get32(b + 8 * i + 4);
    if (count == 0 || count > max_count || first >= s->d.n_granules || count > s->d.n_granules - first) return -EPROTO;
    /* One request may ask for at most W_GET_MAX_BYTES: a client cannot make us queue the world. */
    if ((total += (uint64_t)count * s->d.granule_size) > W_GET_MAX_BYTES) return -EPROTO;
    s->c.ranges++;
    for (uint64_t g = first; g < (uint64_t)first + count; g++) {
      if (descriptor__granule_is_zero(&s->d, g)) s->c.zero_requests++;
      else if (s->sent[g]) s->c.resent++;
      else s->sent[g] = 1;
    }
    s->c.granules_sent += count;
    if (c->role == ROLE_DEMAND) {
      s->c.demand_granules += count, record(s, first, count), s->served_demand = 1, s->last_demand_ms = now_ms();
      mcast__demand(s, first, count);
    } else {
      s->c.fill_granules += count;
    }
    int err = queue_data(s, c, first, count);
    if (err) return err;
  }
  return 0;
}

static int send_ws(struct server *s, struct conn *c) {
  uint32_t n = s->ws.n;
  unsigned char *buf = sf_malloc(WIRE_HDR + 4 * (size_t)n);
  if (!buf) return -ENOMEM;
  wire_put32(buf, W_WS);
  wire_put32(buf + 4, 4 * n);
  for (uint32_t i = 0; i < n; i++) wire_put32(buf + WIRE_HDR + 4 * i, s->ws.pages[i]);
  struct item *it = queue__push(c);
  if (!it) {
    free(buf);
    return -ENOMEM;
  }
  it->kind = I_HEAP;
  it->heap = buf;
  it->len = WIRE_HDR + 4 * n;
  c->qbytes += it->len;
  return 0;
}

/* Parses every complete message in the input buffer. */
static int conn__parse(struct server *s, struct conn *c) {
  size_t at = 0;
  int err = 0;
  while (!err && c->state != C_CLOSING && c->in_len - at >= WIRE_HDR) {
    uint32_t type = wire_get32(c->in + at), len = wire_get32(c->in + at + 4);
    if (len > IN_CAP - WIRE_HDR) return -EPROTO;
    if (c->in_len - at < WIRE_HDR + len) break;
    const unsigned char *body = c->in + at + WIRE_HDR;
    if (c->state == C_HELLO) err = type == W_HELLO ? on_hello(s, c, body, len) : -EPROTO;
    else if (type == W_GET) err = serve_ranges(s, c, body, len);
    else if (type == W_WS_GET && len == 0) err = send_ws(s, c);
    else err = -EPROTO;
    at += WIRE_HDR + len;
  }
  memmove(c->in, c->in + at, c->in_len - at);
  c->in_len -= at;
  return err;
}

static void conn__input(struct server *s, struct conn *c) {
  for (;;) {
    if (c->in_len == IN_CAP) break;
    ssize_t n = recv(c->fd, c->in + c->in_len, IN_CAP - c->in_len, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) {
      /* A memtap going away is normal at the end of a job. */
      if (n < 0) s->c.errors++;
      conn__close(s, c);
      return;
    }
    c->in_len += (size_t)n;
    /* Less than asked for: the socket is drained; skip the recv that would say EAGAIN. */
    if (c->qbytes >= QUEUE_HIGH || c->in_len < IN_CAP) break;
  }
  int err = conn__parse(s, c);
  if (err) {
    s->c.errors++;
    sf_err(err, "closing %s: bad request", c->peer);
    conn__close(s, c);
    return;
  }
  /* Answer at once: the socket is writable nearly always, and EPOLLOUT is armed only when not. */
  if (c->qlen) {
    int r = conn__flush(s, c, TURN_BUDGET);
    if (r < 0 || (r == 0 && c->state == C_CLOSING)) {
      conn__close(s, c); /* an error, or a refusal delivered */
      return;
    }
  }
  conn__set_events(s, c);
}

static void conn__output(struct server *s, struct conn *c) {
  int r = conn__flush(s, c, TURN_BUDGET);
  if (r < 0) {
    if (r != -EPIPE && r != -ECONNRESET) {
      s->c.errors++;
      sf_err(r, "sending to %s", c->peer);
    }
    conn__close(s, c);
    return;
  }
  if (r == 0 && c->state == C_CLOSING) {
    conn__close(s, c);
    return;
  }
  /* Requests held back by a full queue can go on now. */
  if (c->in_len && c->qbytes < QUEUE_HIGH && conn__parse(s, c) < 0) {
    conn__close(s, c);
    return;
  }
  conn__set_events(s, c);
}

static void on_accept(struct server *s) {
  for (;;) {
    struct sockaddr_in6 sa;
    socklen_t sl = sizeof sa;
    int fd = accept4(s->lfd, (struct sockaddr *)&sa, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) sf_err(-errno, "accept");
      return;
    }
    if (s->n_conns >= MAX_CONNS) {
      close(fd);
      continue;
    }
    struct conn *c = sf_calloc(1, sizeof *c);
    if (!c) {
      close(fd);
      continue;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->tag = T_CONN;
    c->fd = fd;
    c->hello_deadline = now_ms() + HELLO_TIMEOUT_MS;
    char host[INET6_ADDRSTRLEN] = "?";
    if (sa.sin6_family == AF_INET) inet_ntop(AF_INET, &((struct sockaddr_in *)&sa)->sin_addr, host, sizeof host);
    else inet_ntop(AF_INET6, &sa.sin6_addr, host, sizeof host);
    snprintf(c->peer, sizeof c->peer, "%s:%u", host, ntohs(sa.sin6_port));
    unsigned char ch[W_CHALLENGE_LEN];
    wire_put32(ch, WIRE_VERSION);
    if (sf_random(c->snonce, WIRE_NONCE) < 0 || (memcpy(ch + 4, c->snonce, WIRE_NONCE), queue_msg(c, W_CHALLENGE, ch, sizeof ch)) < 0) {
      close(fd);
      free(c->q);
      free(c);
      continue;
    }
    struct epoll_event e = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &e) < 0) {
      close(fd);
      while (c->qlen) queue__pop(c);
      free(c->q);
      free(c);
      continue;
    }
    c->events = e.events;
    c->next = s->conns;
    s->conns = c;
    s->n_conns++;
    s->c.accepted++;
  }
}

static void on_timer(struct server *s) {
  uint64_t ticks;
  if (read(s->tfd, &ticks, sizeof ticks) < 0) return;
  s->spin_now = s->spin_us && idle__cpu_free();
  /* A quiet second after new faults: the clones are up and working; keep what they taught us. */
  if (s->n_order > s->n_saved && now_ms() - s->last_demand_ms > 1000) (void)save_ws(s);
  uint64_t now = now_ms();
  for (struct conn *c = s->conns, *next; c; c = next) {
    next = c->next;
    if (c->state == C_HELLO && now > c->hello_deadline) {
      s->c.hello_timeouts++;
      conn__close(s, c);
    }
  }
}

/* ---- control channel ---- */

static void print_counters(struct server *s) {
  const struct counters *c = &s->c;
  char mc[1024];
  multicast__sender_json(s->mc, mc, sizeof mc);
  printf("counters {\"clients\":%d,\"accepted\":%" PRIu64 ",\"refusedAuth\":%" PRIu64 ",\"refusedTemplate\":%" PRIu64
         ",\"refusedVersion\":%" PRIu64 ",\"helloTimeouts\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"requests\":%" PRIu64
         ",\"ranges\":%" PRIu64 ",\"granulesSent\":%" PRIu64 ",\"demandGranules\":%" PRIu64 ",\"fillGranules\":%" PRIu64
         ",\"zeroRequests\":%" PRIu64 ",\"dataBytes\":%" PRIu64 ",\"bytesSent\":%" PRIu64 ",\"sendfileCalls\":%" PRIu64
         ",\"corrupted\":%" PRIu64 ",\"resent\":%" PRIu64 ",\"recordedPages\":%u,\"granuleSize\":%u,\"multicast\":%s}\n",
         s->n_conns, c->accepted, c->refused_auth, c->refused_template, c->refused_version, c->hello_timeouts, c->errors,
         c->requests, c->ranges, c->granules_sent, c->demand_granules, c->fill_granules, c->zero_requests, c->data_bytes,
         c->bytes_sent, c->sendfile_calls, c->corrupted, c->resent, s->n_order, s->d.granule_size, mc);
  fflush(stdout);
}

static int save_ws(struct server *s) {
  if (!s->record_path) return 0;
  int err = workset__write(s->record_path, &s->d, s->order, s->n_order);
  if (err) sf_err(err, "cannot write the working set %s", s->record_path);
  else s->n_saved = s->n_order;
  return err;
}

static void on_control_line(struct server *s, char *line) {
  long g;
  if (!strcmp(line, "counters")) print_counters(s);
  else if (!strcmp(line, "save-ws")) {
    if (save_ws(s) == 0) printf("saved-ws %u\n", s->n_order);
    else printf("error cannot write the working set\n");
  } else if (!strcmp(line, "corrupt next")) {
    s->corrupt_next = CORRUPT_ANY;
    printf("corrupt next\n");
  } else if (!strncmp(line, "corrupt ", 8) && sf_parse_long(line + 8, 0, (long)s->d.n_granules - 1, &g) == 0) {
    s->corrupt_next = g;
    printf("corrupt %ld\n", g);
  } else if (!strcmp(line, "stop")) s->stopping = 1;
  else printf("error unknown command: %.60s\n", line);
  fflush(stdout);
}

static void on_control(struct server *s) {
  ssize_t n = read(STDIN_FILENO, s->ctl + s->ctl_len, sizeof s->ctl - 1 - s->ctl_len);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    if (!s->stay) s->stopping = 1; /* the owner is gone */
    else epoll_ctl(s->ep, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
    return;
  }
  s->ctl_len += (size_t)n;
  s->ctl[s->ctl_len] = 0;
  char *start = s->ctl, *nl;
  while ((nl = strchr(start, '\n'))) {
    *nl = 0;
    on_control_line(s, start);
    start = nl + 1;
  }
  s->ctl_len -= (size_t)(start - s->ctl);
  memmove(s->ctl, start, s->ctl_len);
  if (s->ctl_len == sizeof s->ctl - 1) s->ctl_len = 0; /* a line too long to be a command */
}

/* ---- setup ---- */

static int listen_on(struct server *s, const char *spec) {
  char host[64];
  const char *colon = strrchr(spec, ':');
  long port;
  if (!colon || (size_t)(colon - spec) >= sizeof host || sf_parse_long(colon + 1, 0, 65535, &port) < 0) return -EINVAL;
  memcpy(host, spec, (size_t)(colon - spec));
  host[colon - spec] = 0;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) return -EINVAL;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 128) < 0) {
    int err = -errno;
    close(fd);
    return err;
  }
  socklen_t sl = sizeof sa;
  getsockname(fd, (struct sockaddr *)&sa, &sl);
  snprintf(s->listen_addr, sizeof s->listen_addr, "%s:%u", host, ntohs(sa.sin_port));
  s->lfd = fd;
  return 0;
}

static int watch(struct server *s, int fd, enum tag *tag) {
  struct epoll_event e = {.events = EPOLLIN, .data.ptr = tag};
  return epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &e) < 0 ? -errno : 0;
}

static int setup_loop(struct server *s) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigprocmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);
  s->listen_tag = T_LISTEN, s->control_tag = T_CONTROL, s->signal_tag = T_SIGNAL, s->timer_tag = T_TIMER, s->mcast_tag = T_MCAST;
  if ((s->ep = epoll_create1(EPOLL_CLOEXEC)) < 0) return -errno;
  if ((s->sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) return -errno;
  if ((s->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK)) < 0) return -errno;
  struct itimerspec it = {.it_interval = {0, 250000000}, .it_value = {0, 250000000}};
  timerfd_settime(s->tfd, 0, &it, NULL);
  int err;
  if ((err = watch(s, s->lfd, &s->listen_tag)) || (err = watch(s, STDIN_FILENO, &s->control_tag)) ||
      (err = watch(s, s->sfd, &s->signal_tag)) || (err = watch(s, s->tfd, &s->timer_tag)) ||
      (s->mc && (err = watch(s, mc_sender__fd(s->mc), &s->mcast_tag))))
    return err;
  return 0;
}

static uint64_t now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000;
}

static void run(struct server *s) {
  struct epoll_event ev[64];
  uint64_t spin_until = 0;
  while (!s->stopping) {
    int poll = spin_until && now_us() < spin_until;
    int n = epoll_wait(s->ep, ev, SF_ARRAY_LEN(ev), poll ? 0 : mcast__timeout_ms(s));
    if (n < 0) {
      if (errno == EINTR) continue;
      sf_err(-errno, "epoll_wait");
      return;
    }
    /* The sender's turn comes every turn: what it heard, its timers, what pacing lets out. */
    mcast__step(s);
    if (n == 0) continue;
    s->served_demand = 0;
    /* Demand connections first: a fault is waiting behind each of their requests. */
    for (int pass = 0; pass < 2; pass++) {
      for (int i = 0; i < n; i++) {
        enum tag *tag = ev[i].data.ptr;
        if (*tag != T_CONN) {
          if (pass == 1) continue;
          if (*tag == T_LISTEN) on_accept(s);
          else if (*tag == T_CONTROL) on_control(s);
          else if (*tag == T_TIMER) on_timer(s);
          else if (*tag == T_SIGNAL) s->stopping = 1;
          /* T_MCAST: stepped above. */
          continue;
        }
        struct conn *c = (struct conn *)tag;
        if (c->dead || (c->role == ROLE_FILL) != (pass == 1)) continue;
        if (ev[i].events & (EPOLLERR | EPOLLHUP) && !(ev[i].events & EPOLLIN)) {
          conn__close(s, c);
          continue;
        }
        if (ev[i].events & EPOLLIN) conn__input(s, c);
        if (!c->dead && c->qlen && ev[i].events & EPOLLOUT) conn__output(s, c);
      }
    }
    bury(s);
    if (s->served_demand && s->spin_now) spin_until = now_us() + (uint64_t)s->spin_us;
  }
}

static void usage(void) {
  sf_die(2, 0, "usage: memserver --desc FILE --ram FILE --listen ADDR:PORT [--ws FILE] [--record-ws FILE] [--no-verify] [--stay] [--spin-us US] "
               "[--mcast-group ADDR [--mcast-receivers N] [--mcast-rate BYTES] [--mcast-push ws|all]] (token on stdin)");
}

int main(int argc, char **argv) {
  sf_prog("memserver");
  const char *desc = NULL, *ram = NULL, *listen_spec = NULL, *ws = NULL, *mc_group = NULL;
  uint32_t mc_receivers = 1;
  int mc_ws_only = 1;
  uint64_t mc_rate = 0;
  int verify = 1;
  static struct server srv = {.corrupt_next = -1, .lfd = -1, .ram_fd = -1, .spin_us = 30};
  struct server *s = &srv;
  static const struct option opts[] = {
    {"desc", required_argument, 0, 'd'}, {"ram", required_argument, 0, 'r'}, {"listen", required_argument, 0, 'l'},
    {"ws", required_argument, 0, 'w'}, {"record-ws", required_argument, 0, 'R'}, {"no-verify", no_argument, 0, 'n'},
    {"stay", no_argument, 0, 'S'}, {"spin-us", required_argument, 0, 'P'}, {"mcast-group", required_argument, 0, 'g'},
    {"mcast-receivers", required_argument, 0, 'N'}, {"mcast-rate", required_argument, 0, 'B'}, {"mcast-push", required_argument, 0, 'U'},
    {0, 0, 0, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'd': desc = optarg; break;
    case 'r': ram = optarg; break;
    case 'l': listen_spec = optarg; break;
    case 'w': ws = optarg; break;
    case 'R': s->record_path = optarg; break;
    case 'n': verify = 0; break;
    case 'S': s->stay = 1; break;
    case 'P': {
      long v;
      if (sf_parse_long(optarg, 0, 10000, &v) < 0) sf_die(2, 0, "--spin-us %s: microseconds from 0 to 10000", optarg);
      s->spin_us = (int)v;
      break;
    }
    case 'g': mc_group = optarg; break;
    case 'N': {
      long v;
      if (sf_parse_long(optarg, 1, MC_MAX_RECEIVERS, &v) < 0) sf_die(2, 0, "--mcast-receivers %s: a count from 1 to %d", optarg, MC_MAX_RECEIVERS);
      mc_receivers = (uint32_t)v;
      break;
    }
    case 'U':
      if (strcmp(optarg, "ws") && strcmp(optarg, "all")) sf_die(2, 0, "--mcast-push %s: expected ws or all", optarg);
      mc_ws_only = !strcmp(optarg, "ws");
      break;
    case 'B':
      if (sf_parse_size(optarg, &mc_rate) < 0 || mc_rate < (1u << 20)) sf_die(2, 0, "--mcast-rate %s: bytes per second, at least 1M", optarg);
      break;
    default: usage();
    }
  }
  if (!desc || !ram || !listen_spec || optind != argc) usage();
  (void)crc32c_impl();
  int err = wire_token__read(&s->token, STDIN_FILENO);
  if (err) sf_die(2, err == -ENODATA ? 0 : err, "expected the ticket's token on stdin (a line \"token <32 to 128 hex digits>\")");
  const char *why = "";
  if ((err = descriptor__load(&s->d, desc, &why)) < 0) sf_die(1, err, "descriptor %s: %s", desc, why);
  if ((s->ram_fd = open(ram, O_RDONLY | O_CLOEXEC)) < 0) sf_die(1, -errno, "cannot open the RAM file %s", ram);
  if (verify) {
    uint64_t bad = 0;
    err = descriptor__verify_ram(&s->d, s->ram_fd, &bad);
    if (err == -EBADMSG) sf_die(1, 0, "%s does not match its descriptor %s (granule %" PRIu64 " differs): the template changed; rebuild the descriptor", ram, desc, bad);
    if (err == -EMEDIUMTYPE) sf_die(1, 0, "%s does not match its descriptor %s (its size differs)", ram, desc);
    if (err) sf_die(1, err, "cannot check %s against %s", ram, desc);
  }
  if (ws && (err = workset__load(&s->ws, ws, &s->d, &why)) < 0) {
    /* A missing or stale working set only costs fill order: say so and go on. */
    sf_err(err == -ESTALE || err == -EBADMSG ? 0 : err, "working set %s not used: %s", ws, why);
  }
  if (!(s->sent = sf_calloc(s->d.n_granules, 1))) sf_die(1, -ENOMEM, "granule table");
  if (s->record_path) {
    s->recorded = sf_calloc(s->d.n_granules, 1);
    s->order = sf_array(s->d.n_granules, sizeof(uint32_t));
    if (!s->recorded || !s->order) sf_die(1, -ENOMEM, "working-set recorder");
    /* What earlier runs recorded comes first, in its order: the memtaps fill it ahead of their
     * faults, so this run's demand only adds what it needed beyond it (else each run would record
     * only what the fill missed, and the working set would shrink run by run). */
    for (uint32_t i = 0; i < s->ws.n; i++) {
      uint64_t g = s->ws.pages[i] >> (s->d.granule_shift - DESC_PAGE_SHIFT);
      if (g >= s->d.n_granules || s->recorded[g] || descriptor__granule_is_zero(&s->d, g)) continue;
      s->recorded[g] = 1;
      s->order[s->n_order++] = (uint32_t)(g * s->d.pages_per_granule);
    }
    s->n_saved = s->n_order;
  }
  if ((err = listen_on(s, listen_spec)) < 0) sf_die(1, err, "cannot listen on %s", listen_spec);
  why = "";
  if (mc_group && (err = mcast__open(s, mc_group, mc_receivers, mc_rate, mc_ws_only, &why)) < 0) {
    if (err == -EINVAL && *why) sf_die(2, 0, "--mcast-group %s: %s", mc_group, why);
    sf_die(1, err, "cannot multicast to %s from %s (%s)", mc_group, s->listen_addr, why);
  }
  if ((err = setup_loop(s)) < 0) sf_die(1, err, "cannot set up the event loop");
  printf("listening %s\n", s->listen_addr);
  fflush(stdout);
  run(s);
  err = save_ws(s);
  while (s->conns) conn__close(s, s->conns);
  bury(s);
  close(s->lfd);
  mc_sender__close(s->mc);
  if (s->ram_map) munmap((void *)s->ram_map, s->d.ram_size);
  close(s->ram_fd);
  descriptor__free(&s->d);
  workset__free(&s->ws);
  free(s->recorded);
  free(s->order);
  free(s->sent);
  explicit_bzero(&s->token, sizeof s->token);
  return err ? 1 : 0;
}
