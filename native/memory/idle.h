/*
 * Whether this machine has a CPU to spare right now: the gate for busy-polling. Polling a socket
 * for the answer a fault waits for saves a wake-up (tens of microseconds on a loaded machine,
 * several on an idle one), but on a machine whose CPUs all have work it takes a CPU from someone
 * who needs it (a guest's vCPU), and loses more than it saves. So memtap and memserver poll only
 * while fewer entities are runnable than there are CPUs (the kernel's instantaneous count, field 4
 * of /proc/loadavg), sampled on their timers, not per fault.
 */
#ifndef SF_IDLE_H
#define SF_IDLE_H

/* 1 when fewer scheduling entities are runnable than CPUs are online (this process counted), else 0. */
int idle__cpu_free(void);

#endif
