/*
 * The mcast sender (see mcast.h for what it does, README.md for why).
 *
 * What goes out, in priority order, each step:
 *   1. demand   granules clones fault on: to the group, once per suppression window
 *   2. repair   pieces receivers NACKed: to the group while the push runs; once the push has
 *               covered every live receiver, by unicast to the one that asked (the end game)
 *   3. push     the next position of the order, while some live receiver has not yet seen a
 *               whole round of it since it joined (late joiners keep the push going round); with
 *               push_first_only the push goes round the working set only (the order's first
 *               n_push positions), and the other granules go out as demand only
 * All three share one token bucket: the pacing rate, which follows the receivers' reports.
 *
 * A receiver is a slot: joined (WELCOME sent, with the push count it joined at), its last report,
 * and whether it has everything. Silent for dead_ms: dropped; heard again: joins anew.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/sf.h"
#include "mcast/common.h"
#include "mcast/packet.h"

#define BATCH 32
#define MAX_IOV 20
#define CONTROL_MS 25         /* rate control and liveness, this often */
#define IDLE_HEARTBEAT_MS 1000
#define STRUGGLE_LOSS 100     /* per mille of positions lost in a report: the receiver cannot keep up */
#define CUT_HOLDOFF_MS 100    /* reports lag the rate: one cut, then wait for their effect */
#define RAISE 1.08            /* per control tick without a struggling receiver */
#define CUT_SELF 0.85         /* at most this of the current rate after a cut */
#define CUT_TARGET 0.95       /* of the struggling receiver's reported rate */

enum rx_state { RX_FREE, RX_LIVE, RX_DEAD, RX_LEFT };

struct rx {
  enum rx_state state;
  uint64_t id;
  struct sockaddr_in addr;
  uint64_t joined_at;         /* positions pushed when it joined */
  uint64_t heard_ns;
  uint64_t report_ns;
  uint64_t rate;              /* accepted bytes/s, as it reported */
  uint32_t overflows;
  uint16_t loss;              /* per mille */
  uint32_t have;
  int complete;
};

/* Pieces [first, first + count) of a granule, to the group (dest < 0) or to receiver dest. */
struct req {
  uint32_t granule;
  uint16_t first, count;
  int16_t dest;
  uint8_t kind;
};

struct queue {
  struct req *a;
  size_t head, len, cap;
};

struct out {
  unsigned char hdr[PKT_HDR + DATA_HDR + HEARTBEAT_LEN];
  unsigned char tag[PKT_TAG];
  struct iovec iov[MAX_IOV + 2];
  struct sockaddr_in to;
};

struct mc_sender {
  struct mc_channel ch;
  struct mc_geometry g;
  struct mc_sender_options o;
  int fd, ep;
  struct pkt_mac *mac;
  uint64_t session;
  uint32_t piece;             /* payload bytes per datagram */
  uint32_t pages_per_granule;

  uint32_t *order, n_order;
  uint32_t n_push;            /* the push goes round the order's first n_push positions */
  uint32_t *pos_of;           /* per granule: its position, UINT32_MAX for zero granules */
  uint32_t *payload;          /* per granule: data bytes */
  int ordered, started;
  uint64_t pushed;            /* positions pushed; the next push is position pushed % n_push */
  uint32_t push_off;          /* bytes of the current position's granule already sent */

  uint64_t *sent_ns;          /* per granule: when it last went to the group */
  uint64_t *sent_mask;        /* pieces sent to the group since then (piece 63 and up: bit 63) */
  /*
   * Pieces waiting in a queue, to the group and by unicast (to uq_dest): a request for them is
   * dropped. Without this, a queue slower than the receivers' retry time (a rate cut to a slow host)
   * filled with the same NACKs again and again, each retry adding a copy, and the push starved.
   */
  uint64_t *q_mask, *uq_mask;
  int16_t *uq_dest;

  struct queue demand, repair;
  struct rx rx[MC_MAX_RECEIVERS];
  uint32_t n_rx;
  uint32_t joined_ever;

  double tokens;
  uint64_t rate;
  uint64_t refill_ns, control_ns, heartbeat_ns, cut_ns;
  int was_pushing;

  struct out batch[BATCH];
  struct mmsghdr msgs[BATCH];
  int n_batch;

  struct mc_sender_stats st;
  char error[256];
};

