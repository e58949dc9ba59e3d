/*
 * holder: creates the namespaces of one or more netns clones and holds them open.
 *
 *   holder [--share-tmp /tmp/NAME]... [--hosts FILE] [--resolv FILE] [--gateway GW/PREFIX] HOSTNAME[=ADDRESS[,MAC]]...
 *
 * For each HOSTNAME, a child is cloned into new network, UTS, IPC, mount and PID namespaces. It is
 * PID 1 of its PID namespace: it mounts a fresh /proc, a private /tmp and /dev/shm, sets the
 * hostname, puts FILE over /etc/hosts (so that clones know each other by name), and then only reaps orphans until it is killed (which ends every process of the clone).
 *
 * Handshake with the engine, so that no clone can outlive a creator that did not record it:
 * holder prints one host-visible PID per clone, then "ready". The engine writes the PIDs to the
 * ticket's state record, moves each clone's eth0 in, and writes "net": holder then configures every
 * clone's network from inside (lo and eth0 up, ADDRESS/PREFIX on eth0, default route via GW, every
 * sibling given with a MAC as a permanent neighbour), waits
 * until every clone's network forwards (see wait_forwarding) and answers "configured" (or "error: ..."). "go" makes holder detach and stay as the clones' parent,
 * reaping them as they are killed. EOF (the engine died) or anything else kills them all.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <net/if.h>
#include <poll.h>
#include <time.h>
#include <unistd.h>

#include "ns_netlink.h"

#define MAX_SHARED 16

static const char *shared_tmp[MAX_SHARED];
static int n_shared;
static const char *hosts_file;
static const char *resolv_file;
static struct in_addr gateway;
static int prefix_len;
static int have_gateway;

/* Every clone of the batch: its address and MAC, for the other clones' neighbour tables. */
struct mac {
  unsigned char b[6];
  int set;
};
static char **all_address;
static struct mac *all_macs;
static int n_clones;

/* Reports a setup failure of a clone over its ready pipe, then exits the clone. */
static void fail(int ready, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf - 2, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if (n > (int)sizeof buf - 3) n = sizeof buf - 3;
  n += snprintf(buf + n, sizeof buf - n, ": %s", strerror(errno));
  if (write(ready, buf, n) < 0) { /* nothing left to tell */ }
  _exit(1);
}

/* A private /tmp, except for the directories the caller works in (they stay the host's). */
static void private_tmp(int ready) {
  char keep[64];
  for (int i = 0; i < n_shared; i++) {
    snprintf(keep, sizeof keep, "/dev/shm/.sf-keep-%d", i);
    if (mkdir(keep, 0700) < 0) fail(ready, "mkdir %s", keep);
    if (mount(shared_tmp[i], keep, NULL, MS_BIND | MS_REC, NULL) < 0) fail(ready, "bind %s", shared_tmp[i]);
  }
  if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0) fail(ready, "mount /tmp");
  for (int i = 0; i < n_shared; i++) {
    snprintf(keep, sizeof keep, "/dev/shm/.sf-keep-%d", i);
    if (mkdir(shared_tmp[i], 0755) < 0 && errno != EEXIST) fail(ready, "mkdir %s", shared_tmp[i]);
    if (mount(keep, shared_tmp[i], NULL, MS_MOVE, NULL) < 0) fail(ready, "move %s", shared_tmp[i]);
    rmdir(keep);
  }
}

/*
 * A sysfs of the clone's own network namespace: /sys/class/net then lists eth0 and lo only. Programs
 * find network devices there (UCX's TCP transport does); the host's list would name devices the
 * clone does not have and miss its eth0 wherever the host's own interface has another name.
 * The host's cgroup hierarchy stays visible (moved over from the old /sys).
 */
static void own_sysfs(int ready) {
  const char *keep = "/dev/shm/.sf-cgroup";
  int have_cgroup = 0;
  if (mkdir(keep, 0700) == 0) {
    have_cgroup = mount("/sys/fs/cgroup", keep, NULL, MS_BIND | MS_REC, NULL) == 0;
    if (!have_cgroup) rmdir(keep);
  }
  if (mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) fail(ready, "mount /sys");
  if (have_cgroup) {
    if (mount(keep, "/sys/fs/cgroup", NULL, MS_MOVE, NULL) < 0) umount2(keep, MNT_DETACH);
    rmdir(keep);
  }
}

