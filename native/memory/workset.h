/*
 * A recorded working set (REAP-style): the pages a template's clones faulted on during an earlier
 * run, in the order they first faulted. The memserver records it from the demand requests it
 * serves and keeps it next to the template; memtaps ask for it and fill in that order first.
 *
 * Page indices (4 KiB), not granules: a working set recorded with one granule size still orders
 * the fill with another. Bound to the template by its key and RAM size.
 *
 * File, little-endian: "SFMEMWS1" | u32 count | u32 key length | u64 RAM size | key | count x u32
 * page | u32 CRC32C of everything before it.
 */
#ifndef SF_WORKSET_H
#define SF_WORKSET_H

#include <stdint.h>

#include "memory/descriptor.h"

struct workset {
  uint32_t *pages;
  uint32_t n;
};

/* Reads a working set for d's template; why says what was wrong with the file. */
int workset__load(struct workset *w, const char *path, const struct descriptor *d, const char **why);
/* Writes one atomically (temporary file, then rename). */
int workset__write(const char *path, const struct descriptor *d, const uint32_t *pages, uint32_t n);
void workset__free(struct workset *w);

#endif
