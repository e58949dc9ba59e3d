/*
 * snowflock guest agent: PID 1 of a VM guest (static, no libc of the guest needed).
 *
 * Boot: mounts the pseudo file systems, loads the virtio modules listed in /etc/snowflock/modules
 * (one .ko path a line, in load order), opens the control port and says HELLO. The host
 * checkpoints the template right after HELLO, so everything below the HELLO runs again in every
 * clone from the point where the template stopped: blocked in poll() on the control port.
 *
 * Control channel: a virtio-serial port (named "sf.ctl", /dev/vport*p1) whose host side is a unix
 * socket of the QEMU process; it is host-only, nothing on the network can reach it. The frames it
 * carries are defined in proto/agent.h. Why a multiplexed serial channel rather than SSH or TCP:
 * an exec over it costs a few ms under TCG (no key exchange), and it exists before the guest has
 * an address.
 *
 * PID 1 must never die: the kernel panics. So nothing here exits or aborts once booted; a failure
 * is reported to the host (a FAILED frame for that exec or identity, a line on the console) and the
 * agent carries on. Every allocation is checked for that reason.
 *
 * On the host (not PID 1), `agent --control-fd N` speaks the protocol on fd N instead, so that
 * the agent's frame handling can be tested without a VM; there, the end of the channel ends it.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <linux/random.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <netinet/in.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/netconf.h"
#include "common/sf.h"
#include "proto/agent.h"

#define MAX_PROCS 256
/* Output is read and sent in frames of at most this much. */
#define OUTPUT_CHUNK 32768
/*
 * STDIN bytes a process has not read yet are held here, up to this much; beyond it they are
 * dropped with a note on the process's stderr. (The protocol has no flow control: the bound keeps
 * a fast writer and a slow reader from filling the guest's memory, which would kill PID 1.)
 */
#define STDIN_MAX_HELD (32u << 20)

struct proc {
  uint32_t sid;
  pid_t pid; /* 0: free slot */
  int out, err, in; /* -1 when closed */
  int exited;
  int status;
  char *inbuf; /* stdin bytes the process has not read yet */
  size_t inlen;
  int in_eof;
};

struct agent {
  int ctl;
  int sigfd;
  /*
   * Whether a host is connected to the control port. While none is, the port polls as hung up at
   * once, so the main loop leaves it out and waits for SIGIO, which virtio_console sends when the
   * host side opens (or for a slow periodic re-check): an idle clone must not spin, under TCG
   * every wake-up is emulated.
   */
  int host_connected;
  /* On the host (--control-fd): the end of the channel ends the agent. */
  int hosted;
  int done;
  /* Port 22, once the identity asked for SSH: each connection gets a dropbear of its own. */
  int ssh_listen;
  struct agent_reader reader;
  struct proc procs[MAX_PROCS];
};

/* ---- sending frames ---- */

/* Writes all of iov, waiting out a full port; 0 or -errno. */
static int agent__write(struct agent *a, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t w = writev(a->ctl, iov, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pf = {.fd = a->ctl, .events = POLLOUT};
        poll(&pf, 1, 100);
        continue;
      }
      return -errno;
    }
    while (n > 0 && (size_t)w >= iov->iov_len) {
      w -= (ssize_t)iov->iov_len;
      iov++, n--;
    }
    if (n > 0) {
      iov->iov_base = (char *)iov->iov_base + w;
      iov->iov_len -= (size_t)w;
    }
  }
  return 0;
}

/* One frame, header and payload in one writev (never interleaved: the agent is single-threaded). */
static void agent__send(struct agent *a, uint8_t type, uint32_t sid, const void *data, size_t len) {
  unsigned char hdr[AGENT_HEADER_SIZE];
  struct agent_header h = {.len = (uint32_t)len, .type = type, .sid = sid};
  agent_header__encode(hdr, &h);
  struct iovec iov[2] = {{hdr, sizeof hdr}, {(void *)data, len}};
  int rc = agent__write(a, iov, len ? 2 : 1);
  if (rc < 0) sf_err(rc, "write to the control port");
}

