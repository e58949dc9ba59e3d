/*
 * The memory descriptor of a template: what a clone host needs to start clones of it without its
 * RAM file. It travels to the clone host (tens of KB against hundreds of MB of RAM); the memtap
 * there serves the clone's RAM from it and from the memserver.
 *
 *   identity     the template's key (for people) and a 16-byte id (first half of a SHA-256 over
 *                everything below): memtap and memserver talk only when their ids match.
 *   geometry     RAM size, page size (4 KiB, the host's), granule size: the unit of fetching and
 *                checking, a power of two from 4 KiB to 2 MiB.
 *   page map     one bit per 4 KiB page: set = the page holds data and must be fetched; clear = it
 *                is zero, and memtap answers it locally. Zero pages are the holes of the RAM file
 *                (never touched by the guest) and pages whose content is all zero (zeroed by the
 *                guest kernel, freed under init_on_free=1).
 *   checksums    CRC32C (see crc32c.h) of each granule holding data, over its whole content
 *                (zero pages inside it included), in granule order.
 *   device state QEMU's saved device state (x-ignore-shared), tens of KB.
 *
 * On disk, little-endian: a 128-byte header, then the key, the page map (64-bit words), the
 * checksums and the state, each section starting 8-byte aligned. The header ends with a CRC32C of
 * the whole file, so a descriptor damaged in transit is refused as a whole.
 */
#ifndef SF_DESCRIPTOR_H
#define SF_DESCRIPTOR_H

#include <stddef.h>
#include <stdint.h>

#define DESC_ID_LEN 16
#define DESC_PAGE 4096u
#define DESC_PAGE_SHIFT 12
#define DESC_MAX_GRANULE (2u << 20)
#define DESC_NO_SUM UINT32_MAX

struct descriptor {
  char *key;
  unsigned char id[DESC_ID_LEN];
  uint64_t ram_size;
  uint32_t granule_size;
  uint32_t granule_shift;
  uint32_t pages_per_granule;
  uint64_t n_pages;
  uint64_t n_granules;
  uint64_t n_data_granules;
  uint64_t *data_map;     /* n_pages bits */
  uint32_t *sums;         /* n_data_granules checksums */
  uint32_t *sum_index;    /* per granule: its index in sums, DESC_NO_SUM for an all-zero granule */
  unsigned char *state;
  uint64_t state_size;
  /* How the zero pages came to be zero, as counted when the descriptor was built. */
  uint64_t hole_pages;    /* never written by the guest (holes of the RAM file) */
  uint64_t zeroed_pages;  /* written, but all zero now */
  uint64_t file_size;     /* bytes of the descriptor on disk */
};

/*
 * Builds the descriptor of a checkpoint: scans the RAM file (holes skipped with SEEK_DATA, never
 * faulted in, so the template's memory does not grow), checks every page for zero, sums every
 * data granule, and reads the device state. why names the failing step for the caller's message.
 */
int descriptor__build(struct descriptor *d, const char *ram_path, const char *state_path, const char *key,
                      uint32_t granule_size, const char **why);

/* Writes d to path atomically (a temporary file renamed over it). */
int descriptor__write(struct descriptor *d, const char *path);

/* Reads and validates a descriptor file; why says what was wrong with it. */
int descriptor__load(struct descriptor *d, const char *path, const char **why);

/*
 * Checks that a RAM file still matches d (size, zero pages zero, every granule's sum): what the
 * memserver does before it serves a file. Returns 0, -EBADMSG with *bad_granule set on the first
 * mismatch, or another negative errno.
 */
int descriptor__verify_ram(const struct descriptor *d, int ram_fd, uint64_t *bad_granule);

/*
 * Gives back the memory of a RAM file's zero pages without changing its contents: punches a hole
 * (fallocate PUNCH_HOLE, size kept) over every run of pages d maps as zero, after checking that
 * they still read as zero. A hole reads as zeros, as the page did. Under init_on_free=1 a template
 * writes every page it frees, so its RAM file in /dev/shm is fully allocated; this makes it cost
 * what it holds. *freed gets the bytes the file's allocation shrank by.
 */
int descriptor__punch_zero(const struct descriptor *d, int ram_fd, uint64_t *freed);

void descriptor__free(struct descriptor *d);

static inline int descriptor__page_has_data(const struct descriptor *d, uint64_t page) {
  return (int)((d->data_map[page >> 6] >> (page & 63)) & 1);
}

static inline int descriptor__granule_is_zero(const struct descriptor *d, uint64_t g) {
  return d->sum_index[g] == DESC_NO_SUM;
}

/* Data pages of granule g: what crosses the wire for it (zero pages inside it stay behind). */
uint32_t descriptor__granule_data_pages(const struct descriptor *d, uint64_t g);

/* Id as 32 hex digits plus a NUL. */
void descriptor__id_hex(const struct descriptor *d, char out[2 * DESC_ID_LEN + 1]);

/* Parses a size such as 4096, 64K, 2M; 0 or -EINVAL. */
int sf_parse_size(const char *s, uint64_t *out);

#endif
