/* After MPI_Init every rank says so; the last rank then waits for a signal (a test kills it
 * there, between fences) while the others go on into MPI_Finalize, whose fence waits for it.
 * `ompi-stall kill`: the last rank SIGKILLs itself there instead (for runs through sfmpirun). */
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int rank, size;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  printf("rank %d initialized\n", rank);
  fflush(stdout);
  if (rank == size - 1) {
    if (argc > 1 && !strcmp(argv[1], "kill")) raise(SIGKILL);
    pause();
  }
  MPI_Finalize();
  printf("rank %d finalized\n", rank);
  return 0;
}
