/**
 * sfmpirun inside a real Slurm allocation of a simulated cluster (Debian's slurmctld, slurmd and
 * munge; src/hosts/simulated.ts): it reads the allocation, starts one agent per other node as a
 * job step (srun --overlap), spreads the clones over the nodes, and the ranks talk across hosts
 * over the ticket's VXLAN network. MPICH through our PMI-1 server on the launcher's gateway, Open
 * MPI through one sf-pmix per host with fences relayed by the launcher. Nothing is left on any host.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import type { JobReport } from '../../launcher/job/report.js';
import { assertNothingLeft, onHost, SFMPIRUN_ARGV, useHostsSettings, useSimCluster } from '../helpers/hosts.js';
import { program } from '../helpers/programs.js';

const { stateDir } = useHostsSettings();
const SFMPIRUN = SFMPIRUN_ARGV.join(' ');

describe('hosts: sfmpirun in a Slurm allocation of simulated hosts', function () {
  this.timeout(600_000);
  const cluster = useSimCluster({
    hosts: 3,
    tag: 'hs',
    programs: [['ring', 'mpich'], ['ring', 'openmpi']],
    // Each host's /run says which host it is, so that a rank can tell where its clone runs
    // (clones see their host's files).
    afterUp: async (rec) => {
      for (const h of rec.hosts) await onHost(h, ['sh', '-c', `echo ${h.name} > /run/sfho-host`]);
    },
  });

  const report = (name: string): JobReport => JSON.parse(readFileSync(join(cluster.work, name), 'utf8')) as JobReport;

  it('an sbatch -N 3 script runs sfmpirun -np 12 ./ring (MPICH) on clones spread over the 3 hosts', async function () {
    writeFileSync(
      join(cluster.work, 'ring.sh'),
      [
        '#!/bin/sh',
        `${SFMPIRUN} --report ${cluster.work}/ring.json -np 12 ${program('ring', 'mpich')}`,
        'echo "ring status $?"',
        // Where each rank's clone is, as the rank sees it: its clone, its host's /run, its MTU.
        `${SFMPIRUN} --report ${cluster.work}/where.json -np 12 sh -c 'echo "where $PMI_RANK $(hostname) $(cat /run/sfho-host) $(cat /sys/class/net/eth0/mtu)"'`,
        'echo "where status $?"',
      ].join('\n') + '\n',
      { mode: 0o755 },
    );
    const r = await cluster.slurm('sbatch', ['-N', '3', '--wait', '-o', join(cluster.work, 'ring-%j.out'), join(cluster.work, 'ring.sh')]);
    expect(r.exitCode, r.stderr).to.equal(0);
    const out = readFileSync(join(cluster.work, `ring-${/Submitted batch job (\d+)/.exec(r.stdout)![1]}.out`), 'utf8');
    expect(out, out).to.include('ring token 24 after 2 laps of 12 ranks');
    expect(out).to.include('ring status 0');
    expect(out).to.include('where status 0');

    const ring = report('ring.json');
    expect(ring.exitCode).to.equal(0);
    const hosts = cluster.rec.hosts.map((h) => h.name);
    // 12 clones of one rank each over 3 nodes: 4 per node, in order.
    expect(ring.clones.map((c) => c.host)).to.deep.equal(hosts.flatMap((h) => [h, h, h, h]));
    expect(ring.ranks.map((x) => ring.clones[x.clone]!.host)).to.deep.equal(hosts.flatMap((h) => [h, h, h, h]));
    expect(ring.ranks.every((x) => x.contacted?.includes('pmi'))).to.equal(true);

    const where = report('where.json');
    const lines = out.split('\n').filter((l) => l.startsWith('where ') && l.split(' ').length === 5);
    expect(lines).to.have.length(12);
    for (const l of lines) {
      const [, rank, clone, host, mtu] = l.split(' ');
      const c = where.clones[where.ranks.find((x) => x.rank === Number(rank))!.clone]!;
      expect(clone).to.equal(c.hostname);
      expect(host, `rank ${rank}`).to.equal(c.host);
      expect(mtu).to.equal('1450');
    }
    await assertNothingLeft(cluster.rec, [ring.ticket!, where.ticket!], stateDir);
  });

  it('salloc -N 2 runs sfmpirun with an Open MPI program through one PMIx server per host', async function () {
    const r = await cluster.slurm('salloc', ['-N', '2', ...SFMPIRUN_ARGV, '--report', join(cluster.work, 'ompi.json'), '-np', '4', program('ring', 'openmpi')]);
    expect(r.exitCode, r.stderr).to.equal(0);
    expect(r.stdout).to.include('ring token 8 after 2 laps of 4 ranks');
    const rep = report('ompi.json');
    // salloc's shell runs here, on no node of the allocation: every clone is on a node.
    expect(rep.clones.map((c) => c.host)).to.deep.equal([cluster.rec.hosts[0]!.name, cluster.rec.hosts[0]!.name, cluster.rec.hosts[1]!.name, cluster.rec.hosts[1]!.name]);
    expect(rep.ranks.every((x) => x.contacted?.includes('pmix') && x.finalized)).to.equal(true);
    // One sf-pmix per host, each on that host's own address on the ticket's network.
    const uris = rep.processManagers!.pmix.map((s) => /tcp4:\/\/([\d.]+):/.exec(s.uri)![1]);
    expect(uris).to.have.length(2);
    expect(new Set(uris).size).to.equal(2);
    expect(uris).to.not.include(rep.processManagers!.pmi!.split(':')[0]);
    await assertNothingLeft(cluster.rec, [rep.ticket!], stateDir);
  });
});
