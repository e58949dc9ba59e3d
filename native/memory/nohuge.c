/*
 * libnohuge.so, preloaded into QEMU (LD_PRELOAD): keeps transparent huge pages off the mapping of
 * one file, SF_NOHUGE_PATH (the memtap's `ram`), and leaves every other madvise alone.
 *
 * Why: QEMU 7.2 marks all guest RAM MADV_HUGEPAGE and has no option against it. On kernels from
 * 5.18 a fault in a VM_HUGEPAGE file mapping makes the page cache read a whole 2 MiB block, even
 * with readahead off, so every guest fault would become a 2 MiB fetch. Turning the advice into
 * MADV_NOHUGEPAGE for that range keeps a fault at the 4 KiB page it touched.
 *
 * Not built with the sanitizers: it goes into a QEMU that is not.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

typedef int madvise_fn(void *, size_t, int);

/* Whether addr lies in a mapping of the file `want` (compared after resolving both paths). */
static int maps_file(const void *addr, const char *want) {
  char real_want[PATH_MAX];
  if (!realpath(want, real_want)) snprintf(real_want, sizeof real_want, "%s", want);
  FILE *f = fopen("/proc/self/maps", "re");
  if (!f) return 0;
  char line[PATH_MAX + 128];
  int found = 0;
  while (!found && fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    int at = 0;
    if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &lo, &hi, &at) < 2 || !at) continue;
    if ((uintptr_t)addr < lo || (uintptr_t)addr >= hi) continue;
    char *path = line + at;
    path[strcspn(path, "\n")] = 0;
    found = !strcmp(path, real_want) || !strcmp(path, want);
    break;
  }
  fclose(f);
  return found;
}

int madvise(void *addr, size_t len, int advice) {
  static madvise_fn *real;
  if (!real) real = (madvise_fn *)dlsym(RTLD_NEXT, "madvise");
  const char *want = getenv("SF_NOHUGE_PATH");
  if (advice == MADV_HUGEPAGE && want && *want && maps_file(addr, want)) advice = MADV_NOHUGEPAGE;
  return real(addr, len, advice);
}
