/*
 * enter: runs a program inside a netns clone.
 *
 *   enter [--start TICKS] [--gate FD] HOLDER_PID CWD -- PROGRAM [ARG]...
 *
 * Joins the IPC, UTS, network, PID and mount namespaces of the clone's holder (the clone's PID 1),
 * changes to CWD (after joining the mount namespace, which resets the working directory), and
 * forks, because a new PID namespace only applies to children. The child execs PROGRAM with our
 * environment; we forward signals to it and end the way it ended: same exit code, or the same
 * fatal signal raised on ourselves, so that our caller cannot tell us apart from the program.
 *
 * TICKS is the holder's start time (field 22 of /proc/HOLDER_PID/stat): a process that reused the
 * holder's PID is refused. 0 (unknown) skips the check, as it always has.
 *
 * --gate FD: wait until a byte can be read from FD before doing anything; its end without a byte
 * (the caller died) ends us with 125, and PROGRAM never runs. A launcher that starts many ranks
 * opens their gates together once all are started: a caller that waits for each start (Node's
 * spawn returns once the child has exec'd) would otherwise wait for CPU behind the ranks already
 * running (issue 13: 32 ranks took 27 ms each to start on a busy 2-core host).
 *
 * Exit codes of our own, as env(1) and shells use them: 125 the clone or CWD is unusable,
 * 126 PROGRAM is not executable, 127 PROGRAM is not found.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/parent.h"
#include "common/proc.h"
#include "common/sf.h"

/* Exit codes of our own (see above). */
enum { EXIT_UNUSABLE = 125, EXIT_CANNOT_RUN = 126, EXIT_NOT_FOUND = 127 };

#ifdef __SANITIZE_ADDRESS__
/*
 * The sanitizer build (make SANITIZE=1) runs without LeakSanitizer here: its check at exit runs a
 * tracer task as our child, but after joining the clone's PID namespace our children are born in
 * it, and /proc/self is the clone's procfs. The check then spins forever, and the clone's init
 * with it (a dying PID namespace waits for that task). ASan and UBSan stay on.
 */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "detect_leaks=0"; }
#endif

static volatile pid_t child;

static void forward(int sig) {
  if (child > 0) kill(child, sig);
}

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT, SIGWINCH, SIGALRM};

struct enter_options {
  pid_t holder;
  int check_start;
  unsigned long long start;
  int gate; /* -1: none */
  const char *cwd;
  char **prog;
};

static int enter_options__parse(struct enter_options *o, int argc, char **argv) {
  int i = 1;
  o->gate = -1;
  if (i + 1 < argc && strcmp(argv[i], "--start") == 0) {
    char *end;
    errno = 0;
    o->start = strtoull(argv[i + 1], &end, 10);
    if (errno || !*argv[i + 1] || *end) return sf_err(0, "bad --start %s: give the holder's start time in clock ticks", argv[i + 1]), -EINVAL;
    o->check_start = o->start != 0; /* 0: unknown, as before: no check */
    i += 2;
  }
  if (i + 1 < argc && strcmp(argv[i], "--gate") == 0) {
    long fd;
    if (sf_parse_long(argv[i + 1], 3, INT_MAX, &fd) < 0) return sf_err(0, "bad --gate %s: give a file descriptor (3 or more)", argv[i + 1]), -EINVAL;
    o->gate = (int)fd;
    i += 2;
  }
  if (argc - i < 4 || strcmp(argv[i + 2], "--") != 0) {
    sf_err(0, "usage: enter [--start TICKS] HOLDER_PID CWD -- PROGRAM [ARG]...");
    return -EINVAL;
  }
  long pid;
  if (sf_parse_long(argv[i], 1, INT_MAX, &pid) < 0) return sf_err(0, "bad HOLDER_PID %s", argv[i]), -EINVAL;
  o->holder = (pid_t)pid;
  o->cwd = argv[i + 1];
  o->prog = &argv[i + 3];
  return 0;
}

