/*
 * reaper: runs a program once its owner has ended, however it ended, SIGKILL included.
 *
 *   reaper --owner PID:START -- PROGRAM [ARG]...
 *
 * The engine starts one per ticket that is not kept, with PROGRAM removing what the ticket's
 * state record names: the network and record that no process of the cluster can take along when
 * the owner is killed (its clones and processes die by their own lifelines at the same moment).
 * After a normal end the engine's teardown kills the reaper first, so PROGRAM never runs then.
 *
 * It ignores SIGHUP, SIGINT and SIGTERM (see main). The reaper opens a pidfd on the owner (PID plus start time, so a successor reusing the PID is
 * never taken for it), waits until it is readable, and execs PROGRAM in a session of its own with
 * stdio on /dev/null. An owner that is gone already runs PROGRAM at once. Exit codes of its own:
 * 125 bad usage or no resources, 126/127 PROGRAM cannot run or is not found.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "common/parent.h"
#include "common/proc.h"
#include "common/sf.h"

enum { EXIT_UNUSABLE = 125, EXIT_CANNOT_RUN = 126, EXIT_NOT_FOUND = 127 };

struct reaper {
  pid_t owner_pid;
  unsigned long long owner_start;
  char **prog;
  int owner; /* pidfd, or -ESRCH when the owner is gone already */
};

static int reaper__parse(struct reaper *r, int argc, char **argv) {
  if (argc < 5 || strcmp(argv[1], "--owner") != 0 || strcmp(argv[3], "--") != 0) {
    sf_err(0, "usage: reaper --owner PID:START -- PROGRAM [ARG]...");
    return -EINVAL;
  }
  if (sf_proc_parse_identity(argv[2], &r->owner_pid, &r->owner_start) < 0) {
    sf_err(0, "bad --owner %s: give PID:START (START is field 22 of /proc/PID/stat)", argv[2]);
    return -EINVAL;
  }
  r->prog = &argv[4];
  return 0;
}

/* Blocks until the owner has ended (at once when it is gone already). */
static int reaper__wait(struct reaper *r) {
  r->owner = sf_proc_open_identity(r->owner_pid, r->owner_start);
  if (r->owner == -ESRCH) return 0;
  if (r->owner < 0) return sf_err(r->owner, "pidfd of the owner %d", (int)r->owner_pid), r->owner;
  struct pollfd pf = {.fd = r->owner, .events = POLLIN};
  while (poll(&pf, 1, -1) < 0)
    if (errno != EINTR) return sf_err(-errno, "poll"), -errno;
  close(r->owner);
  return 0;
}

/* Becomes PROGRAM, detached from whatever terminal or group the owner had. */
static int reaper__exec(struct reaper *r) {
  setsid();
  sf_stdio_to_null();
  execvp(r->prog[0], r->prog);
  return errno == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN;
}

int main(int argc, char **argv) {
  sf_prog("reaper");
  /*
   * The owner's terminal may hang up or be interrupted with it, and a batch system ending a job
   * step SIGTERMs every process of the step at once (Slurm's slurmstepd does, the agent of a job
   * over hosts included): the reaper must go on, since its owner may be killed next. The engine
   * removes a reaper with SIGKILL. The dispositions stay ignored in PROGRAM, which must finish too.
   */
  signal(SIGHUP, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  signal(SIGTERM, SIG_IGN);
  struct reaper r = {.owner = -1};
  if (reaper__parse(&r, argc, argv) < 0) return EXIT_UNUSABLE;
  if (reaper__wait(&r) < 0) return EXIT_UNUSABLE;
  return reaper__exec(&r);
}
