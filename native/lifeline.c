/*
 * lifeline: runs a program that must not outlive its owner (QEMU, a native launcher such as
 * mpirun.openmpi), whatever way the owner ends, SIGKILL included.
 *
 *   lifeline --owner PID:START -- PROGRAM [ARG]...
 *
 * PID:START names the owner: its PID and its start time (field 22 of /proc/PID/stat, clock ticks),
 * so that a later process reusing the PID is never taken for it. lifeline opens a pidfd on the
 * owner (before checking the start time, so that the pidfd cannot name a successor), starts
 * PROGRAM as its child in a process group of its own, and polls the pidfd. When the owner ends,
 * it kills PROGRAM's process group and everything PROGRAM left behind (lifeline is a child
 * subreaper: descendants that leave the group or are orphaned come to it) with SIGKILL, at once.
 * Belt and braces: PROGRAM also has PR_SET_PDEATHSIG = SIGKILL, so it dies if lifeline itself is
 * killed outright.
 *
 * Otherwise lifeline is transparent: it forwards the usual signals (SIGTERM, SIGINT, SIGHUP, ...)
 * to PROGRAM, keeps its stdio, and ends as PROGRAM ended (its exit code, or the same fatal signal
 * raised on itself). Whatever PROGRAM leaves running when it ends is killed then too: a program on
 * a lifeline leaves nothing behind. PROGRAM's group is not the terminal's foreground group: give
 * it pipes or files, not a terminal, as stdin.
 *
 * Exit codes of its own, as env(1) uses them: 125 bad usage, owner already gone (PROGRAM is then
 * not started), or no resources; 126 PROGRAM is not executable; 127 PROGRAM is not found.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/parent.h"
#include "common/proc.h"
#include "common/sf.h"

enum { EXIT_UNUSABLE = 125 };

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT, SIGWINCH, SIGALRM};

struct lifeline {
  pid_t owner_pid;
  unsigned long long owner_start;
  char **prog;
  int owner; /* pidfd */
  int sigfd;
  pid_t child;
  sigset_t old_mask;
};

static int lifeline__parse(struct lifeline *l, int argc, char **argv) {
  if (argc < 5 || strcmp(argv[1], "--owner") != 0 || strcmp(argv[3], "--") != 0) {
    sf_err(0, "usage: lifeline --owner PID:START -- PROGRAM [ARG]...");
    return -EINVAL;
  }
  if (sf_proc_parse_identity(argv[2], &l->owner_pid, &l->owner_start) < 0) {
    sf_err(0, "bad --owner %s: give PID:START (START is field 22 of /proc/PID/stat)", argv[2]);
    return -EINVAL;
  }
  l->prog = &argv[4];
  return 0;
}

/* The owner's pidfd and a signalfd for SIGCHLD and the forwarded signals (all blocked now). */
static int lifeline__init(struct lifeline *l) {
  l->owner = sf_proc_open_identity(l->owner_pid, l->owner_start);
  if (l->owner == -ESRCH) {
    sf_err(0, "the owner %d:%llu is gone already; %s was not started", (int)l->owner_pid, l->owner_start, l->prog[0]);
    return -ESRCH;
  }
  if (l->owner < 0) return sf_err(l->owner, "pidfd of the owner %d", (int)l->owner_pid), l->owner;
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  for (size_t k = 0; k < SF_ARRAY_LEN(forwarded); k++) sigaddset(&mask, forwarded[k]);
  sigprocmask(SIG_BLOCK, &mask, &l->old_mask);
  l->sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (l->sigfd < 0) return sf_err(-errno, "signalfd"), -errno;
  /* Orphans of PROGRAM's tree come to us, so that none escapes the final sweep. */
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) return sf_err(-errno, "become a child subreaper"), -errno;
  return 0;
}

static int lifeline__start(struct lifeline *l) {
  pid_t parent = getpid();
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return sf_err(-errno, "fork"), -errno;
  if (pid == 0) {
    setpgid(0, 0);
    sf_become_child(l->prog, parent, &l->old_mask);
  }
  /* Also here, so that the group exists before any kill of it (either call may come first). */
  setpgid(pid, pid);
  l->child = pid;
  return 0;
}

/* SIGKILL to every child we have (PROGRAM's orphans included); the count sent. */
static int lifeline__kill_children(void) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
  FILE *f = fopen(path, "re");
  if (!f) return 0;
  int n = 0, pid;
  while (fscanf(f, "%d", &pid) == 1)
    if (kill(pid, SIGKILL) == 0) n++;
  fclose(f);
  return n;
}

/*
 * Kills PROGRAM's group and every descendant, and reaps them all. A killed process's own children
 * are reparented to us as it dies, so the sweep repeats until we have no child left. Sets *status
 * and *reaped when PROGRAM itself is reaped here.
 */
static void lifeline__kill_all(struct lifeline *l, int *status, int *reaped) {
  for (;;) {
    /* Only while PROGRAM is unreaped: until then its PID, the group's id, cannot be reused. */
    if (!*reaped) kill(-l->child, SIGKILL);
    lifeline__kill_children();
    int st;
    pid_t pid = waitpid(-1, &st, 0);
    if (pid < 0) {
      if (errno == EINTR) continue;
      break; /* ECHILD: nothing left */
    }
    if (pid == l->child) *status = st, *reaped = 1;
  }
}

/* Forwards what the signalfd holds; reaps; returns 1 once PROGRAM has ended (*status). */
static int lifeline__on_signals(struct lifeline *l, int *status) {
  struct signalfd_siginfo si;
  int ended = 0;
  while (read(l->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
    if (si.ssi_signo != SIGCHLD) kill(l->child, (int)si.ssi_signo);
  int st;
  pid_t pid;
  while ((pid = waitpid(-1, &st, WNOHANG)) > 0)
    if (pid == l->child) *status = st, ended = 1;
  return ended;
}

/* Waits until PROGRAM ends or the owner does; returns PROGRAM's wait status. */
static int lifeline__watch(struct lifeline *l) {
  int status = 0, reaped = 0;
  for (;;) {
    struct pollfd pf[2] = {{.fd = l->owner, .events = POLLIN}, {.fd = l->sigfd, .events = POLLIN}};
    if (poll(pf, 2, -1) < 0) {
      if (errno == EINTR) continue;
      sf_err(-errno, "poll");
      break;
    }
    if (pf[0].revents) break;
    if (pf[1].revents && lifeline__on_signals(l, &status)) {
      reaped = 1;
      break;
    }
  }
  /* The owner ended, or PROGRAM did: either way nothing of PROGRAM's may stay. */
  lifeline__kill_all(l, &status, &reaped);
  return reaped ? status : SIGKILL;
}

static void lifeline__exit(struct lifeline *l) {
  if (l->owner >= 0) close(l->owner);
  if (l->sigfd >= 0) close(l->sigfd);
}

int main(int argc, char **argv) {
  sf_prog("lifeline");
  struct lifeline l = {.owner = -1, .sigfd = -1};
  if (lifeline__parse(&l, argc, argv) < 0) return EXIT_UNUSABLE;
  if (lifeline__init(&l) < 0 || lifeline__start(&l) < 0) {
    lifeline__exit(&l);
    return EXIT_UNUSABLE;
  }
  int status = lifeline__watch(&l);
  lifeline__exit(&l);
  return sf_end_like(status);
}
