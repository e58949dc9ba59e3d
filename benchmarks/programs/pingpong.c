/*
 * The benchmarks' ping-pong, after NetPIPE: two ranks bounce a message of each size back and
 * forth; rank 0 prints one line per size, "pingpong BYTES USEC MIBS": the one-way time in
 * microseconds (half a round trip, best trial) and the bandwidth it gives.
 *
 *   pingpong [MAX_BYTES]   (default 4 MiB; sizes are powers of two from 1 byte)
 *
 * The best of many short trials, not the mean of a long one: on a shared host, ranks that poll
 * are descheduled at random, and the best trial is the one where both ran, which is what the
 * transport itself costs. A trial repeats the round trip for about 1 ms; trials go on for about
 * 150 ms per size (rank 0 decides, and tells rank 1 after each trial, outside the timing).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double round_trips(char *buf, int bytes, int reps, int rank) {
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = MPI_Wtime();
  for (int i = 0; i < reps; i++) {
    if (rank == 0) {
      MPI_Send(buf, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
      MPI_Recv(buf, bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else {
      MPI_Recv(buf, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      MPI_Send(buf, bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
    }
  }
  return MPI_Wtime() - t0;
}

int main(int argc, char **argv) {
  int rank, size;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  long max = argc > 1 ? atol(argv[1]) : 4L << 20;
  if (size != 2 || max < 1) {
    if (rank == 0) fprintf(stderr, "pingpong: run exactly 2 ranks; MAX_BYTES must be positive\n");
    MPI_Abort(MPI_COMM_WORLD, 2);
  }
  char *buf = malloc((size_t)max);
  if (!buf) MPI_Abort(MPI_COMM_WORLD, 1);
  memset(buf, 1, (size_t)max);
  round_trips(buf, 1, 100, rank); /* warm-up: connections made, paths faulted in */
  for (long bytes = 1; bytes <= max; bytes *= 2) {
    /* Rank 0 picks the repetitions from the best of a few timed round trips, so both agree on it. */
    double once = 1e30;
    for (int k = 0; k < 5; k++) {
      double t = round_trips(buf, (int)bytes, 1, rank);
      if (t < once) once = t;
    }
    int reps = once > 0 ? (int)(0.001 / once) : 1000;
    if (reps < 1) reps = 1;
    if (reps > 10000) reps = 10000;
    MPI_Bcast(&reps, 1, MPI_INT, 0, MPI_COMM_WORLD);
    double best = 1e30, start = MPI_Wtime();
    for (int more = 1, trials = 0; more; trials++) {
      double t = round_trips(buf, (int)bytes, reps, rank) / reps / 2;
      if (t < best) best = t;
      more = trials < 1000 && MPI_Wtime() - start < 0.15;
      MPI_Bcast(&more, 1, MPI_INT, 0, MPI_COMM_WORLD);
    }
    if (rank == 0) printf("pingpong %ld %.3f %.1f\n", bytes, best * 1e6, bytes / best / (1 << 20));
  }
  free(buf);
  MPI_Finalize();
  return 0;
}
