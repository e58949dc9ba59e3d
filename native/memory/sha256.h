/*
 * SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104): the template identity in a descriptor and the
 * authenticated hello between memtap and memserver. Small and self-contained so that the memory
 * core links nothing but libc and libfuse3.
 */
#ifndef SF_SHA256_H
#define SF_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_LEN 32

struct sha256 {
  uint32_t h[8];
  uint64_t bytes;
  unsigned char block[64];
  size_t fill;
};

void sha256__init(struct sha256 *s);
void sha256__update(struct sha256 *s, const void *data, size_t len);
void sha256__final(struct sha256 *s, unsigned char out[SHA256_LEN]);

/* HMAC-SHA256 of the concatenation of n parts (parts[i], lens[i]) under key. */
void hmac_sha256(const void *key, size_t keylen, size_t n, const void *const *parts, const size_t *lens,
                 unsigned char out[SHA256_LEN]);

/* Compares two MACs in time independent of where they differ; 1 when equal. */
int sf_mac_equal(const unsigned char *a, const unsigned char *b, size_t len);

#endif
