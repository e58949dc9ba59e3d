/* Rank 0 prints the variables named in argv (NAME=value or NAME unset), one per line. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  int rank;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  for (int i = 1; i < argc; i++) {
    const char *v = getenv(argv[i]);
    if (v) printf("rank %d %s=%s\n", rank, argv[i], v);
    else printf("rank %d %s unset\n", rank, argv[i]);
  }
  MPI_Finalize();
  return 0;
}
