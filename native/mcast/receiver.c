/*
 * The mcast receiver (see mcast.h for what it does, README.md for why).
 *
 * Two sockets: one bound to the ticket's group (the push, repairs and demand answers for
 * everyone), one connected to the sender (WELCOME, end-game repairs, our reports and requests).
 *
 * Coverage: WELCOME says how many positions the sender had pushed when we joined; every pushed
 * datagram carries its seq. Positions pushed since we joined that we lack are missing: they go
 * into a queue in the order they went out, and each report NACKs the oldest of them again every
 * retry_ms until they come. Positions pushed before we joined are not missing yet: the sender
 * pushes round the order until we have seen a whole round. When the sender pushes a working set
 * only (its first n_push positions), we are complete once those are here, and stay in the group
 * for what other hosts demand beyond it (leave_when_complete off).
 *
 * A granule travels in pieces (one datagram each, never fragmented); a partly received granule
 * waits in a slot for its missing pieces, and only those are NACKed. Slots are few; when they run
 * out the oldest partial granule is given up (NACKed whole later).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/sf.h"
#include "mcast/common.h"
#include "mcast/packet.h"

#define BATCH 32
#define JOIN_EVERY_MS 100
#define DONE_STATUS_MS 500
#define WALK_MAX 4096              /* missing positions looked at per report */
#define NACK_MAX 160               /* entries per report: the report stays one unfragmented datagram */
#define DEMAND_MAX 256             /* granules per DEMAND */
#define RATE_EWMA 0.3
#define PIECES_WAIT_MS 2           /* a partial granule younger than this is still arriving */
#define LOSS_WINDOW 512            /* positions a loss figure is computed over */
#define SLOT_BYTES (32u << 20)     /* memory for partial granules */

struct slot {
  int used;
  uint32_t granule, pos, total, pieces, got;
  uint64_t touched;                /* a clock for eviction */
  uint64_t touched_ns;             /* when its last piece came */
  uint64_t *bits;                  /* pieces here */
  unsigned char *buf;
};

struct outstanding {
  uint32_t granule;
  uint64_t asked_ns;
};

struct mc_receiver {
  struct mc_channel ch;
  struct mc_geometry g;
  struct mc_receiver_options o;
  mc_store_fn store;
  void *ctx;
  int msock, usock, ep, efd;
  struct pkt_mac *mac;
  uint64_t id;
  unsigned char *rbuf;             /* BATCH receive buffers of PKT_MAX */

  uint64_t session;                /* the sender's, 0 until an authenticated datagram told us */
  int welcomed, left_group;
  uint64_t joined_at, pushed_seen, frontier;
  uint64_t hb_pushed;              /* what the last heartbeat said was pushed */
  uint32_t n_order, piece;
  uint32_t n_push;                 /* positions the push goes round (WELCOME); n_order: all */
  uint32_t push_have;              /* of those, positions here */
  uint64_t heard_ns, join_sent_ns, status_ns, open_ns;

  _Atomic uint64_t *have;          /* per granule, a bit */
  _Atomic uint32_t have_count;
  uint32_t need;
  uint32_t *payload;               /* per granule: data bytes (0 for zero granules) */
  uint64_t *have_pos;              /* per position, a bit */
  uint32_t *missing;               /* ring of positions, in the order they went out */
  size_t miss_head, miss_len, miss_cap;
  uint32_t *nacked_ms;             /* per position: when we last asked for it (ms since open, 0 never) */

  struct slot *slots;
  uint32_t n_slots, hand;
  uint32_t *slot_of_pos;           /* per position: slot + 1, 0 none */
  uint64_t clock;
  size_t bits_words;

  pthread_mutex_t mu;              /* guards asked[] (filled from any thread) */
  uint32_t *asked;
  size_t n_asked, cap_asked;
  struct outstanding *out;         /* demands in flight (receiver thread only) */
  size_t n_out, cap_out;

  /* For reports: since the last one. */
  uint64_t acc_bytes, covered, lost;
  uint16_t loss;                   /* per mille, over the last whole window */
  uint32_t ovfl_total, ovfl_reported;
  double rate;
  uint64_t rate_ns;

  struct mc_receiver_stats st;
  char error[256];
};

void mc_receiver_options__defaults(struct mc_receiver_options *o) {
  memset(o, 0, sizeof *o);
  o->status_ms = 10;
  o->retry_ms = 30;
  o->sender_timeout_ms = 3000;
  o->leave_when_complete = 1;
  o->rcvbuf = 8u << 20;
}

