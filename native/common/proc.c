/* Process identity (PID + start time) and pidfds: see proc.h. */
#define _GNU_SOURCE
#include "proc.h"
#include "sf.h"

#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int sf_proc_start_time(pid_t pid, unsigned long long *start) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? -ESRCH : -errno;
  ssize_t n;
  do n = read(fd, buf, sizeof buf - 1); while (n < 0 && errno == EINTR);
  int err = n < 0 ? -errno : 0;
  close(fd);
  if (n <= 0) return err ? err : -ESRCH;
  buf[n] = 0;
  /* The command name (field 2) may hold spaces and parentheses: fields resume after the last ')'. */
  char *p = strrchr(buf, ')');
  if (!p || p[1] != ' ') return -EPROTO;
  p += 2;
  if (*p == 'Z' || *p == 'X') return -ESRCH;
  for (int field = 3; field < 22; field++) {
    p = strchr(p, ' ');
    if (!p) return -EPROTO;
    p++;
  }
  char *end;
  errno = 0;
  unsigned long long v = strtoull(p, &end, 10);
  if (errno || (*end != ' ' && *end != '\n' && *end)) return -EPROTO;
  *start = v;
  return 0;
}

int sf_proc_parse_identity(const char *s, pid_t *pid, unsigned long long *start) {
  const char *colon = s ? strchr(s, ':') : NULL;
  if (!colon || colon == s || colon - s > 20) return -EINVAL;
  char num[24];
  memcpy(num, s, (size_t)(colon - s));
  num[colon - s] = 0;
  long p;
  if (sf_parse_long(num, 1, INT_MAX, &p) < 0) return -EINVAL;
  const char *t = colon + 1;
  if (*t < '0' || *t > '9') return -EINVAL;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(t, &end, 10);
  if (errno || *end) return -EINVAL;
  *pid = (pid_t)p;
  *start = v;
  return 0;
}

int sf_proc_open_identity(pid_t pid, unsigned long long start) {
  int fd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (fd < 0) return -errno;
  unsigned long long now;
  int rc = sf_proc_start_time(pid, &now);
  if (rc == 0 && now != start) rc = -ESRCH;
  if (rc < 0) {
    close(fd);
    return rc;
  }
  return fd;
}
