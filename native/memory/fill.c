/*
 * The memtap's background fill and its page-cache pusher (tap.h has who does what).
 *
 * Fill order: the working set the memserver recorded on an earlier run of this template (REAP:
 * the pages clones fault on first, in that order), then every other data granule from the start
 * (ws; seq skips the working set; ws-only stops after it, as REAP does, leaving the rest to faults).
 * Zero granules are never fetched. A granule a fault already brought in is skipped; one a fault
 * needs while the fill has it in flight is waited for (main counts those).
 *
 * Requests go out in batches of about fill_batch bytes, two batches in flight so that the link is
 * never idle while a batch's reply is checked. Every granule's checksum is checked; a bad one goes
 * back to MISSING and to the end of the fill's list, up to MAX_TRIES times.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/sf.h"
#include "memory/tap.h"

#define FILL_MAX_RANGES 256
#define FILL_DEPTH 2

void fill__post(struct tap *t, const struct done_item *items, size_t n) {
  if (!n) return;
  pthread_mutex_lock(&t->done_mu);
  if (t->done_len + n > t->done_cap) {
    size_t cap = t->done_cap ? t->done_cap : 256;
    while (cap < t->done_len + n) cap *= 2;
    struct done_item *q = sf_realloc(t->done_q, cap * sizeof *q);
    if (!q) {
      /* Without room the results are lost; a read waiting for one times out and says so. */
      pthread_mutex_unlock(&t->done_mu);
      return;
    }
    t->done_q = q;
    t->done_cap = cap;
  }
  memcpy(t->done_q + t->done_len, items, n * sizeof *items);
  t->done_len += n;
  pthread_mutex_unlock(&t->done_mu);
  uint64_t one = 1;
  (void)!write(t->done_efd, &one, sizeof one);
}

