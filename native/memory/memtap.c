/*
 * memtap: a clone host's memory on demand (SnowFlock's memtap). A FUSE file system with two
 * files: `ram`, the clone's guest RAM, which QEMU maps with memory-backend-file,share=off; and
 * `state`, the template's device state for migrate-incoming. Every clone of the template on this
 * host maps the same `ram`, so the kernel's page cache and memtap's own store hold one copy for
 * all of them: a granule crosses the network once per host, not once per clone.
 *
 *   memtap --desc FILE --server ADDR:PORT --mount DIR [--fill none|seq|ws|ws-only] [--fill-batch SIZE]
 *          [--fill-delay MS] [--timeout MS] [--spin-us US] [--spin-always] [--host NAME] [--no-auto-unmount] [--stay]
 *          [--mcast-group ADDR]
 *
 * stdin: the ticket's token line first ("token <hex>"), then control lines: "counters" (answered
 * with "counters {json}"), "stop". EOF ends memtap too: its owner is gone (with --stay, for a kept
 * ticket's memtap that outlives its owner, EOF is ignored and SIGTERM ends it).
 * stdout: "ready DIR" once mounted; "filled" when the fill has everything; "failed <reason>".
 *
 * A READ of pages whose granules are present is answered at once from the store; zero pages are
 * always present (the descriptor's page map). Otherwise the read waits while the missing granules
 * are fetched on the demand link; faults arriving together are batched into one request at the
 * end of the loop turn. Every received granule is checked against its CRC32C and refetched when it
 * does not match (MAX_TRIES times, then memtap fails).
 *
 * --mcast-group: the memserver pushes every granule to the ticket's group (on its own address and
 * port, UDP) for every clone host at once; push.c takes them in, in place of the fill. A fault on
 * a granule the push has not brought yet goes by unicast as before (and the memserver sends it to
 * the group too, for the other hosts). Without multicast on the network, one line says so and the
 * fill and faults fetch by unicast.
 *
 * Failure never hangs: a fault the memserver does not answer within --timeout, or a memserver or
 * network that goes away, makes memtap print one line (this host, the memserver, the cause), fail
 * every waiting and later fetch with EIO (QEMU then stops with a bus error, and its caller
 * reports that), and keep serving what it has. It stays mounted until told to stop.
 *
 * Mount hygiene: the mountpoint is created when missing (and then removed at exit). A normal exit
 * (stop, EOF, SIGTERM/SIGINT/SIGHUP) unmounts. auto_unmount (the default; --no-auto-unmount turns
 * it off) mounts through fusermount3, which stays behind and unmounts as soon as this process's
 * FUSE connection closes, so a memtap killed with SIGKILL leaves no mount either. The caller
 * records the mount before it starts memtap and lazily unmounts whatever is left (src/memory/tap.ts).
 *
 * Kernel settings we rely on: readahead off (max_readahead 0), so a fault reads what it faults and
 * the fill alone prefetches; keep_cache on open, so a second QEMU's open does not drop the page
 * cache the first one filled; no automatic invalidation (the file never changes).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "common/sf.h"
#include "memory/crc32c.h"
#include "memory/idle.h"
#include "memory/multicast.h"
#include "memory/tap.h"

#define ATTR_TIMEOUT 86400.0
#define TICK_MS 20

enum tag { T_FUSE, T_DEMAND, T_CONTROL, T_SIGNAL, T_TIMER, T_DONE };
static enum tag tags[] = {T_FUSE, T_DEMAND, T_CONTROL, T_SIGNAL, T_TIMER, T_DONE};

static struct tap tap_state;

uint64_t tap_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void event(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void event(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

/* ---- answering reads ---- */

static uint64_t zero_pages_in(const struct tap *t, uint64_t off, size_t size) {
  uint64_t n = 0;
  for (uint64_t p = off / DESC_PAGE; p < (off + size + DESC_PAGE - 1) / DESC_PAGE; p++) n += !descriptor__page_has_data(&t->d, p);
  return n;
}

/* The store is laid out like the file, zero pages included: every answer is one buffer. */
static void answer(struct tap *t, fuse_req_t req, uint64_t off, size_t size) {
  if (t->store_fd >= 0) {
    /* --splice: the reply spliced from the store (a memfd) into /dev/fuse. */
    struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
    bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    bv.buf[0].fd = t->store_fd;
    bv.buf[0].pos = (off_t)off;
    fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
  } else {
    fuse_reply_buf(req, (const char *)t->store + off, size);
  }
  t->c.zero_pages_served += zero_pages_in(t, off, size);
}

static void pending__release(struct pending *r) {
  if (--r->refs == 0) free(r);
}

/* Every waiting read gets EIO; called once, when memtap fails. */
static void fail_waiters(struct tap *t) {
  for (uint64_t g = 0; g < t->d.n_granules; g++) {
    struct waiter *w = t->waiters[g];
    t->waiters[g] = NULL;
    while (w) {
      struct waiter *next = w->next;
      if (!w->r->done) {
        fuse_reply_err(w->r->req, EIO);
        w->r->done = 1;
        t->c.reads_failed++;
      }
      pending__release(w->r);
      free(w);
      w = next;
    }
  }
}

