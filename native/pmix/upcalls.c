/* The upcalls of upcalls.h. */
#define _GNU_SOURCE
#include "pmix/upcalls.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/sf.h"
#include "pmix/channel.h"

static struct job *job;

void upcalls__set_job(struct job *j) { job = j; }

/* The rank of proc if it is a rank of our job, else -1. */
static int64_t our_rank(const pmix_proc_t *proc) {
  if (!job || !proc || !PMIX_CHECK_NSPACE(proc->nspace, job->spec.nspace)) return -1;
  if (proc->rank >= job->nprocs) return -1;
  return proc->rank;
}

/* ---- clients ---- */

static pmix_status_t on_connected(const pmix_proc_t *proc, void *server_object, pmix_info_t info[], size_t ninfo,
                                  pmix_op_cbfunc_t cbfunc, void *cbdata) {
  (void)server_object, (void)info, (void)ninfo, (void)cbfunc, (void)cbdata;
  int64_t r = our_rank(proc);
  if (r < 0) return PMIX_SUCCESS; /* libpmix only lets registered clients this far */
  /* A second connection for one rank is a child process of the rank calling PMIx_Init too, which
   * libpmix allows; it is counted, not reported as a new client. (Refusing it would mean the
   * legacy client_connected upcall, whose refusal path in libpmix 4.2.2 releases the rank's
   * record twice: ptl_base_connection_hdlr.c, once directly and once with the peer.) */
  if (job->connected[r]++) {
    sf_err(0, "rank %u connected a second time (a child process of the rank?)", (unsigned)r);
    return PMIX_SUCCESS;
  }
  channel__send_rank(PM_CONNECTED, (uint32_t)r);
  return PMIX_SUCCESS;
}

static pmix_status_t on_finalized(const pmix_proc_t *proc, void *server_object, pmix_op_cbfunc_t cbfunc, void *cbdata) {
  (void)server_object;
  int64_t r = our_rank(proc);
  if (r >= 0 && !job->finalized[r]++) channel__send_rank(PM_FINALIZED, (uint32_t)r);
  if (cbfunc) cbfunc(PMIX_SUCCESS, cbdata);
  return PMIX_SUCCESS;
}

/* Participants as protocol ranks; NULL on ENOMEM. */
static uint32_t *ranks_of(const pmix_proc_t procs[], size_t n) {
  uint32_t *v = sf_array(n, sizeof *v);
  for (size_t i = 0; v && i < n; i++) v[i] = procs[i].rank == PMIX_RANK_WILDCARD ? SF_PMIX_ALL_RANKS : procs[i].rank;
  return v;
}

static pmix_status_t on_abort(const pmix_proc_t *proc, void *server_object, int status, const char msg[],
                              pmix_proc_t procs[], size_t nprocs, pmix_op_cbfunc_t cbfunc, void *cbdata) {
  (void)server_object;
  int64_t r = our_rank(proc);
  if (r >= 0) {
    job->aborted[r] = 1;
    uint32_t *targets = ranks_of(procs, nprocs);
    struct pm_msg m = {.type = PM_ABORT,
                       .u.abort = {(uint32_t)r, status, (char *)(msg ? msg : ""), {targets ? (uint32_t)nprocs : 0, targets}}};
    channel__send(&m);
    free(targets);
  }
  /* Released at once: the rank exits with its status, and the launcher ends the others. */
  if (cbfunc) cbfunc(PMIX_SUCCESS, cbdata);
  return PMIX_SUCCESS;
}

/* ---- lost clients ---- */

/* One connection of a rank closed: the rank is lost when its last one closes before it
 * finalized or aborted (a child's connection closing leaves the rank connected). */
static void report_lost(const pmix_proc_t *proc) {
  int64_t r = our_rank(proc);
  if (r < 0 || !job->connected[r]) return;
  if (--job->connected[r] || job->finalized[r] || job->aborted[r] || job->lost[r]) return;
  job->lost[r] = 1;
  channel__send_rank(PM_DISCONNECTED, (uint32_t)r);
}

