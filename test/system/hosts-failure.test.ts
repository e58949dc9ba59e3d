/**
 * A job over simulated hosts losing one of them mid-job: its agent killed (SIGKILL), the agent
 * killed with its ticket's reaper (what is left there is for `snowflock cleanup` on that host),
 * and the host's network cut. Each time the job fails within seconds with one line naming the
 * host (status 4), every other host's part is torn down, and nothing is left anywhere.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import type { ResultPromise } from 'execa';
import type { JobReport } from '../../launcher/job/report.js';
import { setHostLink, type SimHostRecord } from '../../src/hosts/simulated.js';
import { assertNothingLeft, CHECKOUT, leftoversOn, onHost, SFMPIRUN_ARGV as SFMPIRUN, SNOWFLOCK_ARGV, useHostsSettings, useSimCluster } from '../helpers/hosts.js';
import { program } from '../helpers/programs.js';

const { stateDir } = useHostsSettings();

describe('hosts: losing a host mid-job', function () {
  this.timeout(600_000);
  const cluster = useSimCluster({
    hosts: 3,
    tag: 'hf',
    programs: [['sleeper', 'mpich']],
    // A test that failed with a host's network cut leaves it cut: mend it for down.
    beforeDown: async (rec) => {
      for (const h of rec.hosts) await setHostLink(rec, h.name, true).catch(() => {});
    },
  });

  /** salloc -N 3 sfmpirun -np 6 sleeper; resolves once every rank is ready. */
  async function start(name: string): Promise<{ job: ResultPromise<{ reject: false }>; report: string }> {
    const report = join(cluster.work, `${name}.json`);
    const job = cluster.slurm('salloc', ['-N', '3', ...SFMPIRUN, '--report', report, '-np', '6', program('sleeper', 'mpich')], { SNOWFLOCK_HOST_TIMEOUT: '4' });
    let out = '';
    await new Promise<void>((resolve, reject) => {
      job.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if ((out.match(/ready/g) ?? []).length === 6) resolve();
      });
      void job.then((r) => reject(new Error(`the job ended before its ranks were ready: ${r.stderr}`)));
    });
    return { job, report };
  }

  /** The agent's PID on a host (as the host sees it) and its ticket's reaper's. */
  async function agentOf(h: SimHostRecord): Promise<{ agent: string; reaper: string }> {
    const ps = (await onHost(h, ['sh', '-c', "for p in /proc/[0-9]*; do echo \"${p#/proc/} $(tr '\\0' ' ' < $p/cmdline)\"; done"])).stdout.split('\n');
    const agent = ps.find((l) => / agent --connect /.test(l) && !/^\S+ (srun|\S*lifeline)/.test(l))?.split(' ')[0];
    const reaper = ps.find((l) => /reaper --owner/.test(l))?.split(' ')[0];
    if (!agent || !reaper) throw new Error(`no agent or reaper on ${h.name}: ${ps.filter((l) => /agent|reaper/.test(l)).join(' | ')}`);
    return { agent, reaper };
  }

  async function failed(job: ResultPromise<{ reject: false }>, report: string, t0: number) {
    const r = await job;
    const took = Date.now() - t0;
    const rep = JSON.parse(readFileSync(report, 'utf8')) as JobReport;
    return { r, took, rep };
  }

  it('an agent killed mid-job fails the job at once with one line naming its host; nothing is left anywhere', async function () {
    const { job, report } = await start('killed');
    const victim = cluster.rec.hosts[2]!;
    const { agent } = await agentOf(victim);
    const t0 = Date.now();
    await onHost(victim, ['kill', '-KILL', agent]);
    const { r, took, rep } = await failed(job, report, t0);
    console.log(`      (${took} ms after the loss) stderr: ${JSON.stringify(r.stderr)}`);
    expect(r.exitCode, r.stderr).to.equal(4);
    expect(r.stderr).to.include(`sfmpirun: host ${victim.name} is lost: its agent ended`);
    expect(rep.summary).to.equal(`sfmpirun: host ${victim.name} is lost: its agent ended`);
    // Within seconds (not a timed benchmark: a bound on a hang).
    expect(took, `${took} ms`).to.be.below(30_000);
    await assertNothingLeft(cluster.rec, [rep.ticket!], stateDir);
  });

  it('an agent killed with its reaper leaves its host to snowflock cleanup there, which removes everything', async function () {
    const { job, report } = await start('reaped');
    const victim = cluster.rec.hosts[1]!;
    const { agent, reaper } = await agentOf(victim);
    await onHost(victim, ['kill', '-KILL', agent, reaper]);
    const { r, rep } = await failed(job, report, Date.now());
    expect(r.exitCode, r.stderr).to.equal(4);
    expect(r.stderr).to.include(`sfmpirun: host ${victim.name} is lost: its agent ended`);
    // This host keeps its ticket's network, namespace names and record; no process of it lives
    // on (the clones' holders died with the agent, their owner).
    const left = await leftoversOn(victim, [rep.ticket!], stateDir);
    for (const what of [`link sf${rep.ticket}`, `table inet sf_${rep.ticket}`, `state ${rep.ticket}.json`]) expect(left.some((l) => l.includes(what)), `${what} in ${left.join('; ')}`).to.equal(true);
    expect(left.filter((l) => / (process|agent) /.test(l))).to.deep.equal([]);
    const cleanup = await onHost(victim, [...SNOWFLOCK_ARGV, 'cleanup'], { cwd: CHECKOUT });
    expect(cleanup.exitCode, cleanup.stderr).to.equal(0);
    expect(cleanup.stdout).to.include(rep.ticket!);
    await assertNothingLeft(cluster.rec, [rep.ticket!], stateDir);
  });

  it('the launcher SIGKILLed mid-job: every host tears its part down by itself (its agent, its reaper)', async function () {
    const { job } = await start('launcher');
    // sfmpirun is salloc's child here.
    const children = readFileSync(`/proc/${job.pid}/task/${job.pid}/children`, 'utf8').trim().split(/\s+/);
    const launcher = children.find((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('sfmpirun'));
    expect(launcher, 'the sfmpirun process').to.be.a('string');
    // The launcher's own part is on this machine (salloc's shell runs here): its record names the ticket.
    const ticket = readdirSync(join(stateDir, 'tickets')).find((f) => /^[0-9a-f]{6}\.json$/.test(f))?.slice(0, 6);
    process.kill(Number(launcher), 'SIGKILL');
    await job;
    expect(ticket).to.match(/^[0-9a-f]{6}$/);
    await assertNothingLeft(cluster.rec, [ticket!], stateDir, 20_000);
  });

  it("a host's network cut mid-job fails the job within seconds naming the host; the cut host tears its part down by itself", async function () {
    const { job, report } = await start('cut');
    const victim = cluster.rec.hosts[2]!;
    const t0 = Date.now();
    await setHostLink(cluster.rec, victim.name, false);
    const { r, took, rep } = await failed(job, report, t0);
    console.log(`      (${took} ms after the loss) stderr: ${JSON.stringify(r.stderr)}`);
    expect(r.exitCode, r.stderr).to.equal(4);
    expect(r.stderr).to.match(new RegExp(`sfmpirun: host ${victim.name} is lost: nothing heard for \\d+ s`));
    expect(took, `${took} ms`).to.be.below(60_000);
    // While still cut off, the host has removed its part (its agent heard nothing either).
    await assertNothingLeft(cluster.rec, [rep.ticket!], stateDir, 15_000);
    await setHostLink(cluster.rec, victim.name, true);
  });
});
