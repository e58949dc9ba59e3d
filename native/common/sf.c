/* The error idiom and checked allocation of sf.h. */
#define _GNU_SOURCE
#include "sf.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *prog = "snowflock";

void sf_prog(const char *name) {
  const char *slash = strrchr(name, '/');
  prog = slash ? slash + 1 : name;
}

const char *sf_progname(void) { return prog; }

/* Appends to a line buffer, never past its end (the last byte is kept for the newline). */
static void append(char *line, size_t cap, size_t *len, const char *fmt, ...) {
  if (*len >= cap - 1) return;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + *len, cap - 1 - *len, fmt, ap);
  va_end(ap);
  if (m > 0) *len = *len + (size_t)m > cap - 2 ? cap - 2 : *len + (size_t)m;
}

static void verr(int err, const char *fmt, va_list ap) {
  char line[1024];
  size_t len = 0;
  append(line, sizeof line, &len, "%s: ", prog);
  int m = vsnprintf(line + len, sizeof line - 1 - len, fmt, ap);
  if (m > 0) len = len + (size_t)m > sizeof line - 2 ? sizeof line - 2 : len + (size_t)m;
  if (err < 0) append(line, sizeof line, &len, ": %s", strerror(-err));
  line[len++] = '\n';
  /* One write: lines of concurrent processes never mix. */
  (void)sf_write_all(STDERR_FILENO, line, len);
}

void sf_err(int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  verr(err, fmt, ap);
  va_end(ap);
}

void sf_die(int status, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  verr(err, fmt, ap);
  va_end(ap);
  exit(status);
}

void *sf_malloc(size_t size) {
  void *p = malloc(size ? size : 1);
  if (!p) errno = ENOMEM;
  return p;
}

void *sf_calloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (!p) errno = ENOMEM;
  return p;
}

void *sf_array(size_t n, size_t size) {
  if (size && n > SIZE_MAX / size) {
    errno = ENOMEM;
    return NULL;
  }
  return sf_malloc(n * size);
}

void *sf_realloc(void *p, size_t size) {
  void *q = realloc(p, size ? size : 1);
  if (!q) errno = ENOMEM;
  return q;
}

char *sf_strdup(const char *s) {
  char *p = strdup(s);
  if (!p) errno = ENOMEM;
  return p;
}

char *sf_strndup(const char *s, size_t n) {
  char *p = strndup(s, n);
  if (!p) errno = ENOMEM;
  return p;
}

int sf_write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

ssize_t sf_read_full(int fd, void *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd, (char *)buf + got, len - got);
    if (n < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    if (n == 0) return got == 0 ? 0 : -EPIPE;
    got += (size_t)n;
  }
  return (ssize_t)got;
}

int sf_parse_long(const char *s, long min, long max, long *out) {
  if (!s || !*s) return -EINVAL;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (*end) return -EINVAL;
  if (errno == ERANGE || v < min || v > max) return -ERANGE;
  *out = v;
  return 0;
}
