/*
 * holder: creates the namespaces of one or more netns clones and holds them open.
 *
 *   holder [--share-tmp DIR]... [--hosts FILE] [--resolv FILE] [--gateway GW/PREFIX]
 *          [--gso-max BYTES] [--shortcut] [--owner PID:START] HOSTNAME[=ADDRESS[,MAC]]...
 *
 * For each HOSTNAME, a child is cloned into new network, UTS, IPC, mount and PID namespaces. It is
 * PID 1 of its PID namespace: it mounts a fresh /proc, a private /tmp and /dev/shm, sets the
 * hostname, puts FILE over /etc/hosts (so that clones know each other by name), and then only
 * reaps orphans until it is killed (which ends every process of the clone).
 *
 * Handshake with the engine, so that no clone can outlive a creator that did not record it:
 * holder prints one host-visible PID per clone, then "ready". The engine writes the PIDs to the
 * ticket's state record, moves each clone's eth0 in, and writes "net": holder then configures every
 * clone's network from inside (lo and eth0 up, ADDRESS/PREFIX on eth0, default route via GW, every
 * sibling given with a MAC as a permanent neighbour), waits until every clone's network forwards
 * (see holder__wait_forwarding) and answers "configured" (or "error: ..."). "go" makes holder
 * detach and stay as the clones' parent, reaping them as they are killed. EOF (the engine died) or
 * anything else before "go" kills them all.
 *
 * The lifeline: with --owner PID:START (the owner's PID and its start time, field 22 of
 * /proc/PID/stat), holder also kills every clone as soon as that process ends after "go", however
 * it ends (SIGKILL included): it holds a pidfd on the owner from the start and polls it. Without
 * --owner the clones live until they are killed (a kept cluster: `snowflock up`, --keep). Why a
 * pidfd and not the stdin pipe kept open: a pipe lives as long as any process holds its write end,
 * and a descendant that inherited it would keep the cluster alive; a pidfd names the owner itself,
 * and the owner need not keep anything open for it.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <net/if.h>
#include <linux/if.h> /* after net/if.h: IF_OPER_UP, IFF_LOWER_UP */
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/netconf.h"
#include "common/netlink.h"
#include "common/parent.h"
#include "common/proc.h"
#include "common/shortcut.h"
#include "common/sf.h"

#define MAX_SHARED 16
#define BR_STATE_FORWARDING 3
#define NET_READY_TIMEOUT_MS 20000

struct holder_options {
  const char *shared_tmp[MAX_SHARED];
  int n_shared;
  const char *hosts_file;
  const char *resolv_file;
  int has_gateway;
  struct in_addr gateway;
  int prefix;
  unsigned gso_max; /* for every eth0; 0: the kernel's default */
  int shortcut;     /* frames between the clones skip the bridge (common/shortcut.h) */
  int has_owner;
  pid_t owner_pid;
  unsigned long long owner_start;
};

struct clone {
  const char *name;
  int has_addr;
  struct in_addr addr;
  int has_mac;
  unsigned char mac[6];
  pid_t pid;     /* host-visible PID of its PID 1; 0 before it exists */
  int ready;     /* read end of its setup pipe, -1 once read */
  struct nl watch; /* during "net": in its namespace, hears its link changes */
  int eth0;      /* index of its eth0 (0 without an address) */
  int veth;      /* index of eth0's host-side peer, once its network forwards */
};

struct holder {
  struct holder_options opt;
  struct clone *clones;
  int n;
  int host_net; /* the host's network namespace, to return to */
  int owner;    /* pidfd on the owner, or -1 */
};

/* What failed, for the one line that reports it. */
struct step {
  char what[320];
};

static int step__fail(struct step *s, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int step__fail(struct step *s, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->what, sizeof s->what, fmt, ap);
  va_end(ap);
  return err;
}

/* ---- options ---- */

