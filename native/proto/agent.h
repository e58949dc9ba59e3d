/*
 * The guest agent's control protocol: the one definition. native/agent.c speaks it inside VM
 * guests; src/providers/vm/agent/protocol.ts mirrors this file for the host, and
 * test/unit/agent-protocol.test.ts checks the two against each other through native/proto/codec.c.
 * A change here is a change there, and a new AGENT_VERSION.
 *
 * Transport: a byte stream (a virtio-serial port in the guest, a unix socket of QEMU on the host).
 * Every process of a guest shares it, multiplexed by stream id.
 *
 *   frame  = header (9 bytes) | payload (length bytes)
 *   header = u32 payload length, little endian | u8 type | u32 stream id, little endian
 *
 * Stream 0 is the guest's own: IDENT, HELLO, READY, and a FAILED answering an IDENT. Every other
 * stream id names one process, chosen by the host in its EXEC.
 *
 *   host -> guest                             guest -> host
 *   IDENT   (0) identity, key=value lines      HELLO   (0) booted: "version=N" (key=value lines)
 *   EXEC    (s) start a process (see below)    READY   (0) identity applied: the hostname
 *   STDIN   (s) bytes; empty = end of input    STARTED (s) the process runs: its pid, decimal
 *   KILL    (s) signal number, decimal         FAILED  (s) no process (exit status 127): why;
 *                                                      the stream's last frame. Or (0): the
 *                                                      identity failed: why
 *                                              STDOUT  (s) bytes; empty = end of stream
 *                                              STDERR  (s) bytes; empty = end of stream
 *                                              EXIT    (s) "code N" or "signal N", after both
 *                                                      streams ended
 *
 * A frame the agent refuses (longer than AGENT_MAX_PAYLOAD, no memory for it, a bad EXEC) is
 * skipped whole and answered with FAILED on its stream: the byte stream stays in step.
 */
#ifndef SF_PROTO_AGENT_H
#define SF_PROTO_AGENT_H

#include <stddef.h>
#include <stdint.h>

/* HELLO carries it; the host refuses an agent of another version. */
#define AGENT_VERSION 1
#define AGENT_STR_(x) #x
#define AGENT_STR(x) AGENT_STR_(x)
#define AGENT_HELLO_PAYLOAD "version=" AGENT_STR(AGENT_VERSION)

#define AGENT_HEADER_SIZE 9
/* Longest payload either side sends or accepts. An EXEC larger than the kernel's argument limit
 * (ARG_MAX, 2 MiB here) could not run anyway; STDIN and output travel in smaller frames. */
#define AGENT_MAX_PAYLOAD (4u << 20)
#define AGENT_GUEST_STREAM 0

/* X(name, value): the frame types, in both directions. */
#define AGENT_FRAME_TYPES(X) \
  X(IDENT, 1)                \
  X(EXEC, 2)                 \
  X(STDIN, 3)                \
  X(KILL, 4)                 \
  X(HELLO, 64)               \
  X(READY, 65)               \
  X(STARTED, 66)             \
  X(FAILED, 67)              \
  X(STDOUT, 68)              \
  X(STDERR, 69)              \
  X(EXIT, 70)

enum agent_frame_type {
#define AGENT_ENUM_(name, value) AGENT_##name = value,
  AGENT_FRAME_TYPES(AGENT_ENUM_)
#undef AGENT_ENUM_
};

/*
 * EXEC payload, every string terminated by one NUL byte:
 *
 *   argv[0] .. argv[n-1]  ""  env[0] .. env[m-1]  ""  cwd  stdin-mode
 *
 * argv (n >= 1) and env (m >= 0) are lists ended by an empty string, so no element may be empty
 * (an empty argument cannot be carried in this version); env elements are "NAME=value". cwd is the
 * absolute working directory; stdin-mode is "stdin" (STDIN frames follow) or "nostdin" (the
 * process reads /dev/null). Nothing follows. Bytes other than NUL are free (not necessarily UTF-8).
 */
#define AGENT_EXEC_STDIN "stdin"
#define AGENT_EXEC_NOSTDIN "nostdin"

/* EXIT payload formats. */
#define AGENT_EXIT_CODE "code"
#define AGENT_EXIT_SIGNAL "signal"

