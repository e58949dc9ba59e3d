/*
 * CRC32C (Castagnoli), the checksum of every granule in a memory descriptor.
 *
 * Why CRC32C and not a hash of our own: it is one instruction per 8 bytes on every x86-64 server
 * since 2008 (SSE4.2) and on ARMv8, it is a published standard (RFC 3720; ext4, btrfs, iSCSI and
 * SCTP use it), and as a CRC it detects every burst error up to 32 bits and every error of 1 to 3
 * bits in a 4 KiB page, which no 32-bit hash guarantees. It guards against corruption (a bad NIC,
 * a server bug, a template file changed under us), not against an attacker on the underlay: the
 * memserver's hello authenticates the ticket, and the underlay is the cluster's private network.
 */
#ifndef SF_CRC32C_H
#define SF_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC32C of buf, continuing from crc (0 to start); the usual pre- and post-inversion included. */
uint32_t crc32c(uint32_t crc, const void *buf, size_t len);

/* "sse4.2" or "table": which implementation crc32c() uses on this CPU. */
const char *crc32c_impl(void);

#endif
