/*
 * snowflock guest agent: PID 1 of a VM guest (static, no libc of the guest needed).
 *
 * Boot: mounts the pseudo file systems, loads the virtio modules listed in /etc/snowflock/modules
 * (one .ko path a line, in load order), opens the control port and says HELLO. The host
 * checkpoints the template right after HELLO, so everything below the HELLO runs again in every
 * clone from the point where the template stopped: blocked in poll() on the control port.
 *
 * Control channel: a virtio-serial port (named "sf.ctl", /dev/vport*p1) whose host side is a unix
 * socket of the QEMU process; it is host-only, nothing on the network can reach it. One channel
 * per guest carries every process of that guest, multiplexed by stream id:
 *
 *   frame = u32 length of payload (LE) | u8 type | u32 stream id (LE) | payload
 *
 *   host -> guest                           guest -> host
 *   IDENT  (0) key=value lines              HELLO (0) agent booted, waiting for identity
 *   EXEC   (s) argv\0..\0\0env\0..\0\0cwd\0 READY (0) identity applied
 *          then "stdin" or "nostdin"         STARTED (s) pid as text
 *   STDIN  (s) bytes; empty = EOF           FAILED (s) exec failed: message (exit status 127)
 *   KILL   (s) signal number as text        STDOUT/STDERR (s) bytes; empty = end of stream
 *                                           EXIT (s) "code N" or "signal N", after both streams end
 *
 * Why a multiplexed serial channel rather than SSH or TCP: an exec over it costs a few ms under
 * TCG (no key exchange), and it exists before the guest has an address.
 *
 * Identity (IDENT): id, addr (a.b.c.d/len), gw, mac, hostname, time (unix seconds.nanoseconds),
 * entropy (hex; credited to the kernel RNG and the CRNG reseeded, so clones of one template do not
 * share random streams), hosts (lines for /etc/hosts, '|' separated), ssh (1 = start dropbear).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <net/route.h>
#include <net/if.h>
#include <net/if_arp.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum {
  F_IDENT = 1, F_EXEC = 2, F_STDIN = 3, F_KILL = 4,
  F_HELLO = 64, F_READY = 65, F_STARTED = 66, F_FAILED = 67, F_STDOUT = 68, F_STDERR = 69, F_EXIT = 70,
};

#define MAX_PROCS 256
#define HDR 9

struct proc {
  uint32_t sid;
  pid_t pid;
  int out, err, in; /* -1 when closed */
  int exited;
  int status;
  char *inbuf; /* pending stdin bytes the child has not read yet */
  size_t inlen;
  int in_eof;
};

static struct proc procs[MAX_PROCS];
static int ctl = -1;

static void logmsg(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "sf-agent: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
}

static void write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t n = write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        poll(&pf, 1, 100);
        continue;
      }
      logmsg("write to control port: %s", strerror(errno));
      return;
    }
    p += n;
    len -= (size_t)n;
  }
}

static void send_frame(uint8_t type, uint32_t sid, const void *data, uint32_t len) {
  unsigned char h[HDR];
  memcpy(h, &len, 4);
  h[4] = type;
  memcpy(h + 5, &sid, 4);
  /* One buffer so that a frame is never interleaved with another (single-threaded anyway). */
  char *buf = malloc(HDR + len);
  memcpy(buf, h, HDR);
  if (len) memcpy(buf + HDR, data, len);
  write_all(ctl, buf, HDR + len);
  free(buf);
}

static void send_text(uint8_t type, uint32_t sid, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  send_frame(type, sid, buf, (uint32_t)(n < 0 ? 0 : n >= (int)sizeof buf ? (int)sizeof buf - 1 : n));
}

/* ---- boot ---- */

static void boot_mounts(void) {
  mkdir("/proc", 0755);
  mkdir("/sys", 0755);
  mkdir("/dev", 0755);
  mkdir("/tmp", 01777);
  mount("proc", "/proc", "proc", 0, NULL);
  mount("sysfs", "/sys", "sysfs", 0, NULL);
  mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
  mkdir("/dev/pts", 0755);
  mkdir("/dev/shm", 01777);
  mount("devpts", "/dev/pts", "devpts", 0, "ptmxmode=0666");
  mount("tmpfs", "/dev/shm", "tmpfs", 0, "mode=1777");
  /* /tmp stays part of the root (already in RAM): the job's working directory may live there. */
  int fd = open("/dev/console", O_RDWR);
  if (fd >= 0) {
    dup2(fd, 1);
    dup2(fd, 2);
    if (fd > 2) close(fd);
  }
}

