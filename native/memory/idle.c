/* The busy-poll gate (idle.h). */
#define _GNU_SOURCE
#include "memory/idle.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int idle__cpu_free(void) {
  static long cpus;
  if (!cpus) cpus = sysconf(_SC_NPROCESSORS_ONLN);
  char buf[128];
  int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  double a, b, c;
  long running, total;
  if (sscanf(buf, "%lf %lf %lf %ld/%ld", &a, &b, &c, &running, &total) != 5) return 0;
  return running < cpus;
}
