/*
 * sf-pmix: snowflock's PMIx server, on Debian's libpmix. The launcher starts it and drives it
 * over its stdin/stdout with the protocol of protocol.h: HELLO (where to listen), JOB (the
 * namespace, nodes, ranks, apps, and which nodes this server serves), ENV_REQ per rank; it
 * reports clients connecting, finalizing, aborting and disconnecting, and fences. Ranks it
 * serves are started by the launcher with the environment it hands out (direct launch: no
 * mpirun, no orted).
 *
 * One server for the whole job, or one per host with fences relayed through the launcher: the
 * same program, told which nodes are local (JOB.local_nodes).
 *
 *   sf-pmix          serve (the launcher's child)
 *   sf-pmix --echo   decode every frame on stdin and encode it back on stdout (codec test)
 *
 * The main thread reads the launcher's requests; libpmix's progress thread runs the upcalls,
 * which send events (upcalls.c). SIGTERM, SIGINT, SHUTDOWN and the end of stdin all end the
 * server the same way: fail waiting fences, deregister the job, finalize libpmix.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <limits.h>
#include <poll.h>
#include <pmix.h>
#include <pthread.h>
#include <pmix_server.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "common/sf.h"
#include "pmix/channel.h"
#include "pmix/job.h"
#include "pmix/listener.h"
#include "pmix/protocol.h"
#include "pmix/upcalls.h"

struct server {
  pmix_proc_t me;
  struct job job;
  int have_job;
  int pmix_up;
  /* The one file libpmix leaves in its tmpdir here (the shared topology), or "". */
  char topology_file[PATH_MAX];
};

/* How long libpmix may take to deregister the job and finalize before we exit without it. */
#define STOP_GRACE_S 2

/* ---- start ---- */

/* libpmix settings that are ours to decide, set before it reads its MCA environment. */
static void settle_pmix_env(void) {
  /* Job data travels in messages, not in a shared-memory store under the server's tmpdir that
   * ranks in VMs cannot see. */
  setenv("PMIX_MCA_gds", "hash", 1);
  /* Every fence reaches our fence_nb upcall, purely local ones too, so that all are reported. */
  setenv("PMIX_MCA_pmix_server_fence_localonly_opt", "0", 1);
  /* A lost client is reported at once, not batched for a second. */
  setenv("PMIX_MCA_pmix_event_caching_window", "0", 1);
}

static int server__init(struct server *s, const struct pm_hello *hello) {
  struct in_addr addr;
  if (inet_pton(AF_INET, hello->listen, &addr) != 1) {
    channel__error("HELLO: listen address '%s' is not an IPv4 address", hello->listen);
    return -EINVAL;
  }
  if (hello->handshake_ms == 0) {
    channel__error("HELLO: handshake_ms must be at least 1");
    return -EINVAL;
  }
  if (hello->share_topology && !hello->tmpdir[0]) {
    channel__error("HELLO: share_topology needs a tmpdir (libpmix leaves its topology file there)");
    return -EINVAL;
  }
  char include[64], why[256], nspace[64];
  int rc = listener__interface(addr, include, sizeof include, why, sizeof why);
  if (rc) {
    channel__error("%s", why);
    return rc;
  }
  settle_pmix_env();
  snprintf(nspace, sizeof nspace, "sf-pmix.%d", (int)getpid());
  bool yes = true;
  pmix_rank_t zero = 0;
  pmix_info_t info[8];
  size_t n = 0;
  PMIX_INFO_LOAD(&info[n++], PMIX_SERVER_NSPACE, nspace, PMIX_STRING);
  PMIX_INFO_LOAD(&info[n++], PMIX_SERVER_RANK, &zero, PMIX_PROC_RANK);
  PMIX_INFO_LOAD(&info[n++], PMIX_TCP_IF_INCLUDE, include, PMIX_STRING);
  /* Lets libpmix take a non-loopback interface: it stops at loopback otherwise. */
  PMIX_INFO_LOAD(&info[n++], PMIX_SERVER_REMOTE_CONNECTIONS, &yes, PMIX_BOOL);
  PMIX_INFO_LOAD(&info[n++], PMIX_TCP_DISABLE_IPV6, &yes, PMIX_BOOL);
  if (hello->share_topology) {
    PMIX_INFO_LOAD(&info[n++], PMIX_SERVER_SHARE_TOPOLOGY, &yes, PMIX_BOOL);
    snprintf(s->topology_file, sizeof s->topology_file, "%s/hwloc.sm", hello->tmpdir); /* libpmix's name for it */
  }
  if (hello->tmpdir[0]) {
    PMIX_INFO_LOAD(&info[n++], PMIX_SERVER_TMPDIR, hello->tmpdir, PMIX_STRING);
    PMIX_INFO_LOAD(&info[n++], PMIX_SYSTEM_TMPDIR, hello->tmpdir, PMIX_STRING);
  }
  pmix_status_t prc = PMIx_server_init(&upcalls__module, info, n);
  for (size_t i = 0; i < n; i++) PMIX_INFO_DESTRUCT(&info[i]);
  if (prc != PMIX_SUCCESS) {
    channel__error("libpmix cannot start a server on %s: %s", hello->listen, PMIx_Error_string(prc));
    return -EIO;
  }
  s->pmix_up = 1;
  PMIX_PROC_LOAD(&s->me, nspace, 0);
  rc = listener__harden(addr, hello->handshake_ms, why, sizeof why);
  if (rc) {
    channel__error("%s", why);
    return rc;
  }
  if (upcalls__watch_disconnects()) {
    channel__error("libpmix refused the lost-connection handler");
    return -EIO;
  }
  return 0;
}

