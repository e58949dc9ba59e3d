/*
 * netdelay: a TCP relay that holds every byte a fixed time in each direction. A benchmark aid,
 * not part of memory on demand: this machine's kernel has no netem (CONFIG_NET_SCH_NETEM is not
 * set), so the benchmarks put the one-way delay `tc netem delay` would add in here, and the rate
 * limit in tc's tbf on the veth.
 *
 *   netdelay --listen ADDR:PORT --to ADDR:PORT --delay-us N
 *
 * Prints "listening ADDR:PORT"; exits when stdin closes. Each accepted connection gets its own
 * connection to the target and one thread that reads both ways as bytes come, stamps them with
 * their time of arrival, and writes them on at arrival + delay, in order: pipelined messages are
 * each delayed once (as on a link), not one after the other. Its own cost (a wake-up per hop) is
 * measured with --delay-us 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "common/sf.h"

#define CHUNK 65536

struct chunk {
  struct timespec due;
  size_t len, done;
  struct chunk *next;
  unsigned char data[];
};

/* One direction of a connection: bytes read from `from`, due to go to `to`. */
struct dir {
  int from, to;
  int eof;          /* `from` ended: shut `to` once the queue is empty */
  int closed;       /* `to` shut */
  struct chunk *head, *tail;
};

static long delay_ns;
static struct sockaddr_in target;

static void parse(const char *spec, struct sockaddr_in *sa) {
  char host[64];
  const char *colon = strrchr(spec, ':');
  long port;
  if (!colon || (size_t)(colon - spec) >= sizeof host || sf_parse_long(colon + 1, 0, 65535, &port) < 0) sf_die(2, 0, "%s: expected ADDR:PORT", spec);
  memcpy(host, spec, (size_t)(colon - spec));
  host[colon - spec] = 0;
  memset(sa, 0, sizeof *sa);
  sa->sin_family = AF_INET;
  sa->sin_port = htons((uint16_t)port);
  if (inet_pton(AF_INET, host, &sa->sin_addr) != 1) sf_die(2, 0, "%s: expected ADDR:PORT", spec);
}

static int64_t ns_of(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return ns_of(t);
}

/* Reads what `from` has into a new chunk, due delay_ns from now. */
static void dir__read(struct dir *d) {
  unsigned char buf[CHUNK];
  ssize_t n = read(d->from, buf, sizeof buf);
  if (n < 0 && (errno == EINTR || errno == EAGAIN)) return;
  if (n <= 0) {
    d->eof = 1;
    return;
  }
  struct chunk *c = sf_malloc(sizeof *c + (size_t)n);
  if (!c) {
    d->eof = 1;
    return;
  }
  memcpy(c->data, buf, (size_t)n);
  int64_t due = now_ns() + delay_ns;
  c->due = (struct timespec){.tv_sec = due / 1000000000, .tv_nsec = due % 1000000000};
  c->len = (size_t)n;
  c->done = 0;
  c->next = NULL;
  if (d->tail) d->tail->next = c;
  else d->head = c;
  d->tail = c;
}

/* Writes every chunk that is due; returns ns until the next one is, or -1 when none waits. */
static int64_t dir__write(struct dir *d) {
  while (d->head) {
    struct chunk *c = d->head;
    int64_t wait = ns_of(c->due) - now_ns();
    if (wait > 0) return wait;
    ssize_t n = write(d->to, c->data + c->done, c->len - c->done);
    if (n < 0 && errno == EAGAIN) return 50000; /* full: try again soon */
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      d->eof = 1;
      while (d->head) c = d->head, d->head = c->next, free(c);
      d->tail = NULL;
      break;
    }
    if ((c->done += (size_t)n) < c->len) continue;
    d->head = c->next;
    if (!d->head) d->tail = NULL;
    free(c);
  }
  if (d->eof && !d->closed) {
    shutdown(d->to, SHUT_WR);
    d->closed = 1;
  }
  return -1;
}

