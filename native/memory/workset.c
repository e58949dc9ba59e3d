/* Working-set files (workset.h). */
#define _GNU_SOURCE
#include "memory/workset.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/sf.h"
#include "memory/crc32c.h"
#include "memory/wire.h"

#define MAGIC "SFMEMWS1"
#define HEAD 24

int workset__write(const char *path, const struct descriptor *d, const uint32_t *pages, uint32_t n) {
  size_t key_len = strlen(d->key), len = HEAD + key_len + 4 * (size_t)n + 4;
  unsigned char *b = sf_malloc(len);
  if (!b) return -ENOMEM;
  memcpy(b, MAGIC, 8);
  wire_put32(b + 8, n);
  wire_put32(b + 12, (uint32_t)key_len);
  wire_put32(b + 16, (uint32_t)d->ram_size);
  wire_put32(b + 20, (uint32_t)(d->ram_size >> 32));
  memcpy(b + HEAD, d->key, key_len);
  for (uint32_t i = 0; i < n; i++) wire_put32(b + HEAD + key_len + 4 * i, pages[i]);
  wire_put32(b + len - 4, crc32c(0, b, len - 4));
  char tmp[4096];
  int err = 0;
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp-%d", path, (int)getpid()) >= sizeof tmp) err = -ENAMETOOLONG;
  int fd = err ? -1 : open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (!err && fd < 0) err = -errno;
  if (fd >= 0) {
    err = sf_write_all(fd, b, len);
    if (close(fd) < 0 && !err) err = -errno;
    if (!err && rename(tmp, path) < 0) err = -errno;
    if (err) unlink(tmp);
  }
  free(b);
  return err;
}

int workset__load(struct workset *w, const char *path, const struct descriptor *d, const char **why) {
  memset(w, 0, sizeof *w);
  *why = "cannot read it";
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct stat st;
  unsigned char *b = NULL;
  int err = fstat(fd, &st) < 0 ? -errno : 0;
  if (!err && (st.st_size < HEAD + 4 || st.st_size > (64 << 20))) err = -EBADMSG, *why = "its size is impossible";
  if (!err && !(b = sf_malloc((size_t)st.st_size))) err = -ENOMEM;
  if (!err) {
    ssize_t r = sf_read_full(fd, b, (size_t)st.st_size);
    if (r != st.st_size) err = r < 0 ? (int)r : -EPIPE;
  }
  close(fd);
  size_t len = (size_t)st.st_size;
  if (!err) {
    uint32_t n = wire_get32(b + 8), key_len = wire_get32(b + 12);
    uint64_t ram = wire_get32(b + 16) | (uint64_t)wire_get32(b + 20) << 32;
    if (memcmp(b, MAGIC, 8) || HEAD + (size_t)key_len + 4 * (size_t)n + 4 != len) err = -EBADMSG, *why = "not a working-set file";
    else if (crc32c(0, b, len - 4) != wire_get32(b + len - 4)) err = -EBADMSG, *why = "damaged (its checksum does not match)";
    else if (ram != d->ram_size || key_len != strlen(d->key) || memcmp(b + HEAD, d->key, key_len))
      err = -ESTALE, *why = "recorded for another template";
    else if (!(w->pages = sf_array(n ? n : 1, sizeof(uint32_t)))) err = -ENOMEM;
    else {
      for (uint32_t i = 0; i < n; i++) {
        uint32_t p = wire_get32(b + HEAD + key_len + 4 * i);
        if (p >= d->n_pages) {
          err = -EBADMSG, *why = "it names a page beyond the RAM";
          break;
        }
        w->pages[i] = p;
      }
      w->n = n;
    }
  }
  free(b);
  if (err) workset__free(w);
  return err;
}

void workset__free(struct workset *w) {
  free(w->pages);
  w->pages = NULL;
  w->n = 0;
}
