/**
 * A writer for the "newc" cpio format the kernel unpacks as an initramfs. Written here rather than
 * driving cpio(1) so that the image is built straight from host paths (no staging copy) and is
 * byte-for-byte reproducible (fixed inode numbers, owners and times).
 */
import { createWriteStream, openSync, readSync, closeSync } from 'node:fs';
import type { WriteStream } from 'node:fs';

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'file'; path: string; mode: number; source: string; size: number }
  | { type: 'data'; path: string; mode: number; data: Buffer };

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;

function header(ino: number, mode: number, size: number, name: string): Buffer {
  const field = (n: number) => n.toString(16).padStart(8, '0');
  const nameBytes = Buffer.byteLength(name) + 1;
  const text =
    '070701' +
    field(ino) + field(mode) + field(0) + field(0) + field(1) + field(0) + field(size) +
    field(0) + field(0) + field(0) + field(0) + field(nameBytes) + field(0);
  const head = Buffer.concat([Buffer.from(text), Buffer.from(name), Buffer.alloc(1)]);
  return Buffer.concat([head, Buffer.alloc((4 - (head.length % 4)) % 4)]);
}

const pad = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);

function write(out: WriteStream, b: Buffer): Promise<void> {
  return new Promise((res, rej) => {
    if (out.write(b)) return res();
    const done = (err?: Error) => {
      out.off('drain', done);
      out.off('error', done);
      if (err) rej(err);
      else res();
    };
    out.on('drain', done);
    out.on('error', done);
  });
}

/** Writes the entries, in order, to `file`. Paths are absolute guest paths ("/usr/bin/x"). */
export async function writeCpio(file: string, entries: CpioEntry[]): Promise<void> {
  const out = createWriteStream(file);
  let ino = 1;
  const name = (p: string) => p.replace(/^\/+/, '');
  for (const e of entries) {
    ino++;
    if (e.type === 'dir') await write(out, header(ino, S_IFDIR | (e.mode ?? 0o755), 0, name(e.path)));
    else if (e.type === 'symlink') {
      const t = Buffer.from(e.target);
      await write(out, Buffer.concat([header(ino, S_IFLNK | 0o777, t.length, name(e.path)), t, pad(t.length)]));
    } else if (e.type === 'data') {
      await write(out, Buffer.concat([header(ino, S_IFREG | e.mode, e.data.length, name(e.path)), e.data, pad(e.data.length)]));
    } else {
      await write(out, header(ino, S_IFREG | e.mode, e.size, name(e.path)));
      const fd = openSync(e.source, 'r');
      try {
        let done = 0;
        while (done < e.size) {
          const buf = Buffer.alloc(Math.min(1 << 20, e.size - done));
          const n = readSync(fd, buf, 0, buf.length, done);
          if (n <= 0) throw new Error(`${e.source} shrank while the image was written`);
          await write(out, n === buf.length ? buf : buf.subarray(0, n));
          done += n;
        }
      } finally {
        closeSync(fd);
      }
      await write(out, pad(e.size));
    }
  }
  await write(out, header(0, 0, 0, 'TRAILER!!!'));
  await new Promise<void>((res, rej) => out.end((err?: Error | null) => (err ? rej(err) : res())));
}
