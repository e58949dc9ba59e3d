/**
 * The warm service (`snowflock warm`, src/warm/): real ticket networks made ahead, leased by real
 * sfmpirun jobs and given back, against the real host (needs root). What it must keep: a job on a
 * leased network runs as on its own and leaves nothing once the service has torn the network down;
 * no network serves two jobs; the service's networks go with it however it ends (SIGTERM, or
 * SIGKILL and its reapers); a job SIGKILLed on a leased network is removed by its own reaper; a
 * job whose service is gone (a stale socket) or off (SNOWFLOCK_WARM=off) makes its own network.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { settings } from '../../src/common/config.js';
import { projectRoot } from '../../src/common/paths.js';
import { Engine } from '../../src/engine.js';
import { ask } from '../../src/warm/client.js';
import { socketPath, type WarmStatus } from '../../src/warm/protocol.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { program } from '../helpers/programs.js';
import { leftovers, sfmpirun, stateDir, stateRecords } from '../helpers/sfmpirun.js';

const root = projectRoot();
const snowflock = join(root, 'launcher/bin/snowflock.ts');
const tsx = join(root, 'node_modules/tsx/dist/esm/index.mjs');

interface Service {
  child: ChildProcess;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** `snowflock warm` on the tests' state directory, once it says its networks are ready. */
async function startService(networks = 2): Promise<Service> {
  const child = spawn(process.execPath, ['--import', tsx, snowflock, 'warm', '--networks', String(networks)], {
    env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('close', (code, signal) => resolve({ code, signal })));
  await new Promise<void>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      err += d.toString();
      if (err.includes('ready for jobs')) resolve();
    });
    void exited.then(({ code }) => reject(new Error(`snowflock warm exited with ${code}: ${err}`)));
  });
  return { child, stderr: () => err, exited };
}

async function status(): Promise<WarmStatus> {
  const reply = await ask(stateDir, { op: 'status' });
  if (!reply?.ok || !reply.status) throw new Error('the warm service does not answer');
  return reply.status;
}

