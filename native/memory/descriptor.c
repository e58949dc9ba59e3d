/* The memory descriptor: built from a checkpoint, written, read back and checked (descriptor.h). */
#define _GNU_SOURCE
#include "memory/descriptor.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sf.h"
#include "memory/crc32c.h"
#include "memory/sha256.h"

#define MAGIC "SFMEMDSC"
#define VERSION 1
#define HEADER 128
#define SUM_CRC32C 1
#define SCAN_CHUNK DESC_MAX_GRANULE
#define MAX_STATE (256u << 20)
#define MAX_KEY 4096

static void put32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get32(const unsigned char *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = v << 8 | p[i];
  return v;
}
static uint64_t get64(const unsigned char *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
  return v;
}
static size_t align8(size_t n) { return (n + 7) & ~(size_t)7; }

int sf_parse_size(const char *s, uint64_t *out) {
  if (!s || !*s) return -EINVAL;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s) return -EINVAL;
  unsigned shift = 0;
  if (*end == 'K' || *end == 'k') shift = 10, end++;
  else if (*end == 'M' || *end == 'm') shift = 20, end++;
  else if (*end == 'G' || *end == 'g') shift = 30, end++;
  if (*end || v > (UINT64_MAX >> shift)) return -EINVAL;
  *out = (uint64_t)v << shift;
  return 0;
}

/* All-zero test of a page-aligned buffer: an OR over eight words a round, which compilers vectorize. */
static int is_zero(const void *buf, size_t len) {
  const uint64_t *w = buf;
  for (size_t i = 0; i < len / 8; i += 8) {
    if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7]) return 0;
  }
  return 1;
}

static ssize_t pread_full(int fd, void *buf, size_t len, off_t off) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = pread(fd, (char *)buf + got, len - got, off + (off_t)got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return -EPIPE;
    got += (size_t)n;
  }
  return (ssize_t)got;
}

/* Marks in hole[] the pages of [off, off + len) that are holes of the file. */
static int mark_holes(int fd, off_t off, size_t len, unsigned char *hole) {
  off_t end = off + (off_t)len, pos = off;
  memset(hole, 0, len / DESC_PAGE);
  while (pos < end) {
    off_t data = lseek(fd, pos, SEEK_DATA);
    if (data < 0) {
      if (errno != ENXIO) return -errno;
      data = end;
    }
    if (data > end) data = end;
    for (off_t p = pos; p < data; p += DESC_PAGE) hole[(p - off) / DESC_PAGE] = 1;
    if (data >= end) break;
    off_t h = lseek(fd, data, SEEK_HOLE);
    if (h < 0) return -errno;
    pos = h;
  }
  return 0;
}

static int alloc_maps(struct descriptor *d) {
  d->n_pages = d->ram_size / DESC_PAGE;
  d->n_granules = d->ram_size >> d->granule_shift;
  d->pages_per_granule = d->granule_size / DESC_PAGE;
  d->data_map = sf_calloc((d->n_pages + 63) / 64, sizeof(uint64_t));
  d->sum_index = sf_array(d->n_granules, sizeof(uint32_t));
  d->sums = sf_array(d->n_granules, sizeof(uint32_t));
  if (!d->data_map || !d->sum_index || !d->sums) return -ENOMEM;
  return 0;
}

static int set_geometry(struct descriptor *d, uint64_t ram_size, uint32_t granule, const char **why) {
  if (granule < DESC_PAGE || granule > DESC_MAX_GRANULE || (granule & (granule - 1))) {
    *why = "the granule must be a power of two from 4K to 2M";
    return -EINVAL;
  }
  if (ram_size == 0 || ram_size % granule || ram_size / DESC_PAGE > UINT32_MAX) {
    *why = "the RAM size is not a non-zero multiple of the granule (or above 16 TiB)";
    return -EINVAL;
  }
  d->ram_size = ram_size;
  d->granule_size = granule;
  d->granule_shift = (uint32_t)__builtin_ctz(granule);
  return 0;
}

