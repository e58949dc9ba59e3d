/* Asks the process manager for what snowflock's PMIx server refuses (publish, lookup, spawn) with
 * errors returned, not fatal, and prints what each call gave; then finalizes normally. */
#include <mpi.h>
#include <stdio.h>

static void report(const char *what, int rc) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (rc == MPI_SUCCESS) {
    printf("%s succeeded\n", what);
  } else {
    MPI_Error_string(rc, msg, &len);
    printf("%s failed: %s\n", what, msg);
  }
  fflush(stdout);
}

int main(int argc, char **argv) {
  char port[MPI_MAX_PORT_NAME] = "sfpx-port";
  MPI_Comm child;
  int errcode;
  MPI_Init(&argc, &argv);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
  report("publish", MPI_Publish_name("sfpx-service", MPI_INFO_NULL, port));
  report("lookup", MPI_Lookup_name("sfpx-service", MPI_INFO_NULL, port));
  report("spawn", MPI_Comm_spawn("/bin/true", MPI_ARGV_NULL, 1, MPI_INFO_NULL, 0, MPI_COMM_SELF, &child, &errcode));
  MPI_Finalize();
  printf("unsupported done\n");
  return 0;
}
