/*
 * mcast: SnowFlock's mcdist on a stock Linux host. One sender (the memserver, on the parent's
 * host) pushes a template's granules over IP multicast, on one group per ticket, to every
 * receiver of the ticket (the memtaps, one per clone host); each granule crosses the parent's link
 * about once, whatever the number of hosts.
 *
 * What the two ends do (README.md has the why, and the measurements):
 *   sender    pushes every data granule once, in the order it is given (the recorded working set
 *             first, then the rest); serves on-demand requests (a clone faulting) once to the
 *             group, dropping duplicates that arrive close together; repairs what receivers NACK
 *             (to the group while the push runs, by unicast in the end game); keeps pushing round
 *             the order for hosts that joined late; drops hosts that fall silent; paces its rate
 *             to the slowest live receiver's reported rate.
 *   receiver  joins the group, checks every datagram's MAC (HMAC-SHA256 under a key derived from
 *             the ticket's token) and every granule's CRC32C (the descriptor's table), hands each
 *             verified granule to a store callback (the memtap calls notify_store there), asks
 *             again for what it missed, and asks the sender for a granule a clone faults on.
 *
 * Both ends are event-driven and single-threaded: an epoll fd to wait on (mc_*__fd), the time
 * until they want to run again (mc_*__timeout_ms), and a step that never blocks (mc_*__step);
 * mc_*__run does the three for a program of its own. Only the calls marked thread-safe may come
 * from another thread (a memtap's FUSE thread asks for a granule while a receiver thread runs).
 *
 * Errors follow native/common/sf.h: 0 (or a count) or a negative errno; the library never prints,
 * and mc_*__error() says in one line what went wrong when a call failed for a reason of the
 * network or the peer.
 *
 * Link: the objects in $(MCAST_OBJS) (module.mk), memory/crc32c.c, and libcrypto ($(MCAST_LIBS)).
 */
#ifndef SF_MCAST_H
#define SF_MCAST_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#define MC_PAGE 4096u
#define MC_NO_SUM UINT32_MAX
#define MC_ID_LEN 16
#define MC_TOKEN_MIN 16
#define MC_TOKEN_MAX 64
#define MC_MAX_RECEIVERS 256

/*
 * What is sent: a template's RAM as the memory descriptor describes it (memory/descriptor.h has
 * the same fields; a memserver or memtap fills this from its struct descriptor). Nothing is
 * copied: the arrays must outlive the sender or receiver.
 */
struct mc_geometry {
  unsigned char id[MC_ID_LEN];  /* the template's id: a sender and a receiver talk only when equal */
  uint64_t ram_size;            /* bytes, a multiple of granule_size */
  uint32_t granule_size;        /* power of two, 4 KiB to 2 MiB: the unit that is checked */
  uint64_t n_granules;
  const uint64_t *data_map;     /* one bit per 4 KiB page: set = data, clear = zero (never sent) */
  const uint32_t *sum_index;    /* per granule: index in sums, MC_NO_SUM for an all-zero granule */
  const uint32_t *sums;         /* CRC32C of each data granule over its whole content */
};

/* Where a ticket's channel lives. Addresses in network byte order. */
struct mc_channel {
  struct in_addr group;         /* the ticket's own group (administratively scoped, 239/8) */
  uint16_t port;                /* the group's port, and the sender's unicast port */
  struct in_addr sender;        /* the sender's underlay address */
  struct in_addr local;         /* this host's underlay address: the interface of the group */
  unsigned char token[MC_TOKEN_MAX];  /* the ticket's secret, as the memserver's hello uses it */
  size_t token_len;             /* MC_TOKEN_MIN to MC_TOKEN_MAX */
};

/* ---------------------------------------------------------------------------------------------
 * Sender.
 */
struct mc_sender_options {
  uint64_t max_rate;            /* bytes/s on the wire, the ceiling (default 125 MB/s: 1 Gbit/s) */
  uint64_t min_rate;            /* floor: a receiver slower than this is left to repair (1 MB/s) */
  uint64_t start_rate;          /* where pacing starts (default max_rate / 4) */
  uint32_t mtu;                 /* IP MTU of the underlay: a datagram never fragments (1500) */
  uint32_t min_receivers;       /* push starts once this many receivers joined (1) */
  int heartbeat_ms;             /* announce progress this often while anyone is incomplete (50) */
  int dead_ms;                  /* a receiver silent this long is dropped (1000) */
  int suppress_ms;              /* a granule sent to the group is not sent again this soon (5) */
  int push_first_only;          /* push only the granules given to mc_sender__push() (a working
                                   set); every other one goes out when demanded, once (0: all) */
  const unsigned char *ram;     /* the template's RAM, mapped read-only (ram_size bytes) */
};