static void agent__send_text(struct agent *a, uint8_t type, uint32_t sid, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void agent__send_text(struct agent *a, uint8_t type, uint32_t sid, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) n = 0;
  if (n >= (int)sizeof buf) n = sizeof buf - 1;
  agent__send(a, type, sid, buf, (size_t)n);
}

/* ---- boot ---- */

static void boot__mount(const char *src, const char *dir, const char *type, const char *opts) {
  if (mkdir(dir, 0755) < 0 && errno != EEXIST) sf_err(-errno, "mkdir %s", dir);
  if (mount(src, dir, type, 0, opts) < 0) sf_err(-errno, "mount %s", dir);
}

static void boot__mounts(void) {
  boot__mount("proc", "/proc", "proc", NULL);
  boot__mount("sysfs", "/sys", "sysfs", NULL);
  boot__mount("devtmpfs", "/dev", "devtmpfs", NULL);
  boot__mount("devpts", "/dev/pts", "devpts", "ptmxmode=0666");
  boot__mount("tmpfs", "/dev/shm", "tmpfs", "mode=1777");
  /* /tmp stays part of the root (already in RAM): the job's working directory may live there. */
  if (mkdir("/tmp", 01777) < 0 && errno != EEXIST) sf_err(-errno, "mkdir /tmp");
  int fd = open("/dev/console", O_RDWR);
  if (fd >= 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    if (fd > 2) close(fd);
  }
}

static void boot__load_modules(void) {
  FILE *f = fopen("/etc/snowflock/modules", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = 0;
    if (!line[0]) continue;
    int fd = open(line, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      sf_err(-errno, "module %s", line);
      continue;
    }
    if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) sf_err(-errno, "load %s", line);
    close(fd);
  }
  fclose(f);
}

/* Whether the virtio port dev (an entry of /sys/class/virtio-ports) is ours, "sf.ctl". */
static int boot__is_control_port(const char *dev) {
  char path[300], name[64] = {0};
  snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", dev);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, name, sizeof name - 1);
  close(fd);
  return n > 0 && strncmp(name, "sf.ctl", 6) == 0;
}

/* The port's device node appears once virtio_console has probed; find it by its name in sysfs. */
static int boot__open_control_port(void) {
  for (int tries = 0; tries < 500; tries++) {
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    while (d && (e = readdir(d))) {
      if (e->d_name[0] == '.' || !boot__is_control_port(e->d_name)) continue;
      char path[300];
      snprintf(path, sizeof path, "/dev/%s", e->d_name);
      int fd = open(path, O_RDWR | O_CLOEXEC);
      if (fd >= 0) {
        closedir(d);
        return fd;
      }
    }
    if (d) closedir(d);
    usleep(10000);
  }
  return -ENODEV;
}

/* ---- identity ---- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Credits hex bytes to the kernel RNG and reseeds the CRNG now, not at its next scheduled reseed. */
static int ident__add_entropy(const char *hex) {
  size_t n = strlen(hex);
  if (n == 0 || n % 2) return -EINVAL;
  n /= 2;
  struct rand_pool_info *info = sf_malloc(sizeof *info + n);
  if (!info) return -ENOMEM;
  unsigned char *buf = (unsigned char *)info->buf;
  for (size_t i = 0; i < n; i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      free(info);
      return -EINVAL;
    }
    buf[i] = (unsigned char)(hi << 4 | lo);
  }
  info->buf_size = (int)n;
  info->entropy_count = (int)(n * 8);
  int rc = 0, fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
  if (fd < 0) rc = -errno;
  else if (ioctl(fd, RNDADDENTROPY, info) != 0) rc = -errno;
  else if (ioctl(fd, RNDRESEEDCRNG) != 0) rc = -errno;
  if (fd >= 0) close(fd);
  free(info);
  return rc;
}

