/*
 * What our helpers do as parents: the PID 1 of a namespace reaps every orphan reparented to it, a
 * wrapper ends the way the child it stands for ended, and a process that outlives its caller's
 * terminal lets go of the caller's stdio.
 */
#ifndef SF_PARENT_H
#define SF_PARENT_H

#include <signal.h>
#include <sys/types.h>

/* PID 1 of a namespace, for good: reaps every child that ends. Returns never (exits 1 if waiting fails). */
void sf_reap_forever(void) __attribute__((noreturn));

/* Points stdin, stdout and stderr at /dev/null (left as they are if it cannot be opened). */
void sf_stdio_to_null(void);

/* In a wrapper's child, after fork(): dies with the wrapper (PR_SET_PDEATHSIG = SIGKILL, and at
 * once if the wrapper `parent` is gone already), restores the signal mask `mask`, and becomes
 * PROG. Returns never: if PROG cannot run, one line and exit 127 (not found) or 126, as a shell. */
void sf_become_child(char **prog, pid_t parent, const sigset_t *mask) __attribute__((noreturn));

/* Ends the way a child with wait status STATUS ended: returns its exit code, or raises the same
 * fatal signal on ourselves (without a core file of ours); 128 + signal only if we outlive it. */
int sf_end_like(int status);

#endif