void mc_sender_options__defaults(struct mc_sender_options *o) {
  memset(o, 0, sizeof *o);
  o->max_rate = 125000000;
  o->min_rate = 1000000;
  o->mtu = 1500;
  o->min_receivers = 1;
  o->heartbeat_ms = 50;
  o->dead_ms = 1000;
  o->suppress_ms = 5;
}

static int fail(struct mc_sender *s, int err, const char *what) {
  snprintf(s->error, sizeof s->error, "%s: %s", what, strerror(-err));
  return err;
}

/* ---- queues of requests ---- */

static int queue__push(struct queue *q, const struct req *r) {
  if (q->len == q->cap) {
    size_t cap = q->cap ? q->cap * 2 : 256;
    struct req *a = sf_array(cap, sizeof *a);
    if (!a) return -ENOMEM;
    for (size_t i = 0; i < q->len; i++) a[i] = q->a[(q->head + i) % q->cap];
    free(q->a);
    q->a = a, q->cap = cap, q->head = 0;
  }
  q->a[(q->head + q->len++) % q->cap] = *r;
  return 0;
}

static struct req *queue__front(struct queue *q) { return q->len ? &q->a[q->head] : NULL; }

static void queue__pop(struct queue *q) {
  q->head = (q->head + 1) % q->cap;
  q->len--;
}

/* ---- receivers ---- */

static struct rx *rx__find(struct mc_sender *s, uint64_t id) {
  for (uint32_t i = 0; i < s->n_rx; i++)
    if (s->rx[i].state != RX_FREE && s->rx[i].id == id) return &s->rx[i];
  return NULL;
}

static int live_incomplete(const struct mc_sender *s, int *only) {
  int n = 0;
  for (uint32_t i = 0; i < s->n_rx; i++)
    if (s->rx[i].state == RX_LIVE && !s->rx[i].complete) n++, *only = (int)i;
  return n;
}

/* Whether some live receiver still needs the push to go on: it has not seen a whole round. */
static int need_push(const struct mc_sender *s) {
  if (!s->started) return 0;
  for (uint32_t i = 0; i < s->n_rx; i++) {
    const struct rx *r = &s->rx[i];
    if (r->state == RX_LIVE && !r->complete && s->pushed - r->joined_at < s->n_push) return 1;
  }
  return 0;
}

/* ---- sending ---- */

static int flush(struct mc_sender *s) {
  int done = 0;
  while (done < s->n_batch) {
    int n = sendmmsg(s->fd, s->msgs + done, (unsigned)(s->n_batch - done), 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == ENOBUFS) break;  /* the socket buffer is full: later */
      /* A receiver that vanished (ICMP unreachable on unicast): its datagram is lost, not us. */
      if (errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH) { done++; continue; }
      return fail(s, -errno, "sendmmsg");
    }
    done += n;
  }
  if (done && done < s->n_batch) {
    /* Keep the unsent in order; their iovecs point into the batch entries themselves. */
    int left = s->n_batch - done;
    for (int i = 0; i < left; i++) {
      s->batch[i] = s->batch[done + i];
      s->msgs[i] = s->msgs[done + i];
    }
    for (int i = 0; i < left; i++) {
      struct out *o = &s->batch[i];
      o->iov[0].iov_base = o->hdr;
      o->iov[s->msgs[i].msg_hdr.msg_iovlen - 1].iov_base = o->tag;
      s->msgs[i].msg_hdr.msg_iov = o->iov;
      s->msgs[i].msg_hdr.msg_name = &o->to;
    }
  }
  s->n_batch -= done;
  return 0;
}

/* Finishes batch entry o with iov[0] = header of hlen bytes plus n_iov payload iovecs already set. */
static int batch__add(struct mc_sender *s, struct out *o, size_t hlen, int n_iov, struct sockaddr_in to) {
  o->iov[0] = (struct iovec){ o->hdr, hlen };
  int err = pkt_mac__tag(s->mac, o->iov, 1 + n_iov, o->tag);
  if (err < 0) return fail(s, err, "MAC");
  o->iov[1 + n_iov] = (struct iovec){ o->tag, PKT_TAG };
  o->to = to;
  struct mmsghdr *m = &s->msgs[s->n_batch];
  memset(m, 0, sizeof *m);
  m->msg_hdr.msg_iov = o->iov;
  m->msg_hdr.msg_iovlen = (size_t)(2 + n_iov);
  m->msg_hdr.msg_name = &o->to;
  m->msg_hdr.msg_namelen = sizeof o->to;
  size_t bytes = 0;
  for (int i = 0; i < 2 + n_iov; i++) bytes += o->iov[i].iov_len;
  s->st.datagrams++, s->st.bytes += bytes;
  s->tokens -= (double)(bytes + PKT_IP_UDP);
  s->n_batch++;
  return s->n_batch == BATCH ? flush(s) : 0;
}

