/**
 * Which MPI implementation an app is built against, for messages, the report and the guest image
 * (a VM must carry that MPI's runtime): it no longer decides how ranks start, since every rank gets
 * both process managers (env.ts). Read from dynamic dependencies through ldd (libraries that pull
 * MPI in count too): Open MPI's libmpi.so.40 means Open MPI, MPICH's libmpich.so (or its
 * libmpi.so.12 alias) means MPICH or an MPICH-compatible ABI. An ELF program's own DT_NEEDED names
 * are read first (an MPI program names its MPI library itself); ldd, a shell script that runs the
 * dynamic loader (two processes before anything is provisioned, issue 13), only when they name no MPI.
 *
 * ldd sees nothing of a program that is not what it runs, so detection follows what can be read
 * without running the program (src/image/scripts.ts, python.ts):
 *   - a #! script: its interpreter; a shell script's words that are paths of executable files
 *     (`exec /opt/app/solver "$@"`), each inspected in turn (three levels deep at most);
 *   - a wrapper program (env, time, valgrind, ...): the program its arguments name;
 *   - Python (a #! python script, or `python3 script.py`): the packages the script imports, as the
 *     interpreter finds them; an MPI binding (mpi4py) is an extension module that links libmpi.
 * What it found is also what a VM image needs besides the app's program (`files`): the wrapped
 * programs, the Python script and its packages. A program computed at run time ($HOME/bin/x, a
 * name PATH finds later) is not followed: the app then counts as no MPI, which only matters for a
 * VM image (it would lack the MPI runtime and the program; `note` says so) and for the singleton
 * warning (not given).
 * Also resolves argv[0] the way a shell would, so a missing program is reported before anything is
 * provisioned.
 */
import { execFile } from 'node:child_process';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { basename, delimiter, isAbsolute, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { UsageError } from '../../src/common/errors.js';
import { isElf } from '../../src/image/closure.js';
import { isPython, pythonImports, pythonLayout, thirdPartyModules } from '../../src/image/python.js';
import { argumentPrograms, namedPrograms, shebang, isExecutableFile } from '../../src/image/scripts.js';
import type { MpiRuntime } from '../../src/providers/checkpoint.js';

const run = promisify(execFile);

/** Classifies ldd's output. */
export function classifyLibraries(lddOutput: string): MpiRuntime {
  if (/\blibmpi\.so\.40\b|\/openmpi\//.test(lddOutput)) return 'openmpi';
  if (/\blibmpich(?:cxx|fort)?\.so\b|\blibmpi\.so\.12\b/.test(lddOutput)) return 'mpich';
  return 'none';
}

/** The MPI an ELF file links, through ldd. */
export async function detectMpi(program: string): Promise<MpiRuntime> {
  const direct = classifyLibraries(neededLibraries(program).join('\n'));
  if (direct !== 'none') return direct;
  try {
    const { stdout } = await run('ldd', [program], { env: { ...process.env, LC_ALL: 'C' } });
    return classifyLibraries(stdout);
  } catch {
    // ldd fails on scripts and static binaries.
    return 'none';
  }
}

export interface AppMpi {
  mpi: MpiRuntime;
  /** How it was found, for messages: "ldd", "#!/bin/sh -> /opt/solver (ldd)", "python3 + mpi4py". */
  via: string;
  /** Files besides the program that the app runs (a VM image carries them). */
  files: string[];
  /** Why detection could not see further, when it found no MPI in a script or wrapper. */
  note?: string;
}

function merge(kinds: MpiRuntime[]): MpiRuntime {
  return kinds.includes('openmpi') ? 'openmpi' : kinds.includes('mpich') ? 'mpich' : 'none';
}

/** Inspects one app: its resolved program and its arguments, in the ranks' environment. */
export async function inspectApp(program: string, args: string[], wdir: string, env: Record<string, string>, depth = 0): Promise<AppMpi> {
  if (isElf(program)) {
    const mpi = await detectMpi(program);
    if (mpi !== 'none' || depth > 2) return { mpi, via: 'ldd', files: [] };
    if (isPython(program)) {
      const script = scriptArg(args);
      const modules = moduleArgs(args);
      const path = script ? (isAbsolute(script) ? script : resolve(wdir, script)) : undefined;
      return inspectPython(program, path && fileExists(path) ? path : undefined, modules, env);
    }
    return followPrograms(basename(program), argumentPrograms(program, args, wdir, env.PATH), wdir, env, depth);
  }
  const sb = shebang(program, env.PATH);
  if (!sb) return { mpi: 'none', via: 'not an ELF program or #! script', files: [] };
  if (isPython(sb.interpreter)) return inspectPython(sb.interpreter, program, [], env);
  return followPrograms(`#!${sb.interpreter}`, namedPrograms(program, wdir), wdir, env, depth);
}

/** The script of a Python command line (`python3 -u app.py`, `python3 -m mpi4py app.py`), if any. */
function scriptArg(args: string[]): string | undefined {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a === '-m') i++;
    else if (a === '-c') return undefined;
    else if (!a.startsWith('-')) return a;
  }
  return undefined;
}