static int holder__usage(void) {
  sf_err(0, "usage: holder [--share-tmp DIR]... [--hosts FILE] [--resolv FILE] [--gateway GW/PREFIX] [--gso-max BYTES] "
            "[--shortcut] [--owner PID:START] HOSTNAME[=ADDRESS[,MAC]]...");
  return -EINVAL;
}

/*
 * One option at argv[0], with its value at argv[1] where it takes one: returns how many arguments
 * it took, 0 for the first clone, -EINVAL after saying what was wrong.
 */
static int holder_options__set(struct holder_options *o, int argc, char **argv) {
  const char *name = argv[0];
  if (strcmp(name, "--shortcut") == 0) {
    o->shortcut = 1;
    return 1;
  }
  if (name[0] != '-') return 0; /* not an option: the clones begin here */
  if (argc < 2) return sf_err(0, "%s needs a value", name), -EINVAL;
  const char *value = argv[1];
  if (strcmp(name, "--share-tmp") == 0) {
    if (o->n_shared == MAX_SHARED) return sf_err(0, "at most %d --share-tmp", MAX_SHARED), -EINVAL;
    o->shared_tmp[o->n_shared++] = value;
  } else if (strcmp(name, "--hosts") == 0) {
    o->hosts_file = value;
  } else if (strcmp(name, "--resolv") == 0) {
    o->resolv_file = value;
  } else if (strcmp(name, "--gateway") == 0) {
    if (netconf__parse_cidr(value, &o->gateway, &o->prefix) < 0) return sf_err(0, "bad --gateway %s: give GW/PREFIX", value), -EINVAL;
    o->has_gateway = 1;
  } else if (strcmp(name, "--gso-max") == 0) {
    long v;
    if (sf_parse_long(value, 1, UINT32_MAX, &v) < 0) return sf_err(0, "bad --gso-max %s: give a size in bytes", value), -EINVAL;
    o->gso_max = (unsigned)v;
  } else if (strcmp(name, "--owner") == 0) {
    if (sf_proc_parse_identity(value, &o->owner_pid, &o->owner_start) < 0)
      return sf_err(0, "bad --owner %s: give PID:START (field 22 of /proc/PID/stat)", value), -EINVAL;
    o->has_owner = 1;
  } else {
    return holder__usage();
  }
  return 2;
}

/* HOSTNAME[=ADDRESS[,MAC]], parsed in place. */
static int clone__parse(struct clone *c, char *arg) {
  memset(c, 0, sizeof *c);
  c->ready = -1;
  c->watch.fd = -1;
  c->name = arg;
  char *eq = strchr(arg, '=');
  if (!eq) return 0;
  *eq = 0;
  char *addr = eq + 1, *comma = strchr(addr, ',');
  if (comma) {
    *comma = 0;
    if (netconf__parse_mac(comma + 1, c->mac) < 0) return sf_err(0, "bad MAC %s of %s", comma + 1, arg), -EINVAL;
    c->has_mac = 1;
  }
  if (netconf__parse_addr(addr, &c->addr) < 0) return sf_err(0, "bad address %s of %s", addr, arg), -EINVAL;
  c->has_addr = 1;
  return 0;
}

static int holder__parse(struct holder *h, int argc, char **argv) {
  int i = 1;
  while (i < argc) {
    int rc = holder_options__set(&h->opt, argc - i, argv + i);
    if (rc < 0) return rc;
    if (rc == 0) break;
    i += rc;
  }
  h->n = argc - i;
  if (h->n < 1) return holder__usage();
  h->clones = sf_array((size_t)h->n, sizeof *h->clones);
  if (!h->clones) return sf_err(-ENOMEM, "clones"), -ENOMEM;
  for (int k = 0; k < h->n; k++) {
    int rc = clone__parse(&h->clones[k], argv[i + k]);
    if (rc < 0) return rc;
  }
  return 0;
}

/* ---- inside a new clone ---- */

/*
 * A mount point for a shared entry of the host's /tmp: a directory, or an empty file where the
 * entry is a file (a program built straight into /tmp), since a bind mount needs the same kind.
 */
