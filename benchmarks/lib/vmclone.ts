/**
 * QEMU clones started by hand for the memory benchmark, so that memory on demand and its three
 * baselines (local copy-on-write, an eager copy, postcopy migration) start their clones the same
 * way: the vm provider's own command line (qemuArgs), its restore steps (x-ignore-shared,
 * migrate-incoming, cont) and the guest agent's IDENT/READY handshake, without a ticket's network
 * (the clones talk to nobody but their agent). QEMU runs on a lifeline to this process, inside a
 * simulated host's mount namespace when given (src/memory/place.ts).
 *
 * RAM: a file mapped copy-on-write (the template's, its eager copy, a memtap's), or anonymous
 * (memory-backend-ram: a postcopy destination, which must not map a file it would punch holes in).
 */
import { spawn } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { settings } from '../../src/common/config.js';
import { onLifeline } from '../../src/common/lifeline.js';
import { AgentChannel } from '../../src/providers/vm/agent/channel.js';
import { encodeIdent, FrameType } from '../../src/providers/vm/agent/protocol.js';
import { killQuietly, QEMU, qemuArgs, qemuBinary, type Accel, vmFiles } from '../../src/providers/vm/machine.js';
import { Qmp } from '../../src/providers/vm/qmp.js';

export interface CloneSpec {
  dir: string;
  kernel: string;
  initramfs: string;
  ramMiB: number;
  accel: Accel;
  id: number;
  /** A file mapped share=off, or anonymous RAM. */
  ram: { file: string } | { anonymous: true };
  /**
   * Where the device state comes from: a file (exec:cat), or a postcopy migration: we listen, then
   * `start` tells the source to migrate (and switch to postcopy) to us.
   */
  incoming: { state: string } | { listen: string; start: () => Promise<void> };
  /** nsenter prefix for QEMU (a simulated host's mount namespace). */
  prefix?: string[];
  env?: Record<string, string>;
  timeoutMs: number;
}

export interface ReadyClone {
  pid: number;
  /** ms from QEMU's start: device state in, agent ready. */
  migratedMs: number;
  readyMs: number;
  channel: AgentChannel;
  qemu: Qemu;
  dir: string;
}

/** qemuArgs with anonymous RAM under the same memory-backend id (migration matches RAM blocks by it). */
function args(s: CloneSpec, f: ReturnType<typeof vmFiles>): string[] {
  const file = 'file' in s.ram ? s.ram.file : '/nonexistent';
  const a = qemuArgs({ accel: s.accel, ramMiB: s.ramMiB, ram: { path: file, share: false }, incoming: true, ...f });
  if ('anonymous' in s.ram) {
    const i = a.findIndex((x) => x.startsWith('memory-backend-file,'));
    a[i] = `memory-backend-ram,id=mem,size=${s.ramMiB}M`;
  }
  return a;
}

export function tail(dir: string): string {
  const read = (n: string) => {
    try {
      return readFileSync(join(dir, n), 'utf8').replace(/\r/g, '').trim().split('\n').filter((l) => l && !/hub \d+ is not connected/.test(l)).slice(-3).join(' / ');
    } catch {
      return '';
    }
  };
  return [read('qemu.err'), read('console.log')].filter(Boolean).join(' | ') || '(no output)';
}

interface Qemu {
  pid: number;
  exited: Promise<{ code: number | null }>;
}

/** QEMU on a lifeline (it dies with this process), in the simulated host's mount namespace when given. */
function spawnQemu(s: CloneSpec, f: ReturnType<typeof vmFiles>): Qemu {
  const errFd = openSync(f.stderr, 'w');
  const argv = onLifeline(settings().nativeDir, [...(s.prefix ?? []), qemuBinary() ?? QEMU, ...args(s, f)]);
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', errFd], env: { ...process.env, ...s.env } });
  closeSync(errFd);
  const exited = new Promise<{ code: number | null }>((resolve) => {
    child.once('exit', (code) => resolve({ code }));
    child.once('error', () => resolve({ code: null }));
  });
  return { pid: child.pid ?? 0, exited };
}

/** Starts a clone and waits until its agent is ready with its identity. */
export async function startClone(s: CloneSpec): Promise<ReadyClone> {
  mkdirSync(s.dir, { recursive: true });
  const f = vmFiles(s.dir);
  const t0 = performance.now();
  const qemu = spawnQemu(s, f);
  const deadline = Date.now() + s.timeoutMs;
  const died = qemu.exited.then((x) => {
    throw new Error(`QEMU of clone ${s.id} exited (code ${x.code}): ${tail(s.dir)}`);
  });
  died.catch(() => undefined);
  try {
    return await Promise.race([resume(s, f, qemu, deadline, t0), died]);
  } catch (e) {
    await Promise.race([qemu.exited, new Promise((r) => setTimeout(r, 300))]); // its last words
    killQuietly(qemu.pid);
    await qemu.exited;
    throw new Error(`clone ${s.id} did not become ready: ${(e as Error).message} (${tail(s.dir)})`);
  }
}

