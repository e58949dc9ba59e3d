/* Ranks 2.. finalize at once; ranks 0 and 1 go on exchanging messages for argv[1] ms (default 0)
 * before they finalize, as a job whose last phase involves only some ranks. A process manager that
 * releases the finalize barrier while 0 and 1 still talk would let the others exit under them.
 * Every rank prints one line after MPI_Finalize. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  int rank, size, x = 0;
  double tail_s = (argc > 1 ? atol(argv[1]) : 0) / 1000.0;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  /* Everyone talks to everyone once, so that every pair has a connection. */
  int sum = 0;
  MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  long rounds = 0;
  if (rank < 2 && size >= 2) {
    int peer = 1 - rank, go = 1;
    double t0 = MPI_Wtime();
    while (go) {
      if (rank == 0) {
        go = MPI_Wtime() - t0 < tail_s;
        MPI_Send(&go, 1, MPI_INT, peer, 0, MPI_COMM_WORLD);
        MPI_Recv(&x, 1, MPI_INT, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      } else {
        MPI_Recv(&go, 1, MPI_INT, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(&x, 1, MPI_INT, peer, 0, MPI_COMM_WORLD);
      }
      rounds++;
    }
  }
  if (rank == 0) printf("sum %d, tail of %ld exchanges\n", sum, rounds);
  fflush(stdout);
  MPI_Finalize();
  printf("rank %d finalized\n", rank);
  return 0;
}