static int tmp__mount_point(const char *path, bool is_dir) {
  if (is_dir) return mkdir(path, 0755) < 0 && errno != EEXIST ? -errno : 0;
  int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  close(fd);
  return 0;
}

/* A private /tmp, except for the entries the caller works in (they stay the host's). */
static int clone__private_tmp(const struct holder_options *o, struct step *s) {
  char keep[64];
  bool is_dir[MAX_SHARED];
  for (int i = 0; i < o->n_shared; i++) {
    struct stat st;
    if (stat(o->shared_tmp[i], &st) < 0) return step__fail(s, -errno, "stat %s", o->shared_tmp[i]);
    is_dir[i] = S_ISDIR(st.st_mode);
    snprintf(keep, sizeof keep, "/dev/shm/.sf-keep-%d", i);
    int rc = tmp__mount_point(keep, is_dir[i]);
    if (rc < 0) return step__fail(s, rc, "create %s", keep);
    if (mount(o->shared_tmp[i], keep, NULL, MS_BIND | MS_REC, NULL) < 0) return step__fail(s, -errno, "bind %s", o->shared_tmp[i]);
  }
  if (mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0) return step__fail(s, -errno, "mount /tmp");
  for (int i = 0; i < o->n_shared; i++) {
    snprintf(keep, sizeof keep, "/dev/shm/.sf-keep-%d", i);
    int rc = tmp__mount_point(o->shared_tmp[i], is_dir[i]);
    if (rc < 0) return step__fail(s, rc, "create %s", o->shared_tmp[i]);
    if (mount(keep, o->shared_tmp[i], NULL, MS_MOVE, NULL) < 0) return step__fail(s, -errno, "move %s", o->shared_tmp[i]);
    (void)(is_dir[i] ? rmdir(keep) : unlink(keep)); /* a leftover would go with the clone's /dev/shm */
  }
  return 0;
}

/*
 * A sysfs of the clone's own network namespace: /sys/class/net then lists eth0 and lo only. Programs
 * find network devices there (UCX's TCP transport does); the host's list would name devices the
 * clone does not have and miss its eth0 wherever the host's own interface has another name.
 * The host's cgroup hierarchy stays visible (moved over from the old /sys).
 */
static int clone__own_sysfs(struct step *s) {
  const char *keep = "/dev/shm/.sf-cgroup";
  int have_cgroup = 0;
  if (mkdir(keep, 0700) == 0) {
    have_cgroup = mount("/sys/fs/cgroup", keep, NULL, MS_BIND | MS_REC, NULL) == 0;
    if (!have_cgroup) rmdir(keep);
  }
  if (mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) return step__fail(s, -errno, "mount /sys");
  if (have_cgroup) {
    if (mount(keep, "/sys/fs/cgroup", NULL, MS_MOVE, NULL) < 0) umount2(keep, MNT_DETACH);
    rmdir(keep);
  }
  return 0;
}

static int clone__setup(const struct clone *c, const struct holder_options *o, struct step *s) {
  /* Slave, not private: the host's unmounts (ip netns delete) must still reach our copy, or our
   * copy of another clone's /run/netns mount would keep that clone's network alive. */
  if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0) return step__fail(s, -errno, "make / rslave");
  /* Nor should we hold copies of other namespaces' mounts at all. */
  umount2("/run/netns", MNT_DETACH);
  if (sethostname(c->name, strlen(c->name)) < 0) return step__fail(s, -errno, "sethostname %s", c->name);
  /* Before the private /tmp: FILE may live under the host's /tmp. */
  if (o->hosts_file && mount(o->hosts_file, "/etc/hosts", NULL, MS_BIND, NULL) < 0)
    return step__fail(s, -errno, "bind %s on /etc/hosts", o->hosts_file);
  /* A host without /etc/resolv.conf has no DNS to hang on: nothing to replace then. */
  if (o->resolv_file && access("/etc/resolv.conf", F_OK) == 0 && mount(o->resolv_file, "/etc/resolv.conf", NULL, MS_BIND, NULL) < 0)
    return step__fail(s, -errno, "bind %s on /etc/resolv.conf", o->resolv_file);
  if (mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777") < 0) return step__fail(s, -errno, "mount /dev/shm");
  int rc = clone__private_tmp(o, s);
  if (rc < 0) return rc;
  if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0) return step__fail(s, -errno, "mount /proc");
  return clone__own_sysfs(s);
}