static void load_modules(void) {
  FILE *f = fopen("/etc/snowflock/modules", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\r\n")] = 0;
    if (!line[0]) continue;
    int fd = open(line, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      logmsg("module %s: %s", line, strerror(errno));
      continue;
    }
    if (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST) logmsg("load %s: %s", line, strerror(errno));
    close(fd);
  }
  fclose(f);
}

/* The port's device node appears once virtio_console has probed; find it by its name in sysfs. */
static int open_control_port(void) {
  for (int tries = 0; tries < 500; tries++) {
    DIR *d = opendir("/sys/class/virtio-ports");
    if (d) {
      struct dirent *e;
      while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[300], name[64] = {0};
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        int nf = open(path, O_RDONLY);
        if (nf < 0) continue;
        ssize_t n = read(nf, name, sizeof name - 1);
        close(nf);
        if (n > 0 && strncmp(name, "sf.ctl", 6) == 0) {
          snprintf(path, sizeof path, "/dev/%s", e->d_name);
          int fd = open(path, O_RDWR | O_CLOEXEC);
          if (fd >= 0) {
            closedir(d);
            return fd;
          }
        }
      }
      closedir(d);
    }
    usleep(10000);
  }
  return -1;
}

/* ---- identity ---- */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static void add_entropy(const char *hex) {
  size_t n = strlen(hex) / 2;
  if (n == 0) return;
  struct rand_pool_info *info = calloc(1, sizeof *info + n);
  for (size_t i = 0; i < n; i++) ((unsigned char *)info->buf)[i] = (unsigned char)(hexval(hex[2 * i]) << 4 | hexval(hex[2 * i + 1]));
  info->buf_size = (int)n;
  info->entropy_count = (int)(n * 8);
  int fd = open("/dev/urandom", O_RDWR | O_CLOEXEC);
  if (fd >= 0) {
    if (ioctl(fd, RNDADDENTROPY, info) != 0) logmsg("RNDADDENTROPY: %s", strerror(errno));
    /* Force the CRNG to take the new input now, not at its next scheduled reseed. */
    if (ioctl(fd, RNDRESEEDCRNG) != 0) logmsg("RNDRESEEDCRNG: %s", strerror(errno));
    close(fd);
  }
  free(info);
}

static int parse_mac(const char *s, unsigned char mac[6]) {
  unsigned v[6];
  if (sscanf(s, "%x:%x:%x:%x:%x:%x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) return -1;
  for (int i = 0; i < 6; i++) mac[i] = (unsigned char)v[i];
  return 0;
}

static int set_flags(int s, const char *ifname, short on) {
  struct ifreq ifr = {0};
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) return -1;
  ifr.ifr_flags = on ? (ifr.ifr_flags | IFF_UP) : (ifr.ifr_flags & ~IFF_UP);
  return ioctl(s, SIOCSIFFLAGS, &ifr);
}

static int set_addr(int s, const char *ifname, unsigned long req, in_addr_t a) {
  struct ifreq ifr = {0};
  strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
  struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = a;
  return ioctl(s, req, &ifr);
}

/* Configures eth0: the clone's MAC first (the template's MAC is in the saved device state and
 * must never appear on the bridge), then address, netmask, up, default route. */
static const char *configure_net(const char *addr, const char *gw, const char *mac) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return "socket";
  set_flags(s, "lo", 1);
  const char *err = NULL;
  if (mac && *mac) {
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, "eth0", IFNAMSIZ - 1);
    ifr.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    if (parse_mac(mac, (unsigned char *)ifr.ifr_hwaddr.sa_data) != 0) err = "bad mac";
    else if (ioctl(s, SIOCSIFHWADDR, &ifr) != 0) err = "set mac";
  }
  if (!err && addr && *addr) {
    char ip[64];
    snprintf(ip, sizeof ip, "%s", addr);
    int len = 24;
    char *slash = strchr(ip, '/');
    if (slash) {
      *slash = 0;
      len = atoi(slash + 1);
    }
    in_addr_t mask = len ? htonl(~0u << (32 - len)) : 0;
    if (set_addr(s, "eth0", SIOCSIFADDR, inet_addr(ip)) != 0) err = "set address";
    else if (set_addr(s, "eth0", SIOCSIFNETMASK, mask) != 0) err = "set netmask";
  }
  if (!err && set_flags(s, "eth0", 1) != 0) err = "link up";
  if (!err && gw && *gw) {
    struct rtentry rt = {0};
    struct sockaddr_in *dst = (struct sockaddr_in *)&rt.rt_dst, *g = (struct sockaddr_in *)&rt.rt_gateway,
                       *m = (struct sockaddr_in *)&rt.rt_genmask;
    dst->sin_family = g->sin_family = m->sin_family = AF_INET;
    g->sin_addr.s_addr = inet_addr(gw);
    rt.rt_flags = RTF_UP | RTF_GATEWAY;
    if (ioctl(s, SIOCADDRT, &rt) != 0 && errno != EEXIST) err = "default route";
  }
  close(s);
  return err;
}

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return;
  write_all(fd, text, strlen(text));
  close(fd);
}

