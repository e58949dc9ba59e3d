/*
 * The channel to the launcher: protocol frames on the stdin and stdout the server was started
 * with. channel__open moves both to private descriptors and points fd 0 at /dev/null and fd 1 at
 * stderr, so that nothing a library prints (libpmix has printf()s on some error paths) can
 * corrupt the protocol stream.
 *
 * Sending is thread-safe (libpmix's progress thread reports events while the main thread answers
 * requests): every frame is written whole under one lock.
 */
#ifndef SF_PMIX_CHANNEL_H
#define SF_PMIX_CHANNEL_H

#include <stddef.h>
#include <stdint.h>

#include "pmix/protocol.h"

int channel__open(void);
/* The descriptor to poll for incoming frames. */
int channel__in_fd(void);
/* Reads one whole frame and decodes it. 0, 1 at a clean end of input (no partial frame), -EPROTO
 * (a malformed body, read whole: *why says how; an ERROR has been sent), -E2BIG (a length over
 * SF_PMIX_MAX_FRAME: ERROR sent, the stream is lost), or -errno. */
int channel__recv(struct pm_msg *msg, const char **why);
/* Encodes and writes one message; 0 or -errno (-EPIPE once the launcher is gone). */
int channel__send(const struct pm_msg *msg);

/* Convenience senders for the common shapes. */
int channel__send_rank(uint8_t type, uint32_t rank);
/* Sends ERROR with a printf-formatted line, and also prints it on stderr through sf_err. */
int channel__error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
