/**
 * `snowflock shell-env`: the PATH code it prints, evaluated by real shells (bash, dash as sh, zsh)
 * with awkward paths (spaces, quotes, $, backquotes), and the drop-in scripts it puts on PATH.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { DROPIN_NAMES, dropinScript, pathWith, shellEnvCode } from '../../launcher/cli/shell-env.js';

const SHELLS = ['bash', 'dash', 'sh', 'zsh'];

function requireShell(sh: string): void {
  try {
    execFileSync(sh, ['-c', ':']);
  } catch {
    throw new Error(`${sh} is needed for this test: apt-get install ${sh === 'sh' ? 'dash' : sh} (setup/packages.txt has it)`);
  }
}

/** Runs `script` in `sh` with PATH set to `path` (plus where the shell's own tools are) and the given variables. */
function inShell(sh: string, script: string, env: Record<string, string>): string {
  return execFileSync(sh, ['-c', script], { encoding: 'utf8', env: { ...env, HOME: tmpdir() } });
}

describe('shell-env', () => {
  let work: string;
  let dir: string;
  before(() => {
    work = mkdtempSync(join(tmpdir(), "sfin-shellenv-it's $HOME `x` "));
    dir = join(work, 'my dist', 'dropin');
    mkdirSync(dir, { recursive: true });
    for (const name of DROPIN_NAMES) {
      writeFileSync(join(dir, name), `#!/bin/sh\necho "${name} from the drop-in: $*"\n`);
      chmodSync(join(dir, name), 0o755);
    }
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  describe('the PATH it computes', () => {
    it('puts the directory first, exactly once, however often it is applied', () => {
      const once = pathWith('/usr/bin:/bin', '/d', false);
      expect(once).to.equal('/d:/usr/bin:/bin');
      expect(pathWith(once, '/d', false)).to.equal(once);
      expect(pathWith('/usr/bin:/d:/bin:/d/', '/d', false)).to.equal('/d:/usr/bin:/bin');
    });

    it('takes it out again, leaving the other entries (empty ones too) in order', () => {
      expect(pathWith('/d:/usr/bin::/bin', '/d', true)).to.equal('/usr/bin::/bin');
      expect(pathWith('/usr/bin', '/d', true)).to.equal('/usr/bin');
    });

    it('does not invent the current directory out of an empty PATH', () => {
      expect(pathWith('', '/d', false)).to.equal('/d');
      expect(pathWith('', '/d', true)).to.equal('');
    });
  });

  for (const sh of SHELLS) {
    describe(`evaluated by ${sh}`, () => {
      before(() => requireShell(sh));
      const system = '/usr/local/bin:/usr/bin:/bin';

      it('makes mpirun and mpiexec the drop-ins, twice the same as once, and undoes itself', () => {
        const odd = "/opt/it's here/$HOME/`date`/bin";
        const start = `${odd}:${system}`;
        const code = (path: string, undo = false) => shellEnvCode(path, dir, undo);
        // The shell is given the code as the command substitution would: through a variable.
        const script = [
          'eval "$ON"',
          'one=$PATH',
          'eval "$ON"',
          '[ "$one" = "$PATH" ] && echo idempotent',
          'command -v mpirun',
          'mpirun -np 4 ./app',
          'mpiexec -n 2 ./app',
          'eval "$OFF"',
          'printf "%s\\n" "$PATH"',
        ].join('\n');
        // --undo is computed from the PATH the shell then has, as `snowflock shell-env --undo` would.
        const out = inShell(sh, script, { PATH: start, ON: code(start), OFF: code(pathWith(start, dir, false), true) }).split('\n');
        expect(out[0]).to.equal('idempotent');
        expect(out[1]).to.equal(join(dir, 'mpirun'));
        expect(out[2]).to.equal('mpirun from the drop-in: -np 4 ./app');
        expect(out[3]).to.equal('mpiexec from the drop-in: -n 2 ./app');
        expect(out[4]).to.equal(start);
      });

      it('finds the drop-in even where the shell had found mpirun before', () => {
        // Shells remember command locations; a stale one would keep running the old mpirun.
        const fake = join(work, 'old bin');
        mkdirSync(fake, { recursive: true });
        writeFileSync(join(fake, 'mpirun'), '#!/bin/sh\necho old mpirun\n');
        chmodSync(join(fake, 'mpirun'), 0o755);
        const start = `${fake}:${system}`;
        const out = inShell(sh, 'mpirun; eval "$ON"; mpirun', { PATH: start, ON: shellEnvCode(start, dir, false) });
        expect(out).to.equal('old mpirun\nmpirun from the drop-in: \n');
      });
    });
  }

  describe('the drop-in scripts', () => {
    it('run the sfmpirun next to them with the arguments intact, also through a link', () => {
      // The package's layout: dist/dropin/mpirun runs dist/launcher/bin/sfmpirun.js.
      const dist = join(work, 'pkg dist');
      mkdirSync(join(dist, 'dropin'), { recursive: true });
      mkdirSync(join(dist, 'launcher', 'bin'), { recursive: true });
      writeFileSync(join(dist, 'launcher', 'bin', 'sfmpirun.js'), 'console.log(JSON.stringify(process.argv.slice(2)));\n');
      writeFileSync(join(dist, 'dropin', 'mpirun'), dropinScript('mpirun'));
      chmodSync(join(dist, 'dropin', 'mpirun'), 0o755);
      symlinkSync(join(dist, 'dropin', 'mpirun'), join(work, 'linked mpirun'));
      for (const program of [join(dist, 'dropin', 'mpirun'), join(work, 'linked mpirun')]) {
        const out = execFileSync(program, ['-np', '4', './my app', "it's"], { encoding: 'utf8' });
        expect(JSON.parse(out)).to.deep.equal(['-np', '4', './my app', "it's"]);
      }
    });
  });
});
