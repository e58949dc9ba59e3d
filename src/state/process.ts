/**
 * Process identity on the host: a PID plus its start time (field 22 of /proc/PID/stat), so that a
 * recorded process is never confused with a later one that reused its PID.
 */
import { readFileSync } from 'node:fs';

export interface ProcessIdentity {
  pid: number;
  start: number;
}

interface Stat {
  state: string;
  start: number;
}

function readStat(pid: number): Stat | null {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may contain spaces and parentheses: fields resume after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: rest[0]!, start: Number(rest[19]) };
}

/** Start time of a live (non-zombie) process, or null. */
export function startTime(pid: number): number | null {
  const s = readStat(pid);
  return s && s.state !== 'Z' && s.state !== 'X' ? s.start : null;
}

/** Whether this exact process still runs. Zombies count as gone: they hold no namespaces. */
export function isRunning(p: ProcessIdentity): boolean {
  return startTime(p.pid) === p.start;
}

export function self(): ProcessIdentity {
  return { pid: process.pid, start: startTime(process.pid) ?? 0 };
}

/** Sends SIGKILL to the recorded process if it is still that process, then waits until it is gone. */
export async function killAndWait(p: ProcessIdentity, timeoutMs = 10_000): Promise<boolean> {
  if (!isRunning(p)) return false;
  try {
    process.kill(p.pid, 'SIGKILL');
  } catch {
    return false;
  }
  const deadline = Date.now() + timeoutMs;
  let delay = 1;
  while (isRunning(p)) {
    if (Date.now() > deadline) throw new Error(`process ${p.pid} did not die within ${timeoutMs} ms of SIGKILL`);
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 50);
  }
  return true;
}
