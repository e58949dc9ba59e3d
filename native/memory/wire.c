/* The memory wire's hello: tokens, nonces and the two MACs (wire.h). */
#define _GNU_SOURCE
#include "memory/wire.h"

#include <ctype.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "common/sf.h"

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = tolower(c);
  return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int wire_token__parse(struct wire_token *t, const char *line) {
  if (strncmp(line, "token ", 6)) return -EINVAL;
  const char *h = line + 6;
  size_t n = strcspn(h, "\r\n");
  if (n % 2 || n / 2 < 16 || n / 2 > WIRE_TOKEN_MAX) return -EINVAL;
  for (size_t i = 0; i < n / 2; i++) {
    int a = hexval((unsigned char)h[2 * i]), b = hexval((unsigned char)h[2 * i + 1]);
    if (a < 0 || b < 0) return -EINVAL;
    t->b[i] = (unsigned char)(a << 4 | b);
  }
  t->len = n / 2;
  return 0;
}

int wire_token__read(struct wire_token *t, int fd) {
  char line[6 + 2 * WIRE_TOKEN_MAX + 2];
  size_t n = 0;
  for (;;) {
    char c;
    ssize_t r = read(fd, &c, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -errno;
    if (r == 0) return -ENODATA;
    if (c == '\n') break;
    if (n + 1 >= sizeof line) return -EINVAL;
    line[n++] = c;
  }
  line[n] = 0;
  int err = wire_token__parse(t, line);
  explicit_bzero(line, sizeof line);
  return err;
}

static void mac(const struct wire_token *t, const char *who, const unsigned char *n1, const unsigned char *n2,
                const unsigned char *id, const unsigned char *role, unsigned char out[SHA256_LEN]) {
  const void *parts[] = {who, n1, n2, id, role};
  size_t lens[] = {strlen(who), WIRE_NONCE, WIRE_NONCE, DESC_ID_LEN, 4};
  hmac_sha256(t->b, t->len, role ? 5 : 4, parts, lens, out);
}

void wire__hello_mac(const struct wire_token *t, const unsigned char *snonce, const unsigned char *cnonce,
                     const unsigned char *id, uint32_t role, unsigned char out[SHA256_LEN]) {
  unsigned char r[4];
  wire_put32(r, role);
  mac(t, "memtap", snonce, cnonce, id, r, out);
}

void wire__welcome_mac(const struct wire_token *t, const unsigned char *snonce, const unsigned char *cnonce,
                       const unsigned char *id, unsigned char out[SHA256_LEN]) {
  mac(t, "memserver", cnonce, snonce, id, NULL, out);
}

int sf_random(void *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = getrandom((char *)buf + got, len - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    got += (size_t)n;
  }
  return 0;
}

const char *wire_refusal__name(uint32_t reason) {
  switch (reason) {
  case REFUSE_AUTH: return "the hello did not prove the ticket's token";
  case REFUSE_TEMPLATE: return "the memserver serves another template (descriptor ids differ)";
  case REFUSE_VERSION: return "the memserver speaks another wire version";
  case REFUSE_BUSY: return "the memserver has too many clients";
  default: return "unknown reason";
  }
}
