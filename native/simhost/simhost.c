/*
 * simhost: creates the namespaces of one simulated host and holds them for as long as the host lives.
 *
 *   simhost [--keep DIR]... [--hosts FILE] [--resolv FILE] HOSTNAME
 *
 * A simulated host is what a cluster node looks like to the programs on it: its own network, UTS
 * (HOSTNAME), IPC, mount and PID namespaces; a private /run, /tmp and /dev/shm; a /proc of its own
 * PID namespace and a /sys of its own network namespace (programs such as UCX list network devices
 * there); the --hosts FILE over /etc/hosts so that node names resolve, and the --resolv FILE over
 * /etc/resolv.conf (a host cannot reach the machine's name servers: every lookup that falls through
 * to DNS, such as getent's IPv6 one, would wait 5 s per try). Everything else is the machine's root
 * filesystem, as a shared filesystem is on a real cluster. Each DIR (the cluster's directory: the
 * munge socket, slurm.conf, per-node spool) stays the machine's even where it lies under /run or /tmp.
 *
 * The host's init is a child cloned into the new namespaces: PID 1 of the host, it only reaps
 * orphans. Killing it (SIGKILL from outside) ends every process of the host, and with the last one
 * the network namespace and its veth: nothing can outlive the host.
 *
 * Handshake, so that no host can outlive a creator that did not record it: simhost prints the
 * init's PID (as the machine sees it), then "ready". The creator records the PID and writes "go":
 * simhost then detaches (stdio to /dev/null) and stays as the init's parent, reaping it when the
 * host is killed. EOF or anything but "go" before that (the creator died) ends the host. The init
 * also dies with simhost (parent-death signal), so killing either one removes the host.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/parent.h"
#include "common/sf.h"

#define MAX_KEEP 8

struct options {
  const char *keep[MAX_KEEP];
  int n_keep;
  const char *hosts_file;
  const char *resolv_file;
  const char *hostname;
};

/* Is path at or below dir? */
static int path_under(const char *path, const char *dir) {
  size_t n = strlen(dir);
  return strncmp(path, dir, n) == 0 && (path[n] == 0 || path[n] == '/');
}

/* mkdir -p, for a kept directory's path inside a fresh tmpfs. */
static int mkdir_p(const char *path) {
  char buf[4096];
  if (strlen(path) >= sizeof buf) return -ENAMETOOLONG;
  strcpy(buf, path);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == 0) {
      char c = *p;
      *p = 0;
      if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -errno;
      *p = c;
      if (c == 0) break;
    }
  }
  return 0;
}

/*
 * Our copy of the machine's mount table holds every mount below /run, /tmp and /dev/shm, other
 * users' included (FUSE files, bind-mounted namespaces under /run/netns). Copies we hold would keep
 * those alive after their owners unmount them, so we detach the ones below dir (deepest first: the
 * table lists parents before children) before our own tmpfs goes on top.
 */
static int drop_machine_mounts(const char *dir) {
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f) return -errno;
  char *targets[1024];
  int n = 0, rc = 0;
  char line[4096];
  while (fgets(line, sizeof line, f) && n < (int)SF_ARRAY_LEN(targets)) {
    char target[4096];
    /* Fields: id parent major:minor root mountpoint ... (mountpoints octal-escape spaces; ours have none) */
    if (sscanf(line, "%*s %*s %*s %*s %4095s", target) != 1 || !path_under(target, dir)) continue;
    targets[n] = sf_strdup(target);
    if (!targets[n]) rc = -ENOMEM;
    else n++;
  }
  fclose(f);
  for (int i = n - 1; i >= 0; i--) {
    /* EINVAL: already gone with a parent detached before it. */
    if (umount2(targets[i], MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT && rc == 0) rc = -errno;
    free(targets[i]);
  }
  return rc;
}

/* A sysfs of the host's own network namespace, with the machine's cgroup hierarchy moved over (slurmd needs it). */
static int own_sysfs(void) {
  const char *aside = "/dev/shm/.simhost-cgroup";
  int have_cgroup = mkdir(aside, 0700) == 0 && mount("/sys/fs/cgroup", aside, NULL, MS_BIND | MS_REC, NULL) == 0;
  /* The machine's sysfs goes (detached, not covered), so that the host holds no copy of it. */
  if (umount2("/sys", MNT_DETACH) < 0 && errno != EINVAL) return -errno;
  if (mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) return -errno;
  if (have_cgroup && mount(aside, "/sys/fs/cgroup", NULL, MS_MOVE, NULL) < 0) return -errno;
  rmdir(aside);
  return 0;
}

