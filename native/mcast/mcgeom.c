/*
 * mcgeom: the image side of the multicast benchmarks and tests (what memdesc is to the memory
 * core: the page map and a checksum per granule, computed where the image is).
 *
 *   mcgeom build IMAGE GEOMETRY [--granule BYTES] [--ws FILE --ws-percent P] [--seed N]
 *       scans IMAGE (read-only, with pread: a template's holes are never faulted in) and writes GEOMETRY; --ws writes a working set: P percent of the
 *       data granules, scattered (a seeded shuffle), as the push order's head
 *   mcgeom synth IMAGE MIB ZERO_PERCENT [--seed N]
 *       writes a synthetic image: random data pages, ZERO_PERCENT of pages zero (holes)
 *   mcgeom info GEOMETRY
 *       one line of JSON: granules, data granules, bytes, id, digest
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/sf.h"
#include "mcast/bench.h"
#include "mcast/packet.h"

static uint64_t rng_state;

static uint64_t rng(void) {  /* splitmix64: reproducible from the seed */
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static int write_ws(const struct bench_geometry *b, const char *path, long percent) {
  uint32_t *data = sf_array(b->data_granules + 1, 4);
  if (!data) return -ENOMEM;
  uint64_t n = 0;
  for (uint64_t i = 0; i < b->g.n_granules; i++)
    if (b->index[i] != MC_NO_SUM) data[n++] = (uint32_t)i;
  for (uint64_t i = n; i > 1; i--) {
    uint64_t j = rng() % i;
    uint32_t t = data[i - 1];
    data[i - 1] = data[j], data[j] = t;
  }
  uint64_t k = n * (uint64_t)percent / 100;
  unsigned char *raw = sf_malloc(k * 4 + 1);
  if (!raw) return free(data), -ENOMEM;
  for (uint64_t i = 0; i < k; i++) put32(raw + 4 * i, data[i]);
  free(data);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err = fd < 0 ? -errno : sf_write_all(fd, raw, k * 4);
  if (fd >= 0) close(fd);
  free(raw);
  return err;
}

static int build(int argc, char **argv) {
  if (argc < 4) return sf_err(0, "usage: mcgeom build IMAGE GEOMETRY [--granule BYTES] [--ws FILE --ws-percent P] [--seed N]"), 2;
  long granule = MC_PAGE, percent = 5, seed = 1;
  const char *ws = NULL;
  for (int i = 4; i < argc; i++) {
    long *dst = !strcmp(argv[i], "--granule") ? &granule : !strcmp(argv[i], "--ws-percent") ? &percent : !strcmp(argv[i], "--seed") ? &seed : NULL;
    if (!strcmp(argv[i], "--ws") && i + 1 < argc) ws = argv[++i];
    else if (dst && i + 1 < argc) {
      if (sf_parse_long(argv[++i], 0, 1L << 21, dst) < 0) return sf_err(0, "%s %s: a number, please", argv[i - 1], argv[i]), 2;
    } else {
      return sf_err(0, "unknown option %s; see the usage at the top of mcgeom.c", argv[i]), 2;
    }
  }
  if (percent > 100) return sf_err(0, "--ws-percent %ld: at most 100", percent), 2;
  int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sf_err(-errno, "image %s", argv[2]), 1;
  off_t end = lseek(fd, 0, SEEK_END);
  uint64_t size = end < 0 ? 0 : (uint64_t)end;
  struct bench_geometry b;
  int err = bench_geometry__build(&b, fd, size, (uint32_t)granule);
  close(fd);
  if (err < 0)
    return sf_err(err, "image %s: %" PRIu64 " bytes in granules of %ld", argv[2], size, granule), 1;
  if ((err = bench_geometry__write(&b, argv[3])) < 0) return sf_err(err, "writing %s", argv[3]), 1;
  rng_state = (uint64_t)seed;
  if (ws && (err = write_ws(&b, ws, percent)) < 0) return sf_err(err, "writing %s", ws), 1;
  printf("{\"granules\":%" PRIu64 ",\"data_granules\":%" PRIu64 ",\"ram_size\":%" PRIu64 "}\n", b.g.n_granules, b.data_granules, b.g.ram_size);
  bench_geometry__free(&b);
  return 0;
}

static int synth(int argc, char **argv) {
  long mib, zero, seed = 1;
  if (argc < 5 || sf_parse_long(argv[3], 1, 1 << 16, &mib) < 0 || sf_parse_long(argv[4], 0, 100, &zero) < 0)
    return sf_err(0, "usage: mcgeom synth IMAGE MIB ZERO_PERCENT [--seed N]"), 2;
  if (argc == 7 && !strcmp(argv[5], "--seed") && sf_parse_long(argv[6], 0, INT32_MAX, &seed) < 0) return sf_err(0, "--seed: a number"), 2;
  rng_state = (uint64_t)seed;
  int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return sf_err(-errno, "%s", argv[2]), 1;
  uint64_t pages = (uint64_t)mib << 8;
  uint64_t page[MC_PAGE / 8];
  int err = ftruncate(fd, (off_t)(pages * MC_PAGE)) < 0 ? -errno : 0;
  for (uint64_t p = 0; !err && p < pages; p++) {
    if (rng() % 100 < (uint64_t)zero) continue;
    for (size_t i = 0; i < SF_ARRAY_LEN(page); i++) page[i] = rng();
    if (pwrite(fd, page, MC_PAGE, (off_t)(p * MC_PAGE)) != MC_PAGE) err = -errno;
  }
  if (close(fd) < 0 && !err) err = -errno;
  if (err) return unlink(argv[2]), sf_err(err, "writing %s", argv[2]), 1;
  return 0;
}

static int info(int argc, char **argv) {
  if (argc != 3) return sf_err(0, "usage: mcgeom info GEOMETRY"), 2;
  struct bench_geometry b;
  const char *why;
  int err = bench_geometry__load(&b, argv[2], &why);
  if (err < 0) return sf_err(err, "geometry %s %s", argv[2], why), 1;
  char id[2 * MC_ID_LEN + 1], dig[65];
  bench_hex(b.g.id, MC_ID_LEN, id);
  bench_hex(b.digest, 32, dig);
  printf("{\"granules\":%" PRIu64 ",\"data_granules\":%" PRIu64 ",\"granule_size\":%u,\"ram_size\":%" PRIu64 ",\"id\":\"%s\",\"digest\":\"%s\"}\n",
         b.g.n_granules, b.data_granules, b.g.granule_size, b.g.ram_size, id, dig);
  bench_geometry__free(&b);
  return 0;
}

int main(int argc, char **argv) {
  sf_prog("mcgeom");
  if (argc >= 2 && !strcmp(argv[1], "build")) return build(argc, argv);
  if (argc >= 2 && !strcmp(argv[1], "synth")) return synth(argc, argv);
  if (argc >= 2 && !strcmp(argv[1], "info")) return info(argc, argv);
  sf_err(0, "usage: mcgeom build|synth|info ...; see the top of native/mcast/mcgeom.c");
  return 2;
}
