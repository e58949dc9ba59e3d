/*
 * proto-codec: the agent protocol's C codec (proto/agent.c, the code the agent runs) as a filter,
 * so that a test can check the TypeScript codec against it in both directions. Host-only.
 *
 *   proto-codec decode    binary frames on stdin -> text lines on stdout
 *   proto-codec encode    text lines on stdin -> binary frames on stdout
 *
 * Bytes travel as lowercase hex, "-" for none. Lines written by decode:
 *
 *   frame TYPE SID HEX                 every frame (TYPE is its name, or its number if unknown)
 *   exec MODE CWD ARG,ARG,.. ENV,..    after an EXEC frame, as the agent decodes it (lists: "-" if empty)
 *   exec-invalid WHY                   after an EXEC frame the agent refuses
 *   ident KEY VALUE                    after an IDENT frame: each key the agent knows, in order
 *   refused SID LEN WHY                a frame the reader refused (too long, no memory), skipped
 *   truncated N                        end of input inside a frame, N bytes held (exit status 1)
 *
 * Lines read by encode (one frame each):
 *
 *   frame TYPE SID HEX                 TYPE a name or a number
 *   header LEN TYPE SID                a header alone (to build truncated or oversized input)
 *   hello                              the agent's HELLO
 *   exit SID code N | exit SID signal N  the agent's EXIT for that wait status
 */
#define _GNU_SOURCE
#include "common/sf.h"
#include "proto/agent.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- output ---- */

static void put_hex(FILE *out, const void *data, size_t len) {
  const unsigned char *p = data;
  if (len == 0) fputc('-', out);
  for (size_t i = 0; i < len; i++) fprintf(out, "%02x", p[i]);
}

static void put_list(FILE *out, char **list) {
  if (!list[0]) fputc('-', out);
  for (int i = 0; list[i]; i++) {
    if (i) fputc(',', out);
    put_hex(out, list[i], strlen(list[i]));
  }
}

static void put_type(FILE *out, unsigned type) {
  const char *name = agent_frame_type__name(type);
  if (name) fputs(name, out);
  else fprintf(out, "%u", type);
}

static int print_exec(FILE *out, const struct agent_frame *f) {
  struct agent_exec e;
  const char *why = "";
  int rc = agent_exec__decode(f->payload, f->h.len, &e, &why);
  if (rc == -EINVAL) {
    fprintf(out, "exec-invalid %s\n", why);
    return 0;
  }
  if (rc < 0) return rc;
  fprintf(out, "exec %s ", e.want_stdin ? AGENT_EXEC_STDIN : AGENT_EXEC_NOSTDIN);
  put_hex(out, e.cwd, strlen(e.cwd));
  fputc(' ', out);
  put_list(out, e.argv);
  fputc(' ', out);
  put_list(out, e.envp);
  fputc('\n', out);
  agent_exec__free(&e);
  return 0;
}

static int print_ident(FILE *out, const struct agent_frame *f) {
  char *text = sf_strndup(f->payload, f->h.len);
  if (!text) return -ENOMEM;
  struct agent_ident id;
  agent_ident__parse(text, &id);
  for (int k = 0; k < AGENT_IDENT_N_KEYS; k++) {
    if (!id.value[k]) continue;
    fprintf(out, "ident %s ", agent_ident_key__name(k));
    put_hex(out, id.value[k], strlen(id.value[k]));
    fputc('\n', out);
  }
  free(text);
  return 0;
}

static int print_frame(FILE *out, const struct agent_frame *f) {
  fputs("frame ", out);
  put_type(out, f->h.type);
  fprintf(out, " %u ", f->h.sid);
  put_hex(out, f->payload, f->h.len);
  fputc('\n', out);
  if (f->h.type == AGENT_EXEC) return print_exec(out, f);
  if (f->h.type == AGENT_IDENT) return print_ident(out, f);
  return 0;
}

static int decode(void) {
  struct agent_reader r;
  agent_reader__init(&r);
  int rc = 0;
  for (;;) {
    struct agent_frame f;
    int got;
    while ((got = agent_reader__next(&r, &f)) != 0) {
      if (got == 1) rc = print_frame(stdout, &f);
      else fprintf(stdout, "refused %u %u %s\n", f.h.sid, f.h.len, got == -E2BIG ? "too-long" : "no-memory");
      if (rc < 0) goto out;
    }
    long n = agent_reader__read(&r, STDIN_FILENO);
    if (n == 0) break;
    if (n < 0) {
      rc = (int)n;
      goto out;
    }
  }
  uint64_t left = agent_reader__pending(&r);
  if (left) printf("truncated %llu\n", (unsigned long long)left);
  rc = left ? 1 : 0;
out:
  agent_reader__free(&r);
  if (fflush(stdout) != 0 && rc == 0) rc = -errno;
  if (rc < 0) sf_err(rc, "decode");
  return rc < 0 ? 2 : rc;
}

/* ---- input ---- */

