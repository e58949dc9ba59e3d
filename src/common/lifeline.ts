/**
 * A cluster dies with its owner by itself, SIGKILL included (docs/architecture.md, "Resources and
 * cleanup"). Three native helpers watch the owner through a pidfd on its PID and start time:
 *   - holder --owner: the namespace clones (native/holder.c);
 *   - lifeline: every program the engine or launcher starts on the host (QEMU, mpirun.openmpi),
 *     killed with its whole process tree when the owner ends (native/lifeline.c);
 *   - reaper: one per ticket, which runs the ticket's teardown from its record when the owner
 *     ends, for what no process can take along: bridge, firewall table, record (native/reaper.c).
 * Kept tickets (snowflock up, --keep) get none of these: they stay until `snowflock down`.
 */
import { join } from 'node:path';
import { self } from './processes.js';

/** "PID:START" of this process, as the helpers' --owner takes it. */
export function ownerArg(): string {
  const me = self();
  return `${me.pid}:${me.start}`;
}

/** argv that runs `argv` on a lifeline to this process. */
export function onLifeline(nativeDir: string, argv: string[]): string[] {
  return [join(nativeDir, 'lifeline'), '--owner', ownerArg(), '--', ...argv];
}
