/* Log-linear latency histogram (histogram.h). */
#include "memory/histogram.h"

/* Bucket of a value: its power of two (above the first 16) and the next 4 bits below it. */
static void locate(uint64_t ns, unsigned *pow, unsigned *sub) {
  if (ns < HIST_SUB) {
    *pow = 0, *sub = (unsigned)ns;
    return;
  }
  unsigned top = 63 - (unsigned)__builtin_clzll(ns); /* >= 4 */
  unsigned p = top - 3;
  if (p >= HIST_POW) {
    *pow = HIST_POW - 1, *sub = HIST_SUB - 1;
    return;
  }
  *pow = p, *sub = (unsigned)(ns >> (top - 4)) & (HIST_SUB - 1);
}

static uint64_t bucket_low(unsigned pow, unsigned sub) {
  if (pow == 0) return sub;
  return (uint64_t)(HIST_SUB + sub) << (pow - 1);
}

void histogram__add(struct histogram *h, uint64_t ns) {
  unsigned p, s;
  locate(ns, &p, &s);
  h->b[p][s]++;
  h->n++;
  h->sum_ns += ns;
  if (ns > h->max_ns) h->max_ns = ns;
}

uint64_t histogram__quantile(const struct histogram *h, double q) {
  if (!h->n) return 0;
  uint64_t rank = (uint64_t)(q * (double)(h->n - 1)) + 1, seen = 0;
  for (unsigned p = 0; p < HIST_POW; p++) {
    for (unsigned s = 0; s < HIST_SUB; s++) {
      seen += h->b[p][s];
      if (seen >= rank) {
        uint64_t lo = bucket_low(p, s), width = p == 0 ? 1 : (uint64_t)1 << (p - 1);
        uint64_t mid = lo + width / 2;
        return mid > h->max_ns ? h->max_ns : mid;
      }
    }
  }
  return h->max_ns;
}