static struct sockaddr_in group_addr(const struct mc_sender *s) {
  return (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons(s->ch.port), .sin_addr = s->ch.group };
}

/* The bytes [off, off + len) of granule g's data pages, as iovecs into the mapped RAM. */
static int payload_iov(const struct mc_sender *s, uint32_t g, uint32_t off, uint32_t len, struct iovec *iov) {
  int n = 0;
  uint64_t page0 = (uint64_t)g * s->pages_per_granule;
  uint32_t at = 0;  /* payload offset of the next data page */
  for (uint32_t i = 0; i < s->pages_per_granule && len; i++) {
    uint64_t p = page0 + i;
    if (!((s->g.data_map[p >> 6] >> (p & 63)) & 1)) continue;
    if (off < at + MC_PAGE) {
      uint32_t in = off - at, take = MC_PAGE - in < len ? MC_PAGE - in : len;
      if (n == MAX_IOV) return -E2BIG;
      iov[n++] = (struct iovec){ (void *)(s->o.ram + p * MC_PAGE + in), take };
      off += take, len -= take;
    }
    at += MC_PAGE;
  }
  return n;
}

/* One piece (index piece) of granule g. */
static int send_piece(struct mc_sender *s, uint32_t g, uint32_t piece, uint8_t kind, uint64_t seq, struct sockaddr_in to) {
  struct out *o = &s->batch[s->n_batch];
  uint32_t total = s->payload[g], off = piece * s->piece;
  uint32_t len = total - off < s->piece ? total - off : s->piece;
  int n = payload_iov(s, g, off, len, o->iov + 1);
  if (n < 0) return fail(s, n, "piece layout");
  struct pkt_hdr h = { .type = P_DATA, .body_len = (uint16_t)(DATA_HDR + len), .session = s->session, .from = s->session };
  struct pkt_data d = { .granule = g, .pos = s->pos_of[g], .seq = seq, .offset = off, .total = total, .piece = (uint16_t)s->piece, .kind = kind };
  pkt_hdr__put(o->hdr, &h);
  pkt_data__put(o->hdr + PKT_HDR, &d);
  return batch__add(s, o, PKT_HDR + DATA_HDR, n, to);
}

static int send_control(struct mc_sender *s, uint8_t type, const unsigned char *body, uint16_t len, struct sockaddr_in to) {
  if (s->n_batch == BATCH) {
    int err = flush(s);
    if (err < 0) return err;
    if (s->n_batch == BATCH) return 0;  /* the socket is full: it is said again soon */
  }
  struct out *o = &s->batch[s->n_batch];
  struct pkt_hdr h = { .type = type, .body_len = len, .session = s->session, .from = s->session };
  pkt_hdr__put(o->hdr, &h);
  memcpy(o->hdr + PKT_HDR, body, len);
  int err = batch__add(s, o, PKT_HDR + len, 0, to);
  s->tokens += (double)(PKT_HDR + len + PKT_TAG + PKT_IP_UDP);  /* control is not paced */
  return err;
}

static int send_heartbeat(struct mc_sender *s) {
  unsigned char b[HEARTBEAT_LEN];
  put64(b, s->pushed);
  put32(b + 8, s->n_order);
  put32(b + 12, need_push(s) ? HB_PUSHING : 0);
  put64(b + 16, s->rate);
  put64(b + 24, s->g.n_granules);
  put32(b + 32, s->g.granule_size);
  put32(b + 36, s->piece);
  memcpy(b + 40, s->g.id, MC_ID_LEN);
  put32(b + 40 + MC_ID_LEN, s->n_push);
  return send_control(s, P_HEARTBEAT, b, sizeof b, group_addr(s));
}