static int fail(struct mc_receiver *r, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(struct mc_receiver *r, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(r->error, sizeof r->error, fmt, ap);
  va_end(ap);
  if (err < 0 && n >= 0 && (size_t)n < sizeof r->error) snprintf(r->error + n, sizeof r->error - (size_t)n, ": %s", strerror(-err));
  return err;
}

static inline int bit(const uint64_t *b, uint64_t i) { return (int)((b[i >> 6] >> (i & 63)) & 1); }
static inline void set_bit(uint64_t *b, uint64_t i) { b[i >> 6] |= 1ull << (i & 63); }

/* Position pos is here; the push's share of it counted once. */
static void mark_pos(struct mc_receiver *r, uint32_t pos) {
  if (bit(r->have_pos, pos)) return;
  set_bit(r->have_pos, pos);
  if (r->welcomed && pos < r->n_push) r->push_have++;
}
static inline uint32_t ms_since(const struct mc_receiver *r, uint64_t now) { return (uint32_t)((now - r->open_ns) / MS) + 1; }

int mc_receiver__has(const struct mc_receiver *r, uint32_t g) {
  if (g >= r->g.n_granules) return 0;
  return (int)((atomic_load_explicit(&r->have[g >> 6], memory_order_acquire) >> (g & 63)) & 1);
}

/* Marks g here; 1 if it was not before. */
static int mark_have(struct mc_receiver *r, uint32_t g) {
  uint64_t m = 1ull << (g & 63);
  if (atomic_fetch_or_explicit(&r->have[g >> 6], m, memory_order_acq_rel) & m) return 0;
  atomic_fetch_add(&r->have_count, 1);
  return 1;
}

void mc_receiver__have(struct mc_receiver *r, uint32_t g) {
  if (g < r->g.n_granules && r->payload[g]) mark_have(r, g);
}

int mc_receiver__complete(const struct mc_receiver *r) {
  if (atomic_load(&r->have_count) >= r->need) return 1;
  return r->welcomed && r->n_push < r->n_order && r->push_have >= r->n_push;
}

/* ---- sending ---- */

static int send_msg(struct mc_receiver *r, uint8_t type, const unsigned char *body, uint16_t len) {
  unsigned char hdr[PKT_HDR], tag[PKT_TAG];
  struct pkt_hdr h = { .type = type, .body_len = len, .session = r->session, .from = r->id };
  pkt_hdr__put(hdr, &h);
  struct iovec iov[3] = { { hdr, PKT_HDR }, { (void *)body, len }, { tag, PKT_TAG } };
  int err = pkt_mac__tag(r->mac, iov, 2, tag);
  if (err < 0) return fail(r, err, "MAC");
  struct msghdr m = { .msg_iov = iov, .msg_iovlen = 3 };
  if (sendmsg(r->usock, &m, 0) < 0) {
    /* The sender is not (yet) there, or our buffer is full: the next report says it again. */
    if (errno == ECONNREFUSED || errno == EAGAIN || errno == ENOBUFS || errno == EHOSTUNREACH || errno == ENETUNREACH) return 0;
    return fail(r, -errno, "send to the sender");
  }
  return 0;
}

static int send_join(struct mc_receiver *r) {
  unsigned char b[JOIN_LEN];
  memcpy(b, r->g.id, MC_ID_LEN);
  put32(b + MC_ID_LEN, 0);
  r->join_sent_ns = mc_now_ns();
  return send_msg(r, P_JOIN, b, sizeof b);
}

/* ---- coverage and NACKs ---- */

static int miss__push(struct mc_receiver *r, uint32_t pos) {
  if (r->miss_len == r->miss_cap) return 0;  /* cannot happen: a position is queued once per round */
  r->missing[(r->miss_head + r->miss_len++) % r->miss_cap] = pos;
  return 0;
}

/* Positions pushed up to seq (exclusive) are now due; those we lack are missing. */
static void cover(struct mc_receiver *r, uint64_t upto) {
  if (upto > r->pushed_seen) r->pushed_seen = upto;
  if (!r->welcomed || !r->n_push) return;
  for (; r->frontier < r->pushed_seen; r->frontier++) {
    if (r->frontier - r->joined_at >= r->n_push) {
      r->frontier = r->pushed_seen;  /* a whole round is due: nothing more to queue */
      break;
    }
    uint32_t pos = (uint32_t)(r->frontier % r->n_push);
    r->covered++;
    if (!bit(r->have_pos, pos)) r->lost++, miss__push(r, pos);
  }
}

static void slot__free(struct mc_receiver *r, struct slot *s) {
  if (!s->used) return;
  r->slot_of_pos[s->pos] = 0;
  s->used = 0;
}

/* Appends NACK entries for position pos (its missing pieces, or all of it); returns entries added. */
static int nack_pos(struct mc_receiver *r, uint32_t pos, unsigned char *e, int room) {
  uint32_t si = r->slot_of_pos[pos];
  if (!si) {
    put32(e, pos), put16(e + 4, 0), put16(e + 6, 0);
    return 1;
  }
  struct slot *s = &r->slots[si - 1];
  int n = 0;
  for (uint32_t p = 0; p < s->pieces && n < room;) {
    if (bit(s->bits, p)) { p++; continue; }
    uint32_t q = p;
    while (q < s->pieces && !bit(s->bits, q) && q - p < UINT16_MAX) q++;
    put32(e + NACK_LEN * n, pos), put16(e + NACK_LEN * n + 4, (uint16_t)p), put16(e + NACK_LEN * n + 6, (uint16_t)(q - p));
    n++, p = q;
  }
  return n;
}

/* Walks the oldest missing positions: drops those that came, NACKs those due again. */
static int build_nacks(struct mc_receiver *r, unsigned char *e, uint64_t now) {
  uint32_t t = ms_since(r, now);
  while (r->miss_len && bit(r->have_pos, r->missing[r->miss_head])) r->miss_head = (r->miss_head + 1) % r->miss_cap, r->miss_len--;
  size_t walk = r->miss_len < WALK_MAX ? r->miss_len : WALK_MAX, kept = 0;
  int n = 0;
  /* Filter the walked window in place, keeping order: kept entries are packed at its end. */
  for (size_t i = walk; i-- > 0;) {
    uint32_t pos = r->missing[(r->miss_head + i) % r->miss_cap];
    if (bit(r->have_pos, pos)) continue;
    r->missing[(r->miss_head + walk - 1 - kept) % r->miss_cap] = pos;
    kept++;
  }
  r->miss_head = (r->miss_head + walk - kept) % r->miss_cap;
  r->miss_len -= walk - kept;
  for (size_t i = 0; i < kept && n < NACK_MAX; i++) {
    uint32_t pos = r->missing[(r->miss_head + i) % r->miss_cap];
    if (r->nacked_ms[pos] && t - r->nacked_ms[pos] < (uint32_t)r->o.retry_ms) continue;
    /* A position whose pieces are still arriving right now is not lost yet. */
    uint32_t si = r->slot_of_pos[pos];
    if (si && now - r->slots[si - 1].touched_ns < PIECES_WAIT_MS * MS && !r->nacked_ms[pos]) continue;
    int k = nack_pos(r, pos, e + NACK_LEN * n, NACK_MAX - n);
    n += k;
    r->nacked_ms[pos] = t;
  }
  r->st.nack_entries += (uint64_t)n;
  return n;
}

static int send_status(struct mc_receiver *r, uint64_t now) {
  unsigned char b[STATUS_HDR + NACK_MAX * NACK_LEN];
  int complete = mc_receiver__complete(r);
  int n = complete ? 0 : build_nacks(r, b + STATUS_HDR, now);
  double dt = (double)(now - r->rate_ns) / 1e9;
  if (dt > 0) {
    double inst = (double)r->acc_bytes / dt;
    r->rate = r->rate ? RATE_EWMA * inst + (1 - RATE_EWMA) * r->rate : inst;
  }
  uint32_t ovfl = r->ovfl_total - r->ovfl_reported;
  /*
   * Loss over a window of LOSS_WINDOW positions at least: a few lost datagrams among the few
   * positions of one report interval are noise (1% random loss), not a host that cannot keep up.
   */
  if (r->covered >= LOSS_WINDOW) {
    r->loss = (uint16_t)(r->lost * 1000 / r->covered);
    r->covered = r->lost = 0;
  }
  uint16_t loss = r->loss;
  put32(b, (complete ? ST_COMPLETE : 0) | (r->welcomed ? ST_WELCOMED : 0));
  put32(b + 4, atomic_load(&r->have_count));
  put64(b + 8, r->pushed_seen);
  put64(b + 16, (uint64_t)r->rate);
  put32(b + 24, ovfl);
  put16(b + 28, loss);
  put16(b + 30, (uint16_t)n);
  r->acc_bytes = 0;
  r->ovfl_reported = r->ovfl_total;
  r->rate_ns = r->status_ns = now;
  return send_msg(r, P_STATUS, b, (uint16_t)(STATUS_HDR + (size_t)n * NACK_LEN));
}

/* ---- demand ---- */

int mc_receiver__demand(struct mc_receiver *r, uint32_t g) {
  if (g >= r->g.n_granules || !r->payload[g]) return -EINVAL;
  if (mc_receiver__has(r, g)) return 0;
  pthread_mutex_lock(&r->mu);
  int err = 0;
  if (r->n_asked == r->cap_asked) {
    size_t cap = r->cap_asked ? 2 * r->cap_asked : 64;
    uint32_t *a = sf_realloc(r->asked, cap * sizeof *a);
    if (a) r->asked = a, r->cap_asked = cap;
    else err = -ENOMEM;
  }
  if (!err) r->asked[r->n_asked++] = g;
  pthread_mutex_unlock(&r->mu);
  if (err) return err;
  uint64_t one = 1;
  if (write(r->efd, &one, sizeof one) < 0 && errno != EAGAIN) return -errno;
  return 0;
}

/* Sends the DEMANDs due: new ones, and those not answered within retry_ms. */
static int demands(struct mc_receiver *r, uint64_t now) {
  uint64_t v;
  if (read(r->efd, &v, sizeof v) < 0 && errno != EAGAIN) return fail(r, -errno, "eventfd");
  if (!r->session) return 0;  /* the sender takes requests of its session only: once it spoke */
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < r->n_asked; i++) {
    if (r->n_out == r->cap_out) {
      size_t cap = r->cap_out ? 2 * r->cap_out : 64;
      struct outstanding *o = sf_realloc(r->out, cap * sizeof *o);
      if (!o) { pthread_mutex_unlock(&r->mu); return fail(r, -ENOMEM, "demand list"); }
      r->out = o, r->cap_out = cap;
    }
    r->out[r->n_out++] = (struct outstanding){ r->asked[i], 0 };
  }
  r->n_asked = 0;
  pthread_mutex_unlock(&r->mu);
  unsigned char b[2 + DEMAND_MAX * 4];
  uint16_t n = 0;
  size_t keep = 0;
  for (size_t i = 0; i < r->n_out; i++) {
    struct outstanding o = r->out[i];
    if (mc_receiver__has(r, o.granule)) continue;
    if (!o.asked_ns || now - o.asked_ns >= (uint64_t)r->o.retry_ms * MS) {
      if (n == DEMAND_MAX) {
        put16(b, n);
        int err = send_msg(r, P_DEMAND, b, (uint16_t)(2 + 4 * n));
        if (err < 0) return err;
        n = 0;
      }
      put32(b + 2 + 4 * n++, o.granule);
      o.asked_ns = now;
      r->st.demands++;
    }
    r->out[keep++] = o;
  }
  r->n_out = keep;
  if (n) {
    put16(b, n);
    return send_msg(r, P_DEMAND, b, (uint16_t)(2 + 4 * n));
  }
  return 0;
}