/* libpmix reports a client whose connection closed before it finalized as PMIX_ERR_LOST_CONNECTION
 * with the client as source; when several go within its caching window it sends one event with
 * the others as PMIX_PROCID infos (we set the window to 0, but read both). */
static void on_lost(size_t id, pmix_status_t status, const pmix_proc_t *source, pmix_info_t info[], size_t ninfo,
                    pmix_info_t results[], size_t nresults, pmix_event_notification_cbfunc_fn_t cbfunc, void *cbdata) {
  (void)id, (void)status, (void)results, (void)nresults;
  report_lost(source);
  for (size_t i = 0; i < ninfo; i++)
    if (PMIX_CHECK_KEY(&info[i], PMIX_PROCID) && info[i].value.type == PMIX_PROC) report_lost(info[i].value.data.proc);
  if (cbfunc) cbfunc(PMIX_EVENT_ACTION_COMPLETE, NULL, 0, NULL, NULL, cbdata);
}

int upcalls__watch_disconnects(void) {
  pmix_status_t code = PMIX_ERR_LOST_CONNECTION;
  pmix_status_t rc = PMIx_Register_event_handler(&code, 1, NULL, 0, on_lost, NULL, NULL);
  return rc < 0 ? -EIO : 0;
}

/* ---- fences ---- */

struct pending {
  uint32_t seq;
  pmix_modex_cbfunc_t cbfunc;
  void *cbdata;
};

static pthread_mutex_t fence_lock = PTHREAD_MUTEX_INITIALIZER;
static struct pending *pending; /* under fence_lock */
static size_t npending, cap;
static uint32_t next_seq; /* progress thread only */

static void release_data(void *data) { free(data); }

static int pending__add(uint32_t seq, pmix_modex_cbfunc_t cbfunc, void *cbdata) {
  pthread_mutex_lock(&fence_lock);
  int rc = 0;
  if (npending == cap) {
    size_t ncap = cap ? cap * 2 : 8;
    struct pending *p = sf_realloc(pending, ncap * sizeof *p);
    if (p) {
      pending = p;
      cap = ncap;
    } else {
      rc = -ENOMEM;
    }
  }
  if (!rc) pending[npending++] = (struct pending){seq, cbfunc, cbdata};
  pthread_mutex_unlock(&fence_lock);
  return rc;
}

/* Removes fence seq from the table into *out; 0 or -ENOENT. */
static int pending__take(uint32_t seq, struct pending *out) {
  pthread_mutex_lock(&fence_lock);
  int rc = -ENOENT;
  for (size_t i = 0; i < npending; i++)
    if (pending[i].seq == seq) {
      *out = pending[i];
      pending[i] = pending[--npending];
      rc = 0;
      break;
    }
  pthread_mutex_unlock(&fence_lock);
  return rc;
}

/* libpmix hands us data (we own it, and return a blob with a release function). */
static pmix_status_t on_fence(const pmix_proc_t procs[], size_t nprocs, const pmix_info_t info[], size_t ninfo,
                              char *data, size_t ndata, pmix_modex_cbfunc_t cbfunc, void *cbdata) {
  (void)info, (void)ninfo;
  uint32_t *ranks = ranks_of(procs, nprocs);
  if (!ranks || ndata > SF_PMIX_MAX_FRAME / 2) {
    free(ranks);
    free(data);
    return ranks ? PMIX_ERR_BAD_PARAM : PMIX_ERR_NOMEM;
  }
  uint32_t seq = next_seq++;
  struct pm_u32s participants = {(uint32_t)nprocs, ranks};
  if (job__all_local(job, ranks, nprocs)) {
    struct pm_msg m = {.type = PM_FENCE_LOCAL, .u.fence_local = {seq, participants, (uint32_t)ndata}};
    channel__send(&m);
    free(ranks);
    /* This server's blob is every participant's data. */
    cbfunc(PMIX_SUCCESS, data, ndata, cbdata, release_data, data);
    return PMIX_SUCCESS;
  }
  int rc = pending__add(seq, cbfunc, cbdata);
  if (!rc) {
    struct pm_msg m = {.type = PM_FENCE, .u.fence = {seq, participants, {(uint32_t)ndata, (uint8_t *)data}}};
    rc = channel__send(&m);
    struct pending gone;
    if (rc) pending__take(seq, &gone); /* the launcher is gone: libpmix fails the fence itself */
  }
  free(ranks);
  free(data);
  return rc ? PMIX_ERR_UNREACH : PMIX_SUCCESS;
}