/* One line for the person running the job, one event for the controller; then EIO for the rest. */
static void tap__fail(struct tap *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void tap__fail(struct tap *t, const char *fmt, ...) {
  if (t->failed) return;
  t->failed = 1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->fail_reason, sizeof t->fail_reason, fmt, ap);
  va_end(ap);
  size_t waiting = 0;
  for (uint64_t g = 0; g < t->d.n_granules; g++) {
    for (struct waiter *w = t->waiters[g]; w; w = w->next) waiting += !w->r->done;
  }
  sf_err(0, "host %s: %s; failing %zu waiting read%s and every later fetch", t->host, t->fail_reason, waiting, waiting == 1 ? "" : "s");
  event("failed host %s: %s", t->host, t->fail_reason);
  atomic_store(&t->stopping, 1); /* the fill stops too */
  fail_waiters(t);
  /* Nothing more comes from this link (and a closed socket would wake the loop forever). */
  if (t->demand.fd >= 0) {
    epoll_ctl(t->ep, EPOLL_CTL_DEL, t->demand.fd, NULL);
    shutdown(t->demand.fd, SHUT_RDWR);
  }
}

static void want(struct tap *t, uint32_t g) { t->want[t->n_want++] = g; }

/* A granule arrived (ok) or failed its checksum: wake or re-request the reads waiting for it. */
static void granule_done(struct tap *t, uint32_t g, int ok) {
  if (!ok) {
    t->c.checksum_failures++;
    if (atomic_load(&t->tries[g]) >= MAX_TRIES) {
      tap__fail(t, "granule %u (guest offset 0x%" PRIx64 ") from the memserver %s failed its checksum %d times: the template or the server is damaged",
                g, (uint64_t)g << t->d.granule_shift, t->server, MAX_TRIES);
      return;
    }
    if (t->waiters[g]) {
      uint8_t expect = G_MISSING;
      if (atomic_compare_exchange_strong(&t->gstate[g], &expect, G_INFLIGHT)) {
        t->c.refetches++;
        want(t, g);
      }
    }
    return;
  }
  struct waiter *w = t->waiters[g];
  t->waiters[g] = NULL;
  uint64_t now = tap_now_ns();
  while (w) {
    struct waiter *next = w->next;
    struct pending *r = w->r;
    if (!r->done && --r->missing == 0) {
      answer(t, r->req, r->off, r->size);
      r->done = 1;
      histogram__add(&t->c.fault, now - r->t0);
    }
    pending__release(r);
    free(w);
    w = next;
  }
}

