/**
 * Where snowflock keeps what it builds once and reuses: the unpacked guest kernel, guest images,
 * SSH keys, templates. `.cache/` under the project root, or $SNOWFLOCK_CACHE.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The project root: the nearest directory above this module with a package.json (works from src/ and dist/). */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('snowflock: cannot find the project root (no package.json above the module)');
    dir = up;
  }
  return dir;
}

export function cacheDir(...sub: string[]): string {
  const base = process.env.SNOWFLOCK_CACHE ? resolve(process.env.SNOWFLOCK_CACHE) : join(projectRoot(), '.cache');
  const dir = join(base, ...sub);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** A short content address of the given parts (hex, 16 chars). */
export function contentKey(...parts: (string | Buffer)[]): string {
  const h = createHash('sha256');
  for (const p of parts) {
    h.update(p);
    h.update('\0');
  }
  return h.digest('hex').slice(0, 16);
}
