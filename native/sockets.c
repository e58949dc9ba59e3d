/*
 * sockets: lists the TCP sockets that processes hold, with the bytes waiting in each.
 *
 *   sockets PID...
 *   sockets --serve
 *
 * For every TCP socket among each PID's file descriptors, one line on stdout:
 *
 *   PID FD STATE LOCAL REMOTE UNREAD UNSENT RECEIVED ACKED
 *
 * STATE is the kernel's TCP state number (1 established, 10 listen, ...), LOCAL and REMOTE are
 * a.b.c.d:port or [ipv6]:port (REMOTE '-' when not connected), UNREAD the bytes received that the
 * process has not read (SIOCINQ), UNSENT the bytes it wrote that the peer has not acknowledged
 * (SIOCOUTQ), RECEIVED and ACKED the bytes received and sent-and-acknowledged over the socket's
 * life (TCP_INFO; they move while the process exchanges data). The PMI server's rank probe uses it to see that a rank sits on data another rank sent
 * it (launcher/pmi/rank-probe.ts).
 *
 * Why a program: the socket is borrowed with pidfd_getfd(2) and asked directly, which costs a few
 * system calls per socket. /proc/PID/net/tcp tells the same, but producing it walks the kernel's
 * whole TCP hash table (about 8 ms on a 24 GiB host, per network namespace, even when empty).
 * Borrowing a descriptor needs ptrace rights over the process (root, or the same user without
 * Yama restrictions); the borrowed copy is closed at once and the owner's socket is untouched.
 *
 * With --serve it answers requests on stdin until EOF: one line of PIDs separated by spaces in,
 * their socket lines out, then a line holding only '.'. The PMI server keeps one such helper per
 * job, so that a look at its ranks costs no process start. A request of `~` means every process
 * below the one that started the helper (the helper excepted): where the launcher cannot name the
 * ranks' PIDs, or to save itself the walk. Started by the launcher, that is the launcher's
 * descendants (netns clones' ranks); inside a VM clone (whose image carries this program at the
 * same path) it is the guest agent, PID 1, so every process of the guest.
 *
 * A process that is gone or not ours to look at is skipped with one line on stderr; the exit
 * status is 0 unless the arguments are wrong (2).
 */
#define _GNU_SOURCE
#include "common/sf.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <linux/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/* "a.b.c.d:port" or "[v6]:port" into out; an IPv4-mapped IPv6 address is written as IPv4. */
static void endpoint__format(const struct sockaddr_storage *ss, char *out, size_t cap) {
  char ip[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
    snprintf(out, cap, "%s:%u", ip, ntohs(in->sin_port));
    return;
  }
  const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
  port = ntohs(in6->sin6_port);
  if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
    inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], ip, sizeof ip);
    snprintf(out, cap, "%s:%u", ip, port);
  } else {
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
    snprintf(out, cap, "[%s]:%u", ip, port);
  }
}

