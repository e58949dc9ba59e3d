/* PMI server test: prints rank, size, appnum and universe size, as the PMI server reported them. */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv) {
  int rank, size, flag, *appnum, *universe;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, &appnum, &flag);
  int app = flag ? *appnum : -1;
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_UNIVERSE_SIZE, &universe, &flag);
  int uni = flag ? *universe : -1;
  printf("pmi-hello rank %d of %d appnum %d universe %d\n", rank, size, app, uni);
  MPI_Finalize();
  return 0;
}
