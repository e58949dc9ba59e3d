/**
 * The MPI implementations `sfmpirun --version` names, with their versions. Asking them means
 * starting `mpichversion` and `mpirun.openmpi --version`, which costs more than the rest of
 * --version (issue 13: under 0.1 s), so each answer is kept in the cache directory
 * (mpi-versions.json), keyed by the program's resolved path, inode, size and modification time:
 * an upgrade of the MPI changes the file, and the next --version asks again. A program that is
 * not on PATH is reported missing without starting anything. The cache is a convenience: when it
 * cannot be read or written, the programs are simply asked.
 */
import { readFileSync, realpathSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { settings } from '../../src/common/config.js';

export interface MpiProbe {
  what: string;
  argv: string[];
  /** Picks the version out of the program's output. */
  pick: RegExp;
}

export const MPI_PROBES: MpiProbe[] = [
  { what: 'MPICH', argv: ['mpichversion'], pick: /MPICH Version:\s*(\S+)/ },
  { what: 'Open MPI', argv: ['mpirun.openmpi', '--version'], pick: /\(Open(?:RTE| MPI)\)\s*(\S+)/ },
];

interface CacheEntry {
  key: string;
  line: string;
}

/** The program as PATH resolves it, and what identifies that very file; null when it is not on PATH. */
function identify(cmd: string, path = process.env.PATH ?? ''): { key: string } | null {
  for (const dir of path.split(delimiter)) {
    if (!dir) continue;
    try {
      const real = realpathSync(join(dir, cmd));
      const st = statSync(real);
      if (!st.isFile() || (st.mode & 0o111) === 0) continue;
      return { key: `${real}:${st.ino}:${st.size}:${st.mtimeMs}` };
    } catch {
      /* not here */
    }
  }
  return null;
}

function cacheFile(): string | null {
  try {
    return join(settings().cacheDir, 'mpi-versions.json');
  } catch {
    return null; // a bad SNOWFLOCK_CACHE must not fail --version
  }
}

function readCache(file: string | null): Record<string, CacheEntry> {
  if (!file) return {};
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as Record<string, CacheEntry>;
  } catch {
    return {};
  }
}

async function ask(p: MpiProbe): Promise<string> {
  // Loaded only on a cache miss: Node's child_process module alone costs a good part of --version.
  const { execFile } = await import('node:child_process');
  const { promisify } = await import('node:util');
  try {
    const { stdout } = await promisify(execFile)(p.argv[0]!, p.argv.slice(1), { timeout: 10000 });
    return `${p.what}: ${p.pick.exec(stdout)?.[1]?.trim() ?? stdout.split('\n')[0]!.trim()}`;
  } catch {
    return `${p.what}: not found (${p.argv[0]})`;
  }
}

/** One line per probe ("MPICH: 4.0.2", "Open MPI: not found (mpirun.openmpi)"), from the cache where it is current. */
export async function mpiVersionLines(probes: MpiProbe[] = MPI_PROBES): Promise<string[]> {
  const file = cacheFile();
  const cache = readCache(file);
  let changed = false;
  const lines = await Promise.all(
    probes.map(async (p) => {
      const id = identify(p.argv[0]!);
      if (!id) return `${p.what}: not found (${p.argv[0]})`;
      const hit = cache[p.argv[0]!];
      if (hit && hit.key === id.key) return hit.line;
      const line = await ask(p);
      cache[p.argv[0]!] = { key: id.key, line };
      changed = true;
      return line;
    }),
  );
  if (changed && file) {
    try {
      mkdirSync(join(file, '..'), { recursive: true });
      writeFileSync(file, JSON.stringify(cache, null, 1) + '\n');
    } catch {
      /* read-only cache: ask again next time */
    }
  }
  return lines;
}