/*
 * Reads the whole RAM file once, a chunk at a time, skipping chunks that are holes; fills the page
 * map, the per-granule sums and the hole/zeroed counts of d (geometry and maps already set).
 */
static int scan(struct descriptor *d, int fd) {
  unsigned char *buf = sf_malloc(SCAN_CHUNK);
  unsigned char hole[SCAN_CHUNK / DESC_PAGE];
  if (!buf) return -ENOMEM;
  int err = 0;
  d->n_data_granules = 0;
  d->hole_pages = d->zeroed_pages = 0;
  for (uint64_t off = 0; off < d->ram_size; off += SCAN_CHUNK) {
    size_t len = d->ram_size - off < SCAN_CHUNK ? (size_t)(d->ram_size - off) : SCAN_CHUNK;
    uint64_t first_page = off / DESC_PAGE, first_granule = off >> d->granule_shift;
    off_t data = lseek(fd, (off_t)off, SEEK_DATA);
    if (data < 0 && errno != ENXIO) {
      err = -errno;
      break;
    }
    if (data < 0 || (uint64_t)data >= off + len) {
      /* A whole chunk of holes: nothing to read. */
      d->hole_pages += len / DESC_PAGE;
      for (uint64_t g = 0; g < (len >> d->granule_shift); g++) d->sum_index[first_granule + g] = DESC_NO_SUM;
      continue;
    }
    if ((err = mark_holes(fd, (off_t)off, len, hole)) < 0) break;
    ssize_t n = pread_full(fd, buf, len, (off_t)off);
    if (n < 0) {
      err = (int)n;
      break;
    }
    for (size_t p = 0; p < len / DESC_PAGE; p++) {
      uint64_t page = first_page + p;
      if (hole[p]) d->hole_pages++;
      else if (is_zero(buf + p * DESC_PAGE, DESC_PAGE)) d->zeroed_pages++;
      else d->data_map[page >> 6] |= 1ull << (page & 63);
    }
    for (uint64_t g = 0; g < (len >> d->granule_shift); g++) {
      uint64_t gi = first_granule + g;
      if (descriptor__granule_data_pages(d, gi) == 0) {
        d->sum_index[gi] = DESC_NO_SUM;
        continue;
      }
      d->sums[d->n_data_granules] = crc32c(0, buf + (g << d->granule_shift), d->granule_size);
      d->sum_index[gi] = (uint32_t)d->n_data_granules++;
    }
  }
  free(buf);
  return err;
}

static void compute_id(struct descriptor *d) {
  static const char domain[] = "snowflock memory descriptor v1";
  unsigned char geo[16], h[SHA256_LEN];
  put64(geo, d->ram_size);
  put32(geo + 8, d->granule_size);
  put32(geo + 12, (uint32_t)strlen(d->key));
  struct sha256 s;
  sha256__init(&s);
  sha256__update(&s, domain, sizeof domain);
  sha256__update(&s, geo, sizeof geo);
  sha256__update(&s, d->key, strlen(d->key));
  /* The map and sums as they are on disk (little-endian), whatever this host's byte order. */
  for (uint64_t w = 0; w < (d->n_pages + 63) / 64; w++) {
    unsigned char le[8];
    put64(le, d->data_map[w]);
    sha256__update(&s, le, sizeof le);
  }
  for (uint64_t i = 0; i < d->n_data_granules; i++) {
    unsigned char le[4];
    put32(le, d->sums[i]);
    sha256__update(&s, le, sizeof le);
  }
  sha256__update(&s, d->state, d->state_size);
  sha256__final(&s, h);
  memcpy(d->id, h, DESC_ID_LEN);
}