struct mc_sender_stats {
  uint64_t datagrams, bytes;              /* everything sent, UDP payload bytes */
  uint64_t push_granules, push_bytes;     /* granules of the push (multicast) */
  uint64_t push_unicast;                  /* push datagrams to the one receiver left incomplete */
  uint64_t repair_group, repair_unicast;  /* repair datagrams, to the group and in the end game */
  uint64_t demand_granules;               /* on-demand granules served to the group */
  uint64_t suppressed;                    /* requested pieces dropped: sent to the group just before */
  uint64_t nack_entries;                  /* NACK entries received */
  uint64_t control_in, auth_failures, foreign;  /* receiver messages: good, bad MAC, not ours */
  uint64_t passes;                        /* rounds of the push order (late joiners add rounds) */
  uint32_t receivers, live, complete, dead;
  uint64_t rate;                          /* current pacing rate, bytes/s */
  uint64_t rate_cuts;                     /* times a struggling receiver cut the rate */
  uint64_t pushed;                        /* positions pushed since the start */
  uint32_t push_set;                      /* granules the push goes round (all, or the working set) */
  uint64_t first_join_ns, push_start_ns, all_complete_ns;  /* CLOCK_REALTIME, 0 until it happens */
};

struct mc_sender;

void mc_sender_options__defaults(struct mc_sender_options *o);

/* Opens the sender's socket on ch->sender:ch->port; nothing is sent until mc_sender__push(). */
int mc_sender__open(struct mc_sender **out, const struct mc_channel *ch, const struct mc_geometry *g,
                    const struct mc_sender_options *o);

/*
 * Sets the push order: the granules in first[] in that order (the recorded working set), then
 * every other data granule in ascending order (with push_first_only, those are not pushed, only
 * sent when demanded). Zero granules and repeats in first[] are skipped. The push starts once
 * min_receivers have joined.
 */
int mc_sender__push(struct mc_sender *s, const uint32_t *first, size_t n_first);

/* A demand fetch that reached the memserver another way (its unicast link): served to the group. */
int mc_sender__demand(struct mc_sender *s, uint32_t granule);

int mc_sender__fd(const struct mc_sender *s);
/* Milliseconds until the sender wants to run (0: now), for the caller's epoll_wait. */
int mc_sender__timeout_ms(const struct mc_sender *s);
/* Reads what arrived, runs timers, sends what pacing allows. Never blocks; 0 or -errno. */
int mc_sender__step(struct mc_sender *s);
/* Waits up to max_ms (or less, as the sender needs) and steps. */
int mc_sender__run(struct mc_sender *s, int max_ms);

/* 1 once every live receiver has every data granule (and at least min_receivers joined). */
int mc_sender__complete(const struct mc_sender *s);
void mc_sender__stats(const struct mc_sender *s, struct mc_sender_stats *out);
const char *mc_sender__error(const struct mc_sender *s);
void mc_sender__close(struct mc_sender *s);

/* ---------------------------------------------------------------------------------------------
 * Receiver.
 */

/*
 * Called with each granule that arrived and matched its checksum: its data pages in order, zero
 * pages left out (the memory wire's DATA payload), len bytes. Returns 0 when stored, 1 when the
 * granule was there already (a fault fetched it), or a negative errno to refuse it: it is asked
 * for again later. Runs on the thread that steps the receiver.
 */
typedef int (*mc_store_fn)(void *ctx, uint32_t granule, const unsigned char *pages, size_t len);

struct mc_receiver_options {
  int status_ms;                /* report (rate, NACKs) this often while incomplete (10) */
  int retry_ms;                 /* ask again for what a NACK or demand did not bring (30) */
  int sender_timeout_ms;        /* nothing from the sender this long: failed (3000; 0 never) */
  int leave_when_complete;      /* drop the group once everything is here (1); stay for the
                                   granules other hosts demand after a push of a working set */
  uint32_t rcvbuf;              /* socket receive buffer, bytes (8 MiB) */
};

