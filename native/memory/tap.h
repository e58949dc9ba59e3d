/*
 * The memtap's shared state: the store (its own copy of guest RAM, laid out like the RAM file),
 * the state of every granule, the demand side (FUSE reads waiting for granules, requests in
 * flight) and the counters. memtap.c owns the event loop and FUSE; fill.c the background fill and
 * the thread that pushes granules into the kernel's page cache.
 *
 * Threads and who touches what:
 *   main    FUSE requests, the demand link, waiters, replies, the control channel. The only thread
 *           that replies to READs, so it never blocks on the page cache (see store thread).
 *   fill    its own link; claims MISSING granules, receives them into the store, and posts each
 *           result to main (a queue and an eventfd), which wakes the reads waiting for them.
 *   store   fuse_lowlevel_notify_store() of present granules. That call locks page-cache pages,
 *           which a READ in flight also holds until main answers it; kept off main, it can wait.
 *
 * A granule moves MISSING -> INFLIGHT (whoever claims it with a compare-and-swap fetches it) ->
 * PRESENT (its checksum matched; store bytes final, published with release order), or back to
 * MISSING when the checksum failed. All-zero granules are PRESENT from the start: the store is
 * anonymous memory, zero until written.
 *
 *   push    (--mcast-group, push.c) the multicast receiver: one more producer like the fill,
 *           which it replaces. It claims a pushed granule (MISSING -> INFLIGHT) before writing it
 *           into the store and drops a copy it cannot claim (a fault has it); then PRESENT,
 *           fill__post() to wake waiting reads, store__post() into the page cache. The unicast
 *           demand link stays for faults the push has not reached yet.
 */
#ifndef SF_TAP_H
#define SF_TAP_H

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "memory/descriptor.h"
#include "memory/histogram.h"
#include "memory/link.h"
#include "memory/wire.h"
#include "mcast/mcast.h"

enum { G_MISSING = 0, G_INFLIGHT = 1, G_PRESENT = 2 };
enum fill_mode { FILL_NONE, FILL_SEQ, FILL_WS, FILL_WS_ONLY };
enum fill_state { FILL_IDLE, FILL_RUNNING, FILL_DONE, FILL_FAILED, FILL_STOPPED };

#define INO_RAM 2
#define INO_STATE 3
#define MAX_TRIES 3

/* A FUSE READ waiting for granules. */
struct pending {
  fuse_req_t req;
  uint64_t off;
  size_t size;
  uint32_t missing;   /* granules of the read not present yet */
  uint32_t refs;      /* waiter nodes naming this read */
  int done;           /* answered (data or error) */
  uint64_t t0;        /* when the READ arrived, ns */
};

struct waiter {
  struct pending *r;
  struct waiter *next;
};

/* A result the fill thread hands to main. */
struct done_item {
  uint32_t g;
  int ok;
};

struct tap_counters {
  uint64_t reads, reads_hit, reads_waited, reads_failed, read_bytes, max_read;
  uint64_t read_sizes[4];              /* 4K, up to 64K, up to 1M, above */
  uint64_t zero_pages_served;          /* zero pages handed out locally: fetches avoided */
  uint64_t demand_granules, demand_pages, demand_requests;
  uint64_t checksum_failures, refetches, waited_on_fill;
  uint64_t spins;                      /* faults whose answer was polled for */
  struct histogram fault;              /* reads that waited for the network */
  struct histogram hit;                /* reads answered from the store */
};

struct fill_counters {
  _Atomic uint64_t granules, pages, bytes, checksum_failures;
  _Atomic uint64_t stored_granules, store_errors;
  _Atomic uint64_t ws_granules;        /* granules of the working set, fetched first */
  _Atomic int state;
  _Atomic uint64_t started_ns, finished_ns;
};

struct tap {
  struct descriptor d;
  struct wire_token token;
  const char *server;
  const char *mountpoint;
  char host[256];
  int timeout_ms;
  int spin_us;                         /* poll the demand link this long before sleeping */
  int spin_always;                     /* poll even when no CPU is free (idle.h) */
  int spin_now;                        /* the gate, as of the last tick */
  int stay;                            /* --stay: stdin's EOF does not end memtap */
  unsigned char *store;
  int store_fd;                        /* --splice: the store is this memfd, replies are spliced from it */
  _Atomic(uint8_t) *gstate;
  _Atomic(uint8_t) *tries;             /* checksum failures per granule */
  struct waiter **waiters;             /* per granule (main) */
  struct fuse_session *se;
  int ep;                              /* main's epoll */
  _Atomic int opened;                  /* the RAM file has been opened: its inode is known */
  _Atomic int stopping;
  int failed;
  char fail_reason[512];

  /* Demand side (main). */
  struct link demand;
  uint32_t *want;                      /* granules to request at the end of this loop turn */
  size_t n_want;
  struct inflight { uint32_t first, count; uint64_t sent_ns; } *fifo;
  size_t fifo_head, fifo_len, fifo_cap;
  struct tap_counters c;

  /* Fill side. */
  enum fill_mode fill_mode;
  uint32_t fill_batch;                 /* bytes per fill request */
  int fill_delay_ms;
  struct link fill;
  _Atomic int fill_fd;                 /* for main to shut the socket at exit */
  pthread_t fill_thread;
  int fill_started;
  struct fill_counters f;
  pthread_mutex_t done_mu;
  struct done_item *done_q;
  size_t done_len, done_cap;
  int done_efd;
  char fill_error[512];                /* set by fill before it posts its failure */
  _Atomic int fill_failed;
  int fill_reported;                   /* main said "filled" */

  /* Push side (push.c): the multicast receiver and its thread. */
  const char *mc_group;                /* --mcast-group, or NULL: unicast only */
  struct mc_receiver *mc;
  struct mc_geometry mc_geo;
  pthread_t mc_thread;
  int mc_started;
  pthread_mutex_t mc_mu;               /* guards the figures below, copied by the push thread */
  struct mc_receiver_stats mc_stats;
  int mc_complete;                     /* the push is done: all of it here (a working set, or all) */
  char mc_error[256];                  /* why the push stopped before it had everything */
  _Atomic uint64_t mc_pages;           /* data pages stored from the push */

  /* Store thread. */
  pthread_t store_thread;
  int store_started;
  pthread_mutex_t store_mu;
  pthread_cond_t store_cv;
  uint32_t (*store_q)[2];
  size_t store_head, store_len, store_cap;
};

uint64_t tap_now_ns(void);

/* Fill (fill.c): starts the fill and store threads; stops and joins them. */
int fill__start(struct tap *t);
void fill__stop(struct tap *t);
/* Asks the store thread to push granules [first, first + count) into the page cache. */
void store__post(struct tap *t, uint32_t first, uint32_t count);
int store__start(struct tap *t);
void store__stop(struct tap *t);
/* Fill to main: a granule's result, or the fill's failure (both wake main's eventfd). */
void fill__post(struct tap *t, const struct done_item *items, size_t n);

/*
 * Push (push.c): joins the ticket's group and starts the receiver's thread; 1 when it runs, 0
 * when multicast is off or could not be joined (said in one line: the fill and the faults then
 * fetch by unicast), or -errno.
 */
int push__start(struct tap *t);
void push__stop(struct tap *t);
/* Main: a granule the demand link brought; the push never asks for it again. */
void push__have(struct tap *t, uint32_t g);
/* The push's figures as a JSON object ("null" when off). */
void push__json(struct tap *t, char *out, size_t cap);

#endif