/* ---- receiving ---- */

static void finish(struct mc_receiver *r, uint64_t now) {
  if (r->st.complete_ns || !mc_receiver__complete(r)) return;
  r->st.complete_ns = mc_wall_ns();
  if (r->o.leave_when_complete && !r->left_group) {
    struct ip_mreq mr = { .imr_multiaddr = r->ch.group, .imr_interface = r->ch.local };
    (void)setsockopt(r->msock, IPPROTO_IP, IP_DROP_MEMBERSHIP, &mr, sizeof mr);
    r->left_group = 1;
  }
  (void)send_status(r, now);
}

/* A whole granule that came: check it, hand it over, note its position. */
static int deliver(struct mc_receiver *r, uint32_t g, uint32_t pos, const unsigned char *pages, uint32_t len, uint64_t now) {
  if (!mc_geometry__granule_ok(&r->g, g, pages, len)) {
    r->st.checksum_failures++;
    return 0;
  }
  int rc = r->store(r->ctx, g, pages, len);
  if (rc < 0) {
    r->st.refused++;
    return 0;
  }
  if (rc == 0 && mark_have(r, g)) {
    r->st.granules++, r->st.granule_bytes += len;
    r->acc_bytes += len;
    if (!r->st.first_data_ns) r->st.first_data_ns = mc_wall_ns();
  } else {
    mark_have(r, g);
  }
  if (pos < r->n_order || !r->n_order) mark_pos(r, pos);
  finish(r, now);
  return 0;
}