static int read_file(const char *path, size_t max, unsigned char **out, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct stat st;
  int err = 0;
  if (fstat(fd, &st) < 0) err = -errno;
  else if ((uint64_t)st.st_size > max) err = -EFBIG;
  unsigned char *buf = NULL;
  if (!err && !(buf = sf_malloc((size_t)st.st_size))) err = -ENOMEM;
  if (!err) {
    ssize_t n = pread_full(fd, buf, (size_t)st.st_size, 0);
    if (n < 0) err = (int)n;
  }
  close(fd);
  if (err) {
    free(buf);
    return err;
  }
  *out = buf;
  *len = (size_t)st.st_size;
  return 0;
}

int descriptor__build(struct descriptor *d, const char *ram_path, const char *state_path, const char *key,
                      uint32_t granule_size, const char **why) {
  memset(d, 0, sizeof *d);
  if (strlen(key) > MAX_KEY) {
    *why = "the template key is too long";
    return -EINVAL;
  }
  if (!(d->key = sf_strdup(key))) return -ENOMEM;
  size_t state_len = 0;
  int err = read_file(state_path, MAX_STATE, &d->state, &state_len);
  if (err) {
    *why = "cannot read the device state file";
    return err;
  }
  d->state_size = state_len;
  int fd = open(ram_path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *why = "cannot open the RAM file";
    return -errno;
  }
  struct stat st;
  if (fstat(fd, &st) < 0) {
    err = -errno;
    *why = "cannot stat the RAM file";
  } else if ((err = set_geometry(d, (uint64_t)st.st_size, granule_size, why)) == 0) {
    if ((err = alloc_maps(d)) < 0) *why = "out of memory";
    else if ((err = scan(d, fd)) < 0) *why = "cannot read the RAM file";
  }
  close(fd);
  if (err) return err;
  compute_id(d);
  return 0;
}

uint32_t descriptor__granule_data_pages(const struct descriptor *d, uint64_t g) {
  uint64_t first = g * d->pages_per_granule;
  uint32_t n = 0;
  if (d->pages_per_granule >= 64) {
    /* Granules of 256 KiB and up cover whole words of the map. */
    for (uint64_t w = first / 64; w < (first + d->pages_per_granule) / 64; w++) n += (uint32_t)__builtin_popcountll(d->data_map[w]);
    return n;
  }
  uint64_t bits = d->data_map[first / 64] >> (first % 64);
  if (d->pages_per_granule < 64) bits &= (1ull << d->pages_per_granule) - 1;
  return (uint32_t)__builtin_popcountll(bits);
}

/* Serializes d into one buffer: header, key, map, sums, state. */
static int serialize(struct descriptor *d, unsigned char **out, size_t *len) {
  size_t key_len = strlen(d->key), map_len = (d->n_pages + 63) / 64 * 8, sums_len = d->n_data_granules * 4;
  size_t total = HEADER + align8(key_len) + map_len + align8(sums_len) + d->state_size;
  unsigned char *b = sf_calloc(1, total);
  if (!b) return -ENOMEM;
  memcpy(b, MAGIC, 8);
  put32(b + 8, VERSION);
  put32(b + 12, HEADER);
  put64(b + 16, d->ram_size);
  put32(b + 24, DESC_PAGE);
  put32(b + 28, d->granule_size);
  put64(b + 32, d->n_data_granules);
  put64(b + 40, d->state_size);
  put32(b + 48, (uint32_t)key_len);
  put32(b + 52, SUM_CRC32C);
  memcpy(b + 56, d->id, DESC_ID_LEN);
  put64(b + 72, d->hole_pages);
  put64(b + 80, d->zeroed_pages);
  unsigned char *p = b + HEADER;
  memcpy(p, d->key, key_len);
  p += align8(key_len);
  for (uint64_t w = 0; w < map_len / 8; w++, p += 8) put64(p, d->data_map[w]);
  for (uint64_t i = 0; i < d->n_data_granules; i++) put32(p + 4 * i, d->sums[i]);
  p += align8(sums_len);
  memcpy(p, d->state, d->state_size);
  put32(b + 124, crc32c(0, b, total));
  *out = b;
  *len = total;
  d->file_size = total;
  return 0;
}