static int send_welcome(struct mc_sender *s, const struct rx *r) {
  unsigned char b[WELCOME_LEN];
  put64(b, r->id);
  put64(b + 8, r->joined_at);
  put32(b + 16, s->n_order);
  put32(b + 20, s->piece);
  put32(b + 24, s->n_push);
  return send_control(s, P_WELCOME, b, sizeof b, r->addr);
}

static uint32_t pieces_of(const struct mc_sender *s, uint32_t g) {
  return (s->payload[g] + s->piece - 1) / s->piece;
}

static uint64_t piece_mask(uint32_t first, uint32_t count) {
  uint64_t m = 0;
  for (uint32_t p = first; p < first + count; p++) m |= 1ull << (p < 63 ? p : 63);
  return m;
}

/*
 * Queues pieces of g for the group unless they went (or are about to go) to the group within the
 * suppression window: requests from several hosts for one page arrive in lockstep.
 */
static int request_group(struct mc_sender *s, struct queue *q, uint32_t g, uint32_t first, uint32_t count, uint8_t kind) {
  uint64_t now = mc_now_ns(), m = piece_mask(first, count);
  if ((now - s->sent_ns[g] < (uint64_t)s->o.suppress_ms * MS && (s->sent_mask[g] & m) == m) || (s->q_mask[g] & m) == m) {
    s->st.suppressed += count;
    return 0;
  }
  s->q_mask[g] |= m;
  if (now - s->sent_ns[g] >= (uint64_t)s->o.suppress_ms * MS) s->sent_ns[g] = now, s->sent_mask[g] = 0;
  s->sent_mask[g] |= m;
  struct req r = { .granule = g, .first = (uint16_t)first, .count = (uint16_t)count, .dest = -1, .kind = kind };
  return queue__push(q, &r);
}

static int sendable(const struct mc_sender *s) { return s->tokens > 0 && s->n_batch < BATCH; }

/* Piece p of request r left its queue (sent, or its receiver gone): it may be asked for again. */
static void unqueue(struct mc_sender *s, const struct req *r, uint32_t p) {
  uint64_t *mask = r->dest < 0 ? s->q_mask : s->uq_mask;
  /* Pieces 63 and up share bit 63: it clears with the request's last piece. */
  if (p < 63 || r->count == 1) mask[r->granule] &= ~(1ull << (p < 63 ? p : 63));
}

/* Queues pieces of g for receiver dest by unicast, unless they wait in the queue already. */
static int request_unicast(struct mc_sender *s, struct queue *q, uint32_t g, uint32_t first, uint32_t count, int16_t dest) {
  uint64_t m = piece_mask(first, count);
  if (s->uq_dest[g] == dest && (s->uq_mask[g] & m) == m) return s->st.suppressed += count, 0;
  if (s->uq_dest[g] != dest) s->uq_dest[g] = dest, s->uq_mask[g] = 0;
  s->uq_mask[g] |= m;
  struct req r = { .granule = g, .first = (uint16_t)first, .count = (uint16_t)count, .dest = dest, .kind = K_REPAIR };
  return queue__push(q, &r);
}

/* Sends from q while pacing allows; a request to a receiver gone meanwhile is dropped. */
static int drain(struct mc_sender *s, struct queue *q) {
  struct req *r;
  while (sendable(s) && (r = queue__front(q))) {
    if (r->dest >= 0 && s->rx[r->dest].state != RX_LIVE) {
      for (; r->count; r->first++, r->count--) unqueue(s, r, r->first);
      queue__pop(q);
      continue;
    }
    struct sockaddr_in to = r->dest < 0 ? group_addr(s) : s->rx[r->dest].addr;
    int err = send_piece(s, r->granule, r->first, r->kind, SEQ_NONE, to);
    if (err < 0) return err;
    if (r->kind == K_DEMAND) s->st.demand_granules += r->first == 0;
    else if (r->dest < 0) s->st.repair_group++;
    else s->st.repair_unicast++;
    unqueue(s, r, r->first);
    r->first++;
    if (--r->count == 0) queue__pop(q);
  }
  return 0;
}

