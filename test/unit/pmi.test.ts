/**
 * The PMI-1 server against raw sockets speaking the wire protocol, well and badly (no MPI, no root).
 * Its run with real MPICH ranks is test/system/pmi-mpich.test.ts.
 */
import { expect } from 'chai';
import { closeServers, RawClient, started } from '../helpers/pmi.js';

describe('PMI-1 server', function () {
  this.timeout(60_000);
  afterEach(closeServers);

  describe('with raw sockets', () => {
    it('answers every PMI-1 command of a well-behaved client', async () => {
      const { srv, port } = await started(1, { universeSize: 3, appnums: [2] });
      const c = await RawClient.open(port);
      expect(await c.initack(0)).to.deep.equal(['cmd=initack', 'cmd=set size=1', 'cmd=set rank=0', 'cmd=set debug=0']);
      expect(await c.ask('cmd=init pmi_version=1 pmi_subversion=1\n')).to.equal('cmd=response_to_init pmi_version=1 pmi_subversion=1 rc=0');
      expect(await c.ask('cmd=get_maxes\n')).to.equal('cmd=maxes kvsname_max=256 keylen_max=64 vallen_max=1024');
      expect(await c.ask('cmd=get_appnum\n')).to.equal('cmd=appnum appnum=2');
      expect(await c.ask('cmd=get_universe_size\n')).to.equal('cmd=universe_size size=3');
      expect(await c.ask('cmd=get_my_kvsname\n')).to.equal(`cmd=my_kvsname kvsname=${srv.kvsname}`);
      expect(await c.ask(`cmd=get kvsname=${srv.kvsname} key=PMI_process_mapping\n`)).to.equal('cmd=get_result rc=0 msg=success value=(vector,(0,1,1))');
      expect(await c.ask(`cmd=put kvsname=${srv.kvsname} key=k1 value=v\\ 1\n`)).to.equal('cmd=put_result rc=0 msg=success');
      expect(await c.ask(`cmd=get kvsname=${srv.kvsname} key=k1\n`)).to.equal('cmd=get_result rc=0 msg=success value=v\\ 1');
      expect(await c.ask(`cmd=get kvsname=${srv.kvsname} key=nope\n`)).to.match(/^cmd=get_result rc=-1 /);
      expect(await c.ask('cmd=get kvsname=other_kvs key=k1\n')).to.match(/^cmd=get_result rc=-1 msg=unknown_kvsname/);
      expect(await c.ask('cmd=publish_name service=svc port=p#1\n')).to.equal('cmd=publish_result rc=0 info=ok msg=success');
      expect(await c.ask('cmd=publish_name service=svc port=p#2\n')).to.match(/^cmd=publish_result rc=-1 /);
      expect(await c.ask('cmd=lookup_name service=svc\n')).to.equal('cmd=lookup_result rc=0 info=ok msg=success port=p#1');
      expect(await c.ask('cmd=unpublish_name service=svc\n')).to.equal('cmd=unpublish_result rc=0 info=ok msg=success');
      expect(await c.ask('cmd=lookup_name service=svc\n')).to.match(/^cmd=lookup_result rc=-1 info=service_not_found/);
      expect(await c.ask('cmd=unpublish_name service=svc\n')).to.match(/^cmd=unpublish_result rc=-1 /);
      expect(await c.ask('cmd=barrier_in\n')).to.equal('cmd=barrier_out');
      const finalized = new Promise<number>((r) => srv.once('finalize', r));
      expect(await c.ask('cmd=finalize\n')).to.equal('cmd=finalize_ack');
      expect(await finalized).to.equal(0);
      const aborted = new Promise<unknown[]>((r) => srv.once('abort', (...a) => r(a)));
      c.send('cmd=abort exitcode=9 message=bad\\ thing\n');
      expect(await aborted).to.deep.equal([0, 9, 'bad thing']);
      c.close();
    });

    it('refuses spawn, in the one-line and the multi-line form, with an error reply', async () => {
      const { port } = await started(1);
      const c = await RawClient.open(port);
      await c.initack(0);
      c.send('mcmd=spawn\nnprocs=2\nexecname=/bin/true\ntotspawns=2\nspawnssofar=1\nargcnt=0\npreput_num=0\ninfo_num=0\nendcmd\n');
      expect(await c.line(300)).to.equal(null); // one reply for the whole spawn, after its last block
      c.send('mcmd=spawn\nnprocs=1\nexecname=/bin/true\ntotspawns=2\nspawnssofar=2\nargcnt=0\npreput_num=0\ninfo_num=0\nendcmd\n');
      expect(await c.line()).to.match(/^cmd=spawn_result rc=-1 msg=MPI_Comm_spawn_is_not_supported/);
      expect(await c.ask('cmd=spawn nprocs=1\n')).to.match(/^cmd=spawn_result rc=-1 /);
      c.close();
    });

    it('survives a stream of random bytes and random commands, then still serves', async () => {
      const { port } = await started(2);
      let seed = 42;
      const random = (n: number): number => {
        seed = (seed * 1103515245 + 12345) % 2 ** 31;
        return seed % n;
      };
      const words = ['cmd=', 'get', 'put', 'barrier_in', 'initack', 'pmiid=', 'key=', 'value=', '=', ' ', '\\', 'mcmd=spawn', 'endcmd', '\r', '\n', '\u0000', 'é'];
      const c = await RawClient.open(port);
      for (let i = 0; i < 300; i++) {
        const bytes = random(2) ? Buffer.from(Array.from({ length: random(200) }, () => random(256))) : Buffer.from(Array.from({ length: random(12) }, () => words[random(words.length)]).join(''), 'latin1');
        c.send(bytes);
      }
      c.send('\nendcmd\n'); // leave any open mcmd block
      c.close();
      const d = await RawClient.open(port);
      expect(await d.ask('cmd=get_maxes\n')).to.match(/^cmd=maxes /);
      d.close();
    });

    it("survives a client disconnecting mid-barrier and reports it as 'disconnect'", async () => {
      const { srv, port } = await started(2);
      const events: Array<[number, boolean]> = [];
      srv.on('disconnect', (r, f) => events.push([r, f]));
      const a = await RawClient.open(port);
      const b = await RawClient.open(port);
      await a.initack(0);
      await b.initack(1);
      a.send('cmd=barrier_in\n');
      b.close();
      await new Promise((r) => setTimeout(r, 100));
      expect(events).to.deep.equal([[1, false]]);
      expect(await a.ask('cmd=get_maxes\n')).to.match(/^cmd=maxes /); // still served while waiting
      a.close();
    });

    it('releases a stalled finalize barrier after the timeout, logs it, and answers the latecomer at once', async () => {
      const { port, lines } = await started(2, { finalizeTimeoutMs: 300 });
      const a = await RawClient.open(port);
      const b = await RawClient.open(port);
      await a.initack(0);
      await b.initack(1);
      for (let round = 1; round <= 3; round++) {
        a.send('cmd=barrier_in\n');
        b.send('cmd=barrier_in\n');
        expect([await a.line(), await b.line()]).to.deep.equal(['cmd=barrier_out', 'cmd=barrier_out']);
      }
      // Round 4 (MPI_Finalize's barrier): b never comes.
      expect(await a.ask('cmd=barrier_in\n', 5000)).to.equal('cmd=barrier_out');
      expect(lines.filter((l) => /barrier 4 released by the finalize watchdog .* without rank\(s\) 1/.test(l))).to.have.length(1);
      expect(await b.ask('cmd=barrier_in\n')).to.equal('cmd=barrier_out');
      expect(await a.ask('cmd=finalize\n')).to.equal('cmd=finalize_ack');
      a.close();
      b.close();
    });

    it('never releases the first barrier (MPI_Init), nor one whose missing rank is still talking', async () => {
      const { port, lines } = await started(2, { finalizeTimeoutMs: 1000 });
      const a = await RawClient.open(port);
      const b = await RawClient.open(port);
      await a.initack(0);
      await b.initack(1);
      a.send('cmd=barrier_in\n');
      expect(await a.line(2500)).to.equal(null);
      b.send('cmd=barrier_in\n');
      expect([await a.line(), await b.line()]).to.deep.equal(['cmd=barrier_out', 'cmd=barrier_out']);
      a.send('cmd=barrier_in\n');
      for (let i = 0; i < 25; i++) {
        await new Promise((r) => setTimeout(r, 100));
        expect(await b.ask('cmd=get_maxes\n')).to.match(/^cmd=maxes/); // b is busy, not hung
      }
      expect(await a.line(50)).to.equal(null);
      expect(lines.some((l) => /watchdog/.test(l))).to.equal(false);
      a.close();
      b.close();
    });

    it('closes every connection on close()', async () => {
      const { srv, port } = await started(1);
      const c = await RawClient.open(port);
      await c.initack(0);
      await srv.close();
      expect(await c.line(1000)).to.equal(null);
      expect(c.closed).to.equal(true);
    });
  });
});
