/**
 * Where a job's clones go (launcher/job/hosts.ts, placement.ts placeClones) and the Slurm
 * allocation they come from (src/hosts/slurm-allocation.ts), as pure functions of the options and
 * the environment: nothing is started.
 */
import { hostname } from 'node:os';
import { expect } from 'chai';
import { planHosts } from '../../launcher/job/hosts.js';
import { placeClones } from '../../launcher/job/placement.js';
import { parseMpirunArgs } from '../../launcher/mpirun/options.js';
import { planJob } from '../../launcher/job/plan.js';
import { expandCounts, expandHostlist, readAllocation } from '../../src/hosts/slurm-allocation.js';
import { hostOffset, maxClonesOver } from '../../src/hosts/coordinator.js';

const alloc = (nodes: string, cpus: string, extra: Record<string, string> = {}) => ({ SLURM_JOB_ID: '7', SLURM_JOB_NODELIST: nodes, SLURM_JOB_CPUS_PER_NODE: cpus, ...extra });

describe('hosts: the Slurm allocation from the environment', function () {
  it('expands hostlists with ranges, padding and several groups', function () {
    expect(expandHostlist('sim-[0-2]')).to.deep.equal(['sim-0', 'sim-1', 'sim-2']);
    expect(expandHostlist('n[01-03,07],gpu5')).to.deep.equal(['n01', 'n02', 'n03', 'n07', 'gpu5']);
    expect(expandHostlist('r[1-2]c[3-4]')).to.deep.equal(['r1c3', 'r1c4', 'r2c3', 'r2c4']);
    expect(() => expandHostlist('n[1-')).to.throw(/unclosed/);
  });

  it('expands CPU counts and checks them against the nodes', function () {
    expect(expandCounts('2(x3),4', 4)).to.deep.equal([2, 2, 2, 4]);
    expect(() => expandCounts('2(x3)', 4)).to.throw(/3 counts for 4 nodes/);
  });

  it('is null outside an allocation and finds this node inside one', function () {
    expect(readAllocation({}, 'h')).to.equal(null);
    expect(readAllocation(alloc('a,b', '2(x2)', { SLURMD_NODENAME: 'b' }), 'x')).to.deep.equal({ jobId: '7', nodes: [{ name: 'a', cpus: 2 }, { name: 'b', cpus: 2 }], here: 'b' });
    expect(readAllocation(alloc('a,b', '1,3'), 'b.cluster')!.here).to.equal('b');
    expect(readAllocation(alloc('a,b', '1,3'), 'login')!.here).to.equal(null);
  });
});

describe('hosts: placing clones over hosts', function () {
  it('fills the hosts in order while the clones fit their CPUs', function () {
    expect(placeClones(4, [2, 2, 2], 1, 'block')).to.deep.equal([0, 0, 1, 1]);
    expect(placeClones(3, [4, 4], 2, 'block')).to.deep.equal([0, 0, 1]);
  });

  it('beyond that, shares the clones in proportion to the CPUs', function () {
    expect(placeClones(12, [1, 1, 1], 1, 'block')).to.deep.equal([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
    expect(placeClones(6, [1, 2], 1, 'block')).to.deep.equal([0, 0, 1, 1, 1, 1]);
  });

  it('--map-by node deals the clones round-robin over the hosts', function () {
    expect(placeClones(6, [2, 2, 2], 1, 'cyclic')).to.deep.equal([0, 1, 2, 0, 1, 2]);
    expect(placeClones(5, [1, 2], 1, 'cyclic')).to.deep.equal([0, 1, 0, 1, 1]);
  });

  it('host addresses leave the clones theirs', function () {
    expect([0, 7, 8, 9].map(hostOffset)).to.deep.equal([2, 9, 254, 253]);
    expect(maxClonesOver(9)).to.equal(244);
    expect(maxClonesOver(11)).to.equal(242);
  });
});

describe('hosts: where a job goes', function () {
  const job = (argv: string[]) => {
    const parsed = parseMpirunArgs(argv, {}, process.cwd());
    if (parsed.kind !== 'job') throw new Error('not a job');
    return parsed.job;
  };

  it('stays on this host outside an allocation, and in a one-node allocation of this host', function () {
    expect(planHosts(job(['-np', '4', 'p']), {}, 4, 1).source).to.equal('here');
    expect(planHosts(job(['-np', '4', 'p']), alloc('x', '4', { SLURMD_NODENAME: 'x' }), 4, 1).source).to.equal('here');
    // -hosts without --real-hosts keeps its meaning: the shape of the clones, on this host.
    expect(planHosts(job(['-hosts', 'a:2,b:2', 'p']), {}, 2, 2).source).to.equal('here');
  });

  it('spreads over the nodes of an allocation, leaving out nodes without clones', function () {
    const p = planHosts(job(['-np', '12', 'p']), alloc('n[0-2]', '2(x3)', { SLURMD_NODENAME: 'n0' }), 12, 1);
    expect(p).to.deep.include({ source: 'slurm', allocation: '7' });
    expect(p.hosts).to.deep.equal([{ name: 'n0', cpus: 2, local: true }, { name: 'n1', cpus: 2, local: false }, { name: 'n2', cpus: 2, local: false }]);
    expect(p.cloneHosts).to.deep.equal([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
    const small = planHosts(job(['-np', '3', 'p']), alloc('n[0-2]', '2(x3)'), 3, 1);
    expect(small.hosts.map((h) => h.name)).to.deep.equal(['n0', 'n1']);
    expect(small.cloneHosts).to.deep.equal([0, 0, 1]);
    // Everything fits on this node: no agent anywhere.
    expect(planHosts(job(['-np', '2', 'p']), alloc('n[0-2]', '2(x3)', { SLURMD_NODENAME: 'n0' }), 2, 1).source).to.equal('here');
  });

  it('--real-hosts puts one clone on each named host, this one without SSH', function () {
    const p = planHosts(job(['--real-hosts', '-hosts', `a:2,${hostname()}:2`, '-np', '4', 'p']), {}, 2, 2);
    expect(p.source).to.equal('ssh');
    expect(p.hosts).to.deep.equal([{ name: 'a', cpus: 2, local: false }, { name: hostname(), cpus: 2, local: true }]);
    expect(p.cloneHosts).to.deep.equal([0, 1]);
    expect(() => planHosts(job(['--real-hosts', '-np', '2', 'p']), {}, 2, 1)).to.throw(/--real-hosts needs the hosts/);
  });

  it('refuses --keep over hosts before anything starts; VM clones over hosts are planned (memory on demand)', async function () {
    const env = { ...process.env, ...alloc('n[0-1]', '2(x2)') };
    const vm = await planJob(job(['--provider', 'vm', '-np', '4', '/bin/true']), env);
    expect(vm.hosts.source).to.equal('slurm');
    expect(vm.hosts.hosts.map((h) => h.name)).to.deep.equal(['n0', 'n1']);
    await planJob(job(['--keep', '-np', '4', '/bin/true']), env).then(
      () => expect.fail('accepted'),
      (e: Error) => expect(e.message).to.match(/^--keep: a job over 2 hosts/),
    );
  });
});
