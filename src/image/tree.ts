/**
 * The guest's file tree as a list of cpio entries, built from host paths. Host paths keep their
 * place in the guest, symlinks included (on a merged-/usr host, /lib is a link to usr/lib and the
 * guest has the same link), so every path a program or library names resolves as on the host.
 */
import { lstatSync, readdirSync, readlinkSync, realpathSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { CpioEntry } from './cpio.js';

export class GuestTree {
  private readonly entries = new Map<string, CpioEntry>();

  /** Every entry, parents before children. */
  list(): CpioEntry[] {
    return [...this.entries.values()];
  }

  has(path: string): boolean {
    return this.entries.has(path);
  }

  /** Bytes of file content (what the guest's RAM must hold). */
  size(): number {
    let n = 0;
    for (const e of this.entries.values()) n += e.type === 'file' ? e.size : e.type === 'data' ? e.data.length : 0;
    return n;
  }

  dir(path: string, mode = 0o755): void {
    if (path === '/' || this.entries.has(path)) return;
    this.dir(dirname(path));
    this.entries.set(path, { type: 'dir', path, mode });
  }

  data(path: string, data: Buffer | string, mode = 0o644): void {
    this.dir(dirname(path));
    this.entries.set(path, { type: 'data', path, mode, data: Buffer.from(data) });
  }

  symlink(path: string, target: string): void {
    if (this.entries.has(path)) return;
    this.dir(dirname(path));
    this.entries.set(path, { type: 'symlink', path, target });
  }

  file(path: string, source: string, mode?: number): void {
    const st = lstatSync(source);
    this.dir(dirname(path));
    this.entries.set(path, { type: 'file', path, source, size: st.size, mode: mode ?? st.mode & 0o7777 });
  }

  /**
   * Adds a host path as it is on the host: each symlink on the way (in a parent or the path itself)
   * becomes a symlink in the guest, its target is added too, and a directory brings its contents.
   */
  hostPath(path: string, contents = true): void {
    const parts = resolve(path).split('/').filter(Boolean);
    let cur = '/';
    for (let i = 0; i < parts.length; i++) {
      const next = join(cur, parts[i]);
      const st = lstatSync(next);
      const last = i === parts.length - 1;
      if (st.isSymbolicLink()) {
        if (!this.entries.has(next)) {
          const target = readlinkSync(next);
          this.symlink(next, target);
          // The target itself, but not a whole directory a link happens to point at.
          try {
            this.hostPath(resolve(cur, target), false);
          } catch {
            /* a dangling link stays dangling, as on the host */
          }
        }
        if (!last) cur = realpathSync(next);
      } else if (st.isDirectory()) {
        if (last && contents) this.hostDir(next);
        else this.dir(next, st.mode & 0o7777);
        cur = next;
      } else if (last && st.isFile() && !this.entries.has(next)) {
        this.file(next, next);
      }
    }
  }

  private hostDir(path: string): void {
    const st = lstatSync(path);
    this.dir(path, st.mode & 0o7777);
    for (const name of readdirSync(path).sort()) this.hostPath(join(path, name));
  }
}
