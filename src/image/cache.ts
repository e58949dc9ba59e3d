/**
 * Where snowflock keeps what it builds once and reuses: the unpacked guest kernel, guest images and
 * SSH keys (SNOWFLOCK_CACHE: `.cache/` in a source checkout, /var/cache/snowflock for an installed
 * package; see src/common/config.ts), and content keys for them.
 */
import { createHash } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { settings } from '../common/config.js';

export function cacheDir(...sub: string[]): string {
  const dir = join(settings().cacheDir, ...sub);
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