static struct slot *slot__get(struct mc_receiver *r, uint32_t g, uint32_t pos, uint32_t total) {
  uint32_t si = r->slot_of_pos[pos];
  if (si) {
    struct slot *s = &r->slots[si - 1];
    if (s->granule == g) return s;
    slot__free(r, s);
  }
  struct slot *victim = NULL;
  for (uint32_t k = 0; k < r->n_slots; k++) {
    struct slot *s = &r->slots[(r->hand + k) % r->n_slots];
    if (!s->used) { victim = s; break; }
    if (!victim || s->touched < victim->touched) victim = s;
    if (k >= 16) break;  /* the oldest among a few is old enough */
  }
  if (victim->used) slot__free(r, victim), r->st.evicted++;
  r->hand = (uint32_t)(victim - r->slots + 1) % r->n_slots;
  victim->used = 1;
  victim->granule = g, victim->pos = pos, victim->total = total;
  victim->pieces = (total + r->piece - 1) / r->piece;
  victim->got = 0;
  memset(victim->bits, 0, r->bits_words * sizeof *victim->bits);
  r->slot_of_pos[pos] = (uint32_t)(victim - r->slots) + 1;
  return victim;
}

static int on_data(struct mc_receiver *r, const unsigned char *buf, size_t len, const struct pkt_hdr *h, uint64_t now) {
  if (h->body_len < DATA_HDR) return r->st.foreign++, 0;
  struct pkt_data d;
  pkt_data__get(&d, buf + PKT_HDR);
  uint32_t plen = h->body_len - DATA_HDR;
  if (d.granule >= r->g.n_granules || d.pos >= r->g.n_granules || d.total != r->payload[d.granule] || !d.total ||
      d.piece < 64 || d.offset % d.piece || (uint64_t)d.offset + plen > d.total || !plen || (plen != d.piece && d.offset + plen != d.total))
    return r->st.foreign++, 0;
  /* Already here and its position known: nothing to learn from it, so no MAC to check. */
  if (mc_receiver__has(r, d.granule) && bit(r->have_pos, d.pos)) return r->st.duplicates++, 0;
  if (r->session && h->session != r->session) return r->st.foreign++, 0;
  if (!pkt_mac__verify(r->mac, buf, len)) return r->st.auth_failures++, 0;
  if (!r->session) r->session = h->session;
  r->heard_ns = now;
  if (!r->piece) r->piece = d.piece;
  if (d.piece != r->piece) return r->st.foreign++, 0;
  if (d.kind == K_PUSH && d.seq != SEQ_NONE) cover(r, d.seq);
  if (r->n_order && d.pos >= r->n_order) return r->st.foreign++, 0;
  if (mc_receiver__has(r, d.granule)) {
    mark_pos(r, d.pos);
    r->st.duplicates++;
    return 0;
  }
  const unsigned char *payload = buf + PKT_HDR + DATA_HDR;
  if (d.offset == 0 && plen == d.total) return deliver(r, d.granule, d.pos, payload, plen, now);
  struct slot *s = slot__get(r, d.granule, d.pos, d.total);
  uint32_t p = d.offset / r->piece;
  s->touched = ++r->clock;
  s->touched_ns = now;
  if (bit(s->bits, p)) return r->st.duplicates++, 0;
  set_bit(s->bits, p);
  memcpy(s->buf + d.offset, payload, plen);
  if (++s->got < s->pieces) return 0;
  slot__free(r, s);
  return deliver(r, d.granule, d.pos, s->buf, d.total, now);
}