/** Polls until the service's state satisfies `ok` (it refills and tears down after the job). */
async function statusWhen(ok: (s: WarmStatus) => boolean, timeoutMs = 10_000): Promise<WarmStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await status();
    if (ok(s)) return s;
    if (Date.now() > deadline) throw new Error(`the warm service never got there: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('warm service: networks made ahead for jobs', function () {
  this.timeout(120_000);
  let service: Service | null = null;
  const hello = () => program('hello');

  afterEach(async () => {
    if (service && service.child.exitCode === null && service.child.signalCode === null) {
      service.child.kill('SIGTERM');
      await service.exited;
    }
    service = null;
  });

  it('a job runs on a ready network, gives it back, and the service makes a fresh one', async () => {
    service = await startService(2);
    const before = await status();
    expect(before.ready).to.have.length(2);
    // snowflock ps names them as warm networks, ready (no clones yet).
    const ps = spawnSync(process.execPath, ['--import', tsx, snowflock, 'ps'], { env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir }, encoding: 'utf8' });
    const [head, ...rows] = ps.stdout.trim().split('\n').map((l) => l.split(/\s+/));
    const col = (name: string) => head!.indexOf(name);
    for (const id of before.ready) {
      const row = rows.find((r) => r[0] === id);
      expect(row, ps.stdout).to.not.equal(undefined);
      expect([row![col('CLONES')], row![col('WARM')]]).to.deep.equal(['0', 'yes']);
    }
    const run = await sfmpirun(['-np', '2', hello()]);
    expect(run.code, run.stderr).to.equal(0);
    expect(run.stdout.toString()).to.match(/hello rank 1 of 2/);
    expect(run.report!.warm).to.equal(true);
    const used = run.report!.ticket!;
    expect(before.ready).to.include(used);
    // The job's processes were gone when it exited; the network goes on the service's time.
    const after = await statusWhen((s) => s.returns === 1 && s.returning === 0 && s.ready.length === 2);
    expect(after.ready).to.not.include(used);
    expect(after.leases).to.equal(1);
    await assertNoLeaks([used], stateDir);
  });

  it('no network serves two jobs, and a job finding none ready makes its own', async () => {
    service = await startService(1);
    const first = await sfmpirun(['-np', '1', hello()]);
    const second = await sfmpirun(['-np', '1', hello()]);
    expect([first.code, second.code]).to.deep.equal([0, 0]);
    expect(first.report!.warm).to.equal(true);
    expect(second.report!.ticket).to.not.equal(first.report!.ticket);
    // Right after the first, the one network may not be fresh yet: then the second made its own.
    const s = await status();
    expect(s.leases + s.misses).to.equal(2);
    expect(second.report!.warm).to.equal(s.leases === 2);
    await statusWhen((x) => x.returning === 0);
    for (const r of [first, second]) expect(leftovers(r.report!.ticket!)).to.deep.equal([]);
  });

  it('keeps making fresh networks, also while jobs outlast the refill after a lease', async () => {
    service = await startService(1);
    const used = new Set<string>();
    for (let i = 0; i < 3; i++) {
      const [ready] = (await statusWhen((s) => s.ready.length === 1 && s.returning === 0)).ready;
      expect(used.has(ready!), `network ${ready} again`).to.equal(false);
      const run = await sfmpirun(['-np', '1', 'sleep', '1.5']);
      expect(run.code, run.stderr).to.equal(0);
      expect(run.report!.warm).to.equal(true);
      expect(run.report!.ticket).to.equal(ready);
      used.add(ready!);
    }
    await statusWhen((s) => s.ready.length === 1 && s.returning === 0);
    await assertNoLeaks([...used], stateDir);
  });

  it('serves jobs that ask at once: some lease, the others make their own, all leave nothing', async () => {
    service = await startService(2);
    const runs = await Promise.all([1, 2, 3, 4].map(() => sfmpirun(['-np', '2', hello()])));
    for (const r of runs) expect(r.code, r.stderr).to.equal(0);
    const tickets = runs.map((r) => r.report!.ticket!);
    expect(new Set(tickets).size).to.equal(4);
    const s = await statusWhen((x) => x.returning === 0 && x.ready.length === 2);
    expect(s.leases).to.equal(runs.filter((r) => r.report!.warm).length);
    expect(s.leases + s.misses).to.equal(4);
    await assertNoLeaks(tickets, stateDir);
  });

  it('a network leased by a job that died before it took it is torn down, and only a warm one is taken back', async () => {
    service = await startService(1);
    // The real protocol, as a job that is killed right after its lease would leave it.
    const leased = await ask(stateDir, { op: 'lease', pool: settings().pool });
    expect(leased?.ok && leased.ticket, JSON.stringify(leased)).to.be.a('string');
    const id = (leased as { ticket: string }).ticket;
    await assertNoLeaks([id], stateDir, 10_000);
    const s = await statusWhen((x) => x.ready.length === 1 && x.ready[0] !== id);
    expect([s.returns, s.abandoned]).to.deep.equal([0, 1]);
    // A job's own ticket is not the service's to take.
    const run = await sfmpirun(['-np', '1', '--keep', hello()]);
    expect(run.code, run.stderr).to.equal(0);
    const kept = run.report!.ticket!;
    try {
      const refused = await ask(stateDir, { op: 'return', ticket: kept });
      expect(refused).to.deep.equal({ ok: false, why: `no ticket ${kept} to take back` });
      expect(leftovers(kept)).to.not.deep.equal([]);
    } finally {
      await new Engine({ stateDir }).kill(kept);
    }
    expect(leftovers(kept)).to.deep.equal([]);
  });

  it('SNOWFLOCK_WARM=off, or a pool of its own: the job makes its own network and the service keeps its own', async () => {
    service = await startService(1);
    const before = await status();
    const run = await sfmpirun(['-np', '1', hello()], { env: { SNOWFLOCK_WARM: 'off' } });
    expect(run.code, run.stderr).to.equal(0);
    expect(run.report!.warm).to.equal(false);
    expect((await status()).ready).to.deep.equal(before.ready);
    expect(leftovers(run.report!.ticket!)).to.deep.equal([]);
    // A job whose address pool (SNOWFLOCK_POOL) holds none of the service's networks makes its own, in its pool.
    const other = await sfmpirun(['-np', '1', hello()], { env: { SNOWFLOCK_POOL: '10.214.0.0/16' } });
    expect(other.code, other.stderr).to.equal(0);
    expect(other.report!.warm).to.equal(false);
    expect(other.report!.clones[0]!.address).to.match(/^10\.214\./);
    expect((await status()).ready).to.deep.equal(before.ready);
    expect(leftovers(other.report!.ticket!)).to.deep.equal([]);
  });

  it('a job SIGKILLed on a leased network is removed by its own reaper', async () => {
    service = await startService(1);
    const [ticket] = (await status()).ready;
    const run = await sfmpirun(['-np', '2', program('sleeper')], {
      onStdout: (seen, child) => {
        if ((seen.match(/ready/g) ?? []).length === 2) child.kill('SIGKILL');
      },
    });
    expect(run.signal).to.equal('SIGKILL');
    await assertNoLeaks([ticket!], stateDir, 5000);
    // The service never got it back: it made a fresh one all the same.
    const s = await statusWhen((x) => x.ready.length === 1 && x.ready[0] !== ticket);
    expect(s.returns).to.equal(0);
  });

  it('SIGTERM stops the service with nothing left; SIGKILL leaves its networks to their reapers', async () => {
    service = await startService(2);
    const first = (await status()).ready;
    service.child.kill('SIGTERM');
    expect(await service.exited).to.deep.equal({ code: 0, signal: null });
    expect(existsSync(socketPath(stateDir))).to.equal(false);
    await assertNoLeaks(first, stateDir);

    service = await startService(2);
    const second = (await status()).ready;
    service.child.kill('SIGKILL');
    await service.exited;
    await assertNoLeaks(second, stateDir, 5000);
    // Its socket is left, answering nothing: a job then makes its own network.
    expect(existsSync(socketPath(stateDir))).to.equal(true);
    const run = await sfmpirun(['-np', '1', hello()]);
    expect(run.code, run.stderr).to.equal(0);
    expect(run.report!.warm).to.equal(false);
    expect(leftovers(run.report!.ticket!)).to.deep.equal([]);
    rmSync(socketPath(stateDir)); // what the next service would remove at its start
  });

  it('a bad --networks is refused in one line before anything exists', async () => {
    for (const bad of ['0', 'abc', '65']) {
      const child = spawn(process.execPath, ['--import', tsx, snowflock, 'warm', '--networks', bad], { env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir }, stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
      expect(code, bad).to.equal(2);
      expect(err.trim().split('\n'), bad).to.have.length(1);
      expect(err).to.include(`--networks "${bad}": give a whole number of networks from 1 to 64`);
      expect(existsSync(socketPath(stateDir))).to.equal(false);
      expect(stateRecords()).to.deep.equal([]);
    }
  });

  it('a second service on the same host is refused in one line', async () => {
    service = await startService(1);
    const second = spawn(process.execPath, ['--import', tsx, snowflock, 'warm'], { env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir }, stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    second.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const code = await new Promise<number | null>((resolve) => second.once('close', resolve));
    expect(code).to.equal(2);
    expect(err.trim().split('\n')).to.have.length(1);
    expect(err).to.match(/a warm service runs already on this host \(pid \d+/);
    expect((await status()).ready).to.have.length(1);
  });
});