static int push(struct mc_sender *s) {
  while (sendable(s) && need_push(s)) {
    uint32_t pos = (uint32_t)(s->pushed % s->n_push), g = s->order[pos];
    int only = -1;
    /* Everyone else has everything: the last receiver's push goes to it alone. */
    int unicast = live_incomplete(s, &only) == 1;
    struct sockaddr_in to = unicast ? s->rx[only].addr : group_addr(s);
    int err = send_piece(s, g, s->push_off / s->piece, K_PUSH, s->pushed, to);
    if (err < 0) return err;
    if (unicast) s->st.push_unicast++;
    if (!unicast) {
      if (mc_now_ns() - s->sent_ns[g] >= (uint64_t)s->o.suppress_ms * MS) s->sent_ns[g] = mc_now_ns(), s->sent_mask[g] = 0;
      s->sent_mask[g] |= piece_mask(s->push_off / s->piece, 1);
    }
    s->push_off += s->piece;
    if (s->push_off >= s->payload[g]) {
      s->push_off = 0;
      s->st.push_granules++, s->st.push_bytes += s->payload[g];
      if (++s->pushed % s->n_push == 0) s->st.passes++;
    }
  }
  return 0;
}

/* ---- what receivers say ---- */

static struct rx *join(struct mc_sender *s, uint64_t id, const struct sockaddr_in *from) {
  struct rx *r = rx__find(s, id);
  if (!r) {
    uint32_t i = 0;
    while (i < s->n_rx && s->rx[i].state != RX_FREE) i++;
    if (i == MC_MAX_RECEIVERS) return NULL;
    if (i == s->n_rx) s->n_rx++;
    r = &s->rx[i];
    memset(r, 0, sizeof *r);
    r->id = id;
    r->state = RX_DEAD;
    s->st.receivers++;
  }
  if (r->state != RX_LIVE) {
    /* New, or back after being dropped: it sees the push from here on, and a whole round more. */
    r->state = RX_LIVE;
    r->joined_at = s->pushed;
    r->complete = 0;
    r->addr = *from;
    if (!s->joined_ever++) s->st.first_join_ns = mc_wall_ns();
  }
  r->heard_ns = mc_now_ns();
  return r;
}

static int on_status(struct mc_sender *s, struct rx *r, const unsigned char *b, uint16_t len) {
  if (len < STATUS_HDR) return 0;
  uint32_t flags = get32(b);
  r->have = get32(b + 4);
  r->rate = get64(b + 16);
  r->overflows = get32(b + 24);
  r->loss = get16(b + 28);
  r->report_ns = mc_now_ns();
  int was = r->complete;
  r->complete = (flags & ST_COMPLETE) != 0;
  (void)was;
  uint16_t n = get16(b + 30);
  if ((size_t)STATUS_HDR + (size_t)n * NACK_LEN > len) return 0;
  int pushing = need_push(s), only = -1;
  int unicast = !pushing || live_incomplete(s, &only) == 1;
  for (uint16_t i = 0; i < n; i++) {
    const unsigned char *e = b + STATUS_HDR + (size_t)i * NACK_LEN;
    uint32_t pos = get32(e), first = get16(e + 4), count = get16(e + 6);
    if (pos >= s->n_order) continue;
    uint32_t g = s->order[pos], np = pieces_of(s, g);
    if (count == 0) first = 0, count = np;
    if (first >= np) continue;
    if (first + count > np) count = np - first;
    s->st.nack_entries++;
    int err;
    if (unicast) {
      err = request_unicast(s, &s->repair, g, first, count, (int16_t)(r - s->rx));
    } else {
      err = request_group(s, &s->repair, g, first, count, K_REPAIR);
    }
    if (err < 0) return fail(s, err, "repair queue");
  }
  return 0;
}

static int on_demand(struct mc_sender *s, const unsigned char *b, uint16_t len) {
  if (len < 2) return 0;
  uint16_t n = get16(b);
  if (2 + (size_t)n * 4 > len) return 0;
  for (uint16_t i = 0; i < n; i++) {
    int err = mc_sender__demand(s, get32(b + 2 + 4 * i));
    if (err < 0 && err != -EINVAL) return err;
  }
  return 0;
}

