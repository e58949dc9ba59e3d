/*
 * mcpush: the sending side of the multicast benchmarks and tests, on the parent's host.
 *
 *   mcpush --transport sfmc|norm|tcp --image FILE --geometry FILE [--ws FILE] --group ADDR
 *          --port N --sender ADDR --local ADDR --if NAME --hosts H [--rate BYTES/S] [--mtu N]
 *          [--cc] [--timeout S]
 *
 * stdin: "token <hex>" first; then "stop" or EOF ends the push. stdout: "ready" once it listens,
 * then at the end one line "result {json}": bytes and datagrams sent, CPU seconds, the push's
 * start (CLOCK_REALTIME ns) and the transport's own counters. Exit 0 unless the transport failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common/sf.h"
#include "mcast/bench.h"
#include "mcast/mcast.h"
#include "mcast/transports.h"

static int sfmc_push(struct bench_args *a, struct push_result *res) {
  struct mc_sender_options o;
  mc_sender_options__defaults(&o);
  o.ram = a->image;
  o.max_rate = a->rate;
  o.min_receivers = (uint32_t)a->hosts;
  o.mtu = (uint32_t)a->mtu;
  struct mc_sender *s;
  int err = mc_sender__open(&s, &a->ch, &a->geo.g, &o);
  if (err < 0) return sf_err(err, "sender on %s", inet_ntoa(a->ch.sender)), err;
  if ((err = mc_sender__push(s, a->ws, a->n_ws)) < 0) return sf_err(err, "push order"), mc_sender__close(s), err;
  printf("ready\n");
  fflush(stdout);
  uint64_t deadline = mc_now_ns() + (uint64_t)a->timeout_s * 1000000000ull;
  while (!bench_stdin_done()) {
    if ((err = mc_sender__run(s, 20)) < 0) {
      sf_err(0, "%s", mc_sender__error(s));
      break;
    }
    if (mc_now_ns() > deadline) {
      sf_err(0, "not every receiver complete after %ld s", a->timeout_s);
      err = -ETIMEDOUT;
      break;
    }
  }
  struct mc_sender_stats st;
  mc_sender__stats(s, &st);
  res->bytes = st.bytes, res->datagrams = st.datagrams, res->start_ns = st.push_start_ns;
  snprintf(res->extra, sizeof res->extra,
           ",\"push_granules\":%" PRIu64 ",\"push_unicast\":%" PRIu64 ",\"repair_group\":%" PRIu64 ",\"repair_unicast\":%" PRIu64
           ",\"demand_granules\":%" PRIu64 ",\"suppressed\":%" PRIu64 ",\"nack_entries\":%" PRIu64 ",\"auth_failures\":%" PRIu64
           ",\"foreign\":%" PRIu64 ",\"passes\":%" PRIu64 ",\"receivers\":%u,\"live\":%u,\"complete\":%u,\"dead\":%u,\"rate\":%" PRIu64
           ",\"rate_cuts\":%" PRIu64 ",\"all_complete_ns\":%" PRIu64,
           st.push_granules, st.push_unicast, st.repair_group, st.repair_unicast, st.demand_granules, st.suppressed, st.nack_entries,
           st.auth_failures, st.foreign, st.passes, st.receivers, st.live, st.complete, st.dead, st.rate, st.rate_cuts, st.all_complete_ns);
  mc_sender__close(s);
  return err == -ETIMEDOUT ? 0 : err;
}

int main(int argc, char **argv) {
  sf_prog("mcpush");
  struct bench_args a;
  if (bench_parse(argc, argv, &a, 1) < 0) return 2;
  struct push_result r;
  memset(&r, 0, sizeof r);
  int err = !strcmp(a.transport, "sfmc") ? sfmc_push(&a, &r) : !strcmp(a.transport, "norm") ? norm_push(&a, &r) : tcp_push(&a, &r);
  printf("result {\"transport\":\"%s\",\"bytes\":%llu,\"datagrams\":%llu,\"start_ns\":%llu,\"cpu\":%.3f%s}\n", a.transport, r.bytes,
         r.datagrams, r.start_ns, bench_cpu_seconds(), r.extra);
  fflush(stdout);
  bench_args__free(&a);
  return err < 0 ? 1 : 0;
}