/* The URI clients connect to, as libpmix advertises it. */
static int server__ready(struct server *s) {
  pmix_value_t *val = NULL;
  pmix_status_t prc = PMIx_Get(&s->me, PMIX_SERVER_URI, NULL, 0, &val);
  if (prc != PMIX_SUCCESS || !val || val->type != PMIX_STRING) {
    if (val) PMIX_VALUE_RELEASE(val);
    channel__error("libpmix does not say its URI: %s", PMIx_Error_string(prc));
    return -EIO;
  }
  struct pm_msg m = {.type = PM_READY, .u.ready = {SF_PMIX_PROTOCOL_VERSION, (uint32_t)getpid(), val->data.string}};
  int rc = channel__send(&m);
  PMIX_VALUE_RELEASE(val);
  return rc;
}

/* ---- requests ---- */

static int on_job(struct server *s, struct pm_msg *msg) {
  if (s->have_job) {
    channel__error("JOB: this server already serves namespace '%s'", s->job.spec.nspace);
    return -EINVAL;
  }
  char why[256] = "";
  s->have_job = 1;
  int rc = job__load(&s->job, &msg->u.job, why, sizeof why);
  if (!rc) {
    upcalls__set_job(&s->job);
    rc = job__register(&s->job, why, sizeof why);
  }
  if (rc) {
    channel__error("%s", rc == -ENOMEM ? "out of memory" : why);
    return rc;
  }
  uint32_t *ranks = sf_array(s->job.nlocal, sizeof *ranks);
  if (!ranks) return -ENOMEM;
  uint32_t k = 0;
  for (uint32_t r = 0; r < s->job.nprocs; r++)
    if (s->job.local[r]) ranks[k++] = r;
  struct pm_msg ok = {.type = PM_JOB_OK, .u.job_ok = {s->job.spec.nspace, {k, ranks}}};
  rc = channel__send(&ok);
  free(ranks);
  return rc;
}

static int on_env_req(struct server *s, const struct pm_env_req *req) {
  if (!s->have_job) {
    channel__error("ENV_REQ before JOB");
    return -EINVAL;
  }
  char why[256] = "";
  struct pm_msg m = {.type = PM_ENV, .u.env = {req->rank, {0, NULL}}};
  int rc = job__env(&s->job, req->rank, &m.u.env.vars, why, sizeof why);
  if (rc) {
    channel__error("%s", rc == -ENOMEM ? "out of memory" : why);
    return rc;
  }
  rc = channel__send(&m);
  pm_free(&m);
  return rc;
}

static int on_fence_done(struct pm_fence_done *done) {
  uint8_t *data = done->data.v;
  done->data.v = NULL; /* owned by the fence now */
  if (upcalls__fence_done(done->seq, done->ok, data, done->data.n)) {
    channel__error("FENCE_DONE: no fence %u is waiting", done->seq);
    return -EINVAL;
  }
  return 0;
}

/* One request; 1 when it asks the server to stop, 0 to go on, < 0 on a fatal error. */
static int dispatch(struct server *s, struct pm_msg *msg) {
  switch (msg->type) {
  case PM_JOB: return on_job(s, msg);
  case PM_ENV_REQ: return on_env_req(s, &msg->u.env_req);
  case PM_FENCE_DONE: return on_fence_done(&msg->u.fence_done);
  case PM_SHUTDOWN: return 1;
  default:
    channel__error("protocol: %s is not a request the server takes here", pm_type_name(msg->type));
    return -EPROTO;
  }
}

/* Reads the first message, which must be HELLO in our version. */
static int read_hello(struct pm_msg *msg) {
  const char *why = NULL;
  int rc = channel__recv(msg, &why);
  if (rc == 1) return -EPIPE;
  if (rc) return rc;
  if (msg->type != PM_HELLO) {
    channel__error("protocol: the first message must be HELLO, not %s", pm_type_name(msg->type));
    return -EPROTO;
  }
  if (msg->u.hello.version != SF_PMIX_PROTOCOL_VERSION) {
    channel__error("protocol: the launcher speaks version %u, this sf-pmix speaks %u: rebuild both from one tree (make -C native)",
                   msg->u.hello.version, SF_PMIX_PROTOCOL_VERSION);
    return -EPROTONOSUPPORT;
  }
  return 0;
}