static int on_message(struct mc_sender *s, const unsigned char *buf, size_t len, const struct sockaddr_in *from) {
  struct pkt_hdr h;
  if (pkt_hdr__get(&h, buf, len) < 0) return s->st.foreign++, 0;
  if (h.type == P_JOIN ? (h.session != 0 && h.session != s->session) : h.session != s->session) return s->st.foreign++, 0;
  if (!pkt_mac__verify(s->mac, buf, len)) return s->st.auth_failures++, 0;
  s->st.control_in++;
  const unsigned char *b = buf + PKT_HDR;
  if (h.type == P_JOIN) {
    if (h.body_len < JOIN_LEN || memcmp(b, s->g.id, MC_ID_LEN) != 0) return s->st.foreign++, 0;
    struct rx *r = join(s, h.from, from);
    return r ? send_welcome(s, r) : 0;
  }
  struct rx *r = rx__find(s, h.from);
  if (h.type == P_LEAVE) {
    if (r && r->state == RX_LIVE) r->state = RX_LEFT;
    return 0;
  }
  if (h.type == P_DEMAND) {
    if (r && r->state == RX_LIVE) r->heard_ns = mc_now_ns();
    return on_demand(s, b, h.body_len);
  }
  if (h.type != P_STATUS) return s->st.foreign++, 0;
  if (!r || r->state != RX_LIVE) {
    /* We had dropped it (or never heard its JOIN): it joins again and learns where from. */
    r = join(s, h.from, from);
    if (!r) return 0;
    int err = send_welcome(s, r);
    if (err < 0) return err;
  }
  r->heard_ns = mc_now_ns();
  r->addr = *from;
  return on_status(s, r, b, h.body_len);
}

static int receive(struct mc_sender *s) {
  enum { N = 16, SZ = 2048 };
  static __thread unsigned char bufs[N][SZ];
  struct sockaddr_in from[N];
  struct iovec iov[N];
  struct mmsghdr m[N];
  for (;;) {
    memset(m, 0, sizeof m);
    for (int i = 0; i < N; i++) {
      iov[i] = (struct iovec){ bufs[i], SZ };
      m[i].msg_hdr = (struct msghdr){ .msg_name = &from[i], .msg_namelen = sizeof from[i], .msg_iov = &iov[i], .msg_iovlen = 1 };
    }
    int n = recvmmsg(s->fd, m, N, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) return 0;
      if (errno == ECONNREFUSED) continue;  /* an ICMP error about an earlier unicast: not ours to act on */
      return fail(s, -errno, "recvmmsg");
    }
    for (int i = 0; i < n; i++) {
      if (m[i].msg_hdr.msg_flags & MSG_TRUNC) { s->st.foreign++; continue; }
      int err = on_message(s, bufs[i], m[i].msg_len, &from[i]);
      if (err < 0) return err;
    }
    if (n < N) return 0;
  }
}

/* ---- timers: liveness, rate, heartbeats ---- */

static void control(struct mc_sender *s, uint64_t now) {
  uint64_t min_struggling = UINT64_MAX;
  for (uint32_t i = 0; i < s->n_rx; i++) {
    struct rx *r = &s->rx[i];
    if (r->state != RX_LIVE) continue;
    if (now - r->heard_ns > (uint64_t)s->o.dead_ms * MS) {
      r->state = RX_DEAD;
      s->st.dead++;
      continue;
    }
    if (r->complete || r->report_ns <= s->cut_ns) continue;
    if (r->overflows > 0 || r->loss > STRUGGLE_LOSS)
      if (r->rate < min_struggling) min_struggling = r->rate;
  }
  if (min_struggling != UINT64_MAX) {
    if (now - s->cut_ns > CUT_HOLDOFF_MS * MS) {
      double target = (double)min_struggling * CUT_TARGET, self = (double)s->rate * CUT_SELF;
      double next = target < self ? target : self;
      s->rate = next < (double)s->o.min_rate ? s->o.min_rate : (uint64_t)next;
      s->cut_ns = now;
      s->st.rate_cuts++;
    }
  } else if (now - s->cut_ns > CUT_HOLDOFF_MS * MS) {
    double next = (double)s->rate * RAISE;
    s->rate = next > (double)s->o.max_rate ? s->o.max_rate : (uint64_t)next;
  }
}

static void refill(struct mc_sender *s, uint64_t now) {
  double burst = (double)s->rate * 0.002;
  if (burst < 64 * 1024) burst = 64 * 1024;
  s->tokens += (double)s->rate * (double)(now - s->refill_ns) / 1e9;
  if (s->tokens > burst) s->tokens = burst;
  s->refill_ns = now;
}