static void start_ssh(void) {
  pid_t p = fork();
  if (p == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setsid();
    /* -R: no key generation; -E: log to stderr (the console); -s: no passwords; -F: foreground. */
    execl("/usr/sbin/dropbear", "dropbear", "-F", "-E", "-s", "-r", "/etc/dropbear/dropbear_ed25519_host_key", "-p", "22",
          (char *)NULL);
    _exit(127);
  }
}

static void apply_identity(char *text) {
  char *addr = NULL, *gw = NULL, *mac = NULL, *host = NULL, *tm = NULL, *ent = NULL, *hosts = NULL, *ssh = NULL;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    char *eq = strchr(line, '=');
    if (!eq) continue;
    *eq = 0;
    char *v = eq + 1;
    if (!strcmp(line, "addr")) addr = v;
    else if (!strcmp(line, "gw")) gw = v;
    else if (!strcmp(line, "mac")) mac = v;
    else if (!strcmp(line, "hostname")) host = v;
    else if (!strcmp(line, "time")) tm = v;
    else if (!strcmp(line, "entropy")) ent = v;
    else if (!strcmp(line, "hosts")) hosts = v;
    else if (!strcmp(line, "ssh")) ssh = v;
  }
  if (ent) add_entropy(ent);
  if (tm) {
    struct timespec ts = {0};
    char *dot = strchr(tm, '.');
    ts.tv_sec = strtoll(tm, NULL, 10);
    if (dot) ts.tv_nsec = strtol(dot + 1, NULL, 10);
    if (clock_settime(CLOCK_REALTIME, &ts) != 0) logmsg("settime: %s", strerror(errno));
  }
  if (host && sethostname(host, strlen(host)) != 0) logmsg("sethostname: %s", strerror(errno));
  if (hosts) {
    for (char *p = hosts; *p; p++)
      if (*p == '|') *p = '\n';
    char buf[65536];
    snprintf(buf, sizeof buf, "127.0.0.1 localhost\n%s\n", hosts);
    write_file("/etc/hosts", buf);
  }
  const char *err = configure_net(addr, gw, mac);
  if (err) {
    send_text(F_FAILED, 0, "network: %s: %s", err, strerror(errno));
    return;
  }
  if (ssh && !strcmp(ssh, "1")) start_ssh();
  send_text(F_READY, 0, "%s", host ? host : "");
}

/* ---- processes ---- */

static struct proc *find_proc(uint32_t sid) {
  for (int i = 0; i < MAX_PROCS; i++)
    if (procs[i].pid && procs[i].sid == sid) return &procs[i];
  return NULL;
}

