/*
 * tsc-khz: prints the rate of this host's time stamp counter, in kHz.
 *
 * A TCG guest reads the host's TSC (QEMU's rdtsc is the host's, plus an offset), so a guest
 * kernel told this rate (tsc_early_khz=) keeps time on the TSC, tickless, instead of on jiffies
 * and a periodic tick that costs an emulated interrupt 250 times a second (issue 13). Measured
 * against CLOCK_MONOTONIC_RAW over 25 ms, the best of three tries (the shortest read window): about
 * one part in a million here.
 * Exit 1 with a line on stderr where there is no usable TSC (not x86-64, or no constant_tsc).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/sf.h"

#if defined(__x86_64__)
#include <x86intrin.h>

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC_RAW, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* One reading: the TSC and the clock, taken as close together as the window allows. */
static void sample(unsigned long long *tsc, long long *ns, long long *window) {
  long long a = now_ns();
  *tsc = __rdtsc();
  long long b = now_ns();
  *ns = a + (b - a) / 2;
  *window = b - a;
}

static int constant_tsc(void) {
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return 0;
  char line[8192];
  int found = 0;
  while (!found && fgets(line, sizeof line, f))
    if (strncmp(line, "flags", 5) == 0) found = strstr(line, " constant_tsc") != NULL ? 1 : -1;
  fclose(f);
  return found == 1;
}

int main(void) {
  sf_prog("tsc-khz");
  if (!constant_tsc()) {
    sf_err(0, "this CPU has no constant_tsc: its TSC rate is no clock");
    return 1;
  }
  double best = 0;
  long long best_window = -1;
  for (int k = 0; k < 3; k++) {
    unsigned long long t0, t1;
    long long n0, n1, w0, w1;
    sample(&t0, &n0, &w0);
    struct timespec pause = {0, 25 * 1000 * 1000};
    nanosleep(&pause, NULL);
    sample(&t1, &n1, &w1);
    long long w = w0 + w1;
    if (best_window < 0 || w < best_window) best_window = w, best = (double)(t1 - t0) * 1e6 / (double)(n1 - n0);
  }
  printf("%.0f\n", best);
  return 0;
}
#else
int main(void) {
  sf_prog("tsc-khz");
  sf_err(0, "no TSC on this architecture");
  return 1;
}
#endif
