/*
 * The chaos harness's MPI job (benchmarks/chaos/): every rank says it is ready once MPI_Init is
 * done, then the ranks do LAPS allreduces, MS milliseconds apart, so that a kill lands while they
 * talk to each other; rank 0 prints the total at the end.
 *
 *   chaos LAPS MS [abort RANK LAP CODE | exit RANK LAP CODE]
 *
 * "abort" makes RANK call MPI_Abort(CODE) at lap LAP; "exit" makes it exit(CODE) there, without
 * MPI_Finalize: the two ways a job fails from inside that the exit-status table names.
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int rank, size;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int laps = argc > 1 ? atoi(argv[1]) : 10;
  int ms = argc > 2 ? atoi(argv[2]) : 100;
  const char *fail = argc > 6 ? argv[3] : "";
  int fail_rank = argc > 6 ? atoi(argv[4]) : -1;
  int fail_lap = argc > 6 ? atoi(argv[5]) : -1;
  int fail_code = argc > 6 ? atoi(argv[6]) : 0;
  printf("chaos rank %d of %d ready\n", rank, size);
  fflush(stdout);
  int total = 0;
  for (int lap = 0; lap < laps; lap++) {
    if (rank == fail_rank && lap == fail_lap) {
      if (strcmp(fail, "abort") == 0) MPI_Abort(MPI_COMM_WORLD, fail_code);
      if (strcmp(fail, "exit") == 0) exit(fail_code);
    }
    usleep((useconds_t)ms * 1000);
    int one = 1, sum = 0;
    MPI_Allreduce(&one, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    total += sum;
  }
  if (rank == 0) printf("chaos done: %d laps of %d ranks, total %d\n", laps, size, total);
  MPI_Finalize();
  return 0;
}