static void setup_clone(const char *hostname, int ready) {
  /* Slave, not private: the host's unmounts (ip netns delete) must still reach our copy, or our
   * copy of another clone's /run/netns mount would keep that clone's network alive. */
  if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0) fail(ready, "make / rslave");
  /* Nor should we hold copies of other namespaces' mounts at all. */
  umount2("/run/netns", MNT_DETACH);
  if (sethostname(hostname, strlen(hostname)) < 0) fail(ready, "sethostname %s", hostname);
  /* Before the private /tmp: FILE may live under the host's /tmp. */
  if (hosts_file && mount(hosts_file, "/etc/hosts", NULL, MS_BIND, NULL) < 0) fail(ready, "bind %s on /etc/hosts", hosts_file);
  /* A host without /etc/resolv.conf has no DNS to hang on: nothing to replace then. */
  if (resolv_file && access("/etc/resolv.conf", F_OK) == 0 && mount(resolv_file, "/etc/resolv.conf", NULL, MS_BIND, NULL) < 0)
    fail(ready, "bind %s on /etc/resolv.conf", resolv_file);
  if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0) fail(ready, "mount /dev/shm");
  private_tmp(ready);
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) fail(ready, "mount /proc");
  own_sysfs(ready);
}

/* PID 1 of the clone: orphans of the clone are reparented here and must be reaped. */
static void be_init(void) {
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

static void quiet_stdio(void) {
  int null = open("/dev/null", O_RDWR);
  if (null < 0) return;
  dup2(null, 0);
  dup2(null, 1);
  dup2(null, 2);
  if (null > 2) close(null);
}

static pid_t start_clone(const char *hostname, int *ready_r) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return -1;
  fflush(NULL);
  pid_t pid = (pid_t)syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNS | SIGCHLD,
                             NULL, NULL, NULL, NULL);
  if (pid < 0) {
    close(p[0]);
    close(p[1]);
    return -1;
  }
  if (pid == 0) {
    close(p[0]);
    quiet_stdio();
    /* Hold nothing of our parent's (other clones' pipes, the host namespace): only the ready pipe. */
    if (p[1] > 3) close_range(3, p[1] - 1, 0);
    close_range(p[1] + 1, ~0U, 0);
    setup_clone(hostname, p[1]);
    if (write(p[1], "ok", 2) != 2) _exit(1);
    close(p[1]);
    be_init();
  }
  close(p[1]);
  *ready_r = p[0];
  return pid;
}

/* Opens a rtnetlink socket in the current network namespace, joined to the link group if asked. */
static int nl_socket(int watch) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | (watch ? SOCK_NONBLOCK : 0), NETLINK_ROUTE);
  if (fd < 0 || !watch) return fd;
  struct sockaddr_nl sa = {.nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK};
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Configures one clone's network from inside its namespace; returns 0 or writes why into err.
 * On success *watch is a socket of the clone's namespace that hears its link changes, and *eth0 the
 * index of its eth0 (0 without an address), for wait_forwarding. */
