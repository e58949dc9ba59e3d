/* Every rank is wired up (a first barrier), then the last rank exits with code 3 while the others
 * wait in a second barrier it never reaches: they see nothing wrong by themselves (no MPI error),
 * so only the launcher can end the job. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  int rank, size;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == size - 1) {
    fprintf(stderr, "rank %d exiting with 3\n", rank);
    exit(3);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  MPI_Finalize();
  return 0;
}