static void reset_session(struct mc_receiver *r, uint64_t session) {
  r->session = session;
  r->welcomed = 0;
  r->miss_head = r->miss_len = 0;
  r->pushed_seen = r->frontier = r->hb_pushed = 0;
  for (uint32_t i = 0; i < r->n_slots; i++) slot__free(r, &r->slots[i]);
}

static int on_control(struct mc_receiver *r, const unsigned char *buf, size_t len, const struct pkt_hdr *h, uint64_t now) {
  if (r->session && h->session != r->session && h->type != P_HEARTBEAT) return r->st.foreign++, 0;
  if (!pkt_mac__verify(r->mac, buf, len)) return r->st.auth_failures++, 0;
  const unsigned char *b = buf + PKT_HDR;
  if (h->type == P_HEARTBEAT) {
    if (h->body_len < HEARTBEAT_LEN || get64(b + 24) != r->g.n_granules || get32(b + 32) != r->g.granule_size ||
        memcmp(b + 40, r->g.id, MC_ID_LEN) != 0)
      return r->st.foreign++, 0;
    /* A sender we did not know: it restarted (or we never heard it); join it. */
    if (h->session != r->session) {
      reset_session(r, h->session);
      int err = send_join(r);
      if (err < 0) return err;
    }
    r->heard_ns = now;
    if (!r->n_order) r->n_order = get32(b + 8);
    if (!r->piece) r->piece = get32(b + 36);
    /*
     * A heartbeat covers what the sender had pushed at the one before: data sent before this one
     * may still wait in our other socket (unicast and group datagrams are read one socket after
     * the other), and must not count as lost.
     */
    cover(r, r->hb_pushed);
    r->hb_pushed = get64(b);
    return 0;
  }
  if (h->type == P_WELCOME) {
    if (h->body_len < WELCOME_LEN || get64(b) != r->id) return r->st.foreign++, 0;
    if (!r->session) r->session = h->session;
    r->heard_ns = now;
    uint64_t at = get64(b + 8);
    uint32_t n_order = get32(b + 16), piece = get32(b + 20), n_push = get32(b + 24);
    if (!n_order || n_order > r->g.n_granules || n_push > n_order || (r->piece && piece != r->piece)) return r->st.foreign++, 0;
    if (!r->welcomed || at != r->joined_at) {
      /* (Re)joined at `at`: what went out before it is not missing; a whole round from there is due. */
      r->miss_head = r->miss_len = 0;
      r->joined_at = r->frontier = at;
      r->welcomed = 1;
      if (!r->st.join_ns) r->st.join_ns = mc_wall_ns();
    }
    r->n_order = n_order, r->piece = piece;
    if (n_push != r->n_push || !r->push_have) {
      /* What of the push is here already (positions seen before we knew its extent). */
      r->n_push = n_push, r->push_have = 0;
      for (uint32_t p = 0; p < n_push; p++) r->push_have += (uint32_t)bit(r->have_pos, p);
    }
    cover(r, r->pushed_seen);
    return 0;
  }
  return r->st.foreign++, 0;
}

