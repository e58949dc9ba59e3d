/*
 * The library candidate: NORM (RFC 5740) through Debian's libnorm 1.5.9, used the way a memserver
 * would use it for a push. The data granules in push order are NORM data objects of OBJ_GRANULES
 * granules each (info: the first position), sent at a fixed rate (or under NORM-CC with --cc),
 * with NORM's own NACK repair and Reed-Solomon parity (NUM_DATA + NUM_PARITY per block), the
 * receivers as acking nodes and a watermark on the last object, so that the sender learns when all
 * of them have everything. Receivers check each granule against the geometry's CRC32C as it
 * comes out of a completed object.
 *
 * --norm-backoff sets NORM's NACK backoff factor (its default 4 otherwise).
 *
 * Scoped like ours: TTL 1, no loopback, the given interface. NORM has no authentication of its own
 * (RFC 5740 leaves it to IPsec); this driver adds none, so its CPU is without any.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdlib.h>
#include "normApi.h"  /* the C copy module.mk makes of Debian's, see there */
#include <poll.h>
#include <stdio.h>
#include <string.h>

#include "common/sf.h"
#include "mcast/packet.h"
#include "mcast/transports.h"

#define OBJ_GRANULES 256
#define SEGMENT 1400      /* NORM payload per datagram: like ours, never fragmented at MTU 1500 */
#define NUM_DATA 64
#define NUM_PARITY 16
#define SENDER_ID 60000

static int norm_session(struct bench_args *a, NormInstanceHandle *inst, NormSessionHandle *sess, NormNodeId id) {
  char group[INET_ADDRSTRLEN];
  inet_ntop(AF_INET, &a->ch.group, group, sizeof group);
  *inst = NormCreateInstance(false);
  if (*inst == NORM_INSTANCE_INVALID) return -ENOMEM;
  *sess = NormCreateSession(*inst, group, a->ch.port, id);
  if (*sess == NORM_SESSION_INVALID) return NormDestroyInstance(*inst), -EINVAL;
  NormSetMulticastInterface(*sess, a->ifname);
  NormSetTTL(*sess, 1);
  NormSetMulticastLoopback(*sess, false);
  return 0;
}

/* One event, waiting up to ms for it; 0 none, 1 one, -1 stdin said stop. */
static int next_event(NormInstanceHandle inst, NormEvent *ev, int ms, int watch_stdin) {
  struct pollfd p[2] = { { .fd = NormGetDescriptor(inst), .events = POLLIN }, { .fd = 0, .events = POLLIN } };
  if (poll(p, watch_stdin ? 2 : 1, ms) < 0 && errno != EINTR) return 0;
  if (watch_stdin && p[1].revents && bench_stdin_done()) return -1;
  if (!(p[0].revents & POLLIN)) return 0;
  return NormGetNextEvent(inst, ev, false) ? 1 : 0;
}

int norm_push(struct bench_args *a, struct push_result *r) {
  const struct mc_geometry *g = &a->geo.g;
  /* NORM data objects are buffers it reads from until they are purged: the data pages, packed. */
  uint64_t total = 0;
  uint32_t *payload = sf_array(a->n_order + 1, 4);
  if (!payload) return -ENOMEM;
  for (uint32_t i = 0; i < a->n_order; i++) payload[i] = mc_geometry__data_pages(g, a->order[i]) * MC_PAGE, total += payload[i];
  unsigned char *packed = sf_malloc(total + 1);
  if (!packed) return free(payload), -ENOMEM;
  uint32_t per = g->granule_size / MC_PAGE;
  uint64_t at = 0;
  for (uint32_t i = 0; i < a->n_order; i++)
    for (uint32_t k = 0; k < per; k++) {
      uint64_t p = (uint64_t)a->order[i] * per + k;
      if ((g->data_map[p >> 6] >> (p & 63)) & 1) memcpy(packed + at, a->image + p * MC_PAGE, MC_PAGE), at += MC_PAGE;
    }

  NormInstanceHandle inst;
  NormSessionHandle sess;
  int err = norm_session(a, &inst, &sess, SENDER_ID);
  if (err < 0) return free(packed), free(payload), sf_err(err, "NORM session"), err;
  NormSetTxSocketBuffer(sess, 4u << 20);
  NormSetGroupSize(sess, (unsigned)a->hosts);
  NormSetGrttEstimate(sess, 0.001);
  /* NORM's default backoff (4 GRTTs of random NACK delay, for large groups) made fixed-rate runs
   * under loss 5-10 times slower here; 0 is what its guide suggests for small groups. */
  if (a->norm_backoff >= 0) NormSetBackoffFactor(sess, a->norm_backoff);
  uint32_t n_obj = (a->n_order + OBJ_GRANULES - 1) / OBJ_GRANULES;
  NormSetTxCacheBounds(sess, (NormSize)total + (64 << 20), n_obj + 1, n_obj + 1);
  if (a->cc) {
    NormSetCongestionControl(sess, true, true);
    NormSetTxRateBounds(sess, 8e6, (double)a->rate * 8);
  } else {
    NormSetTxRate(sess, (double)a->rate * 8);
  }
  for (long i = 1; i <= a->hosts; i++) NormAddAckingNode(sess, (NormNodeId)i);
  if (!NormStartSender(sess, NormGetRandomSessionId(), 64u << 20, SEGMENT, NUM_DATA, NUM_PARITY, 0)) {
    err = -EINVAL;
    sf_err(0, "NORM: cannot start the sender on %s", a->ifname);
    goto out;
  }
  NormSetAutoParity(sess, 0);
  printf("ready\n");
  fflush(stdout);

  uint32_t next = 0;
  uint64_t off = 0;
  NormObjectHandle last = NORM_OBJECT_INVALID;
  int acked = 0, watermark = 0;
  unsigned long long deadline = mc_now_ns() + (unsigned long long)a->timeout_s * 1000000000ull;
  r->start_ns = mc_wall_ns();
  for (;;) {
    while (next < n_obj) {
      uint32_t first = next * OBJ_GRANULES, count = a->n_order - first < OBJ_GRANULES ? a->n_order - first : OBJ_GRANULES;
      uint64_t bytes = 0;
      for (uint32_t i = 0; i < count; i++) bytes += payload[first + i];
      char info[8];
      put32((unsigned char *)info, first), put32((unsigned char *)info + 4, count);
      NormObjectHandle o = NormDataEnqueue(sess, (const char *)packed + off, (UINT32)bytes, info, sizeof info);
      if (o == NORM_OBJECT_INVALID) break;  /* the queue is full: after a vacancy */
      last = o, off += bytes, next++;
    }
    if (next == n_obj && !watermark) watermark = NormSetWatermark(sess, last, true);
    NormEvent ev;
    int e = next_event(inst, &ev, 50, 1);
    if (e < 0) break;
    if (e && ev.type == NORM_TX_WATERMARK_COMPLETED) {
      if (NormGetAckingStatus(sess, NORM_NODE_ANY) == NORM_ACK_SUCCESS) {
        if (!acked) snprintf(r->extra, sizeof r->extra, ",\"all_complete_ns\":%llu", (unsigned long long)mc_wall_ns());
        acked = 1;
      } else {
        NormResetWatermark(sess);  /* not everyone acked yet: ask again */
      }
    }
    if (mc_now_ns() > deadline) {
      sf_err(0, "NORM: not every receiver acked after %ld s", a->timeout_s);
      break;
    }
  }
  if (!acked) snprintf(r->extra, sizeof r->extra, ",\"all_complete_ns\":0");
  NormStopSender(sess);
out:
  NormDestroySession(sess);
  NormDestroyInstance(inst);
  free(packed), free(payload);
  return err;
}

