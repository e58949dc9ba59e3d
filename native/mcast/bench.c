/* The drivers' shared parts: geometry files, the push order, a receiver's store (see bench.h). */
#define _GNU_SOURCE
#include "mcast/bench.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "common/sf.h"
#include "mcast/packet.h"
#include "memory/crc32c.h"

#define GEO_MAGIC "SFMCGEO1"
#define GEO_HDR (8 + 4 + 4 + 8 + 8 + MC_ID_LEN + 32)

static int page_zero(const unsigned char *p) {
  const uint64_t *w = (const uint64_t *)p;
  for (size_t i = 0; i < MC_PAGE / 8; i++)
    if (w[i]) return 0;
  return 1;
}

static int alloc_tables(struct bench_geometry *b, uint64_t n_granules, uint32_t granule, uint64_t size) {
  uint64_t pages = size / MC_PAGE;
  b->map = sf_calloc((pages + 63) / 64, 8);
  b->sums = sf_calloc(n_granules, 4);
  b->index = sf_array(n_granules, 4);
  if (!b->map || !b->sums || !b->index) return -ENOMEM;
  b->g = (struct mc_geometry){ .ram_size = size, .granule_size = granule, .n_granules = n_granules,
                               .data_map = b->map, .sum_index = b->index, .sums = b->sums };
  return 0;
}

/* SHA-256 over the data granules in granule order, each whole (zero pages inside included). */
static void digest_granules(const struct mc_geometry *g, const unsigned char *ram, unsigned char out[32]) {
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  unsigned int len;
  EVP_DigestInit_ex(c, EVP_sha256(), NULL);
  for (uint64_t i = 0; i < g->n_granules; i++)
    if (g->sum_index[i] != MC_NO_SUM) EVP_DigestUpdate(c, ram + i * g->granule_size, g->granule_size);
  EVP_DigestFinal_ex(c, out, &len);
  EVP_MD_CTX_free(c);
}

/*
 * Scans the image with pread() only, and skips its holes (SEEK_DATA): a read fault in a mapping of
 * a tmpfs file allocates the pages of its holes, which would grow a shared template's memory.
 */
int bench_geometry__build(struct bench_geometry *b, int fd, uint64_t size, uint32_t granule) {
  memset(b, 0, sizeof *b);
  if (size % granule || granule < MC_PAGE || (granule & (granule - 1))) return -EINVAL;
  uint64_t n = size / granule, per = granule / MC_PAGE;
  int err = alloc_tables(b, n, granule, size);
  unsigned char *buf = err ? NULL : sf_malloc(granule);
  EVP_MD_CTX *dig = EVP_MD_CTX_new();
  if (!err && (!buf || !dig)) err = -ENOMEM;
  if (!err) EVP_DigestInit_ex(dig, EVP_sha256(), NULL);
  for (uint64_t i = 0; i < n; i++) b->index[i] = MC_NO_SUM;
  uint64_t at = 0;
  while (!err && at < size) {
    off_t data = lseek(fd, (off_t)at, SEEK_DATA);
    if (data < 0) break;  /* ENXIO: nothing but holes from here */
    off_t hole = lseek(fd, data, SEEK_HOLE);
    if (hole < 0) hole = (off_t)size;
    for (uint64_t i = (uint64_t)data / granule; !err && i * granule < (uint64_t)hole && i < n; i++) {
      if (pread(fd, buf, granule, (off_t)(i * granule)) != (ssize_t)granule) err = -EIO;
      int any = 0;
      for (uint64_t k = 0; !err && k < per; k++) {
        uint64_t p = i * per + k;
        if (!page_zero(buf + k * MC_PAGE)) b->map[p >> 6] |= 1ull << (p & 63), any = 1;
      }
      if (err || !any || b->index[i] != MC_NO_SUM) continue;
      b->index[i] = (uint32_t)i;
      b->sums[i] = crc32c(0, buf, granule);
      b->data_granules++;
      EVP_DigestUpdate(dig, buf, granule);
    }
    at = ((uint64_t)hole + granule - 1) / granule * granule;
  }
  unsigned int len;
  if (!err) EVP_DigestFinal_ex(dig, b->digest, &len);
  EVP_MD_CTX_free(dig);
  free(buf);
  if (err) return bench_geometry__free(b), err;
  /* The id: what a descriptor's is, the hash of what describes the image. */
  unsigned char h[32];
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  EVP_DigestInit_ex(c, EVP_sha256(), NULL);
  EVP_DigestUpdate(c, b->index, n * 4);
  EVP_DigestUpdate(c, b->sums, n * 4);
  EVP_DigestUpdate(c, b->map, (size / MC_PAGE + 63) / 64 * 8);
  EVP_DigestFinal_ex(c, h, &len);
  EVP_MD_CTX_free(c);
  memcpy(b->g.id, h, MC_ID_LEN);
  return 0;
}