/* The new clone's first code: sets it up, says "ok" or why not on its pipe, then is its init. */
static void __attribute__((noreturn)) clone__main(const struct clone *c, const struct holder_options *o, int ready) {
  /* A clone never outlives its holder, however the holder ends (SIGKILL, SIGPIPE, a crash): the
   * clone's PID 1 dies with it, and so does every process in the clone. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  sf_stdio_to_null();
  /* Hold nothing of our parent's (other clones' pipes, the host namespace): only the ready pipe. */
  if (ready > 3) close_range(3, (unsigned)ready - 1, 0);
  close_range((unsigned)ready + 1, ~0U, 0);
  struct step s;
  int rc = clone__setup(c, o, &s);
  char msg[400];
  int n = rc < 0 ? snprintf(msg, sizeof msg, "%s: %s", s.what, strerror(-rc)) : snprintf(msg, sizeof msg, "ok");
  if (n > (int)sizeof msg - 1) n = sizeof msg - 1;
  if (sf_write_all(ready, msg, (size_t)n) < 0 || rc < 0) _exit(1);
  close(ready);
  sf_reap_forever();
}

/* ---- the batch, from the host ---- */

static int clone__start(struct clone *c, const struct holder_options *o) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) return -errno;
  fflush(NULL);
  pid_t pid = (pid_t)syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNS | SIGCHLD,
                             NULL, NULL, NULL, NULL);
  if (pid < 0) {
    int err = -errno;
    close(p[0]);
    close(p[1]);
    return err;
  }
  if (pid == 0) {
    close(p[0]);
    clone__main(c, o, p[1]);
  }
  close(p[1]);
  c->pid = pid;
  c->ready = p[0];
  return 0;
}

/* Reads the clone's "ok", or reports why it is not; 0 or -1. */
static int clone__await_ready(struct clone *c) {
  char buf[512];
  ssize_t r;
  do r = read(c->ready, buf, sizeof buf - 1); while (r < 0 && errno == EINTR);
  close(c->ready);
  c->ready = -1;
  if (r == 2 && memcmp(buf, "ok", 2) == 0) return 0;
  buf[r > 0 ? r : 0] = 0;
  sf_err(0, "clone %s: %s", c->name, r > 0 ? buf : "died during setup");
  return -1;
}

static void holder__kill_all(struct holder *h) {
  for (int i = 0; i < h->n; i++)
    if (h->clones[i].pid > 0) kill(h->clones[i].pid, SIGKILL);
  while (wait(NULL) > 0 || errno == EINTR) {}
}

static int holder__start_clones(struct holder *h) {
  for (int i = 0; i < h->n; i++) {
    int rc = clone__start(&h->clones[i], &h->opt);
    if (rc < 0) return sf_err(rc, "cannot create namespaces for %s", h->clones[i].name), rc;
  }
  int bad = 0;
  for (int i = 0; i < h->n; i++) bad |= clone__await_ready(&h->clones[i]) < 0;
  return bad ? -1 : 0;
}

/* ---- "net" ---- */

/* Every sibling of clone `self` that has an address and a MAC, into neigh; their count. */
static int holder__siblings(const struct holder *h, int self, struct netconf_neigh *neigh) {
  int m = 0;
  for (int j = 0; j < h->n; j++) {
    const struct clone *s = &h->clones[j];
    if (j == self || !s->has_addr || !s->has_mac) continue;
    neigh[m].addr = s->addr;
    memcpy(neigh[m].mac, s->mac, 6);
    m++;
  }
  return m;
}

