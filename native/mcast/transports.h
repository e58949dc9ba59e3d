/*
 * The transports the benchmark drivers compare: ours (mcpush.c/mcrecv.c drive the library), the
 * NORM library (norm.c) and TCP unicast to each receiver (tcp.c, the baseline: what a unicast
 * memserver costs). Each push runs until every receiver has everything or stdin says stop, and
 * each receive until it has everything or times out; both write their own JSON fields into extra.
 */
#ifndef SF_MCAST_TRANSPORTS_H
#define SF_MCAST_TRANSPORTS_H

#include <stddef.h>

#include "mcast/bench.h"

struct push_result {
  unsigned long long bytes, datagrams;  /* what the transport sent (payload of UDP or TCP) */
  unsigned long long start_ns;          /* CLOCK_REALTIME: the first byte of the push */
  char extra[1024];                     /* ,"key":value... */
};

struct recv_result {
  unsigned long long bytes;             /* what arrived (UDP or TCP payload) */
  char extra[1024];
  char error[256];
};

int norm_push(struct bench_args *a, struct push_result *r);
int norm_recv(struct bench_args *a, struct bench_store *s, struct recv_result *r);
int tcp_push(struct bench_args *a, struct push_result *r);
int tcp_recv(struct bench_args *a, struct bench_store *s, struct recv_result *r);

#endif
