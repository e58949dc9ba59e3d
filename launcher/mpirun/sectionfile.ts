/**
 * MPMD sections read from a file: Hydra's -configfile and Open MPI's --app appfile. Both hold one
 * section per line, written like the command line (`-n 2 -env A 1 ./a arg`), with # comments and
 * blank lines. Words are split as a shell would for the common cases: spaces, 'single' and
 * "double" quotes, and backslash escapes; a trailing backslash continues the line.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { UsageError } from '../../src/common/errors.js';

export interface SectionLine {
  /** 1-based line number where the section starts. */
  line: number;
  words: string[];
}

export function readSectionFile(path: string, cwd: string, option: string): SectionLine[] {
  let text: string;
  try {
    text = readFileSync(resolve(cwd, path), 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read the file '${path}' of ${option} (${(e as NodeJS.ErrnoException).code ?? 'error'}); give an existing file`);
  }
  const sections: SectionLine[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const start = i;
    let logical = lines[i]!;
    while (/(^|[^\\])(\\\\)*\\$/.test(logical) && i + 1 < lines.length) logical = logical.slice(0, -1) + ' ' + lines[++i]!;
    const words = splitWords(logical, () => `${describe(option, path)} line ${start + 1}`);
    if (words.length) sections.push({ line: start + 1, words });
  }
  if (sections.length === 0) throw new UsageError(`${describe(option, path)} has no sections; write one '-n N program [args]' per line`);
  return sections;
}

export function describe(option: string, path: string): string {
  return `${/app/.test(option) ? 'appfile' : 'config file'} '${path}'`;
}

/** Splits one line into words; a # outside quotes starts a comment. */
export function splitWords(line: string, where: () => string): string[] {
  const words: string[] = [];
  let word = '';
  let inWord = false;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (c === '#' && !inWord) break;
    if (/\s/.test(c)) {
      if (inWord) words.push(word);
      word = '';
      inWord = false;
      continue;
    }
    inWord = true;
    if (c === '\\' && i + 1 < line.length) {
      word += line[++i];
    } else if (c === "'" || c === '"') {
      const close = line.indexOf(c, i + 1);
      if (close < 0) throw new UsageError(`${where()}: unterminated ${c === '"' ? 'double' : 'single'} quote`);
      const quoted = line.slice(i + 1, close);
      word += c === '"' ? quoted.replace(/\\(["\\$`])/g, '$1') : quoted;
      i = close;
    } else {
      word += c;
    }
  }
  if (inWord) words.push(word);
  return words;
}