/* "seconds.nanoseconds" -> the wall clock. */
static int ident__set_time(const char *text) {
  struct timespec ts = {0};
  char *end;
  errno = 0;
  ts.tv_sec = strtoll(text, &end, 10);
  if (errno || end == text || (*end && *end != '.')) return -EINVAL;
  if (*end == '.') {
    const char *frac = end + 1;
    long ns = strtol(frac, &end, 10);
    if (*end || end == frac || ns < 0 || ns > 999999999) return -EINVAL;
    ts.tv_nsec = ns;
  }
  return clock_settime(CLOCK_REALTIME, &ts) == 0 ? 0 : -errno;
}

/* /etc/hosts: localhost and the given lines ('|' separated). */
static int ident__write_hosts(char *lines) {
  for (char *p = lines; *p; p++)
    if (*p == '|') *p = '\n';
  int fd = open("/etc/hosts", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return -errno;
  static const char local[] = "127.0.0.1 localhost\n";
  int rc = sf_write_all(fd, local, sizeof local - 1);
  if (rc == 0) rc = sf_write_all(fd, lines, strlen(lines));
  if (rc == 0) rc = sf_write_all(fd, "\n", 1);
  if (close(fd) < 0 && rc == 0) rc = -errno;
  return rc;
}

/* eth0 from the identity: the clone's MAC first (the template's is in the saved device state and
 * must never appear on the bridge), then address, up, default route. */
static int ident__configure_net(const struct agent_ident *id, const char **step) {
  struct netconf c = {.ifname = "eth0"};
  const char *mac = id->value[AGENT_IDENT_MAC], *addr = id->value[AGENT_IDENT_ADDR], *gw = id->value[AGENT_IDENT_GW];
  if (mac && *mac) {
    if (netconf__parse_mac(mac, c.mac) < 0) return *step = "bad mac", -EINVAL;
    c.has_mac = 1;
  }
  if (addr && *addr) {
    if (netconf__parse_cidr(addr, &c.addr, &c.prefix) < 0) return *step = "bad addr (a.b.c.d/len)", -EINVAL;
    c.has_addr = 1;
  }
  if (gw && *gw) {
    if (netconf__parse_addr(gw, &c.gateway) < 0) return *step = "bad gw", -EINVAL;
    c.has_gateway = 1;
  }
  const char *mtu = id->value[AGENT_IDENT_MTU];
  if (mtu && *mtu) {
    long v;
    if (sf_parse_long(mtu, 68, 65535, &v) < 0) return *step = "bad mtu (68-65535)", -EINVAL;
    c.mtu = (unsigned)v;
  }
  int ifindex;
  return netconf__apply(&c, &ifindex, step);
}

/*
 * SSH the way inetd serves it: the agent listens on port 22 and starts a dropbear for each
 * connection (dropbear -i, the connection on its stdin and stdout). No dropbear runs until someone
 * connects: under TCG, a resident dropbear starting in every clone at IDENT cost about a quarter of
 * a clone's CPU until ready, and its memory (issue 13). A connection costs one dropbear start,
 * small next to its emulated key exchange (about 150 ms).
 */
static int ident__listen_ssh(void) {
  int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int v6 = fd >= 0;
  if (!v6) fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return sf_err(-errno, "ssh: socket"), -errno;
  int one = 1, zero = 0;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (v6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
  struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(22), .sin6_addr = IN6ADDR_ANY_INIT};
  struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(22), .sin_addr.s_addr = htonl(INADDR_ANY)};
  int rc = v6 ? bind(fd, (struct sockaddr *)&a6, sizeof a6) : bind(fd, (struct sockaddr *)&a4, sizeof a4);
  if (rc < 0 || listen(fd, 64) < 0) {
    rc = -errno;
    close(fd);
    return sf_err(rc, "ssh: port 22"), rc;
  }
  return fd;
}

