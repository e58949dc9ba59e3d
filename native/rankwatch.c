/*
 * rankwatch: one rank of a job that Hydra's mpiexec launches (sfmpirun --launch native with
 * MPICH), telling sfmpirun when it failed.
 *
 *   rankwatch ADDR:PORT -- PROGRAM [ARG]...
 *
 * Why: Hydra ends a job early only when a rank is killed by a signal. A rank that exits with a
 * code while the others wait for it (in a barrier, a receive) leaves the job hanging for good when
 * each clone has its own proxy (MPICH 4.0.2, pm/pmiserv/pmiserv_cb.c: the other proxies are cleaned
 * up only for !WIFEXITED). sfmpirun's own policy is that the first failure ends the job; told which
 * rank failed and how, it applies it to a native launch too.
 *
 * Transparent otherwise: PROGRAM is our child with our stdio and environment, the usual signals
 * are forwarded to it, and we end the way it ended (its code, or the same signal). PROGRAM has
 * PR_SET_PDEATHSIG = SIGKILL, so a proxy's SIGKILL of us takes it along. We keep our copy of the
 * PMI socket (PMI_FD, the proxy's for PROGRAM) open until we have reported: a proxy kills the
 * process whose socket closes before it finalized, and that must not cut the report short.
 *
 * The TCP connection to ADDR:PORT is made before PROGRAM starts and stays open while it runs. When
 * PROGRAM exits with a code other than 0 or is killed, one line goes over it, "RANK exit CODE" or
 * "RANK signal N" (RANK from PMI_RANK), within REPORT_TIMEOUT_MS. A report that
 * cannot be sent is said on stderr; the exit status stays PROGRAM's either way. Exit codes of its
 * own: 125 bad usage or no resources, 126 PROGRAM not executable, 127 PROGRAM not found.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/parent.h"
#include "common/sf.h"

enum { EXIT_UNUSABLE = 125, REPORT_TIMEOUT_MS = 2000 };

static const int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGCONT, SIGWINCH, SIGALRM};

struct rankwatch {
  struct sockaddr_in to;
  char **prog;
  int sigfd;
  int report; /* the connection to sfmpirun, or -errno */
  pid_t child;
  sigset_t old_mask;
};

static int rankwatch__parse(struct rankwatch *w, int argc, char **argv) {
  if (argc < 4 || strcmp(argv[2], "--") != 0) {
    sf_err(0, "usage: rankwatch ADDR:PORT -- PROGRAM [ARG]...");
    return -EINVAL;
  }
  char addr[64];
  const char *colon = strrchr(argv[1], ':');
  long port;
  size_t len = colon ? (size_t)(colon - argv[1]) : 0;
  if (!colon || len == 0 || len >= sizeof addr || sf_parse_long(colon + 1, 1, 65535, &port) < 0) {
    sf_err(0, "bad report address %s: give IPv4 ADDR:PORT", argv[1]);
    return -EINVAL;
  }
  memcpy(addr, argv[1], len);
  addr[len] = '\0';
  w->to = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, addr, &w->to.sin_addr) != 1) {
    sf_err(0, "bad report address %s: give IPv4 ADDR:PORT", argv[1]);
    return -EINVAL;
  }
  w->prog = &argv[3];
  return 0;
}

/* Blocks SIGCHLD and the forwarded signals, readable from a signalfd from now on. */
static int rankwatch__init(struct rankwatch *w) {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  for (size_t k = 0; k < SF_ARRAY_LEN(forwarded); k++) sigaddset(&mask, forwarded[k]);
  sigprocmask(SIG_BLOCK, &mask, &w->old_mask);
  w->sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (w->sigfd < 0) return sf_err(-errno, "signalfd"), -errno;
  return 0;
}

static int rankwatch__start(struct rankwatch *w) {
  pid_t parent = getpid();
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return sf_err(-errno, "fork"), -errno;
  if (pid == 0) sf_become_child(w->prog, parent, &w->old_mask);
  w->child = pid;
  return 0;
}

/* Forwards signals until PROGRAM ends; returns its wait status. */
static int rankwatch__wait(struct rankwatch *w) {
  for (;;) {
    struct pollfd pf = {.fd = w->sigfd, .events = POLLIN};
    if (poll(&pf, 1, -1) < 0 && errno != EINTR) return sf_err(-errno, "poll"), W_EXITCODE(EXIT_UNUSABLE, 0);
    struct signalfd_siginfo si;
    while (read(w->sigfd, &si, sizeof si) == (ssize_t)sizeof si)
      if (si.ssi_signo != SIGCHLD) kill(w->child, (int)si.ssi_signo);
    int st;
    if (waitpid(w->child, &st, WNOHANG) == w->child) return st;
  }
}

/*
 * Starts the connection to sfmpirun before PROGRAM runs, without waiting for it: when PROGRAM
 * fails, the report is then one write. It must beat Hydra: the other ranks see PROGRAM's sockets
 * close at once, may abort, and Hydra's cleanup SIGKILLs every rank, us included.
 */
static void rankwatch__dial(struct rankwatch *w) {
  w->report = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (w->report < 0) {
    w->report = -errno;
    return;
  }
  if (connect(w->report, (const struct sockaddr *)&w->to, sizeof w->to) < 0 && errno != EINPROGRESS) {
    int err = -errno;
    close(w->report);
    w->report = err;
  }
}

/* The dialled connection once it is up, within the deadline (a gateway that does not answer must not hold us). */
static int rankwatch__connected(struct rankwatch *w) {
  if (w->report < 0) return w->report;
  struct pollfd pf = {.fd = w->report, .events = POLLOUT};
  int err = 0;
  socklen_t len = sizeof err;
  int n = poll(&pf, 1, REPORT_TIMEOUT_MS);
  if (n == 0) err = ETIMEDOUT;
  else if (n < 0 || getsockopt(w->report, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  return err ? -err : w->report;
}

/* Tells sfmpirun how PROGRAM failed; says so on stderr if it cannot. */
static void rankwatch__report(struct rankwatch *w, int status) {
  const char *rank = getenv("PMI_RANK");
  char line[96];
  if (WIFSIGNALED(status)) snprintf(line, sizeof line, "%s signal %d\n", rank ? rank : "-1", WTERMSIG(status));
  else snprintf(line, sizeof line, "%s exit %d\n", rank ? rank : "-1", WEXITSTATUS(status));
  int fd = rankwatch__connected(w);
  /* A few bytes into an empty socket buffer: the non-blocking write takes them whole. */
  int err = fd < 0 ? fd : sf_write_all(fd, line, strlen(line));
  if (err < 0) sf_err(err, "cannot tell sfmpirun that rank %s failed", rank ? rank : "?");
}

static void rankwatch__exit(struct rankwatch *w) {
  if (w->sigfd >= 0) close(w->sigfd);
  if (w->report >= 0) close(w->report);
}

int main(int argc, char **argv) {
  sf_prog("rankwatch");
  struct rankwatch w = {.sigfd = -1, .report = -ENOTCONN};
  if (rankwatch__parse(&w, argc, argv) < 0) return EXIT_UNUSABLE;
  rankwatch__dial(&w);
  if (rankwatch__init(&w) < 0 || rankwatch__start(&w) < 0) {
    rankwatch__exit(&w);
    return EXIT_UNUSABLE;
  }
  int status = rankwatch__wait(&w);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) rankwatch__report(&w, status);
  rankwatch__exit(&w);
  return sf_end_like(status);
}