/*
 * IDENT payload: "key=value" lines separated by '\n' (values hold no '\n'); unknown keys are
 * ignored, so a host may send more than an older agent knows.
 *   id        the clone id
 *   addr      eth0's address "a.b.c.d/len"
 *   gw        the default gateway "a.b.c.d"
 *   mac       eth0's MAC "xx:xx:xx:xx:xx:xx", set before anything is sent
 *   hostname
 *   time      the wall clock, unix "seconds.nanoseconds"
 *   entropy   hex bytes credited to the kernel RNG (the CRNG is reseeded: clones of one template
 *             must not share random streams)
 *   hosts     lines for /etc/hosts, separated by '|'
 *   ssh       "1": start dropbear
 *   mtu       eth0's MTU (a ticket spanning hosts: 50 below the underlay's); absent: left as it is
 */
#define AGENT_IDENT_KEYS(X) \
  X(ID, "id")               \
  X(ADDR, "addr")           \
  X(GW, "gw")               \
  X(MAC, "mac")             \
  X(HOSTNAME, "hostname")   \
  X(TIME, "time")           \
  X(ENTROPY, "entropy")     \
  X(HOSTS, "hosts")         \
  X(SSH, "ssh")             \
  X(MTU, "mtu")

enum agent_ident_key {
#define AGENT_ENUM_(name, text) AGENT_IDENT_##name,
  AGENT_IDENT_KEYS(AGENT_ENUM_)
#undef AGENT_ENUM_
  AGENT_IDENT_N_KEYS
};

/* ---- the C codec (proto/agent.c), used by the agent and by the codec test program ---- */

struct agent_header {
  uint32_t len;
  uint8_t type;
  uint32_t sid;
};

void agent_header__encode(unsigned char out[AGENT_HEADER_SIZE], const struct agent_header *h);
void agent_header__decode(const unsigned char in[AGENT_HEADER_SIZE], struct agent_header *h);
/* "EXEC" for AGENT_EXEC, NULL for an unknown type; and back (-EINVAL for an unknown name). */
const char *agent_frame_type__name(unsigned type);
int agent_frame_type__parse(const char *name);

/* Splits a byte stream into frames. */
struct agent_reader {
  unsigned char *buf;
  size_t start, end, cap; /* unconsumed bytes are buf[start..end) */
  uint64_t skip;          /* payload bytes of a refused frame still to discard */
};

struct agent_frame {
  struct agent_header h;
  const char *payload; /* h.len bytes; valid until the next agent_reader__ call */
};

void agent_reader__init(struct agent_reader *r);
void agent_reader__free(struct agent_reader *r);
/* One read() from fd into the buffer: bytes read, 0 at end of file, or -errno (-EAGAIN). */
long agent_reader__read(struct agent_reader *r, int fd);
/*
 * The next complete frame: 1 and *f, or 0 if more bytes are needed. -E2BIG (longer than
 * AGENT_MAX_PAYLOAD) or -ENOMEM (no memory to hold it): the frame is refused, f->h tells which one,
 * and its payload is skipped as it arrives.
 */
int agent_reader__next(struct agent_reader *r, struct agent_frame *f);
/* Bytes of an incomplete frame held (or still to skip): nonzero at end of file = truncated input. */
uint64_t agent_reader__pending(const struct agent_reader *r);

/* A decoded EXEC payload; argv and envp point into a private copy and end with NULL. */
struct agent_exec {
  char **argv;
  char **envp;
  const char *cwd;
  int want_stdin;
  char *copy;
};
/* 0, -EINVAL (*why says what is wrong with the payload), or -ENOMEM. */
int agent_exec__decode(const char *payload, size_t len, struct agent_exec *e, const char **why);
void agent_exec__free(struct agent_exec *e);

/* EXIT payload of a wait() status into buf: its length (< cap), or -EINVAL. */
int agent_exit__format(char *buf, size_t cap, int wstatus);

/* An IDENT payload parsed in place (text is modified): value[key] or NULL. */
struct agent_ident {
  const char *value[AGENT_IDENT_N_KEYS];
};
const char *agent_ident_key__name(int key);
void agent_ident__parse(char *text, struct agent_ident *id);

#endif
