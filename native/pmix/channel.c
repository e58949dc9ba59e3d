/* The launcher channel of channel.h. */
#define _GNU_SOURCE
#include "pmix/channel.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "common/sf.h"

static int in_fd = -1, out_fd = -1;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;
static int out_broken; /* under out_lock: a write failed, the launcher is gone */

int channel__open(void) {
  in_fd = fcntl(STDIN_FILENO, F_DUPFD_CLOEXEC, 3);
  out_fd = fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 3);
  if (in_fd < 0 || out_fd < 0) return -errno;
  int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (null < 0) return -errno;
  if (dup2(null, STDIN_FILENO) < 0 || dup2(STDERR_FILENO, STDOUT_FILENO) < 0) return -errno;
  close(null);
  return 0;
}

int channel__in_fd(void) { return in_fd; }

int channel__recv(struct pm_msg *msg, const char **why) {
  uint8_t hdr[4];
  ssize_t n = sf_read_full(in_fd, hdr, sizeof hdr);
  if (n == 0) return 1;
  if (n < 0) return (int)n;
  uint32_t len = (uint32_t)hdr[0] | (uint32_t)hdr[1] << 8 | (uint32_t)hdr[2] << 16 | (uint32_t)hdr[3] << 24;
  if (len > SF_PMIX_MAX_FRAME) {
    *why = "frame longer than the protocol allows";
    channel__error("protocol: %s (%u bytes)", *why, len);
    return -E2BIG; /* its body is not read: the stream cannot be followed after it */
  }
  uint8_t *body = sf_malloc(len);
  if (!body) return -ENOMEM;
  n = sf_read_full(in_fd, body, len);
  if (n != (ssize_t)len) {
    free(body);
    *why = "input ends inside a frame";
    return n < 0 ? (int)n : -EPIPE;
  }
  int rc = pm_decode(body, len, msg, why);
  if (rc == -EPROTO) channel__error("protocol: %s (message type %u)", *why, len ? body[0] : 0);
  free(body);
  return rc;
}

int channel__send(const struct pm_msg *msg) {
  uint8_t *frame;
  size_t len;
  int rc = pm_encode(msg, &frame, &len);
  if (rc) return rc;
  pthread_mutex_lock(&out_lock);
  if (out_broken) {
    rc = -EPIPE;
  } else if ((rc = sf_write_all(out_fd, frame, len))) {
    out_broken = 1;
  }
  pthread_mutex_unlock(&out_lock);
  free(frame);
  return rc;
}

int channel__send_rank(uint8_t type, uint32_t rank) {
  struct pm_msg m = {.type = type, .u.rank = {rank}};
  return channel__send(&m);
}

int channel__error(const char *fmt, ...) {
  char line[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  sf_err(0, "%s", line);
  struct pm_msg m = {.type = PM_ERROR, .u.error = {line}};
  return channel__send(&m);
}
