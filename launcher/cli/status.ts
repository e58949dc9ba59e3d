/**
 * The exit status of a command run on many clones: the worst of theirs. A death by signal counts as
 * 128 + the signal number, as shells report it, and outranks a plain failure code below that.
 */
import { shellStatus } from '../../src/common/signals.js';
import type { ExitStatus } from '../../src/providers/clone.js';

export function worstStatus(all: ExitStatus[]): number {
  return all.reduce((worst, s) => Math.max(worst, shellStatus(s)), 0);
}
