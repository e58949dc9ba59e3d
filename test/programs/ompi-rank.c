/* One line per rank: its rank, the world size, its app number (MPMD) and the sum over all ranks
 * of rank+1 from MPI_Allreduce (n(n+1)/2 when the world is right). */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv) {
  int rank, size, flag = 0, mine, sum = 0, *appnum = NULL;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, &appnum, &flag);
  mine = rank + 1;
  MPI_Allreduce(&mine, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  printf("rank %d of %d app %d sum %d prog %s\n", rank, size, flag ? *appnum : -1, sum, argc > 1 ? argv[1] : "c");
  MPI_Finalize();
  return 0;
}