int bench_geometry__write(const struct bench_geometry *b, const char *path) {
  unsigned char hdr[GEO_HDR];
  memcpy(hdr, GEO_MAGIC, 8);
  put32(hdr + 8, b->g.granule_size);
  put32(hdr + 12, 0);
  put64(hdr + 16, b->g.ram_size);
  put64(hdr + 24, b->g.n_granules);
  memcpy(hdr + 32, b->g.id, MC_ID_LEN);
  memcpy(hdr + 32 + MC_ID_LEN, b->digest, 32);
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -errno;
  uint64_t words = (b->g.ram_size / MC_PAGE + 63) / 64;
  int err = sf_write_all(fd, hdr, sizeof hdr);
  if (!err) err = sf_write_all(fd, b->map, words * 8);
  if (!err) err = sf_write_all(fd, b->sums, b->g.n_granules * 4);
  if (close(fd) < 0 && !err) err = -errno;
  return err;
}

int bench_geometry__load(struct bench_geometry *b, const char *path, const char **why) {
  memset(b, 0, sizeof *b);
  *why = "cannot be read";
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  unsigned char hdr[GEO_HDR];
  ssize_t n = sf_read_full(fd, hdr, sizeof hdr);
  int err = n == (ssize_t)sizeof hdr ? 0 : n < 0 ? (int)n : -EBADMSG;
  if (!err && memcmp(hdr, GEO_MAGIC, 8) != 0) err = -EBADMSG, *why = "is not a geometry file";
  uint32_t granule = get32(hdr + 8);
  uint64_t size = get64(hdr + 16), granules = get64(hdr + 24);
  if (!err && (granule < MC_PAGE || (granule & (granule - 1)) || size != granules * granule || granules > UINT32_MAX - 1))
    err = -EBADMSG, *why = "has an impossible geometry";
  if (!err) err = alloc_tables(b, granules, granule, size);
  uint64_t words = (size / MC_PAGE + 63) / 64;
  if (!err && sf_read_full(fd, b->map, words * 8) != (ssize_t)(words * 8)) err = -EBADMSG, *why = "is truncated";
  if (!err && sf_read_full(fd, b->sums, granules * 4) != (ssize_t)(granules * 4)) err = -EBADMSG, *why = "is truncated";
  close(fd);
  if (err) return bench_geometry__free(b), err;
  memcpy(b->g.id, hdr + 32, MC_ID_LEN);
  memcpy(b->digest, hdr + 32 + MC_ID_LEN, 32);
  uint64_t per = granule / MC_PAGE;
  for (uint64_t i = 0; i < granules; i++) {
    int data = 0;
    for (uint64_t k = 0; k < per; k++) data |= (int)((b->map[(i * per + k) >> 6] >> ((i * per + k) & 63)) & 1);
    b->index[i] = data ? (uint32_t)i : MC_NO_SUM;
    b->data_granules += (uint64_t)data;
  }
  return 0;
}

void bench_geometry__free(struct bench_geometry *b) {
  free(b->map), free(b->sums), free(b->index);
  memset(b, 0, sizeof *b);
}

