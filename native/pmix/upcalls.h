/*
 * What libpmix asks of its host, turned into protocol events: the server module (client
 * connected, finalized, abort, fence_nb, and the calls we refuse), the lost-connection event
 * handler, and the fences waiting for the launcher.
 *
 * Every upcall runs on libpmix's progress thread. Fences are the one thing the main thread
 * touches too (FENCE_DONE from the launcher), so the table of waiting fences has a lock.
 *
 * Fences: libpmix is told not to complete purely local fences by itself
 * (pmix_server_fence_localonly_opt=0), so every fence reaches fence_nb and is reported. A fence
 * whose participants are all served here completes at once (FENCE_LOCAL). Any other is relayed:
 * FENCE goes out with this server's blob, FENCE_DONE brings back every server's blobs.
 */
#ifndef SF_PMIX_UPCALLS_H
#define SF_PMIX_UPCALLS_H

#include <pmix.h>
#include <pmix_server.h>
#include <stdint.h>

#include "pmix/job.h"

extern pmix_server_module_t upcalls__module;

/* The job the upcalls serve; set before it is registered with libpmix. */
void upcalls__set_job(struct job *job);
/* Registers the handler that reports clients lost without finalize; after PMIx_server_init. */
int upcalls__watch_disconnects(void);
/* Completes relayed fence seq; takes ownership of data (malloc'ed). -ENOENT for no such fence. */
int upcalls__fence_done(uint32_t seq, int ok, uint8_t *data, uint32_t n);
/* Fails every fence still waiting for the launcher (shutdown). */
void upcalls__fail_pending(void);

#endif