static int on_datagram(struct mc_receiver *r, const unsigned char *buf, size_t len, uint64_t now) {
  struct pkt_hdr h;
  r->st.datagrams++, r->st.bytes += len;
  if (pkt_hdr__get(&h, buf, len) < 0) return r->st.foreign++, 0;
  if (h.type == P_DATA) return on_data(r, buf, len, &h, now);
  return on_control(r, buf, len, &h, now);
}

static int receive(struct mc_receiver *r, int fd, int from_group, uint64_t now) {
  struct sockaddr_in from[BATCH];
  struct iovec iov[BATCH];
  struct mmsghdr m[BATCH];
  char ctl[BATCH][CMSG_SPACE(sizeof(uint32_t))];
  for (int round = 0; round < 64; round++) {  /* bounded, so that reports and demands go out */
    memset(m, 0, sizeof m);
    for (int i = 0; i < BATCH; i++) {
      iov[i] = (struct iovec){ r->rbuf + (size_t)i * PKT_MAX, PKT_MAX };
      m[i].msg_hdr = (struct msghdr){ .msg_name = &from[i], .msg_namelen = sizeof from[i], .msg_iov = &iov[i], .msg_iovlen = 1,
                                      .msg_control = ctl[i], .msg_controllen = sizeof ctl[i] };
    }
    int n = recvmmsg(fd, m, BATCH, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == ECONNREFUSED) return 0;
      return fail(r, -errno, "receive");
    }
    for (int i = 0; i < n; i++) {
      for (struct cmsghdr *c = CMSG_FIRSTHDR(&m[i].msg_hdr); c; c = CMSG_NXTHDR(&m[i].msg_hdr, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL && from_group) {
          uint32_t drops;
          memcpy(&drops, CMSG_DATA(c), sizeof drops);
          if (drops > r->ovfl_total) r->st.overflows += drops - r->ovfl_total, r->ovfl_total = drops;
        }
      /* Only the sender speaks on the group: anything else there is not ours. */
      if (from_group && from[i].sin_addr.s_addr != r->ch.sender.s_addr) { r->st.foreign++; continue; }
      if (m[i].msg_hdr.msg_flags & MSG_TRUNC) { r->st.foreign++; continue; }
      int err = on_datagram(r, iov[i].iov_base, m[i].msg_len, now);
      if (err < 0) return err;
    }
    if (n < BATCH) return 0;
  }
  return 0;
}

