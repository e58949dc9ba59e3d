/* The C codec of the agent protocol: see agent.h for the wire format. */
#define _GNU_SOURCE
#include "proto/agent.h"
#include "common/sf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void put_le32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_le32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

void agent_header__encode(unsigned char out[AGENT_HEADER_SIZE], const struct agent_header *h) {
  put_le32(out, h->len);
  out[4] = h->type;
  put_le32(out + 5, h->sid);
}

void agent_header__decode(const unsigned char in[AGENT_HEADER_SIZE], struct agent_header *h) {
  h->len = get_le32(in);
  h->type = in[4];
  h->sid = get_le32(in + 5);
}

const char *agent_frame_type__name(unsigned type) {
  switch (type) {
#define AGENT_CASE_(name, value) \
  case value: return #name;
    AGENT_FRAME_TYPES(AGENT_CASE_)
#undef AGENT_CASE_
  }
  return NULL;
}

int agent_frame_type__parse(const char *name) {
#define AGENT_MATCH_(n, value) \
  if (strcmp(name, #n) == 0) return value;
  AGENT_FRAME_TYPES(AGENT_MATCH_)
#undef AGENT_MATCH_
  return -EINVAL;
}

/* ---- reader ---- */

#define READER_MIN_CAP 65536

void agent_reader__init(struct agent_reader *r) { memset(r, 0, sizeof *r); }

void agent_reader__free(struct agent_reader *r) {
  free(r->buf);
  agent_reader__init(r);
}

/* Room for at least `want` bytes after the unconsumed ones; 0 or -ENOMEM. */
static int agent_reader__reserve(struct agent_reader *r, size_t want) {
  if (r->start > 0) {
    memmove(r->buf, r->buf + r->start, r->end - r->start);
    r->end -= r->start;
    r->start = 0;
  }
  if (r->cap - r->end >= want) return 0;
  size_t cap = r->cap ? r->cap : READER_MIN_CAP;
  while (cap - r->end < want) cap *= 2;
  unsigned char *b = sf_realloc(r->buf, cap);
  if (!b) return -ENOMEM;
  r->buf = b;
  r->cap = cap;
  return 0;
}

/* The frame at start needs this many bytes in all, as far as its header is known. */
static size_t agent_reader__wanted(const struct agent_reader *r) {
  if (r->end - r->start < AGENT_HEADER_SIZE) return AGENT_HEADER_SIZE;
  struct agent_header h;
  agent_header__decode(r->buf + r->start, &h);
  return h.len > AGENT_MAX_PAYLOAD ? AGENT_HEADER_SIZE : AGENT_HEADER_SIZE + (size_t)h.len;
}

long agent_reader__read(struct agent_reader *r, int fd) {
  /* While skipping, the bytes held are a refused payload, not a header. */
  size_t held = r->end - r->start, wanted = r->skip ? 0 : agent_reader__wanted(r);
  size_t want = wanted > held ? wanted - held : 0;
  /* Read at least a good chunk at a time; never less than the frame in progress still needs. */
  if (want < 4096) want = 4096;
  if (r->cap - r->end < want) {
    int rc = agent_reader__reserve(r, want);
    /* No room for the whole frame: read on with what there is, the frame will be refused. */
    if (rc < 0 && r->cap - r->end == 0) return rc;
  }
  ssize_t n;
  do n = read(fd, r->buf + r->end, r->cap - r->end); while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  r->end += (size_t)n;
  return (long)n;
}

int agent_reader__next(struct agent_reader *r, struct agent_frame *f) {
  if (r->skip) {
    size_t drop = r->end - r->start < r->skip ? r->end - r->start : (size_t)r->skip;
    r->start += drop;
    r->skip -= drop;
    if (r->skip) return 0;
  }
  size_t held = r->end - r->start;
  if (held < AGENT_HEADER_SIZE) return 0;
  agent_header__decode(r->buf + r->start, &f->h);
  f->payload = (const char *)r->buf + r->start + AGENT_HEADER_SIZE;
  int refuse = 0;
  if (f->h.len > AGENT_MAX_PAYLOAD) refuse = -E2BIG;
  else if (held < AGENT_HEADER_SIZE + (size_t)f->h.len && agent_reader__reserve(r, AGENT_HEADER_SIZE + f->h.len - held) < 0)
    refuse = -ENOMEM;
  if (refuse) {
    f->payload = NULL;
    r->start += AGENT_HEADER_SIZE;
    r->skip = f->h.len;
    return refuse;
  }
  /* reserve() may have moved the bytes. */
  f->payload = (const char *)r->buf + r->start + AGENT_HEADER_SIZE;
  if (held < AGENT_HEADER_SIZE + (size_t)f->h.len) return 0;
  r->start += AGENT_HEADER_SIZE + f->h.len;
  return 1;
}

uint64_t agent_reader__pending(const struct agent_reader *r) { return (r->end - r->start) + r->skip; }

/* ---- EXEC ---- */

/* The list of NUL-terminated strings at *at, ended by an empty string: its count, or -1. */
static long exec_list_count(const char *p, size_t len, size_t at) {
  long n = 0;
  for (;;) {
    if (at >= len) return -1;
    const char *nul = memchr(p + at, 0, len - at);
    if (!nul) return -1;
    if (nul == p + at) return n;
    n++;
    at = (size_t)(nul - p) + 1;
  }
}

/* Points out[0..n) at the list's strings in copy, NULL-terminates it; returns the offset after it. */
static size_t exec_list_fill(char *copy, size_t at, long n, char **out) {
  for (long i = 0; i < n; i++) {
    out[i] = copy + at;
    at += strlen(copy + at) + 1;
  }
  out[n] = NULL;
  return at + 1;
}

int agent_exec__decode(const char *payload, size_t len, struct agent_exec *e, const char **why) {
  memset(e, 0, sizeof *e);
  long argc = exec_list_count(payload, len, 0);
  if (argc < 0) return *why = "argv is not terminated", -EINVAL;
  if (argc == 0) return *why = "empty argv", -EINVAL;
  size_t env_at = 0;
  for (long i = 0; i <= argc; i++) env_at += strlen(payload + env_at) + 1;
  long envc = exec_list_count(payload, len, env_at);
  if (envc < 0) return *why = "the environment is not terminated", -EINVAL;
  size_t cwd_at = env_at;
  for (long i = 0; i <= envc; i++) cwd_at += strlen(payload + cwd_at) + 1;
  const char *cwd_end = cwd_at < len ? memchr(payload + cwd_at, 0, len - cwd_at) : NULL;
  if (!cwd_end || cwd_end == payload + cwd_at) return *why = "no working directory", -EINVAL;
  size_t mode_at = (size_t)(cwd_end - payload) + 1;
  const char *mode_end = mode_at < len ? memchr(payload + mode_at, 0, len - mode_at) : NULL;
  if (!mode_end) return *why = "no stdin mode", -EINVAL;
  if (mode_end + 1 != payload + len) return *why = "bytes after the stdin mode", -EINVAL;
  const char *mode = payload + mode_at;
  if (strcmp(mode, AGENT_EXEC_STDIN) != 0 && strcmp(mode, AGENT_EXEC_NOSTDIN) != 0) return *why = "bad stdin mode", -EINVAL;

  e->copy = sf_malloc(len);
  e->argv = sf_array((size_t)argc + 1, sizeof *e->argv);
  e->envp = sf_array((size_t)envc + 1, sizeof *e->envp);
  if (!e->copy || !e->argv || !e->envp) {
    agent_exec__free(e);
    return *why = "out of memory", -ENOMEM;
  }
  memcpy(e->copy, payload, len);
  size_t at = exec_list_fill(e->copy, 0, argc, e->argv);
  exec_list_fill(e->copy, at, envc, e->envp);
  e->cwd = e->copy + cwd_at;
  e->want_stdin = strcmp(mode, AGENT_EXEC_STDIN) == 0;
  return 0;
}

void agent_exec__free(struct agent_exec *e) {
  free(e->copy);
  free(e->argv);
  free(e->envp);
  memset(e, 0, sizeof *e);
}

/* ---- EXIT ---- */

int agent_exit__format(char *buf, size_t cap, int wstatus) {
  int n;
  if (WIFEXITED(wstatus)) n = snprintf(buf, cap, AGENT_EXIT_CODE " %d", WEXITSTATUS(wstatus));
  else if (WIFSIGNALED(wstatus)) n = snprintf(buf, cap, AGENT_EXIT_SIGNAL " %d", WTERMSIG(wstatus));
  else return -EINVAL;
  return n < 0 || (size_t)n >= cap ? -EINVAL : n;
}

/* ---- IDENT ---- */

static const char *const ident_names[AGENT_IDENT_N_KEYS] = {
#define AGENT_NAME_(name, text) text,
    AGENT_IDENT_KEYS(AGENT_NAME_)
#undef AGENT_NAME_
};

const char *agent_ident_key__name(int key) { return key >= 0 && key < AGENT_IDENT_N_KEYS ? ident_names[key] : NULL; }

void agent_ident__parse(char *text, struct agent_ident *id) {
  memset(id, 0, sizeof *id);
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    char *eq = strchr(line, '=');
    if (!eq) continue;
    *eq = 0;
    for (int k = 0; k < AGENT_IDENT_N_KEYS; k++)
      if (strcmp(line, ident_names[k]) == 0) id->value[k] = eq + 1;
  }
}