int upcalls__fence_done(uint32_t seq, int ok, uint8_t *data, uint32_t n) {
  struct pending p;
  if (pending__take(seq, &p)) {
    free(data);
    return -ENOENT;
  }
  if (ok) {
    p.cbfunc(PMIX_SUCCESS, (char *)data, n, p.cbdata, release_data, data);
  } else {
    free(data);
    p.cbfunc(PMIX_ERR_LOST_CONNECTION, NULL, 0, p.cbdata, NULL, NULL);
  }
  return 0;
}

void upcalls__fail_pending(void) {
  pthread_mutex_lock(&fence_lock);
  struct pending *all = pending;
  size_t n = npending;
  pending = NULL;
  npending = cap = 0;
  pthread_mutex_unlock(&fence_lock);
  for (size_t i = 0; i < n; i++) all[i].cbfunc(PMIX_ERR_LOST_CONNECTION, NULL, 0, all[i].cbdata, NULL, NULL);
  free(all);
}

/* ---- what we refuse ---- */

/* The call fails in the rank with PMIX_ERR_NOT_SUPPORTED (libpmix answers it at once when the
 * upcall returns an error); the launcher hears which rank asked for what. */
static pmix_status_t refuse(const pmix_proc_t *proc, const char *call) {
  int64_t r = our_rank(proc);
  struct pm_msg m = {.type = PM_UNSUPPORTED, .u.unsupported = {r < 0 ? SF_PMIX_ALL_RANKS : (uint32_t)r, (char *)call}};
  channel__send(&m);
  return PMIX_ERR_NOT_SUPPORTED;
}

static pmix_status_t on_publish(const pmix_proc_t *proc, const pmix_info_t info[], size_t ninfo, pmix_op_cbfunc_t cbfunc,
                                void *cbdata) {
  (void)info, (void)ninfo, (void)cbfunc, (void)cbdata;
  return refuse(proc, "publish");
}

static pmix_status_t on_lookup(const pmix_proc_t *proc, char **keys, const pmix_info_t info[], size_t ninfo,
                               pmix_lookup_cbfunc_t cbfunc, void *cbdata) {
  (void)keys, (void)info, (void)ninfo, (void)cbfunc, (void)cbdata;
  return refuse(proc, "lookup");
}

static pmix_status_t on_unpublish(const pmix_proc_t *proc, char **keys, const pmix_info_t info[], size_t ninfo,
                                  pmix_op_cbfunc_t cbfunc, void *cbdata) {
  (void)keys, (void)info, (void)ninfo, (void)cbfunc, (void)cbdata;
  return refuse(proc, "unpublish");
}

static pmix_status_t on_spawn(const pmix_proc_t *proc, const pmix_info_t job_info[], size_t ninfo, const pmix_app_t apps[],
                              size_t napps, pmix_spawn_cbfunc_t cbfunc, void *cbdata) {
  (void)job_info, (void)ninfo, (void)apps, (void)napps, (void)cbfunc, (void)cbdata;
  return refuse(proc, "spawn");
}

/* Asked when a rank wants data of a rank of another server that no fence has brought: every
 * fence relay carries all data (Open MPI collects it in MPI_Init), so this is not served. */
static pmix_status_t on_direct_modex(const pmix_proc_t *proc, const pmix_info_t info[], size_t ninfo,
                                     pmix_modex_cbfunc_t cbfunc, void *cbdata) {
  (void)info, (void)ninfo, (void)cbfunc, (void)cbdata;
  return refuse(proc, "direct_modex");
}

pmix_server_module_t upcalls__module = {
  .client_connected2 = on_connected,
  .client_finalized = on_finalized,
  .abort = on_abort,
  .fence_nb = on_fence,
  .direct_modex = on_direct_modex,
  .publish = on_publish,
  .lookup = on_lookup,
  .unpublish = on_unpublish,
  .spawn = on_spawn,
};
