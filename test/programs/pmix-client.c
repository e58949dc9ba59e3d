/* A bare PMIx client (libpmix, no MPI), for what MPI programs cannot be made to do on cue:
 *   pmix-client init    PMIx_Init, print "init ok rank R" or "init failed: <status>", finalize
 *   pmix-client sleep   PMIx_Init, print "init ok rank R", then wait for a signal before any fence
 *   pmix-client die     PMIx_Init, print "init ok rank R", then SIGKILL itself before any fence
 *   pmix-client exit    PMIx_Init, print "init ok rank R", then exit 0 without finalizing
 *   pmix-client fence   PMIx_Init, one collecting PMIx_Fence over the job, finalize
 * Built with gcc and pkg-config pmix (not an MPI compiler), by test/system/pmix-harness.ts. */
#include <pmix.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
  const char *mode = argc > 1 ? argv[1] : "init";
  pmix_proc_t me, all;
  pmix_status_t rc = PMIx_Init(&me, NULL, 0);
  if (rc != PMIX_SUCCESS) {
    printf("init failed: %s\n", PMIx_Error_string(rc));
    return 1;
  }
  printf("init ok rank %u\n", me.rank);
  fflush(stdout);
  if (!strcmp(mode, "sleep")) pause();
  if (!strcmp(mode, "die")) raise(SIGKILL);
  if (!strcmp(mode, "exit")) _exit(0);
  if (!strcmp(mode, "fence")) {
    bool yes = true;
    pmix_info_t info;
    PMIX_INFO_LOAD(&info, PMIX_COLLECT_DATA, &yes, PMIX_BOOL);
    PMIX_PROC_LOAD(&all, me.nspace, PMIX_RANK_WILDCARD);
    rc = PMIx_Fence(&all, 1, &info, 1);
    printf("fence %s\n", rc == PMIX_SUCCESS ? "ok" : PMIx_Error_string(rc));
    fflush(stdout);
  }
  PMIx_Finalize(NULL, 0);
  return rc == PMIX_SUCCESS ? 0 : 1;
}
