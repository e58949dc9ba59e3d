/**
 * Signals as numbers and names, and the exit status a shell gives a process killed by one (128+N).
 */
import { constants } from 'node:os';
import type { ExitStatus } from '../providers/clone.js';

export function signalNumber(signal: NodeJS.Signals): number {
  return constants.signals[signal] ?? 0;
}

export function signalName(n: number): NodeJS.Signals | null {
  return (Object.entries(constants.signals).find(([, v]) => v === n)?.[0] as NodeJS.Signals | undefined) ?? null;
}

/** The status a shell gives a process killed by `signal`: 128+N. */
export function signalStatus(signal: NodeJS.Signals): number {
  return 128 + signalNumber(signal);
}

/** A process's status as a shell reports it: its code, or 128+N when signal N killed it. */
export function shellStatus(s: ExitStatus, otherwise = 1): number {
  if (s.signal) return signalStatus(s.signal);
  return s.code ?? otherwise;
}