/* payload: argv strings, empty string, env strings, empty string, cwd, stdin mode */
static void exec_request(uint32_t sid, char *p, uint32_t len) {
  char *end = p + len;
  char *argv[1024], *envp[4096];
  int argc = 0, envc = 0;
  while (p < end && *p && argc < 1023) {
    argv[argc++] = p;
    p += strlen(p) + 1;
  }
  argv[argc] = NULL;
  p++;
  while (p < end && *p && envc < 4095) {
    envp[envc++] = p;
    p += strlen(p) + 1;
  }
  envp[envc] = NULL;
  p++;
  const char *cwd = p < end ? p : "/";
  p += strlen(cwd) + 1;
  int want_stdin = p < end && !strcmp(p, "stdin");
  if (argc == 0) {
    send_text(F_FAILED, sid, "empty argv");
    return;
  }
  struct proc *slot = NULL;
  for (int i = 0; i < MAX_PROCS; i++)
    if (!procs[i].pid) {
      slot = &procs[i];
      break;
    }
  if (!slot) {
    send_text(F_FAILED, sid, "too many processes in this guest");
    return;
  }
  int o[2], e[2], in[2], st[2];
  if (pipe2(o, O_CLOEXEC) || pipe2(e, O_CLOEXEC) || pipe2(in, O_CLOEXEC) || pipe2(st, O_CLOEXEC)) {
    send_text(F_FAILED, sid, "pipe: %s", strerror(errno));
    return;
  }
  pid_t pid = fork();
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    setpgid(0, 0);
    int devnull = open("/dev/null", O_RDONLY);
    dup2(want_stdin ? in[0] : devnull, 0);
    dup2(o[1], 1);
    dup2(e[1], 2);
    char msg[600];
    int n;
    if (chdir(cwd) != 0) {
      n = snprintf(msg, sizeof msg, "cannot enter working directory %s: %s", cwd, strerror(errno));
    } else {
      /* execvp looks PATH up in our environ: make it the process's own environment. */
      environ = envp;
      execvp(argv[0], argv);
      n = snprintf(msg, sizeof msg, "cannot run %s: %s", argv[0], strerror(errno));
    }
    if (write(st[1], msg, (size_t)n) < 0) {}
    _exit(127);
  }
  close(o[1]);
  close(e[1]);
  close(in[0]);
  close(st[1]);
  if (pid < 0) {
    send_text(F_FAILED, sid, "fork: %s", strerror(errno));
    close(o[0]), close(e[0]), close(in[1]), close(st[0]);
    return;
  }
  /* The status pipe closes on a successful exec (CLOEXEC) or carries the reason it failed. */
  char msg[600];
  ssize_t n = read(st[0], msg, sizeof msg - 1);
  close(st[0]);
  memset(slot, 0, sizeof *slot);
  slot->sid = sid;
  slot->pid = pid;
  slot->out = o[0];
  slot->err = e[0];
  slot->in = want_stdin ? in[1] : -1;
  if (!want_stdin) close(in[1]);
  else fcntl(in[1], F_SETFL, O_NONBLOCK);
  if (n > 0) {
    msg[n] = 0;
    send_text(F_FAILED, sid, "%s", msg);
  } else {
    send_text(F_STARTED, sid, "%d", pid);
  }
}

