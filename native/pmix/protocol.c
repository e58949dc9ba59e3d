/*
 * The codec of protocol.h, driven by one schema table: each message is a struct whose fields
 * the table lists in wire order, with their kind and offset. Encoding, decoding and freeing walk
 * the same table, so a message cannot be written one way and read another.
 */
#define _GNU_SOURCE
#include "pmix/protocol.h"

#include <stdlib.h>
#include <string.h>

#include "common/sf.h"

enum kind { K_U8, K_U32, K_I32, K_STR, K_BYTES, K_U32S, K_STRS, K_LIST };

struct shape;
struct field {
  enum kind kind;
  size_t off;
  const struct shape *sub; /* K_LIST: the element's shape */
};
struct shape {
  size_t size;
  const struct field *fields;
  size_t nfields;
};

#define F(kind, type, member) {kind, offsetof(type, member), NULL}
#define SHAPE(type, ...)                                                                  \
  {sizeof(type), (const struct field[]){__VA_ARGS__},                                     \
   sizeof((const struct field[]){__VA_ARGS__}) / sizeof(struct field)}

static const struct shape node_shape = SHAPE(struct pm_node,
  F(K_STR, struct pm_node, hostname), F(K_U32S, struct pm_node, ranks));

struct message {
  const char *name;
  struct shape shape;
};

/* The table of protocol.h, in its order. */
static const struct message messages[256] = {
  [PM_HELLO] = {"HELLO", SHAPE(struct pm_hello, F(K_U32, struct pm_hello, version),
    F(K_STR, struct pm_hello, listen), F(K_U32, struct pm_hello, handshake_ms),
    F(K_STR, struct pm_hello, tmpdir), F(K_U8, struct pm_hello, share_topology))},
  [PM_JOB] = {"JOB", SHAPE(struct pm_job, F(K_STR, struct pm_job, nspace),
    {K_LIST, offsetof(struct pm_job, nodes), &node_shape}, F(K_U32S, struct pm_job, appnums),
    F(K_U32S, struct pm_job, local_nodes))},
  [PM_ENV_REQ] = {"ENV_REQ", SHAPE(struct pm_env_req, F(K_U32, struct pm_env_req, rank))},
  [PM_FENCE_DONE] = {"FENCE_DONE", SHAPE(struct pm_fence_done, F(K_U32, struct pm_fence_done, seq),
    F(K_U8, struct pm_fence_done, ok), F(K_BYTES, struct pm_fence_done, data))},
  [PM_SHUTDOWN] = {"SHUTDOWN", {0, NULL, 0}},
  [PM_READY] = {"READY", SHAPE(struct pm_ready, F(K_U32, struct pm_ready, version),
    F(K_U32, struct pm_ready, pid), F(K_STR, struct pm_ready, uri))},
  [PM_JOB_OK] = {"JOB_OK", SHAPE(struct pm_job_ok, F(K_STR, struct pm_job_ok, nspace),
    F(K_U32S, struct pm_job_ok, local_ranks))},
  [PM_ENV] = {"ENV", SHAPE(struct pm_env, F(K_U32, struct pm_env, rank), F(K_STRS, struct pm_env, vars))},
  [PM_CONNECTED] = {"CONNECTED", SHAPE(struct pm_rank, F(K_U32, struct pm_rank, rank))},
  [PM_FINALIZED] = {"FINALIZED", SHAPE(struct pm_rank, F(K_U32, struct pm_rank, rank))},
  [PM_DISCONNECTED] = {"DISCONNECTED", SHAPE(struct pm_rank, F(K_U32, struct pm_rank, rank))},
  [PM_ABORT] = {"ABORT", SHAPE(struct pm_abort, F(K_U32, struct pm_abort, rank),
    F(K_I32, struct pm_abort, status), F(K_STR, struct pm_abort, message),
    F(K_U32S, struct pm_abort, targets))},
  [PM_FENCE] = {"FENCE", SHAPE(struct pm_fence, F(K_U32, struct pm_fence, seq),
    F(K_U32S, struct pm_fence, participants), F(K_BYTES, struct pm_fence, data))},
  [PM_FENCE_LOCAL] = {"FENCE_LOCAL", SHAPE(struct pm_fence_local, F(K_U32, struct pm_fence_local, seq),
    F(K_U32S, struct pm_fence_local, participants), F(K_U32, struct pm_fence_local, nbytes))},
  [PM_UNSUPPORTED] = {"UNSUPPORTED", SHAPE(struct pm_unsupported, F(K_U32, struct pm_unsupported, rank),
    F(K_STR, struct pm_unsupported, call))},
  [PM_ERROR] = {"ERROR", SHAPE(struct pm_error, F(K_STR, struct pm_error, message))},
};

