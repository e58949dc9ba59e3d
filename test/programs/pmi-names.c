/* PMI server test: rank 0 publishes a name; after a barrier every rank looks it up; rank 0 unpublishes. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
  int rank;
  char port[MPI_MAX_PORT_NAME];
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if (rank == 0) {
    int rc = MPI_Publish_name("pmi-test-service", MPI_INFO_NULL, "tag#0$port#4242$");
    printf("pmi-names publish rc %d\n", rc);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  memset(port, 0, sizeof port);
  int rc = MPI_Lookup_name("pmi-test-service", MPI_INFO_NULL, port);
  printf("pmi-names rank %d lookup rc %d port %s\n", rank, rc, rc == MPI_SUCCESS ? port : "-");
  MPI_Barrier(MPI_COMM_WORLD);
  if (rank == 0) {
    rc = MPI_Unpublish_name("pmi-test-service", MPI_INFO_NULL, "tag#0$port#4242$");
    printf("pmi-names unpublish rc %d\n", rc);
    rc = MPI_Lookup_name("pmi-test-service", MPI_INFO_NULL, port);
    printf("pmi-names lookup after unpublish %s\n", rc == MPI_SUCCESS ? "found" : "not found");
  }
  MPI_Finalize();
  return 0;
}
