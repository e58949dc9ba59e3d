/**
 * Output of processes in clones: whole lines, each prefixed with its clone (`[3] text`), so that
 * lines of different clones never mix within a line.
 */
import type { Readable, Writable } from 'node:stream';

/** Copies `from` to `to` line by line with a prefix; resolves when `from` has ended. */
export function forwardLines(from: Readable, to: Writable, prefix: string): Promise<void> {
  return new Promise((resolve) => {
    let pending = '';
    from.setEncoding('utf8');
    from.on('data', (chunk: string) => {
      const text = pending + chunk;
      const last = text.lastIndexOf('\n');
      if (last < 0) {
        pending = text;
        return;
      }
      pending = text.slice(last + 1);
      to.write(
        text
          .slice(0, last)
          .split('\n')
          .map((l) => prefix + l + '\n')
          .join(''),
      );
    });
    from.on('end', () => {
      if (pending) to.write(prefix + pending + '\n');
      resolve();
    });
    from.on('error', () => resolve());
  });
}

/** A plain text table: one header row, columns padded to their widest cell. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)].join('\n') + '\n';
}
