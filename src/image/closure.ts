/**
 * What a guest needs to run a host program: the program and every shared library it loads, found
 * with ldd, plus the plugins MPI runtimes open at run time (UCX transports, Open MPI and PMIx
 * components) with their own libraries. A #! script brings its interpreter (and that one's
 * closure); a Python interpreter brings its standard library (python.ts); a directory among the
 * programs (a Python package the launcher found a script to import) comes whole, with the
 * libraries of the extension modules in it. Guest paths equal host paths, so the program, its
 * libraries and its working directory are where the job expects them.
 */
import { closeSync, existsSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { runCommand } from '../common/command.js';
import { UsageError } from '../common/errors.js';
import type { MpiRuntime } from '../providers/checkpoint.js';
import { isPython, pythonLayout, stdlibEntries } from './python.js';
import { shebang } from './scripts.js';


const LIBDIR = '/usr/lib/x86_64-linux-gnu';

/** Directories of plugins loaded with dlopen; ldd cannot see them. */
const PLUGIN_DIRS: Record<MpiRuntime, string[]> = {
  none: [],
  mpich: [`${LIBDIR}/ucx`],
  openmpi: [`${LIBDIR}/ucx`, `${LIBDIR}/openmpi/lib/openmpi3`, `${LIBDIR}/pmix2/lib/pmix`],
};

/**
 * Programs and data the runtime itself needs in the guest: Hydra's proxy and Open MPI's daemon (--launch native),
 * help texts and defaults (/etc/openmpi's openmpi-mca-params.conf), and libpmix's, which a
 * direct-launched rank reads (pmix2/share: pmix-mca-params.conf names the plugin directory, and
 * the help texts of its errors). What a direct-launched Open MPI rank opens, traced on the host:
 * its libraries, the openmpi3 and pmix plugin directories, these two parameter files.
 */
const RUNTIME_FILES: Record<MpiRuntime, string[]> = {
  none: [],
  mpich: ['/usr/bin/hydra_pmi_proxy'],
  openmpi: ['/usr/bin/orted', '/usr/share/openmpi', '/etc/openmpi', `${LIBDIR}/openmpi/lib/libmca_common_ucx.so`, `${LIBDIR}/pmix2/share`],
};

export function pluginFiles(mpi: MpiRuntime): string[] {
  const out: string[] = [];
  for (const dir of PLUGIN_DIRS[mpi]) {
    if (!existsSync(dir)) continue;
    for (const f of readdirSync(dir).sort()) if (/\.so(\.\d+)*$/.test(f)) out.push(join(dir, f));
  }
  return out;
}

export function runtimeFiles(mpi: MpiRuntime): string[] {
  return RUNTIME_FILES[mpi].filter((p) => existsSync(p));
}

export function isElf(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    const head = Buffer.alloc(4);
    const fd = openSync(path, 'r');
    try {
      readSync(fd, head, 0, 4, 0);
    } finally {
      closeSync(fd);
    }
    return head.toString('latin1') === '\x7fELF';
  } catch {
    return false;
  }
}

/** The libraries ldd resolves for `file`, and the names it cannot find. */
export async function lddLibraries(file: string): Promise<{ libs: string[]; missing: string[] }> {
  const r = await runCommand('ldd', [file], { reject: false, env: { LC_ALL: 'C' } });
  const libs: string[] = [];
  const missing: string[] = [];
  const text = `${r.stdout ?? ''}`;
  if (/not a dynamic executable|statically linked/.test(text + (r.stderr ?? ''))) return { libs, missing };
  for (const line of text.split('\n')) {
    const notFound = /^\s*(\S+) => not found/.exec(line);
    if (notFound) {
      missing.push(notFound[1]);
      continue;
    }
    const m = /=>\s+(\/\S+)/.exec(line) ?? /^\s*(\/\S+)\s+\(/.exec(line);
    if (m) libs.push(m[1]);
  }
  return { libs, missing };
}

/**
 * The whole closure of the job's programs and its MPI runtime. A program whose libraries cannot be
 * found is the user's error (one line naming them); a plugin with missing libraries (say, an
 * InfiniBand transport on a host without rdma-core) is left out, as the runtime skips it too.
 */
export async function closure(programs: string[], mpi: MpiRuntime): Promise<string[]> {
  const files = new Set<string>();
  const extra: string[] = [];
  const queue = [...programs];
  const seen = new Set<string>();
  while (queue.length) {
    const p = queue.shift()!;
    if (seen.has(p)) continue;
    seen.add(p);
    if (!existsSync(p)) throw new UsageError(`program ${p} does not exist; give the path of a built program`);
    files.add(p);
    if (statSync(p).isDirectory()) {
      extra.push(...elvesUnder(p));
      continue;
    }
    if (!isElf(p)) {
      const sb = shebang(p, process.env.PATH);
      if (sb && existsSync(sb.interpreter)) queue.push(sb.interpreter);
      continue;
    }
    const { libs, missing } = await lddLibraries(p);
    if (missing.length) {
      throw new UsageError(
        `program ${p} needs libraries that cannot be found: ${missing.join(', ')}; install them or set LD_LIBRARY_PATH`,
      );
    }
    libs.forEach((l) => files.add(l));
    if (isPython(p)) {
      // Its standard library: directories are walked like any directory, files go with the runtime's.
      const layout = await pythonLayout(p, []);
      for (const e of layout ? stdlibEntries(layout.stdlib) : []) {
        if (statSync(e).isDirectory()) queue.push(e);
        else extra.push(e);
      }
    }
  }
  extra.push(...runtimeFiles(mpi), ...pluginFiles(mpi));
  const elves = extra.filter((f) => statSync(f).isFile() && isElf(f));
  const results = await Promise.all(elves.map(async (f) => ({ f, ...(await lddLibraries(f)) })));
  for (const f of extra) if (!elves.includes(f)) files.add(f);
  for (const r of results) {
    if (r.missing.length) continue;
    files.add(r.f);
    r.libs.forEach((l) => files.add(l));
  }
  return [...files];
}

/** The ELF files (extension modules, plugins) under a directory, for their libraries. */
function elvesUnder(dir: string, depth = 0): string[] {
  if (depth > 6) return [];
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    try {
      const st = statSync(p);
      if (st.isDirectory()) out.push(...elvesUnder(p, depth + 1));
      else if (/\.so(\.\d+)*$/.test(name) && isElf(p)) out.push(p);
    } catch {
      /* a dangling link */
    }
  }
  return out;
}