/* One connection to port 22: a dropbear of its own serves it. */
static void agent__serve_ssh(struct agent *a) {
  int conn;
  while ((conn = accept4(a->ssh_listen, NULL, NULL, SOCK_CLOEXEC)) < 0 && errno == EINTR) {
  }
  if (conn < 0) return;
  pid_t p = fork();
  if (p < 0) sf_err(-errno, "fork for dropbear");
  if (p != 0) {
    close(conn);
    return;
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  setsid();
  dup2(conn, STDIN_FILENO);
  dup2(conn, STDOUT_FILENO);
  /* -i: inetd mode (this connection; it refuses -E, logging to stderr); -s: no passwords. */
  execl("/usr/sbin/dropbear", "dropbear", "-i", "-s", "-r", "/etc/dropbear/dropbear_ed25519_host_key", (char *)NULL);
  _exit(127);
}

/* IDENT: applies what it names; READY with the hostname, or FAILED (stream 0) if the network fails. */
static void agent__apply_identity(struct agent *a, const char *payload, size_t len) {
  char *text = sf_strndup(payload, len);
  if (!text) {
    agent__send_text(a, AGENT_FAILED, AGENT_GUEST_STREAM, "identity: out of memory");
    return;
  }
  struct agent_ident id;
  agent_ident__parse(text, &id);
  const char *v;
  int rc;
  if ((v = id.value[AGENT_IDENT_ENTROPY]) && (rc = ident__add_entropy(v)) < 0) sf_err(rc, "entropy");
  if ((v = id.value[AGENT_IDENT_TIME]) && (rc = ident__set_time(v)) < 0) sf_err(rc, "set the time to %s", v);
  const char *host = id.value[AGENT_IDENT_HOSTNAME];
  if (host && sethostname(host, strlen(host)) != 0) sf_err(-errno, "sethostname %s", host);
  if ((v = id.value[AGENT_IDENT_HOSTS]) && (rc = ident__write_hosts((char *)v)) < 0) sf_err(rc, "/etc/hosts");
  const char *step = "";
  rc = ident__configure_net(&id, &step);
  if (rc < 0) agent__send_text(a, AGENT_FAILED, AGENT_GUEST_STREAM, "network: %s: %s", step, strerror(-rc));
  else {
    if ((v = id.value[AGENT_IDENT_SSH]) && strcmp(v, "1") == 0 && a->ssh_listen < 0) a->ssh_listen = ident__listen_ssh();
    agent__send_text(a, AGENT_READY, AGENT_GUEST_STREAM, "%s", host ? host : "");
  }
  free(text);
}

/* ---- processes ---- */

static struct proc *agent__find(struct agent *a, uint32_t sid) {
  for (int i = 0; i < MAX_PROCS; i++)
    if (a->procs[i].pid && a->procs[i].sid == sid) return &a->procs[i];
  return NULL;
}

static struct proc *agent__free_slot(struct agent *a) {
  for (int i = 0; i < MAX_PROCS; i++)
    if (!a->procs[i].pid) return &a->procs[i];
  return NULL;
}

static void close_fds(int *fds, int n) {
  for (int i = 0; i < n; i++)
    if (fds[i] >= 0) close(fds[i]), fds[i] = -1;
}

/* In the forked child: becomes the process, or writes why not to status and exits 127. */
static void proc__exec_child(const struct agent_exec *e, int in, int out, int err, int status) {
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  setpgid(0, 0);
  char msg[600];
  int n;
  int stdin_fd = e->want_stdin ? in : open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (stdin_fd < 0 || dup2(stdin_fd, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0) {
    n = snprintf(msg, sizeof msg, "cannot set up stdio: %s", strerror(errno));
  } else if (chdir(e->cwd) != 0) {
    n = snprintf(msg, sizeof msg, "cannot enter working directory %s: %s", e->cwd, strerror(errno));
  } else {
    /* execvp looks PATH up in our environ: make it the process's own environment. */
    environ = e->envp;
    execvp(e->argv[0], e->argv);
    n = snprintf(msg, sizeof msg, "cannot run %s: %s", e->argv[0], strerror(errno));
  }
  if (n > (int)sizeof msg - 1) n = sizeof msg - 1;
  if (n > 0 && write(status, msg, (size_t)n) < 0) { /* nothing left to tell */ }
  _exit(127);
}

/* Forks the process of e with its pipes; STARTED, or FAILED with the reason. */
static void proc__spawn(struct agent *a, struct proc *slot, uint32_t sid, const struct agent_exec *e) {
  /* out, err, in, status: [read end, write end] each */
  int o[2] = {-1, -1}, er[2] = {-1, -1}, in[2] = {-1, -1}, st[2] = {-1, -1};
  if (pipe2(o, O_CLOEXEC) || pipe2(er, O_CLOEXEC) || pipe2(in, O_CLOEXEC) || pipe2(st, O_CLOEXEC)) {
    agent__send_text(a, AGENT_FAILED, sid, "pipe: %s", strerror(errno));
    int all[] = {o[0], o[1], er[0], er[1], in[0], in[1], st[0], st[1]};
    close_fds(all, 8);
    return;
  }
  pid_t pid = fork();
  if (pid == 0) proc__exec_child(e, in[0], o[1], er[1], st[1]);
  int child_ends[] = {o[1], er[1], in[0], st[1]};
  close_fds(child_ends, 4);
  if (pid < 0) {
    agent__send_text(a, AGENT_FAILED, sid, "fork: %s", strerror(errno));
    int ours[] = {o[0], er[0], in[1], st[0]};
    close_fds(ours, 4);
    return;
  }
  /* The status pipe closes on a successful exec (CLOEXEC) or carries the reason it failed. */
  char msg[600];
  ssize_t n;
  do n = read(st[0], msg, sizeof msg - 1); while (n < 0 && errno == EINTR);
  close(st[0]);
  if (n > 0) {
    /* Nothing ran: FAILED is the stream's last frame. The child is exiting already. */
    msg[n] = 0;
    agent__send_text(a, AGENT_FAILED, sid, "%s", msg);
    int ours[] = {o[0], er[0], in[1]};
    close_fds(ours, 3);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    return;
  }
  memset(slot, 0, sizeof *slot);
  slot->sid = sid;
  slot->pid = pid;
  slot->out = o[0];
  slot->err = er[0];
  slot->in = e->want_stdin ? in[1] : -1;
  if (!e->want_stdin) close(in[1]);
  else fcntl(in[1], F_SETFL, O_NONBLOCK);
  agent__send_text(a, AGENT_STARTED, sid, "%d", (int)pid);
}

/* EXEC: decodes the payload and starts the process; every failure is a FAILED on its stream. */
static void agent__exec(struct agent *a, uint32_t sid, const char *payload, size_t len) {
  if (sid == AGENT_GUEST_STREAM || agent__find(a, sid)) {
    agent__send_text(a, AGENT_FAILED, sid, "stream %u is taken", sid);
    return;
  }
  struct proc *slot = agent__free_slot(a);
  if (!slot) {
    agent__send_text(a, AGENT_FAILED, sid, "too many processes in this guest (%d)", MAX_PROCS);
    return;
  }
  struct agent_exec e;
  const char *why = "";
  int rc = agent_exec__decode(payload, len, &e, &why);
  if (rc < 0) {
    agent__send_text(a, AGENT_FAILED, sid, "bad EXEC: %s", why);
    return;
  }
  proc__spawn(a, slot, sid, &e);
  agent_exec__free(&e);
}

static void proc__flush_stdin(struct proc *pr) {
  while (pr->in >= 0 && pr->inlen > 0) {
    ssize_t n = write(pr->in, pr->inbuf, pr->inlen);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      pr->inlen = 0; /* the process closed its stdin: drop what it will never read */
      break;
    }
    memmove(pr->inbuf, pr->inbuf + n, pr->inlen - (size_t)n);
    pr->inlen -= (size_t)n;
  }
  if (pr->in >= 0 && pr->in_eof && pr->inlen == 0) {
    close(pr->in);
    pr->in = -1;
  }
}

/* Ends the process's stdin early because its bytes cannot be held; says so on its stderr. */
static void agent__drop_stdin(struct agent *a, struct proc *pr, const char *why) {
  static const char note[] = "sf-agent: the rest of stdin was dropped: ";
  char line[200];
  int n = snprintf(line, sizeof line, "%s%s\n", note, why);
  agent__send(a, AGENT_STDERR, pr->sid, line, n > 0 && n < (int)sizeof line ? (size_t)n : 0);
  sf_err(0, "stream %u: stdin dropped: %s", pr->sid, why);
  free(pr->inbuf);
  pr->inbuf = NULL;
  pr->inlen = 0;
  pr->in_eof = 1;
  close(pr->in);
  pr->in = -1;
}

static void agent__stdin(struct agent *a, uint32_t sid, const char *p, size_t len) {
  struct proc *pr = agent__find(a, sid);
  if (!pr || pr->in < 0) return;
  if (len == 0) pr->in_eof = 1;
  else if (pr->inlen + len > STDIN_MAX_HELD) {
    agent__drop_stdin(a, pr, "more unread bytes than the agent holds (32 MiB)");
    return;
  } else {
    char *b = sf_realloc(pr->inbuf, pr->inlen + len);
    if (!b) {
      agent__drop_stdin(a, pr, "out of memory");
      return;
    }
    pr->inbuf = b;
    memcpy(pr->inbuf + pr->inlen, p, len);
    pr->inlen += len;
  }
  proc__flush_stdin(pr);
}

static void agent__kill(struct agent *a, uint32_t sid, const char *p, size_t len) {
  struct proc *pr = agent__find(a, sid);
  char text[16] = "";
  long sig;
  memcpy(text, p, len < sizeof text - 1 ? len : sizeof text - 1);
  if (sf_parse_long(text, 1, 64, &sig) < 0) {
    sf_err(0, "stream %u: KILL with a bad signal number '%s'", sid, text);
    return;
  }
  if (pr && !pr->exited && kill(pr->pid, (int)sig) < 0) sf_err(-errno, "stream %u: kill %d", sid, (int)pr->pid);
}

/* EXIT once the process has ended and both its streams have; frees the slot. */
static void agent__maybe_finish(struct agent *a, struct proc *pr) {
  if (!pr->exited || pr->out >= 0 || pr->err >= 0) return;
  char text[32];
  int n = agent_exit__format(text, sizeof text, pr->status);
  if (n < 0) n = snprintf(text, sizeof text, AGENT_EXIT_SIGNAL " %d", SIGKILL);
  agent__send(a, AGENT_EXIT, pr->sid, text, (size_t)n);
  if (pr->in >= 0) close(pr->in);
  free(pr->inbuf);
  memset(pr, 0, sizeof *pr);
}

static void agent__reap(struct agent *a) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (int i = 0; i < MAX_PROCS; i++)
      if (a->procs[i].pid == pid && !a->procs[i].exited) {
        a->procs[i].exited = 1;
        a->procs[i].status = status;
        agent__maybe_finish(a, &a->procs[i]);
      }
  }
}