int norm_recv(struct bench_args *a, struct bench_store *s, struct recv_result *r) {
  NormInstanceHandle inst;
  NormSessionHandle sess;
  int err = norm_session(a, &inst, &sess, (NormNodeId)a->node);
  if (err < 0) return snprintf(r->error, sizeof r->error, "NORM session: %s", strerror(-err)), err;
  NormSetRxSocketBuffer(sess, 8u << 20);
  NormSetDefaultSyncPolicy(sess, NORM_SYNC_ALL);
  NormSetRxCacheLimit(sess, 4096);
  if (!NormStartReceiver(sess, 64u << 20)) {
    snprintf(r->error, sizeof r->error, "NORM: cannot start the receiver");
    err = -EINVAL;
    goto out;
  }
  printf("ready\n");
  fflush(stdout);
  const struct mc_geometry *g = &a->geo.g;
  unsigned long long deadline = mc_now_ns() + (unsigned long long)a->timeout_s * 1000000000ull, done_at = 0;
  int tenth = 0;
  /* After the last granule, a little longer: the sender's watermark gets our ack. */
  while (!done_at || mc_now_ns() < done_at + 300000000ull) {
    NormEvent ev;
    int e = next_event(inst, &ev, 50, 0);
    if (e > 0 && ev.type == NORM_RX_OBJECT_COMPLETED) {
      char info[8];
      if (NormObjectGetInfo(ev.object, info, sizeof info) != sizeof info) continue;
      uint32_t first = get32((unsigned char *)info), count = get32((unsigned char *)info + 4);
      const unsigned char *data = (const unsigned char *)NormDataAccessData(ev.object);
      uint64_t size = (uint64_t)NormObjectGetSize(ev.object), at = 0;
      r->bytes += size;
      for (uint32_t i = first; i < first + count && i < a->n_order; i++) {
        uint32_t gr = a->order[i], len = mc_geometry__data_pages(g, gr) * MC_PAGE;
        if (at + len > size) break;
        if (mc_geometry__granule_ok(g, gr, data + at, len)) bench_store__put(s, gr, data + at, len);
        else snprintf(r->error, sizeof r->error, "granule %u: checksum", gr);
        at += len;
      }
      while (tenth < (int)(s->have * 10 / s->need)) printf("progress %d\n", ++tenth), fflush(stdout);
      if (s->have == s->need && !done_at) done_at = mc_now_ns();
    }
    if (bench_stdin_done()) {
      if (!done_at) snprintf(r->error, sizeof r->error, "stopped (stdin closed) before everything came"), err = -ECANCELED;
      break;
    }
    if (!done_at && mc_now_ns() > deadline) {
      snprintf(r->error, sizeof r->error, "incomplete after %ld s", a->timeout_s);
      err = -ETIMEDOUT;
      break;
    }
  }
  NormStopReceiver(sess);
out:
  NormDestroySession(sess);
  NormDestroyInstance(inst);
  return err;
}
