/**
 * Which MPI implementation a program is built against, read from its dynamic dependencies (through
 * ldd, so libraries that pull MPI in count too): Open MPI's libmpi.so.40 means Open MPI, MPICH's
 * libmpich.so (or its libmpi.so.12 alias) means MPICH or an MPICH-compatible ABI. Anything else
 * (a script, a static binary, /bin/hostname) is not an MPI program and simply runs np times.
 * Also resolves argv[0] the way a shell would, so a missing program is reported before anything is
 * provisioned.
 */
import { execFile } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { delimiter, isAbsolute, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { UserError } from '../../src/errors.js';

export type MpiKind = 'mpich' | 'openmpi' | 'none';

const run = promisify(execFile);

/** Classifies ldd's output. */
export function classifyLibraries(lddOutput: string): MpiKind {
  if (/\blibmpi\.so\.40\b|\/openmpi\//.test(lddOutput)) return 'openmpi';
  if (/\blibmpich(?:cxx|fort)?\.so\b|\blibmpi\.so\.12\b/.test(lddOutput)) return 'mpich';
  return 'none';
}

export async function detectMpi(program: string): Promise<MpiKind> {
  try {
    const { stdout } = await run('ldd', [program], { env: { ...process.env, LC_ALL: 'C' } });
    return classifyLibraries(stdout);
  } catch {
    // ldd fails on scripts and static binaries: not an MPI program we could drive differently.
    return 'none';
  }
}

/**
 * The absolute path of argv[0]: a name with a slash is taken relative to the rank's working
 * directory, a bare name is looked up in PATH. Throws a UserError when it is missing or not executable.
 */
export function resolveProgram(name: string, wdir: string, path: string | undefined): string {
  const candidates = name.includes('/') ? [isAbsolute(name) ? name : resolve(wdir, name)] : (path ?? '').split(delimiter).filter(Boolean).map((d) => join(resolve(wdir, d), name));
  for (const c of candidates) {
    if (isExecutableFile(c)) return c;
  }
  const where = name.includes('/') ? candidates[0] : `PATH (${path ?? 'unset'})`;
  const exists = name.includes('/') && candidates[0] !== undefined && fileExists(candidates[0]);
  if (exists) throw new UserError(`sfmpirun: ${candidates[0]} is not an executable file; check its permissions (chmod +x) or the program name`);
  throw new UserError(`sfmpirun: program ${name} not found in ${where}; check the program name or the working directory (-wdir)`);
}

function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

function fileExists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}