int bench_ws__load(const char *path, uint32_t **out, size_t *n) {
  *out = NULL, *n = 0;
  if (!path) return 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct stat st;
  if (fstat(fd, &st) < 0 || st.st_size % 4) return close(fd), -EBADMSG;
  size_t count = (size_t)st.st_size / 4;
  unsigned char *raw = sf_malloc(count * 4 + 1);
  uint32_t *ws = sf_array(count + 1, 4);
  if (!raw || !ws) return free(raw), free(ws), close(fd), -ENOMEM;
  ssize_t got = sf_read_full(fd, raw, count * 4);
  close(fd);
  if (got != (ssize_t)(count * 4) && count) return free(raw), free(ws), -EBADMSG;
  for (size_t i = 0; i < count; i++) ws[i] = get32(raw + 4 * i);
  free(raw);
  *out = ws, *n = count;
  return 0;
}

int bench_order(const struct mc_geometry *g, const uint32_t *ws, size_t n_ws, uint32_t **out, uint32_t *n) {
  uint32_t *order = sf_array(g->n_granules, 4);
  uint8_t *seen = sf_calloc(g->n_granules, 1);
  if (!order || !seen) return free(order), free(seen), -ENOMEM;
  uint32_t k = 0;
  for (size_t i = 0; i < n_ws; i++)
    if (ws[i] < g->n_granules && g->sum_index[ws[i]] != MC_NO_SUM && !seen[ws[i]]) seen[ws[i]] = 1, order[k++] = ws[i];
  for (uint64_t i = 0; i < g->n_granules; i++)
    if (g->sum_index[i] != MC_NO_SUM && !seen[i]) order[k++] = (uint32_t)i;
  free(seen);
  *out = order, *n = k;
  return 0;
}

int bench_map(const char *path, const unsigned char **base, uint64_t *size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct stat st;
  if (fstat(fd, &st) < 0) return close(fd), -errno;
  void *p = st.st_size ? mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0) : MAP_FAILED;
  int err = p == MAP_FAILED ? (st.st_size ? -errno : -EINVAL) : 0;
  close(fd);
  if (err) return err;
  *base = p, *size = (uint64_t)st.st_size;
  return 0;
}