/* Waits for the gate's byte; 0, or -1 when it ended without one (said why). */
static int enter__wait_gate(int gate) {
  char go;
  ssize_t n;
  while ((n = read(gate, &go, 1)) < 0 && errno == EINTR) {
  }
  if (n < 0) return sf_err(-errno, "gate fd %d", gate), -1;
  close(gate);
  if (n == 0) return sf_err(0, "the launcher went away before the start"), -1;
  return 0;
}

/* Joins the clone's namespaces and its working directory; 0 or -1 (said why). */
static int enter__join(const struct enter_options *o) {
  /* Open every namespace first: once in the clone's mount namespace, /proc is the clone's. */
  static const char *kinds[] = {"ipc", "uts", "net", "pid", "mnt"};
  int fds[SF_ARRAY_LEN(kinds)];
  int rc = 0;
  size_t opened = 0;
  for (; opened < SF_ARRAY_LEN(kinds); opened++) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)o->holder, kinds[opened]);
    fds[opened] = open(path, O_RDONLY | O_CLOEXEC);
    if (fds[opened] < 0) {
      sf_err(-errno, "the clone is gone: cannot open %s", path);
      rc = -1;
      break;
    }
  }
  unsigned long long now;
  if (rc == 0 && o->check_start && (sf_proc_start_time(o->holder, &now) < 0 || now != o->start)) {
    sf_err(-ESRCH, "the clone is gone: holder %d", (int)o->holder);
    rc = -1;
  }
  for (size_t k = 0; rc == 0 && k < opened; k++)
    if (setns(fds[k], 0) < 0) {
      sf_err(-errno, "cannot join the clone's namespace %s", kinds[k]);
      rc = -1;
    }
  for (size_t k = 0; k < opened; k++) close(fds[k]);
  if (rc == 0 && chdir(o->cwd) < 0) {
    sf_err(-errno, "cannot use the working directory inside the clone: %s", o->cwd);
    rc = -1;
  }
  return rc;
}

/* In the child: becomes PROGRAM, or exits 126/127 (or 125 if enter is already gone). */
static void __attribute__((noreturn)) enter__exec(char **prog, int alive, const sigset_t *mask) {
  /* If enter is killed outright (SIGKILL cannot be forwarded), the program goes with it. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  struct pollfd pf = {.fd = alive, .events = POLLIN};
  if (poll(&pf, 1, 0) > 0 && (pf.revents & (POLLHUP | POLLIN))) _exit(EXIT_UNUSABLE);
  close(alive);
  sigprocmask(SIG_SETMASK, mask, NULL);
  execvp(prog[0], prog);
  int code = errno == ENOENT ? EXIT_NOT_FOUND : EXIT_CANNOT_RUN;
  if (errno == ENOENT) sf_err(0, "%s: command not found", prog[0]);
  else sf_err(-errno, "%s", prog[0]);
  _exit(code);
}

int main(int argc, char **argv) {
  sf_prog("enter");
  struct enter_options o = {0};
  if (enter_options__parse(&o, argc, argv) < 0) return EXIT_UNUSABLE;
  if (o.gate >= 0 && enter__wait_gate(o.gate) < 0) return EXIT_UNUSABLE;
  if (enter__join(&o) < 0) return EXIT_UNUSABLE;

  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  /* The child cannot see us from its PID namespace (getppid() is 0), so it learns whether we are
   * still alive from this pipe: we hold the write end until we exit. */
  int alive[2];
  if (pipe2(alive, O_CLOEXEC) < 0) sf_die(EXIT_UNUSABLE, -errno, "pipe");
  pid_t pid = fork();
  if (pid < 0) sf_die(EXIT_UNUSABLE, -errno, "fork");
  if (pid == 0) {
    close(alive[1]);
    enter__exec(o.prog, alive[0], &old);
  }
  close(alive[0]);
  child = pid;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward;
  sa.sa_flags = SA_RESTART;
  for (size_t k = 0; k < SF_ARRAY_LEN(forwarded); k++) sigaction(forwarded[k], &sa, NULL);
  sigprocmask(SIG_SETMASK, &old, NULL);

  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) sf_die(EXIT_UNUSABLE, -errno, "waitpid");
  return sf_end_like(status);
}
