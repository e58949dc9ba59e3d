/*
 * The native core's one error idiom, and checked allocation.
 *
 * Errors: a function that can fail returns an int: 0 (or a count) on success, a negative errno on
 * failure (-ENOMEM, -EINVAL, -errno of the failed call). It never prints unless it is the place
 * that decides what the user sees; that place calls sf_err() once, with what failed and why.
 * Programs call sf_prog() first so that every line starts with their name ("holder: ...").
 *
 * Allocation: sf_malloc and friends return NULL with errno = ENOMEM (never abort: the guest agent
 * is PID 1, and an abort there panics the guest); every caller checks and returns -ENOMEM.
 * sf_array() also refuses n * size overflowing.
 *
 * Names follow object__method where a file holds an object (kvmtool's convention): memtap__open,
 * frame__encode; plain helpers are sf_<what>.
 */
#ifndef SF_H
#define SF_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Names the program in every message (basename of argv[0] or a fixed name). */
void sf_prog(const char *name);
const char *sf_progname(void);

/* One line on stderr: "prog: <message>" and, when err < 0, ": <strerror(-err)>". */
void sf_err(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* sf_err, then exit(status). Only main() and fatal setup paths of helper programs use it. */
void sf_die(int status, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4), noreturn));

void *sf_malloc(size_t size);
void *sf_calloc(size_t n, size_t size);
void *sf_array(size_t n, size_t size); /* malloc(n * size), NULL on overflow */
void *sf_realloc(void *p, size_t size);
char *sf_strdup(const char *s);
char *sf_strndup(const char *s, size_t n);

/* write() of the whole buffer, retrying EINTR; 0 or -errno. */
int sf_write_all(int fd, const void *buf, size_t len);
/* read() of exactly len bytes, retrying EINTR; len, 0 at EOF before any byte, or -errno (-EPIPE on a short read). */
ssize_t sf_read_full(int fd, void *buf, size_t len);

/* Parses a whole decimal number within [min, max]; 0 or -EINVAL/-ERANGE. */
int sf_parse_long(const char *s, long min, long max, long *out);

#define SF_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
