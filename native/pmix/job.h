/*
 * The job this server serves: the JOB message checked and indexed (node of each rank, local
 * rank, app of each rank, which ranks are local), its registration with libpmix (the namespace's
 * job, app, node and proc info; the local ranks as clients), and each rank's environment.
 *
 * The per-rank state (connected, finalized, aborted, lost) is only touched from libpmix's progress
 * thread, where every upcall runs; the rest is written once by job__load and read-only after.
 */
#ifndef SF_PMIX_JOB_H
#define SF_PMIX_JOB_H

#include <stddef.h>
#include <stdint.h>

#include "pmix/protocol.h"

struct job {
  struct pm_job spec;   /* owned: moved out of the JOB message */
  uint32_t nprocs, napps;
  uint32_t *node_of;    /* per rank: index into spec.nodes */
  uint32_t *local_rank; /* per rank: its position among the ranks of its node */
  uint32_t *app_rank;   /* per rank: its position among the ranks of its app */
  uint8_t *local;       /* per rank: served by this server */
  uint32_t nlocal;
  uint32_t *connected;  /* per rank: its live connections (a child of a rank may connect too) */
  uint8_t *finalized, *aborted, *lost;
  int registered;
};

/* Moves the JOB message into job (msg->u.job is left empty) after checking it: every rank
 * 0..n-1 on exactly one node, app numbers 0..napps-1 each used, local nodes valid. 0, or -EINVAL
 * with the reason in why (one line), or -ENOMEM. */
int job__load(struct job *job, struct pm_job *msg, char *why, size_t whylen);
/* Registers the namespace and the local clients with libpmix (which must be initialized);
 * 0 or -EIO with the reason in why. */
int job__register(struct job *job, char *why, size_t whylen);
/* The PMIx environment of a local rank as "KEY=VALUE" strings, PMIX_HOSTNAME set to its node's
 * name. 0, -EINVAL (not a local rank), -EIO (libpmix refused, reason in why), -ENOMEM. */
int job__env(const struct job *job, uint32_t rank, struct pm_strs *vars, char *why, size_t whylen);
/* Whether every participant (SF_PMIX_ALL_RANKS = all ranks) is served here. */
int job__all_local(const struct job *job, const uint32_t *ranks, size_t n);
void job__deregister(struct job *job);
void job__free(struct job *job);

#endif