struct mc_receiver_stats {
  uint64_t datagrams, bytes;            /* everything that arrived, UDP payload bytes */
  uint64_t granules, granule_bytes;     /* stored through the callback (data bytes) */
  uint64_t duplicates;                  /* data datagrams for granules already here */
  uint64_t auth_failures;               /* bad MAC: not the ticket's (or damaged) */
  uint64_t foreign;                     /* not our group's sender, session or template */
  uint64_t checksum_failures;           /* whole granules whose CRC32C did not match */
  uint64_t refused;                     /* granules the callback refused */
  uint64_t nack_entries, demands;       /* asked for */
  uint64_t overflows;                   /* datagrams the kernel dropped: our socket buffer was full */
  uint64_t evicted;                     /* partial granules given up for room (asked again) */
  uint32_t have, need;                  /* data granules here, data granules in all */
  uint64_t join_ns, first_data_ns, complete_ns;  /* CLOCK_REALTIME, 0 until it happens */
};

struct mc_receiver;

void mc_receiver_options__defaults(struct mc_receiver_options *o);

/* Joins ch->group on ch->local and asks ch->sender to be counted in. */
int mc_receiver__open(struct mc_receiver **out, const struct mc_channel *ch, const struct mc_geometry *g,
                      mc_store_fn store, void *ctx, const struct mc_receiver_options *o);

/* Why the last mc_receiver__open() of this thread failed, when the network refused (else ""). */
const char *mc_last_open_error(void);

/* Thread-safe. A clone faults on granule: ask the sender for it now (served to the group). */
int mc_receiver__demand(struct mc_receiver *r, uint32_t granule);
/* Thread-safe. The granule arrived another way (the unicast demand link): never ask for it. */
void mc_receiver__have(struct mc_receiver *r, uint32_t granule);
/* Thread-safe. Whether granule is here (zero granules always are). */
int mc_receiver__has(const struct mc_receiver *r, uint32_t granule);

int mc_receiver__fd(const struct mc_receiver *r);
int mc_receiver__timeout_ms(const struct mc_receiver *r);
/* Never blocks; 0, or -ETIMEDOUT when the sender fell silent (see mc_receiver__error), -errno. */
int mc_receiver__step(struct mc_receiver *r);
int mc_receiver__run(struct mc_receiver *r, int max_ms);

/* 1 once every data granule is here, or every granule the sender pushes (push_first_only). */
int mc_receiver__complete(const struct mc_receiver *r);
void mc_receiver__stats(const struct mc_receiver *r, struct mc_receiver_stats *out);
const char *mc_receiver__error(const struct mc_receiver *r);
/* Tells the sender we leave, drops the group, frees everything. */
void mc_receiver__close(struct mc_receiver *r);

/* ---------------------------------------------------------------------------------------------
 * Shared helpers.
 */

/* Data pages of granule g (what crosses the wire for it). */
uint32_t mc_geometry__data_pages(const struct mc_geometry *g, uint64_t granule);
/* Data granules in all. */
uint64_t mc_geometry__data_granules(const struct mc_geometry *g);
/* Checks the geometry's shape (sizes, powers of two); 0 or -EINVAL. */
int mc_geometry__check(const struct mc_geometry *g);
/*
 * CRC32C of granule g's whole content (zero pages included) from its data pages as they travel,
 * and whether it matches the table: 1 when it does.
 */
int mc_geometry__granule_ok(const struct mc_geometry *g, uint64_t granule, const unsigned char *pages, size_t len);

/* Parses "a.b.c.d" into addr (network order); 0 or -EINVAL. */
int mc_parse_addr(const char *s, struct in_addr *addr);
/* Parses the token as hex (32 to 128 digits) into ch; 0 or -EINVAL. */
int mc_channel__set_token_hex(struct mc_channel *ch, const char *hex);

uint64_t mc_now_ns(void);       /* CLOCK_MONOTONIC */
uint64_t mc_wall_ns(void);      /* CLOCK_REALTIME: comparable across hosts of one machine */

#endif