/* Prints the line of one borrowed descriptor if it is a TCP socket; 0, or -errno. */
static int socket__describe(int pid, int fd, int sock) {
  int domain = 0, protocol = 0;
  socklen_t len = sizeof domain;
  if (getsockopt(sock, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) return -errno;
  if (domain != AF_INET && domain != AF_INET6) return 0;
  len = sizeof protocol;
  if (getsockopt(sock, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) < 0) return -errno;
  if (protocol != IPPROTO_TCP) return 0;

  struct tcp_info info;
  memset(&info, 0, sizeof info);
  len = sizeof info;
  if (getsockopt(sock, IPPROTO_TCP, TCP_INFO, &info, &len) < 0) return -errno;

  struct sockaddr_storage local, remote;
  char local_s[INET6_ADDRSTRLEN + 16], remote_s[INET6_ADDRSTRLEN + 16] = "-";
  len = sizeof local;
  if (getsockname(sock, (struct sockaddr *)&local, &len) < 0) return -errno;
  endpoint__format(&local, local_s, sizeof local_s);
  len = sizeof remote;
  if (getpeername(sock, (struct sockaddr *)&remote, &len) == 0) endpoint__format(&remote, remote_s, sizeof remote_s);

  /* Both fail on a listening socket; its queues mean something else there. */
  int unread = 0, unsent = 0;
  if (ioctl(sock, SIOCINQ, &unread) < 0) unread = 0;
  if (ioctl(sock, SIOCOUTQ, &unsent) < 0) unsent = 0;
  printf("%d %d %u %s %s %d %d %llu %llu\n", pid, fd, (unsigned)info.tcpi_state, local_s, remote_s, unread, unsent,
         (unsigned long long)info.tcpi_bytes_received, (unsigned long long)info.tcpi_bytes_acked);
  return 0;
}

/* Lists the TCP sockets of one process; 0, or -errno when the process cannot be looked at. */
static int process__describe(int pid) {
  int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
  if (pidfd < 0) return -errno;
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/fd", pid);
  DIR *dir = opendir(path);
  if (!dir) {
    int err = -errno;
    close(pidfd);
    return err;
  }
  int err = 0;
  struct dirent *e;
  while ((e = readdir(dir))) {
    long fd;
    if (e->d_name[0] == '.' || sf_parse_long(e->d_name, 0, 1L << 30, &fd) < 0) continue;
    char link[64], target[64];
    snprintf(link, sizeof link, "/proc/%d/fd/%ld", pid, fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = 0;
    if (strncmp(target, "socket:", 7) != 0) continue;
    int sock = (int)syscall(SYS_pidfd_getfd, pidfd, (int)fd, 0);
    if (sock < 0) {
      /* Closed meanwhile: skip it. Not allowed: the whole process is not ours to look at. */
      if (errno == EBADF) continue;
      err = -errno;
      break;
    }
    (void)socket__describe(pid, (int)fd, sock);
    close(sock);
  }
  closedir(dir);
  close(pidfd);
  return err;
}

/* ppid of a /proc/PID/stat line (the command name may hold spaces and parentheses); -1 if unreadable. */
static long stat__ppid(long pid) {
  char path[64], text[1024];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "re");
  if (!f) return -1;
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = 0;
  const char *close = strrchr(text, ')');
  long ppid;
  char state;
  return close && sscanf(close + 1, " %c %ld", &state, &ppid) == 2 ? ppid : -1;
}

/* `~`: every process below this one's parent, this one excepted (skipped quietly when not ours). */
static void request__answer_below_parent(void) {
  long *pids = NULL, *ppids = NULL;
  size_t n = 0, cap = 0;
  DIR *proc = opendir("/proc");
  struct dirent *e;
  while (proc && (e = readdir(proc))) {
    long pid, ppid;
    if (sf_parse_long(e->d_name, 1, 1L << 22, &pid) < 0 || (ppid = stat__ppid(pid)) < 0) continue;
    if (n == cap) {
      size_t grown = cap ? 2 * cap : 256;
      long *p = sf_realloc(pids, grown * sizeof *p), *q = p ? sf_realloc(ppids, grown * sizeof *q) : NULL;
      if (p) pids = p;
      if (!q) break;
      ppids = q;
      cap = grown;
    }
    pids[n] = pid;
    ppids[n++] = ppid;
  }
  if (proc) closedir(proc);
  /* Breadth first from the parent: `queue` holds the found PIDs, in the order they were found. */
  long *queue = sf_array(n + 1, sizeof *queue);
  if (queue) {
    size_t head = 0, tail = 0;
    queue[tail++] = getppid();
    while (head < tail)
      for (size_t i = 0, of = (size_t)queue[head++]; i < n; i++)
        if ((size_t)ppids[i] == of && tail <= n) queue[tail++] = pids[i];
    for (size_t i = 1; i < tail; i++)
      if (queue[i] != getpid()) (void)process__describe((int)queue[i]);
  }
  free(queue);
  free(pids);
  free(ppids);
}

/* Describes every process named in one request line; a token that is not a PID is skipped. */
static void request__answer(char *line) {
  for (char *tok = strtok(line, " \t\r\n"); tok; tok = strtok(NULL, " \t\r\n")) {
    long pid;
    if (strcmp(tok, "~") == 0) {
      request__answer_below_parent();
      continue;
    }
    if (sf_parse_long(tok, 1, 1L << 22, &pid) < 0) {
      sf_err(0, "not a process ID: '%.32s'", tok);
      continue;
    }
    int err = process__describe((int)pid);
    if (err < 0) sf_err(err, "process %ld skipped", pid);
  }
  printf(".\n");
}

static int serve(void) {
  char line[64 * 1024];
  while (fgets(line, sizeof line, stdin)) {
    size_t n = strlen(line);
    /* A request longer than the buffer is not ours: answer nothing for it but the end mark. */
    if (n == sizeof line - 1 && line[n - 1] != '\n') {
      int c;
      while ((c = getchar()) != EOF && c != '\n') continue;
      printf(".\n");
    } else {
      request__answer(line);
    }
    if (fflush(stdout) != 0) return 1;
  }
  return 0;
}

int main(int argc, char **argv) {
  sf_prog("sockets");
  /* Never outlive the launcher that asked (it may be killed mid-look). */
  pid_t parent = getppid();
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent) return 1;
  if (argc == 2 && strcmp(argv[1], "--serve") == 0) return serve();
  if (argc < 2) sf_die(2, 0, "usage: sockets PID... | sockets --serve");
  for (int i = 1; i < argc; i++) {
    long pid;
    if (sf_parse_long(argv[i], 1, 1L << 22, &pid) < 0) sf_die(2, 0, "not a process ID: '%s'", argv[i]);
  }
  for (int i = 1; i < argc; i++) {
    long pid;
    (void)sf_parse_long(argv[i], 1, 1L << 22, &pid);
    int err = process__describe((int)pid);
    if (err < 0) sf_err(err, "process %ld skipped", pid);
  }
  return fflush(stdout) == 0 ? 0 : 1;
}
