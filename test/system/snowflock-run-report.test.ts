/**
 * `snowflock run --report FILE` (issue 13): the record of a run, like sfmpirun's: phases, the
 * ticket, its clones and their host, how the command ended in each clone, the exit status. And the
 * progress lines of a quick run: none, neither in a pipe nor on a terminal (a pty from script(1)).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { projectRoot } from '../../src/common/paths.js';
import type { RunReport } from '../../launcher/cli/run-report.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { buildNative } from '../helpers/native.js';

const root = projectRoot();
const cli = join(root, 'launcher', 'bin', 'snowflock.ts');
const tsx = join(root, 'node_modules/tsx/dist/esm/index.mjs');

describe('snowflock run --report', function () {
  this.timeout(90_000);
  let stateDir: string;
  let dir: string;

  before(() => {
    buildNative();
    stateDir = mkdtempSync(join(tmpdir(), 'sf-runreport-state-'));
    dir = mkdtempSync(join(tmpdir(), 'sf-runreport-'));
  });

  after(() => {
    rmSync(stateDir, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  });

  function run(argv: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    const child = spawn(argv[0]!, argv.slice(1), { env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    return new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr })));
  }

  const ticketOf = (report: RunReport) => report.ticket;

  it('records phases, clones with their host, and each clone’s exit; exits with the worst', async () => {
    const file = join(dir, 'report.json');
    // Clone 0 succeeds, clone 1 fails with 3, clone 2 dies of SIGTERM.
    const script = 'case $(hostname) in *-0) exit 0;; *-1) exit 3;; *) kill -TERM $$;; esac';
    const r = await run([process.execPath, '--import', tsx, cli, 'run', '-n', '3', '--provider', 'netns', '--report', file, '--', 'sh', '-c', script]);
    expect(r.code, r.stderr).to.equal(143);
    const report = JSON.parse(readFileSync(file, 'utf8')) as RunReport;
    await assertNoLeaks([ticketOf(report)], stateDir);
    expect(report).to.include({ version: 1, command: 'run', provider: 'netns', exitCode: 143, summary: null, checkpoint: 'host' });
    expect(report.argv).to.deep.equal(['sh', '-c', script]);
    expect(report.ticket).to.match(/^[0-9a-f]{6}$/);
    expect(Object.keys(report.phases)).to.deep.equal(['provision', 'run', 'teardown']);
    for (const ms of Object.values(report.phases)) expect(ms).to.be.a('number').and.be.at.least(0);
    expect(report.clones.map((c) => [c.id, c.hostname, c.host])).to.deep.equal([0, 1, 2].map((i) => [i, `sf${report.ticket}-${i}`, hostname()]));
    expect(report.clones.every((c) => /^\d+\.\d+\.\d+\.\d+$/.test(c.address))).to.equal(true);
    expect(report.exits.map((e) => [e.clone, e.code, e.signal, e.status])).to.deep.equal([
      [0, 0, null, 0],
      [1, 3, null, 3],
      [2, null, 'SIGTERM', 143],
    ]);
  });

  it('a quick run prints no progress lines, in a pipe or on a terminal', async () => {
    const piped = await run([process.execPath, '--import', tsx, cli, 'run', '-n', '2', '--provider', 'netns', '--', 'true']);
    expect(piped.code, piped.stderr).to.equal(0);
    expect(piped.stderr).to.equal('');
    // script(1) gives the command a terminal (its stderr included) and copies what it wrote.
    const command = [process.execPath, '--import', tsx, cli, 'run', '-n', '2', '--provider', 'netns', '--', 'true'].join(' ');
    const tty = await run(['script', '-q', '-e', '-c', command, '/dev/null']);
    expect(tty.code, tty.stdout).to.equal(0);
    expect(tty.stdout, 'nothing drawn, nothing left').to.equal('');
  });
});