static void op_read_ram(struct tap *t, fuse_req_t req, size_t size, off_t off) {
  uint64_t t0 = tap_now_ns();
  if ((uint64_t)off >= t->d.ram_size) {
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  if ((uint64_t)off + size > t->d.ram_size) size = (size_t)(t->d.ram_size - (uint64_t)off);
  t->c.reads++;
  t->c.read_bytes += size;
  if (size > t->c.max_read) t->c.max_read = size;
  t->c.read_sizes[size <= 4096 ? 0 : size <= 65536 ? 1 : size <= 1048576 ? 2 : 3]++;
  uint64_t g0 = (uint64_t)off >> t->d.granule_shift, g1 = ((uint64_t)off + size - 1) >> t->d.granule_shift;
  uint32_t missing = 0;
  for (uint64_t g = g0; g <= g1; g++) missing += atomic_load_explicit(&t->gstate[g], memory_order_acquire) != G_PRESENT;
  if (!missing) {
    answer(t, req, (uint64_t)off, size);
    t->c.reads_hit++;
    histogram__add(&t->c.hit, tap_now_ns() - t0);
    return;
  }
  if (t->failed) {
    t->c.reads_failed++;
    fuse_reply_err(req, EIO);
    return;
  }
  struct pending *r = sf_calloc(1, sizeof *r);
  if (!r) {
    fuse_reply_err(req, ENOMEM);
    return;
  }
  *r = (struct pending){.req = req, .off = (uint64_t)off, .size = size, .t0 = t0};
  t->c.reads_waited++;
  for (uint64_t g = g0; g <= g1; g++) {
    uint8_t st = atomic_load_explicit(&t->gstate[g], memory_order_acquire);
    if (st == G_PRESENT) continue;
    struct waiter *w = sf_malloc(sizeof *w);
    if (!w) continue; /* the read then waits for the others only; it cannot be answered wrongly */
    w->r = r;
    w->next = t->waiters[g];
    t->waiters[g] = w;
    r->missing++;
    r->refs++;
    uint8_t expect = G_MISSING;
    if (atomic_compare_exchange_strong(&t->gstate[g], &expect, G_INFLIGHT)) want(t, (uint32_t)g);
    else t->c.waited_on_fill += expect == G_INFLIGHT;
  }
  if (!r->refs) {
    /* Present after all (the fill finished them meanwhile), or no memory for waiters. */
    answer(t, req, (uint64_t)off, size);
    free(r);
  }
}

/* Sends one GET for every granule wanted this turn, as ranges of consecutive granules. */
static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static void flush_wants(struct tap *t) {
  if (!t->n_want || t->failed) {
    t->n_want = 0;
    return;
  }
  if (t->n_want > 1) qsort(t->want, t->n_want, sizeof *t->want, cmp_u32);
  uint32_t small[2 * 64], *ranges = t->n_want <= 64 ? small : sf_array(2 * t->n_want, sizeof(uint32_t));
  if (!ranges) {
    tap__fail(t, "out of memory for a request");
    return;
  }
  uint32_t n = 0, max = W_DATA_MAX / t->d.granule_size;
  for (size_t i = 0; i < t->n_want; i++) {
    uint32_t g = t->want[i];
    if (n && ranges[2 * (n - 1)] + ranges[2 * (n - 1) + 1] == g && ranges[2 * (n - 1) + 1] < max) ranges[2 * (n - 1) + 1]++;
    else ranges[2 * n] = g, ranges[2 * n + 1] = 1, n++;
  }
  t->n_want = 0;
  uint64_t now = tap_now_ns();
  for (uint32_t at = 0; at < n && !t->failed; at += W_GET_MAX_RANGES) {
    uint32_t k = n - at < W_GET_MAX_RANGES ? n - at : W_GET_MAX_RANGES;
    int err = link__get(&t->demand, ranges + 2 * at, k);
    if (err) {
      tap__fail(t, "cannot send a request to the memserver %s: %s", t->server, strerror(-err));
      break;
    }
    t->c.demand_requests++;
    for (uint32_t i = at; i < at + k; i++) {
      if (t->fifo_len == t->fifo_cap) {
        size_t cap = t->fifo_cap ? 2 * t->fifo_cap : 256;
        struct inflight *f = sf_array(cap, sizeof *f);
        if (!f) {
          tap__fail(t, "out of memory for requests in flight");
          break;
        }
        for (size_t j = 0; j < t->fifo_len; j++) f[j] = t->fifo[(t->fifo_head + j) % t->fifo_cap];
        free(t->fifo);
        t->fifo = f;
        t->fifo_cap = cap;
        t->fifo_head = 0;
      }
      t->fifo[(t->fifo_head + t->fifo_len++) % t->fifo_cap] = (struct inflight){ranges[2 * i], ranges[2 * i + 1], now};
    }
  }
  if (ranges != small) free(ranges);
}

/* ---- the demand link ---- */

static void on_demand(struct tap *t) {
  /*
   * Receive calls only while answers are due (after the last one, back to epoll at once), but at
   * least one: a readable socket with nothing due is the memserver closing, or misbehaving.
   */
  do {
    struct inflight *head = t->fifo_len ? &t->fifo[t->fifo_head] : NULL;
    if (head && !t->demand.in_payload && !t->demand.prefix_have) link__expect(&t->demand, head->first, head->count);
    int r = link__receive(&t->demand);
    if (r == 0) return;
    if (r == -ETIMEDOUT) {
      /* TCP_USER_TIMEOUT (link.c, the same timeout) ended the connection before our own check did. */
      tap__fail(t, "memserver %s did not answer a fault within %d ms (network or server down)", t->server, t->timeout_ms);
      return;
    }
    if (r < 0) {
      tap__fail(t, "memserver %s: %s", t->server,
                r == -EPIPE || r == -ECONNRESET ? "it closed the connection (the memserver died?)"
                : r == -EPROTO                  ? "it sent a malformed message"
                                                : strerror(-r));
      return;
    }
    struct inflight *f = t->fifo_len ? &t->fifo[t->fifo_head] : NULL;
    if (!f || f->first != t->demand.first || f->count != t->demand.count) {
      tap__fail(t, "memserver %s answered a request it was not sent", t->server);
      return;
    }
    t->fifo_head = (t->fifo_head + 1) % t->fifo_cap;
    t->fifo_len--;
    uint32_t first = t->demand.first, count = t->demand.count;
    for (uint32_t g = first; g < first + count && !t->failed; g++) {
      if (descriptor__granule_is_zero(&t->d, g)) continue;
      int ok = link__granule_ok(&t->demand, g);
      if (!ok) atomic_fetch_add(&t->tries[g], 1);
      else {
        t->c.demand_granules++;
        t->c.demand_pages += descriptor__granule_data_pages(&t->d, g);
      }
      atomic_store_explicit(&t->gstate[g], ok ? G_PRESENT : G_MISSING, memory_order_release);
      if (ok) push__have(t, g);
      granule_done(t, g, ok);
      /* The read took what it faulted; the rest of a large granule goes into the page cache. */
      if (ok && t->d.granule_size > DESC_PAGE) store__post(t, g, 1);
    }
    if (t->failed) return;
  } while (t->fifo_len);
}

static void on_fill_results(struct tap *t) {
  uint64_t v;
  (void)!read(t->done_efd, &v, sizeof v);
  pthread_mutex_lock(&t->done_mu);
  struct done_item *q = t->done_q;
  size_t n = t->done_len;
  t->done_q = NULL;
  t->done_len = t->done_cap = 0;
  pthread_mutex_unlock(&t->done_mu);
  for (size_t i = 0; i < n && !t->failed; i++) {
    if (t->waiters[q[i].g] || !q[i].ok) granule_done(t, q[i].g, q[i].ok);
  }
  free(q);
  if (atomic_load(&t->fill_failed) && !t->failed) tap__fail(t, "%s", t->fill_error);
  if (!t->fill_reported && atomic_load(&t->f.state) == FILL_DONE) {
    t->fill_reported = 1;
    event("filled");
  }
}

static void on_tick(struct tap *t, int tfd) {
  uint64_t ticks;
  (void)!read(tfd, &ticks, sizeof ticks);
  t->spin_now = t->spin_us && (t->spin_always || idle__cpu_free());
  if (t->failed || !t->fifo_len) return;
  uint64_t age = tap_now_ns() - t->fifo[t->fifo_head].sent_ns;
  if (age > (uint64_t)t->timeout_ms * 1000000u) {
    tap__fail(t, "memserver %s did not answer a fault within %d ms (network or server down)", t->server, t->timeout_ms);
  }
}

/* ---- FUSE operations ---- */

static void fill_attr(struct tap *t, fuse_ino_t ino, struct stat *st) {
  memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_uid = getuid();
  st->st_gid = getgid();
  if (ino == FUSE_ROOT_ID) {
    st->st_mode = S_IFDIR | 0500;
    st->st_nlink = 2;
  } else {
    st->st_mode = S_IFREG | 0600;
    st->st_nlink = 1;
    st->st_size = (off_t)(ino == INO_RAM ? t->d.ram_size : t->d.state_size);
    st->st_blksize = DESC_PAGE;
    st->st_blocks = st->st_size / 512;
  }
}

static void op_init(void *data, struct fuse_conn_info *conn) {
  struct tap *t = data;
  conn->max_readahead = 0;
  conn->want &= ~(unsigned)(FUSE_CAP_AUTO_INVAL_DATA | FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  if (t->store_fd >= 0) conn->want |= conn->capable & (FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  struct tap *t = fuse_req_userdata(req);
  fuse_ino_t ino = !strcmp(name, "ram") ? INO_RAM : !strcmp(name, "state") ? INO_STATE : 0;
  if (parent != FUSE_ROOT_ID || !ino) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct fuse_entry_param e = {.ino = ino, .attr_timeout = ATTR_TIMEOUT, .entry_timeout = ATTR_TIMEOUT};
  fill_attr(t, ino, &e.attr);
  fuse_reply_entry(req, &e);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  (void)fi;
  struct tap *t = fuse_req_userdata(req);
  if (ino != FUSE_ROOT_ID && ino != INO_RAM && ino != INO_STATE) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st;
  fill_attr(t, ino, &st);
  fuse_reply_attr(req, &st, ATTR_TIMEOUT);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  struct tap *t = fuse_req_userdata(req);
  /* Nothing changes a template's RAM; a size that stays the same is allowed (QEMU checks it). */
  if ((to_set & ~FUSE_SET_ATTR_SIZE) || (to_set & FUSE_SET_ATTR_SIZE && (uint64_t)attr->st_size != (ino == INO_RAM ? t->d.ram_size : t->d.state_size))) {
    fuse_reply_err(req, EPERM);
    return;
  }
  op_getattr(req, ino, fi);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct tap *t = fuse_req_userdata(req);
  if (ino != INO_RAM && ino != INO_STATE) {
    fuse_reply_err(req, EISDIR);
    return;
  }
  if (fi->flags & O_TRUNC) {
    fuse_reply_err(req, EPERM);
    return;
  }
  /* QEMU opens its RAM O_RDWR and maps it privately: writes never reach the file. */
  fi->keep_cache = 1;
  fi->direct_io = 0;
  if (ino == INO_RAM) atomic_store(&t->opened, 1);
  fuse_reply_open(req, fi);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  struct tap *t = fuse_req_userdata(req);
  if (ino == INO_RAM) {
    op_read_ram(t, req, size, off);
    return;
  }
  if ((uint64_t)off >= t->d.state_size) {
    fuse_reply_buf(req, NULL, 0);
    return;
  }
  if ((uint64_t)off + size > t->d.state_size) size = (size_t)(t->d.state_size - (uint64_t)off);
  fuse_reply_buf(req, (const char *)t->d.state + off, size);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)ino, (void)buf, (void)size, (void)off, (void)fi;
  fuse_reply_err(req, EROFS);
}

/* QEMU discards guest RAM with fallocate(PUNCH_HOLE) (balloon, virtio-mem): never on a template. */
static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, struct fuse_file_info *fi) {
  (void)ino, (void)mode, (void)off, (void)len, (void)fi;
  fuse_reply_err(req, EOPNOTSUPP);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  (void)fi;
  struct tap *t = fuse_req_userdata(req);
  if (ino != FUSE_ROOT_ID) {
    fuse_reply_err(req, ENOTDIR);
    return;
  }
  static const struct { const char *name; fuse_ino_t ino; } ents[] = {{".", FUSE_ROOT_ID}, {"..", FUSE_ROOT_ID}, {"ram", INO_RAM}, {"state", INO_STATE}};
  char buf[512];
  size_t used = 0;
  for (off_t i = off; i < (off_t)SF_ARRAY_LEN(ents); i++) {
    struct stat st;
    fill_attr(t, ents[i].ino, &st);
    size_t n = fuse_add_direntry(req, buf + used, sizeof buf - used, ents[i].name, &st, i + 1);
    if (n > sizeof buf - used || used + n > size) break;
    used += n;
  }
  fuse_reply_buf(req, buf, used);
}

static const struct fuse_lowlevel_ops ops = {
  .init = op_init,
  .lookup = op_lookup,
  .getattr = op_getattr,
  .setattr = op_setattr,
  .open = op_open,
  .read = op_read,
  .write = op_write,
  .fallocate = op_fallocate,
  .readdir = op_readdir,
};

/* ---- control channel ---- */

static const char *fill_state_name(int s) {
  static const char *names[] = {"idle", "running", "done", "failed", "stopped"};
  return s >= 0 && s < (int)SF_ARRAY_LEN(names) ? names[s] : "?";
}

/* s as the inside of a JSON string. */
static void json_escape(char *out, size_t cap, const char *s) {
  size_t n = 0;
  for (; *s && n + 7 < cap; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') out[n++] = '\\', out[n++] = (char)ch;
    else if (ch < 0x20) n += (size_t)snprintf(out + n, cap - n, "\\u%04x", ch);
    else out[n++] = (char)ch;
  }
  out[n] = 0;
}

static void print_counters(struct tap *t) {
  char reason[2 * sizeof t->fail_reason], host[2 * sizeof t->host];
  json_escape(reason, sizeof reason, t->fail_reason);
  json_escape(host, sizeof host, t->host);
  const struct tap_counters *c = &t->c;
  uint64_t fill_pages = atomic_load(&t->f.pages), fill_granules = atomic_load(&t->f.granules);
  uint64_t fill_bytes = atomic_load(&t->f.bytes);
  uint64_t fs = atomic_load(&t->f.started_ns), ff = atomic_load(&t->f.finished_ns);
  uint64_t push_pages = atomic_load(&t->mc_pages);
  char mc[1024];
  push__json(t, mc, sizeof mc);
  printf("counters {\"host\":\"%s\",\"granuleSize\":%u,\"guestPages\":%" PRIu64 ",\"dataPages\":%" PRIu64 ",\"zeroPages\":%" PRIu64
         ",\"reads\":%" PRIu64 ",\"readsHit\":%" PRIu64 ",\"readsWaited\":%" PRIu64 ",\"readsFailed\":%" PRIu64 ",\"readBytes\":%" PRIu64
         ",\"maxRead\":%" PRIu64 ",\"readSizes\":{\"4K\":%" PRIu64 ",\"to64K\":%" PRIu64 ",\"to1M\":%" PRIu64 ",\"above1M\":%" PRIu64 "}"
         ",\"zeroPagesServed\":%" PRIu64 ",\"pagesFetched\":%" PRIu64 ",\"demandPages\":%" PRIu64 ",\"fillPages\":%" PRIu64
         ",\"demandGranules\":%" PRIu64 ",\"fillGranules\":%" PRIu64 ",\"demandRequests\":%" PRIu64 ",\"bytesReceived\":%" PRIu64
         ",\"checksumFailures\":%" PRIu64 ",\"refetches\":%" PRIu64 ",\"waitedOnFill\":%" PRIu64 ",\"spins\":%" PRIu64 ",\"storedGranules\":%" PRIu64
         ",\"storeErrors\":%" PRIu64 ",\"faults\":%" PRIu64 ",\"faultP50Us\":%.1f,\"faultP99Us\":%.1f,\"faultMaxUs\":%.1f"
         ",\"hitP50Us\":%.2f,\"hitP99Us\":%.2f,\"fill\":\"%s\",\"fillMs\":%.1f,\"wsGranules\":%" PRIu64 ",\"pushPages\":%" PRIu64
         ",\"multicast\":%s,\"failed\":%s%s%s}\n",
         host, t->d.granule_size, t->d.n_pages, t->d.n_pages - t->d.hole_pages - t->d.zeroed_pages, t->d.hole_pages + t->d.zeroed_pages,
         c->reads, c->reads_hit, c->reads_waited, c->reads_failed, c->read_bytes, c->max_read, c->read_sizes[0], c->read_sizes[1],
         c->read_sizes[2], c->read_sizes[3], c->zero_pages_served, c->demand_pages + fill_pages + push_pages, c->demand_pages, fill_pages,
         c->demand_granules, fill_granules, c->demand_requests, t->demand.bytes_received + fill_bytes,
         c->checksum_failures + atomic_load(&t->f.checksum_failures), c->refetches, c->waited_on_fill, c->spins,
         atomic_load(&t->f.stored_granules), atomic_load(&t->f.store_errors), c->fault.n,
         histogram__quantile(&c->fault, 0.5) / 1e3, histogram__quantile(&c->fault, 0.99) / 1e3, c->fault.max_ns / 1e3,
         histogram__quantile(&c->hit, 0.5) / 1e3, histogram__quantile(&c->hit, 0.99) / 1e3,
         fill_state_name(atomic_load(&t->f.state)), fs ? ((ff ? ff : tap_now_ns()) - fs) / 1e6 : 0.0, atomic_load(&t->f.ws_granules), push_pages, mc,
         t->failed ? "\"" : "null", t->failed ? reason : "", t->failed ? "\"" : "");
  fflush(stdout);
}

static int on_control(struct tap *t, char *buf, size_t *len, size_t cap) {
  ssize_t n = read(STDIN_FILENO, buf + *len, cap - 1 - *len);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return 0;
  if (n <= 0) {
    if (!t->stay) return 1; /* the owner is gone */
    epoll_ctl(t->ep, EPOLL_CTL_DEL, STDIN_FILENO, NULL);
    return 0;
  }
  *len += (size_t)n;
  buf[*len] = 0;
  char *start = buf, *nl;
  int stop = 0;
  while ((nl = strchr(start, '\n'))) {
    *nl = 0;
    if (!strcmp(start, "counters")) print_counters(t);
    else if (!strcmp(start, "stop")) stop = 1;
    else event("error unknown command: %.60s", start);
    start = nl + 1;
  }
  *len -= (size_t)(start - buf);
  memmove(buf, start, *len);
  if (*len == cap - 1) *len = 0;
  return stop;
}

/* ---- setup and the loop ---- */

static void usage(void) {
  sf_die(2, 0, "usage: memtap --desc FILE --server ADDR:PORT --mount DIR [--fill none|seq|ws|ws-only] [--fill-batch SIZE] "
               "[--fill-delay MS] [--timeout MS] [--spin-us US] [--spin-always] [--host NAME] [--no-auto-unmount] [--stay] [--mcast-group ADDR] (token on stdin)");
}

static int add_fd(int ep, int fd, enum tag *tag) {
  struct epoll_event e = {.events = EPOLLIN, .data.ptr = tag};
  return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0 ? -errno : 0;
}

static int alloc_state(struct tap *t) {
  uint64_t n = t->d.n_granules;
  /* The store: anonymous, reserved lazily; zero pages of it are never touched (and never cost).
   * With --splice, a memfd the replies can be spliced from. */
  void *store;
  if (t->store_fd == -2) {
    t->store_fd = memfd_create("memtap-store", MFD_CLOEXEC);
    if (t->store_fd < 0 || ftruncate(t->store_fd, (off_t)t->d.ram_size) < 0) return -errno;
    store = mmap(NULL, t->d.ram_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, t->store_fd, 0);
  } else {
    store = mmap(NULL, t->d.ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  }
  if (store == MAP_FAILED) return -errno;
  madvise(store, t->d.ram_size, MADV_NOHUGEPAGE); /* a 4 KiB page in, not 2 MiB */
  t->store = store;
  t->gstate = sf_calloc(n, sizeof *t->gstate);
  t->tries = sf_calloc(n, sizeof *t->tries);
  t->waiters = sf_calloc(n, sizeof *t->waiters);
  t->want = sf_array(n, sizeof *t->want);
  if (!t->gstate || !t->tries || !t->waiters || !t->want) return -ENOMEM;
  for (uint64_t g = 0; g < n; g++) atomic_init(&t->gstate[g], descriptor__granule_is_zero(&t->d, g) ? G_PRESENT : G_MISSING);
  return 0;
}

/*
 * With a fault waiting, polls the demand socket for up to spin_us before sleeping in epoll: a
 * wake-up costs as much as the fetch itself on a loaded machine. Only while a CPU is free
 * (idle.h, sampled each tick): polling while every CPU has work takes one from a vCPU and loses
 * more than it saves (measured: benchmarks/RESULTS.md, fault latency).
 */
static void spin(struct tap *t) {
  if (!t->spin_now || !t->fifo_len || t->failed) return;
  t->c.spins++;
  uint64_t end = tap_now_ns() + (uint64_t)t->spin_us * 1000u;
  while (t->fifo_len && !t->failed && tap_now_ns() < end) {
    on_demand(t);
    flush_wants(t); /* a checksum failure re-requests */
  }
}

static void run(struct tap *t, int ep, int tfd, int sfd) {
  struct fuse_buf fbuf = {.mem = NULL};
  char ctl[1024];
  size_t ctl_len = 0;
  struct epoll_event ev[16];
  while (!fuse_session_exited(t->se)) {
    int n = epoll_wait(ep, ev, SF_ARRAY_LEN(ev), -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      sf_err(-errno, "epoll_wait");
      break;
    }
    int stop = 0;
    for (int i = 0; i < n; i++) {
      switch (*(enum tag *)ev[i].data.ptr) {
      case T_FUSE:
        /* Every request that is there, then one batched GET for all their misses. */
        for (;;) {
          int r = fuse_session_receive_buf(t->se, &fbuf);
          if (r == -EINTR) continue;
          if (r <= 0) break;
          fuse_session_process_buf(t->se, &fbuf);
        }
        break;
      case T_DEMAND: on_demand(t); break;
      case T_DONE: on_fill_results(t); break;
      case T_TIMER: on_tick(t, tfd); break;
      case T_CONTROL: stop |= on_control(t, ctl, &ctl_len, sizeof ctl); break;
      case T_SIGNAL: {
        struct signalfd_siginfo si;
        (void)!read(sfd, &si, sizeof si);
        stop = 1;
        break;
      }
      }
    }
    flush_wants(t);
    spin(t);
    if (stop) break;
  }
  free(fbuf.mem);
}

int main(int argc, char **argv) {
  sf_prog("memtap");
  struct tap *t = &tap_state;
  const char *desc = NULL, *host = NULL;
  int auto_unmount = 1;
  t->timeout_ms = 5000;
  t->spin_us = 50; /* only while a CPU is free (idle.h), unless --spin-always */
  t->store_fd = -1;
  t->fill_mode = FILL_WS; /* the working set first when the memserver has one, else in order */
  t->fill_batch = 1u << 20;
  static const struct option opts[] = {
    {"desc", required_argument, 0, 'd'}, {"server", required_argument, 0, 's'}, {"mount", required_argument, 0, 'm'},
    {"fill", required_argument, 0, 'f'}, {"fill-batch", required_argument, 0, 'b'}, {"fill-delay", required_argument, 0, 'D'},
    {"timeout", required_argument, 0, 't'}, {"host", required_argument, 0, 'H'}, {"no-auto-unmount", no_argument, 0, 'A'},
    {"spin-us", required_argument, 0, 'S'}, {"stay", no_argument, 0, 'Y'}, {"spin-always", no_argument, 0, 'W'},
    {"splice", no_argument, 0, 'L'}, {"mcast-group", required_argument, 0, 'g'},
    {0, 0, 0, 0},
  };
  int c;
  long v;
  uint64_t size;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'd': desc = optarg; break;
    case 's': t->server = optarg; break;
    case 'm': t->mountpoint = optarg; break;
    case 'H': host = optarg; break;
    case 'A': auto_unmount = 0; break;
    case 'Y': t->stay = 1; break;
    case 'W': t->spin_always = 1; break;
    case 'L': t->store_fd = -2; break;
    case 'g': t->mc_group = optarg; break;
    case 'f':
      if (!strcmp(optarg, "none")) t->fill_mode = FILL_NONE;
      else if (!strcmp(optarg, "seq")) t->fill_mode = FILL_SEQ;
      else if (!strcmp(optarg, "ws")) t->fill_mode = FILL_WS;
      else if (!strcmp(optarg, "ws-only")) t->fill_mode = FILL_WS_ONLY;
      else sf_die(2, 0, "--fill %s: expected none, seq, ws or ws-only", optarg);
      break;
    case 'b':
      if (sf_parse_size(optarg, &size) < 0 || size < DESC_PAGE || size > W_GET_MAX_BYTES) sf_die(2, 0, "--fill-batch %s: a size from 4K to 64M", optarg);
      t->fill_batch = (uint32_t)size;
      break;
    case 'D':
      if (sf_parse_long(optarg, 0, 3600000, &v) < 0) sf_die(2, 0, "--fill-delay %s: milliseconds", optarg);
      t->fill_delay_ms = (int)v;
      break;
    case 'S':
      if (sf_parse_long(optarg, 0, 10000, &v) < 0) sf_die(2, 0, "--spin-us %s: microseconds from 0 to 10000", optarg);
      t->spin_us = (int)v;
      break;
    case 't':
      if (sf_parse_long(optarg, 10, 600000, &v) < 0) sf_die(2, 0, "--timeout %s: milliseconds from 10 to 600000", optarg);
      t->timeout_ms = (int)v;
      break;
    default: usage();
    }
  }
  if (!desc || !t->server || !t->mountpoint || optind != argc) usage();
  if (t->mc_group && !multicast__group_ok(t->mc_group)) sf_die(2, 0, "--mcast-group %s: not an IPv4 address in 239.0.0.0/8", t->mc_group);
  if (host) snprintf(t->host, sizeof t->host, "%s", host);
  else if (gethostname(t->host, sizeof t->host) < 0) snprintf(t->host, sizeof t->host, "?");
  (void)crc32c_impl();

  int err = wire_token__read(&t->token, STDIN_FILENO);
  if (err) sf_die(2, err == -ENODATA ? 0 : err, "expected the ticket's token on stdin (a line \"token <32 to 128 hex digits>\")");
  const char *why = "";
  if ((err = descriptor__load(&t->d, desc, &why)) < 0) sf_die(1, err, "descriptor %s: %s", desc, why);
  if ((err = alloc_state(t)) < 0) sf_die(1, err, "cannot allocate the store for %" PRIu64 " bytes of guest RAM", t->d.ram_size);
  pthread_mutex_init(&t->done_mu, NULL);
  pthread_mutex_init(&t->store_mu, NULL);
  pthread_cond_init(&t->store_cv, NULL);

  /* The memserver first: a bad address or token fails before anything is mounted. */
  char reason[400];
  if ((err = link__connect(&t->demand, t->server, ROLE_DEMAND, &t->d, &t->token, t->store, t->timeout_ms, 1, reason, sizeof reason)) < 0)
    sf_die(1, 0, "host %s: %s", t->host, reason);

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* before any thread starts: they inherit the mask */
  signal(SIGPIPE, SIG_IGN);

  /* The mountpoint is ours when we make it, and goes with us then. */
  int made_dir = mkdir(t->mountpoint, 0700) == 0;
  if (!made_dir && errno != EEXIST) sf_die(1, -errno, "cannot create the mountpoint %s", t->mountpoint);
  char *fargv[] = {"memtap", "-o", auto_unmount ? "fsname=memtap,subtype=memtap,auto_unmount" : "fsname=memtap,subtype=memtap", NULL};
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  t->se = fuse_session_new(&args, &ops, sizeof ops, t);
  fuse_opt_free_args(&args);
  if (!t->se) {
    if (made_dir) rmdir(t->mountpoint);
    sf_die(1, 0, "cannot create the FUSE session (is /dev/fuse there?)");
  }
  if (fuse_session_mount(t->se, t->mountpoint) != 0) {
    fuse_session_destroy(t->se);
    if (made_dir) rmdir(t->mountpoint);
    sf_die(1, 0, "cannot mount the memtap at %s (does the directory exist? is fusermount3 installed?)", t->mountpoint);
  }
  int ffd = fuse_session_fd(t->se);
  fcntl(ffd, F_SETFL, fcntl(ffd, F_GETFL) | O_NONBLOCK);
  int ep = t->ep = epoll_create1(EPOLL_CLOEXEC);
  int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
  int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
  t->done_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  struct itimerspec it = {.it_interval = {0, TICK_MS * 1000000}, .it_value = {0, TICK_MS * 1000000}};
  err = ep < 0 || sfd < 0 || tfd < 0 || t->done_efd < 0 ? -errno : 0;
  if (!err) timerfd_settime(tfd, 0, &it, NULL);
  if (!err && !(err = add_fd(ep, ffd, &tags[T_FUSE])) && !(err = add_fd(ep, t->demand.fd, &tags[T_DEMAND])) &&
      !(err = add_fd(ep, STDIN_FILENO, &tags[T_CONTROL])) && !(err = add_fd(ep, sfd, &tags[T_SIGNAL])) &&
      !(err = add_fd(ep, tfd, &tags[T_TIMER])) && !(err = add_fd(ep, t->done_efd, &tags[T_DONE])))
    err = store__start(t);
  if (!err) {
    int pushing = push__start(t); /* the push is the fill; without it, the fill */
    err = pushing < 0 ? pushing : pushing ? 0 : fill__start(t);
  }
  if (err) sf_err(err, "cannot start memtap's loop");
  else {
    event("ready %s", t->mountpoint);
    run(t, ep, tfd, sfd);
  }
  /* Stop the fill, unmount (which aborts reads the store thread may wait behind), then join it. */
  atomic_store(&t->stopping, 1);
  push__stop(t); /* first: it may have started the fill */
  fill__stop(t);
  fuse_session_unmount(t->se);
  store__stop(t);
  fuse_session_destroy(t->se);
  if (made_dir && rmdir(t->mountpoint) < 0) sf_err(-errno, "cannot remove the mountpoint %s", t->mountpoint);
  link__close(&t->demand);
  for (uint64_t g = 0; g < t->d.n_granules; g++) {
    for (struct waiter *w = t->waiters[g], *next; w; w = next) {
      next = w->next;
      pending__release(w->r);
      free(w);
    }
  }
  munmap(t->store, t->d.ram_size);
  if (t->store_fd >= 0) close(t->store_fd);
  free(t->gstate);
  free(t->tries);
  free(t->waiters);
  free(t->want);
  free(t->fifo);
  free(t->done_q);
  free(t->store_q);
  descriptor__free(&t->d);
  explicit_bzero(&t->token, sizeof t->token);
  return err ? 1 : t->failed ? 3 : 0;
}