async function resume(s: CloneSpec, f: ReturnType<typeof vmFiles>, qemu: Qemu, deadline: number, t0: number): Promise<ReadyClone> {
  const qmp = await Qmp.open(f.qmp, deadline);
  let migratedMs = 0;
  try {
    const channel = await AgentChannel.connect(f.control, `clone ${s.id}`, deadline);
    if ('state' in s.incoming) {
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
      await qmp.execute('migrate-incoming', { uri: `exec:cat ${s.incoming.state}` });
      await qmp.migrationDone(deadline);
      await qmp.execute('cont');
    } else {
      // Postcopy: the guest runs here as soon as the source switches over; pages come on demand.
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'postcopy-ram', state: true }] });
      await qmp.execute('migrate-incoming', { uri: `tcp:${s.incoming.listen}` });
      await s.incoming.start();
      // The guest runs here from the switch-over on; the agent reads its identity only then.
      for (;;) {
        const st = (await qmp.execute('query-status')) as { status?: string };
        if (st.status === 'running') break;
        if (Date.now() > deadline) throw new Error(`the postcopy destination is ${st.status}, not running`);
        await new Promise((r) => setTimeout(r, 2));
      }
    }
    migratedMs = performance.now() - t0;
    const now = Date.now();
    const net = `10.0.250.${10 + s.id}`;
    channel.send(
      FrameType.IDENT,
      0,
      encodeIdent({
        id: String(s.id), addr: `${net}/24`, gw: '10.0.250.1', mac: `52:54:00:e8:fa:${(10 + s.id).toString(16).padStart(2, '0')}`,
        hostname: `bench${s.id}`, time: `${Math.floor(now / 1000)}.${String((now % 1000) * 1e6).padStart(9, '0')}`,
        entropy: randomBytes(64).toString('hex'), hosts: `${net} bench${s.id}`, ssh: '0',
      }),
    );
    await channel.expect(FrameType.READY, deadline);
    return { pid: qemu.pid, migratedMs, readyMs: performance.now() - t0, channel, qemu, dir: s.dir };
  } finally {
    qmp.close();
  }
}

/** Runs a shell script in the clone through its agent. */
export async function run(c: ReadyClone, script: string, timeoutMs = 120_000): Promise<{ code: number | null; out: string }> {
  const p = c.channel.spawn(['sh', '-c', script], { env: { PATH: '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin', HOME: '/root' }, cwd: '/' });
  let out = '';
  p.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  p.stderr.setEncoding('utf8').on('data', (d: string) => (out += d));
  const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
  const st = await p.exited;
  clearTimeout(timer);
  return { code: st.code, out };
}

export async function stopClone(c: ReadyClone): Promise<void> {
  c.channel.close();
  killQuietly(c.pid);
  await c.qemu.exited;
}

/** Starts clones in parallel; all ready, or all stopped and the first error thrown. */
export async function startAll(specs: CloneSpec[]): Promise<ReadyClone[]> {
  const r = await Promise.allSettled(specs.map((s) => startClone(s)));
  const ok = r.flatMap((x) => (x.status === 'fulfilled' ? [x.value] : []));
  const bad = r.find((x): x is PromiseRejectedResult => x.status === 'rejected');
  if (bad) {
    for (const k of ok) await stopClone(k);
    throw bad.reason;
  }
  return ok;
}

/**
 * A postcopy source: a clone of the template restored and left paused (never continued), with
 * postcopy-ram on and x-ignore-shared off (QEMU 7.2 refuses the two together; its RAM is private
 * anyway, so all of it is migrated). migrateTo() sends it to a destination and switches over at
 * once, so the destination runs while its pages still come.
 */
export interface Source {
  pid: number;
  migrateTo(address: string): Promise<void>;
  /** RAM bytes sent so far, and whether the migration has completed. */
  progress(): Promise<{ transferred: number; status: string }>;
  stop(): Promise<void>;
}

export async function startSource(s: Omit<CloneSpec, 'incoming'> & { state: string }): Promise<Source> {
  mkdirSync(s.dir, { recursive: true });
  const f = vmFiles(s.dir);
  const qemu = spawnQemu({ ...s, incoming: { state: s.state } }, f);
  const deadline = Date.now() + s.timeoutMs;
  let qmp: Qmp | null = null;
  try {
    qmp = await Qmp.open(f.qmp, deadline);
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await qmp.execute('migrate-incoming', { uri: `exec:cat ${s.state}` });
    await qmp.migrationDone(deadline);
    await qmp.execute('migrate-set-capabilities', {
      capabilities: [{ capability: 'x-ignore-shared', state: false }, { capability: 'postcopy-ram', state: true }],
    });
  } catch (e) {
    qmp?.close();
    killQuietly(qemu.pid);
    await qemu.exited;
    throw new Error(`postcopy source ${s.id}: ${(e as Error).message} (${tail(s.dir)})`);
  }
  const q = qmp;
  return {
    pid: qemu.pid,
    migrateTo: async (address) => {
      await q.execute('migrate', { uri: `tcp:${address}` });
      // Switch over as soon as the migration runs: the destination starts before its RAM is there.
      for (;;) {
        try {
          await q.execute('migrate-start-postcopy');
          return;
        } catch (e) {
          if (!/not started|setup/i.test((e as Error).message)) throw e;
          await new Promise((r) => setTimeout(r, 1));
        }
      }
    },
    progress: async () => {
      const r = (await q.execute('query-migrate')) as { status?: string; ram?: { transferred?: number } };
      return { transferred: r.ram?.transferred ?? 0, status: r.status ?? '?' };
    },
    stop: async () => {
      q.close();
      killQuietly(qemu.pid);
      await qemu.exited;
    },
  };
}
