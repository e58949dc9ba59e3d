/**
 * sf-pmix's own guarantees, beyond what libpmix does: it listens only where it is told, refuses
 * clients of another namespace or rank and survives garbage and stalled handshakes, rejects bad
 * input with one line, goes away with its launcher, and runs clean under ASan and UBSan.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { expect } from 'chai';
import { PmixServer } from '../../launcher/pmix/server.js';
import { program } from '../helpers/programs.js';
import { alive, linesOf, pmixClient, runJob, serverBinary, useListenLink } from './pmix-harness.js';

/** ip:port of every TCP socket pid listens on (from its fds and the namespace's /proc/net/tcp*). */
function listeningOf(pid: number): string[] {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m) inodes.add(m[1]);
    } catch {
      /* closed meanwhile */
    }
  }
  const out: string[] = [];
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of readFileSync(file, 'utf8').split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length < 10 || f[3] !== '0A' || !inodes.has(f[9])) continue;
      const [hex, port] = f[1].split(':');
      const ip = hex.length === 8 ? [0, 1, 2, 3].map((i) => parseInt(hex.slice(6 - 2 * i, 8 - 2 * i), 16)).join('.') : `[${hex}]`;
      out.push(`${ip}:${parseInt(port, 16)}`);
    }
  }
  return out;
}

function hostPort(uri: string): { host: string; port: number } {
  const m = /tcp4:\/\/([\d.]+):(\d+)/.exec(uri);
  if (!m) throw new Error(`no tcp4 address in ${uri}`);
  return { host: m[1], port: Number(m[2]) };
}

/** Runs a program to its end; its status, output and how long it took. */
function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, timeoutMs = 20_000): Promise<{ code: number | null; stdout: string; ms: number }> {
  const t0 = Date.now();
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (b) => (stdout += b));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, ms: Date.now() - t0 });
    });
  });
}

