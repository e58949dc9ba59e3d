/**
 * Bounded fuzz of the PMI-1 server (harness 8 of issue 8): the real server of launcher/pmi/server.ts
 * in this process, 10,000 hostile inputs over real TCP, then a real MPICH job against the same
 * server. Inputs: overlong lines, binary, unknown and malformed commands, commands out of order,
 * duplicate and bogus ranks, barrier and key floods, clients that never read, floods of
 * connections, and clients that dribble one byte at a time (made quick with short server timeouts).
 *
 * It checks that the server never crashes, that what it holds stays capped while the inputs
 * arrive (its own stats, sampled throughout, and the heap afterwards), that its log stays short,
 * and that afterwards it either serves a legitimate job or, when a stray client holds a rank of
 * that job, says so in one line. Needs no root: the ranks are host processes.
 */
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import winston from 'winston';
import { placeRanks } from '../../launcher/job/placement.js';
import { processMapping } from '../../launcher/pmi/mapping.js';
import { MAX_MCMD_CHARS, MAX_SERVICES, MAX_UNIDENTIFIED, MAX_UNREAD_REPLIES, PmiServer, kvsCapacity, type PmiServerStats } from '../../launcher/pmi/server.js';
import { MAX_LINE } from '../../launcher/pmi/wire.js';
import { program } from '../helpers/programs.js';

const SIZE = 4;
const INPUTS = 10_000;
const HANDSHAKE_MS = 400;
const LINE_MS = 300;

/** A deterministic stream of numbers, so that a failure can be replayed. */
function prng(seed: number): (n: number) => number {
  let x = seed >>> 0 || 1;
  return (n: number) => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
}

function capturingLog(): { log: winston.Logger; lines: string[] } {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(String(JSON.parse(chunk.toString()).message));
      done();
    },
  });
  return { log: winston.createLogger({ level: 'info', transports: [new winston.transports.Stream({ stream: sink, format: winston.format.json() })] }), lines };
}

/** A raw TCP client; collects what it is sent, unless told not to read at all. */
class Raw {
  received = '';
  closed = false;
  private constructor(readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => {
      // Keep only the tail: a hostile client can make the server say a lot.
      this.received = (this.received + d).slice(-4096);
    });
    socket.on('close', () => (this.closed = true));
    socket.on('error', () => undefined);
  }

  static open(port: number, opts: { read?: boolean } = {}): Promise<Raw> {
    return new Promise((resolve) => {
      const s = connect({ host: '127.0.0.1', port });
      const raw = new Raw(s);
      if (opts.read === false) s.pause();
      s.once('connect', () => resolve(raw));
      s.once('error', () => resolve(raw));
    });
  }

  send(data: string | Buffer): Promise<void> {
    if (this.closed || this.socket.destroyed) return Promise.resolve();
    return new Promise((resolve) => this.socket.write(data, () => resolve()));
  }

  /** Whether what it was sent matches `re` within `ms`. */
  async waitFor(re: RegExp, ms = 2000): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (Date.now() < deadline) {
      if (re.test(this.received)) return true;
      if (this.closed) return false;
      await new Promise((r) => setTimeout(r, 10));
    }
    return re.test(this.received);
  }

  close(): void {
    this.socket.destroy();
  }
}

/**
 * One hostile input, of every kind the harness knows. Sizes are kept just past each cap: the
 * clients share this process's event loop with the server, and writing megabytes would starve it.
 */
