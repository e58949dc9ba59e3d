/**
 * Progress of a first VM job (issue 13): a program no image held yet makes `snowflock run` build
 * its guest image and boot a template. In a pipe it prints one line per finished slow step; on a
 * terminal (a pty from script(1)) one line redrawn in place, erased before the job's output. Each
 * case runs a program of its own (a copy of true(1) with bytes of its own), so that both build.
 */
import { spawn } from 'node:child_process';
import { appendFileSync, copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { projectRoot } from '../../src/common/paths.js';
import { buildNative } from '../helpers/native.js';
import { POOL } from '../helpers/vm.js';

const root = projectRoot();
const cli = join(root, 'launcher', 'bin', 'snowflock.ts');
const tsx = join(root, 'node_modules/tsx/dist/esm/index.mjs');

describe('progress of a first VM job', function () {
  this.timeout(600_000);
  let stateDir: string;
  let dir: string;

  before(() => {
    buildNative();
    stateDir = mkdtempSync(join(tmpdir(), 'sf-progress-state-'));
    // Not under /tmp: the clones mount the working directory from the host.
    dir = mkdtempSync(join(root, '.sf-progress-'));
  });

  after(() => {
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  /** A program no image holds yet. */
  function freshProgram(name: string): string {
    const path = join(dir, name);
    copyFileSync('/bin/true', path);
    appendFileSync(path, randomBytes(16)); // after the ELF's end: it runs the same, its image is new
    return `./${name}`;
  }

  function run(argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const child = spawn(argv[0]!, argv.slice(1), { cwd: dir, env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir, SNOWFLOCK_POOL: POOL }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  }

  it('in a pipe: a line per finished slow step', async () => {
    const r = await run([process.execPath, '--import', tsx, cli, 'run', '-n', '1', '--provider', 'vm', '--', freshProgram('first-piped')]);
    expect(r.code, r.stderr).to.equal(0);
    expect(r.stderr).to.match(/^snowflock: template boot: \d+\.\d s$/m);
    expect(r.stderr).to.match(/^snowflock: checkpoint: \d+\.\d s$/m);
    expect(r.stderr.split('\n').filter(Boolean).every((l) => /^snowflock: [^:]+: \d+\.\d s$/.test(l)), r.stderr).to.equal(true);
    expect(r.stderr).not.to.include('\r');
    // -q: none.
    const quiet = await run([process.execPath, '--import', tsx, cli, 'run', '-q', '-n', '1', '--provider', 'vm', '--', freshProgram('first-quiet')]);
    expect(quiet.code, quiet.stderr).to.equal(0);
    expect(quiet.stderr).to.equal('');
  });

  it('on a terminal: one line redrawn in place, erased before the output', async () => {
    const command = [process.execPath, '--import', tsx, cli, 'run', '-n', '1', '--provider', 'vm', '--', freshProgram('first-tty')].join(' ');
    const r = await run(['script', '-q', '-e', '-c', command, '/dev/null']);
    expect(r.code, r.stdout).to.equal(0);
    const out = r.stdout;
    expect(out).to.match(/\r\x1b\[Ksnowflock: checkpoint › template boot \(\d+\.\d s\)/);
    // The last progress write is the erase, and nothing of the line stays (the program prints nothing).
    expect(out.endsWith('\r\x1b[K'), JSON.stringify(out.slice(-200))).to.equal(true);
    expect(out, 'no line ends').not.to.include('\n');
  });
});
