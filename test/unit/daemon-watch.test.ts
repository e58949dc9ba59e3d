/**
 * The native launch's daemon watch (launcher/job/launch/daemons.ts), over real TCP connections on
 * loopback and the exit files the remote-shell shim leaves: a daemon that ended with a failure
 * before it was seen connected fails the job only if its launcher outlives it by the grace (chaos
 * seed 38 job 5 found an MPI_Abort at start: Hydra cut its proxies off between two looks, they
 * exited 7, and the job was called a daemon failure instead of the abort's errorcode).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'chai';
import { DaemonWatch } from '../../launcher/job/launch/daemons.js';
import type { Clone } from '../../src/providers/clone.js';

const clone = (id: number): Clone => ({ id, hostname: `sfdaemon-${id}`, address: `127.0.0.${id + 2}` }) as Clone;

describe('the daemon watch of a native launch', function () {
  this.timeout(20_000);
  let server: Server;
  let port: number;
  let logDir: string;
  const sockets: Socket[] = [];

  before(async () => {
    server = createServer((s) => sockets.push(s));
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    port = (server.address() as { port: number }).port;
  });
  after(() => server.close());
  beforeEach(() => (logDir = mkdtempSync(join(tmpdir(), 'sf-daemons-'))));
  afterEach(() => {
    for (const s of sockets.splice(0)) s.destroy();
    rmSync(logDir, { recursive: true, force: true });
  });

  /** Connects from the clone's address, as its daemon would, and waits until the server has it. */
  async function report(c: Clone): Promise<Socket> {
    const n = sockets.length;
    const s = createConnection({ host: '127.0.0.1', port, localAddress: c.address });
    while (sockets.length === n) await sleep(10);
    return s;
  }

  const exited = (c: Clone, status: number) => writeFileSync(join(logDir, `${c.address}.exit`), `${status}\n`);

  function watch(clones: Clone[]): { w: DaemonWatch; failures: string[] } {
    const failures: string[] = [];
    const w = new DaemonWatch({ port, clones, logDir, timeoutMs: 60_000, what: "Hydra's proxy", onFailure: (l) => failures.push(l) });
    return { w, failures };
  }

  it('fails, naming the clone and its stderr, once a daemon ended before it reported and its launcher still runs after the grace', async () => {
    const [a, b] = [clone(0), clone(1)];
    const { w, failures } = watch([a, b]);
    const s = await report(a);
    writeFileSync(join(logDir, `${b.address}.err`), 'proxy: cannot reach the launcher\n');
    exited(b, 7);
    await sleep(1000);
    expect(failures, 'not within the grace').to.deep.equal([]);
    await sleep(1600);
    w.stop();
    s.destroy();
    expect(failures).to.deep.equal([
      "Hydra's proxy on clone sfdaemon-1 ended with status 7 before it reported to its launcher; its stderr: proxy: cannot reach the launcher",
    ]);
  });

  it('leaves the verdict to the launcher when it ends within the grace of its failed daemon', async () => {
    const [a, b] = [clone(0), clone(1)];
    const { w, failures } = watch([a, b]);
    const s = await report(a);
    exited(b, 7);
    await sleep(800);
    w.stop(); // the launcher ended: its status is the job's
    await sleep(2000);
    s.destroy();
    expect(failures).to.deep.equal([]);
  });

  it('counts a daemon seen connected as reported, whatever it ends with', async () => {
    const [a, b] = [clone(0), clone(1)];
    const { w, failures } = watch([a, b]);
    const sa = await report(a);
    const sb = await report(b);
    await sleep(300);
    exited(b, 7);
    expect(w.allReported).to.equal(true);
    await sleep(2500);
    sa.destroy();
    sb.destroy();
    expect(failures).to.deep.equal([]);
  });
});
