/**
 * Python programs: what a script imports, where the interpreter finds it, and what a guest needs to
 * run the interpreter at all. An MPI binding (Debian's python3-mpi4py, built on Open MPI) is an
 * extension module that links libmpi: the launcher learns the script's MPI from the binding's
 * libraries, and a VM image carries the interpreter's standard library, the packages the script
 * imports, and their libraries.
 *
 * Found by asking the interpreter itself (importlib's find_spec, which locates a top-level module
 * without running it) in the ranks' own environment, so PYTHONPATH counts as it will in the ranks.
 */
import { readdirSync } from 'node:fs';
import { basename, join } from 'node:path';
import { runCommand } from '../common/command.js';
import { readHead } from './scripts.js';

export function isPython(program: string): boolean {
  return /^python[0-9.]*$/.test(basename(program));
}

/** Top-level module names a script imports (`import a.b, c` and `from d.e import f`: a, c, d). */
export function pythonImports(script: string): string[] {
  let text: string;
  try {
    text = readHead(script, 1 << 20);
  } catch {
    return [];
  }
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const from = /^\s*from\s+([A-Za-z_][\w]*)[\w.]*\s+import\b/.exec(line);
    if (from) names.add(from[1]!);
    const imp = /^\s*import\s+(.+)$/.exec(line);
    if (imp) {
      for (const part of imp[1]!.split('#')[0]!.split(',')) {
        const m = /^\s*([A-Za-z_]\w*)/.exec(part);
        if (m) names.add(m[1]!);
      }
    }
  }
  return [...names];
}

export interface PythonLayout {
  /** The standard library's directory (/usr/lib/python3.11). */
  stdlib: string;
  /** Per module asked for: its package directory or module file, or null when not found. */
  modules: Record<string, string | null>;
}

const LAYOUT_SCRIPT = `
import importlib.util, json, sys, sysconfig
out = {}
for name in sys.argv[1:]:
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        spec = None
    if spec is None:
        out[name] = None
    elif spec.submodule_search_locations:
        out[name] = list(spec.submodule_search_locations)[0]
    else:
        out[name] = spec.origin if spec.origin not in (None, 'built-in', 'frozen') else None
print(json.dumps({"stdlib": sysconfig.get_paths()["stdlib"], "modules": out}))
`;

/** Asks the interpreter where its standard library and the given modules are. */
export async function pythonLayout(interpreter: string, modules: string[], env?: Record<string, string>): Promise<PythonLayout | null> {
  const r = await runCommand(interpreter, ['-c', LAYOUT_SCRIPT, ...modules], { reject: false, env, extendEnv: !env, timeout: 20_000 });
  if (r.exitCode !== 0) return null;
  try {
    return JSON.parse(String(r.stdout)) as PythonLayout;
  } catch {
    return null;
  }
}

/** Parts of the standard library no program runs: tests, IDEs, GUIs, build support. */
const NOT_RUN = new Set(['test', 'idlelib', 'tkinter', 'turtledemo', 'ensurepip', 'lib2to3', 'distutils', 'pydoc_data', 'venv']);

/** The standard library's entries a guest carries to run the interpreter. */
export function stdlibEntries(stdlib: string): string[] {
  return readdirSync(stdlib)
    .filter((n) => !NOT_RUN.has(n) && !n.startsWith('config-') && n !== 'turtle.py')
    .sort()
    .map((n) => join(stdlib, n));
}

/** Module locations outside the standard library (the packages the image must add). */
export function thirdPartyModules(layout: PythonLayout): string[] {
  return Object.values(layout.modules).filter((p): p is string => p !== null && !p.startsWith(layout.stdlib + '/'));
}
