/*
 * enter: runs a program inside a netns clone.
 *
 *   enter [--start TICKS] HOLDER_PID CWD -- PROGRAM [ARG]...
 *
 * Joins the IPC, UTS, network, PID and mount namespaces of the clone's holder (the clone's PID 1),
 * changes to CWD (after joining the mount namespace, which resets the working directory), and
 * forks, because a new PID namespace only applies to children. The child execs PROGRAM with our
 * environment; we forward signals to it and end the way it ended: same exit code, or the same
 * fatal signal raised on ourselves, so that our caller cannot tell us apart from the program.
 *
 * Exit codes of our own, as env(1) and shells use them: 125 the clone or CWD is unusable,
 * 126 PROGRAM is not executable, 127 PROGRAM is not found.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile pid_t child;

static void forward(int sig) {
  if (child > 0) kill(child, sig);
}

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT, SIGWINCH, SIGALRM};
#define N_FORWARDED (sizeof forwarded / sizeof forwarded[0])

/* /proc/PID/stat field 22: guards against entering a process that reused the holder's PID. */
static unsigned long long start_time(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *p = strrchr(buf, ')');
  if (!p) return 0;
  unsigned long long v = 0;
  /* after ") " come fields 3..: state is field 3, starttime field 22 */
  int field = 2;
  for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
    if (++field == 22) {
      v = strtoull(tok, NULL, 10);
      break;
    }
  }
  return v;
}

static void die(int code, const char *what, const char *arg) {
  fprintf(stderr, "enter: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(errno));
  exit(code);
}

int main(int argc, char **argv) {
  int i = 1;
  unsigned long long want_start = 0;
  if (i + 1 < argc && strcmp(argv[i], "--start") == 0) {
    want_start = strtoull(argv[i + 1], NULL, 10);
    i += 2;
  }
  if (argc - i < 4 || strcmp(argv[i + 2], "--") != 0) {
    fprintf(stderr, "usage: enter [--start TICKS] HOLDER_PID CWD -- PROGRAM [ARG]...\n");
    return 125;
  }
  pid_t holder = (pid_t)atoi(argv[i]);
  const char *cwd = argv[i + 1];
  char **prog = &argv[i + 3];

  /* Open every namespace first: once in the clone's mount namespace, /proc is the clone's. */
  static const char *kinds[] = {"ipc", "uts", "net", "pid", "mnt"};
  int fds[5];
  for (int k = 0; k < 5; k++) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)holder, kinds[k]);
    fds[k] = open(path, O_RDONLY | O_CLOEXEC);
    if (fds[k] < 0) die(125, "the clone is gone: cannot open", path);
  }
  if (want_start && start_time(holder) != want_start) {
    errno = ESRCH;
    die(125, "the clone is gone: holder", argv[i]);
  }
  for (int k = 0; k < 5; k++) {
    if (setns(fds[k], 0) < 0) die(125, "cannot join the clone's namespace", kinds[k]);
    close(fds[k]);
  }
  if (chdir(cwd) < 0) die(125, "cannot use the working directory inside the clone:", cwd);

  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  /* The child cannot see us from its PID namespace (getppid() is 0), so it learns whether we are
   * still alive from this pipe: we hold the write end until we exit. */
  int alive[2];
  if (pipe2(alive, O_CLOEXEC) < 0) die(125, "pipe", NULL);
  pid_t pid = fork();
  if (pid < 0) die(125, "fork", NULL);
  if (pid == 0) {
    /* If enter is killed outright (SIGKILL cannot be forwarded), the program goes with it. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(alive[1]);
    struct pollfd pf = {.fd = alive[0], .events = POLLIN};
    if (poll(&pf, 1, 0) > 0 && (pf.revents & (POLLHUP | POLLIN))) _exit(125);
    close(alive[0]);
    sigprocmask(SIG_SETMASK, &old, NULL);
    execvp(prog[0], prog);
    int code = errno == ENOENT ? 127 : 126;
    fprintf(stderr, "enter: %s: %s\n", prog[0], errno == ENOENT ? "command not found" : strerror(errno));
    _exit(code);
  }
  close(alive[0]);
  child = pid;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward;
  sa.sa_flags = SA_RESTART;
  for (size_t k = 0; k < N_FORWARDED; k++) sigaction(forwarded[k], &sa, NULL);
  sigprocmask(SIG_SETMASK, &old, NULL);

  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) die(125, "waitpid", NULL);
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  int sig = WTERMSIG(status);
  /* Die of the same signal, without a core file of our own. */
  struct rlimit no_core = {0, 0};
  setrlimit(RLIMIT_CORE, &no_core);
  signal(sig, SIG_DFL);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, sig);
  sigprocmask(SIG_UNBLOCK, &one, NULL);
  raise(sig);
  return 128 + sig;
}
