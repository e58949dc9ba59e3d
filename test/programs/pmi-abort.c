/* PMI server test: the last rank calls MPI_Abort with the code in argv[1] (default 7); the others wait. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int rank, size;
  MPI_Init(&argc, &argv);
  int code = argc > 1 ? atoi(argv[1]) : 7;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (rank == size - 1) {
    fprintf(stderr, "pmi-abort rank %d aborting with %d\n", rank, code);
    MPI_Abort(MPI_COMM_WORLD, code);
  }
  sleep(30); /* the launcher kills us after the abort */
  MPI_Finalize();
  return 0;
}
