/* CRC32C: the SSE4.2 instruction where the CPU has it, a byte-wise table elsewhere. */
#include "memory/crc32c.h"

#include <string.h>

#define POLY 0x82f63b78u /* Castagnoli, bit-reflected */

static uint32_t table[256];
static int use_hw = -1; /* -1: not decided yet */

static void table__init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ POLY : c >> 1;
    table[i] = c;
  }
}

static uint32_t crc_table(uint32_t c, const unsigned char *p, size_t len) {
  while (len--) c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t c, const unsigned char *p, size_t len) {
  uint64_t c64 = c;
  while (len && ((uintptr_t)p & 7)) {
    c64 = __builtin_ia32_crc32qi((uint32_t)c64, *p++);
    len--;
  }
  /* Four independent words per round keep the instruction's 3-cycle latency off the critical
   * path only partly (each depends on the previous crc); unrolling still saves the loop's
   * bookkeeping. */
  while (len >= 32) {
    uint64_t w[4];
    memcpy(w, p, sizeof w);
    c64 = __builtin_ia32_crc32di(c64, w[0]);
    c64 = __builtin_ia32_crc32di(c64, w[1]);
    c64 = __builtin_ia32_crc32di(c64, w[2]);
    c64 = __builtin_ia32_crc32di(c64, w[3]);
    p += 32;
    len -= 32;
  }
  while (len >= 8) {
    uint64_t w;
    memcpy(&w, p, sizeof w);
    c64 = __builtin_ia32_crc32di(c64, w);
    p += 8;
    len -= 8;
  }
  while (len--) c64 = __builtin_ia32_crc32qi((uint32_t)c64, *p++);
  return (uint32_t)c64;
}
#endif

static void decide(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  use_hw = __builtin_cpu_supports("sse4.2");
#else
  use_hw = 0;
#endif
  if (!use_hw) table__init();
}

uint32_t crc32c(uint32_t crc, const void *buf, size_t len) {
  if (use_hw < 0) decide();
  uint32_t c = ~crc;
#if defined(__x86_64__)
  if (use_hw) return ~crc_hw(c, buf, len);
#endif
  return ~crc_table(c, buf, len);
}

const char *crc32c_impl(void) {
  if (use_hw < 0) decide();
  return use_hw ? "sse4.2" : "table";
}
