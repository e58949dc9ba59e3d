/* A descriptor as mcast's geometry, a ticket's channel, figures as JSON (see multicast.h). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/sf.h"
#include "memory/multicast.h"

_Static_assert(DESC_ID_LEN == MC_ID_LEN, "a template's id is the same on both sides");
_Static_assert(DESC_NO_SUM == MC_NO_SUM, "an all-zero granule is marked the same on both sides");
_Static_assert(WIRE_TOKEN_MAX <= MC_TOKEN_MAX, "every memserver token fits the channel");

void multicast__geometry(const struct descriptor *d, struct mc_geometry *g) {
  memset(g, 0, sizeof *g);
  memcpy(g->id, d->id, MC_ID_LEN);
  g->ram_size = d->ram_size;
  g->granule_size = d->granule_size;
  g->n_granules = d->n_granules;
  g->data_map = d->data_map;
  g->sum_index = d->sum_index;
  g->sums = d->sums;
}

int multicast__group_ok(const char *s) {
  struct in_addr a;
  return mc_parse_addr(s, &a) == 0 && (ntohl(a.s_addr) >> 24) == 239;
}

/* This host's address on its route to dst: what a UDP socket connected there is bound to. */
static int route_source(struct in_addr dst, struct in_addr *out) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(9), .sin_addr = dst};
  socklen_t sl = sizeof sa;
  int err = connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || getsockname(fd, (struct sockaddr *)&sa, &sl) < 0 ? -errno : 0;
  close(fd);
  if (!err) *out = sa.sin_addr;
  return err;
}

int multicast__channel(struct mc_channel *ch, const char *group, const char *sender, uint16_t port, const char *local,
                       const struct wire_token *t, const char **why) {
  memset(ch, 0, sizeof *ch);
  if (!multicast__group_ok(group) || mc_parse_addr(group, &ch->group) < 0) return *why = "the group is not an IPv4 address in 239.0.0.0/8", -EINVAL;
  if (mc_parse_addr(sender, &ch->sender) < 0 || ch->sender.s_addr == htonl(INADDR_ANY)) return *why = "multicast needs the memserver's own underlay address (not 0.0.0.0)", -EINVAL;
  if (!port) return *why = "multicast needs the memserver's port", -EINVAL;
  ch->port = port;
  if (local ? mc_parse_addr(local, &ch->local) < 0 : route_source(ch->sender, &ch->local) < 0) return *why = "no local address toward the memserver", -EINVAL;
  if (t->len < MC_TOKEN_MIN) return *why = "the token is too short for multicast", -EINVAL;
  memcpy(ch->token, t->b, t->len);
  ch->token_len = t->len;
  return 0;
}

/* An error line as the inside of a JSON string: quotes, backslashes and controls left out. */
static const char *json_safe(const char *in, char *buf, size_t cap) {
  size_t n = 0;
  for (; *in && n + 1 < cap; in++)
    if (*in != '"' && *in != '\\' && (unsigned char)*in >= 0x20) buf[n++] = *in;
  buf[n] = 0;
  return buf;
}

static double ms_between(uint64_t from_ns, uint64_t to_ns) { return from_ns && to_ns >= from_ns ? (to_ns - from_ns) / 1e6 : -1; }

int multicast__sender_json(const struct mc_sender *s, char *out, size_t cap) {
  if (!s) return snprintf(out, cap, "null");
  struct mc_sender_stats st;
  char why[256];
  mc_sender__stats(s, &st);
  return snprintf(out, cap,
                  "{\"datagrams\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"pushGranules\":%" PRIu64 ",\"pushBytes\":%" PRIu64
                  ",\"pushUnicast\":%" PRIu64 ",\"repairGroup\":%" PRIu64 ",\"repairUnicast\":%" PRIu64 ",\"demandGranules\":%" PRIu64
                  ",\"suppressed\":%" PRIu64 ",\"nackEntries\":%" PRIu64 ",\"authFailures\":%" PRIu64 ",\"foreign\":%" PRIu64
                  ",\"passes\":%" PRIu64 ",\"pushSet\":%u,\"receivers\":%u,\"live\":%u,\"complete\":%u,\"dead\":%u,\"rate\":%" PRIu64
                  ",\"rateCuts\":%" PRIu64 ",\"pushMs\":%.1f,\"allComplete\":%s,\"error\":\"%s\"}",
                  st.datagrams, st.bytes, st.push_granules, st.push_bytes, st.push_unicast, st.repair_group, st.repair_unicast,
                  st.demand_granules, st.suppressed, st.nack_entries, st.auth_failures, st.foreign, st.passes, st.push_set, st.receivers, st.live,
                  st.complete, st.dead, st.rate, st.rate_cuts, ms_between(st.push_start_ns, st.all_complete_ns),
                  mc_sender__complete(s) ? "true" : "false", json_safe(mc_sender__error(s), why, sizeof why));
}

int multicast__receiver_json(const struct mc_receiver_stats *st, int complete, const char *error, char *out, size_t cap) {
  char why[256];
  return snprintf(out, cap,
                  "{\"datagrams\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"granules\":%" PRIu64 ",\"granuleBytes\":%" PRIu64
                  ",\"duplicates\":%" PRIu64 ",\"authFailures\":%" PRIu64 ",\"foreign\":%" PRIu64 ",\"checksumFailures\":%" PRIu64
                  ",\"refused\":%" PRIu64 ",\"nackEntries\":%" PRIu64 ",\"demands\":%" PRIu64 ",\"overflows\":%" PRIu64
                  ",\"have\":%u,\"need\":%u,\"completeMs\":%.1f,\"complete\":%s,\"error\":\"%s\"}",
                  st->datagrams, st->bytes, st->granules, st->granule_bytes, st->duplicates, st->auth_failures, st->foreign,
                  st->checksum_failures, st->refused, st->nack_entries, st->demands, st->overflows, st->have, st->need,
                  ms_between(st->join_ns, st->complete_ns), complete ? "true" : "false", json_safe(error, why, sizeof why));
}
