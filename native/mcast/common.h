/* mcast internals both ends share: sockets and waiting (the public helpers are in mcast.h). */
#ifndef SF_MCAST_COMMON_H
#define SF_MCAST_COMMON_H

#include <netinet/in.h>
#include <stdint.h>
#include <sys/epoll.h>

#include "mcast/mcast.h"

/* A non-blocking UDP socket bound to addr:port, with buffers of bufsize and drop counting on. */
int mc_udp_socket(struct in_addr bind_addr, uint16_t port, int bufsize);
/* Scopes a socket's multicast to the ticket's segment: TTL 1, no loopback, sent on local. */
int mc_scope_multicast(int fd, struct in_addr local);
/* An epoll fd watching fd for input; mc_epoll_add adds another. */
int mc_epoll_with(int fd);
int mc_epoll_add(int ep, int fd);
/* epoll_wait on ep for up to timeout_ms; 0 or -errno (EINTR is 0). */
int mc_wait(int ep, int timeout_ms);

/* Random bytes from the kernel; 0 or -errno. */
int mc_random(void *buf, size_t len);

#define MS 1000000ull

#endif