static int configure_net(pid_t pid, const char *address, int *watch, int *eth0_r, char *err, size_t errlen) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/net", (int)pid);
  int ns = open(path, O_RDONLY | O_CLOEXEC);
  if (ns < 0 || setns(ns, CLONE_NEWNET) < 0) {
    snprintf(err, errlen, "cannot enter %s: %s", path, strerror(errno));
    if (ns >= 0) close(ns);
    return -1;
  }
  close(ns);
  /* Joined before eth0 comes up, so that no change of it goes unheard. */
  *watch = nl_socket(1);
  *eth0_r = 0;
  if (*watch < 0) {
    snprintf(err, errlen, "netlink socket: %s", strerror(errno));
    return -1;
  }
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  int rc = fd < 0 ? -errno : ns_nl_link_up(fd, 1);
  const char *step = "lo up";
  if (rc == 0 && address) {
    struct in_addr a;
    int eth0 = (int)if_nametoindex("eth0");
    *eth0_r = eth0;
    step = "find eth0";
    if (!eth0) rc = -ENODEV;
    if (rc == 0 && inet_pton(AF_INET, address, &a) != 1) rc = -EINVAL, step = "parse address";
    if (rc == 0) rc = ns_nl_addr_add(fd, eth0, a, prefix_len), step = "add address";
    if (rc == 0) rc = ns_nl_link_up(fd, eth0), step = "eth0 up";
    if (rc == 0 && have_gateway) rc = ns_nl_default_route(fd, gateway), step = "default route";
    /*
     * Siblings as permanent neighbours: their MACs are known, so no clone ever ARPs for one. Not only
     * faster: the kernel's ARP table is one for all network namespaces, and its dynamic entries are
     * capped host-wide (net.ipv4.neigh.default.gc_thresh3, 1024 by default). N clones that all talk
     * to each other (MPI_Init does) need N*(N-1) entries: with 32 clones the table overflowed, new
     * entries failed ("neighbor table overflow!"), and connects waited seconds or failed with
     * "destination unreachable". Permanent entries are exempt from that cap.
     */
    for (int j = 0; rc == 0 && j < n_clones; j++) {
      struct in_addr b;
      if (!all_macs[j].set || !all_address[j] || all_address[j] == address) continue;
      if (inet_pton(AF_INET, all_address[j], &b) != 1) rc = -EINVAL, step = "parse sibling address";
      else rc = ns_nl_neigh_add(fd, eth0, b, all_macs[j].b), step = "sibling neighbour";
    }
  }
  if (fd >= 0) close(fd);
  if (rc < 0) snprintf(err, errlen, "%s: %s", step, strerror(-rc));
  if (rc < 0) close(*watch), *watch = -1;
  return rc < 0 ? -1 : 0;
}

/* Reads sysfs (the host's: our mount namespace is the host's): a bridge port's STP state, or -1. */
static int brport_state(const char *ifname) {
  char path[96], buf[16] = "";
  snprintf(path, sizeof path, "/sys/class/net/%s/brport/state", ifname);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t r = read(fd, buf, sizeof buf - 1);
  close(fd);
  return r > 0 ? atoi(buf) : -1;
}

#define BR_STATE_FORWARDING 3
#define NET_READY_TIMEOUT_MS 20000

/*
 * An administratively up eth0 does not forward yet. Its carrier (and its host-side peer's) comes on
 * at once, but the kernel acts on it later, in the link-watch work (a kworker that needs the RTNL
 * lock; on a loaded host it runs late): until then both ends keep the no-op qdisc, which drops every
 * frame sent, and the bridge keeps the port disabled, which drops every frame that arrives. A clone
 * that sends then loses its first ARP requests or SYNs (retried only after 1 s, and ARP gives up
 * after 3: "destination unreachable"). So a clone is ready only when its eth0 is operationally up
 * and its peer is up with carrier and a forwarding port of the bridge. We wait for the kernel's own
 * link notifications (no sleeping, no polling); the bound only turns a stuck kernel into an error.
 * Must be called in the host's network namespace; host_watch hears the host's link changes.
 */