describe('sf-pmix: listening, hostile clients, bad input, lifetime', function () {
  this.timeout(120_000);
  const listen = useListenLink();
  let binary: string;
  before(() => {
    binary = serverBinary();
  });

  it('listens on the address it is told and nowhere else', async () => {
    const server = await PmixServer.start({ listen, binary });
    try {
      const { host, port } = hostPort(server.uri);
      expect(host).to.equal(listen);
      expect(listeningOf(server.pid)).to.deep.equal([`${listen}:${port}`]);
    } finally {
      await server.close();
    }
  });

  it('refuses to start on an address no interface has, or on something that is not an address', async () => {
    try {
      await PmixServer.start({ listen: '192.0.2.254', binary });
      expect.fail('started');
    } catch (e) {
      expect((e as Error).message).to.equal('sf-pmix: no interface of this host has the address 192.0.2.254 to listen on');
    }
    try {
      await PmixServer.start({ listen: 'gateway', binary });
      expect.fail('started');
    } catch (e) {
      expect((e as Error).message).to.equal("sf-pmix: HELLO: listen address 'gateway' is not an IPv4 address");
    }
  });

  it('refuses to share the topology without a tmpdir to put it in', async () => {
    try {
      await PmixServer.start({ listen, binary, shareTopology: true });
      expect.fail('started');
    } catch (e) {
      expect((e as Error).message).to.equal('sf-pmix: HELLO: share_topology needs a tmpdir (libpmix leaves its topology file there)');
    }
  });

  it('rejects a wrong job with one line and exits non-zero', async () => {
    const server = await PmixServer.start({ listen, binary });
    try {
      await server.register({ nspace: 'sfpx-bad', nodes: [{ hostname: 'a', ranks: [0, 1] }, { hostname: 'b', ranks: [1] }], appnums: [0, 0] });
      expect.fail('registered');
    } catch (e) {
      expect((e as Error).message).to.equal('sf-pmix: job: rank 1 is on two nodes');
    }
    expect(await server.whenExited()).to.deep.equal({ code: 1, signal: null });
  });

  it('refuses clients of another namespace or rank, and survives garbage and a stalled handshake', async () => {
    const client = pmixClient();
    const hostile: { what: string; code: number | null; stdout: string; ms: number }[] = [];
    let stallClosedMs = -1;
    const out = await runJob({
      name: 'hostile',
      apps: [{ argv: [program('ompi-rank', 'openmpi')], np: 2 }],
      listen,
      binary,
      handshakeMs: 1000,
      beforeRanks: async (servers) => {
        const { host, port } = hostPort(servers[0].uri);
        // Garbage, then gone.
        await new Promise<void>((resolve) => {
          const s = connect(port, host, () => s.end(randomBytes(64)));
          s.on('error', () => resolve());
          s.on('close', () => resolve());
        });
        // Half a header, then silence: libpmix reads handshakes blocking on its progress thread.
        const t0 = Date.now();
        const stall = connect(port, host, () => stall.write(Buffer.from([1, 2, 3])));
        stall.on('error', () => {});
        const stallClosed = new Promise<void>((resolve) => stall.on('close', () => ((stallClosedMs = Date.now() - t0), resolve())));
        await new Promise((r) => setTimeout(r, 100));
        // A real libpmix client with a real rank's environment, but not this job's namespace or rank.
        const env = { ...process.env, ...(await servers[0].env(0)) };
        for (const [what, over] of [['namespace', { PMIX_NAMESPACE: 'sfpx-another-job' }], ['rank', { PMIX_RANK: '7' }]] as const) {
          hostile.push({ what, ...(await run(client, ['init'], { ...env, ...over })) });
        }
        await stallClosed;
      },
    });
    for (const h of hostile) {
      expect(h.code, h.what).to.equal(1);
      expect(h.stdout, h.what).to.match(/^init failed: /);
    }
    // The server closed the stalled connection itself, after the handshake timeout.
    expect(stallClosedMs).to.be.within(900, 10_000);
    // The job itself ran right, and only its two ranks ever connected.
    expect(out.failure).to.equal(undefined);
    for (let r = 0; r < 2; r++) expect(linesOf(out, r)[0]).to.equal(`rank ${r} of 2 app 0 sum 3 prog c`);
    expect(out.events.filter((e) => e.type === 'connected').map((e) => (e as { rank: number }).rank).sort()).to.deep.equal([0, 1]);
  });

  it('exits when its launcher goes away, even by SIGKILL', async () => {
    // A launcher process that starts a server, says its pid, and then is killed.
    const script = [
      `import { PmixServer } from ${JSON.stringify(join(import.meta.dirname, '../../launcher/pmix/server.ts'))};`,
      `const s = await PmixServer.start({ listen: ${JSON.stringify(listen)}, binary: ${JSON.stringify(binary)} });`,
      `console.log(s.pid); setInterval(() => {}, 1000);`,
    ].join('\n');
    const launcher = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    const pid = await new Promise<number>((resolve) => launcher.stdout.once('data', (b) => resolve(Number(String(b).trim()))));
    expect(alive([pid])).to.deep.equal([pid]);
    launcher.kill('SIGKILL');
    const deadline = Date.now() + 5000;
    while (alive([pid]).length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(alive([pid]), 'sf-pmix outlived its launcher').to.deep.equal([]);
  });

  it('stops cleanly on SIGTERM', async () => {
    const server = await PmixServer.start({ listen, binary });
    process.kill(server.pid, 'SIGTERM');
    expect(await server.whenExited()).to.deep.equal({ code: 128 + 15, signal: null });
  });
});

describe('sf-pmix under AddressSanitizer and UBSan', function () {
  this.timeout(180_000);
  const listen = useListenLink();
  let binary: string;
  before(() => {
    binary = serverBinary(true);
  });

  // The harness gives a sanitized server exit statuses for findings (ASan/LSan 99, UBSan 98):
  // a clean run is status 0 for every server.
  const cases: { name: string; plan: { apps: { np: number; prog?: string }[]; nodes?: number; perNode?: boolean; kill?: number } }[] = [
    { name: 'one server, 2 nodes', plan: { apps: [{ np: 4 }], nodes: 2 } },
    { name: 'a server per node', plan: { apps: [{ np: 4 }], nodes: 2, perNode: true } },
    { name: 'an abort', plan: { apps: [{ np: 2, prog: 'abort' }] } },
    { name: 'a rank lost between fences, a server per node', plan: { apps: [{ np: 3, prog: 'ompi-stall' }], nodes: 3, perNode: true, kill: 2 } },
  ];
  for (const c of cases) {
    it(`runs clean: ${c.name}`, async () => {
      let initialized = 0;
      const out = await runJob({
        name: 'asan',
        apps: c.plan.apps.map((a) => ({ argv: [program(a.prog ?? 'ompi-rank', 'openmpi')], np: a.np })),
        nodes: c.plan.nodes,
        perNode: c.plan.perNode,
        listen,
        binary,
        onEvent: (e, job) => {
          if (c.plan.kill !== undefined && e.type === 'line' && /initialized$/.test(e.line) && ++initialized === 3) job.kill(c.plan.kill);
        },
      });
      const findings = out.serverLog.filter((l) => /Sanitizer|runtime error/.test(l));
      expect(findings, out.serverLog.join('\n')).to.deep.equal([]);
      for (const e of out.serverExits) expect(e).to.deep.equal({ code: 0, signal: null });
    });
  }
});
