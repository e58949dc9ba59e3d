/* The job of job.h: checking, indexing and registering it with libpmix. */
#define _GNU_SOURCE
#include "pmix/job.h"

#include <pmix.h>
#include <pmix_server.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/sf.h"

static int fail(char *why, size_t whylen, int err, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, whylen, fmt, ap);
  va_end(ap);
  return err;
}

static const struct pm_node *node_at(const struct job *job, uint32_t i) {
  return &((const struct pm_node *)job->spec.nodes.v)[i];
}

/* ---- checking and indexing ---- */

static int check_names(const struct job *job, char *why, size_t whylen) {
  const char *ns = job->spec.nspace;
  if (!ns[0] || strlen(ns) > PMIX_MAX_NSLEN) return fail(why, whylen, -EINVAL, "job: namespace must have 1 to %d characters", PMIX_MAX_NSLEN);
  if (job->spec.nodes.n == 0) return fail(why, whylen, -EINVAL, "job: no nodes");
  for (uint32_t i = 0; i < job->spec.nodes.n; i++) {
    const char *h = node_at(job, i)->hostname;
    /* The node and proc maps are comma and semicolon separated lists of these names. */
    if (!h[0] || strpbrk(h, ",; ")) return fail(why, whylen, -EINVAL, "job: node %u: hostname '%s' is empty or contains ',', ';' or a space", i, h);
    for (uint32_t j = 0; j < i; j++)
      if (!strcmp(h, node_at(job, j)->hostname)) return fail(why, whylen, -EINVAL, "job: hostname '%s' names two nodes", h);
    if (node_at(job, i)->ranks.n == 0) return fail(why, whylen, -EINVAL, "job: node '%s' has no ranks", h);
  }
  return 0;
}

static int index_ranks(struct job *job, char *why, size_t whylen) {
  uint32_t n = job->nprocs;
  for (uint32_t r = 0; r < n; r++) job->node_of[r] = UINT32_MAX;
  for (uint32_t i = 0; i < job->spec.nodes.n; i++) {
    const struct pm_u32s *ranks = &node_at(job, i)->ranks;
    for (uint32_t k = 0; k < ranks->n; k++) {
      uint32_t r = ranks->v[k];
      if (r >= n) return fail(why, whylen, -EINVAL, "job: node '%s' lists rank %u, but the job has %u ranks", node_at(job, i)->hostname, r, n);
      if (job->node_of[r] != UINT32_MAX) return fail(why, whylen, -EINVAL, "job: rank %u is on two nodes", r);
      job->node_of[r] = i;
    }
  }
  for (uint32_t r = 0; r < n; r++)
    if (job->node_of[r] == UINT32_MAX) return fail(why, whylen, -EINVAL, "job: rank %u is on no node", r);
  /* Local and app ranks count the lower ranks of the same node or app: the order of a node's
   * list does not matter. */
  for (uint32_t r = 0; r < n; r++)
    for (uint32_t s = 0; s < r; s++) {
      if (job->node_of[s] == job->node_of[r]) job->local_rank[r]++;
      if (job->spec.appnums.v[s] == job->spec.appnums.v[r]) job->app_rank[r]++;
    }
  return 0;
}

static int index_apps(struct job *job, char *why, size_t whylen) {
  uint32_t max = 0;
  for (uint32_t r = 0; r < job->nprocs; r++)
    if (job->spec.appnums.v[r] > max) max = job->spec.appnums.v[r];
  if (max >= job->nprocs) return fail(why, whylen, -EINVAL, "job: app number %u, but the job has %u ranks", max, job->nprocs);
  job->napps = max + 1;
  for (uint32_t a = 0; a < job->napps; a++) {
    uint32_t r = 0;
    while (r < job->nprocs && job->spec.appnums.v[r] != a) r++;
    if (r == job->nprocs) return fail(why, whylen, -EINVAL, "job: app %u has no ranks (app numbers must be 0..%u)", a, max);
  }
  return 0;
}