static int count_live(const struct mc_sender *s, uint32_t *complete) {
  int n = 0;
  *complete = 0;
  for (uint32_t i = 0; i < s->n_rx; i++)
    if (s->rx[i].state == RX_LIVE) n++, *complete += s->rx[i].complete != 0;
  return n;
}

int mc_sender__complete(const struct mc_sender *s) {
  uint32_t complete;
  int live = count_live(s, &complete);
  return s->joined_ever >= s->o.min_receivers && (uint32_t)live == complete && s->started;
}

int mc_sender__step(struct mc_sender *s) {
  int err;
  if ((err = receive(s)) < 0) return err;
  uint64_t now = mc_now_ns();  /* after receiving: what was heard is not in the future */
  if (now - s->control_ns >= CONTROL_MS * MS) control(s, now), s->control_ns = now;
  if (!s->started && s->ordered && s->joined_ever >= s->o.min_receivers) {
    s->started = 1;
    s->st.push_start_ns = mc_wall_ns();
  }
  refill(s, now);
  if ((err = flush(s)) < 0) return err;
  if ((err = drain(s, &s->demand)) < 0) return err;
  if ((err = drain(s, &s->repair)) < 0) return err;
  if ((err = push(s)) < 0) return err;
  int pushing = need_push(s), only;
  int busy = pushing || live_incomplete(s, &only) > 0;
  uint64_t every = (uint64_t)(busy ? s->o.heartbeat_ms : IDLE_HEARTBEAT_MS) * MS;
  /* The push just covered everyone: say so at once, so that the end game starts now. */
  if (now - s->heartbeat_ns >= every || (s->was_pushing && !pushing)) {
    if ((err = send_heartbeat(s)) < 0) return err;
    s->heartbeat_ns = now;
  }
  s->was_pushing = pushing;
  if ((err = flush(s)) < 0) return err;
  if (!s->st.all_complete_ns && mc_sender__complete(s)) s->st.all_complete_ns = mc_wall_ns();
  return 0;
}

int mc_sender__timeout_ms(const struct mc_sender *s) {
  if (s->n_batch) return 1;
  int only;
  int work = s->demand.len || s->repair.len || need_push(s);
  if (work) {
    if (s->tokens > 0) return 0;
    double ms = -s->tokens / (double)s->rate * 1000.0;
    return ms < 1 ? 1 : (int)ms + 1;
  }
  int busy = live_incomplete(s, &only) > 0;
  uint64_t now = mc_now_ns(), hb = (uint64_t)(busy ? s->o.heartbeat_ms : IDLE_HEARTBEAT_MS) * MS;
  uint64_t next = s->heartbeat_ns + hb, ctl = s->control_ns + CONTROL_MS * MS;
  if (ctl < next) next = ctl;
  return next <= now ? 0 : (int)((next - now) / MS) + 1;
}

int mc_sender__run(struct mc_sender *s, int max_ms) {
  int t = mc_sender__timeout_ms(s);
  if (t > max_ms) t = max_ms;
  int err = t ? mc_wait(s->ep, t) : 0;
  return err < 0 ? fail(s, err, "epoll_wait") : mc_sender__step(s);
}

int mc_sender__demand(struct mc_sender *s, uint32_t granule) {
  if (granule >= s->g.n_granules || s->pos_of[granule] == UINT32_MAX) return -EINVAL;
  int err = request_group(s, &s->demand, granule, 0, pieces_of(s, granule), K_DEMAND);
  return err < 0 ? fail(s, err, "demand queue") : 0;
}

int mc_sender__push(struct mc_sender *s, const uint32_t *first, size_t n_first) {
  uint32_t n = 0;
  for (uint64_t g = 0; g < s->g.n_granules; g++) s->pos_of[g] = UINT32_MAX;
  for (size_t i = 0; i < n_first; i++) {
    uint32_t g = first[i];
    if (g >= s->g.n_granules || s->g.sum_index[g] == MC_NO_SUM || s->pos_of[g] != UINT32_MAX) continue;
    s->pos_of[g] = n, s->order[n++] = g;
  }
  s->n_push = n;
  for (uint64_t g = 0; g < s->g.n_granules; g++)
    if (s->g.sum_index[g] != MC_NO_SUM && s->pos_of[g] == UINT32_MAX) s->pos_of[g] = n, s->order[n++] = (uint32_t)g;
  s->n_order = n;
  if (!s->o.push_first_only) s->n_push = n;
  s->ordered = n > 0;
  return 0;
}