/*
 * Configures clone i's network from inside its namespace (and comes back to the host's). On
 * success its watch socket hears the clone's link changes, for holder__wait_forwarding.
 */
static int holder__configure_clone(struct holder *h, int i, struct netconf_neigh *scratch, struct step *s) {
  struct clone *c = &h->clones[i];
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/ns/net", (int)c->pid);
  int ns = open(path, O_RDONLY | O_CLOEXEC);
  if (ns < 0 || setns(ns, CLONE_NEWNET) < 0) {
    int err = -errno;
    if (ns >= 0) close(ns);
    return step__fail(s, err, "cannot enter %s", path);
  }
  close(ns);
  /* Joined before eth0 comes up, so that no change of it goes unheard. */
  int rc = nl__open(&c->watch, 1);
  if (rc < 0) step__fail(s, rc, "netlink socket");
  if (rc == 0) {
    struct netconf conf = {
        .ifname = c->has_addr ? "eth0" : NULL,
        .has_addr = c->has_addr,
        .addr = c->addr,
        .prefix = h->opt.prefix,
        .has_gateway = c->has_addr && h->opt.has_gateway,
        .gateway = h->opt.gateway,
        .gso_max = c->has_addr ? h->opt.gso_max : 0,
        .neigh = scratch,
        .n_neigh = c->has_addr ? holder__siblings(h, i, scratch) : 0,
    };
    const char *what = "";
    rc = netconf__apply(&conf, &c->eth0, &what);
    if (rc < 0) step__fail(s, rc, "%s", what);
  }
  if (setns(h->host_net, CLONE_NEWNET) < 0) sf_die(1, -errno, "back to the host network");
  return rc;
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

/* Whether clone c's network forwards: 1, 0 (not yet: *why says what is missing), or -errno. */
static int clone__forwards(struct clone *c, struct nl *host, const char **why) {
  struct nl_link_state in, out;
  int rc = nl__link_state(&c->watch, c->eth0, &in);
  if (rc < 0) return *why = "eth0 state", rc;
  if (in.operstate != IF_OPER_UP || !(in.flags & IFF_LOWER_UP) || in.peer <= 0) return *why = "eth0 not operationally up", 0;
  rc = nl__link_state(host, in.peer, &out);
  if (rc < 0) return *why = "host side of eth0", rc;
  if (out.operstate != IF_OPER_UP || !(out.flags & IFF_LOWER_UP)) return *why = "host side not operationally up", 0;
  char ifname[IF_NAMESIZE];
  if (!if_indextoname((unsigned)in.peer, ifname) || brport_state(ifname) != BR_STATE_FORWARDING)
    return *why = "host side not a forwarding bridge port", 0;
  c->veth = in.peer;
  return 1;
}

static long elapsed_ms(const struct timespec *t0) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (now.tv_sec - t0->tv_sec) * 1000 + (now.tv_nsec - t0->tv_nsec) / 1000000;
}

/*
 * An administratively up eth0 does not forward yet. Its carrier (and its host-side peer's) comes on
 * at once, but the kernel acts on it later, in the link-watch work (a kworker that needs the RTNL
 * lock; on a loaded host it runs late): until then both ends keep the no-op qdisc, which drops every
 * frame sent, and the bridge keeps the port disabled, which drops every frame that arrives. A clone
 * that sends then loses its first ARP requests or SYNs (retried only after 1 s, and ARP gives up
 * after 3: "destination unreachable"). So a clone is ready only when its eth0 is operationally up
 * and its peer is up with carrier and a forwarding port of the bridge. We wait for the kernel's own
 * link notifications (no sleeping, no polling); the bound only turns a stuck kernel into an error.
 * Runs in the host's network namespace; host_watch hears the host's link changes.
 */