/* Runs inside the new namespaces, before anything else may: returns 0 or -errno with *step set. */
static int setup_host(const struct options *o, const char **step) {
  char aside[64];
  int rc;
  /* Slave: the machine's unmounts still reach our copies of whatever we do not detach. */
  *step = "make / a slave mount";
  if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0) return -errno;
  *step = "sethostname";
  if (sethostname(o->hostname, strlen(o->hostname)) < 0) return -errno;
  *step = "bind the hosts file on /etc/hosts";
  if (o->hosts_file && mount(o->hosts_file, "/etc/hosts", NULL, MS_BIND, NULL) < 0) return -errno;
  /* A machine without /etc/resolv.conf has no DNS to wait for: nothing to replace then. */
  *step = "bind the resolver file on /etc/resolv.conf";
  if (o->resolv_file && access("/etc/resolv.conf", F_OK) == 0 && mount(o->resolv_file, "/etc/resolv.conf", NULL, MS_BIND, NULL) < 0) return -errno;
  /* The kept directories are bound aside while their parents are replaced. The aside places live in
   * a tmpfs of our own at /dev/shm, which becomes the host's /dev/shm afterwards. */
  /* A fresh /dev/shm first: the kept directories are bound aside there (with whatever they hold)
   * while the machine's /run and /tmp are detached and replaced. */
  *step = "detach the machine's mounts under /dev/shm";
  if ((rc = drop_machine_mounts("/dev/shm")) < 0) return rc;
  *step = "mount /dev/shm";
  if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0) return -errno;
  for (int i = 0; i < o->n_keep; i++) {
    snprintf(aside, sizeof aside, "/dev/shm/.simhost-keep-%d", i);
    *step = "bind a kept directory aside";
    if (mkdir(aside, 0700) < 0 || mount(o->keep[i], aside, NULL, MS_BIND | MS_REC, NULL) < 0) return -errno;
  }
  *step = "detach the machine's mounts under /run";
  if ((rc = drop_machine_mounts("/run")) < 0) return rc;
  *step = "detach the machine's mounts under /tmp";
  if ((rc = drop_machine_mounts("/tmp")) < 0) return rc;
  *step = "mount /run";
  if (mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755") < 0) return -errno;
  *step = "mount /tmp";
  if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0) return -errno;
  /* What a fresh /run has on Debian (lock files of tools that expect it). */
  mkdir("/run/lock", 01777);
  for (int i = 0; i < o->n_keep; i++) {
    snprintf(aside, sizeof aside, "/dev/shm/.simhost-keep-%d", i);
    *step = "put a kept directory back";
    if ((rc = mkdir_p(o->keep[i])) < 0) return rc;
    if (mount(aside, o->keep[i], NULL, MS_MOVE, NULL) < 0) return -errno;
    rmdir(aside);
  }
  *step = "mount /proc";
  if (umount2("/proc", MNT_DETACH) < 0 && errno != EINVAL) return -errno;
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) return -errno;
  *step = "mount /sys";
  if ((rc = own_sysfs()) < 0) return rc;
  *step = "chdir /";
  if (chdir("/") < 0) return -errno;
  return 0;
}

/* The host's init. Reports "ok" or one line of why not over the ready pipe. */
static void host_main(const struct options *o, int ready, int alive) {
  /* If simhost dies, so does the host; and it may already have died before this line. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  struct pollfd pf = {.fd = alive, .events = POLLIN};
  if (poll(&pf, 1, 0) > 0) _exit(1);
  close(alive);
  sf_stdio_to_null();
  const char *step = "";
  int rc = setup_host(o, &step);
  if (rc < 0) {
    char msg[256];
    int n = snprintf(msg, sizeof msg, "%s: %s", step, strerror(-rc));
    (void)sf_write_all(ready, msg, n > 0 && n < (int)sizeof msg ? (size_t)n : strlen(msg));
    _exit(1);
  }
  if (sf_write_all(ready, "ok", 2) < 0) _exit(1);
  close(ready);
  sf_reap_forever();
}

static int parse(int argc, char **argv, struct options *o) {
  int i = 1;
  for (; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--keep") == 0) {
      if (o->n_keep == MAX_KEEP) return sf_err(0, "too many --keep (at most %d)", MAX_KEEP), -EINVAL;
      if (argv[i + 1][0] != '/' || path_under(argv[i + 1], "/dev/shm")) return sf_err(0, "--keep %s: an absolute path outside /dev/shm, please", argv[i + 1]), -EINVAL;
      o->keep[o->n_keep++] = argv[i + 1];
    } else if (strcmp(argv[i], "--hosts") == 0) {
      o->hosts_file = argv[i + 1];
    } else if (strcmp(argv[i], "--resolv") == 0) {
      o->resolv_file = argv[i + 1];
    } else {
      break;
    }
  }
  if (argc - i != 1 || argv[i][0] == '-') return sf_err(0, "usage: simhost [--keep DIR]... [--hosts FILE] [--resolv FILE] HOSTNAME"), -EINVAL;
  o->hostname = argv[i];
  return 0;
}

int main(int argc, char **argv) {
  sf_prog("simhost");
  struct options o = {0};
  if (parse(argc, argv, &o) < 0) return 2;

  int ready[2], alive[2];
  if (pipe2(ready, O_CLOEXEC) < 0 || pipe2(alive, O_CLOEXEC) < 0) sf_die(1, -errno, "pipe");
  fflush(NULL);
  pid_t pid = (pid_t)syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNS | SIGCHLD,
                             NULL, NULL, NULL, NULL);
  if (pid < 0) sf_die(1, -errno, "cannot create the namespaces of %s", o.hostname);
  if (pid == 0) {
    close(ready[0]);
    close(alive[1]);
    host_main(&o, ready[1], alive[0]);
  }
  close(ready[1]);
  close(alive[0]);

  char buf[300];
  ssize_t r;
  do r = read(ready[0], buf, sizeof buf - 1); while (r < 0 && errno == EINTR);
  close(ready[0]);
  if (r != 2 || memcmp(buf, "ok", 2) != 0) {
    buf[r > 0 ? r : 0] = 0;
    sf_err(0, "host %s: %s", o.hostname, r > 0 ? buf : "died during setup");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 1;
  }
  printf("%d\nready\n", (int)pid);
  fflush(stdout);

  char line[16];
  if (!fgets(line, sizeof line, stdin) || strcmp(line, "go\n") != 0) {
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 1;
  }
  sf_stdio_to_null();
  if (chdir("/") < 0) { /* nothing depends on it */ }
  /* Detached from our creator's session: its hang-up or Ctrl-C is not the host's end. */
  signal(SIGHUP, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  int status;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
  (void)alive[1]; /* held until we exit: the host's init checks it once at start */
  return 0;
}