const char *pm_type_name(uint8_t type) { return messages[type].name; }

/* ---- encoding ---- */

struct wbuf {
  uint8_t *p;
  size_t len, cap;
  int err;
};

static void w_put(struct wbuf *w, const void *src, size_t n) {
  if (w->err) return;
  if (w->len + n > w->cap) {
    size_t cap = w->cap ? w->cap : 256;
    while (cap < w->len + n) cap *= 2;
    uint8_t *p = sf_realloc(w->p, cap);
    if (!p) {
      w->err = -ENOMEM;
      return;
    }
    w->p = p;
    w->cap = cap;
  }
  if (n) memcpy(w->p + w->len, src, n);
  w->len += n;
}

static void w_u32(struct wbuf *w, uint32_t v) {
  uint8_t b[4] = {v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >> 24};
  w_put(w, b, 4);
}

static void w_str(struct wbuf *w, const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n > SF_PMIX_MAX_FRAME) w->err = -E2BIG;
  w_u32(w, (uint32_t)n);
  w_put(w, s, n);
}

static void encode_struct(struct wbuf *w, const struct shape *sh, const char *base);

static void encode_field(struct wbuf *w, const struct field *f, const char *base) {
  const void *at = base + f->off;
  switch (f->kind) {
  case K_U8: w_put(w, at, 1); break;
  case K_U32: w_u32(w, *(const uint32_t *)at); break;
  case K_I32: w_u32(w, (uint32_t) * (const int32_t *)at); break;
  case K_STR: w_str(w, *(char *const *)at); break;
  case K_BYTES: {
    const struct pm_bytes *b = at;
    w_u32(w, b->n);
    w_put(w, b->v, b->n);
    break;
  }
  case K_U32S: {
    const struct pm_u32s *a = at;
    w_u32(w, a->n);
    for (uint32_t i = 0; i < a->n; i++) w_u32(w, a->v[i]);
    break;
  }
  case K_STRS: {
    const struct pm_strs *a = at;
    w_u32(w, a->n);
    for (uint32_t i = 0; i < a->n; i++) w_str(w, a->v[i]);
    break;
  }
  case K_LIST: {
    const struct pm_list *l = at;
    w_u32(w, l->n);
    for (uint32_t i = 0; i < l->n; i++) encode_struct(w, f->sub, (const char *)l->v + i * f->sub->size);
    break;
  }
  }
}

static void encode_struct(struct wbuf *w, const struct shape *sh, const char *base) {
  for (size_t i = 0; i < sh->nfields; i++) encode_field(w, &sh->fields[i], base);
}

int pm_encode(const struct pm_msg *msg, uint8_t **frame, size_t *len) {
  const struct message *m = &messages[msg->type];
  if (!m->name) return -EINVAL;
  struct wbuf w = {0};
  w_u32(&w, 0); /* the length, patched below */
  w_put(&w, &msg->type, 1);
  encode_struct(&w, &m->shape, (const char *)&msg->u);
  if (!w.err && w.len - 4 > SF_PMIX_MAX_FRAME) w.err = -E2BIG;
  if (w.err) {
    free(w.p);
    return w.err;
  }
  uint32_t body = (uint32_t)(w.len - 4);
  uint8_t b[4] = {body & 0xff, (body >> 8) & 0xff, (body >> 16) & 0xff, body >> 24};
  memcpy(w.p, b, 4);
  *frame = w.p;
  *len = w.len;
  return 0;
}

/* ---- decoding ---- */

struct rbuf {
  const uint8_t *p;
  size_t len, pos;
  const char *why;
};

static int r_fail(struct rbuf *r, const char *why) {
  if (!r->why) r->why = why;
  return -EPROTO;
}

static int r_take(struct rbuf *r, void *dst, size_t n) {
  if (r->len - r->pos < n) return r_fail(r, "message ends inside a field");
  memcpy(dst, r->p + r->pos, n);
  r->pos += n;
  return 0;
}

static int r_u32(struct rbuf *r, uint32_t *v) {
  uint8_t b[4];
  int rc = r_take(r, b, 4);
  if (rc) return rc;
  *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
  return 0;
}

/* A count of elements that each take at least min_bytes: refuses counts the message cannot hold,
 * so that a malformed count never becomes a huge allocation. */
static int r_count(struct rbuf *r, size_t min_bytes, uint32_t *n) {
  int rc = r_u32(r, n);
  if (rc) return rc;
  if ((size_t)*n > (r->len - r->pos) / min_bytes) return r_fail(r, "count larger than the message");
  return 0;
}