struct conn {
  int a, b;
};

/* One thread a connection, both directions in one ppoll loop (no hand-off between threads). */
static void *serve(void *arg) {
  struct conn *c = arg;
  struct dir dirs[2] = {{.from = c->a, .to = c->b}, {.from = c->b, .to = c->a}};
  fcntl(c->a, F_SETFL, fcntl(c->a, F_GETFL) | O_NONBLOCK);
  fcntl(c->b, F_SETFL, fcntl(c->b, F_GETFL) | O_NONBLOCK);
  while (!(dirs[0].closed && dirs[1].closed)) {
    int64_t wait = -1;
    for (int i = 0; i < 2; i++) {
      int64_t w = dir__write(&dirs[i]);
      if (w >= 0 && (wait < 0 || w < wait)) wait = w;
    }
    struct pollfd p[2];
    int n = 0;
    for (int i = 0; i < 2; i++) if (!dirs[i].eof) p[n++] = (struct pollfd){.fd = dirs[i].from, .events = POLLIN};
    if (!n && wait < 0) break;
    struct timespec ts = {.tv_sec = wait / 1000000000, .tv_nsec = wait % 1000000000};
    if (ppoll(p, (nfds_t)n, wait < 0 ? NULL : &ts, NULL) < 0 && errno != EINTR) break;
    for (int i = 0, k = 0; i < 2; i++) {
      if (dirs[i].eof) continue;
      if (p[k++].revents) dir__read(&dirs[i]);
    }
  }
  for (int i = 0; i < 2; i++) {
    for (struct chunk *k = dirs[i].head, *nx; k; k = nx) nx = k->next, free(k);
  }
  close(c->a);
  close(c->b);
  free(c);
  return NULL;
}

static void *accepter(void *arg) {
  int lfd = *(int *)arg, one = 1;
  for (;;) {
    int a = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (a < 0) {
      if (errno == EINTR) continue;
      break;
    }
    int b = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (b < 0 || connect(b, (struct sockaddr *)&target, sizeof target) < 0) {
      sf_err(-errno, "cannot reach the target");
      close(a);
      if (b >= 0) close(b);
      continue;
    }
    setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct conn *c = sf_malloc(sizeof *c);
    pthread_t th;
    if (!c) {
      close(a);
      close(b);
      continue;
    }
    *c = (struct conn){a, b};
    if (pthread_create(&th, NULL, serve, c) == 0) pthread_detach(th);
  }
  return NULL;
}

int main(int argc, char **argv) {
  sf_prog("netdelay");
  const char *listen_spec = NULL, *to = NULL;
  long us = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--listen")) listen_spec = argv[i + 1];
    else if (!strcmp(argv[i], "--to")) to = argv[i + 1];
    else if (!strcmp(argv[i], "--delay-us") && sf_parse_long(argv[i + 1], 0, 10000000, &us) == 0) continue;
    else sf_die(2, 0, "usage: netdelay --listen ADDR:PORT --to ADDR:PORT --delay-us N");
  }
  if (!listen_spec || !to || us < 0) sf_die(2, 0, "usage: netdelay --listen ADDR:PORT --to ADDR:PORT --delay-us N");
  delay_ns = us * 1000;
  signal(SIGPIPE, SIG_IGN);
  /* Wake up when a chunk is due, not up to 50 us later (the default timer slack); threads inherit it. */
  prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
  struct sockaddr_in sa;
  parse(listen_spec, &sa);
  parse(to, &target);
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 64) < 0) sf_die(1, -errno, "cannot listen on %s", listen_spec);
  pthread_t th;
  pthread_create(&th, NULL, accepter, &lfd);
  pthread_detach(th);
  printf("listening %s\n", listen_spec);
  fflush(stdout);
  char buf[64];
  while (read(STDIN_FILENO, buf, sizeof buf) > 0) {
  }
  return 0;
}