/* Serves until SHUTDOWN, the end of stdin or a signal; the exit status. */
static int serve(struct server *s, int sigfd) {
  struct pollfd fds[2] = {{channel__in_fd(), POLLIN, 0}, {sigfd, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      sf_err(-errno, "poll");
      return 1;
    }
    if (fds[1].revents) {
      struct signalfd_siginfo si;
      if (read(sigfd, &si, sizeof si) == (ssize_t)sizeof si) return 128 + (int)si.ssi_signo;
    }
    if (!fds[0].revents) continue;
    struct pm_msg msg;
    const char *why = NULL;
    int rc = channel__recv(&msg, &why);
    if (rc == 1) return 0; /* the launcher closed our stdin: as SHUTDOWN */
    if (rc) return rc == -EPROTO || rc == -E2BIG ? 2 : 1;
    rc = dispatch(s, &msg);
    pm_free(&msg);
    if (rc) return rc == 1 ? 0 : (rc == -EPROTO ? 2 : 1);
  }
}

/*
 * libpmix 4.2 can hang in its own shutdown: a client that dies in the middle of its connection
 * handshake takes libpmix's connection handler down an error path that releases the rank's
 * record once too often ("UNREACHABLE in ptl_base_connection_hdlr.c"), and the deregistration
 * that walks the ranks later blocks for good on a lock in freed memory. The job's outcome is
 * known by then, so when shutdown takes longer than STOP_GRACE_S this thread removes what
 * libpmix would have removed and exits with the server's status.
 */
struct stop_watch {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
  int status;
  const char *topology_file;
};

static void *stop__watch(void *arg) {
  struct stop_watch *w = arg;
  struct timespec deadline;
  clock_gettime(CLOCK_REALTIME, &deadline);
  deadline.tv_sec += STOP_GRACE_S;
  pthread_mutex_lock(&w->mu);
  int rc = 0;
  while (!w->done && rc != ETIMEDOUT) rc = pthread_cond_timedwait(&w->cv, &w->mu, &deadline);
  int done = w->done;
  pthread_mutex_unlock(&w->mu);
  if (done) return NULL;
  if (w->topology_file[0]) unlink(w->topology_file);
  sf_err(0, "libpmix did not finish its shutdown in %d s (it can hang after a client died while connecting); exiting without it", STOP_GRACE_S);
  _exit(w->status);
}

/* Fails waiting fences, deregisters the job and finalizes libpmix, in at most STOP_GRACE_S. */
static void server__stop(struct server *s, int status) {
  struct stop_watch w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, status, s->topology_file};
  pthread_t watcher;
  int watching = s->pmix_up && !pthread_create(&watcher, NULL, stop__watch, &w);
  upcalls__fail_pending();
  if (s->have_job) job__deregister(&s->job);
  if (s->pmix_up) PMIx_server_finalize();
  upcalls__set_job(NULL);
  if (s->have_job) job__free(&s->job);
  if (!watching) return;
  pthread_mutex_lock(&w.mu);
  w.done = 1;
  pthread_cond_signal(&w.cv);
  pthread_mutex_unlock(&w.mu);
  pthread_join(watcher, NULL);
}

/* ---- modes ---- */

static int echo(void) {
  for (;;) {
    struct pm_msg msg;
    const char *why = NULL;
    int rc = channel__recv(&msg, &why);
    if (rc == 1) return 0;
    if (rc == -EPROTO) continue; /* ERROR sent; the frame was read whole, so framing holds */
    if (rc) return rc == -E2BIG ? 2 : 1;
    rc = channel__send(&msg);
    pm_free(&msg);
    if (rc) return 1;
  }
}

int main(int argc, char **argv) {
  sf_prog("sf-pmix");
  int echo_mode = argc == 2 && !strcmp(argv[1], "--echo");
  if (argc > 1 && !echo_mode) sf_die(2, 0, "usage: sf-pmix [--echo] (started by the launcher, which drives it over stdin/stdout)");
  signal(SIGPIPE, SIG_IGN);
  int rc = channel__open();
  if (rc) sf_die(1, rc, "cannot set up the launcher channel");
  if (echo_mode) return echo();

  /* Blocked before libpmix starts its threads, so they inherit the mask and the signals reach
   * only our signalfd. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  int sigfd = signalfd(-1, &set, SFD_CLOEXEC);
  if (sigfd < 0) sf_die(1, -errno, "signalfd");

  struct server s = {0};
  struct pm_msg hello;
  rc = read_hello(&hello);
  if (rc) return rc == -EPIPE ? 0 : 2;
  rc = server__init(&s, &hello.u.hello);
  pm_free(&hello);
  int status = rc ? 1 : 0;
  if (!rc && server__ready(&s)) status = 1;
  if (!status) status = serve(&s, sigfd);
  server__stop(&s, status);
  return status;
}
