/*
 * The memtap's multicast receiver (--mcast-group): the memserver pushes every data granule of the
 * template once to the ticket's group, for every clone host at once (native/mcast, SnowFlock's
 * mcdist); this thread takes each verified granule into the store, as the fill would have fetched
 * it (tap.h: who does what). It replaces the fill: the push is the fill, the unicast demand link
 * stays for the faults the push has not reached yet.
 *
 * Multicast is an optimisation, never a condition: a group that cannot be joined, or a sender that
 * falls silent, is said in one line and the host goes on by unicast: the fill starts then (from
 * this thread, which main joins before the fill's at exit), faults as always. The
 * memory stays right either way: every pushed granule is checked against the descriptor's CRC32C
 * before it is stored (mcast/receiver.c), and every datagram's MAC under the ticket's token.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/sf.h"
#include "memory/multicast.h"
#include "memory/tap.h"

#define PUSH_TURN_MS 50

/* The receiver's store callback, on the push thread: a granule whose checksum matched. */
static int on_pushed(void *ctx, uint32_t g, const unsigned char *pages, size_t len) {
  struct tap *t = ctx;
  uint8_t expect = G_MISSING;
  if (!atomic_compare_exchange_strong(&t->gstate[g], &expect, G_INFLIGHT)) return 1; /* a fault has it */
  const struct descriptor *d = &t->d;
  uint64_t p0 = (uint64_t)g * d->pages_per_granule;
  size_t at = 0;
  for (uint64_t p = p0; p < p0 + d->pages_per_granule && at + DESC_PAGE <= len; p++) {
    if (!descriptor__page_has_data(d, p)) continue; /* zero pages never travel: the store is zero there */
    memcpy(t->store + p * DESC_PAGE, pages + at, DESC_PAGE);
    at += DESC_PAGE;
  }
  atomic_store_explicit(&t->gstate[g], G_PRESENT, memory_order_release);
  atomic_fetch_add(&t->mc_pages, at / DESC_PAGE);
  struct done_item done = {g, 1};
  fill__post(t, &done, 1); /* wakes the reads that wait for it */
  store__post(t, g, 1);
  return 0;
}

static void snapshot(struct tap *t) {
  pthread_mutex_lock(&t->mc_mu);
  mc_receiver__stats(t->mc, &t->mc_stats);
  t->mc_complete = mc_receiver__complete(t->mc);
  pthread_mutex_unlock(&t->mc_mu);
}

/* The push stopped short: one line, and the faults fetch what it did not bring. */
static void push__gave_up(struct tap *t, const char *why) {
  pthread_mutex_lock(&t->mc_mu);
  snprintf(t->mc_error, sizeof t->mc_error, "%s", why);
  pthread_mutex_unlock(&t->mc_mu);
  if (!atomic_load(&t->stopping)) sf_err(0, "host %s: multicast from %s stopped (%s); the rest comes by unicast", t->host, t->server, why);
}

/*
 * Runs the receiver until memtap stops: after the push (all of the template, or its working set)
 * the group still brings what other hosts fault on, before the clones here touch it.
 */
static void *push_main(void *arg) {
  struct tap *t = arg;
  uint64_t done_at = 0;
  while (!atomic_load(&t->stopping)) {
    int err = mc_receiver__run(t->mc, PUSH_TURN_MS);
    snapshot(t);
    if (err < 0) {
      push__gave_up(t, mc_receiver__error(t->mc));
      /* The fill takes over what the push did not bring (it skips what is here). */
      if (!atomic_load(&t->stopping) && (err = fill__start(t)) < 0) sf_err(err, "host %s: cannot start the fill", t->host);
      break;
    }
    if (!done_at && mc_receiver__complete(t->mc)) {
      done_at = tap_now_ns();
      atomic_store(&t->f.finished_ns, done_at);
      atomic_store(&t->f.state, FILL_DONE);
      uint64_t one = 1;
      (void)!write(t->done_efd, &one, sizeof one); /* main reports "filled" */
    }
  }
  return NULL;
}

int push__start(struct tap *t) {
  if (!t->mc_group) return 0;
  pthread_mutex_init(&t->mc_mu, NULL);
  char host[64];
  const char *colon = strrchr(t->server, ':');
  snprintf(host, sizeof host, "%.*s", colon ? (int)(colon - t->server) : 0, t->server);
  long port = 0;
  struct mc_channel ch;
  const char *why = "";
  if (!colon || sf_parse_long(colon + 1, 1, 65535, &port) < 0) why = "the memserver's address has no port";
  else if (multicast__channel(&ch, t->mc_group, host, (uint16_t)port, NULL, &t->token, &why) == 0) {
    multicast__geometry(&t->d, &t->mc_geo);
    struct mc_receiver_options o;
    mc_receiver_options__defaults(&o);
    o.sender_timeout_ms = t->timeout_ms;
    o.leave_when_complete = 0; /* the group carries other hosts' faults after the push */
    int err = mc_receiver__open(&t->mc, &ch, &t->mc_geo, on_pushed, t, &o);
    explicit_bzero(&ch, sizeof ch);
    if (err < 0) {
      t->mc = NULL;
      why = *mc_last_open_error() ? mc_last_open_error() : strerror(-err);
    }
  }
  if (!t->mc) {
    push__gave_up(t, why);
    return 0;
  }
  /* A granule a fault brought before the receiver existed is not asked for. */
  for (uint64_t g = 0; g < t->d.n_granules; g++)
    if (atomic_load(&t->gstate[g]) == G_PRESENT && !descriptor__granule_is_zero(&t->d, g)) mc_receiver__have(t->mc, (uint32_t)g);
  atomic_store(&t->f.started_ns, tap_now_ns());
  atomic_store(&t->f.state, FILL_RUNNING);
  int err = pthread_create(&t->mc_thread, NULL, push_main, t);
  if (err) {
    mc_receiver__close(t->mc);
    t->mc = NULL;
    return -err;
  }
  t->mc_started = 1;
  return 1;
}

void push__stop(struct tap *t) {
  if (t->mc_started) pthread_join(t->mc_thread, NULL); /* stopping is set: it returns within a turn */
  t->mc_started = 0;
  if (t->mc) mc_receiver__close(t->mc); /* tells the sender we leave */
  t->mc = NULL;
}

void push__have(struct tap *t, uint32_t g) {
  if (t->mc) mc_receiver__have(t->mc, g);
}

void push__json(struct tap *t, char *out, size_t cap) {
  if (!t->mc_group || (!t->mc && !*t->mc_error)) {
    snprintf(out, cap, "null");
    return;
  }
  pthread_mutex_lock(&t->mc_mu);
  struct mc_receiver_stats st = t->mc_stats;
  int complete = t->mc_complete;
  char error[sizeof t->mc_error];
  memcpy(error, t->mc_error, sizeof error);
  pthread_mutex_unlock(&t->mc_mu);
  multicast__receiver_json(&st, complete, error, out, cap);
}
