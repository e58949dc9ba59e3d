/**
 * The mpirun command-line scanner. mpirun's syntax is not getopt's: long options take one dash,
 * -genv takes two values, ':' separates MPMD sections, and the first word that is not an option
 * is the program, after which every word up to the next ':' is the program's own. So a small
 * scanner driven by the option table reads it, section by section.
 */
import { UserError, UsageError } from '../../src/common/errors.js';
import { newSectionDraft, type JobDraft, type SectionDraft } from './draft.js';
import { closest } from './suggest.js';
import { allSpellings, lookupOption, type OptionDef } from './table.js';

export interface ScanContext {
  job: JobDraft;
  cwd: string;
  env: NodeJS.ProcessEnv;
  /** Set when reading a -configfile / --app line: "config file 'f' line 3". */
  file?: string;
}

/**
 * Reads `words` into sections. `first` receives the options and program of the first section
 * (so a file line can start from the command line's defaults). Stops early, with what it has,
 * when --help or --version is met.
 */
export function scanSections(words: string[], ctx: ScanContext, first: SectionDraft): SectionDraft[] {
  const sections: SectionDraft[] = [first];
  let section = first;
  let inProgram = false;
  let programForced = false;

  for (let i = 0; i < words.length; i++) {
    const word = words[i]!;
    if (word === ':') {
      if (section.argv.length === 0) throw emptySection(sections.length, ctx);
      section = newSectionDraft(ctx.file ?? `MPMD section ${sections.length + 1}`);
      sections.push(section);
      inProgram = programForced = false;
      continue;
    }
    if (inProgram || programForced || !isOptionWord(word)) {
      if (!inProgram && !programForced && word === '--') {
        programForced = true;
        continue;
      }
      section.argv.push(word);
      inProgram = true;
      continue;
    }
    const { def, values: inline } = resolveOption(word, ctx);
    const values = inline ?? words.slice(i + 1, i + 1 + def.arity);
    if (values.length < def.arity) {
      throw new UsageError(`${prefix(ctx)}option '${spelledName(word)}' needs ${def.arity === 1 ? 'a value' : `${def.arity} values`} (${def.args ?? 'VALUE'}); see 'sfmpirun --help'`);
    }
    if (!inline) i += def.arity;
    voteDialect(def, ctx.job);
    def.apply(values, { job: ctx.job, section, spelled: spelledName(word), cwd: ctx.cwd, env: ctx.env, inFile: ctx.file !== undefined });
    if (ctx.job.stop) return sections;
  }
  if (sections.length > 1 && section.argv.length === 0) throw emptySection(sections.length, ctx);
  return sections;
}

function isOptionWord(word: string): boolean {
  return word.length > 1 && word.startsWith('-') && word !== '--';
}

/** `-np 4`, `--np=4`: the option and, for the `=` form, its value. */
function resolveOption(word: string, ctx: ScanContext): { def: OptionDef; values?: string[] } {
  const def = lookupOption(word);
  if (def) return { def };
  const eq = word.indexOf('=');
  if (eq > 0) {
    const named = lookupOption(word.slice(0, eq));
    if (named?.arity === 1) return { def: named, values: [word.slice(eq + 1)] };
  }
  throw unknownOption(spelledName(word), ctx);
}

function spelledName(word: string): string {
  const eq = word.indexOf('=');
  return eq > 0 && !lookupOption(word) ? word.slice(0, eq) : word;
}

function unknownOption(word: string, ctx: ScanContext): UserError {
  const dashes = word.startsWith('--') ? '--' : '-';
  const bare = word.replace(/^--?/, '');
  // Suggest in the user's own dash style: '-npp' → '-np', '--npp' → '--np'.
  const candidates = allSpellings().map((s) => (s.length > 2 ? dashes + s.replace(/^--?/, '') : s));
  // Any one-letter option is one edit from any other: suggest only a change of case (-X → -x).
  const hint =
    bare.length === 1
      ? candidates.find((c) => c !== word && c.toLowerCase() === word.toLowerCase())
      : closest(dashes + bare, candidates);
  return new UsageError(`${prefix(ctx)}unrecognized option '${word}'${hint ? `; did you mean '${hint}'?` : '.'} See 'sfmpirun --help'.`);
}

function emptySection(n: number, ctx: ScanContext): UserError {
  return new UsageError(`${prefix(ctx)}MPMD section ${n} has no program; write each ':'-separated section as '-n N program [args]'`);
}

function prefix(ctx: ScanContext): string {
  return ctx.file ? `${ctx.file}: ` : '';
}

function voteDialect(def: OptionDef, job: JobDraft): void {
  if (!job.dialect && (def.dialect === 'hydra' || def.dialect === 'openmpi')) job.dialect = def.dialect;
}