int mc_receiver__step(struct mc_receiver *r) {
  uint64_t now = mc_now_ns();
  int err;
  if ((err = receive(r, r->msock, 1, now)) < 0 || (err = receive(r, r->usock, 0, now)) < 0) return err;
  now = mc_now_ns();
  if ((err = demands(r, now)) < 0) return err;
  if (!r->welcomed && now - r->join_sent_ns >= JOIN_EVERY_MS * MS && (err = send_join(r)) < 0) return err;
  int complete = mc_receiver__complete(r);
  if (complete) finish(r, now);
  uint64_t every = (uint64_t)(complete ? DONE_STATUS_MS : r->o.status_ms) * MS;
  if (r->welcomed && now - r->status_ns >= every && (err = send_status(r, now)) < 0) return err;
  if (!complete && r->o.sender_timeout_ms > 0 && now - r->heard_ns > (uint64_t)r->o.sender_timeout_ms * MS)
    return fail(r, -ETIMEDOUT, "nothing from the sender %s for %d ms (%u of %u granules here)", inet_ntoa(r->ch.sender),
                r->o.sender_timeout_ms, atomic_load(&r->have_count), r->need);
  return 0;
}

int mc_receiver__timeout_ms(const struct mc_receiver *r) {
  uint64_t now = mc_now_ns();
  int complete = mc_receiver__complete(r);
  uint64_t next = r->welcomed ? r->status_ns + (uint64_t)(complete ? DONE_STATUS_MS : r->o.status_ms) * MS
                              : r->join_sent_ns + JOIN_EVERY_MS * MS;
  if (r->n_out || (r->n_asked && r->session)) {
    uint64_t retry = now + (uint64_t)r->o.retry_ms * MS / 2;
    if (retry < next) next = retry;
  }
  return next <= now ? 0 : (int)((next - now) / MS) + 1;
}

int mc_receiver__run(struct mc_receiver *r, int max_ms) {
  int t = mc_receiver__timeout_ms(r);
  if (t > max_ms) t = max_ms;
  int err = t ? mc_wait(r->ep, t) : 0;
  return err < 0 ? fail(r, err, "epoll_wait") : mc_receiver__step(r);
}

int mc_receiver__fd(const struct mc_receiver *r) { return r->ep; }

void mc_receiver__stats(const struct mc_receiver *r, struct mc_receiver_stats *out) {
  *out = r->st;
  out->have = atomic_load(&r->have_count);
  out->need = r->need;
}

const char *mc_receiver__error(const struct mc_receiver *r) { return r->error; }

void mc_receiver__close(struct mc_receiver *r) {
  if (!r) return;
  if (r->usock >= 0 && r->session) (void)send_msg(r, P_LEAVE, NULL, 0);
  if (r->msock >= 0) close(r->msock);
  if (r->usock >= 0) close(r->usock);
  if (r->ep >= 0) close(r->ep);
  if (r->efd >= 0) close(r->efd);
  pkt_mac__free(r->mac);
  for (uint32_t i = 0; r->slots && i < r->n_slots; i++) free(r->slots[i].bits), free(r->slots[i].buf);
  free(r->slots);
  free((void *)r->have), free(r->payload), free(r->have_pos), free(r->missing), free(r->nacked_ms), free(r->slot_of_pos);
  free(r->asked), free(r->out), free(r->rbuf);
  pthread_mutex_destroy(&r->mu);
  free(r);
}