function hostileInput(random: (n: number) => number, kvsname: string): string {
  const word = () => ['get', 'put', 'barrier_in', 'initack', 'init', 'finalize', 'abort', 'spawn', 'publish_name', 'lookup_name', 'get_maxes', 'frob', '', '=', '\\'][random(15)]!;
  const number = () => [String(random(SIZE)), '-1', '4', '99999999999999999999', 'x', '', '1e3', '0x1', ' 1'][random(9)]!;
  switch (random(14)) {
    case 0: // overlong, with and without its newline
      return `cmd=put kvsname=${kvsname} key=k value=${'x'.repeat(MAX_LINE + random(MAX_LINE / 2))}${random(2) ? '\n' : ''}`;
    case 1: // binary
      return String.fromCharCode(...Array.from({ length: 1 + random(512) }, () => random(256)));
    case 2: // unknown commands
      return `cmd=${['frobnicate', 'get_everything', 'shutdown', 'exec', 'x'.repeat(200)][random(5)]} a=b\n`;
    case 3: // malformed
      return [`cmd=\n`, `cmd=get key\n`, `key=value\n`, `cmd=get ${'='.repeat(random(50))}\n`, `cmd=put key=\\\n`, `\r\n\r\n`, `cmd=get\tkey=\u0000\n`, `cmd=get ${'a=b '.repeat(1001)}\n`][random(8)]!;
    case 4: // out of order: before initack, or repeated
      return [`cmd=barrier_in\n`, `cmd=finalize\n`, `cmd=abort exitcode=3\n`, `cmd=init pmi_version=2 pmi_subversion=0\n`, `cmd=get_appnum\n`, `cmd=spawn nprocs=1000000\n`][random(6)]!;
    case 5: // bogus and duplicate ranks
      return `cmd=initack pmiid=${number()}\n`;
    case 6: // barrier floods (one write, many barrier_in)
      return 'cmd=barrier_in\n'.repeat(1 + random(50));
    case 7: // key floods
      return Array.from({ length: 1 + random(100) }, () => `cmd=put kvsname=${kvsname} key=f${random(1e9)} value=${'v'.repeat(random(1024))}\n`).join('');
    case 8: // oversized keys, values, names
      return [`cmd=put key=${'k'.repeat(65 + random(1000))} value=1\n`, `cmd=put key=k value=${'v'.repeat(1025 + random(4000))}\n`, `cmd=publish_name service=${'s'.repeat(1 + random(4000))} port=${'p'.repeat(1 + random(4000))}\n`][random(3)]!;
    case 9: // name floods
      return Array.from({ length: 1 + random(100) }, () => `cmd=publish_name service=s${random(1e9)} port=p\n`).join('');
    case 10: // multi-line commands: unknown, unterminated, past the line cap, past the character cap
      return [`mcmd=frob\na=b\nendcmd\n`, `mcmd=spawn\nnprocs=1\n`, `mcmd=spawn\n${'arg=x\n'.repeat(10_001)}`, `mcmd=spawn\n${`${'x'.repeat(60_000)}\n`.repeat(5)}`][random(4)]!;
    case 11: // replies wanted in bulk (the client may never read them)
      return 'cmd=get_maxes\n'.repeat(1 + random(500));
    case 12: // random words
      return Array.from({ length: random(20) }, () => `${['cmd=', 'mcmd=', ''][random(3)]}${word()}${[' ', '=', '\n', ''][random(4)]}`).join('');
    default: // a lookup of something that does not exist, or a get with odd names
      return `cmd=${['get', 'lookup_name', 'unpublish_name'][random(3)]} kvsname=${random(2) ? kvsname : 'other'} key=${word()} service=${word()}\n`;
  }
}

/** A pool of hostile inputs, encoded once (encoding each of 10,000 writes anew would cost seconds). */
function hostilePool(random: (n: number) => number, kvsname: string, n = 400): Buffer[] {
  return Array.from({ length: n }, () => Buffer.from(hostileInput(random, kvsname), 'latin1'));
}

/** One input from the pool; big ones (past a cap by design) are drawn one time in ten as often. */
function draw(pool: Buffer[], random: (n: number) => number): Buffer {
  for (;;) {
    const b = pool[random(pool.length)]!;
    if (b.length <= 16 * 1024 || random(10) === 0) return b;
  }
}

