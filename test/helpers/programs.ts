/**
 * The C test programs of test/programs, compiled with each MPI implementation's compiler wrapper into
 * test/.build/<mpi>/<name>. Not under /tmp: namespace clones have a private /tmp, so ranks would not
 * find them there. A program is rebuilt only when its source is newer than its binary, and only once
 * per test process.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { MpiRuntime } from '../../src/providers/checkpoint.js';
import { projectRoot } from '../../src/common/paths.js';

/** 'none': a plain C program (gcc), which sfmpirun runs as a non-MPI program. */
export type Mpi = MpiRuntime;

const root = projectRoot();
export const sourceDir = join(root, 'test/programs');
export const buildDir = join(root, 'test/.build');

const compilers: Record<Mpi, string> = { mpich: 'mpicc.mpich', openmpi: 'mpicc.openmpi', none: 'gcc' };
const built = new Map<string, string>();

/** Absolute path of test/programs/<name>.c compiled for `mpi`; compiles it when needed. */
export function program(name: string, mpi: Mpi = 'mpich'): string {
  const key = `${mpi}/${name}`;
  const cached = built.get(key);
  if (cached) return cached;
  const src = join(sourceDir, `${name}.c`);
  const out = join(buildDir, mpi, name);
  if (!existsSync(out) || statSync(out).mtimeMs < statSync(src).mtimeMs) {
    mkdirSync(dirname(out), { recursive: true });
    try {
      execFileSync(compilers[mpi], ['-O1', '-Wall', '-o', `${out}.tmp`, src], { stdio: ['ignore', 'ignore', 'pipe'] });
      execFileSync('mv', [`${out}.tmp`, out]);
    } catch (e) {
      const stderr = (e as { stderr?: Buffer }).stderr?.toString() ?? '';
      throw new Error(`cannot compile ${src} with ${compilers[mpi]} (install ${mpi === 'mpich' ? 'libmpich-dev' : mpi === 'openmpi' ? 'libopenmpi-dev' : 'gcc'}): ${stderr || String(e)}`);
    }
  }
  built.set(key, out);
  return out;
}
