/**
 * The vm provider on real QEMU (TCG here): one guest image and template for the whole file,
 * clones with distinct identities, isolation between tickets, shared memory, process semantics
 * through the guest agent, a clone killed mid-job, cold boot, and nothing left afterwards.
 */
import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { settings } from '../../src/common/config.js';
import type { Engine } from '../../src/engine.js';
import type { Checkpoint } from '../../src/providers/checkpoint.js';
import type { Clone } from '../../src/providers/clone.js';
import { VmClone } from '../../src/providers/vm/clone.js';
import { VmProvider, type VmCheckpointDetail } from '../../src/providers/vm/provider.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import { leftovers, qemuPids, vmEngine } from '../helpers/vm.js';
import { collect, type Collected } from '../helpers/probes.js';
const ENV = { PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin', HOME: '/root' };

type Ran = Collected;

const sh = (c: Clone, script: string) => collect(c.spawn(['sh', '-c', script], { env: ENV, cwd: '/' }));

function pss(pid: number): number {
  const m = /^Pss:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  return Number(m![1]) * 1024;
}

describe('vm provider (QEMU)', function () {
  this.timeout(300_000);
  let stateDir: string;
  let engine: Engine;
  const tickets: Ticket[] = [];

  async function ticketWith(count: number, coldBoot = false): Promise<{ t: Ticket; clones: Clone[] }> {
    const t = await engine.requestTicket(count, { provider: 'vm' });
    tickets.push(t);
    const checkpoint = await engine.checkpoint(t, { programs: [], mpi: 'none', coldBoot });
    const clones = await engine.createClones(t, checkpoint);
    return { t, clones };
  }

  async function finish(t: Ticket): Promise<void> {
    const report = await engine.kill(t);
    tickets.splice(tickets.indexOf(t), 1);
    expect(report.failed, 'teardown failures').to.deep.equal([]);
    expect(leftovers(t.id), 'left on the host').to.deep.equal([]);
  }

  let template: NonNullable<VmCheckpointDetail['template']>;

  before(async function () {
    const why = await new VmProvider(settings().nativeDir).unavailable();
    if (why) throw new Error(`the vm tests need QEMU: ${why}`);
    stateDir = mkdtempSync(join(tmpdir(), 'sf-vmtest-'));
    engine = vmEngine(stateDir);
    const t = await engine.requestTicket(1, { provider: 'vm' });
    const checkpoint = (await engine.checkpoint(t, { programs: [], mpi: 'none' })) as Checkpoint<VmCheckpointDetail>;
    await engine.kill(t);
    template = checkpoint.detail.template!;
  });

  after(async () => {
    for (const t of [...tickets]) await engine.kill(t).catch(() => undefined);
    rmSync(stateDir, { recursive: true, force: true });
  });

  it('checkpoints a template: device state apart, RAM in a file under /dev/shm', () => {
    expect(template.ram).to.match(/^\/dev\/shm\//);
    expect(statSync(template.ram).size).to.equal(template.ramMiB * 1048576);
    // x-ignore-shared: the state holds devices, not RAM.
    expect(statSync(template.state).size).to.be.below(1 << 20);
  });

  it('makes 4 clones with distinct hostname, address, MAC and random streams, sharing memory', async () => {
    const { t, clones } = await ticketWith(4);
    const seen = await Promise.all(
      clones.map((c) => sh(c, 'hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show eth0; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \\n"; echo')),
    );
    for (const [i, r] of seen.entries()) {
      expect(r.code, r.err).to.equal(0);
      const [host, mac, addr, rnd] = r.out.trim().split('\n');
      expect(host).to.equal(clones[i]!.hostname);
      expect(mac).to.equal(clones[i]!.mac);
      expect(addr).to.include(`${clones[i]!.address}/24`);
      expect(rnd).to.match(/^[0-9a-f]{32}$/);
    }
    const randoms = seen.map((r) => r.out.trim().split('\n')[3]);
    expect(new Set(randoms).size).to.equal(4);
    expect(new Set(seen.map((r) => r.out.split('\n')[1])).size).to.equal(4);

    // Copy on write: the clones' summed PSS is far below 4 x guest RAM.
    const pids = qemuPids(stateDir, t.id);
    expect(pids).to.have.length(4);
    const total = pids.map(pss).reduce((a, b) => a + b, 0);
    expect(total).to.be.below(0.5 * 4 * template.ramMiB * 1048576);

    // Siblings reach each other, by address and by hostname, over ICMP and TCP.
    const ping = await sh(clones[0]!, `for a in ${clones.slice(1).map((c) => c.address).join(' ')} ${clones[3]!.hostname}; do ping -c1 -W3 $a >/dev/null || echo unreachable $a; done`);
    expect(ping.out + ping.err).to.equal('');
    const server = collect(clones[2]!.spawn(['nc', '-l', '-p', '5000'], { env: ENV }));
    let sent: Ran | null = null;
    for (let i = 0; i < 20 && sent?.code !== 0; i++) sent = await sh(clones[1]!, `echo over-tcp | nc -w 3 ${clones[2]!.address} 5000`);
    expect((await server).out).to.equal('over-tcp\n');

    // Another ticket's clone does not.
    const other = await ticketWith(1);
    const cross = await sh(other.clones[0]!, `ping -c1 -W2 ${clones[1]!.address} >/dev/null && echo reached`);
    expect(cross.out).to.equal('');
    await finish(other.t);
    await finish(t);
  });

  it('runs processes with environment, working directory, stdin, exit codes and signals', async () => {
    const { t, clones } = await ticketWith(1);
    const c = clones[0]!;
    const env = await collect(c.spawn(['sh', '-c', 'echo $GREETING; pwd; echo oops >&2; exit 3'], { env: { ...ENV, GREETING: 'hi' }, cwd: '/tmp' }));
    expect(env).to.include({ code: 3, signal: null, out: 'hi\n/tmp\n', err: 'oops\n' });

    const cat = c.spawn(['cat'], { env: ENV, stdin: 'pipe' });
    const done = collect(cat);
    cat.stdin!.write('line one\n');
    cat.stdin!.end('line two\n');
    expect(await done).to.include({ code: 0, out: 'line one\nline two\n' });

    const sleeper = c.spawn(['sleep', '100'], { env: ENV });
    const slept = collect(sleeper);
    await new Promise((r) => setTimeout(r, 200));
    sleeper.kill('SIGTERM');
    expect(await slept).to.include({ code: null, signal: 'SIGTERM' });

    const missing = await collect(c.spawn(['no-such-program'], { env: ENV }));
    expect(missing.code).to.equal(127);
    expect(missing.err).to.match(/no-such-program/);
    await finish(t);
  });

  it('lets the user in over SSH, with the same process semantics', async () => {
    const { t, clones } = await ticketWith(2);
    const c = clones[1] as VmClone;
    const r = await collect(c.sshSpawn(['sh', '-c', 'hostname; echo "$GREETING"; pwd; exit 4'], { env: { ...ENV, GREETING: "it's me" }, cwd: '/tmp' }));
    expect(r).to.include({ code: 4, out: `${c.hostname}\nit's me\n/tmp\n` });
    const cat = c.sshSpawn(['cat'], { env: ENV, stdin: 'pipe' });
    const done = collect(cat);
    cat.stdin!.end('through ssh\n');
    expect(await done).to.include({ code: 0, out: 'through ssh\n' });
    // A process that exits while its stdin is still open ends all the same.
    const early = c.sshSpawn(['sh', '-c', 'exit 5'], { env: ENV, stdin: 'pipe' });
    expect((await collect(early)).code).to.equal(5);
    early.stdin!.end();
    // Agent and SSH side by side on the same clone.
    expect((await collect(c.agentSpawn(['hostname'], { env: ENV }))).out).to.equal(`${c.hostname}\n`);
    await finish(t);
  });

  it('reports a clone killed mid-job and tears down cleanly', async () => {
    const { t, clones } = await ticketWith(2);
    const p = collect(clones[1]!.spawn(['sleep', '100'], { env: ENV }));
    // Which QEMU is clone 1: the one whose command line names its tap.
    const pids = qemuPids(stateDir, t.id);
    expect(pids, 'QEMUs recorded').to.have.length(2);
    const victim = pids.find((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(`sf${t.id}t1`))!;
    process.kill(victim, 'SIGKILL');
    const r = await p;
    expect(r.signal).to.equal('SIGKILL');
    expect(r.err).to.match(new RegExp(`${clones[1]!.hostname} stopped`));
    expect((await sh(clones[0]!, 'echo alive')).out).to.equal('alive\n');
    await finish(t);
  });

  it('boots clones cold from the image with --cold-boot', async () => {
    const { t, clones } = await ticketWith(1, true);
    const r = await sh(clones[0]!, 'hostname');
    expect(r.out.trim()).to.equal(clones[0]!.hostname);
    await finish(t);
  });
});