function bounded(stats: PmiServerStats): void {
  // One connection per rank, the unidentified cap, and a connection or two being accepted or closed.
  expect(stats.connections, 'connections').to.be.at.most(SIZE + MAX_UNIDENTIFIED + 2);
  expect(stats.unidentified, 'unidentified connections').to.be.at.most(MAX_UNIDENTIFIED + 1);
  expect(stats.kvsEntries, 'KVS entries').to.be.at.most(kvsCapacity(SIZE));
  expect(stats.services, 'published names').to.be.at.most(MAX_SERVICES);
  // Ranks wait in one barrier at a time: one round open, never a pile of them.
  expect(stats.openRounds, 'open barrier rounds').to.be.at.most(1);
  // Per connection: an unfinished line (MAX_LINE plus a chunk) and an unfinished multi-line command.
  expect(stats.bufferedChars, 'buffered characters').to.be.at.most(stats.connections * (2 * MAX_LINE + 64 * 1024 + MAX_MCMD_CHARS));
  // Per connection: the unread reply cap, plus the reply that crossed it.
  expect(stats.unreadReplyBytes, 'unread reply bytes').to.be.at.most(stats.connections * (MAX_UNREAD_REPLIES + 64 * 1024));
  expect(stats.probedRanks, 'probed ranks').to.be.at.most(SIZE);
}

interface RankResult {
  code: number | null;
  stdout: string;
}

/**
 * Host processes as ranks. UCX_NET_DEVICES=lo: UCX opens every network device at MPI_Init, and on a
 * shared host another job's device can vanish meanwhile (MPI_Init then fails "No such device").
 */
function runRanks(srv: PmiServer, prog: string, ranks: number[]): { done: Promise<RankResult[]>; kill: () => void } {
  const env = (rank: number) => ({ PATH: process.env.PATH ?? '/usr/bin:/bin', UCX_NET_DEVICES: 'lo', ...srv.rankEnv(rank) });
  const children = ranks.map((rank) => spawn(prog, [], { env: env(rank), stdio: ['ignore', 'pipe', 'pipe'] }));
  const done = Promise.all(
    children.map(
      (child) =>
        new Promise<RankResult>((resolve) => {
          let stdout = '';
          child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
          child.stderr.resume();
          child.on('close', (code) => resolve({ code, stdout }));
        }),
    ),
  );
  return { done, kill: () => children.forEach((c) => c.kill('SIGKILL')) };
}

