/**
 * Programs that are not what they run: a `#!` script names its interpreter, a shell wrapper names
 * the program it execs, a wrapper program (env, time, valgrind) takes the real one as an argument.
 * ldd sees none of that. These helpers read what can be read without running anything, for the
 * launcher's MPI detection and for the guest image (a VM must carry the interpreter and whatever
 * the wrapper starts, not only the wrapper).
 *
 * Deliberately simple: a script's words that are paths of executable files are taken as programs
 * it may run; a variable, a computed path or a bare name looked up in PATH at run time is not
 * followed (the caller says so when it finds nothing).
 */
import { accessSync, closeSync, constants, openSync, readSync, statSync } from 'node:fs';
import { basename, delimiter, isAbsolute, join, resolve } from 'node:path';

/** The first 64 KiB of a file, as text (scripts that matter are small). */
export function readHead(path: string, bytes = 65536): string {
  const buf = Buffer.alloc(bytes);
  const fd = openSync(path, 'r');
  try {
    return buf.subarray(0, readSync(fd, buf, 0, bytes, 0)).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

export function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** `name` as PATH would find it, or null. */
export function inPath(name: string, path: string | undefined): string | null {
  for (const dir of (path ?? '').split(delimiter).filter(Boolean)) {
    const p = join(dir, name);
    if (isExecutableFile(p)) return p;
  }
  return null;
}

export interface Shebang {
  /** The interpreter's absolute path (through `/usr/bin/env NAME`, NAME as PATH finds it). */
  interpreter: string;
  /** The argument on the #! line, if any (`#!/bin/sh -e`). */
  arg?: string;
}

/** The #! line of a script, or null for anything else (an ELF file, text without #!). */
export function shebang(path: string, pathVar: string | undefined): Shebang | null {
  let head: string;
  try {
    head = readHead(path, 512);
  } catch {
    return null;
  }
  if (!head.startsWith('#!')) return null;
  const words = head.slice(2).split('\n')[0]!.trim().split(/\s+/).filter(Boolean);
  if (words.length === 0) return null;
  let [interpreter, ...rest] = words as [string, ...string[]];
  if (basename(interpreter) === 'env') {
    const name = rest.find((w) => !w.startsWith('-') && !w.includes('='));
    if (!name) return null;
    const found = name.includes('/') ? name : inPath(name, pathVar);
    if (!found) return null;
    interpreter = found;
    rest = rest.slice(rest.indexOf(name) + 1);
  }
  return { interpreter, ...(rest.length ? { arg: rest.join(' ') } : {}) };
}

/**
 * Executable files a shell script names by path (absolute, or relative to `wdir`), in the order it
 * names them: `exec "/opt/app/bin/solver" "$@"` gives /opt/app/bin/solver. Quotes are stripped;
 * words with a variable or a glob in them are skipped.
 */
export function namedPrograms(script: string, wdir: string): string[] {
  let text: string;
  try {
    text = readHead(script);
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const code = line.replace(/(^|\s)#.*$/, '');
    for (const raw of code.split(/[\s;&|()`]+/)) {
      const word = raw.replace(/^['"]+|['"]+$/g, '');
      if (!word.includes('/') || /[$*?[\]{}<>]/.test(word)) continue;
      const p = isAbsolute(word) ? word : resolve(wdir, word);
      if (p !== script && isExecutableFile(p) && !out.includes(p)) out.push(p);
    }
  }
  return out;
}

/** Programs that run the program given in their arguments. */
const WRAPPERS = new Set(['env', 'time', 'nice', 'nohup', 'stdbuf', 'timeout', 'taskset', 'numactl', 'valgrind', 'strace', 'ltrace', 'chrt', 'ionice', 'setsid', 'xargs']);

export function isWrapperProgram(program: string): boolean {
  return WRAPPERS.has(basename(program));
}

/**
 * The programs a wrapper's arguments name: paths of executable files, and for a known wrapper
 * (env, time, valgrind, ...) also the first bare word PATH finds (`env FOO=1 solver`).
 */
export function argumentPrograms(program: string, args: string[], wdir: string, pathVar: string | undefined): string[] {
  const out: string[] = [];
  let bareTaken = !isWrapperProgram(program);
  for (const a of args) {
    if (a.startsWith('-') || a.includes('=')) continue;
    if (a.includes('/')) {
      const p = isAbsolute(a) ? a : resolve(wdir, a);
      if (isExecutableFile(p) && !out.includes(p)) out.push(p);
    } else if (!bareTaken) {
      bareTaken = true;
      const p = inPath(a, pathVar);
      if (p && !out.includes(p)) out.push(p);
    }
  }
  return out;
}
