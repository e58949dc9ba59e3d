/* Copies stdin to stdout byte for byte, then prints (to stderr) the rank and the byte count. */
#include <mpi.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int rank;
  char buf[65536];
  long total = 0;
  ssize_t n;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  while ((n = read(0, buf, sizeof buf)) > 0) {
    for (ssize_t off = 0; off < n;) {
      ssize_t w = write(1, buf + off, n - off);
      if (w <= 0) return 1;
      off += w;
    }
    total += n;
  }
  fprintf(stderr, "stdin rank %d bytes %ld\n", rank, total);
  MPI_Finalize();
  return 0;
}
