/** Settings: each variable is checked in one place, and the README's table is that list. */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { SETTINGS, settings } from '../../src/common/config.js';
import { UserError } from '../../src/common/errors.js';
import { projectRoot } from '../../src/common/paths.js';

describe('settings', () => {
  it('has defaults for an empty environment', () => {
    const s = settings({});
    expect(s.stateDir).to.equal('/run/snowflock');
    expect(s.maxClones).to.equal(244);
    expect(s.vmReadyTimeoutMs).to.equal(60_000);
    expect(s.launchChannel).to.equal('agent');
  });

  it("follows this process's environment when a variable changes after a first read", () => {
    const before = process.env.SNOWFLOCK_STATE_DIR;
    try {
      process.env.SNOWFLOCK_STATE_DIR = '/tmp/sf-settings-a';
      expect(settings().stateDir).to.equal('/tmp/sf-settings-a');
      process.env.SNOWFLOCK_STATE_DIR = '/tmp/sf-settings-b';
      expect(settings().stateDir).to.equal('/tmp/sf-settings-b');
      expect(settings()).to.equal(settings()); // unchanged: the same object, not parsed again
    } finally {
      if (before === undefined) delete process.env.SNOWFLOCK_STATE_DIR;
      else process.env.SNOWFLOCK_STATE_DIR = before;
    }
  });

  it('refuses a bad value in one line that names the variable', () => {
    for (const [name, value] of [['SNOWFLOCK_MAX_CLONES', '0'], ['SNOWFLOCK_VM_READY_TIMEOUT', 'soon'], ['SNOWFLOCK_LAUNCH_CHANNEL', 'telnet'], ['SNOWFLOCK_VM_ACCEL', 'xen']]) {
      expect(() => settings({ [name!]: value }))
        .to.throw(UserError)
        .with.property('message')
        .that.matches(new RegExp(`^${name}=${value} is not valid: it takes .*; fix or unset it$`));
    }
  });

  it('is the table the README shows', () => {
    const readme = readFileSync(join(projectRoot(), 'README.md'), 'utf8');
    for (const s of SETTINGS) {
      expect(readme, s.name).to.include(`| \`${s.name}\` | ${s.default ? `\`${s.default}\`` : '—'} | ${s.meaning} |`);
    }
    const listed = [...readme.matchAll(/^\| `(SNOWFLOCK_[A-Z_]+)` \|/gm)].map((m) => m[1]);
    expect(listed).to.deep.equal(SETTINGS.map((s) => s.name));
  });

  it('is the only reader of SNOWFLOCK_* variables in the code', () => {
    // A read is env.SNOWFLOCK_X or env['SNOWFLOCK_X'] not being assigned (setting one for a child is fine).
    const read = /\benv(?:\.|\[['"])(SNOWFLOCK_[A-Z_]+)(?![A-Z_])['"]?\]?(?!\s*=[^=])/;
    const readers: string[] = [];
    for (const dir of ['src', 'launcher']) {
      for (const file of tsFiles(join(projectRoot(), dir))) {
        if (file.endsWith('src/common/config.ts')) continue;
        readFileSync(file, 'utf8')
          .split('\n')
          .forEach((line, i) => read.test(line) && readers.push(`${file}:${i + 1}: ${line.trim()}`));
      }
    }
    expect(readers).to.deep.equal([]);
  });
});

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? tsFiles(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name)] : [],
  );
}
