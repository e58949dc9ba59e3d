/*
 * memtouch: times page faults on a file mapping, as a guest's faults on its RAM file are taken:
 * a private mapping (MAP_PRIVATE, what QEMU's share=off does), huge pages off (what libnohuge.so
 * does for QEMU) unless --huge, one read of one byte per page.
 *
 *   memtouch FILE --desc DESC [--class data|zero|all] [--pages N] [--huge] [--seed S]
 *
 * Pages are drawn at random (without repetition) from the class the descriptor's page map gives:
 * data pages must come from the memserver, zero pages are answered locally. Prints one JSON line:
 * count, p50/p99/max/mean fault time in microseconds.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "common/sf.h"
#include "memory/descriptor.h"
#include "memory/histogram.h"

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
  sf_prog("memtouch");
  const char *desc_path = NULL, *class = "data";
  long pages = 2000, seed = 1;
  int huge = 0;
  static const struct option opts[] = {
    {"desc", required_argument, 0, 'd'}, {"class", required_argument, 0, 'c'}, {"pages", required_argument, 0, 'n'},
    {"huge", no_argument, 0, 'H'}, {"seed", required_argument, 0, 's'}, {0, 0, 0, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'd': desc_path = optarg; break;
    case 'c': class = optarg; break;
    case 'H': huge = 1; break;
    case 'n':
      if (sf_parse_long(optarg, 1, 1 << 30, &pages) < 0) sf_die(2, 0, "--pages %s: a count", optarg);
      break;
    case 's':
      if (sf_parse_long(optarg, 0, 1L << 30, &seed) < 0) sf_die(2, 0, "--seed %s: a number", optarg);
      break;
    default: sf_die(2, 0, "usage: memtouch FILE --desc DESC [--class data|zero|all] [--pages N] [--huge] [--seed S]");
    }
  }
  if (optind != argc - 1 || !desc_path) sf_die(2, 0, "usage: memtouch FILE --desc DESC [--class data|zero|all] [--pages N] [--huge] [--seed S]");
  int want = !strcmp(class, "data") ? 1 : !strcmp(class, "zero") ? 0 : !strcmp(class, "all") ? 2 : -1;
  if (want < 0) sf_die(2, 0, "--class %s: expected data, zero or all", class);
  struct descriptor d;
  const char *why = "";
  int err = descriptor__load(&d, desc_path, &why);
  if (err) sf_die(1, err, "descriptor %s: %s", desc_path, why);
  uint32_t *cand = sf_array(d.n_pages, sizeof *cand);
  if (!cand) sf_die(1, -ENOMEM, "page list");
  uint64_t n = 0;
  for (uint64_t p = 0; p < d.n_pages; p++)
    if (want == 2 || descriptor__page_has_data(&d, p) == want) cand[n++] = (uint32_t)p;
  srandom((unsigned)seed);
  for (uint64_t i = n; i > 1; i--) { /* Fisher-Yates */
    uint64_t j = (uint64_t)random() % i;
    uint32_t x = cand[i - 1];
    cand[i - 1] = cand[j];
    cand[j] = x;
  }
  if ((uint64_t)pages > n) pages = (long)n;
  int fd = open(argv[optind], O_RDWR | O_CLOEXEC);
  if (fd < 0) sf_die(1, -errno, "cannot open %s", argv[optind]);
  volatile unsigned char *m = mmap(NULL, d.ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  if (m == MAP_FAILED) sf_die(1, -errno, "cannot map %s", argv[optind]);
  madvise((void *)m, d.ram_size, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  /* Random access: no fault-around or readahead hints from the kernel's side either. */
  madvise((void *)m, d.ram_size, MADV_RANDOM);
  struct histogram h = {0};
  uint64_t sum = 0;
  for (long i = 0; i < pages; i++) {
    uint64_t t0 = now_ns();
    sum += m[(uint64_t)cand[i] * DESC_PAGE];
    histogram__add(&h, now_ns() - t0);
  }
  printf("{\"class\":\"%s\",\"pages\":%ld,\"p50Us\":%.2f,\"p99Us\":%.2f,\"maxUs\":%.1f,\"meanUs\":%.2f,\"checksum\":%" PRIu64 "}\n", class, pages,
         histogram__quantile(&h, 0.5) / 1e3, histogram__quantile(&h, 0.99) / 1e3, h.max_ns / 1e3, h.n ? (double)h.sum_ns / (double)h.n / 1e3 : 0.0, sum);
  munmap((void *)m, d.ram_size);
  close(fd);
  free(cand);
  descriptor__free(&d);
  return 0;
}
