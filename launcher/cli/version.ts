/**
 * What build this is: the package's version and the git commit it was built from. The build writes
 * the commit into dist/build-info.json (launcher/build/generate.ts), so an installed package, which
 * has no git history, still knows it. Running from the TypeScript sources, or from a checkout built
 * before that file existed, asks git; anything else says "unknown".
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../src/common/paths.js';
import { packageVersion } from './common.js';

export interface BuildInfo {
  /** Abbreviated commit id, with "+dirty" when tracked files had changes; or "unknown". */
  commit: string;
}

export const BUILD_INFO = 'dist/build-info.json';

function git(root: string, args: string[]): string {
  return execFileSync('git', ['-C', root, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10_000 }).trim();
}

/**
 * The commit of the checkout at `root`, or null when it is not one. Only a root with its own .git
 * counts: an installed package inside someone else's repository must not report their commit.
 */
export function gitCommit(root: string): string | null {
  if (!existsSync(join(root, '.git'))) return null;
  try {
    const id = git(root, ['rev-parse', '--short=12', 'HEAD']);
    const dirty = git(root, ['status', '--porcelain', '--untracked-files=no']) !== '';
    return dirty ? `${id}+dirty` : id;
  } catch {
    return null;
  }
}

function recorded(root: string): string | null {
  try {
    const info = JSON.parse(readFileSync(join(root, BUILD_INFO), 'utf8')) as Partial<BuildInfo>;
    return typeof info.commit === 'string' && info.commit ? info.commit : null;
  } catch {
    return null;
  }
}

/** The commit this code was built from. */
export function buildCommit(): string {
  const root = projectRoot();
  const fromSources = import.meta.url.endsWith('.ts');
  return (fromSources ? gitCommit(root) : (recorded(root) ?? gitCommit(root))) ?? 'unknown';
}

/** `sfmpirun (snowflock) 0.1.0, commit 1a2b3c4d5e6f`: the first line of both commands' --version. */
export function versionLine(program: string): string {
  const name = program === 'snowflock' ? program : `${program} (snowflock)`;
  return `${name} ${packageVersion()}, commit ${buildCommit()}`;
}
