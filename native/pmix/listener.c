/* The listening-socket checks of listener.h. */
#define _GNU_SOURCE
#include "pmix/listener.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <ifaddrs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/sf.h"

/* Whether fd is a listening socket; its local address in *addr. */
static int is_listener(int fd, struct sockaddr_storage *addr) {
  struct stat st;
  if (fstat(fd, &st) || !S_ISSOCK(st.st_mode)) return 0;
  int on = 0;
  socklen_t len = sizeof on;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) || !on) return 0;
  len = sizeof *addr;
  if (getsockname(fd, (struct sockaddr *)addr, &len)) return 0;
  return 1;
}

static void describe(const struct sockaddr_storage *a, char *out, size_t len) {
  char host[INET6_ADDRSTRLEN] = "?";
  unsigned port = 0;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const void *)a;
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    port = ntohs(in->sin_port);
  } else if (a->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const void *)a;
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    port = ntohs(in6->sin6_port);
  } else {
    snprintf(out, len, "a socket of family %d", a->ss_family);
    return;
  }
  snprintf(out, len, "%s:%u", host, port);
}

int listener__interface(struct in_addr addr, char *name, size_t len, char *why, size_t whylen) {
  struct ifaddrs *all;
  if (getifaddrs(&all)) return -errno;
  int rc = -EADDRNOTAVAIL;
  for (struct ifaddrs *i = all; i; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
    if (((const struct sockaddr_in *)(const void *)i->ifa_addr)->sin_addr.s_addr != addr.s_addr) continue;
    snprintf(name, len, "%s", i->ifa_name);
    rc = 0;
    break;
  }
  freeifaddrs(all);
  if (rc) {
    char want[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &addr, want, sizeof want);
    snprintf(why, whylen, "no interface of this host has the address %s to listen on", want);
  }
  return rc;
}

int listener__harden(struct in_addr expected, unsigned handshake_ms, char *why, size_t whylen) {
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -errno;
  int found = 0, rc = 0;
  struct dirent *e;
  while ((e = readdir(d)) && !rc) {
    long fd;
    if (sf_parse_long(e->d_name, 0, INT32_MAX, &fd) || fd == dirfd(d)) continue;
    struct sockaddr_storage a;
    if (!is_listener((int)fd, &a)) continue;
    const struct sockaddr_in *in = (const void *)&a;
    if (a.ss_family != AF_INET || in->sin_addr.s_addr != expected.s_addr) {
      char got[80], want[INET_ADDRSTRLEN];
      describe(&a, got, sizeof got);
      inet_ntop(AF_INET, &expected, want, sizeof want);
      snprintf(why, whylen, "libpmix listens on %s, not on %s as told (check that an interface has that address)", got, want);
      rc = -EADDRNOTAVAIL;
      break;
    }
    struct timeval tv = {handshake_ms / 1000, (handshake_ms % 1000) * 1000};
    if (setsockopt((int)fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv)) rc = -errno;
    found++;
  }
  closedir(d);
  if (!rc && !found) {
    snprintf(why, whylen, "libpmix opened no listening socket");
    rc = -EADDRNOTAVAIL;
  }
  return rc;
}
