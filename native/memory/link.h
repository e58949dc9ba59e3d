/*
 * A memtap's connection to the memserver (wire.h): connect and hello, GET requests, and the
 * receiving side of DATA, which lands every page straight in its place in the memtap's store
 * (one copy: socket to store) and checks each granule's CRC32C against the descriptor.
 *
 * The receiver is a state machine over a non-blocking or a blocking socket alike: the demand
 * link runs it from memtap's event loop, the fill thread on a blocking socket.
 */
#ifndef SF_LINK_H
#define SF_LINK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "memory/descriptor.h"
#include "memory/wire.h"

#define LINK_IOV 64

struct link {
  int fd;
  uint32_t role;
  const char *server;           /* ADDR:PORT, for messages */
  const struct descriptor *d;
  unsigned char *store;         /* the memtap's copy of guest RAM: DATA pages land here */
  /* Receiving: the 16-byte prefix of a DATA message, then its pages. */
  unsigned char prefix[WIRE_HDR + 8];
  size_t prefix_have;
  uint32_t first, count;        /* granules of the message being received */
  uint64_t page, page_end;      /* next page to receive into, end of the message's pages */
  uint32_t page_done;           /* bytes of `page` received */
  int in_payload;
  uint32_t expect_first, expect_count; /* the next message, when the caller knows it (0: unknown) */
  uint64_t bytes_received;      /* every byte, headers included */
  uint64_t pages_received;
};

/*
 * Connects to server (ADDR:PORT) and completes the hello for role; the socket is left
 * non-blocking when nonblock. On failure, why holds one line's worth of cause.
 */
int link__connect(struct link *l, const char *server, uint32_t role, const struct descriptor *d,
                  const struct wire_token *token, unsigned char *store, int timeout_ms, int nonblock,
                  char *why, size_t whylen);

/* Sends GET for n ranges (first, count pairs), blocking until written; 0 or -errno. */
int link__get(struct link *l, const uint32_t *ranges, uint32_t n);

/*
 * Receives what the socket has towards the current DATA message. Returns 1 when a message is
 * complete (l->first, l->count name its granules; their pages are in the store, unchecked), 0
 * when it needs more bytes (EAGAIN), -EPIPE when the server closed, -EPROTO on a malformed
 * message, or another -errno.
 */
int link__receive(struct link *l);

/*
 * Tells the link which DATA comes next (the demand side's requests are answered in order), so
 * that its header and pages arrive in one receive call.
 */
void link__expect(struct link *l, uint32_t first, uint32_t count);

/* Receives one whole WS message (blocking socket); *pages is allocated. */
int link__receive_ws(struct link *l, uint32_t **pages, uint32_t *n, int timeout_ms);

/* Whether granule g in the store matches its checksum in the descriptor. */
int link__granule_ok(const struct link *l, uint64_t g);

void link__close(struct link *l);

#endif