int mc_sender__fd(const struct mc_sender *s) { return s->ep; }

void mc_sender__stats(const struct mc_sender *s, struct mc_sender_stats *out) {
  *out = s->st;
  uint32_t complete;
  out->live = (uint32_t)count_live(s, &complete);
  out->complete = complete;
  out->rate = s->rate;
  out->pushed = s->pushed;
  out->push_set = s->n_push;
}

const char *mc_sender__error(const struct mc_sender *s) { return s->error; }

void mc_sender__close(struct mc_sender *s) {
  if (!s) return;
  if (s->fd >= 0) close(s->fd);
  if (s->ep >= 0) close(s->ep);
  pkt_mac__free(s->mac);
  free(s->order), free(s->pos_of), free(s->payload), free(s->sent_ns), free(s->sent_mask), free(s->q_mask), free(s->uq_mask), free(s->uq_dest);
  free(s->demand.a), free(s->repair.a);
  free(s);
}

int mc_sender__open(struct mc_sender **out, const struct mc_channel *ch, const struct mc_geometry *g,
                    const struct mc_sender_options *o) {
  int err = mc_geometry__check(g);
  if (err < 0) return err;
  if (!o->ram || ch->token_len < MC_TOKEN_MIN || ch->token_len > MC_TOKEN_MAX || !o->max_rate || o->min_rate > o->max_rate) return -EINVAL;
  uint32_t room = o->mtu > PKT_IP_UDP + PKT_HDR + DATA_HDR + PKT_TAG + 64 ? o->mtu - PKT_IP_UDP - PKT_HDR - DATA_HDR - PKT_TAG : 0;
  if (!room || o->mtu > PKT_MAX + PKT_IP_UDP) return -EINVAL;
  struct mc_sender *s = sf_calloc(1, sizeof *s);
  if (!s) return -ENOMEM;
  s->fd = s->ep = -1;
  s->ch = *ch, s->g = *g, s->o = *o;
  s->pages_per_granule = g->granule_size / MC_PAGE;
  /* At most MAX_IOV pages per piece, never across more than that many pages. */
  s->piece = room > (MAX_IOV - 1) * MC_PAGE ? (MAX_IOV - 1) * MC_PAGE : room;
  s->rate = o->start_rate ? o->start_rate : o->max_rate / 4;
  if (s->rate < o->min_rate) s->rate = o->min_rate;
  uint64_t n = g->n_granules;
  s->order = sf_array(n, sizeof *s->order);
  s->pos_of = sf_array(n, sizeof *s->pos_of);
  s->payload = sf_array(n, sizeof *s->payload);
  s->sent_ns = sf_calloc(n, sizeof *s->sent_ns);
  s->sent_mask = sf_calloc(n, sizeof *s->sent_mask);
  s->q_mask = sf_calloc(n, sizeof *s->q_mask);
  s->uq_mask = sf_calloc(n, sizeof *s->uq_mask);
  s->uq_dest = sf_calloc(n, sizeof *s->uq_dest);
  if (!s->order || !s->pos_of || !s->payload || !s->sent_ns || !s->sent_mask || !s->q_mask || !s->uq_mask || !s->uq_dest) return mc_sender__close(s), -ENOMEM;
  for (uint64_t i = 0; i < n; i++) s->payload[i] = mc_geometry__data_pages(g, i) * MC_PAGE;
  if ((err = mc_random(&s->session, sizeof s->session)) < 0 || (err = pkt_mac__new(&s->mac, ch, g->id)) < 0) return mc_sender__close(s), err;
  if (!s->session) s->session = 1;
  if ((s->fd = mc_udp_socket(ch->sender, ch->port, 4 << 20)) < 0) return err = s->fd, s->fd = -1, mc_sender__close(s), err;
  if ((err = mc_scope_multicast(s->fd, ch->sender)) < 0 || (s->ep = mc_epoll_with(s->fd)) < 0) {
    if (s->ep < 0 && err == 0) err = s->ep;
    s->ep = -1;
    return mc_sender__close(s), err;
  }
  uint64_t now = mc_now_ns();
  s->refill_ns = s->control_ns = now;
  *out = s;
  return 0;
}