static int parse_u32(const char *s, uint32_t *out) {
  long v;
  if (sf_parse_long(s, 0, UINT32_MAX, &v) < 0) return -EINVAL;
  *out = (uint32_t)v;
  return 0;
}

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

/* Hex (or "-") into a new buffer; 0, -EINVAL or -ENOMEM. */
static int parse_hex(const char *s, unsigned char **out, size_t *len) {
  size_t n = strcmp(s, "-") == 0 ? 0 : strlen(s);
  if (n % 2) return -EINVAL;
  unsigned char *b = sf_malloc(n / 2);
  if (!b) return -ENOMEM;
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
    if (hi < 0 || lo < 0) {
      free(b);
      return -EINVAL;
    }
    b[i] = (unsigned char)(hi << 4 | lo);
  }
  *out = b;
  *len = n / 2;
  return 0;
}

static int parse_type(const char *s, uint8_t *type) {
  int t = agent_frame_type__parse(s);
  uint32_t v;
  if (t < 0 && parse_u32(s, &v) == 0 && v <= 255) t = (int)v;
  if (t < 0) return -EINVAL;
  *type = (uint8_t)t;
  return 0;
}

static int emit(const struct agent_header *h, const void *payload, size_t len) {
  unsigned char hdr[AGENT_HEADER_SIZE];
  agent_header__encode(hdr, h);
  if (fwrite(hdr, 1, sizeof hdr, stdout) != sizeof hdr || (len && fwrite(payload, 1, len, stdout) != len)) return -EIO;
  return 0;
}

static int encode_frame(char **w, int n) {
  struct agent_header h;
  unsigned char *payload;
  size_t len;
  if (n != 4 || parse_type(w[1], &h.type) < 0 || parse_u32(w[2], &h.sid) < 0) return -EINVAL;
  int rc = parse_hex(w[3], &payload, &len);
  if (rc < 0) return rc;
  if (len > UINT32_MAX) rc = -EINVAL;
  h.len = (uint32_t)len;
  if (rc == 0) rc = emit(&h, payload, len);
  free(payload);
  return rc;
}

static int encode_header(char **w, int n) {
  struct agent_header h;
  if (n != 4 || parse_u32(w[1], &h.len) < 0 || parse_type(w[2], &h.type) < 0 || parse_u32(w[3], &h.sid) < 0) return -EINVAL;
  return emit(&h, NULL, 0);
}

static int encode_exit(char **w, int n) {
  struct agent_header h = {.type = AGENT_EXIT};
  uint32_t v;
  if (n != 4 || parse_u32(w[1], &h.sid) < 0 || parse_u32(w[3], &v) < 0) return -EINVAL;
  int wstatus;
  if (strcmp(w[2], AGENT_EXIT_CODE) == 0 && v <= 255) wstatus = (int)v << 8;
  else if (strcmp(w[2], AGENT_EXIT_SIGNAL) == 0 && v >= 1 && v < 128 && v != 0x7f) wstatus = (int)v;
  else return -EINVAL;
  char text[32];
  int len = agent_exit__format(text, sizeof text, wstatus);
  if (len < 0) return len;
  h.len = (uint32_t)len;
  return emit(&h, text, (size_t)len);
}

static int encode_line(char *line) {
  char *w[8];
  int n = 0;
  char *save = NULL;
  for (char *t = strtok_r(line, " \t\r\n", &save); t; t = strtok_r(NULL, " \t\r\n", &save)) {
    if (n == (int)SF_ARRAY_LEN(w)) return -EINVAL;
    w[n++] = t;
  }
  if (n == 0) return 0;
  if (strcmp(w[0], "frame") == 0) return encode_frame(w, n);
  if (strcmp(w[0], "header") == 0) return encode_header(w, n);
  if (strcmp(w[0], "exit") == 0) return encode_exit(w, n);
  if (strcmp(w[0], "hello") == 0 && n == 1) {
    struct agent_header h = {.type = AGENT_HELLO, .sid = AGENT_GUEST_STREAM, .len = sizeof AGENT_HELLO_PAYLOAD - 1};
    return emit(&h, AGENT_HELLO_PAYLOAD, h.len);
  }
  return -EINVAL;
}

static int encode(void) {
  char *line = NULL;
  size_t cap = 0;
  long no = 0;
  int rc = 0;
  while (rc == 0 && getline(&line, &cap, stdin) >= 0) {
    no++;
    rc = encode_line(line);
    if (rc == -EINVAL) sf_err(0, "line %ld: not a frame description (see the usage in native/proto/codec.c)", no);
    else if (rc < 0) sf_err(rc, "line %ld", no);
  }
  free(line);
  if (rc == 0 && fflush(stdout) != 0) sf_err(rc = -errno, "write");
  return rc < 0 ? 2 : 0;
}

int main(int argc, char **argv) {
  sf_prog("proto-codec");
  if (argc == 2 && strcmp(argv[1], "decode") == 0) return decode();
  if (argc == 2 && strcmp(argv[1], "encode") == 0) return encode();
  sf_err(0, "usage: proto-codec decode|encode (frames <-> text lines on stdin/stdout)");
  return 2;
}
