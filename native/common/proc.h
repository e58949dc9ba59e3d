/*
 * Processes named by identity: a PID and its start time (field 22 of /proc/PID/stat, in clock
 * ticks since boot), so that a PID reused by a later process is never mistaken for the one meant.
 * The TypeScript side records the same pair (src/state/process.ts).
 */
#ifndef SF_PROC_H
#define SF_PROC_H

#include <sys/types.h>

/* Start time of a live process; -ESRCH if there is none (zombies count as gone), or -errno. */
int sf_proc_start_time(pid_t pid, unsigned long long *start);

/* "PID:START" -> pid and start time; 0 or -EINVAL. */
int sf_proc_parse_identity(const char *s, pid_t *pid, unsigned long long *start);

/*
 * A pidfd on the process PID:START (readable once it has exited), or -ESRCH if that process is
 * gone already. Opened before the start time is checked, so the pidfd cannot name a successor.
 */
int sf_proc_open_identity(pid_t pid, unsigned long long start);

#endif