static int index_local(struct job *job, char *why, size_t whylen) {
  if (job->spec.local_nodes.n == 0) return fail(why, whylen, -EINVAL, "job: this server serves no nodes");
  uint8_t *seen = sf_calloc(job->spec.nodes.n, 1);
  if (!seen) return -ENOMEM;
  int rc = 0;
  for (uint32_t k = 0; k < job->spec.local_nodes.n && !rc; k++) {
    uint32_t i = job->spec.local_nodes.v[k];
    if (i >= job->spec.nodes.n) rc = fail(why, whylen, -EINVAL, "job: local node %u, but the job has %u nodes", i, job->spec.nodes.n);
    else if (seen[i]++) rc = fail(why, whylen, -EINVAL, "job: local node %u listed twice", i);
  }
  for (uint32_t r = 0; r < job->nprocs && !rc; r++) {
    job->local[r] = seen[job->node_of[r]];
    job->nlocal += job->local[r];
  }
  free(seen);
  return rc;
}

int job__load(struct job *job, struct pm_job *msg, char *why, size_t whylen) {
  memset(job, 0, sizeof *job);
  job->spec = *msg;
  memset(msg, 0, sizeof *msg);
  uint32_t n = job->nprocs = job->spec.appnums.n;
  if (n == 0) return fail(why, whylen, -EINVAL, "job: no ranks");
  job->node_of = sf_array(n, sizeof *job->node_of);
  job->local_rank = sf_calloc(n, sizeof *job->local_rank);
  job->app_rank = sf_calloc(n, sizeof *job->app_rank);
  job->local = sf_calloc(n, 1);
  job->connected = sf_calloc(n, sizeof *job->connected);
  job->finalized = sf_calloc(n, 1);
  job->aborted = sf_calloc(n, 1);
  job->lost = sf_calloc(n, 1);
  if (!job->node_of || !job->local_rank || !job->app_rank || !job->local || !job->connected || !job->finalized ||
      !job->aborted || !job->lost)
    return -ENOMEM;
  int rc;
  if ((rc = check_names(job, why, whylen)) || (rc = index_apps(job, why, whylen)) ||
      (rc = index_ranks(job, why, whylen)) || (rc = index_local(job, why, whylen)))
    return rc;
  return 0;
}

int job__all_local(const struct job *job, const uint32_t *ranks, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (ranks[i] == SF_PMIX_ALL_RANKS) {
      if (job->nlocal != job->nprocs) return 0;
    } else if (ranks[i] >= job->nprocs || !job->local[ranks[i]]) {
      return 0;
    }
  }
  return 1;
}

/* ---- registration ---- */

/* A growing string; err is set (and s freed) on the first failed allocation. */
struct text {
  char *s;
  size_t len;
  int err;
};