static int wait_forwarding(int n, pid_t *pids, int *watch, int *eth0, int host_watch, char **names, char *err, size_t errlen) {
  int host_q = nl_socket(0);
  if (host_q < 0) {
    snprintf(err, errlen, "netlink socket: %s", strerror(errno));
    return -1;
  }
  char *ready = calloc(n, 1);
  struct pollfd *pfd = calloc(n + 1, sizeof *pfd);
  if (!ready || !pfd) {
    snprintf(err, errlen, "out of memory");
    close(host_q);
    free(ready);
    free(pfd);
    return -1;
  }
  struct timespec t0, now;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int rc = 0, left = n;
  const char *why = "";
  int bad = -1;
  for (;;) {
    for (int i = 0; i < n; i++) {
      if (ready[i]) continue;
      if (!eth0[i]) { ready[i] = 1, left--; continue; }
      int oper, peer, r;
      unsigned flags;
      r = ns_nl_link_state(watch[i], eth0[i], &oper, &flags, &peer);
      if (r < 0) { rc = r, bad = i, why = "eth0 state"; break; }
      if (oper != IF_OPER_UP || !(flags & IFF_LOWER_UP) || peer <= 0) { bad = i, why = "eth0 not operationally up"; continue; }
      int poper, ppeer;
      unsigned pflags;
      r = ns_nl_link_state(host_q, peer, &poper, &pflags, &ppeer);
      if (r < 0) { rc = r, bad = i, why = "host side of eth0"; break; }
      char ifname[IF_NAMESIZE];
      if (poper != IF_OPER_UP || !(pflags & IFF_LOWER_UP)) { bad = i, why = "host side not operationally up"; continue; }
      if (!if_indextoname(peer, ifname) || brport_state(ifname) != BR_STATE_FORWARDING) { bad = i, why = "host side not a forwarding bridge port"; continue; }
      ready[i] = 1, left--;
    }
    if (rc < 0 || left == 0) break;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long ms = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
    if (ms >= NET_READY_TIMEOUT_MS) { rc = -ETIMEDOUT; break; }
    /* Sleep until a link changes, here or in a clone not yet ready. */
    int m = 0;
    pfd[m++] = (struct pollfd){.fd = host_watch, .events = POLLIN};
    for (int i = 0; i < n; i++)
      if (!ready[i]) pfd[m++] = (struct pollfd){.fd = watch[i], .events = POLLIN};
    if (poll(pfd, m, (int)(NET_READY_TIMEOUT_MS - ms)) < 0 && errno != EINTR) { rc = -errno, why = "poll"; break; }
    /* Drain what was heard: only the wake-up matters (an overflow, ENOBUFS, is a wake-up too). */
    char buf[8192];
    for (int k = 0; k < m; k++)
      if (pfd[k].revents)
        while (recv(pfd[k].fd, buf, sizeof buf, MSG_DONTWAIT) > 0 || errno == ENOBUFS) {}
  }
  if (rc < 0) snprintf(err, errlen, "%s: %s: %s", bad >= 0 ? names[bad] : "?", why, rc == -ETIMEDOUT ? "still so after 20 s" : strerror(-rc));
  (void)pids;
  close(host_q);
  free(ready);
  free(pfd);
  return rc < 0 ? -1 : 0;
}

static void kill_all(pid_t *pids, int n) {
  for (int i = 0; i < n; i++)
    if (pids[i] > 0) kill(pids[i], SIGKILL);
  while (wait(NULL) > 0 || errno == EINTR) {}
}