/* Forwards what one of the process's output pipes has; the end of it is an empty frame. */
static void agent__pump(struct agent *a, struct proc *pr, int *fd, uint8_t type) {
  char buf[OUTPUT_CHUNK];
  ssize_t n = read(*fd, buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    close(*fd);
    *fd = -1;
    agent__send(a, type, pr->sid, NULL, 0);
    agent__maybe_finish(a, pr);
    return;
  }
  agent__send(a, type, pr->sid, buf, (size_t)n);
}

/* ---- control frames ---- */

static void agent__handle(struct agent *a, const struct agent_frame *f) {
  switch (f->h.type) {
  case AGENT_IDENT:
    /* On a host, an identity would rename the host and reconfigure its eth0. */
    if (a->hosted) agent__send_text(a, AGENT_FAILED, AGENT_GUEST_STREAM, "identity refused: this agent runs on a host (--control-fd)");
    else agent__apply_identity(a, f->payload, f->h.len);
    break;
  case AGENT_EXEC: agent__exec(a, f->h.sid, f->payload, f->h.len); break;
  case AGENT_STDIN: agent__stdin(a, f->h.sid, f->payload, f->h.len); break;
  case AGENT_KILL: agent__kill(a, f->h.sid, f->payload, f->h.len); break;
  default: sf_err(0, "unknown frame type %u on stream %u", f->h.type, f->h.sid);
  }
}