static int holder__wait_forwarding(struct holder *h, struct nl *host_watch, struct step *s) {
  struct nl host;
  int rc = nl__open(&host, 0);
  if (rc < 0) return step__fail(s, rc, "netlink socket");
  char *ready = sf_calloc((size_t)h->n, 1);
  struct pollfd *pfd = sf_array((size_t)h->n + 1, sizeof *pfd);
  if (!ready || !pfd) rc = step__fail(s, -ENOMEM, "wait for the links");
  struct timespec t0;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int left = h->n, bad = -1;
  const char *why = "";
  while (rc == 0) {
    for (int i = 0; i < h->n && rc == 0; i++) {
      if (ready[i]) continue;
      int ok = h->clones[i].eth0 ? clone__forwards(&h->clones[i], &host, &why) : 1;
      if (ok < 0) rc = ok, bad = i;
      else if (ok) ready[i] = 1, left--;
      else bad = i;
    }
    if (rc < 0 || left == 0) break;
    long ms = elapsed_ms(&t0);
    if (ms >= NET_READY_TIMEOUT_MS) {
      rc = -ETIMEDOUT;
      break;
    }
    /* Sleep until a link changes, here or in a clone not yet ready. */
    int m = 0;
    pfd[m++] = (struct pollfd){.fd = host_watch->fd, .events = POLLIN};
    for (int i = 0; i < h->n; i++)
      if (!ready[i]) pfd[m++] = (struct pollfd){.fd = h->clones[i].watch.fd, .events = POLLIN};
    if (poll(pfd, (nfds_t)m, (int)(NET_READY_TIMEOUT_MS - ms)) < 0 && errno != EINTR) rc = -errno, why = "poll";
    /* Drain what was heard: only the wake-up matters (an overflow, ENOBUFS, is a wake-up too). */
    nl__drain(host_watch);
    for (int i = 0; i < h->n; i++)
      if (!ready[i]) nl__drain(&h->clones[i].watch);
  }
  if (rc < 0 && bad >= 0)
    step__fail(s, rc, "%s: %s%s", h->clones[bad].name, why, rc == -ETIMEDOUT ? ": still so after 20 s" : "");
  nl__close(&host);
  free(ready);
  free(pfd);
  return rc;
}

/*
 * The shortcut between the clones of the batch. Speed only: where the kernel refuses it (no BPF,
 * a kernel before 5.10), frames between the clones take the bridge, and a note says why.
 */
static void holder__shortcut(struct holder *h) {
  struct shortcut_port *ports = sf_array((size_t)h->n, sizeof *ports);
  struct nl host = {.fd = -1};
  const char *step = ports ? "netlink socket" : "ports";
  int n = 0, rc = ports ? nl__open(&host, 0) : -ENOMEM;
  for (int i = 0; i < h->n && rc == 0; i++) {
    const struct clone *c = &h->clones[i];
    if (!c->veth || !c->has_mac) continue;
    memcpy(ports[n].mac, c->mac, 6);
    ports[n++].veth = c->veth;
  }
  if (rc == 0 && n > 1) rc = shortcut__attach(&host, ports, n, &step);
  if (rc < 0) printf("note: no shortcut between the clones (the bridge carries their frames): %s: %s\n", step, strerror(-rc));
  nl__close(&host);
  free(ports);
}

/* "net": configures every clone, then waits until every one forwards. Answers on stdout. */
static void holder__net(struct holder *h) {
  struct step s = {""};
  struct nl host_watch = {.fd = -1};
  struct netconf_neigh *scratch = sf_array((size_t)h->n, sizeof *scratch);
  /* Joined before any clone's eth0 comes up (see holder__wait_forwarding). */
  int rc = scratch ? nl__open(&host_watch, 1) : -ENOMEM;
  if (rc < 0) printf("error: cannot watch the links: %s\n", strerror(-rc));
  for (int i = 0; i < h->n && rc == 0; i++) {
    rc = holder__configure_clone(h, i, scratch, &s);
    if (rc < 0) printf("error: %s: %s: %s\n", h->clones[i].name, s.what, strerror(-rc));
  }
  if (rc == 0 && (rc = holder__wait_forwarding(h, &host_watch, &s)) < 0)
    printf("error: network not forwarding: %s%s%s\n", s.what, rc == -ETIMEDOUT ? "" : ": ", rc == -ETIMEDOUT ? "" : strerror(-rc));
  if (rc == 0 && h->opt.shortcut) holder__shortcut(h);
  for (int i = 0; i < h->n; i++) nl__close(&h->clones[i].watch);
  nl__close(&host_watch);
  free(scratch);
  if (rc == 0) printf("configured\n");
  fflush(stdout);
}