int descriptor__write(struct descriptor *d, const char *path) {
  unsigned char *buf;
  size_t len;
  int err = serialize(d, &buf, &len);
  if (err) return err;
  size_t plen = strlen(path) + 32;
  char *tmp = sf_malloc(plen);
  if (!tmp) {
    free(buf);
    return -ENOMEM;
  }
  snprintf(tmp, plen, "%s.tmp-%d", path, (int)getpid());
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) err = -errno;
  else {
    err = sf_write_all(fd, buf, len);
    if (close(fd) < 0 && !err) err = -errno;
    if (!err && rename(tmp, path) < 0) err = -errno;
    if (err) unlink(tmp);
  }
  free(tmp);
  free(buf);
  return err;
}

static int parse(struct descriptor *d, unsigned char *b, size_t len, const char **why) {
  *why = "truncated or damaged (its checksum does not match)";
  if (len < HEADER) return -EBADMSG;
  if (memcmp(b, MAGIC, 8)) {
    *why = "not a snowflock memory descriptor (bad magic)";
    return -EBADMSG;
  }
  if (get32(b + 8) != VERSION || get32(b + 12) != HEADER) {
    *why = "a descriptor of another version; rebuild it with this snowflock";
    return -EPROTO;
  }
  uint32_t stored = get32(b + 124);
  put32(b + 124, 0);
  if (crc32c(0, b, len) != stored) return -EBADMSG;
  if (get32(b + 24) != DESC_PAGE || get32(b + 52) != SUM_CRC32C) {
    *why = "page size or checksum kind unknown to this snowflock";
    return -EPROTO;
  }
  int err = set_geometry(d, get64(b + 16), get32(b + 28), why);
  if (err) return -EBADMSG;
  d->n_data_granules = get64(b + 32);
  d->state_size = get64(b + 40);
  size_t key_len = get32(b + 48);
  memcpy(d->id, b + 56, DESC_ID_LEN);
  d->hole_pages = get64(b + 72);
  d->zeroed_pages = get64(b + 80);
  if ((err = alloc_maps(d)) < 0) return err;
  size_t map_len = (d->n_pages + 63) / 64 * 8;
  if (key_len > MAX_KEY || d->n_data_granules > d->n_granules || d->state_size > MAX_STATE ||
      HEADER + align8(key_len) + map_len + align8(d->n_data_granules * 4) + d->state_size != len) {
    *why = "its sections do not add up to its size";
    return -EBADMSG;
  }
  const unsigned char *p = b + HEADER;
  if (!(d->key = sf_strndup((const char *)p, key_len))) return -ENOMEM;
  p += align8(key_len);
  for (uint64_t w = 0; w < map_len / 8; w++, p += 8) d->data_map[w] = get64(p);
  for (uint64_t i = 0; i < d->n_data_granules; i++) d->sums[i] = get32(p + 4 * i);
  p += align8(d->n_data_granules * 4);
  if (!(d->state = sf_malloc(d->state_size))) return -ENOMEM;
  memcpy(d->state, p, d->state_size);
  /* The sums are in granule order: rebuild the granule -> sum index from the map. */
  uint64_t next = 0;
  for (uint64_t g = 0; g < d->n_granules; g++) d->sum_index[g] = descriptor__granule_data_pages(d, g) ? (uint32_t)next++ : DESC_NO_SUM;
  if (next != d->n_data_granules) {
    *why = "its page map and checksum table disagree";
    return -EBADMSG;
  }
  unsigned char id[DESC_ID_LEN];
  memcpy(id, d->id, DESC_ID_LEN);
  compute_id(d);
  if (memcmp(id, d->id, DESC_ID_LEN)) {
    *why = "its identity does not match its content";
    return -EBADMSG;
  }
  d->file_size = len;
  return 0;
}

