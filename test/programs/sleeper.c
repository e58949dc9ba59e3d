/* Every rank prints that it is ready, then sleeps until a signal; a caught SIGINT/SIGTERM is reported
 * on stdout (so a test can see that the signal reached the rank), then the rank exits with 128+N. */
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t got;
static void on_signal(int s) { got = s; }

int main(int argc, char **argv) {
  int rank;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  printf("sleeper rank %d ready\n", rank);
  fflush(stdout);
  while (!got) pause();
  printf("sleeper rank %d got signal %d\n", rank, (int)got);
  fflush(stdout);
  _exit(128 + got);
}
