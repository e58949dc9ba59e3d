/*
 * The memory wire: how a memtap and the memserver talk over TCP.
 *
 * Every message is  u32 type | u32 body length | body,  little-endian. The server speaks first:
 *
 *   server -> memtap                         memtap -> server
 *   CHALLENGE  version, server nonce[16]     HELLO   version, role, descriptor id[16],
 *   WELCOME    mac[32], granule size                 memtap nonce[16], mac[32]
 *   REFUSED    reason (then it closes)       GET     ranges: n x (u32 first granule, u32 count)
 *   DATA       first, count, the data pages  WS_GET  (empty)
 *              of those granules in order    
 *   WS         n x u32 page index: the recorded working set, in fault order
 *
 * The hello is a challenge-response over the ticket's token (a per-ticket secret both sides get on
 * stdin): HELLO's mac = HMAC-SHA256(token, "memtap" | server nonce | memtap nonce | id | role),
 * WELCOME's = HMAC-SHA256(token, "memserver" | memtap nonce | server nonce | id). Neither side
 * sends the token itself, a client without it gets nothing but REFUSED, and a memtap will not take
 * pages from a server that does not know it either. A memtap of another template (another id) is
 * refused too.
 *
 * DATA carries only the data pages of its granules (zero pages stay behind: the memtap knows them
 * from the descriptor's page map and leaves them zero), so a large granule costs on the wire only
 * what it holds. One connection has one role: "demand" (faults: small, urgent) or "fill" (the
 * background fill: large batches), so that a fault never waits behind a batch.
 */
#ifndef SF_WIRE_H
#define SF_WIRE_H

#include <stdint.h>

#include "memory/descriptor.h"
#include "memory/sha256.h"

#define WIRE_VERSION 1
#define WIRE_NONCE 16
#define WIRE_HDR 8
#define WIRE_TOKEN_MAX 64

enum wire_type {
  W_CHALLENGE = 1, W_HELLO = 2, W_WELCOME = 3, W_REFUSED = 4,
  W_GET = 5, W_DATA = 6, W_WS_GET = 7, W_WS = 8,
};

enum wire_role { ROLE_DEMAND = 1, ROLE_FILL = 2 };

enum wire_refusal { REFUSE_AUTH = 1, REFUSE_TEMPLATE = 2, REFUSE_VERSION = 3, REFUSE_BUSY = 4 };

/* Body sizes of the fixed messages. */
#define W_CHALLENGE_LEN (4 + WIRE_NONCE)
#define W_HELLO_LEN (4 + 4 + DESC_ID_LEN + WIRE_NONCE + SHA256_LEN)
#define W_WELCOME_LEN (SHA256_LEN + 4)
/* At most this many granules' pages in one DATA message, and this many ranges in one GET. */
#define W_DATA_MAX (16u << 20)
#define W_GET_MAX_RANGES 4096
#define W_GET_MAX_BYTES (64u << 20)

static inline void wire_put32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8), p[2] = (unsigned char)(v >> 16), p[3] = (unsigned char)(v >> 24);
}
static inline uint32_t wire_get32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The ticket's token: 16 to 64 bytes, given as hex on the first line of stdin ("token <hex>"). */
struct wire_token {
  unsigned char b[WIRE_TOKEN_MAX];
  size_t len;
};

/* Parses "token <hex>\n"; 0 or -EINVAL. */
int wire_token__parse(struct wire_token *t, const char *line);

/* Reads the token line from fd, a byte at a time (nothing after it is consumed); 0 or -errno. */
int wire_token__read(struct wire_token *t, int fd);

void wire__hello_mac(const struct wire_token *t, const unsigned char *snonce, const unsigned char *cnonce,
                     const unsigned char *id, uint32_t role, unsigned char out[SHA256_LEN]);
void wire__welcome_mac(const struct wire_token *t, const unsigned char *snonce, const unsigned char *cnonce,
                       const unsigned char *id, unsigned char out[SHA256_LEN]);

/* Fills buf with random bytes from the kernel (getrandom); 0 or -errno. */
int sf_random(void *buf, size_t len);

const char *wire_refusal__name(uint32_t reason);

#endif