/* A frame the reader could not take: it is skipped; its sender learns why on its stream. */
static void agent__refuse(struct agent *a, const struct agent_frame *f, int why) {
  const char *name = agent_frame_type__name(f->h.type);
  sf_err(why == -ENOMEM ? why : 0, "frame %s of %u bytes on stream %u refused", name ? name : "?", f->h.len, f->h.sid);
  if (f->h.type == AGENT_EXEC || f->h.type == AGENT_IDENT)
    agent__send_text(a, AGENT_FAILED, f->h.sid, "%s refused: %u bytes: %s", name, f->h.len,
                     why == -E2BIG ? "longer than the protocol allows" : "out of memory");
  else if (f->h.type == AGENT_STDIN) {
    struct proc *pr = agent__find(a, f->h.sid);
    if (pr && pr->in >= 0) agent__drop_stdin(a, pr, why == -E2BIG ? "a frame longer than the protocol allows" : "out of memory");
  }
}

/* Reads what the control port has and handles every complete frame. */
static void agent__read_control(struct agent *a) {
  long n = agent_reader__read(&a->reader, a->ctl);
  if (n == 0) {
    /* The host side closed. In a guest, a host comes again later (see host_connected), and its
     * stream starts afresh: bytes of a frame the last one left unfinished are dropped. */
    a->host_connected = 0;
    agent_reader__free(&a->reader);
    if (a->hosted) a->done = 1;
    return;
  }
  if (n < 0 && n != -EAGAIN && n != -ENOMEM) sf_err((int)n, "read the control port");
  /* Also after -ENOMEM: the reader then refuses the frame it cannot hold, which frees room. */
  struct agent_frame f;
  int got;
  while ((got = agent_reader__next(&a->reader, &f)) != 0) {
    if (got == 1) agent__handle(a, &f);
    else agent__refuse(a, &f, got);
  }
}