int main(int argc, char **argv) {
  int first = 1;
  for (; first + 1 < argc; first += 2) {
    if (strcmp(argv[first], "--share-tmp") == 0) {
      if (n_shared == MAX_SHARED) { fprintf(stderr, "holder: too many --share-tmp\n"); return 2; }
      shared_tmp[n_shared++] = argv[first + 1];
    } else if (strcmp(argv[first], "--hosts") == 0) {
      hosts_file = argv[first + 1];
    } else if (strcmp(argv[first], "--resolv") == 0) {
      resolv_file = argv[first + 1];
    } else if (strcmp(argv[first], "--gateway") == 0) {
      char gw[64];
      snprintf(gw, sizeof gw, "%s", argv[first + 1]);
      char *slash = strchr(gw, '/');
      if (!slash || inet_pton(AF_INET, (*slash = 0, gw), &gateway) != 1) { fprintf(stderr, "holder: bad --gateway\n"); return 2; }
      prefix_len = atoi(slash + 1);
      have_gateway = 1;
    } else break;
  }
  int n = argc - first;
  if (n < 1) { fprintf(stderr, "usage: holder [--share-tmp DIR]... HOSTNAME...\n"); return 2; }

  pid_t *pids = calloc(n, sizeof *pids);
  int *ready = calloc(n, sizeof *ready);
  char **address = calloc(n, sizeof *address);
  struct mac *macs = calloc(n, sizeof *macs);
  if (!pids || !ready || !address || !macs) return 1;
  for (int i = 0; i < n; i++) {
    char *eq = strchr(argv[first + i], '=');
    if (eq) *eq = 0, address[i] = eq + 1;
    char *comma = address[i] ? strchr(address[i], ',') : NULL;
    if (comma) {
      *comma = 0;
      unsigned char *m = macs[i].b;
      if (sscanf(comma + 1, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) {
        fprintf(stderr, "holder: bad MAC %s\n", comma + 1);
        return 2;
      }
      macs[i].set = 1;
    }
  }
  all_address = address;
  all_macs = macs;
  n_clones = n;
  int host_net = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (host_net < 0) { perror("holder: /proc/self/ns/net"); return 1; }
  /* Our own death before "go" must take the clones along; after "go" we detach on purpose. */
  for (int i = 0; i < n; i++) {
    pids[i] = start_clone(argv[first + i], &ready[i]);
    if (pids[i] < 0) {
      fprintf(stderr, "holder: cannot create namespaces for %s: %s\n", argv[first + i], strerror(errno));
      kill_all(pids, i);
      return 1;
    }
  }
  for (int i = 0; i < n; i++) {
    char buf[512];
    ssize_t r;
    do r = read(ready[i], buf, sizeof buf - 1); while (r < 0 && errno == EINTR);
    close(ready[i]);
    if (r != 2 || memcmp(buf, "ok", 2) != 0) {
      buf[r > 0 ? r : 0] = 0;
      fprintf(stderr, "holder: clone %s: %s\n", argv[first + i], r > 0 ? buf : "died during setup");
      kill_all(pids, n);
      return 1;
    }
  }
  for (int i = 0; i < n; i++) printf("%d\n", (int)pids[i]);
  printf("ready\n");
  fflush(stdout);

  /* Commands, one per line: "net" then "go". Anything else, or EOF, ends the clones. */
  FILE *in = fdopen(0, "r");
  char line[64];
  for (;;) {
    if (!in || !fgets(line, sizeof line, in)) {
      kill_all(pids, n);
      return 1;
    }
    if (strncmp(line, "net", 3) == 0) {
      char err[300] = "";
      int bad = 0;
      int *watch = calloc(n, sizeof *watch), *eth0 = calloc(n, sizeof *eth0);
      /* Joined before any clone's eth0 comes up (see wait_forwarding). */
      int host_watch = nl_socket(1);
      if (!watch || !eth0 || host_watch < 0) {
        printf("error: cannot watch the links: %s\n", strerror(errno));
        bad = 1;
      }
      for (int i = 0; i < n && !bad; i++) watch[i] = -1;
      for (int i = 0; i < n && !bad; i++) {
        if (configure_net(pids[i], address[i], &watch[i], &eth0[i], err, sizeof err) < 0) {
          printf("error: %s: %s\n", argv[first + i], err);
          bad = 1;
        }
        if (setns(host_net, CLONE_NEWNET) < 0) { perror("holder: back to the host network"); kill_all(pids, n); return 1; }
      }
      if (!bad && wait_forwarding(n, pids, watch, eth0, host_watch, argv + first, err, sizeof err) < 0) {
        printf("error: network not forwarding: %s\n", err);
        bad = 1;
      }
      for (int i = 0; watch && i < n; i++)
        if (watch[i] > 0) close(watch[i]);
      if (host_watch >= 0) close(host_watch);
      free(watch);
      free(eth0);
      if (!bad) printf("configured\n");
      fflush(stdout);
    } else if (strncmp(line, "go", 2) == 0) {
      break;
    } else {
      kill_all(pids, n);
      return 1;
    }
  }
  quiet_stdio();
  /* Stay as the clones' parent so that they are reaped when killed (PID 1 of the host may not reap). */
  signal(SIGHUP, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  while (wait(NULL) > 0 || errno == EINTR) {}
  return 0;
}
