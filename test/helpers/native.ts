/**
 * Builds native/ once per test run (make is quick when nothing changed), so that tests of the
 * netns provider run from a fresh checkout.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { projectRoot } from '../../src/common/paths.js';

let built = false;

export function buildNative(): void {
  if (built) return;
  execFileSync('make', ['-s', '-C', join(projectRoot(), 'native')], { stdio: 'inherit' });
  built = true;
}
