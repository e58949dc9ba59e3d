/*
 * The mcast datagram: what the sender and the receivers of a ticket's group say to each other.
 *
 *   header (24)  u32 magic "SFMC" | u8 version | u8 type | u16 body length | u64 session | u64 from
 *   body         by type, below
 *   tag (16)     HMAC-SHA256 under the channel key of header and body, first 16 bytes
 *
 * Little-endian. session is the sender's random id for this run (a restarted sender is a new
 * session); from is who sent the datagram (the sender: its session; a receiver: its own random id).
 *
 * The channel key is HMAC-SHA256(token, "snowflock-mcast-1" | template id): a datagram of another
 * ticket (another token) or of another template never authenticates, and the key is never the
 * token itself, so nothing said here can be replayed into the memserver's hello, which MACs under
 * the token. Receivers drop a data datagram for a granule they already have before its tag is
 * checked: nothing is accepted from it, and the check is the most expensive thing they do.
 *
 *   type       from      body
 *   DATA       sender    u32 granule | u32 position | u64 seq | u32 offset | u32 total |
 *                        u16 piece size | u8 kind | u8 0 | then the bytes [offset, offset+len) of
 *                        the granule's data pages (len = body length - DATA_HDR)
 *   HEARTBEAT  sender    u64 pushed | u32 positions | u32 flags | u64 rate | u64 granules |
 *                        u32 granule size | u32 piece size | id[16] | u32 push positions
 *   JOIN       receiver  id[16] | u32 flags
 *   WELCOME    sender    u64 receiver | u64 joined at | u32 positions | u32 piece size |
 *                        u32 push positions
 *   STATUS     receiver  u32 flags | u32 have | u64 pushed seen | u64 rate | u32 overflows |
 *                        u16 loss per mille | u16 n | n x (u32 position | u16 first piece | u16 pieces)
 *   DEMAND     receiver  u16 n | n x u32 granule
 *   LEAVE      receiver  (empty)
 *
 * Positions number the order of every data granule (0 .. positions-1); the push goes round its
 * first "push positions" of them (all, or the working set only: the rest goes out when demanded).
 * seq counts every pushed position since the start (position = seq mod push positions), so a
 * receiver knows which positions went out since it joined ("joined at" in WELCOME) and asks for
 * those it lacks. A NACK entry names a position and the pieces of it that are missing (pieces 0:
 * all of it).
 */
#ifndef SF_MCAST_PACKET_H
#define SF_MCAST_PACKET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "mcast/mcast.h"

#define PKT_MAGIC 0x434d4653u  /* "SFMC" */
#define PKT_VERSION 2
#define PKT_HDR 24
#define PKT_TAG 16
#define PKT_MAX 65507          /* the largest UDP payload */
#define PKT_IP_UDP 28          /* IPv4 and UDP headers: an MTU minus these is what a datagram may hold */

enum pkt_type { P_DATA = 1, P_HEARTBEAT = 2, P_JOIN = 3, P_WELCOME = 4, P_STATUS = 5, P_DEMAND = 6, P_LEAVE = 7 };
enum pkt_kind { K_PUSH = 1, K_REPAIR = 2, K_DEMAND = 3 };

#define DATA_HDR 32
#define HEARTBEAT_LEN (8 + 4 + 4 + 8 + 8 + 4 + 4 + MC_ID_LEN + 4)
#define JOIN_LEN (MC_ID_LEN + 4)
#define WELCOME_LEN (8 + 8 + 4 + 4 + 4)
#define STATUS_HDR (4 + 4 + 8 + 8 + 4 + 2 + 2)
#define NACK_LEN 8
#define SEQ_NONE UINT64_MAX

enum { HB_PUSHING = 1 };
enum { ST_COMPLETE = 1, ST_WELCOMED = 2 };

struct pkt_hdr {
  uint8_t type;
  uint16_t body_len;
  uint64_t session;
  uint64_t from;
};

struct pkt_data {
  uint32_t granule, pos;
  uint64_t seq;
  uint32_t offset, total;
  uint16_t piece;
  uint8_t kind;
};

static inline void put16(unsigned char *p, uint16_t v) { p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8); }
static inline void put32(unsigned char *p, uint32_t v) { put16(p, (uint16_t)v), put16(p + 2, (uint16_t)(v >> 16)); }
static inline void put64(unsigned char *p, uint64_t v) { put32(p, (uint32_t)v), put32(p + 4, (uint32_t)(v >> 32)); }
static inline uint16_t get16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t get32(const unsigned char *p) { return (uint32_t)get16(p) | (uint32_t)get16(p + 2) << 16; }
static inline uint64_t get64(const unsigned char *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }

/* The channel key and the per-datagram MAC (OpenSSL's SHA-256: SHA-NI where the CPU has it). */
struct pkt_mac;
int pkt_mac__new(struct pkt_mac **out, const struct mc_channel *ch, const unsigned char id[MC_ID_LEN]);
void pkt_mac__free(struct pkt_mac *m);
/* Tag of the concatenation of iov[0..n); 0 or -ENOMEM (OpenSSL failed). */
int pkt_mac__tag(struct pkt_mac *m, const struct iovec *iov, int n, unsigned char tag[PKT_TAG]);
/* 1 when the last PKT_TAG bytes of buf[0..len) are the tag of what precedes them. */
int pkt_mac__verify(struct pkt_mac *m, const unsigned char *buf, size_t len);

void pkt_hdr__put(unsigned char *p, const struct pkt_hdr *h);
/* Parses a datagram's header: 0, or -EBADMSG when it is not one of ours (magic, version, length). */
int pkt_hdr__get(struct pkt_hdr *h, const unsigned char *buf, size_t len);

void pkt_data__put(unsigned char *p, const struct pkt_data *d);
void pkt_data__get(struct pkt_data *d, const unsigned char *p);

#endif