int bench_store__open(struct bench_store *s, const struct mc_geometry *g, const uint32_t *ws, size_t n_ws) {
  memset(s, 0, sizeof *s);
  s->g = g;
  s->ram = mmap(NULL, g->ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (s->ram == MAP_FAILED) return s->ram = NULL, -errno;
  s->in_ws = sf_calloc(g->n_granules, 1);
  if (!s->in_ws) return bench_store__close(s), -ENOMEM;
  for (size_t i = 0; i < n_ws; i++)
    if (ws[i] < g->n_granules && g->sum_index[ws[i]] != MC_NO_SUM && !s->in_ws[ws[i]]) s->in_ws[ws[i]] = 1, s->ws_total++;
  for (uint64_t i = 0; i < g->n_granules; i++) s->in_ws[i] |= (uint8_t)(g->sum_index[i] == MC_NO_SUM ? 4 : 0);
  s->need = mc_geometry__data_granules(g);
  return 0;
}

int bench_store__has(const struct bench_store *s, uint32_t granule) { return (s->in_ws[granule] & 2) != 0; }

int bench_store__put(struct bench_store *s, uint32_t granule, const unsigned char *pages, size_t len) {
  if (s->in_ws[granule] & 2) return 1;
  const struct mc_geometry *g = s->g;
  uint64_t per = g->granule_size / MC_PAGE, first = (uint64_t)granule * per;
  size_t at = 0;
  for (uint64_t k = 0; k < per && at < len; k++) {
    uint64_t p = first + k;
    if ((g->data_map[p >> 6] >> (p & 63)) & 1) memcpy(s->ram + p * MC_PAGE, pages + at, MC_PAGE), at += MC_PAGE;
  }
  s->in_ws[granule] |= 2;
  s->data_bytes += len;
  if (++s->have == s->need) s->complete_ns = mc_wall_ns();
  if (s->in_ws[granule] & 1 && ++s->ws_have == s->ws_total) s->ws_ns = mc_wall_ns();
  if (s->slow_ns) {
    uint64_t until = mc_now_ns() + s->slow_ns;
    while (mc_now_ns() < until) {
    }
  }
  return 0;
}

void bench_store__verify(const struct bench_store *s, uint64_t *bad, uint64_t *missing, unsigned char digest[32]) {
  const struct mc_geometry *g = s->g;
  *bad = *missing = 0;
  for (uint64_t i = 0; i < g->n_granules; i++) {
    if (g->sum_index[i] == MC_NO_SUM) continue;
    if (!(s->in_ws[i] & 2)) (*missing)++;
    else if (crc32c(0, s->ram + i * g->granule_size, g->granule_size) != g->sums[g->sum_index[i]]) (*bad)++;
  }
  digest_granules(g, s->ram, digest);
}

void bench_store__close(struct bench_store *s) {
  if (s->ram) munmap(s->ram, s->g->ram_size);
  free(s->in_ws);
  memset(s, 0, sizeof *s);
}

int bench_read_token(struct mc_channel *ch) {
  char line[256];
  size_t n = 0;
  /* A byte at a time: nothing after the line is consumed (the sender reads "stop" later). */
  while (n + 1 < sizeof line) {
    ssize_t r = read(0, line + n, 1);
    if (r <= 0) break;
    if (line[n] == '\n') break;
    n++;
  }
  line[n] = 0;
  if (strncmp(line, "token ", 6) != 0) return -EINVAL;
  return mc_channel__set_token_hex(ch, line + 6);
}

int bench_stdin_done(void) {
  struct pollfd p = { .fd = 0, .events = POLLIN };
  if (poll(&p, 1, 0) <= 0) return 0;
  char buf[64];
  ssize_t n = read(0, buf, sizeof buf);
  return n <= 0 || memmem(buf, (size_t)n, "stop", 4) != NULL;
}

double bench_cpu_seconds(void) {
  struct rusage u;
  getrusage(RUSAGE_SELF, &u);
  return (double)u.ru_utime.tv_sec + (double)u.ru_utime.tv_usec / 1e6 + (double)u.ru_stime.tv_sec + (double)u.ru_stime.tv_usec / 1e6;
}

void bench_hex(const unsigned char *b, size_t n, char *out) {
  static const char d[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) out[2 * i] = d[b[i] >> 4], out[2 * i + 1] = d[b[i] & 15];
  out[2 * n] = 0;
}

static const char *USAGE_COMMON =
  "--transport sfmc|norm|tcp --group ADDR --port N --sender ADDR --local ADDR --if NAME --geometry FILE [--ws FILE] [--timeout S]";

int bench_parse(int argc, char **argv, struct bench_args *a, int sender) {
  memset(a, 0, sizeof *a);
  a->transport = "sfmc";
  a->hosts = 1, a->node = 1, a->timeout_s = 300, a->mtu = 1500;
  a->rate = 125000000;
  a->norm_backoff = -1;
  const char *geometry = NULL, *ws = NULL, *image = NULL;
  long port = 0;
  for (int i = 1; i < argc; i++) {
    const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    long n = 0;
    int num = !strcmp(o, "--port") || !strcmp(o, "--hosts") || !strcmp(o, "--node") || !strcmp(o, "--slow-us") ||
              !strcmp(o, "--timeout") || !strcmp(o, "--mtu") || !strcmp(o, "--rate") || !strcmp(o, "--demand");
    if (!strcmp(o, "--cc")) { a->cc = 1; continue; }
    if (!strcmp(o, "--norm-backoff") && v && sender) {
      char *end;
      a->norm_backoff = strtod(v, &end);
      if (*end || a->norm_backoff < 0 || a->norm_backoff > 100) return sf_err(0, "--norm-backoff %s: a factor from 0 to 100", v), -EINVAL;
      i++;
      continue;
    }
    if (!v) return sf_err(0, "%s needs a value; usage: %s %s", o, sender ? "mcpush" : "mcrecv", USAGE_COMMON), -EINVAL;
    if (num && sf_parse_long(v, 0, 1L << 40, &n) < 0) return sf_err(0, "%s %s: a number, please", o, v), -EINVAL;
    i++;
    struct in_addr *addr = !strcmp(o, "--group") ? &a->ch.group : !strcmp(o, "--sender") ? &a->ch.sender : !strcmp(o, "--local") ? &a->ch.local : NULL;
    if (addr) {
      if (mc_parse_addr(v, addr) < 0) return sf_err(0, "%s %s: an IPv4 address, please", o, v), -EINVAL;
    } else if (!strcmp(o, "--transport")) {
      if (strcmp(v, "sfmc") && strcmp(v, "norm") && strcmp(v, "tcp")) return sf_err(0, "--transport %s: sfmc, norm or tcp", v), -EINVAL;
      a->transport = v;
    } else if (!strcmp(o, "--if")) a->ifname = v;
    else if (!strcmp(o, "--geometry")) geometry = v;
    else if (!strcmp(o, "--ws")) ws = v;
    else if (!strcmp(o, "--image") && sender) image = v;
    else if (!strcmp(o, "--port") && n > 0 && n < 65536) port = n;
    else if (!strcmp(o, "--hosts") && sender && n >= 1 && n <= MC_MAX_RECEIVERS) a->hosts = n;
    else if (!strcmp(o, "--node") && !sender && n >= 1 && n < 65536) a->node = n;
    else if (!strcmp(o, "--rate") && sender && n >= 100000) a->rate = (uint64_t)n;
    else if (!strcmp(o, "--slow-us") && !sender) a->slow_us = n;
    else if (!strcmp(o, "--demand") && !sender) a->demand = n;
    else if (!strcmp(o, "--timeout") && n >= 1) a->timeout_s = n;
    else if (!strcmp(o, "--mtu") && n >= 576 && n <= 65535) a->mtu = n;
    else return sf_err(0, "%s %s: not an option of %s (or out of range); usage: %s", o, v, sender ? "mcpush" : "mcrecv", USAGE_COMMON), -EINVAL;
  }
  if (!geometry || !port || !a->ch.group.s_addr || !a->ch.sender.s_addr || !a->ch.local.s_addr || !a->ifname)
    return sf_err(0, "missing options; usage: %s %s%s", sender ? "mcpush" : "mcrecv", USAGE_COMMON, sender ? " --image FILE --hosts N" : " --node N"), -EINVAL;
  if (sender && !image) return sf_err(0, "mcpush needs --image FILE"), -EINVAL;
  if ((ntohl(a->ch.group.s_addr) >> 24) != 239) return sf_err(0, "--group: an administratively scoped group (239.0.0.0/8), please"), -EINVAL;
  a->ch.port = (uint16_t)port;
  const char *why;
  int err = bench_geometry__load(&a->geo, geometry, &why);
  if (err < 0) return sf_err(err, "geometry %s %s", geometry, why), err;
  if ((err = bench_ws__load(ws, &a->ws, &a->n_ws)) < 0) return sf_err(err, "working set %s", ws), err;
  if ((err = bench_order(&a->geo.g, a->ws, a->n_ws, &a->order, &a->n_order)) < 0) return sf_err(err, "push order"), err;
  if (image) {
    uint64_t size;
    if ((err = bench_map(image, &a->image, &size)) < 0) return sf_err(err, "image %s", image), err;
    a->geo_size = size;
    if (size != a->geo.g.ram_size) return sf_err(0, "image %s: %llu bytes, the geometry says %llu", image, (unsigned long long)size, (unsigned long long)a->geo.g.ram_size), -EINVAL;
  }
  if ((err = bench_read_token(&a->ch)) < 0) return sf_err(0, "stdin: the first line must be \"token <32 to 128 hex digits>\""), err;
  return 0;
}

void bench_args__free(struct bench_args *a) {
  uint64_t size = a->geo_size;
  bench_geometry__free(&a->geo);
  free(a->ws), free(a->order);
  if (a->image) munmap((void *)a->image, size);
  memset(a, 0, sizeof *a);
}
