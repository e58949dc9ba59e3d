/* The ring of ring.c, then rank 0 keeps working (sleeps argv[1] ms, default 0) before MPI_Finalize,
 * as a rank that post-processes results while the others have finished. Every rank prints one line
 * after MPI_Finalize, so a test can see that every rank came through it. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
  int rank, size, token = 0;
  long late_ms = argc > 1 ? atol(argv[1]) : 0;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  for (int lap = 0; lap < 2; lap++) {
    if (rank == 0) {
      token++;
      MPI_Send(&token, 1, MPI_INT, (rank + 1) % size, 0, MPI_COMM_WORLD);
      MPI_Recv(&token, 1, MPI_INT, size - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else {
      MPI_Recv(&token, 1, MPI_INT, rank - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      token++;
      MPI_Send(&token, 1, MPI_INT, (rank + 1) % size, 0, MPI_COMM_WORLD);
    }
  }
  if (rank == 0) {
    printf("ring token %d after 2 laps of %d ranks\n", token, size);
    fflush(stdout);
    struct timespec ts = { late_ms / 1000, (late_ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
  }
  MPI_Finalize();
  printf("rank %d finalized\n", rank);
  return 0;
}