/* ---- the main loop ---- */

enum { WATCH_OUT = 1, WATCH_ERR, WATCH_IN };

struct watch {
  struct proc *pr;
  int which;
};

/* The poll set: the control port, the signalfd, port 22, and each process's open pipes. Returns its size. */
static int agent__poll_set(struct agent *a, struct pollfd *pf, struct watch *who) {
  int n = 0;
  /* fd -1: poll ignores the entry (no host connected, see host_connected; no SSH asked for). */
  pf[n++] = (struct pollfd){.fd = a->host_connected ? a->ctl : -1, .events = POLLIN};
  pf[n++] = (struct pollfd){.fd = a->sigfd, .events = POLLIN};
  pf[n++] = (struct pollfd){.fd = a->ssh_listen, .events = POLLIN};
  for (int i = 0; i < MAX_PROCS; i++) {
    struct proc *pr = &a->procs[i];
    if (!pr->pid) continue;
    if (pr->out >= 0) who[n] = (struct watch){pr, WATCH_OUT}, pf[n++] = (struct pollfd){.fd = pr->out, .events = POLLIN};
    if (pr->err >= 0) who[n] = (struct watch){pr, WATCH_ERR}, pf[n++] = (struct pollfd){.fd = pr->err, .events = POLLIN};
    if (pr->in >= 0 && pr->inlen) who[n] = (struct watch){pr, WATCH_IN}, pf[n++] = (struct pollfd){.fd = pr->in, .events = POLLOUT};
  }
  return n;
}

