/**
 * The exit status of a command run on many clones: the worst of theirs. A death by signal counts as
 * 128 + the signal number, as shells report it, and outranks a plain failure code below that.
 */
import { constants } from 'node:os';
import type { ExitStatus } from '../../src/types.js';

export function statusCode(s: ExitStatus): number {
  if (s.signal) return 128 + (constants.signals[s.signal] ?? 0);
  return s.code ?? 1;
}

export function worstStatus(all: ExitStatus[]): number {
  return all.reduce((worst, s) => Math.max(worst, statusCode(s)), 0);
}
