/* Uneven work between collectives: odd ranks compute twice as long as even ones each round, then
 * all meet in MPI_Allreduce. A waiting rank that spins takes the core a working rank needs when the
 * host has fewer cores than ranks; one that yields gives it away. Rank 0 prints the seconds of the
 * timed part (between two barriers, startup excluded):  busy ROUNDS WORK -> "busy SECONDS".   */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
  int rank, size;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int rounds = argc > 1 ? atoi(argv[1]) : 100;
  long work = argc > 2 ? atol(argv[2]) : 1000000;
  volatile double x = 0;
  double sum = 0;
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = MPI_Wtime();
  for (int r = 0; r < rounds; r++) {
    long n = work * (1 + rank % 2);
    for (long i = 0; i < n; i++) x += (double)i * 0.5;
    double mine = x;
    MPI_Allreduce(&mine, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) printf("busy %.3f\n", MPI_Wtime() - t0);
  MPI_Finalize();
  return sum == 0 && x == 0 ? 1 : 0;
}
