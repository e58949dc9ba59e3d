/**
 * Builds native/ once per test run (make is quick when nothing changed), so that tests of the
 * netns provider run from a fresh checkout.
 */
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let built = false;

export function buildNative(): void {
  if (built) return;
  const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
  execFileSync('make', ['-s', '-C', join(root, 'native')], { stdio: 'inherit' });
  built = true;
}