/* ---- after "go" ---- */

/*
 * Stays as the clones' parent so that they are reaped when killed (PID 1 of the host may not
 * reap), until none is left. With an owner, its end (the pidfd turns readable) kills them all.
 */
static void holder__hold(struct holder *h) {
  sf_stdio_to_null();
  signal(SIGHUP, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  int alive = h->n;
  for (;;) {
    /* Reaped before every wait: a clone that died before SIGCHLD was blocked here (its signal
     * discarded, as SIGCHLD's default is) would otherwise be waited for forever. */
    while (waitpid(-1, NULL, WNOHANG) > 0) alive--;
    if (alive <= 0) break;
    struct pollfd pf[2] = {{.fd = sfd, .events = POLLIN}, {.fd = h->owner, .events = POLLIN}};
    /* Without a signalfd (no memory for it), reaping falls back to a short period. */
    if (poll(pf, 2, sfd < 0 ? 100 : -1) < 0 && errno != EINTR) break;
    if (pf[1].revents) {
      holder__kill_all(h);
      break;
    }
    struct signalfd_siginfo si;
    while (sfd >= 0 && read(sfd, &si, sizeof si) > 0) {}
  }
  if (sfd >= 0) close(sfd);
}

/* Commands, one per line: "net" (any number of times), then "go". Returns 0 at "go", else -1. */
static int holder__commands(struct holder *h) {
  char line[64];
  while (fgets(line, sizeof line, stdin)) {
    if (strncmp(line, "net", 3) == 0) holder__net(h);
    else if (strncmp(line, "go", 2) == 0) return 0;
    else break;
  }
  return -1;
}

static int holder__init(struct holder *h) {
  h->host_net = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
  if (h->host_net < 0) return sf_err(-errno, "/proc/self/ns/net"), -1;
  if (!h->opt.has_owner) return 0;
  h->owner = sf_proc_open_identity(h->opt.owner_pid, h->opt.owner_start);
  if (h->owner == -ESRCH)
    return sf_err(0, "the owner %d:%llu is gone already; nothing was created", (int)h->opt.owner_pid, h->opt.owner_start), -1;
  if (h->owner < 0) return sf_err(h->owner, "pidfd of the owner %d", (int)h->opt.owner_pid), -1;
  return 0;
}

static void holder__exit(struct holder *h) {
  if (h->owner >= 0) close(h->owner);
  if (h->host_net >= 0) close(h->host_net);
  free(h->clones);
}

int main(int argc, char **argv) {
  sf_prog("holder");
  signal(SIGPIPE, SIG_IGN);
  struct holder h = {.host_net = -1, .owner = -1};
  int status = 1;
  if (holder__parse(&h, argc, argv) < 0) {
    status = 2;
    goto out;
  }
  if (holder__init(&h) < 0) goto out;
  /* Our own death before "go" must take the clones along; after "go" we detach on purpose. */
  if (holder__start_clones(&h) < 0) {
    holder__kill_all(&h);
    goto out;
  }
  for (int i = 0; i < h.n; i++) printf("%d\n", (int)h.clones[i].pid);
  printf("ready\n");
  /* An engine that is gone cannot record the clones: they must not stay (EPIPE, not SIGPIPE). */
  if (fflush(stdout) != 0) {
    holder__kill_all(&h);
    goto out;
  }
  if (holder__commands(&h) < 0) {
    holder__kill_all(&h);
    goto out;
  }
  holder__hold(&h);
  status = 0;
out:
  holder__exit(&h);
  return status;
}
