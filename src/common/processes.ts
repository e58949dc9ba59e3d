/**
 * Process identity on the host: a PID plus its start time (field 22 of /proc/PID/stat), so that a
 * recorded process is never confused with a later one that reused its PID. Also the few things done
 * to recorded processes: kill, wait until gone, find their descendants, and a sweep for daemons that
 * name a directory on their command line (started but not yet recorded when their creator died).
 */
import { readFileSync, readdirSync } from 'node:fs';

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

/** The identity of a live (non-zombie) process, or null. */
export function identify(pid: number): ProcessIdentity | null {
  const start = startTime(pid);
  return start === null ? null : { pid, start };
}

/** Whether this exact process still runs. Zombies count as gone: they hold no namespaces. */
export function isRunning(p: ProcessIdentity | undefined): boolean {
  return !!p && startTime(p.pid) === p.start;
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

/** The processes and all their live descendants (children read from /proc/PID/task/TID/children). */
export function withDescendants(procs: (ProcessIdentity | undefined)[]): ProcessIdentity[] {
  const out: ProcessIdentity[] = [];
  const seen = new Set<number>();
  const queue = procs.filter((p): p is ProcessIdentity => isRunning(p));
  while (queue.length > 0) {
    const p = queue.shift()!;
    if (seen.has(p.pid)) continue;
    seen.add(p.pid);
    out.push(p);
    let tids: string[] = [];
    try {
      tids = readdirSync(`/proc/${p.pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tids) {
      let children = '';
      try {
        children = readFileSync(`/proc/${p.pid}/task/${tid}/children`, 'utf8');
      } catch {
        continue;
      }
      for (const c of children.split(' ').filter(Boolean)) {
        const id = identify(Number(c));
        if (id) queue.push(id);
      }
    }
  }
  return out;
}

/** SIGKILL to each recorded process that is still that process. */
export function killAll(procs: (ProcessIdentity | undefined)[]): void {
  for (const p of procs) {
    if (!isRunning(p)) continue;
    try {
      process.kill(p!.pid, 'SIGKILL');
    } catch {
      /* gone meanwhile */
    }
  }
}

/** Waits until none of them runs; returns the ones still running at the deadline. */
export async function waitGone(procs: (ProcessIdentity | undefined)[], timeoutMs: number): Promise<ProcessIdentity[]> {
  const deadline = Date.now() + timeoutMs;
  let delay = 1;
  for (;;) {
    const left = procs.filter((p): p is ProcessIdentity => isRunning(p));
    if (left.length === 0 || Date.now() >= deadline) return left;
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 50);
  }
}

/**
 * Live processes running one of `programs` (by the base name of argv[0]) with an argument that is
 * `dir` or a path below it (a cluster's own directory). Only our own daemons: a user's `tail -f` of
 * a log stays, and so does another cluster's daemon whose directory merely starts the same.
 */
export function mentioning(dir: string, programs: readonly string[]): ProcessIdentity[] {
  const found: ProcessIdentity[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    let cmdline: string;
    try {
      cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    const argv = cmdline.split('\0');
    if (!programs.includes(argv[0]!.split('/').pop()!) || !argv.some((arg) => arg === dir || arg.includes(dir + '/'))) continue;
    const id = identify(pid);
    if (id) found.push(id);
  }
  return found;
}
