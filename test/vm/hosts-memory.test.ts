/**
 * The done-when of memory on demand (issue 11) inside a real Slurm allocation of simulated hosts
 * (src/hosts/simulated.ts): `salloc -N 2 sfmpirun --provider vm -np 4 ./ring`. salloc's shell runs
 * here, on no node of the allocation, so this host is the parent's: it checkpoints the template
 * (or finds it cached) and serves its memory (a memserver of the ticket on its underlay address);
 * each node's agent gets the descriptor, the memserver and the token over the agent protocol, and
 * its VM clones map a memtap of its own host (whose /dev/shm cannot see the template's RAM file).
 * The ranks' output, the report's memory figures per clone host, and nothing left on any host.
 * Then: Open MPI (one sf-pmix per host); sbatch, whose launcher's node holds clones of its own
 * template; and the failures: a clone host's agent SIGKILLed, the launcher SIGKILLed, the
 * memserver SIGKILLed, each mid-job, each leaving nothing anywhere.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import type { JobReport } from '../../launcher/job/report.js';
import { assertNothingLeft, onHost, SFMPIRUN_ARGV, useHostsSettings, useSimCluster } from '../helpers/hosts.js';
import { program } from '../helpers/programs.js';

const { stateDir } = useHostsSettings();
const SFMPIRUN = SFMPIRUN_ARGV.join(' ');

describe('hosts: sfmpirun --provider vm in a Slurm allocation, memory on demand', function () {
  this.timeout(600_000);
  // The job's working directory (which the clones mount) is the cluster's, outside /tmp.
  const cluster = useSimCluster({ hosts: 2, tag: 'hm', programs: [['ring', 'mpich'], ['ring', 'openmpi']] });


  it('salloc -N 2 runs the MPICH ring on 4 VM clones over both hosts, their memory fetched from this host on demand', async function () {
    // Neither node can open the template's RAM file (its /dev/shm is its own): the proof that
    // the clones there cannot have mapped it.
    const template = execFileSync('sh', ['-c', 'ls -d /dev/shm/snowflock-tpl-* 2>/dev/null | head -1'], { encoding: 'utf8' }).trim();
    if (template) {
      for (const h of cluster.rec.hosts) expect((await onHost(h, ['test', '-e', `${template}/ram`])).exitCode, `${h.name} sees ${template}`).to.not.equal(0);
    }
    const file = join(cluster.work, 'ring.json');
    writeFileSync(
      join(cluster.work, 'job.sh'),
      [
        '#!/bin/sh',
        `${SFMPIRUN} --provider vm --report ${file} -np 4 ${program('ring', 'mpich')}`,
        'echo "ring status $?"',
        // The working directory, mounted in every clone from its own host's file server (the
        // hosts share this directory, as an HPC cluster's nodes do): a file from each rank.
        `${SFMPIRUN} --provider vm --report ${cluster.work}/where.json -np 4 sh -c 'echo "where $PMI_RANK $(hostname) $(pwd) $(cat /sys/class/net/eth0/mtu)"; echo $PMI_RANK > rank.$PMI_RANK'`,
        'echo "where status $?"',
      ].join('\n') + '\n',
      { mode: 0o755 },
    );
    const r = await cluster.slurm('salloc', ['-N', '2', join(cluster.work, 'job.sh')]);
    expect(r.exitCode, r.stderr).to.equal(0);
    expect(r.stdout, r.stderr).to.include('ring token 8 after 2 laps of 4 ranks');
    expect(r.stdout, r.stderr).to.include('ring status 0');
    expect(r.stdout, r.stderr).to.include('where status 0');
    const where = JSON.parse(readFileSync(join(cluster.work, 'where.json'), 'utf8')) as JobReport;
    const lines = r.stdout.split('\n').filter((l) => l.startsWith('where ') && l.split(' ').length === 5);
    expect(lines, r.stdout).to.have.length(4);
    for (const l of lines) {
      const [, rank, clone, cwd, mtu] = l.split(' ');
      expect(clone).to.equal(where.clones[where.ranks.find((x) => x.rank === Number(rank))!.clone]!.hostname);
      expect(cwd).to.equal(cluster.work);
      // 50 below the underlay's (1500), as the VXLAN across hosts needs.
      expect(mtu, `rank ${rank}`).to.equal('1450');
      expect(readFileSync(join(cluster.work, `rank.${rank}`), 'utf8').trim()).to.equal(rank);
    }
    expect(where.clones.map((c) => c.host)).to.deep.equal(cluster.rec.hosts.flatMap((h) => [h.name, h.name]));

    const rep = JSON.parse(readFileSync(file, 'utf8')) as JobReport;
    expect(rep.exitCode).to.equal(0);
    const [a, b] = cluster.rec.hosts.map((h) => h.name) as [string, string];
    expect(rep.clones.map((c) => c.host)).to.deep.equal([a, a, b, b]);
    expect(rep.ranks.map((x) => rep.clones[x.clone]!.host)).to.deep.equal([a, a, b, b]);

    // One memtap per clone host, each having fetched pages (never all of them), and this host's memserver.
    const mem = rep.memory!;
    if (process.env.SNOWFLOCK_TEST_VERBOSE) console.log(JSON.stringify(mem, null, 1), r.stderr);
    expect(mem, 'the report has memory figures').to.not.equal(undefined);
    expect(mem.hosts.map((h) => h.host).sort()).to.deep.equal([a, b].sort());
    for (const h of mem.hosts) {
      expect(h.failed, h.host).to.equal(null);
      expect(h.pagesFetched, `${h.host}: pages fetched`).to.be.greaterThan(0);
      expect(h.pagesFetched, `${h.host}: pages fetched`).to.be.lessThan(h.guestPages);
      expect(h.bytesReceived).to.be.at.least(h.pagesFetched * 4096);
      expect(h.pagesAvoided.untouched + h.pagesAvoided.freed, `${h.host}: pages avoided`).to.be.greaterThan(0);
    }
    expect(mem.servers).to.have.length(1);
    // Each memtap connects for its faults; the template comes by multicast (the default) to both.
    const server = mem.servers[0]!;
    expect(server.clients).to.be.at.least(2);
    expect(server.multicast?.receivers, 'both hosts joined the push').to.equal(2);
    for (const h of mem.hosts) expect(h.pushPages, `${h.host}: pages from the push`).to.be.greaterThan(0);
    // By unicast, the memserver sent every host what it got that way.
    const unicast = (x: { bytesSent?: number; bytesReceived?: number; multicastBytes: number }) => (x.bytesSent ?? x.bytesReceived ?? 0) - x.multicastBytes;
    expect(unicast(server)).to.be.at.least(mem.hosts.reduce((s, h) => s + unicast(h), 0));

    await assertNothingLeft(cluster.rec, [rep.ticket!, where.ticket!], stateDir);
    // This host's memserver listened on its underlay address (the cluster's gateway): gone too.
    const servers = execFileSync('sh', ['-c', `pgrep -af '[m]emserver .*--listen ${cluster.rec.gateway}:' || true`], { encoding: 'utf8' }).trim();
    expect(servers, 'a memserver of the job still runs').to.equal('');
  });

  it('salloc -N 2: an Open MPI ring on 4 VM clones over both hosts, one PMIx server per host', async function () {
    const file = join(cluster.work, 'ompi.json');
    const r = await cluster.slurm('salloc', ['-N', '2', ...SFMPIRUN_ARGV, '--provider', 'vm', '--report', file, '-np', '4', program('ring', 'openmpi')]);
    expect(r.exitCode, r.stderr).to.equal(0);
    expect(r.stdout, r.stderr).to.include('ring token 8 after 2 laps of 4 ranks');
    const rep = JSON.parse(readFileSync(file, 'utf8')) as JobReport;
    expect(rep.clones.map((c) => c.host)).to.deep.equal(cluster.rec.hosts.flatMap((h) => [h.name, h.name]));
    expect(rep.ranks.every((x) => x.contacted?.includes('pmix') && x.finalized)).to.equal(true);
    expect(rep.memory!.hosts.map((h) => h.host).sort()).to.deep.equal(cluster.rec.hosts.map((h) => h.name).sort());
    await assertNothingLeft(cluster.rec, [rep.ticket!], stateDir);
  });

  it('sbatch -N 2: the launcher on the first node holds clones of the template itself (copy on write), the other node runs on memory on demand', async function () {
    const file = join(cluster.work, 'batch.json');
    writeFileSync(join(cluster.work, 'batch.sh'), `#!/bin/sh\n${SFMPIRUN} --provider vm --report ${file} -np 4 ${program('ring', 'mpich')}\necho "ring status $?"\n`, { mode: 0o755 });
    const r = await cluster.slurm('sbatch', ['-N', '2', '--wait', '-o', join(cluster.work, 'batch-%j.out'), join(cluster.work, 'batch.sh')]);
    expect(r.exitCode, r.stderr).to.equal(0);
    const out = readFileSync(join(cluster.work, `batch-${/Submitted batch job (\d+)/.exec(r.stdout)![1]}.out`), 'utf8');
    expect(out, out).to.include('ring token 8 after 2 laps of 4 ranks');
    expect(out).to.include('ring status 0');
    const rep = JSON.parse(readFileSync(file, 'utf8')) as JobReport;
    const [a, b] = cluster.rec.hosts.map((h) => h.name) as [string, string];
    expect(rep.clones.map((c) => c.host)).to.deep.equal([a, a, b, b]);
    // Only the other node has a memtap: the launcher's clones map the template's RAM file.
    expect(rep.memory!.hosts.map((h) => h.host)).to.deep.equal([b]);
    expect(rep.memory!.hosts[0]!.pagesFetched).to.be.greaterThan(0);
    await assertNothingLeft(cluster.rec, [rep.ticket!], stateDir);
  });

  it('the agent of a clone host killed mid-job: the job fails naming the host; its QEMUs, memtap and mount go with it', async function () {
    const file = join(cluster.work, 'agent.json');
    const job = cluster.slurm('salloc', ['-N', '2', ...SFMPIRUN_ARGV, '--provider', 'vm', '--report', file, '-np', '4', 'sh', '-c', 'echo up; exec sleep 120']);
    let out = '';
    job.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    while ((out.match(/^up$/gm) ?? []).length < 4 && job.exitCode === null) await new Promise((r) => setTimeout(r, 200));
    const victim = cluster.rec.hosts[1]!;
    const ps = (await onHost(victim, ['sh', '-c', "for p in /proc/[0-9]*; do echo \"${p#/proc/} $(tr '\\0' ' ' < $p/cmdline)\"; done"])).stdout.split('\n');
    expect(ps.filter((l) => /memtap --desc/.test(l) && !/lifeline/.test(l)), 'a memtap on the host').to.have.length(1);
    const agent = ps.find((l) => / agent --connect /.test(l) && !/^\S+ (srun|\S*lifeline)/.test(l))!.split(' ')[0]!;
    await onHost(victim, ['kill', '-KILL', agent]);
    const r = await job;
    expect(r.exitCode, r.stderr).to.equal(4);
    expect(r.stderr).to.include(`sfmpirun: host ${victim.name} is lost: its agent ended`);
    const rep = JSON.parse(readFileSync(file, 'utf8')) as JobReport;
    await assertNothingLeft(cluster.rec, [rep.ticket!], stateDir, 15_000);
  });

  it('the launcher SIGKILLed mid-job: its memserver goes with it, and every host tears its VM clones and memtap down by itself', async function () {
    const job = cluster.slurm('salloc', ['-N', '2', ...SFMPIRUN_ARGV, '--provider', 'vm', '-np', '4', 'sh', '-c', 'echo up; exec sleep 120']);
    let out = '';
    job.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    while ((out.match(/^up$/gm) ?? []).length < 4 && job.exitCode === null) await new Promise((r) => setTimeout(r, 200));
    // sfmpirun is salloc's child; its record here names the ticket.
    const children = readFileSync(`/proc/${job.pid}/task/${job.pid}/children`, 'utf8').trim().split(/\s+/);
    const launcher = children.find((p) => readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('sfmpirun'));
    expect(launcher, 'the sfmpirun process').to.be.a('string');
    const ticket = readdirSync(join(stateDir, 'tickets')).find((f) => /^[0-9a-f]{6}\.json$/.test(f))?.slice(0, 6);
    expect(ticket).to.match(/^[0-9a-f]{6}$/);
    process.kill(Number(launcher), 'SIGKILL');
    await job;
    await assertNothingLeft(cluster.rec, [ticket!], stateDir, 20_000);
    const servers = execFileSync('sh', ['-c', `pgrep -af '[m]emserver .*--listen ${cluster.rec.gateway}:' || true`], { encoding: 'utf8' }).trim();
    expect(servers, 'a memserver of the job still runs').to.equal('');
  });

  it('the memserver killed mid-job: the job fails with one line naming the lost memory, and nothing is left on any host', async function () {
    const file = join(cluster.work, 'killed.json');
    const job = cluster.slurm('salloc', ['-N', '2', ...SFMPIRUN_ARGV, '--provider', 'vm', '--report', file, '-np', '4', 'sh', '-c', 'echo up; exec sleep 120']);
    let out = '';
    job.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    while ((out.match(/^up$/gm) ?? []).length < 4) {
      if (job.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    // The memserver itself (not the lifeline that runs it).
    const pattern = `^[^ ]*/memserver .*--listen ${cluster.rec.gateway}:`;
    expect(execFileSync('sh', ['-c', `pgrep -f '${pattern}' | wc -l`], { encoding: 'utf8' }).trim(), 'the job\'s memserver').to.equal('1');
    execFileSync('sh', ['-c', `pkill -KILL -f '${pattern}'`]);
    const r = await job;
    expect(r.exitCode, r.stderr).to.not.equal(0);
    if (process.env.SNOWFLOCK_TEST_VERBOSE) console.log(r.stderr);
    // One line says what was lost: a clone host's memtap (naming its host) or this host's memserver.
    expect(r.stderr).to.match(/lost their memory: .*memserver|memory of ticket \w+'s clones is lost/);
    const rep = JSON.parse(readFileSync(file, 'utf8')) as JobReport;
    await assertNothingLeft(cluster.rec, [rep.ticket!], stateDir);
  });
});
