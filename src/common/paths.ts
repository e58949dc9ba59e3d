/**
 * Where the installation lives: the project root, found from this module (src/ under tsx, dist/src/
 * when built), in a source checkout or in an installed npm package. An installed package has no
 * native sources (it carries the helpers prebuilt in native/build), so the root is recognised by its
 * package.json's name, not by what else lies next to it.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE_NAME = 'snowflock';

let root: string | null = null;

function isOurPackage(dir: string): boolean {
  try {
    return (JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as { name?: unknown }).name === PACKAGE_NAME;
  } catch {
    return false;
  }
}

/** The directory holding snowflock's package.json. */
export function projectRoot(): string {
  if (root) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (isOurPackage(dir)) return (root = dir);
    const up = dirname(dir);
    if (up === dir) throw new Error(`cannot find snowflock's project root above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
}

/**
 * Whether the root is a source checkout (the native sources are there, so helpers can be built in
 * place) rather than an installed package (helpers prebuilt, the directory npm's to replace).
 */
export function isSourceCheckout(dir: string = projectRoot()): boolean {
  return existsSync(join(dir, 'native', 'Makefile'));
}
