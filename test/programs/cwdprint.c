/* Every rank prints its working directory. */
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int rank;
  char cwd[4096];
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (!getcwd(cwd, sizeof cwd)) cwd[0] = 0;
  printf("cwd rank %d %s\n", rank, cwd);
  MPI_Finalize();
  return 0;
}
