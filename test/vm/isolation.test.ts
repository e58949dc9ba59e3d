/**
 * Isolation probes (issue 8, harness 9) from a VM clone: the same scene as the netns test
 * (test/system/isolation.test.ts, test/helpers/probes.ts), but the prober and its sibling are QEMU
 * guests on taps of ticket A's bridge, with their own kernel; "another ticket" is a netns ticket.
 * TCP, UDP and ICMP to B's clone and gateway, every host address on ports not opened for A (real
 * listeners behind them), a port only B opened, A's open port on other addresses, broadcast,
 * multicast, addresses outside the machine: all counted, all must fail; the controls (A's open
 * port, the sibling VM) get through; a forged source posing as B's clone gets no reply path in.
 */
import { rmSync } from 'node:fs';
import { expect } from 'chai';
import { Engine } from '../../src/engine.js';
import { VmProvider } from '../../src/providers/vm/provider.js';
import type { Ticket } from '../../src/ticket/ticket.js';
import { assertNoLeaks } from '../helpers/leaks.js';
import { buildNative } from '../helpers/native.js';
import { IsolationScene, netprobe, type ProbeTicket } from '../helpers/probes.js';
import { leftovers } from '../helpers/vm.js';
import { settings } from '../../src/common/config.js';

const STATE_A = `/tmp/sfch-iso-vm-a-${process.pid}`;
const STATE_B = `/tmp/sfch-iso-vm-b-${process.pid}`;
const POOL_A = '10.238.192.0/18';
const POOL_B = '10.239.128.0/17';

describe('isolation probes from a VM clone', function () {
  this.timeout(600_000);
  const engineA = new Engine({ stateDir: STATE_A, pool: POOL_A });
  const engineB = new Engine({ stateDir: STATE_B, pool: POOL_B });
  const tickets: Array<{ engine: Engine; ticket: Ticket; stateDir: string }> = [];
  let scene: IsolationScene | null = null;

  before(async () => {
    const why = await new VmProvider(settings().nativeDir).unavailable();
    if (why) throw new Error(`the vm tests need QEMU: ${why}`);
    buildNative();
    const probe = netprobe();
    const a = await engineA.requestTicket(2, { provider: 'vm' });
    tickets.push({ engine: engineA, ticket: a, stateDir: STATE_A });
    // The probe goes into the guest image (with its libraries); the template is cached by content.
    const clonesA = await engineA.createClones(a, await engineA.checkpoint(a, { programs: [probe], mpi: 'none' }));
    const b = await engineB.requestTicket(1, { provider: 'netns' });
    tickets.push({ engine: engineB, ticket: b, stateDir: STATE_B });
    const clonesB = await engineB.createClones(b, await engineB.checkpoint(b, {}));
    const ta: ProbeTicket = { engine: engineA, ticket: a, clones: clonesA };
    const tb: ProbeTicket = { engine: engineB, ticket: b, clones: clonesB };
    scene = await IsolationScene.start(ta, tb, probe);
  });

  after(async () => {
    await scene?.close();
    for (const t of tickets) await t.engine.kill(t.ticket).catch(() => undefined);
    for (const t of tickets) {
      expect(leftovers(t.ticket.id), `left by ticket ${t.ticket.id}`).to.deep.equal([]);
      await assertNoLeaks([t.ticket.id], t.stateDir);
    }
    rmSync(STATE_A, { recursive: true, force: true });
    rmSync(STATE_B, { recursive: true, force: true });
  });

  it('refuses or drops every TCP, UDP and ICMP attempt to other tickets, host addresses and the outside; lets the controls through', async () => {
    // The guest's busybox cannot pin IPv6 neighbours: its IPv6 probes fail for want of a route, as a
    // clone's do without that setup. Fewer probes at once: each is a process in an emulated guest.
    const tally = await scene!.network({ routeIpv6: false, parallel: 4, timeoutMs: 1000 });
    console.log(`      ${tally}`);
  });

  it("lets no forged source in: a VM posing as another ticket's clone gets no reply path into the host", async () => {
    await scene!.forgery();
  });
});
