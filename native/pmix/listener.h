/*
 * The checks libpmix does not make on its own listening socket, applied right after
 * PMIx_server_init (before any client can have its address).
 *
 * Address: libpmix listens on the first address of the interface that PMIX_TCP_IF_INCLUDE names.
 * We name the interface, not the address: libpmix 4.2.2 turns "a.b.c.d/32" into a netmask of 0
 * ((1 << 32) - 1 in pmix_net_prefix2netmask), which matches every interface, and then listens on
 * the first non-loopback one. We refuse to run unless every listening socket of this process is bound to
 * exactly the address we were told: libpmix over TCP only compares the uid a client claims, so
 * the listening address (and the ticket's firewall) is the boundary.
 *
 * Handshake timeout: libpmix 4.2.2 reads a new client's handshake with blocking recv() on its
 * progress thread (ptl_base_connection_hdlr.c), with no timeout: a client that connects and sends
 * half a header stalls every other client of the server. A receive timeout on the listening
 * socket is inherited by every accepted socket on Linux; libpmix's blocking recv then fails with
 * EAGAIN and it drops that client. Accepted sockets are made non-blocking after the handshake, so
 * the timeout never touches an established client.
 */
#ifndef SF_PMIX_LISTENER_H
#define SF_PMIX_LISTENER_H

#include <netinet/in.h>

/* The name of the interface that has address addr (for PMIX_TCP_IF_INCLUDE); 0 or -EADDRNOTAVAIL
 * (why says so). */
int listener__interface(struct in_addr addr, char *name, size_t len, char *why, size_t whylen);
/* 0, -EADDRNOTAVAIL (a listener on another address, or none: why says which), or -errno. */
int listener__harden(struct in_addr expected, unsigned handshake_ms, char *why, size_t whylen);

#endif