static void agent__run(struct agent *a) {
  static struct pollfd pf[3 + 3 * MAX_PROCS];
  static struct watch who[3 + 3 * MAX_PROCS];
  while (!a->done) {
    int n = agent__poll_set(a, pf, who);
    /* Without a signalfd, children are reaped on a short period instead. */
    int timeout = !a->host_connected ? 1000 : a->sigfd < 0 ? 100 : -1;
    if (poll(pf, (nfds_t)n, timeout) < 0) continue;
    if (!a->host_connected) {
      /* SIGIO, or the periodic re-check: see whether a host has come. */
      struct pollfd probe = {.fd = a->ctl, .events = POLLIN};
      if (!a->hosted && poll(&probe, 1, 0) >= 0 && !(probe.revents & POLLHUP)) a->host_connected = 1;
    }
    if (pf[1].revents) {
      struct signalfd_siginfo si;
      while (read(a->sigfd, &si, sizeof si) > 0) {}
    }
    if (pf[2].revents & POLLIN) agent__serve_ssh(a);
    for (int i = 3; i < n; i++) {
      struct proc *pr = who[i].pr;
      if (!pf[i].revents || !pr->pid) continue;
      if (who[i].which == WATCH_OUT && pr->out >= 0) agent__pump(a, pr, &pr->out, AGENT_STDOUT);
      else if (who[i].which == WATCH_ERR && pr->err >= 0) agent__pump(a, pr, &pr->err, AGENT_STDERR);
      else if (who[i].which == WATCH_IN) proc__flush_stdin(pr);
    }
    /* Last: a frame may start a process, which changes the poll set. */
    if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) agent__read_control(a);
    agent__reap(a);
  }
}

/* On the host only, when the channel has ended: no process outlives the agent. */
static void agent__exit(struct agent *a) {
  for (int i = 0; i < MAX_PROCS; i++) {
    struct proc *pr = &a->procs[i];
    if (!pr->pid) continue;
    if (!pr->exited) {
      kill(pr->pid, SIGKILL);
      waitpid(pr->pid, NULL, 0);
    }
    int fds[] = {pr->out, pr->err, pr->in};
    close_fds(fds, 3);
    free(pr->inbuf);
    memset(pr, 0, sizeof *pr);
  }
  agent_reader__free(&a->reader);
  if (a->ssh_listen >= 0) close(a->ssh_listen);
  if (a->sigfd >= 0) close(a->sigfd);
  close(a->ctl);
}

/* SIGCHLD and SIGIO come through a signalfd; SIGPIPE is ignored (a write to a closed pipe fails). */
static int agent__signals(void) {
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGPIPE);
  sigaddset(&mask, SIGIO);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  sigdelset(&mask, SIGPIPE);
  int fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (fd < 0) sf_err(-errno, "signalfd (children are reaped every 100 ms instead)");
  return fd;
}

/* --control-fd N, accepted only off PID 1; -1 without it, -2 for anything else. */
static int agent__control_fd_arg(int argc, char **argv) {
  long fd;
  if (argc == 1) return -1;
  if (argc == 3 && strcmp(argv[1], "--control-fd") == 0 && sf_parse_long(argv[2], 0, 1 << 20, &fd) == 0) return (int)fd;
  return -2;
}

static struct agent the_agent;

int main(int argc, char **argv) {
  struct agent *a = &the_agent;
  sf_prog("sf-agent");
  int pid1 = getpid() == 1;
  int fd = pid1 ? -1 : agent__control_fd_arg(argc, argv);
  if (fd == -2) {
    sf_err(0, "usage: agent (as PID 1 of a guest) | agent --control-fd N (on a host, for tests)");
    return 2;
  }
  if (pid1) {
    boot__mounts();
    boot__load_modules();
  }
  if (setenv("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", 1) < 0) sf_err(-errno, "setenv PATH");
  agent_reader__init(&a->reader);
  a->ssh_listen = -1;
  a->sigfd = agent__signals();
  a->host_connected = 1;
  a->hosted = fd >= 0;
  a->ctl = a->hosted ? fd : boot__open_control_port();
  if (a->ctl < 0) {
    sf_err(a->ctl, "no control port sf.ctl; check that virtio_console is loaded");
    if (!pid1) return 1;
    for (;;) pause();
  }
  if (!a->hosted) {
    fcntl(a->ctl, F_SETOWN, getpid());
    fcntl(a->ctl, F_SETFL, fcntl(a->ctl, F_GETFL) | O_ASYNC);
  }
  agent__send(a, AGENT_HELLO, AGENT_GUEST_STREAM, AGENT_HELLO_PAYLOAD, sizeof AGENT_HELLO_PAYLOAD - 1);
  agent__run(a);
  agent__exit(a);
  return 0;
}
