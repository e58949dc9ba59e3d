/*
 * What the benchmark and test drivers (mcgeom, mcpush, mcrecv) share; not part of the library.
 *
 * A geometry file stands in for the memory descriptor (which the memserver and memtap have): the
 * page map and a CRC32C per granule of an image, computed once on the sender's side, "shipped"
 * to the receivers. File, little-endian: "SFMCGEO1" | u32 granule size | u32 0 | u64 RAM size |
 * u64 granules | id[16] | digest[32] (SHA-256 of the data granules in granule order, for the
 * end-to-end check) | page map (u64 words) | per granule u32 CRC32C (MC_NO_SUM: all zero).
 *
 * A working-set file is a list of u32 granules, little-endian: the push order's head.
 */
#ifndef SF_MCAST_BENCH_H
#define SF_MCAST_BENCH_H

#include <stdint.h>
#include <stdio.h>

#include "mcast/mcast.h"

struct bench_geometry {
  struct mc_geometry g;
  unsigned char digest[32];
  uint64_t *map;
  uint32_t *sums, *index;
  uint64_t data_granules;
};

/* Scans an image file (pread only, holes skipped: a shared template is never faulted in). */
int bench_geometry__build(struct bench_geometry *b, int fd, uint64_t size, uint32_t granule);
int bench_geometry__write(const struct bench_geometry *b, const char *path);
int bench_geometry__load(struct bench_geometry *b, const char *path, const char **why);
void bench_geometry__free(struct bench_geometry *b);

/* The working set; an absent path is an empty one. */
int bench_ws__load(const char *path, uint32_t **out, size_t *n);
/* The whole push order: ws first (data granules, once each), then every other data granule. */
int bench_order(const struct mc_geometry *g, const uint32_t *ws, size_t n_ws, uint32_t **out, uint32_t *n);

/* Maps a file read-only (the whole of it); 0 or -errno. Touch only its data pages: a read fault in
 * a hole of a tmpfs file allocates a page there. */
int bench_map(const char *path, const unsigned char **base, uint64_t *size);

/* A receiver's store: anonymous memory laid out like the image, and what it has. */
struct bench_store {
  const struct mc_geometry *g;
  unsigned char *ram;
  uint8_t *in_ws;
  uint64_t ws_total, ws_have, have, need;
  uint64_t ws_ns;             /* CLOCK_REALTIME when the last working-set granule came */
  uint64_t complete_ns;       /* CLOCK_REALTIME when the last granule came */
  uint64_t data_bytes;        /* data bytes stored */
  uint64_t slow_ns;           /* per granule stored: a slow host (busy-waits this long) */
};

int bench_store__open(struct bench_store *s, const struct mc_geometry *g, const uint32_t *ws, size_t n_ws);
/* Puts a granule's data pages where they belong; 0 stored, 1 there already. */
int bench_store__put(struct bench_store *s, uint32_t granule, const unsigned char *pages, size_t len);
int bench_store__has(const struct bench_store *s, uint32_t granule);
/* Checks every data granule against its CRC32C and digests them: bad granules and missing ones. */
void bench_store__verify(const struct bench_store *s, uint64_t *bad, uint64_t *missing, unsigned char digest[32]);
void bench_store__close(struct bench_store *s);

/* What a driver was told on its command line (mcpush and mcrecv). */
struct bench_args {
  const char *transport;      /* sfmc (ours), norm (libnorm), tcp (unicast baseline) */
  struct mc_channel ch;
  const char *ifname;         /* the underlay interface (NORM wants a name) */
  struct bench_geometry geo;
  const unsigned char *image; /* sender */
  uint64_t geo_size;          /* bytes mapped at image */
  uint32_t *ws, *order;
  size_t n_ws;
  uint32_t n_order;
  long hosts;                 /* sender: receivers to wait for */
  long node;                  /* receiver: its number, 1..hosts */
  uint64_t rate;              /* bytes/s on the wire */
  long slow_us, timeout_s, mtu, demand;
  int cc;                     /* norm: its congestion control instead of a fixed rate */
  double norm_backoff;        /* norm: NACK backoff factor, < 0 for NORM's default */
};

/* Parses a driver's options, loads the geometry, working set, order, image, and the token. */
int bench_parse(int argc, char **argv, struct bench_args *a, int sender);

void bench_args__free(struct bench_args *a);

/* Polls stdin: 1 once it says "stop" or ends (the harness is done, or died). */
int bench_stdin_done(void);

/* The token from stdin's first line ("token <hex>"); 0 or -EINVAL. */
int bench_read_token(struct mc_channel *ch);
/* user + system CPU seconds of this process, all threads. */
double bench_cpu_seconds(void);
void bench_hex(const unsigned char *b, size_t n, char *out);

#endif