describe('PMI server fuzz (bounded)', function () {
  this.timeout(120_000);
  let srv: PmiServer;
  let port: number;
  let lines: string[];
  const crashes: unknown[] = [];
  const onCrash = (e: unknown) => crashes.push(e);
  const clients: Raw[] = [];
  let sampler: NodeJS.Timeout | undefined;

  before(async () => {
    process.on('uncaughtException', onCrash);
    const captured = capturingLog();
    lines = captured.lines;
    srv = new PmiServer({
      size: SIZE,
      processMapping: processMapping(placeRanks(SIZE, 1, SIZE, 'block')),
      log: captured.log,
      handshakeTimeoutMs: HANDSHAKE_MS,
      lineTimeoutMs: LINE_MS,
      finalizeTimeoutMs: 1000,
    });
    port = await srv.listen('127.0.0.1');
  });

  // A failed test must not leave stray clients holding ranks for the next one.
  afterEach(() => {
    clearInterval(sampler);
    clients.splice(0).forEach((c) => c.close());
  });

  after(async () => {
    await srv.close();
    process.off('uncaughtException', onCrash);
  });

  it(`takes ${INPUTS} hostile inputs without crashing, holding only what its caps allow`, async () => {
    const random = prng(20261201);
    const pool = hostilePool(random, srv.kvsname);
    const heapBefore = process.memoryUsage().heapUsed;
    let sent = 0;
    const samples: PmiServerStats[] = [];
    sampler = setInterval(() => samples.push(srv.stats()), 20);

    // A flood of connections that say nothing: the oldest are evicted, the rest time out.
    const flood = await Promise.all(Array.from({ length: 300 }, () => Raw.open(port)));
    clients.push(...flood);
    sent += flood.length;
    // Hostile connections, 24 at a time, each a random run of inputs; some never read their replies.
    const workers = Array.from({ length: 24 }, async () => {
      while (sent < INPUTS) {
        const c = await Raw.open(port, { read: random(4) !== 0 });
        clients.push(c);
        // Short runs: a connection that sends bad lines is soon closed, and what follows is never read.
        for (let i = 0, n = 1 + random(12); i < n && sent < INPUTS && !c.closed; i++) {
          // Not waiting for a write the server does not take (it may not read this client any more).
          await Promise.race([c.send(draw(pool, random)), new Promise((r) => setTimeout(r, 20))]);
          sent++;
        }
        if (random(3) === 0) c.close(); // others are left open, for the server's caps and timeouts
      }
    });
    await Promise.all(workers);
    await new Promise((r) => setTimeout(r, Math.max(HANDSHAKE_MS, LINE_MS) * 2));
    clearInterval(sampler);
    samples.push(srv.stats());

    expect(crashes, 'uncaught exceptions').to.deep.equal([]);
    expect(sent).to.be.at.least(INPUTS);
    expect(samples.length).to.be.greaterThan(10);
    samples.forEach(bounded);
    const peak = (k: keyof PmiServerStats) => Math.max(...samples.map((x) => x[k]));
    const { lines: parsed, badInputs } = srv.stats();
    console.log(`      (server peaks: ${(['connections', 'unidentified', 'kvsEntries', 'services', 'bufferedChars', 'unreadReplyBytes'] as const).map((k) => `${k} ${peak(k)}`).join(', ')}; ${parsed} lines parsed, ${badInputs} bad inputs)`);
    // The inputs reached the server and were parsed, rather than waiting unread in the kernel.
    expect(parsed, 'lines the server parsed').to.be.greaterThan(INPUTS);
    expect(badInputs, 'bad inputs the server saw').to.be.greaterThan(INPUTS / 10);
    // The silent flood is gone: evicted, or closed by the handshake timeout.
    expect(flood.every((c) => c.closed), 'silent connections closed').to.equal(true);
    // The log stays short: bad input is told, then only counted.
    expect(lines.length, 'log lines').to.be.at.most(100);
    expect(lines.some((l) => /further bad input is not logged/.test(l))).to.equal(true);

    clients.splice(0).forEach((c) => c.close());
    // Connections still queued in the kernel are accepted, seen closed and dropped: bounded, not instant.
    for (let i = 0; i < 500 && srv.stats().connections > 0; i++) await new Promise((r) => setTimeout(r, 20));
    const after = srv.stats();
    expect(after.connections, 'connections after the fuzz').to.equal(0);
    // What hostile clients held is freed with them; what they put is capped.
    expect(process.memoryUsage().heapUsed - heapBefore, 'heap growth').to.be.below(96 * 1024 * 1024);
  });

  it('closes clients that dribble a line byte by byte before the line is done', async () => {
    // One byte every 100 ms against a line timeout of LINE_MS: a one-byte-per-second client, quicker.
    const unidentified = await Raw.open(port);
    const identified = await Raw.open(port);
    await identified.send('cmd=initack pmiid=2\n');
    expect(await identified.waitFor(/cmd=set rank=2/)).to.equal(true);
    const dribble = async (c: Raw, line: string) => {
      const t0 = performance.now();
      for (const ch of line) {
        if (c.closed) break;
        await c.send(ch);
        await new Promise((r) => setTimeout(r, 100));
      }
      return { closed: c.closed, after: performance.now() - t0 };
    };
    const [a, b] = await Promise.all([dribble(unidentified, 'cmd=initack pmiid=3\n'), dribble(identified, 'cmd=get_maxes\n')]);
    expect(a.closed && b.closed, 'both closed').to.equal(true);
    expect(a.after, 'closed before its line was done').to.be.below(2000);
    expect(b.after, 'closed before its line was done').to.be.below(1400);
    expect(unidentified.received).to.not.match(/cmd=set rank=3/);
    expect(identified.received).to.not.match(/cmd=maxes/);
    bounded(srv.stats());
    for (let i = 0; i < 100 && srv.stats().connections > 0; i++) await new Promise((r) => setTimeout(r, 20));
    expect(srv.stats().ranks, 'no rank held').to.equal(0);
  });

  it('closes a client that never reads its replies once it owes more than the cap', async () => {
    const c = await Raw.open(port, { read: false });
    await c.send(`cmd=initack pmiid=1\ncmd=put kvsname=${srv.kvsname} key=big value=${'v'.repeat(1024)}\n`);
    // Each get is answered with the 1 KiB value; the kernel's socket buffers take megabytes first.
    const burst = Buffer.from(`cmd=get kvsname=${srv.kvsname} key=big\n`.repeat(1000), 'latin1');
    let peak = 0;
    for (let i = 0; i < 200 && !c.closed; i++) {
      await Promise.race([c.send(burst), new Promise((r) => setTimeout(r, 100))]);
      peak = Math.max(peak, srv.stats().unreadReplyBytes);
    }
    for (let i = 0; i < 100 && !c.closed; i++) await new Promise((r) => setTimeout(r, 20));
    expect(c.closed, 'closed by the server').to.equal(true);
    expect(peak, 'unread reply bytes held').to.be.at.most(MAX_UNREAD_REPLIES + 64 * 1024);
    c.close();
    for (let i = 0; i < 100 && srv.stats().connections > 0; i++) await new Promise((r) => setTimeout(r, 20));
  });

  it('still serves a legitimate job afterwards', async () => {
    const probe = await Raw.open(port);
    await probe.send('cmd=get_maxes\n');
    expect(await probe.waitFor(/cmd=maxes kvsname_max=\d+/)).to.equal(true);
    probe.close();
    // Stray clients claimed ranks and entered barriers above; the real ranks count afresh.
    const { done, kill } = runRanks(srv, program('pmi-hello'), [0, 1, 2, 3]);
    // Bounded: were the job to hang, the ranks are killed and the codes below say so.
    const timer = setTimeout(kill, 60_000);
    const results = await done;
    clearTimeout(timer);
    expect(results.map((r) => r.code)).to.deep.equal([0, 0, 0, 0]);
    expect(results.map((r) => r.stdout.trim()).sort()).to.deep.equal([0, 1, 2, 3].map((r) => `pmi-hello rank ${r} of ${SIZE} appnum 0 universe ${SIZE}`));
  });

  it('fails a job one of whose ranks a stray client holds, with one line naming the rank', async () => {
    const fresh = capturingLog();
    const job = new PmiServer({ size: 2, processMapping: processMapping(placeRanks(2, 1, 2, 'block')), log: fresh.log, handshakeTimeoutMs: HANDSHAKE_MS, lineTimeoutMs: LINE_MS });
    const jobPort = await job.listen('127.0.0.1');
    const squatter = await Raw.open(jobPort);
    await squatter.send('cmd=initack pmiid=1\n');
    expect(await squatter.waitFor(/cmd=set rank=1/)).to.equal(true);
    const { done, kill } = runRanks(job, program('pmi-hello'), [0, 1]);
    // Rank 1 is refused and MPICH ends it; rank 0 would wait in MPI_Init's first barrier, as under
    // any process manager, until the launcher's exit policy stops the job (here: the test).
    const deadline = Date.now() + 20_000;
    while (!fresh.lines.some((l) => /claims rank 1/.test(l)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 300));
    kill();
    const results = await done;
    squatter.close();
    await job.close();
    expect(results[1]!.code, 'the refused rank failed').to.not.equal(0);
    const told = fresh.lines.filter((l) => /rank 1/.test(l) && /claims/.test(l));
    expect(told, fresh.lines.join('\n')).to.have.length(1);
  });
});
