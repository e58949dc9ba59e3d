/*
 * The shared working directory's test program. Plain C, no MPI: one guest image and one template
 * serve both sfmpirun's ranks (a non-MPI program; its rank is PMI_RANK) and snowflock run's
 * commands. Files are relative to the working directory; nothing is synced: close must be enough.
 *
 *   workdir write LINES  rank R writes rank<R>.txt, LINES lines "rank R line I xxx...\n", and
 *                        rank 0 then appends "rank 0 step S\n" to log.txt, S = 1..10, opening it
 *                        each time with O_APPEND (as `>>` does); prints "rank R wrote N bytes"
 *   workdir read FILE    reads FILE to its end; prints "read N bytes fnv1a64 HEX"
 *   workdir busy         prints "busy", then writes and reads busy<R>.bin for ever
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int rank(void) {
  const char *r = getenv("PMI_RANK");
  return r ? atoi(r) : 0;
}

static void die(const char *what) {
  perror(what);
  exit(1);
}

static void write_all(int fd, const char *buf, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, buf, n);
    if (w < 0) die("write");
    buf += w;
    n -= (size_t)w;
  }
}

static int do_write(long lines) {
  int r = rank();
  char name[64], line[128];
  snprintf(name, sizeof name, "rank%d.txt", r);
  int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) die(name);
  long bytes = 0;
  for (long i = 0; i < lines; i++) {
    int n = snprintf(line, sizeof line, "rank %d line %ld %s\n", r, i, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    write_all(fd, line, (size_t)n);
    bytes += n;
  }
  if (close(fd) != 0) die("close");
  if (r == 0) {
    for (int s = 1; s <= 10; s++) {
      int lf = open("log.txt", O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (lf < 0) die("log.txt");
      int n = snprintf(line, sizeof line, "rank 0 step %d\n", s);
      write_all(lf, line, (size_t)n);
      if (close(lf) != 0) die("close log.txt");
    }
  }
  printf("rank %d wrote %ld bytes\n", r, bytes);
  return 0;
}

static int do_read(const char *file) {
  int fd = open(file, O_RDONLY);
  if (fd < 0) die(file);
  static char buf[1 << 20];
  uint64_t h = 0xcbf29ce484222325ULL, total = 0;
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) die("read");
    if (n == 0) break;
    for (ssize_t i = 0; i < n; i++) h = (h ^ (unsigned char)buf[i]) * 0x100000001b3ULL;
    total += (uint64_t)n;
  }
  close(fd);
  printf("read %llu bytes fnv1a64 %016llx\n", (unsigned long long)total, (unsigned long long)h);
  return 0;
}

static int do_busy(void) {
  char name[64];
  static char buf[64 << 10];
  snprintf(name, sizeof name, "busy%d.bin", rank());
  printf("busy\n");
  fflush(stdout);
  for (;;) {
    int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die(name);
    for (int i = 0; i < 16; i++) write_all(fd, buf, sizeof buf);
    if (close(fd) != 0) die("close");
    fd = open(name, O_RDONLY);
    if (fd < 0) die(name);
    while (read(fd, buf, sizeof buf) > 0) {
    }
    close(fd);
  }
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "write") == 0) return do_write(atol(argv[2]));
  if (argc == 3 && strcmp(argv[1], "read") == 0) return do_read(argv[2]);
  if (argc == 2 && strcmp(argv[1], "busy") == 0) return do_busy();
  fprintf(stderr, "usage: workdir write LINES | read FILE | busy\n");
  return 2;
}
