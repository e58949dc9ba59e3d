/**
 * The man pages and the shell completion are made from the definitions the commands parse with:
 * every option of sfmpirun's table, every snowflock command and option, and every setting must be
 * in them, and the pages must be clean roff (groff without warnings).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { expect } from 'chai';
import { SETTINGS } from '../../src/common/config.js';
import { bashCompletion } from '../../launcher/cli/completion.js';
import { COMMANDS, GLOBAL_OPTIONS, optionFlags } from '../../launcher/cli/definitions.js';
import { sfmpirunPage, snowflockPage } from '../../launcher/man/pages.js';
import { esc } from '../../launcher/man/roff.js';
import { spellings } from '../../launcher/mpirun/help.js';
import { OPTIONS } from '../../launcher/mpirun/table.js';

/** The page as man shows it on a terminal (plain text, no overstriking), failing on any groff warning. */
function render(page: string): string {
  const r = spawnSync('groff', ['-man', '-ww', '-Tutf8', '-P', '-cbou', '-rLL=200n', '-rHY=0'], { input: page, encoding: 'utf8' });
  if (r.error) throw new Error(`groff is needed to render man pages: apt-get install groff-base (${r.error.message})`);
  expect(r.stderr, 'groff warnings').to.equal('');
  expect(r.status).to.equal(0);
  return r.stdout;
}

/** The text with its line breaks and runs of blanks made single spaces (groff fills paragraphs). */
const flat = (text: string): string => text.replace(/\s+/g, ' ');

describe('man pages', () => {
  describe('sfmpirun(1)', () => {
    const page = sfmpirunPage();
    const text = render(page);

    it('has every spelling of every option in the table, as a bold option tag', () => {
      for (const def of OPTIONS) {
        for (const spelled of spellings(def)) {
          expect(page, spelled).to.include(`\\fB${esc(spelled)}\\fR`);
          expect(text, spelled).to.match(new RegExp(`(^|[\\s,])${spelled.replace(/[-.]/g, '\\$&')}([\\s,]|$)`, 'm'));
        }
      }
    });

    it("has every option's help line and value placeholder", () => {
      for (const def of OPTIONS) {
        expect(flat(text), def.names[0]).to.include(flat(def.help));
        if (def.args) expect(page, def.names[0]).to.include(`\\fI${esc(def.args)}\\fR`);
      }
    });

    it('has every setting', () => {
      for (const s of SETTINGS) expect(text).to.include(s.name);
    });
  });

  describe('snowflock(1)', () => {
    const page = snowflockPage();
    const text = render(page);

    it('has every command, its options and the global options', () => {
      for (const def of COMMANDS) {
        expect(page, def.name).to.match(new RegExp(`^\\.TP\\n\\\\fB${esc(def.name).replace(/\\/g, '\\\\')}\\\\fR`, 'm'));
        for (const flag of optionFlags(def.options)) expect(text, `${def.name} ${flag}`).to.include(flag);
        expect(flat(text), def.name).to.include(flat(def.details));
      }
      for (const flag of optionFlags(GLOBAL_OPTIONS)) expect(text).to.include(flag);
    });

    it('has every setting', () => {
      for (const s of SETTINGS) expect(text).to.include(s.name);
    });
  });

  it('escapes what roff would read as requests or escapes', () => {
    // A quote becomes \(aq, which is no request at the start of a line either.
    expect(esc('.TH not a request\n\'nor this')).to.equal('\\&.TH not a request\n\\(aqnor this');
    expect(esc('a\\b --x')).to.equal('a\\eb \\-\\-x');
  });
});

describe('bash completion', () => {
  const script = bashCompletion();

  it('is valid bash', () => {
    execFileSync('bash', ['-n'], { input: script });
  });

  /** What the completion function offers for the words typed so far (the last one being completed). */
  function complete(fn: string, words: string[]): string[] {
    const out = execFileSync('bash', ['-c', `${script}\nCOMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); ${fn}; printf '%s\\n' "\${COMPREPLY[@]}"`, 'bash', ...words], {
      encoding: 'utf8',
    });
    return out.split('\n').filter(Boolean);
  }

  it("offers snowflock's commands, then each command's own options", () => {
    expect(complete('_snowflock', ['snowflock', ''])).to.include.members(COMMANDS.map((c) => c.name));
    expect(complete('_snowflock', ['snowflock', '--state-dir', '/x', 'sh'])).to.deep.equal(['shell-env']);
    for (const def of COMMANDS) {
      expect(complete('_snowflock', ['snowflock', def.name, '-']), def.name).to.include.members([...optionFlags(def.options), '--help']);
    }
    expect(complete('_snowflock', ['snowflock', 'up', '--provider', ''])).to.deep.equal(['auto', 'netns', 'vm']);
  });

  it("offers every sfmpirun option, and an option's values where the table lists them", () => {
    expect(complete('_sfmpirun', ['sfmpirun', '-'])).to.include.members(OPTIONS.flatMap(spellings));
    expect(complete('_sfmpirun', ['sfmpirun', '-np', '4', '--launch', ''])).to.deep.equal(['direct', 'native']);
    // After the program, its own words: nothing of ours; after ':' the next section's options.
    expect(complete('_sfmpirun', ['sfmpirun', '-np', '4', './app', '-'])).to.deep.equal([]);
    expect(complete('_sfmpirun', ['sfmpirun', '-np', '4', './app', ':', '-pp'])).to.deep.equal(['-ppn']);
  });
});
