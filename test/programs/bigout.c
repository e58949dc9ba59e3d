/* Writes MB megabytes (argv[1], default 1) to stdout as numbered 100-byte lines tagged with the rank,
 * so a reader can check that no line was lost, duplicated or mixed with another rank's. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
  int rank;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  long mb = argc > 1 ? atol(argv[1]) : 1;
  long lines = mb * 1024 * 1024 / 100;
  char line[101];
  for (long i = 0; i < lines; i++) {
    int n = snprintf(line, sizeof line, "r%d l%ld ", rank, i);
    memset(line + n, 'x', 99 - n);
    line[99] = '\n';
    fwrite(line, 1, 100, stdout);
  }
  fflush(stdout);
  MPI_Finalize();
  return 0;
}
