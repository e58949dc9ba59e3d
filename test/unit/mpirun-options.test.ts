/** The mpirun command line of both dialects, read into a JobSpec: table-driven. */
import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { JobSpec } from '../../launcher/job/spec.js';
import { MAX_RANKS, parseMpirunArgs } from '../../launcher/mpirun/options.js';
import { errorLine } from '../../launcher/cli/errors.js';
import { UserError } from '../../src/common/errors.js';

describe('mpirun options', () => {
  let dir: string;
  const callerEnv = { PATH: '/usr/bin:/bin', HOME: '/root', SF_SET: 'from-caller' };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'sf-mpirun-options-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  function file(name: string, text: string): string {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  }

  function job(argv: string[], env: NodeJS.ProcessEnv = callerEnv): JobSpec {
    const r = parseMpirunArgs(argv, env, dir);
    if (r.kind !== 'job') throw new Error(`expected a job, got ${r.kind}`);
    return r.job;
  }

  function fails(argv: string[], message: RegExp, env: NodeJS.ProcessEnv = callerEnv): void {
    let error: unknown;
    try {
      parseMpirunArgs(argv, env, dir);
    } catch (e) {
      error = e;
    }
    expect(error, `${argv.join(' ')} should fail`).to.be.instanceOf(UserError);
    // What the user sees: the program's name is put in front at the edge.
    const msg = errorLine('sfmpirun', error);
    expect(msg).to.match(message);
    expect(msg, 'one line').not.to.include('\n');
    expect(msg).to.match(/^sfmpirun: /);
  }

  describe('both dialects', () => {
    const cases: Array<[string, string[], Partial<JobSpec> & { argv?: string[] }]> = [
      ['Hydra -n', ['-n', '4', './hello'], { dialect: 'hydra', np: 4, ranksPerClone: 1, clones: 4, placement: 'block', stdin: 0, argv: ['./hello'] }],
      ['Hydra -np', ['-np', '2', './hello', 'a'], { np: 2, argv: ['./hello', 'a'] }],
      ['Open MPI -c', ['-c', '3', 'prog'], { np: 3 }],
      ['Open MPI --np', ['--np', '3', 'prog'], { np: 3 }],
      ['--np=N form', ['--np=5', 'prog'], { np: 5 }],
      ['-np=N form', ['-np=6', 'prog'], { np: 6 }],
      ['the program\'s own options are not ours', ['-np', '2', 'prog', '-np', '9', '--help', '-x', 'Y'], { np: 2, argv: ['prog', '-np', '9', '--help', '-x', 'Y'] }],
      ['-- ends options', ['-np', '1', '--', '-strange-name', '-v'], { np: 1, argv: ['-strange-name', '-v'], verbosity: 0 }],
      ['Hydra -l tags output', ['-l', '-n', '2', 'p'], { dialect: 'hydra', tagOutput: true }],
      ['Hydra -prepend-rank', ['-prepend-rank', '-n', '2', 'p'], { dialect: 'hydra', tagOutput: true }],
      ['Open MPI --tag-output', ['--tag-output', '-np', '2', 'p'], { dialect: 'openmpi', tagOutput: true }],
      ['Open MPI single-dash -tag-output', ['-tag-output', '-np', '2', 'p'], { dialect: 'openmpi', tagOutput: true }],
      ['--timestamp-output', ['--timestamp-output', '-np', '1', 'p'], { dialect: 'openmpi', timestampOutput: true }],
      ['-ppn sets ranks per clone', ['-ppn', '2', '-n', '8', 'p'], { dialect: 'hydra', ranksPerClone: 2, clones: 4 }],
      ['-ppn with an uneven count', ['-ppn', '4', '-n', '6', 'p'], { ranksPerClone: 4, clones: 2 }],
      ['-N sets ranks per clone', ['-N', '3', '-np', '6', 'p'], { dialect: 'openmpi', ranksPerClone: 3, clones: 2 }],
      ['--npernode', ['--npernode', '2', '-np', '4', 'p'], { ranksPerClone: 2, clones: 2 }],
      ['--map-by node deals round-robin', ['--map-by', 'node', '-np', '4', '-N', '2', 'p'], { placement: 'cyclic' }],
      ['--map-by ppr:2:node', ['--map-by', 'ppr:2:node', '-np', '4', 'p'], { ranksPerClone: 2, clones: 2, placement: 'block' }],
      ['-rr deals round-robin', ['-rr', '-n', '4', 'p'], { placement: 'cyclic', dialect: 'hydra' }],
      ['--stdin all', ['--stdin', 'all', '-np', '2', 'p'], { stdin: 'all' }],
      ['--stdin none', ['--stdin', 'none', '-np', '2', 'p'], { stdin: 'none' }],
      ['--stdin 1', ['--stdin', '1', '-np', '2', 'p'], { stdin: 1 }],
      ['--timeout', ['--timeout', '30', '-np', '1', 'p'], { timeoutSec: 30 }],
      ['Hydra output patterns', ['-outfile-pattern', 'out.%r', '-errfile-pattern', 'err.%r', '-n', '1', 'p'], {}],
      ['ours', ['--provider', 'netns', '--clones', '3', '--keep', '--report', 'r.json', '-v', '-v', '--launch', 'native', '--launch-channel', 'ssh', '--cold-boot', '-np', '3', 'p'],
        { provider: 'netns', clones: 3, keep: true, verbosity: 2, launch: 'native', launchChannel: 'ssh', coldBoot: true }],
      ['--clones and -ppn shape np when -n is absent', ['--clones', '2', '-ppn', '3', 'p'], { np: 6, clones: 2, ranksPerClone: 3 }],
      ['Hydra without -n runs one rank', ['p'], { np: 1, dialect: 'hydra' }],
      ['-N without -np fills one clone', ['-N', '3', 'p'], { np: 3, clones: 1, ranksPerClone: 3 }],
      ['Open MPI without -np runs one rank per core', ['--tag-output', 'p'], { np: availableParallelism(), dialect: 'openmpi' }],
      ['--debug shows details', ['--debug', '-n', '1', 'p'], { verbosity: 2 }],
      ["an option's value may be ':' or look like an option", ['-genv', 'SEP', ':', '-genv', 'D', '-n', '-n', '1', 'p'], { np: 1, env: { SEP: ':', D: '-n' }, argv: ['p'] }],
      ['--memory-transport unicast', ['--memory-transport', 'unicast', '-np', '2', 'p'], { memoryTransport: 'unicast' }],
      ['defaults', ['-n', '1', 'p'], { provider: 'auto', launch: 'auto', launchChannel: 'agent', memoryTransport: 'multicast', keep: false, envMode: 'all', envList: [], env: {}, ignored: [], verbosity: 0 }],
    ];
    for (const [name, argv, want] of cases) {
      it(`${name}: ${argv.join(' ')}`, () => {
        const j = job(argv);
        const { argv: wantArgv, ...fields } = want;
        expect(j).to.deep.include(fields);
        if (wantArgv) expect(j.apps[0]!.argv).to.deep.equal(wantArgv);
        expect(j.np).to.equal(j.apps.reduce((s, a) => s + a.np, 0));
      });
    }

    it('resolves relative paths against the working directory', () => {
      const j = job(['-outfile-pattern', 'out.%r', '--report', 'r.json', '--output-filename', 'logs', '-n', '1', 'p']);
      expect(j.outfilePattern).to.equal(join(dir, 'out.%r'));
      expect(j.reportFile).to.equal(join(dir, 'r.json'));
      expect(j.outputDirectory).to.equal(join(dir, 'logs'));
      expect(j.apps[0]!.wdir).to.equal(dir);
    });

    it('takes MPIEXEC_TIMEOUT from the environment, and --timeout over it', () => {
      expect(job(['-n', '1', 'p'], { ...callerEnv, MPIEXEC_TIMEOUT: '5' }).timeoutSec).to.equal(5);
      expect(job(['--timeout', '9', '-n', '1', 'p'], { ...callerEnv, MPIEXEC_TIMEOUT: '5' }).timeoutSec).to.equal(9);
      expect(job(['-n', '1', 'p']).timeoutSec).to.equal(undefined);
    });

    it('records accepted-but-ignored options with the reason', () => {
      const j = job(['--allow-run-as-root', '-bind-to', 'core', '--map-by', 'socket', '-iface', 'eth0', '-np', '1', 'p']);
      expect(j.ignored).to.have.length(4);
      expect(j.ignored[0]).to.match(/^--allow-run-as-root: /);
      expect(j.ignored[1]).to.match(/^-bind-to core: binding/);
      expect(j.ignored[2]).to.match(/^--map-by socket: /);
    });
  });

  describe('MPMD', () => {
    it("reads ':'-separated sections, each with its own -n, -env, -wdir and program", () => {
      const j = job(['-genv', 'G', '1', '-n', '1', 'a', 'x', ':', '-n', '2', '-env', 'A', '2', '-wdir', '/tmp', 'b', 'y', 'z']);
      expect(j.np).to.equal(3);
      expect(j.apps).to.deep.equal([
        { np: 1, argv: ['a', 'x'], wdir: dir, env: {} },
        { np: 2, argv: ['b', 'y', 'z'], wdir: '/tmp', env: { A: '2' } },
      ]);
      expect(j.env).to.deep.equal({ G: '1' });
    });

    it('keeps per-section -envnone / -envlist / -envall', () => {
      const j = job(['-n', '1', '-envnone', 'a', ':', '-n', '1', '-envlist', 'HOME,PATH', 'b', ':', '-n', '1', '-envall', 'c', ':', '-n', '1', 'd']);
      expect(j.apps.map((a) => [a.envMode, a.envList])).to.deep.equal([
        ['none', []],
        ['list', ['HOME', 'PATH']],
        ['all', []],
        [undefined, undefined],
      ]);
    });

    it('refuses a section without -n, an empty section and a trailing colon', () => {
      fails(['-n', '1', 'a', ':', 'b'], /MPMD section 2 has no -n; give each MPMD section its own -n/);
      fails(['a', ':', '-n', '1', 'b'], /MPMD section 1 has no -n/);
      fails(['-n', '1', 'a', ':', ':', '-n', '1', 'b'], /MPMD section 2 has no program/);
      fails(['-n', '1', 'a', ':'], /MPMD section 2 has no program/);
      fails([':', '-n', '1', 'a'], /MPMD section 1 has no program/);
      fails(['-n', '1', 'a', ':', '-n', '2'], /MPMD section 2 has no program/);
    });
  });

  describe('environment', () => {
    const cases: Array<[string, string[], Pick<JobSpec, 'envMode' | 'envList' | 'env'>]> = [
      ['default passes all', ['-n', '1', 'p'], { envMode: 'all', envList: [], env: {} }],
      ['-genv K V', ['-genv', 'A', '1', '-genv', 'B', 'two words', '-n', '1', 'p'], { envMode: 'all', envList: [], env: { A: '1', B: 'two words' } }],
      ['-genvnone', ['-genvnone', '-n', '1', 'p'], { envMode: 'none', envList: [], env: {} }],
      ['-genvlist', ['-genvlist', 'HOME,SF_SET', '-genvlist', 'PATH', '-n', '1', 'p'], { envMode: 'list', envList: ['HOME', 'SF_SET', 'PATH'], env: {} }],
      ['-genvall after -genvnone', ['-genvnone', '-genvall', '-n', '1', 'p'], { envMode: 'all', envList: [], env: {} }],
      ['-x VAR=VAL', ['-x', 'A=1', '-x', 'B=x=y', '-np', '1', 'p'], { envMode: 'all', envList: [], env: { A: '1', B: 'x=y' } }],
      ["-x VAR passes the caller's value", ['-x', 'SF_SET', '-np', '1', 'p'], { envMode: 'all', envList: [], env: { SF_SET: 'from-caller' } }],
      ['--mca K V', ['--mca', 'btl', 'tcp,self', '-np', '1', 'p'], { envMode: 'all', envList: [], env: { OMPI_MCA_btl: 'tcp,self' } }],
    ];
    for (const [name, argv, want] of cases) {
      it(name, () => expect(job(argv)).to.deep.include(want));
    }

    it('notes an -x of a variable the caller does not have', () => {
      const j = job(['-x', 'SF_UNSET', '-np', '1', 'p']);
      expect(j.env).to.deep.equal({});
      expect(j.ignored).to.deep.equal(['-x SF_UNSET: SF_UNSET is not set in your environment']);
    });

    it('refuses variable names that are not names', () => {
      fails(['-genv', '1A', 'x', '-n', '1', 'p'], /-genv '1A': not a valid environment variable name/);
      fails(['-x', '=v', '-n', '1', 'p'], /-x '': not a valid environment variable name/);
      fails(['-genvlist', 'A,B-C', '-n', '1', 'p'], /not a valid environment variable name/);
    });
  });

  describe('hostfiles and host lists', () => {
    it("shapes the clones from a Hydra hostfile ('host:N', comments)", () => {
      const f = file('hydra.hosts', '# two nodes\nnode1:4\nnode2:4  # second\n\n');
      expect(job(['-f', f, 'p'])).to.deep.include({ np: 8, clones: 2, ranksPerClone: 4 });
      expect(job(['-machinefile', f, '-n', '4', 'p'])).to.deep.include({ np: 4, clones: 1, ranksPerClone: 4 });
    });

    it("shapes the clones from an Open MPI hostfile ('host slots=N')", () => {
      const f = file('ompi.hosts', 'a slots=4 max_slots=8\nb slots=4\n');
      expect(job(['--hostfile', f, 'p'])).to.deep.include({ np: 8, clones: 2, ranksPerClone: 4 });
      expect(job(['--machinefile', f, '-np', '6', 'p'])).to.deep.include({ np: 6, clones: 2, ranksPerClone: 4 });
    });

    it('lets -ppn / -N override the slots', () => {
      const f = file('four.hosts', 'a:4\nb:4\n');
      expect(job(['-f', f, '-ppn', '1', 'p'])).to.deep.include({ np: 2, clones: 2, ranksPerClone: 1 });
    });

    it('counts hosts and slots of -hosts and -H lists (a repeated host adds a slot)', () => {
      expect(job(['-hosts', 'a,b,c', 'p'])).to.deep.include({ np: 3, clones: 3, ranksPerClone: 1 });
      expect(job(['-hosts', 'a:2,b:2', '-n', '4', 'p'])).to.deep.include({ np: 4, clones: 2, ranksPerClone: 2 });
      const j = job(['-H', 'a,a,b', 'p']);
      expect(j).to.deep.include({ np: 3, clones: 2, ranksPerClone: 2, dialect: 'openmpi' });
      expect(j.ignored[0]).to.match(/different slot counts \(2, 1\)/);
    });

    it('refuses more ranks than slots in the Open MPI dialect unless --oversubscribe; Hydra wraps around', () => {
      const f = file('small.hosts', 'a slots=2\nb slots=2\n');
      fails(['--hostfile', f, '--tag-output', '-np', '5', 'p'], /5 ranks requested but the hosts give only 4 slots; add --oversubscribe/);
      expect(job(['--hostfile', f, '--tag-output', '--oversubscribe', '-np', '5', 'p'])).to.deep.include({ np: 5, clones: 2, ranksPerClone: 2 });
      expect(job(['-f', f, '-l', '-n', '5', 'p'])).to.deep.include({ np: 5, clones: 2, ranksPerClone: 2 });
    });

    it('says which line of a hostfile it cannot read, and when the file is missing or empty', () => {
      fails(['-f', file('bad.hosts', 'a slots=4\nb slots=many\n'), 'p'], /hostfile '.*bad.hosts' line 2: cannot read 'b slots=many'/);
      fails(['-f', join(dir, 'nope.hosts'), 'p'], /cannot read the hostfile '.*nope.hosts' of -f \(ENOENT\)/);
      fails(['-f', file('empty.hosts', '# nothing\n'), 'p'], /names no hosts/);
      fails(['-hosts', 'a,,b', 'p'], /-hosts 'a,,b': cannot read host ''/);
      fails(['-H', 'a:0', 'p'], /cannot read host 'a:0'/);
    });
  });

  describe('-configfile and --app', () => {
    it('reads a Hydra config file: one section per line, comments, quotes, continuation', () => {
      const f = file('job.conf', '# the job\n-n 2 -env A 1 ./a "x y" \'z\'\n\n-n 1 ./b \\\n   more # trailing\n');
      const j = job(['-genv', 'G', '1', '-configfile', f]);
      expect(j.apps.map((a) => [a.np, a.argv, a.env])).to.deep.equal([
        [2, ['./a', 'x y', 'z'], { A: '1' }],
        [1, ['./b', 'more'], {}],
      ]);
      expect(j).to.deep.include({ np: 3, env: { G: '1' }, dialect: 'hydra' });
    });

    it('reads an Open MPI appfile, with -x per app', () => {
      const f = file('job.app', '-np 1 -x A=1 ./a\n-np 3 -x SF_SET --wdir /tmp ./b arg\n');
      const j = job(['--app', f]);
      expect(j.apps).to.deep.equal([
        { np: 1, argv: ['./a'], wdir: dir, env: { A: '1' } },
        { np: 3, argv: ['./b', 'arg'], wdir: '/tmp', env: { SF_SET: 'from-caller' } },
      ]);
      expect(j).to.deep.include({ np: 4, dialect: 'openmpi', env: {} });
    });

    it('refuses malformed files with the file, line and a fix', () => {
      fails(['-configfile', file('noprog.conf', '-n 2 ./a\n-n 2\n')], /config file '.*noprog.conf' line 2: no program to run/);
      fails(['-configfile', file('unknown.conf', '-n 2 --npp 3 ./a\n')], /config file '.*unknown.conf' line 1: unrecognized option '--npp'; did you mean '--np'\?/);
      fails(['-configfile', file('quote.conf', '-n 1 ./a "open\n')], /config file '.*quote.conf' line 1: unterminated double quote/);
      fails(['-configfile', file('empty.conf', '# only\n\n')], /config file '.*empty.conf' has no sections/);
      fails(['-configfile', file('zero.conf', '-n 0 ./a\n')], /-n expects a number of ranks/);
      fails(['-configfile', file('help.conf', '--help\n')], /--help and --version belong on the command line/);
      fails(['-configfile', join(dir, 'missing.conf')], /cannot read the file '.*missing.conf' of -configfile \(ENOENT\)/);
      fails(['-configfile', file('ok.conf', '-n 1 ./a\n'), '-n', '1', './b'], /-configfile and a program on the command line/);
      fails(['--app', file('two.app', '-np 1 ./a\n-np 1 ./b\n'), ':', '-np', '1', './c'], /MPMD section 1 has no program/);
    });
  });

  describe('bad input', () => {
    const cases: Array<[string, string[], RegExp, NodeJS.ProcessEnv?]> = [
      ['no arguments', [], /no program to run; usage: sfmpirun/],
      ['options but no program', ['-np', '2'], /no program to run/],
      ['np 0', ['-np', '0', 'p'], /-np expects a number of ranks \(a whole number of at least 1\), got '0'/],
      ['negative np', ['-n', '-3', 'p'], /-n expects a number of ranks .* got '-3'/],
      ['np not a number', ['-np', 'four', 'p'], /got 'four'/],
      ['np missing its value', ['-np'], /option '-np' needs a value \(N\)/],
      ['-genv missing a value', ['-genv', 'A'], /option '-genv' needs 2 values \(K V\)/],
      ['too many ranks', ['-np', String(MAX_RANKS + 1), 'p'], new RegExp(`${MAX_RANKS + 1} ranks requested; sfmpirun runs at most ${MAX_RANKS}`)],
      ['unknown provider', ['--provider', 'xen', '-n', '1', 'p'], /--provider expects one of auto, netns, vm, got 'xen'/],
      ['unknown memory transport', ['--memory-transport', 'tcp', '-n', '1', 'p'], /--memory-transport expects one of multicast, unicast, got 'tcp'/],
      ['unknown launch', ['--launch', 'ssh', '-n', '1', 'p'], /--launch expects one of auto, direct, native, pmi/],
      ['stdin rank out of range', ['--stdin', '2', '-np', '2', 'p'], /--stdin 2: the job has ranks 0 to 1/],
      ['stdin nonsense', ['--stdin', 'some', '-np', '2', 'p'], /--stdin expects a rank number, all or none/],
      ['bad timeout', ['--timeout', '0', '-np', '1', 'p'], /--timeout expects a number of seconds/],
      ['bad MPIEXEC_TIMEOUT', ['-np', '1', 'p'], /MPIEXEC_TIMEOUT='soon' is not a number of seconds/, { MPIEXEC_TIMEOUT: 'soon' }],
      ['missing working directory', ['-wdir', 'no/such/dir', '-n', '1', 'p'], /the working directory '.*no\/such\/dir' does not exist/],
      ['too many clones', ['--clones', String(MAX_RANKS + 1), '-n', '1', 'p'], new RegExp(`--clones ${MAX_RANKS + 1}: sfmpirun makes at most ${MAX_RANKS} clones`)],
      ['unknown --map-by', ['--map-by', 'galaxy', '-n', '1', 'p'], /--map-by 'galaxy': unknown mapping/],
    ];
    for (const [name, argv, message, env] of cases) {
      it(name, () => fails(argv, message, env ?? callerEnv));
    }
  });

  describe('unknown options', () => {
    const cases: Array<[string, string]> = [
      ['--npp', "sfmpirun: unrecognized option '--npp'; did you mean '--np'? See 'sfmpirun --help'."],
      ['-npp', "sfmpirun: unrecognized option '-npp'; did you mean '-np'? See 'sfmpirun --help'."],
      ['--tag-ouptut', "sfmpirun: unrecognized option '--tag-ouptut'; did you mean '--tag-output'? See 'sfmpirun --help'."],
      ['-genvs', "sfmpirun: unrecognized option '-genvs'; did you mean '-genv'? See 'sfmpirun --help'."],
      ['--hostfle', "sfmpirun: unrecognized option '--hostfle'; did you mean '--hostfile'? See 'sfmpirun --help'."],
      ['--provder=netns', "sfmpirun: unrecognized option '--provder'; did you mean '--provider'? See 'sfmpirun --help'."],
      ['--no-such-option', "sfmpirun: unrecognized option '--no-such-option'. See 'sfmpirun --help'."],
      ['-Z', "sfmpirun: unrecognized option '-Z'. See 'sfmpirun --help'."],
    ];
    for (const [word, message] of cases) {
      it(word, () => {
        let error: unknown;
        try {
          parseMpirunArgs([word, '-np', '1', 'p'], callerEnv, dir);
        } catch (e) {
          error = e;
        }
        expect(error).to.be.instanceOf(UserError);
        expect(errorLine('sfmpirun', error)).to.equal(message);
      });
    }
  });

  describe('--help and --version', () => {
    it('returns the help text, which lists every dialect and the environment rule', () => {
      for (const word of ['--help', '-help', '-h']) {
        const r = parseMpirunArgs(['-np', '2', word], callerEnv, dir);
        expect(r.kind).to.equal('help');
        if (r.kind !== 'help') return;
        expect(r.text).to.match(/^Usage: sfmpirun/);
        for (const s of ['-genv K V', '--tag-output', '--provider auto|netns|vm', '-configfile FILE', '--app FILE', 'Environment of the ranks', 'MPIEXEC_TIMEOUT']) {
          expect(r.text).to.include(s);
        }
        expect(r.text.split('\n').every((l) => l.length <= 100)).to.equal(true);
      }
    });

    it('returns version for --version and -V, and leaves the program its own --help', () => {
      expect(parseMpirunArgs(['--version'], callerEnv, dir)).to.deep.equal({ kind: 'version' });
      expect(parseMpirunArgs(['-V'], callerEnv, dir)).to.deep.equal({ kind: 'version' });
      expect(parseMpirunArgs(['-np', '1', 'prog', '--help'], callerEnv, dir).kind).to.equal('job');
    });
  });
});
