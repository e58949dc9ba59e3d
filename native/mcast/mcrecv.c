/*
 * mcrecv: the receiving side of the multicast benchmarks and tests, on a clone host.
 *
 *   mcrecv --transport sfmc|norm|tcp --geometry FILE [--ws FILE] --group ADDR --port N
 *          --sender ADDR --local ADDR --if NAME --node N [--slow-us US] [--demand N] [--timeout S]
 *
 * stdin: "token <hex>". It stores every granule that arrives in memory laid out like the image,
 * and at the end checks every data granule against its CRC32C and digests them all (the sender's
 * geometry has the image's digest). --slow-us makes a slow host: each granule stored costs that
 * much CPU; --demand N asks for the push order's last N granules at once, as clones faulting on
 * them would (ours only). stdin closing (the harness is gone) ends it. stdout: "ready", "progress N" at each tenth, then "result {json}". Exit 0 only when
 * every granule is here and right.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sf.h"
#include "mcast/bench.h"
#include "mcast/mcast.h"
#include "mcast/transports.h"

static struct bench_store store;
static int tenth;
/* --demand N: the last N granules of the push order, asked for at once, as faults would. */
static uint8_t *demanded;
static long n_demanded, demanded_here;
static uint64_t demand_ns, demand_done_ns;

static void progress(void) {
  int now = store.need ? (int)(store.have * 10 / store.need) : 10;
  while (tenth < now && tenth < 10) printf("progress %d\n", ++tenth), fflush(stdout);
}

static int on_granule(void *ctx, uint32_t g, const unsigned char *pages, size_t len) {
  (void)ctx;
  int rc = bench_store__put(&store, g, pages, len);
  if (rc == 0 && demanded && demanded[g] && ++demanded_here == n_demanded) demand_done_ns = mc_wall_ns();
  progress();
  return rc;
}

static int sfmc_recv(struct bench_args *a, struct recv_result *res) {
  struct mc_receiver_options o;
  mc_receiver_options__defaults(&o);
  o.sender_timeout_ms = 5000;
  struct mc_receiver *r;
  int err = mc_receiver__open(&r, &a->ch, &a->geo.g, on_granule, NULL, &o);
  if (err < 0) return snprintf(res->error, sizeof res->error, "%s", *mc_last_open_error() ? mc_last_open_error() : strerror(-err)), err;
  printf("ready\n");
  fflush(stdout);
  if (a->demand > 0) {
    demanded = sf_calloc(a->geo.g.n_granules, 1);
    if (!demanded) return mc_receiver__close(r), -ENOMEM;
    demand_ns = mc_wall_ns();
    for (uint32_t i = a->n_order > (uint32_t)a->demand ? a->n_order - (uint32_t)a->demand : 0; i < a->n_order; i++) {
      demanded[a->order[i]] = 1, n_demanded++;
      if ((err = mc_receiver__demand(r, a->order[i])) < 0) return mc_receiver__close(r), err;
    }
  }
  uint64_t deadline = mc_now_ns() + (uint64_t)a->timeout_s * 1000000000ull, done_at = 0;
  /* After the last granule, a little longer: the sender hears that we are complete. */
  while (!done_at || mc_now_ns() < done_at + 30000000ull) {
    if ((err = mc_receiver__run(r, 20)) < 0) {
      snprintf(res->error, sizeof res->error, "%s", mc_receiver__error(r));
      break;
    }
    if (!done_at && mc_receiver__complete(r)) done_at = mc_now_ns();
    if (bench_stdin_done()) {
      snprintf(res->error, sizeof res->error, "stopped (stdin closed) before everything came");
      err = done_at ? 0 : -ECANCELED;
      break;
    }
    if (mc_now_ns() > deadline) {
      snprintf(res->error, sizeof res->error, "incomplete after %ld s", a->timeout_s);
      err = -ETIMEDOUT;
      break;
    }
  }
  struct mc_receiver_stats st;
  mc_receiver__stats(r, &st);
  res->bytes = st.bytes;
  snprintf(res->extra, sizeof res->extra,
           ",\"datagrams\":%" PRIu64 ",\"duplicates\":%" PRIu64 ",\"auth_failures\":%" PRIu64 ",\"foreign\":%" PRIu64
           ",\"checksum_failures\":%" PRIu64 ",\"nack_entries\":%" PRIu64 ",\"demands\":%" PRIu64 ",\"overflows\":%" PRIu64
           ",\"evicted\":%" PRIu64 ",\"join_ns\":%" PRIu64 ",\"first_data_ns\":%" PRIu64 ",\"demanded\":%ld"
           ",\"demand_ns\":%" PRIu64 ",\"demand_done_ns\":%" PRIu64,
           st.datagrams, st.duplicates, st.auth_failures, st.foreign, st.checksum_failures, st.nack_entries, st.demands, st.overflows,
           st.evicted, st.join_ns, st.first_data_ns, n_demanded, demand_ns, demand_done_ns);
  mc_receiver__close(r);
  free(demanded);
  return err;
}

int main(int argc, char **argv) {
  sf_prog("mcrecv");
  struct bench_args a;
  if (bench_parse(argc, argv, &a, 0) < 0) return 2;
  int err = bench_store__open(&store, &a.geo.g, a.ws, a.n_ws);
  if (err < 0) return sf_err(err, "store of %llu bytes", (unsigned long long)a.geo.g.ram_size), 1;
  store.slow_ns = (uint64_t)a.slow_us * 1000;
  struct recv_result r;
  memset(&r, 0, sizeof r);
  err = !strcmp(a.transport, "sfmc") ? sfmc_recv(&a, &r) : !strcmp(a.transport, "norm") ? norm_recv(&a, &store, &r) : tcp_recv(&a, &store, &r);
  uint64_t bad, missing;
  unsigned char digest[32];
  bench_store__verify(&store, &bad, &missing, digest);
  int right = !bad && !missing && !memcmp(digest, a.geo.digest, 32);
  char hex[65];
  bench_hex(digest, 32, hex);
  printf("result {\"transport\":\"%s\",\"node\":%ld,\"have\":%" PRIu64 ",\"need\":%" PRIu64 ",\"bad\":%" PRIu64 ",\"missing\":%" PRIu64
         ",\"digest_ok\":%s,\"digest\":\"%s\",\"bytes\":%llu,\"data_bytes\":%" PRIu64 ",\"complete_ns\":%" PRIu64 ",\"ws_ns\":%" PRIu64
         ",\"ws_granules\":%" PRIu64 ",\"cpu\":%.3f,\"error\":\"%s\"%s}\n",
         a.transport, a.node, store.have, a.geo.data_granules, bad, missing, right ? "true" : "false", hex, r.bytes,
         store.data_bytes, store.complete_ns, store.ws_ns, store.ws_total, bench_cpu_seconds(), r.error, r.extra);
  fflush(stdout);
  if (!right) sf_err(0, "host %ld: %" PRIu64 " of %" PRIu64 " granules, %" PRIu64 " bad%s%s", a.node, store.have, a.geo.data_granules, bad,
                     *r.error ? ": " : "", r.error);
  bench_store__close(&store);
  bench_args__free(&a);
  return right && err >= 0 ? 0 : 1;
}