static void flush_stdin(struct proc *pr) {
  while (pr->in >= 0 && pr->inlen > 0) {
    ssize_t n = write(pr->in, pr->inbuf, pr->inlen);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      pr->inlen = 0; /* the child closed its stdin: drop what it will never read */
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

static void stdin_data(uint32_t sid, const char *p, uint32_t len) {
  struct proc *pr = find_proc(sid);
  if (!pr || pr->in < 0) return;
  if (len == 0) pr->in_eof = 1;
  else {
    pr->inbuf = realloc(pr->inbuf, pr->inlen + len);
    memcpy(pr->inbuf + pr->inlen, p, len);
    pr->inlen += len;
  }
  flush_stdin(pr);
}

static void maybe_finish(struct proc *pr) {
  if (!pr->exited || pr->out >= 0 || pr->err >= 0) return;
  if (WIFSIGNALED(pr->status)) send_text(F_EXIT, pr->sid, "signal %d", WTERMSIG(pr->status));
  else send_text(F_EXIT, pr->sid, "code %d", WEXITSTATUS(pr->status));
  if (pr->in >= 0) close(pr->in);
  free(pr->inbuf);
  memset(pr, 0, sizeof *pr);
}

static void reap(void) {
  int status;
  pid_t pid;
  while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
    for (int i = 0; i < MAX_PROCS; i++)
      if (procs[i].pid == pid && !procs[i].exited) {
        procs[i].exited = 1;
        procs[i].status = status;
        maybe_finish(&procs[i]);
      }
  }
}

static void pump(struct proc *pr, int *fd, uint8_t type) {
  char buf[32768];
  ssize_t n = read(*fd, buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    close(*fd);
    *fd = -1;
    send_frame(type, pr->sid, NULL, 0);
    maybe_finish(pr);
    return;
  }
  send_frame(type, pr->sid, buf, (uint32_t)n);
}

/* ---- control frames ---- */

static char *rbuf;
static size_t rlen, rcap;

static void handle_frame(uint8_t type, uint32_t sid, char *p, uint32_t len) {
  switch (type) {
  case F_IDENT: {
    char *t = strndup(p, len);
    apply_identity(t);
    free(t);
    break;
  }
  case F_EXEC: {
    /* Ensure the payload is NUL terminated however it was sent. */
    char *t = malloc(len + 2);
    memcpy(t, p, len);
    t[len] = t[len + 1] = 0;
    exec_request(sid, t, len + 1);
    free(t);
    break;
  }
  case F_STDIN: stdin_data(sid, p, len); break;
  case F_KILL: {
    struct proc *pr = find_proc(sid);
    char t[16] = {0};
    memcpy(t, p, len < 15 ? len : 15);
    if (pr && !pr->exited) kill(pr->pid, atoi(t));
    break;
  }
  default: logmsg("unknown frame type %d", type);
  }
}

/* Whether a host is connected to the control port. While none is, the port polls as hung up at
 * once, so the main loop leaves it out and waits for SIGIO, which virtio_console sends when the
 * host side opens (or for a slow periodic re-check): an idle clone must not spin, under TCG
 * every wake-up is emulated. */
static int host_connected = 1;

static void read_control(void) {
  if (rcap - rlen < 65536) {
    rcap = rcap ? rcap * 2 : 262144;
    rbuf = realloc(rbuf, rcap);
  }
  ssize_t n = read(ctl, rbuf + rlen, rcap - rlen);
  if (n <= 0) {
    if (n == 0) host_connected = 0;
    return;
  }
  rlen += (size_t)n;
  size_t off = 0;
  while (rlen - off >= HDR) {
    uint32_t len, sid;
    memcpy(&len, rbuf + off, 4);
    memcpy(&sid, rbuf + off + 5, 4);
    if (rlen - off < HDR + (size_t)len) {
      if (rcap < HDR + (size_t)len + 65536) {
        rcap = HDR + (size_t)len + 65536;
        rbuf = realloc(rbuf, rcap);
      }
      break;
    }
    handle_frame((uint8_t)rbuf[off + 4], sid, rbuf + off + HDR, len);
    off += HDR + len;
  }
  memmove(rbuf, rbuf + off, rlen - off);
  rlen -= off;
}

int main(void) {
  if (getpid() == 1) {
    boot_mounts();
    load_modules();
  }
  setenv("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", 1);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGPIPE);
  sigaddset(&mask, SIGIO);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigaddset(&chld, SIGIO);
  int sfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);

  ctl = open_control_port();
  if (ctl < 0) {
    logmsg("no control port sf.ctl; check that virtio_console is loaded");
    for (;;) pause();
  }
  fcntl(ctl, F_SETOWN, getpid());
  fcntl(ctl, F_SETFL, fcntl(ctl, F_GETFL) | O_ASYNC);
  send_text(F_HELLO, 0, "snowflock-agent 1");
  for (;;) {
    struct pollfd pf[2 + 3 * MAX_PROCS];
    struct {
      struct proc *pr;
      int which;
    } who[2 + 3 * MAX_PROCS];
    int n = 0;
    /* fd -1: poll ignores the entry (no host connected, see host_connected). */
    pf[n++] = (struct pollfd){.fd = host_connected ? ctl : -1, .events = POLLIN};
    pf[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
    for (int i = 0; i < MAX_PROCS; i++) {
      struct proc *pr = &procs[i];
      if (!pr->pid) continue;
      if (pr->out >= 0) who[n] = (typeof(who[0])){pr, 1}, pf[n++] = (struct pollfd){.fd = pr->out, .events = POLLIN};
      if (pr->err >= 0) who[n] = (typeof(who[0])){pr, 2}, pf[n++] = (struct pollfd){.fd = pr->err, .events = POLLIN};
      if (pr->in >= 0 && pr->inlen) who[n] = (typeof(who[0])){pr, 3}, pf[n++] = (struct pollfd){.fd = pr->in, .events = POLLOUT};
    }
    int ready = poll(pf, (nfds_t)n, host_connected ? -1 : 1000);
    if (ready < 0) continue;
    if (!host_connected) {
      /* SIGIO, or the periodic re-check: see whether a host has come. */
      struct pollfd probe = {.fd = ctl, .events = POLLIN};
      if (poll(&probe, 1, 0) >= 0 && !(probe.revents & POLLHUP)) host_connected = 1;
    }
    if (pf[1].revents) {
      struct signalfd_siginfo si;
      while (read(sfd, &si, sizeof si) > 0) {}
      reap();
    }
    for (int i = 2; i < n; i++) {
      if (!pf[i].revents) continue;
      struct proc *pr = who[i].pr;
      if (!pr->pid) continue;
      if (who[i].which == 1 && pr->out >= 0) pump(pr, &pr->out, F_STDOUT);
      else if (who[i].which == 2 && pr->err >= 0) pump(pr, &pr->err, F_STDERR);
      else if (who[i].which == 3) flush_stdin(pr);
    }
    /* Last: a frame may start a process, which changes the poll set. */
    if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) read_control();
    reap();
  }
}
