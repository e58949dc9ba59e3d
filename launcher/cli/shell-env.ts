/**
 * `snowflock shell-env`: shell code that makes scripts' `mpirun` and `mpiexec` mean sfmpirun, by
 * putting the drop-in directory (dist/dropin, written by the build) first on PATH; `--undo` takes it
 * out again. Used as `eval "$(snowflock shell-env)"`.
 *
 * The new PATH is computed here, from the PATH the shell exported to us, and printed as one
 * single-quoted assignment: that reads the same in sh/dash, bash and zsh (zsh does not split
 * unquoted words, so a loop over PATH in shell code would not), survives spaces and quotes in any
 * entry, and is idempotent (the directory is first exactly once, however often it is evaluated).
 *
 * Only the generic names are shadowed. mpiexec.hydra, mpirun.openmpi, mpiexec.mpich and friends
 * keep meaning the real implementations: sfmpirun runs them itself (--launch native, Open MPI jobs,
 * --version), and a script that names one asks for that implementation on this host.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { HostError } from '../../src/common/errors.js';
import { projectRoot } from '../../src/common/paths.js';

/** The names a script calls that become sfmpirun under the shell environment. */
export const DROPIN_NAMES = ['mpirun', 'mpiexec'] as const;

export function dropinDir(root: string = projectRoot()): string {
  return join(root, 'dist', 'dropin');
}

/**
 * A drop-in (written by the build): a shell script, not a link, because npm packs no links. It
 * finds sfmpirun next to itself (through any link to the script) and runs it with the node on PATH,
 * as npm's own bin links do.
 */
export function dropinScript(name: string): string {
  return `#!/bin/sh
# ${name} under \`snowflock shell-env\`: sfmpirun, which runs the job on a fresh cluster of clones.
here=$(dirname "$(readlink -f "$0")")
exec node "$here/../launcher/bin/sfmpirun.js" "$@"
`;
}

/** PATH with `dir` first and nowhere else, or (undo) without it. Other entries keep their order. */
export function pathWith(path: string, dir: string, undo: boolean): string {
  // An empty PATH has no entries; splitting it would invent one (the current directory).
  const rest = path === '' ? [] : path.split(':').filter((e) => e !== dir && e !== `${dir}/`);
  return (undo ? rest : [dir, ...rest]).join(':');
}

/**
 * Always single-quoted, even where no character needs it: bare, a value starting with `=` or `~`
 * would be expanded by zsh.
 */
const singleQuoted = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

/**
 * The shell code: one assignment, then forget remembered command locations. bash, dash and zsh
 * forget them on any PATH assignment already; hash -r is for shells that do not (ksh, mksh).
 */
export function shellEnvCode(path: string, dir: string, undo: boolean): string {
  return `PATH=${singleQuoted(pathWith(path, dir, undo))}; export PATH; hash -r 2>/dev/null || :\n`;
}

export async function shellEnvCommand(args: { undo?: boolean }): Promise<number> {
  const dir = dropinDir();
  const undo = args.undo ?? false;
  if (!undo && !DROPIN_NAMES.every((n) => existsSync(join(dir, n)))) {
    throw new HostError(`the drop-in directory ${dir} is missing its mpirun and mpiexec`, 'build them: npm run build (or reinstall snowflock)');
  }
  process.stdout.write(shellEnvCode(process.env.PATH ?? '', dir, undo));
  return 0;
}
