/**
 * The done-when of mcdist (issue 12): MPI jobs on VM clones across 4 simulated hosts of a real
 * Slurm allocation (src/hosts/simulated.ts) get their memory by multicast by default, and by
 * unicast with --memory-transport unicast. salloc's shell runs here, on no node, so this host is
 * the parent's: its memserver pushes the template (its recorded working set, once earlier jobs of
 * it recorded one) to the ticket's group on the cluster's underlay bridge (which snoops IGMP, as a
 * switch does), and every node's memtap takes the push in, faults going by unicast beside it and
 * to the group for the other hosts. The parent's bytes against the hosts' show the difference; the rings
 * show the memory is right; nothing is left on any host.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import type { JobReport } from '../../launcher/job/report.js';
import type { MemoryFigures } from '../../src/memory/report.js';
import { assertNothingLeft, SFMPIRUN_ARGV, useHostsSettings, useSimCluster } from '../helpers/hosts.js';
import { program } from '../helpers/programs.js';

const { stateDir } = useHostsSettings();
const SFMPIRUN = SFMPIRUN_ARGV.join(' ');

/** What the parent sent, over what the clone hosts received, in all. */
function ratio(mem: MemoryFigures): number {
  return mem.servers[0]!.bytesSent / mem.hosts.reduce((s, h) => s + h.bytesReceived, 0);
}

describe('hosts: VM clones over 4 hosts get their memory by multicast (mcdist)', function () {
  this.timeout(600_000);
  // The job's working directory (which the clones mount) is the cluster's, outside /tmp.
  const cluster = useSimCluster({ hosts: 4, tag: 'hc', programs: [['ring', 'mpich']] });
  const salloc = (args: string[]) => cluster.slurm('salloc', args);
  const ring = (file: string, ...extra: string[]) => salloc(['-N', '4', ...SFMPIRUN_ARGV, '--provider', 'vm', '--report', file, ...extra, '-np', '4', program('ring', 'mpich')]);
  const report = (file: string) => JSON.parse(readFileSync(file, 'utf8')) as JobReport;

  it('salloc -N 4: the MPICH ring on a VM clone per host; the memserver pushes the template once to the ticket\'s group, every host takes it in', async function () {
    const file = join(cluster.work, 'mc.json');
    const r = await ring(file);
    expect(r.exitCode, r.stderr).to.equal(0);
    expect(r.stdout, r.stderr).to.include('ring token 8 after 2 laps of 4 ranks');
    const rep = report(file);
    expect(rep.clones.map((c) => c.host)).to.deep.equal(cluster.rec.hosts.map((h) => h.name));
    const mem = rep.memory!;
    if (process.env.SNOWFLOCK_TEST_VERBOSE) console.log(JSON.stringify(mem, null, 1), r.stderr);
    expect(mem.hosts.map((h) => h.host).sort()).to.deep.equal(cluster.rec.hosts.map((h) => h.name).sort());
    const server = mem.servers[0]!;
    expect(server.multicast, 'the memserver pushed to a group').to.not.equal(null);
    expect(server.multicast!.group).to.match(/^239\.19[2-5]\.\d+\.\d+$/);
    expect(server.multicast!.receivers, 'every clone host joined').to.equal(4);
    for (const h of mem.hosts) {
      expect(h.failed, h.host).to.equal(null);
      expect(h.pushPages, `${h.host}: pages from the push`).to.be.greaterThan(0);
      expect(h.multicastBytes, `${h.host}: bytes from the group`).to.be.greaterThan(0);
      expect(h.bytesReceived).to.be.at.least(h.pagesFetched * 4096);
      // No datagram refused: another ticket's, damaged or forged.
      expect(h.multicastRefused, h.host).to.equal(0);
    }
    // Each granule crossed the parent's link about once for all four hosts: unicast sends each
    // host its own, at least as much as they all received.
    expect(ratio(mem), 'bytes the parent sent over bytes the hosts received').to.be.below(0.75);
    // The push never stopped short (memtap would have said so and gone on by unicast).
    expect(r.stderr).to.not.match(/multicast from .* stopped/);
    await assertNothingLeft(cluster.rec, [rep.ticket!], stateDir);
  });

  it('--memory-transport unicast: the same ring, each host fetching its own pages; no group at all', async function () {
    const file = join(cluster.work, 'uc.json');
    const r = await ring(file, '--memory-transport', 'unicast');
    expect(r.exitCode, r.stderr).to.equal(0);
    expect(r.stdout, r.stderr).to.include('ring token 8 after 2 laps of 4 ranks');
    const rep = report(file);
    const mem = rep.memory!;
    expect(mem.servers[0]!.multicast).to.equal(null);
    expect(mem.servers[0]!.multicastBytes).to.equal(0);
    for (const h of mem.hosts) {
      expect(h.failed, h.host).to.equal(null);
      expect(h.pushComplete, h.host).to.equal(null);
      expect(h.multicastBytes, h.host).to.equal(0);
      expect(h.pagesFetched, h.host).to.be.greaterThan(0);
    }
    expect(ratio(mem)).to.be.at.least(1);
    await assertNothingLeft(cluster.rec, [rep.ticket!], stateDir);
  });

  it('two tickets at once on the same hosts: each pushes to its own group and port, and neither host took a datagram of the other', async function () {
    const files = [join(cluster.work, 'two-a.json'), join(cluster.work, 'two-b.json')];
    const job = (f: string) => `${SFMPIRUN} --provider vm --report ${f} -np 2 ${program('ring', 'mpich')}`;
    writeFileSync(join(cluster.work, 'two.sh'), `#!/bin/sh\n${job(files[0]!)} & a=$!\n${job(files[1]!)} & b=$!\nwait $a; echo "a $?"\nwait $b; echo "b $?"\n`, { mode: 0o755 });
    const r = await salloc(['-N', '4', join(cluster.work, 'two.sh')]);
    expect(r.exitCode, r.stderr).to.equal(0);
    expect(r.stdout, r.stderr).to.include('a 0');
    expect(r.stdout, r.stderr).to.include('b 0');
    const [a, b] = files.map(report) as [JobReport, JobReport];
    const channel = (x: JobReport) => `${x.memory!.servers[0]!.multicast!.group} ${x.memory!.servers[0]!.address.split(':')[1]}`;
    expect(channel(a)).to.not.equal(channel(b));
    // The two tickets' clones share hosts; each host's memtap of each ticket got its own push only.
    const hostsOf = (x: JobReport) => x.memory!.hosts.map((h) => h.host);
    expect(hostsOf(a).filter((h) => hostsOf(b).includes(h)), 'hosts with memtaps of both tickets').to.not.deep.equal([]);
    for (const x of [a, b]) {
      for (const h of x.memory!.hosts) {
        expect(h.pushPages, `${x.ticket} ${h.host}`).to.be.greaterThan(0);
        expect(h.multicastRefused, `${x.ticket} ${h.host}: datagrams not of its ticket`).to.equal(0);
      }
    }
    await assertNothingLeft(cluster.rec, [a.ticket!, b.ticket!], stateDir);
  });
});