int descriptor__load(struct descriptor *d, const char *path, const char **why) {
  memset(d, 0, sizeof *d);
  unsigned char *buf;
  size_t len;
  int err = read_file(path, MAX_STATE + (64u << 20), &buf, &len);
  if (err) {
    *why = "cannot read it";
    return err;
  }
  err = parse(d, buf, len, why);
  free(buf);
  if (err) descriptor__free(d);
  return err;
}

int descriptor__verify_ram(const struct descriptor *d, int ram_fd, uint64_t *bad_granule) {
  struct stat st;
  if (fstat(ram_fd, &st) < 0) return -errno;
  if ((uint64_t)st.st_size != d->ram_size) return -EMEDIUMTYPE;
  struct descriptor now = {.ram_size = d->ram_size, .granule_size = d->granule_size, .granule_shift = d->granule_shift};
  int err = alloc_maps(&now);
  if (!err) err = scan(&now, ram_fd);
  if (!err) {
    for (uint64_t g = 0; g < d->n_granules; g++) {
      uint32_t a = d->sum_index[g], b = now.sum_index[g];
      int same = (a == DESC_NO_SUM) == (b == DESC_NO_SUM) && (a == DESC_NO_SUM || d->sums[a] == now.sums[b]);
      /* The same zero pages, too: their data never crosses the wire. */
      for (uint32_t p = 0; same && p < d->pages_per_granule; p++) {
        uint64_t page = g * d->pages_per_granule + p;
        same = descriptor__page_has_data(d, page) == descriptor__page_has_data(&now, page);
      }
      if (!same) {
        *bad_granule = g;
        err = -EBADMSG;
        break;
      }
    }
  }
  free(now.data_map);
  free(now.sum_index);
  free(now.sums);
  return err;
}

int descriptor__punch_zero(const struct descriptor *d, int ram_fd, uint64_t *freed) {
  struct stat before, after;
  if (fstat(ram_fd, &before) < 0) return -errno;
  if ((uint64_t)before.st_size != d->ram_size) return -EMEDIUMTYPE;
  unsigned char *buf = sf_malloc(SCAN_CHUNK);
  if (!buf) return -ENOMEM;
  int err = 0;
  for (uint64_t p = 0; p < d->n_pages && !err;) {
    if (descriptor__page_has_data(d, p)) {
      p++;
      continue;
    }
    uint64_t end = p;
    while (end < d->n_pages && end - p < SCAN_CHUNK / DESC_PAGE && !descriptor__page_has_data(d, end)) end++;
    size_t len = (size_t)(end - p) * DESC_PAGE;
    /* Reading a hole of tmpfs allocates nothing; a page written since the scan is left alone. */
    ssize_t n = pread_full(ram_fd, buf, len, (off_t)(p * DESC_PAGE));
    if (n < 0) err = (int)n;
    else if (!is_zero(buf, len)) err = -EBADMSG;
    else if (fallocate(ram_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(p * DESC_PAGE), (off_t)len) < 0) err = -errno;
    p = end;
  }
  free(buf);
  if (err) return err;
  if (fstat(ram_fd, &after) < 0) return -errno;
  *freed = before.st_blocks > after.st_blocks ? (uint64_t)(before.st_blocks - after.st_blocks) * 512 : 0;
  return 0;
}

void descriptor__free(struct descriptor *d) {
  free(d->key);
  free(d->data_map);
  free(d->sums);
  free(d->sum_index);
  free(d->state);
  memset(d, 0, sizeof *d);
}

void descriptor__id_hex(const struct descriptor *d, char out[2 * DESC_ID_LEN + 1]) {
  for (int i = 0; i < DESC_ID_LEN; i++) snprintf(out + 2 * i, 3, "%02x", d->id[i]);
}