/** `-m module` arguments of a Python command line. */
function moduleArgs(args: string[]): string[] {
  const out: string[] = [];
  args.forEach((a, i) => {
    if (a === '-m' && args[i + 1]) out.push(args[i + 1]!.split('.')[0]!);
  });
  return out;
}

async function followPrograms(what: string, programs: string[], wdir: string, env: Record<string, string>, depth: number): Promise<AppMpi> {
  if (programs.length === 0) return { mpi: 'none', via: what, files: [], note: `${what} names no program sfmpirun can find by its path` };
  const found = await Promise.all(programs.map((p) => inspectApp(p, [], wdir, env, depth + 1)));
  const mpi = merge(found.map((f) => f.mpi));
  const hit = programs.findIndex((_, i) => found[i]!.mpi === mpi);
  const via = mpi === 'none' ? what : `${what} -> ${programs[hit]} (${found[hit]!.via})`;
  return { mpi, via, files: [...programs, ...found.flatMap((f) => f.files)] };
}

async function inspectPython(interpreter: string, script: string | undefined, modules: string[], env: Record<string, string>): Promise<AppMpi> {
  const names = [...new Set([...modules, ...(script ? pythonImports(script) : [])])];
  const layout = await pythonLayout(interpreter, names, env);
  const packages = layout ? thirdPartyModules(layout) : [];
  const kinds = await Promise.all(packages.map(async (p) => merge(await Promise.all(extensionModules(p).map(detectMpi)))));
  const mpi = merge(kinds);
  const binding = packages.find((_, i) => kinds[i] === mpi);
  const files = [...(script ? [script] : []), ...packages];
  if (mpi === 'none') return { mpi, via: basename(interpreter), files, ...(layout ? {} : { note: `${interpreter} could not tell where its modules are` }) };
  return { mpi, via: `${basename(interpreter)} + ${basename(binding!)}`, files };
}

/** The compiled extension modules of a package directory (or the module file itself). */
function extensionModules(path: string, depth = 0): string[] {
  try {
    if (!statSync(path).isDirectory()) return /\.so$/.test(path) ? [path] : [];
    if (depth > 3) return [];
    return readdirSync(path).flatMap((n) => (n === '__pycache__' ? [] : extensionModules(join(path, n), depth + 1)));
  } catch {
    return [];
  }
}

/**
 * The libraries an ELF file names itself (DT_NEEDED), or [] for anything else (a script, a static
 * or 32-bit binary, a file that cannot be read). 64-bit little-endian ELF only: the hosts we run on.
 */
export function neededLibraries(path: string): string[] {
  let f: Buffer;
  try {
    f = readFileSync(path);
  } catch {
    return [];
  }
  if (f.length < 64 || f.readUInt32BE(0) !== 0x7f454c46 || f[4] !== 2 || f[5] !== 1) return [];
  const phoff = Number(f.readBigUInt64LE(32));
  const phentsize = f.readUInt16LE(54);
  const phnum = f.readUInt16LE(56);
  const loads: Array<{ vaddr: number; offset: number; size: number }> = [];
  let dynamic: { offset: number; size: number } | null = null;
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    if (at + 56 > f.length) return [];
    const type = f.readUInt32LE(at);
    const offset = Number(f.readBigUInt64LE(at + 8));
    const vaddr = Number(f.readBigUInt64LE(at + 16));
    const filesz = Number(f.readBigUInt64LE(at + 32));
    if (type === 1) loads.push({ vaddr, offset, size: filesz }); // PT_LOAD
    if (type === 2) dynamic = { offset, size: filesz }; // PT_DYNAMIC
  }
  if (!dynamic) return [];
  const needed: number[] = [];
  let strtab = -1;
  for (let at = dynamic.offset; at + 16 <= Math.min(f.length, dynamic.offset + dynamic.size); at += 16) {
    const tag = Number(f.readBigInt64LE(at));
    const val = Number(f.readBigUInt64LE(at + 8));
    if (tag === 0) break; // DT_NULL
    if (tag === 1) needed.push(val); // DT_NEEDED: an offset into the string table
    if (tag === 5) strtab = val; // DT_STRTAB: its address
  }
  const seg = loads.find((l) => strtab >= l.vaddr && strtab < l.vaddr + l.size);
  if (!seg) return [];
  const base = seg.offset + (strtab - seg.vaddr);
  return needed.flatMap((off) => {
    const start = base + off;
    const end = f.indexOf(0, start);
    return start < f.length && end > start ? [f.toString('latin1', start, end)] : [];
  });
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
  if (exists) throw new UsageError(`${candidates[0]} is not an executable file; check its permissions (chmod +x) or the program name`);
  throw new UsageError(`program ${name} not found in ${where}; check the program name or the working directory (-wdir)`);
}


function fileExists(path: string): boolean {
  try {
    statSync(path);
    return true;
  } catch {
    return false;
  }
}
