/*
 * The memory core's side of mcast (native/mcast, SnowFlock's mcdist): a template's descriptor as
 * mcast's geometry, and a ticket's multicast channel from what memserver and memtap are given
 * (the group, the memserver's address and port, the ticket's token). Both ends use it, so that
 * they cannot disagree on what they talk about.
 */
#ifndef SF_MEMORY_MULTICAST_H
#define SF_MEMORY_MULTICAST_H

#include "mcast/mcast.h"
#include "memory/descriptor.h"
#include "memory/wire.h"

/* 1 when s is an IPv4 address in 239.0.0.0/8, the administratively scoped groups a ticket uses. */
int multicast__group_ok(const char *s);

/* The geometry of d's RAM; nothing is copied, so d must outlive what uses it. */
void multicast__geometry(const struct descriptor *d, struct mc_geometry *g);

/*
 * The channel of a ticket: group (239/8), the memserver's sender address and port, the token.
 * local NULL: this host's address on the route to the sender (a memtap's underlay address).
 * 0, or -EINVAL with why set (one line for the user).
 */
int multicast__channel(struct mc_channel *ch, const char *group, const char *sender, uint16_t port, const char *local,
                       const struct wire_token *t, const char **why);

/* One JSON object of a sender's or a receiver's figures, for the counters line ("null" when off). */
int multicast__sender_json(const struct mc_sender *s, char *out, size_t cap);
int multicast__receiver_json(const struct mc_receiver_stats *st, int complete, const char *error, char *out, size_t cap);

#endif