static void fill_fail(struct tap *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fill_fail(struct tap *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(t->fill_error, sizeof t->fill_error, fmt, ap);
  va_end(ap);
  atomic_store(&t->f.state, FILL_FAILED);
  atomic_store(&t->fill_failed, 1);
  uint64_t one = 1;
  (void)!write(t->done_efd, &one, sizeof one);
}

/* The fill's list of granules: working set first (deduplicated), then all data granules. */
static uint32_t *fill_order(struct tap *t, uint32_t *ws, uint32_t n_ws, size_t *n) {
  const struct descriptor *d = &t->d;
  uint32_t *order = sf_array(d->n_data_granules + n_ws + 1, sizeof(uint32_t));
  uint8_t *seen = sf_calloc(d->n_granules, 1);
  if (!order || !seen) {
    free(order);
    free(seen);
    return NULL;
  }
  size_t k = 0;
  for (uint32_t i = 0; i < n_ws; i++) {
    uint64_t g = ws[i] >> (d->granule_shift - DESC_PAGE_SHIFT);
    if (g < d->n_granules && !seen[g] && !descriptor__granule_is_zero(d, g)) seen[g] = 1, order[k++] = (uint32_t)g;
  }
  atomic_store(&t->f.ws_granules, k);
  for (uint64_t g = 0; g < d->n_granules && t->fill_mode != FILL_WS_ONLY; g++) {
    if (!seen[g] && !descriptor__granule_is_zero(d, g)) order[k++] = (uint32_t)g;
  }
  free(seen);
  *n = k;
  return order;
}

struct batch {
  uint32_t ranges[2 * FILL_MAX_RANGES];
  uint32_t n;
};

/* Claims the next MISSING granules of the order into a batch of ranges. */
static void claim(struct tap *t, uint32_t *order, size_t n_order, size_t *cursor, struct batch *b) {
  uint64_t bytes = 0;
  b->n = 0;
  while (*cursor < n_order && b->n < FILL_MAX_RANGES && bytes < t->fill_batch) {
    uint32_t g = order[(*cursor)++];
    uint8_t expect = G_MISSING;
    if (!atomic_compare_exchange_strong(&t->gstate[g], &expect, G_INFLIGHT)) continue;
    bytes += (uint64_t)descriptor__granule_data_pages(&t->d, g) * DESC_PAGE;
    if (b->n && b->ranges[2 * (b->n - 1)] + b->ranges[2 * (b->n - 1) + 1] == g &&
        b->ranges[2 * (b->n - 1) + 1] < W_DATA_MAX / t->d.granule_size) {
      b->ranges[2 * (b->n - 1) + 1]++;
    } else {
      b->ranges[2 * b->n] = g;
      b->ranges[2 * b->n + 1] = 1;
      b->n++;
    }
  }
}

static void sleep_ms(int ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

static void *fill_main(void *arg) {
  struct tap *t = arg;
  char why[400];
  /* A background fill: the clones' vCPUs and their faults come first for the CPU. */
  setpriority(PRIO_PROCESS, (id_t)gettid(), 10);
  if (t->fill_delay_ms > 0) sleep_ms(t->fill_delay_ms);
  if (atomic_load(&t->stopping)) return NULL;
  int err = link__connect(&t->fill, t->server, ROLE_FILL, &t->d, &t->token, t->store, t->timeout_ms, 0, why, sizeof why);
  if (err) {
    fill_fail(t, "%s", why);
    return NULL;
  }
  atomic_store(&t->fill_fd, t->fill.fd);
  uint32_t *ws = NULL, n_ws = 0;
  if ((t->fill_mode == FILL_WS || t->fill_mode == FILL_WS_ONLY) && (err = link__receive_ws(&t->fill, &ws, &n_ws, t->timeout_ms)) < 0) {
    fill_fail(t, "memserver %s: cannot get the working set: %s", t->server, strerror(-err));
    return NULL;
  }
  /* Receives time out like the demand link's: a dead path ends the fill with a reason. */
  struct timeval tv = {.tv_sec = t->timeout_ms / 1000, .tv_usec = (t->timeout_ms % 1000) * 1000};
  setsockopt(t->fill.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  size_t n_order = 0, cursor = 0;
  uint32_t *order = fill_order(t, ws, n_ws, &n_order);
  free(ws);
  if (!order) {
    fill_fail(t, "out of memory for the fill order");
    return NULL;
  }
  atomic_store(&t->f.started_ns, tap_now_ns());
  atomic_store(&t->f.state, FILL_RUNNING);
  struct batch q[FILL_DEPTH];
  uint32_t head = 0, len = 0, msgs_left = 0; /* ring of batches in flight; messages left of the head */
  uint64_t bytes_seen = 0;
  struct done_item *done = sf_array(W_DATA_MAX / t->d.granule_size, sizeof *done);
  if (!done) {
    free(order);
    fill_fail(t, "out of memory for the fill");
    return NULL;
  }
  while (!atomic_load(&t->stopping)) {
    while (len < FILL_DEPTH) {
      struct batch *b = &q[(head + len) % FILL_DEPTH];
      claim(t, order, n_order, &cursor, b);
      if (!b->n) break;
      if ((err = link__get(&t->fill, b->ranges, b->n)) < 0) {
        fill_fail(t, "memserver %s: sending a fill request: %s", t->server, strerror(-err));
        goto out;
      }
      if (len++ == 0) msgs_left = b->n;
    }
    if (!len) break; /* everything claimed and received */
    err = link__receive(&t->fill);
    if (err <= 0) {
      if (!atomic_load(&t->stopping)) {
        fill_fail(t, "memserver %s: %s", t->server,
                  err == 0                               ? "no fill data within the timeout"
                  : err == -EPIPE || err == -ECONNRESET ? "it closed the fill connection (the memserver died?)"
                                                        : strerror(-err));
      }
      goto out;
    }
    uint32_t run = 0, run_len = 0; /* consecutive good granules: one page-cache push for all */
    size_t n_done = 0;
    for (uint64_t g = t->fill.first; g < (uint64_t)t->fill.first + t->fill.count; g++) {
      if (descriptor__granule_is_zero(&t->d, g)) continue; /* never claimed */
      int ok = link__granule_ok(&t->fill, g);
      atomic_store_explicit(&t->gstate[g], ok ? G_PRESENT : G_MISSING, memory_order_release);
      if (ok) {
        atomic_fetch_add(&t->f.granules, 1);
        atomic_fetch_add(&t->f.pages, descriptor__granule_data_pages(&t->d, g));
        if (run_len && run + run_len == g) run_len++;
        else {
          if (run_len) store__post(t, run, run_len);
          run = (uint32_t)g, run_len = 1;
        }
      } else {
        atomic_fetch_add(&t->f.checksum_failures, 1);
        /* Again later, unless it keeps failing: then main reports it when a read needs it. */
        if (atomic_fetch_add(&t->tries[g], 1) + 1 < MAX_TRIES) order[--cursor] = (uint32_t)g;
      }
      done[n_done++] = (struct done_item){(uint32_t)g, ok};
    }
    if (run_len) store__post(t, run, run_len);
    fill__post(t, done, n_done); /* one wake-up of main per message */
    atomic_fetch_add(&t->f.bytes, t->fill.bytes_received - bytes_seen);
    bytes_seen = t->fill.bytes_received;
    if (--msgs_left == 0) {
      head = (head + 1) % FILL_DEPTH;
      len--;
      if (len) msgs_left = q[head].n;
    }
  }
  if (!atomic_load(&t->stopping)) {
    atomic_store(&t->f.finished_ns, tap_now_ns());
    atomic_store(&t->f.state, FILL_DONE);
    uint64_t one = 1;
    (void)!write(t->done_efd, &one, sizeof one); /* main reports "filled" */
  }
out:
  free(done);
  free(order);
  return NULL;
}

int fill__start(struct tap *t) {
  if (t->fill_mode == FILL_NONE) return 0;
  t->fill.fd = -1;
  atomic_store(&t->fill_fd, -1);
  int err = pthread_create(&t->fill_thread, NULL, fill_main, t);
  if (err) return -err;
  t->fill_started = 1;
  return 0;
}

void fill__stop(struct tap *t) {
  if (!t->fill_started) return;
  int fd = atomic_load(&t->fill_fd);
  if (fd >= 0) shutdown(fd, SHUT_RDWR); /* unblocks its receive */
  pthread_join(t->fill_thread, NULL);
  link__close(&t->fill);
  t->fill_started = 0;
  if (atomic_load(&t->f.state) == FILL_RUNNING) atomic_store(&t->f.state, FILL_STOPPED);
}

/* ---- the store thread: present granules into the kernel's page cache ---- */

void store__post(struct tap *t, uint32_t first, uint32_t count) {
  if (!t->store_started) return;
  pthread_mutex_lock(&t->store_mu);
  if (t->store_len == t->store_cap) {
    size_t cap = t->store_cap ? 2 * t->store_cap : 1024;
    uint32_t (*q)[2] = sf_array(cap, sizeof *q);
    if (!q) {
      /* Only an optimization is lost: reads of it are answered from the store. */
      pthread_mutex_unlock(&t->store_mu);
      return;
    }
    for (size_t i = 0; i < t->store_len; i++) memcpy(q[i], t->store_q[(t->store_head + i) % t->store_cap], sizeof q[i]);
    free(t->store_q);
    t->store_q = q;
    t->store_cap = cap;
    t->store_head = 0;
  }
  size_t at = (t->store_head + t->store_len++) % t->store_cap;
  t->store_q[at][0] = first;
  t->store_q[at][1] = count;
  pthread_cond_signal(&t->store_cv);
  pthread_mutex_unlock(&t->store_mu);
}

static void *store_main(void *arg) {
  struct tap *t = arg;
  pthread_mutex_lock(&t->store_mu);
  for (;;) {
    while (!t->store_len && !atomic_load(&t->stopping)) pthread_cond_wait(&t->store_cv, &t->store_mu);
    if (atomic_load(&t->stopping)) break;
    uint32_t first = t->store_q[t->store_head][0], count = t->store_q[t->store_head][1];
    t->store_head = (t->store_head + 1) % t->store_cap;
    t->store_len--;
    pthread_mutex_unlock(&t->store_mu);
    /* Before QEMU opened the file the kernel has no inode to store into; reads are local then. */
    if (atomic_load(&t->opened)) {
      uint64_t off = (uint64_t)first << t->d.granule_shift, size = (uint64_t)count << t->d.granule_shift;
      struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
      bv.buf[0].mem = t->store + off;
      int err = fuse_lowlevel_notify_store(t->se, INO_RAM, (off_t)off, &bv, 0);
      if (err) atomic_fetch_add(&t->f.store_errors, 1);
      else atomic_fetch_add(&t->f.stored_granules, count);
    }
    pthread_mutex_lock(&t->store_mu);
  }
  pthread_mutex_unlock(&t->store_mu);
  return NULL;
}

int store__start(struct tap *t) {
  int err = pthread_create(&t->store_thread, NULL, store_main, t);
  if (err) return -err;
  t->store_started = 1;
  return 0;
}

void store__stop(struct tap *t) {
  if (!t->store_started) return;
  pthread_mutex_lock(&t->store_mu);
  atomic_store(&t->stopping, 1);
  pthread_cond_signal(&t->store_cv);
  pthread_mutex_unlock(&t->store_mu);
  pthread_join(t->store_thread, NULL);
  t->store_started = 0;
}