static int r_str(struct rbuf *r, char **out) {
  uint32_t n;
  int rc = r_count(r, 1, &n);
  if (rc) return rc;
  if (memchr(r->p + r->pos, 0, n)) return r_fail(r, "string contains a NUL byte");
  char *s = sf_strndup((const char *)r->p + r->pos, n);
  if (!s) return -ENOMEM;
  r->pos += n;
  *out = s;
  return 0;
}

static int decode_struct(struct rbuf *r, const struct shape *sh, char *base);

static int decode_field(struct rbuf *r, const struct field *f, char *base) {
  void *at = base + f->off;
  int rc = 0;
  switch (f->kind) {
  case K_U8: return r_take(r, at, 1);
  case K_U32: return r_u32(r, at);
  case K_I32: {
    uint32_t v;
    rc = r_u32(r, &v);
    if (!rc) *(int32_t *)at = (int32_t)v;
    return rc;
  }
  case K_STR: return r_str(r, at);
  case K_BYTES: {
    struct pm_bytes *b = at;
    uint32_t n;
    if ((rc = r_count(r, 1, &n))) return rc;
    if (!(b->v = sf_malloc(n))) return -ENOMEM;
    b->n = n;
    return r_take(r, b->v, n);
  }
  case K_U32S: {
    struct pm_u32s *a = at;
    uint32_t n;
    if ((rc = r_count(r, 4, &n))) return rc;
    if (!(a->v = sf_array(n, sizeof *a->v))) return -ENOMEM;
    for (a->n = 0; a->n < n; a->n++)
      if ((rc = r_u32(r, &a->v[a->n]))) return rc;
    return 0;
  }
  case K_STRS: {
    struct pm_strs *a = at;
    uint32_t n;
    if ((rc = r_count(r, 4, &n))) return rc;
    if (!(a->v = sf_calloc(n, sizeof *a->v))) return -ENOMEM;
    for (a->n = 0; a->n < n; a->n++)
      if ((rc = r_str(r, &a->v[a->n]))) return rc;
    return 0;
  }
  case K_LIST: {
    struct pm_list *l = at;
    uint32_t n;
    if ((rc = r_count(r, 4, &n))) return rc; /* every element of a list in the table takes >= 4 bytes */
    if (!(l->v = sf_calloc(n, f->sub->size))) return -ENOMEM;
    for (l->n = 0; l->n < n; l->n++)
      if ((rc = decode_struct(r, f->sub, (char *)l->v + l->n * f->sub->size))) {
        l->n++; /* the partly decoded element is freed too */
        return rc;
      }
    return 0;
  }
  }
  return r_fail(r, "unknown field kind");
}

static int decode_struct(struct rbuf *r, const struct shape *sh, char *base) {
  for (size_t i = 0; i < sh->nfields; i++) {
    int rc = decode_field(r, &sh->fields[i], base);
    if (rc) return rc;
  }
  return 0;
}

static void free_struct(const struct shape *sh, char *base) {
  for (size_t i = 0; i < sh->nfields; i++) {
    const struct field *f = &sh->fields[i];
    void *at = base + f->off;
    switch (f->kind) {
    case K_U8: case K_U32: case K_I32: break;
    case K_STR: free(*(char **)at); break;
    case K_BYTES: free(((struct pm_bytes *)at)->v); break;
    case K_U32S: free(((struct pm_u32s *)at)->v); break;
    case K_STRS: {
      struct pm_strs *a = at;
      for (uint32_t j = 0; j < a->n; j++) free(a->v[j]);
      free(a->v);
      break;
    }
    case K_LIST: {
      struct pm_list *l = at;
      for (uint32_t j = 0; j < l->n; j++) free_struct(f->sub, (char *)l->v + j * f->sub->size);
      free(l->v);
      break;
    }
    }
  }
}

int pm_decode(const uint8_t *body, size_t len, struct pm_msg *msg, const char **why) {
  memset(msg, 0, sizeof *msg);
  struct rbuf r = {body, len, 0, NULL};
  int rc;
  if (len < 1) {
    rc = r_fail(&r, "empty message");
  } else if (!messages[body[0]].name) {
    rc = r_fail(&r, "unknown message type");
  } else {
    msg->type = body[0];
    r.pos = 1;
    rc = decode_struct(&r, &messages[msg->type].shape, (char *)&msg->u);
    if (!rc && r.pos != r.len) rc = r_fail(&r, "bytes left over after the last field");
  }
  if (rc) {
    if (msg->type) pm_free(msg);
    memset(msg, 0, sizeof *msg);
    if (why) *why = r.why ? r.why : "out of memory";
  }
  return rc;
}

void pm_free(struct pm_msg *msg) {
  if (messages[msg->type].name) free_struct(&messages[msg->type].shape, (char *)&msg->u);
  memset(msg, 0, sizeof *msg);
}
