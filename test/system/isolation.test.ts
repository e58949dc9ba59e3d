/**
 * Isolation probes (issue 8, harness 9) on namespace clones. From a clone of ticket A, TCP, UDP and
 * ICMP to: another ticket's (B's) clone and gateway; every address of every host interface
 * (loopback, the uplink, A's and B's bridges, other people's bridges) on ports not opened for A,
 * each with a real host listener behind it so that a missed rule would connect; a port only B
 * opened; A's open port on any address but A's gateway; addresses outside the machine. Every attempt
 * is counted and must fail; the host listeners must see nobody but the control; no packet of A may
 * leave by another device than A's bridge. Controls that must get through: A's open port on its
 * gateway, and a sibling clone over TCP, UDP and ICMP. Then forged sources: A's clone poses as B's
 * clone to slip into the host's flow with it (refused since firewall.ts drops foreign sources), and
 * as its own sibling (the control: that forgery gets in, so the refusal is real).
 *
 * Then real MPI ranks (sfmpirun from dist/, 2 clones x 2 ranks): ranks of one clone share an IPC
 * namespace and a /dev/shm, ranks of different clones share neither, and the host's /dev/shm sees
 * none of their files.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { Engine } from '../../src/engine.js';
import { projectRoot } from '../../src/common/paths.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { buildNative } from '../helpers/native.js';
import { IsolationScene, netprobe, type ProbeTicket } from '../helpers/probes.js';
import { program } from '../helpers/programs.js';

// A: this ticket; B: "another ticket", another user's, with its own state and pool.
const POOL_A = '10.238.128.0/18';
const POOL_B = '10.239.0.0/17';
const STATE_A = `/tmp/sfch-iso-a-${process.pid}`;
const STATE_B = `/tmp/sfch-iso-b-${process.pid}`;

describe('isolation probes from a netns clone', function () {
  this.timeout(180_000);
  const engineA = new Engine({ stateDir: STATE_A, pool: POOL_A });
  const engineB = new Engine({ stateDir: STATE_B, pool: POOL_B });
  const tickets: Array<{ engine: Engine; ticket: Ticket; stateDir: string }> = [];
  let scene: IsolationScene | null = null;

  async function ticketOf(engine: Engine, stateDir: string, n: number): Promise<ProbeTicket> {
    const ticket = await engine.requestTicket(n, { provider: 'netns' });
    tickets.push({ engine, ticket, stateDir });
    const clones = await engine.createClones(ticket, await engine.checkpoint(ticket, {}));
    return { engine, ticket, clones };
  }

  before(async () => {
    buildNative();
    const probe = netprobe();
    scene = await IsolationScene.start(await ticketOf(engineA, STATE_A, 2), await ticketOf(engineB, STATE_B, 1), probe);
  });
  after(async () => {
    await scene?.close();
    for (const t of tickets) await t.engine.kill(t.ticket).catch(() => undefined);
    for (const t of tickets) await assertNoLeaks([t.ticket.id], t.stateDir);
    rmSync(STATE_A, { recursive: true, force: true });
    rmSync(STATE_B, { recursive: true, force: true });
  });

  it('refuses or drops every TCP, UDP and ICMP attempt to other tickets, host addresses and the outside; lets the controls through', async () => {
    const tally = await scene!.network({ routeIpv6: true, parallel: 8, timeoutMs: 700 });
    console.log(`      ${tally}`);
  });

  it("lets no forged source in: a clone posing as another ticket's clone gets no reply path into the host", async () => {
    await scene!.forgery();
  });

  it('gives every clone its own IPC namespace and /dev/shm: real MPI ranks of one clone share them, of two clones do not', async () => {
    const tag = `sfch-shm-${process.pid}`;
    const stateDir = `/tmp/sfch-iso-mpi-${process.pid}`;
    mkdirSync(stateDir, { recursive: true });
    const sfmpirun = join(projectRoot(), 'dist/launcher/bin/sfmpirun.js');
    if (!existsSync(sfmpirun)) throw new Error(`${sfmpirun} is missing: run npm run build first`);
    try {
      const r = spawnSync(process.execPath, [sfmpirun, '-np', '4', '-ppn', '2', program('shmprobe'), tag], {
        encoding: 'utf8',
        env: { ...process.env, SNOWFLOCK_STATE_DIR: stateDir, SNOWFLOCK_POOL: POOL_A },
        timeout: 120_000,
      });
      expect(r.status, r.stderr).to.equal(0);
      const ranks = r.stdout
        .split('\n')
        .map((l) => /^rank (\d+) host (\S+) ipc (\S+) sees (\S*)$/.exec(l))
        .filter((m): m is RegExpExecArray => m !== null)
        .map((m) => ({ rank: Number(m[1]), host: m[2]!, ipc: m[3]!, sees: m[4]!.split(',').filter(Boolean).sort() }))
        .sort((x, y) => x.rank - y.rank);
      expect(ranks.map((x) => x.rank), r.stdout).to.deep.equal([0, 1, 2, 3]);
      // Ranks 0,1 on the first clone, 2,3 on the second (block placement, -ppn 2).
      const clone = (rank: number) => Math.floor(rank / 2);
      for (const x of ranks) {
        const mates = ranks.filter((y) => clone(y.rank) === clone(x.rank));
        expect(x.sees, `rank ${x.rank} sees the /dev/shm files of its clone only`).to.deep.equal(mates.map((y) => `${tag}-r${y.rank}`).sort());
        for (const y of ranks) {
          if (clone(y.rank) === clone(x.rank)) expect(y.ipc, `ranks ${x.rank} and ${y.rank} share a clone`).to.equal(x.ipc);
          else expect(y.ipc, `ranks ${x.rank} and ${y.rank} are on different clones`).to.not.equal(x.ipc);
        }
      }
      const hostIpc = spawnSync('readlink', ['/proc/self/ns/ipc'], { encoding: 'utf8' }).stdout.trim();
      expect(ranks.map((x) => x.ipc)).to.not.include(hostIpc);
      // The ranks leave their files: in a private /dev/shm they went with the clone.
      expect(readdirSync('/dev/shm').filter((f) => f.startsWith(tag))).to.deep.equal([]);
      expect(readdirSync(stateDir), 'the job left state behind').to.deep.equal([]);
    } finally {
      for (const f of readdirSync('/dev/shm').filter((n) => n.startsWith(tag))) rmSync(join('/dev/shm', f), { force: true });
      rmSync(stateDir, { recursive: true, force: true });
    }
  });
});
