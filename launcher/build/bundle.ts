/**
 * The build step after tsc (npm run build, and so prepack): the commands' entry points become
 * bundles. dist/launcher/bin/{sfmpirun,snowflock,rsh-shim}.js are replaced by one file each plus
 * shared chunks in dist/launcher/bin/chunks/, made by esbuild from the TypeScript sources. Why:
 * Node resolved, read and compiled about 200 modules one by one at every start, which cost more
 * than the rest of a one-rank job (issue 13). Dynamic imports stay dynamic (chunks loaded when
 * reached), so `sfmpirun --help` loads the option table only. Everything else tsc wrote in dist/
 * stays as it was: dist/src/ for whoever imports the engine, dist/src/ticket/reap.js for the reaper.
 *
 * ssh2 stays outside (its optional native parts are found by require at run time), as do Node's
 * own modules. The banner gives bundled CommonJS dependencies a `require` of their own.
 *
 * Run: node dist/launcher/build/bundle.js
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { build } from 'esbuild';
import { projectRoot } from '../../src/common/paths.js';

/** The commands a user (or a launcher) starts: each becomes a bundle at its usual place. */
export const BUNDLED = ['sfmpirun', 'snowflock', 'rsh-shim'];

const root = projectRoot();
const outdir = join(root, 'dist', 'launcher', 'bin');
rmSync(join(outdir, 'chunks'), { recursive: true, force: true });
await build({
  entryPoints: Object.fromEntries(BUNDLED.map((name) => [name, join(root, 'launcher', 'bin', `${name}.ts`)])),
  outdir,
  entryNames: '[name]',
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  external: ['ssh2'],
  banner: { js: "import { createRequire as __sfCreateRequire } from 'node:module'; const require = __sfCreateRequire(import.meta.url);" },
  sourcemap: true,
  logLevel: 'warning',
});