static int open_sockets(struct mc_receiver *r) {
  const struct mc_channel *ch = &r->ch;
  r->msock = mc_udp_socket(ch->group, ch->port, (int)r->o.rcvbuf);
  if (r->msock < 0) return fail(r, r->msock, "group socket on %s:%u", inet_ntoa(ch->group), ch->port);
  int zero = 0;
  /* Only this group's datagrams on this socket, whatever else the host joined. */
  (void)setsockopt(r->msock, IPPROTO_IP, IP_MULTICAST_ALL, &zero, sizeof zero);
  struct ip_mreq mr = { .imr_multiaddr = ch->group, .imr_interface = ch->local };
  if (setsockopt(r->msock, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) return fail(r, -errno, "joining %s", inet_ntoa(ch->group));
  r->usock = mc_udp_socket(ch->local, 0, 1 << 20);
  if (r->usock < 0) return fail(r, r->usock, "unicast socket on %s", inet_ntoa(ch->local));
  struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(ch->port), .sin_addr = ch->sender };
  if (connect(r->usock, (struct sockaddr *)&to, sizeof to) < 0) return fail(r, -errno, "connecting to %s:%u", inet_ntoa(ch->sender), ch->port);
  if ((r->ep = mc_epoll_with(r->msock)) < 0) return fail(r, r->ep, "epoll");
  int err;
  if ((err = mc_epoll_add(r->ep, r->usock)) < 0 || (err = mc_epoll_add(r->ep, r->efd)) < 0) return fail(r, err, "epoll");
  return 0;
}

__thread char mc_open_error[256];

const char *mc_last_open_error(void) { return mc_open_error; }

int mc_receiver__open(struct mc_receiver **out, const struct mc_channel *ch, const struct mc_geometry *g,
                      mc_store_fn store, void *ctx, const struct mc_receiver_options *o) {
  int err = mc_geometry__check(g);
  if (err < 0) return err;
  if (!store || ch->token_len < MC_TOKEN_MIN || ch->token_len > MC_TOKEN_MAX || o->status_ms <= 0 || o->retry_ms <= 0) return -EINVAL;
  struct mc_receiver *r = sf_calloc(1, sizeof *r);
  if (!r) return -ENOMEM;
  r->msock = r->usock = r->ep = r->efd = -1;
  pthread_mutex_init(&r->mu, NULL);
  r->ch = *ch, r->g = *g, r->o = *o, r->store = store, r->ctx = ctx;
  uint64_t n = g->n_granules, words = (n + 63) / 64;
  r->have = sf_calloc(words, sizeof *r->have);
  r->payload = sf_array(n, sizeof *r->payload);
  r->have_pos = sf_calloc(words, sizeof *r->have_pos);
  r->missing = sf_array(n + 1, sizeof *r->missing);
  r->nacked_ms = sf_calloc(n, sizeof *r->nacked_ms);
  r->slot_of_pos = sf_calloc(n, sizeof *r->slot_of_pos);
  r->rbuf = sf_malloc((size_t)BATCH * PKT_MAX);
  r->n_slots = SLOT_BYTES / g->granule_size;
  if (r->n_slots > 1024) r->n_slots = 1024;
  if (r->n_slots < 16) r->n_slots = 16;
  r->slots = sf_calloc(r->n_slots, sizeof *r->slots);
  r->bits_words = (g->granule_size / 64 + 64) / 64;
  if (!r->have || !r->payload || !r->have_pos || !r->missing || !r->nacked_ms || !r->slot_of_pos || !r->rbuf || !r->slots) goto nomem;
  for (uint32_t i = 0; i < r->n_slots; i++) {
    r->slots[i].bits = sf_calloc(r->bits_words, sizeof *r->slots[i].bits);
    r->slots[i].buf = sf_malloc(g->granule_size);
    if (!r->slots[i].bits || !r->slots[i].buf) goto nomem;
  }
  r->miss_cap = n + 1;
  for (uint64_t i = 0; i < n; i++) {
    r->payload[i] = mc_geometry__data_pages(g, i) * MC_PAGE;
    if (r->payload[i]) r->need++;
  }
  if ((err = mc_random(&r->id, sizeof r->id)) < 0 || (err = pkt_mac__new(&r->mac, ch, g->id)) < 0) return mc_receiver__close(r), err;
  if ((r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) return err = -errno, mc_receiver__close(r), err;
  if ((err = open_sockets(r)) < 0) {
    snprintf(mc_open_error, sizeof mc_open_error, "%s", r->error);
    return mc_receiver__close(r), err;
  }
  r->open_ns = r->heard_ns = r->rate_ns = mc_now_ns();
  if ((err = send_join(r)) < 0) return mc_receiver__close(r), err;
  *out = r;
  return 0;
nomem:
  mc_receiver__close(r);
  return -ENOMEM;
}
