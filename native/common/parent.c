/* What our helpers do as parents: see parent.h. */
#define _GNU_SOURCE
#include "parent.h"
#include "sf.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

void sf_reap_forever(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &set, NULL);
  for (;;) {
    siginfo_t si;
    if (sigwaitinfo(&set, &si) < 0 && errno != EINTR) _exit(1);
    while (waitpid(-1, NULL, WNOHANG) > 0) {}
  }
}

void sf_stdio_to_null(void) {
  /* Not O_CLOEXEC: with a closed stdin, null itself is fd 0 and must stay open across exec. */
  int null = open("/dev/null", O_RDWR);
  if (null < 0) return;
  for (int fd = 0; fd <= 2; fd++)
    if (fd != null) dup2(null, fd);
  if (null > 2) close(null);
}

void sf_become_child(char **prog, pid_t parent, const sigset_t *mask) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  /* The wrapper may have died before the line above: then nobody would kill us. */
  if (getppid() != parent) _exit(125);
  sigprocmask(SIG_SETMASK, mask, NULL);
  execvp(prog[0], prog);
  int code = errno == ENOENT ? 127 : 126;
  if (errno == ENOENT) sf_err(0, "%s: command not found", prog[0]);
  else sf_err(-errno, "%s", prog[0]);
  _exit(code);
}

int sf_end_like(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  int sig = WTERMSIG(status);
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