static void text__add(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text__add(struct text *t, const char *fmt, ...) {
  if (t->err) return;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *p = m < 0 ? NULL : sf_realloc(t->s, t->len + (size_t)m + 1);
  if (!p) {
    free(t->s);
    *t = (struct text){NULL, 0, -ENOMEM};
    return;
  }
  va_start(ap, fmt);
  vsnprintf(p + t->len, (size_t)m + 1, fmt, ap);
  va_end(ap);
  t->s = p;
  t->len += (size_t)m;
}

/* Appends the ranks of node i, ascending, separated by sep ("0,1,2"). */
static void text__node_ranks(struct text *t, const struct job *job, uint32_t i, char sep) {
  int first = 1;
  for (uint32_t r = 0; r < job->nprocs; r++) {
    if (job->node_of[r] != i) continue;
    if (!first) text__add(t, "%c", sep);
    text__add(t, "%u", r);
    first = 0;
  }
}

static uint32_t node_leader(const struct job *job, uint32_t i) {
  uint32_t r = 0;
  while (job->node_of[r] != i) r++;
  return r;
}

/* The libpmix regexes of the node map ("n0,n1") and the proc map ("0,1;2,3"). */
static int maps(const struct job *job, char **nodemap, char **procmap) {
  struct text hosts = {0}, procs = {0};
  for (uint32_t i = 0; i < job->spec.nodes.n; i++) {
    text__add(&hosts, "%s%s", i ? "," : "", node_at(job, i)->hostname);
    if (i) text__add(&procs, ";");
    text__node_ranks(&procs, job, i, ',');
  }
  int rc = hosts.err ? hosts.err : procs.err;
  *nodemap = *procmap = NULL;
  if (!rc && (PMIx_generate_regex(hosts.s, nodemap) != PMIX_SUCCESS || PMIx_generate_ppn(procs.s, procmap) != PMIX_SUCCESS)) rc = -EIO;
  free(hosts.s);
  free(procs.s);
  return rc;
}

/* Adds key = an info array built by fill() to list. */
typedef int (*fill_fn)(void *list, const struct job *job, uint32_t i);
static int add_array(void *list, const char *key, fill_fn fill, const struct job *job, uint32_t i) {
  void *sub = PMIx_Info_list_start();
  if (!sub) return -ENOMEM;
  int rc = fill(sub, job, i);
  pmix_data_array_t arr = {0};
  if (!rc && PMIx_Info_list_convert(sub, &arr) != PMIX_SUCCESS) rc = -EIO;
  PMIx_Info_list_release(sub);
  if (!rc && PMIx_Info_list_add(list, key, &arr, PMIX_DATA_ARRAY) != PMIX_SUCCESS) rc = -EIO;
  PMIx_Data_array_destruct(&arr);
  return rc;
}

#define ADD(list, key, val, type)                                                     \
  do {                                                                                \
    if (PMIx_Info_list_add((list), (key), (val), (type)) != PMIX_SUCCESS) return -EIO; \
  } while (0)

static int fill_app(void *l, const struct job *job, uint32_t a) {
  uint32_t size = 0;
  pmix_rank_t leader = PMIX_RANK_INVALID;
  for (uint32_t r = 0; r < job->nprocs; r++)
    if (job->spec.appnums.v[r] == a) {
      if (leader == PMIX_RANK_INVALID) leader = r;
      size++;
    }
  ADD(l, PMIX_APPNUM, &a, PMIX_UINT32);
  ADD(l, PMIX_APP_SIZE, &size, PMIX_UINT32);
  ADD(l, PMIX_APPLDR, &leader, PMIX_PROC_RANK);
  return 0;
}

static int fill_node(void *l, const struct job *job, uint32_t i) {
  uint32_t size = node_at(job, i)->ranks.n;
  pmix_rank_t leader = node_leader(job, i);
  struct text peers = {0};
  text__node_ranks(&peers, job, i, ',');
  if (peers.err) return peers.err;
  int rc = 0;
  if (PMIx_Info_list_add(l, PMIX_HOSTNAME, node_at(job, i)->hostname, PMIX_STRING) != PMIX_SUCCESS ||
      PMIx_Info_list_add(l, PMIX_NODEID, &i, PMIX_UINT32) != PMIX_SUCCESS ||
      PMIx_Info_list_add(l, PMIX_LOCAL_SIZE, &size, PMIX_UINT32) != PMIX_SUCCESS ||
      PMIx_Info_list_add(l, PMIX_NODE_SIZE, &size, PMIX_UINT32) != PMIX_SUCCESS ||
      PMIx_Info_list_add(l, PMIX_LOCAL_PEERS, peers.s, PMIX_STRING) != PMIX_SUCCESS ||
      PMIx_Info_list_add(l, PMIX_LOCALLDR, &leader, PMIX_PROC_RANK) != PMIX_SUCCESS)
    rc = -EIO;
  free(peers.s);
  return rc;
}

static int fill_proc(void *l, const struct job *job, uint32_t r) {
  pmix_rank_t rank = r, app_rank = job->app_rank[r];
  uint16_t local_rank = (uint16_t)job->local_rank[r];
  uint32_t node = job->node_of[r];
  ADD(l, PMIX_RANK, &rank, PMIX_PROC_RANK); /* first: libpmix finds the proc by it */
  ADD(l, PMIX_APPNUM, &job->spec.appnums.v[r], PMIX_UINT32);
  ADD(l, PMIX_GLOBAL_RANK, &rank, PMIX_PROC_RANK);
  ADD(l, PMIX_APP_RANK, &app_rank, PMIX_PROC_RANK);
  ADD(l, PMIX_LOCAL_RANK, &local_rank, PMIX_UINT16);
  ADD(l, PMIX_NODE_RANK, &local_rank, PMIX_UINT16);
  ADD(l, PMIX_HOSTNAME, node_at(job, node)->hostname, PMIX_STRING);
  ADD(l, PMIX_NODEID, &node, PMIX_UINT32);
  return 0;
}

/* Job-level info: sizes, maps, then one array per app, node and proc. No PMIX_TMPDIR or
 * PMIX_NSDIR: Open MPI would put its session directory there, a path clones may not have. */
static int fill_job(void *l, const struct job *job) {
  char *nodemap = NULL, *procmap = NULL;
  int rc = maps(job, &nodemap, &procmap);
  uint32_t n = job->nprocs, nnodes = job->spec.nodes.n;
  bool no = false;
  if (!rc && (PMIx_Info_list_add(l, PMIX_JOBID, job->spec.nspace, PMIX_STRING) != PMIX_SUCCESS ||
              PMIx_Info_list_add(l, PMIX_UNIV_SIZE, &n, PMIX_UINT32) != PMIX_SUCCESS ||
              PMIx_Info_list_add(l, PMIX_JOB_SIZE, &n, PMIX_UINT32) != PMIX_SUCCESS ||
              PMIx_Info_list_add(l, PMIX_MAX_PROCS, &n, PMIX_UINT32) != PMIX_SUCCESS ||
              PMIx_Info_list_add(l, PMIX_NUM_NODES, &nnodes, PMIX_UINT32) != PMIX_SUCCESS ||
              PMIx_Info_list_add(l, PMIX_JOB_NUM_APPS, &job->napps, PMIX_UINT32) != PMIX_SUCCESS ||
              PMIx_Info_list_add(l, PMIX_SPAWNED, &no, PMIX_BOOL) != PMIX_SUCCESS ||
              PMIx_Info_list_add(l, PMIX_NODE_MAP, nodemap, PMIX_REGEX) != PMIX_SUCCESS ||
              PMIx_Info_list_add(l, PMIX_PROC_MAP, procmap, PMIX_REGEX) != PMIX_SUCCESS))
    rc = -EIO;
  free(nodemap);
  free(procmap);
  for (uint32_t a = 0; a < job->napps && !rc; a++) rc = add_array(l, PMIX_APP_INFO_ARRAY, fill_app, job, a);
  for (uint32_t i = 0; i < nnodes && !rc; i++) rc = add_array(l, PMIX_NODE_INFO_ARRAY, fill_node, job, i);
  for (uint32_t r = 0; r < n && !rc; r++) rc = add_array(l, PMIX_PROC_INFO_ARRAY, fill_proc, job, r);
  return rc;
}

/* Blocking libpmix calls (NULL callback) say OPERATION_SUCCEEDED when they are done. */
static int done(pmix_status_t prc) { return prc == PMIX_SUCCESS || prc == PMIX_OPERATION_SUCCEEDED; }

static void proc_of(const struct job *job, uint32_t rank, pmix_proc_t *proc) {
  PMIX_PROC_LOAD(proc, job->spec.nspace, rank);
}

int job__register(struct job *job, char *why, size_t whylen) {
  void *list = PMIx_Info_list_start();
  if (!list) return -ENOMEM;
  int rc = fill_job(list, job);
  pmix_data_array_t info = {0};
  if (!rc && PMIx_Info_list_convert(list, &info) != PMIX_SUCCESS) rc = -EIO;
  PMIx_Info_list_release(list);
  if (rc) {
    PMIx_Data_array_destruct(&info);
    return rc == -ENOMEM ? rc : fail(why, whylen, rc, "job: cannot build the job info for libpmix");
  }
  /* NULL callbacks: libpmix 4 blocks until the registration is done. */
  pmix_status_t prc = PMIx_server_register_nspace(job->spec.nspace, (int)job->nlocal, info.array, info.size, NULL, NULL);
  PMIx_Data_array_destruct(&info);
  if (!done(prc)) return fail(why, whylen, -EIO, "job: libpmix refused namespace '%s': %s", job->spec.nspace, PMIx_Error_string(prc));
  job->registered = 1;
  for (uint32_t r = 0; r < job->nprocs; r++) {
    if (!job->local[r]) continue;
    pmix_proc_t proc;
    proc_of(job, r, &proc);
    prc = PMIx_server_register_client(&proc, getuid(), getgid(), NULL, NULL, NULL);
    if (!done(prc)) return fail(why, whylen, -EIO, "job: libpmix refused rank %u: %s", r, PMIx_Error_string(prc));
  }
  return 0;
}

int job__env(const struct job *job, uint32_t rank, struct pm_strs *vars, char *why, size_t whylen) {
  if (rank >= job->nprocs || !job->local[rank]) return fail(why, whylen, -EINVAL, "env: rank %u is not served by this server", rank);
  pmix_proc_t proc;
  proc_of(job, rank, &proc);
  char **env = NULL;
  pmix_status_t prc = PMIx_server_setup_fork(&proc, &env);
  if (prc != PMIX_SUCCESS) {
    PMIX_ARGV_FREE(env);
    return fail(why, whylen, -EIO, "env: libpmix cannot set up rank %u: %s", rank, PMIx_Error_string(prc));
  }
  size_t n = 0;
  while (env && env[n]) n++;
  /* setup_fork names the server's host; the rank's node is the one the node map names, and the
   * client finds its own node's info (local peers, local size) by this name. */
  const char *host = node_at(job, job->node_of[rank])->hostname;
  char *hostvar = NULL;
  if (asprintf(&hostvar, "PMIX_HOSTNAME=%s", host) < 0) hostvar = NULL;
  vars->v = sf_calloc(n + 1, sizeof *vars->v);
  if (!hostvar || !vars->v) {
    free(hostvar);
    free(vars->v);
    vars->v = NULL;
    PMIX_ARGV_FREE(env);
    return -ENOMEM;
  }
  vars->n = 0;
  for (size_t i = 0; i < n; i++) {
    if (!strncmp(env[i], "PMIX_HOSTNAME=", 14)) continue;
    if (!(vars->v[vars->n] = sf_strdup(env[i]))) {
      for (uint32_t j = 0; j < vars->n; j++) free(vars->v[j]);
      free(vars->v);
      vars->v = NULL;
      free(hostvar);
      PMIX_ARGV_FREE(env);
      return -ENOMEM;
    }
    vars->n++;
  }
  vars->v[vars->n++] = hostvar;
  PMIX_ARGV_FREE(env);
  return 0;
}

void job__deregister(struct job *job) {
  if (!job->registered) return;
  for (uint32_t r = 0; r < job->nprocs; r++) {
    if (!job->local[r]) continue;
    pmix_proc_t proc;
    proc_of(job, r, &proc);
    PMIx_server_deregister_client(&proc, NULL, NULL);
  }
  PMIx_server_deregister_nspace(job->spec.nspace, NULL, NULL);
  job->registered = 0;
}

void job__free(struct job *job) {
  struct pm_msg m = {.type = PM_JOB, .u.job = job->spec};
  pm_free(&m);
  free(job->node_of);
  free(job->local_rank);
  free(job->app_rank);
  free(job->local);
  free(job->connected);
  free(job->finalized);
  free(job->aborted);
  free(job->lost);
  memset(job, 0, sizeof *job);
}
