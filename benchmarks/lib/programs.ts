/**
 * The benchmarks' MPI programs (benchmarks/programs/*.c), built with each MPI's compiler wrapper
 * into benchmarks/out/bin/<mpi>/ (not under /tmp: namespace clones have a private /tmp).
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, renameSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { projectRoot } from '../../src/common/paths.js';
import type { MpiRuntime } from '../../src/providers/checkpoint.js';

export type BenchMpi = Exclude<MpiRuntime, 'none'>;

const wrapper: Record<BenchMpi, string> = { mpich: 'mpicc.mpich', openmpi: 'mpicc.openmpi' };

const mtime = (path: string): number => {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return -1;
  }
};

/** The path of benchmarks/programs/<name>.c built for `mpi`, rebuilt when its source is newer. */
export function benchProgram(name: string, mpi: BenchMpi = 'mpich'): string {
  const root = projectRoot();
  const source = join(root, 'benchmarks', 'programs', `${name}.c`);
  const binary = join(root, 'benchmarks', 'out', 'bin', mpi, name);
  if (mtime(binary) < mtime(source)) {
    mkdirSync(join(binary, '..'), { recursive: true });
    execFileSync(wrapper[mpi], ['-O2', '-o', `${binary}.new`, source], { stdio: 'inherit' });
    renameSync(`${binary}.new`, binary);
  }
  return binary;
}
