/**
 * The snowflock command line, run as a user would (a child process per command): run, up/exec/ps/
 * down, cleanup after the owner was SIGKILLed, SIGINT during run, and bad input. Each test checks
 * that nothing of its tickets is left.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import type { StateRecord } from '../../src/ticket/record.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { buildNative } from '../helpers/native.js';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const cli = join(root, 'launcher', 'bin', 'snowflock.ts');

interface Result {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

describe('snowflock CLI', function () {
  this.timeout(90_000);
  let stateDir: string;
  const ours: string[] = [];

  function start(
    args: string[],
    env: Record<string, string> = {},
    prefix: string[] = [],
    cwd = root,
  ): { child: ChildProcess; result: Promise<Result>; output: () => string } {
    // From another directory tsx is found through NODE_PATH-free absolute import.
    const argv = [...prefix, process.execPath, '--import', join(root, 'node_modules/tsx/dist/esm/index.mjs'), cli, ...args];
    const child = spawn(argv[0]!, argv.slice(1), {
      cwd,
      env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const result = new Promise<Result>((res) => child.on('close', (code, signal) => res({ code, signal, stdout, stderr })));
    return { child, result, output: () => stdout };
  }

  const snowflock = (args: string[], env: Record<string, string> = {}, prefix: string[] = [], cwd = root) => start(args, env, prefix, cwd).result;

  /** Subnet claims in the state directory: a ticket that got as far as its network leaves one. */
  const claims = (): string[] => (existsSync(join(stateDir, 'subnets')) ? readdirSync(join(stateDir, 'subnets')) : []);

  const records = (): string[] =>
    existsSync(join(stateDir, 'tickets')) ? readdirSync(join(stateDir, 'tickets')).filter((f) => f.endsWith('.json')).map((f) => f.slice(0, 6)) : [];

  /** Waits (bounded) until a record with `clones` clones exists; returns its ticket id. */
  async function recordWithClones(clones: number): Promise<string> {
    for (let i = 0; i < 600; i++) {
      for (const id of records()) {
        try {
          const r = JSON.parse(readFileSync(join(stateDir, 'tickets', `${id}.json`), 'utf8')) as StateRecord;
          if (r.clones.length === clones) return id;
        } catch {
          /* being written */
        }
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error('no ticket record with clones appeared');
  }

  before(() => {
    buildNative();
    stateDir = mkdtempSync(join(tmpdir(), 'sf-cli-test-'));
  });

  afterEach(async () => {
    await assertNoLeaks(ours.splice(0), stateDir);
  });

  after(async () => {
    // Whatever a failed test left in our own state directory.
    await snowflock(['cleanup', '--all']);
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('run -n 8 -- hostname prints 8 distinct hostnames, prefixed by clone, and leaves nothing', async () => {
    const r = await snowflock(['run', '-n', '8', '--provider', 'netns', '--', 'hostname']);
    expect(r.stderr).to.equal('');
    expect(r.code).to.equal(0);
    const lines = r.stdout.trim().split('\n').sort();
    expect(lines).to.have.length(8);
    const id = /^\[0\] sf([0-9a-f]{6})-0$/.exec(lines[0]!)?.[1];
    expect(id, r.stdout).to.be.a('string');
    ours.push(id!);
    expect(lines).to.deep.equal([0, 1, 2, 3, 4, 5, 6, 7].map((i) => `[${i}] sf${id}-${i}`));
  });

  it('run exits with the worst status of its clones (signals count as 128+n)', async () => {
    const script = 'case $(hostname) in *-1) exit 5;; *-2) kill -TERM $$;; esac; echo fine';
    const r = await snowflock(['-v', 'run', '-n', '3', '--', 'sh', '-c', script]);
    const id = /ticket ([0-9a-f]{6})/.exec(r.stderr)?.[1];
    expect(id, r.stderr).to.be.a('string');
    ours.push(id!);
    expect(r.stdout.trim()).to.equal('[0] fine');
    expect(r.code).to.equal(143);
  });

  it('up keeps clones that exec, ps and down reach', async () => {
    const up = await snowflock(['up', '-n', '2']);
    expect(up.code, up.stderr).to.equal(0);
    const id = /^ticket ([0-9a-f]{6}):/.exec(up.stdout)?.[1];
    expect(id, up.stdout).to.be.a('string');
    ours.push(id!);
    expect(up.stdout).to.match(new RegExp(`1\\s+sf${id}-1\\s+10\\.\\d+\\.\\d+\\.11`));

    const ps = await snowflock(['ps']);
    expect(ps.stdout).to.match(new RegExp(`^${id}\\s+netns\\s+2\\s`, 'm'));
    const one = await snowflock(['exec', id!, '1', '--', 'hostname']);
    expect(one.stdout).to.equal(`sf${id}-1\n`);
    const all = await snowflock(['exec', id!, 'all', '--', 'sh', '-c', 'hostname; exit 4']);
    expect(all.stdout.split('\n').sort().join('\n').trim()).to.equal(`[0] sf${id}-0\n[1] sf${id}-1`);
    expect(all.code).to.equal(4);
    // cleanup leaves a kept ticket alone.
    await snowflock(['cleanup']);
    expect(records()).to.include(id);
    const down = await snowflock(['down', id!]);
    expect(down.code, down.stderr).to.equal(0);
    expect(down.stdout).to.include(`ticket ${id} removed`);
  });

  it('cleanup removes everything of a ticket whose owner was killed with SIGKILL', async () => {
    const { child, result } = start(['run', '-n', '2', '--', 'sleep', '600']);
    const id = await recordWithClones(2);
    ours.push(id);
    // The owner and its reaper at once (as the OOM killer might): only the record is left to say
    // what to remove, and cleanup is what does it.
    const record = JSON.parse(readFileSync(join(stateDir, 'tickets', `${id}.json`), 'utf8')) as StateRecord;
    const reaper = record.resources.find((r) => r.kind === 'process' && r.what === 'reaper');
    if (reaper?.kind !== 'process') throw new Error('no reaper in the record');
    process.kill(reaper.pid, 'SIGKILL');
    child.kill('SIGKILL');
    await result;
    // The clones' namespaces outlive their owner until cleanup: the test could not fail otherwise.
    const { execFileSync } = await import('node:child_process');
    expect(execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })).to.include(`sf${id}-1`);
    const r = await snowflock(['cleanup']);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).to.include(`ticket ${id}: removed`);
    expect(r.stdout).to.include(`netns sf${id}-0`);
  });

  it('any later command reclaims the ticket of a SIGKILLed owner (issue 8 finding 2)', async () => {
    const { child, result } = start(['run', '-n', '2', '--', 'sleep', '600']);
    const id = await recordWithClones(2);
    ours.push(id);
    child.kill('SIGKILL');
    await result;
    expect(records()).to.include(id);
    const r = await snowflock(['ps']);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stdout).not.to.include(id);
    expect(records()).not.to.include(id);
    await assertNoLeaks([id], stateDir);
  });

  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    it(`${sig} during run tears everything down and dies of ${sig}`, async () => {
      const { child, result, output } = start(['run', '-n', '2', '--', 'sh', '-c', 'echo up; exec sleep 600']);
      const id = await recordWithClones(2);
      ours.push(id);
      // Both commands run (bounded wait: the test's timeout).
      while (!(output().includes('[0] up') && output().includes('[1] up'))) await new Promise((r) => setTimeout(r, 50));
      child.kill(sig);
      const r = await result;
      expect(r.signal, r.stderr).to.equal(sig);
      expect(records()).to.not.include(id);
    });
  }

  it('exits 141 without a stack trace when its stdout is closed (issue 8 finding 5)', async () => {
    for (const args of [['cleanup'], ['ps'], ['doctor'], ['--help']]) {
      const run = start(args);
      // The reader goes away before the command writes a word, as `| head -0` would.
      run.child.stdout!.destroy();
      const r = await run.result;
      expect(r.code, `snowflock ${args.join(' ')}: ${r.stderr}`).to.be.oneOf([0, 141]);
      expect(r.stderr, `snowflock ${args.join(' ')}`).not.to.match(/internal error|EPIPE|at .*\.js:\d+/);
    }
  });

  it('tears down and exits 141 when the reader of run goes away mid-job', async () => {
    const run = start(['run', '-n', '2', '--', 'sh', '-c', 'while true; do echo tick; sleep 0.05; done']);
    for (let i = 0; i < 600 && !run.output().includes('tick'); i++) await new Promise((r) => setTimeout(r, 20));
    const ids = records();
    expect(ids).to.have.length(1);
    run.child.stdout!.destroy();
    const r = await run.result;
    expect(r.code, r.stderr).to.equal(141);
    expect(r.stderr).not.to.match(/internal error|EPIPE/);
    await assertNoLeaks(ids, stateDir);
  });

  describe('bad input: one line, non-zero exit, nothing created', () => {
    // Named now (the cases below name it), made only when the block runs: a run filtered past it
    // leaves nothing.
    const noTool = join(tmpdir(), `sf-cli-path-${process.pid}`);
    before(() => {
      mkdirSync(join(noTool, 'bin'), { recursive: true });
      symlinkSync('/usr/sbin/ip', join(noTool, 'bin', 'ip'));
    });
    // A directory VM clones cannot mount: it would hide their own system files. (A large working
    // directory is no refusal any more: VM clones mount it; test/vm/workdir.test.ts runs one.)
    const systemDir = '/usr';
    after(() => rmSync(noTool, { recursive: true, force: true }));

    const cases: Array<[string, string[], Record<string, string>, RegExp, string[]?, string?]> = [
      ['n = 0', ['run', '-n', '0', '--', 'true'], {}, /whole number of at least 1, not 0/],
      ['negative n', ['run', '-n', '-2', '--', 'true'], {}, /whole number of at least 1, not -2/],
      ['n not a number', ['run', '-n', 'many', '--', 'true'], {}, /-n needs a whole number of clones, not "many"/],
      ['n beyond the limit', ['run', '-n', '245', '--', 'true'], {}, /limit is 244/],
      ['n beyond a configured limit', ['up', '-n', '3'], { SNOWFLOCK_MAX_CLONES: '2' }, /limit is 2 per ticket/],
      ['a public pool', ['up', '-n', '1'], { SNOWFLOCK_POOL: '8.8.0.0/16' }, /not inside a private range/],
      ['a pool that is no range', ['up', '-n', '1'], { SNOWFLOCK_POOL: 'ten-dot' }, /not an IPv4 range/],
      ['an unknown provider', ['up', '-n', '1', '--provider', 'docker'], {}, /unknown provider "docker"/],
      ['no command for run', ['run', '-n', '1'], {}, /no command given/],
      ['an unknown ticket', ['exec', 'abcdef', '--', 'true'], {}, /no ticket abcdef/],
      ['ip missing', ['up', '-n', '1'], { PATH: '/nonexistent' }, /ip not found in PATH; apt-get install iproute2/],
      ['nft missing', ['up', '-n', '1'], { PATH: join(noTool, 'bin') }, /nft not found in PATH; apt-get install nftables/],
      ['not root', ['up', '-n', '1'], {}, /not running as root; run snowflock as root/, ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups']],
      // issue 8 finding 4: refused before the ticket's network exists, not after.
      ['a working directory VM clones cannot mount', ['run', '-n', '2', '--provider', 'vm', '--', 'true'], {}, /cannot share \/usr with VM clones: it would hide the guest's own system files/, [], ''],
    ];
    for (const [what, args, env, message, prefix, cwd] of cases) {
      it(what, async () => {
        const before = records();
        const claimed = claims();
        const r = await snowflock(args, env, prefix, cwd === '' ? systemDir : root);
        expect(r.code, r.stderr).to.be.greaterThan(0);
        const lines = r.stderr.trim().split('\n');
        expect(lines, r.stderr).to.have.length(1);
        expect(lines[0]).to.match(/^snowflock: /).and.match(message);
        expect(records()).to.deep.equal(before);
        expect(claims(), 'subnet claims').to.deep.equal(claimed);
      });
    }

    it('a working directory VM clones cannot mount is refused before any ticket exists (-v shows no ticket step)', async () => {
      const r = await snowflock(['-v', 'run', '-n', '2', '--provider', 'vm', '--', 'true'], {}, [], systemDir);
      expect(r.code, r.stderr).to.equal(2);
      expect(r.stderr).to.match(/^snowflock: cannot share \/usr with VM clones/m);
      expect(r.stderr, 'no ticket was made').not.to.match(/ticket [0-9a-f]{6}/);
    });
  });
});
