/* Isolation probe for ranks (test/system/isolation.test.ts): every rank creates /dev/shm/TAG-rRANK,
 * waits for all, then prints its hostname, its IPC namespace and which TAG-* files its /dev/shm
 * holds: "rank R host H ipc ipc:[N] sees TAG-r0,TAG-r1". The files are left on purpose: in a clone's
 * private /dev/shm they go with the clone; in the host's they would stay, and the test sees them. */
#include <dirent.h>
#include <fcntl.h>
#include <mpi.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  int rank;
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const char *tag = argc > 1 ? argv[1] : "sfshmprobe";
  char path[256], host[256] = "", ipc[64] = "";
  snprintf(path, sizeof path, "/dev/shm/%s-r%d", tag, rank);
  int fd = open(path, O_CREAT | O_WRONLY, 0644);
  if (fd >= 0) close(fd);
  gethostname(host, sizeof host - 1);
  ssize_t n = readlink("/proc/self/ns/ipc", ipc, sizeof ipc - 1);
  if (n > 0) ipc[n] = 0;
  MPI_Barrier(MPI_COMM_WORLD);
  char seen[4096] = "";
  DIR *d = opendir("/dev/shm");
  for (struct dirent *e; d && (e = readdir(d));) {
    if (strncmp(e->d_name, tag, strlen(tag)) != 0 || e->d_name[strlen(tag)] != '-') continue;
    if (seen[0]) strncat(seen, ",", sizeof seen - strlen(seen) - 1);
    strncat(seen, e->d_name, sizeof seen - strlen(seen) - 1);
  }
  if (d) closedir(d);
  printf("rank %d host %s ipc %s sees %s\n", rank, host, ipc, seen);
  fflush(stdout);
  MPI_Barrier(MPI_COMM_WORLD);
  MPI_Finalize();
  return 0;
}
