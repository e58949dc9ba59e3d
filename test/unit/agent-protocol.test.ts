/**
 * The agent protocol's two codecs against each other: frames encoded by the TypeScript side
 * (src/providers/vm/agent/protocol.ts) are decoded by the C side (native/proto/agent.c, the code the
 * guest agent runs, through native/build/proto-codec), and the reverse. Then the agent itself, run
 * on this host with --control-fd (no VM, no root), is driven through the TypeScript codec.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import type { Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import {
  AGENT_VERSION,
  decodeExit,
  decodeHello,
  encodeExec,
  encodeFrame,
  encodeHeader,
  encodeIdent,
  encodeStdin,
  FrameDecoder,
  FrameType,
  GUEST_STREAM,
  HELLO_PAYLOAD,
  IDENT_KEYS,
  MAX_PAYLOAD,
  ProtocolError,
  type ExecRequest,
  type Frame,
  type FrameTypeName,
} from '../../src/providers/vm/agent/protocol.js';

const nativeDir = join(resolve(dirname(fileURLToPath(import.meta.url)), '..', '..'), 'native');
const codecBin = join(nativeDir, 'build', 'proto-codec');
const agentBin = join(nativeDir, 'build', 'agent');

const hex = (b: Buffer | string): string => (b.length ? Buffer.from(b).toString('hex') : '-');
const unhex = (s: string): Buffer => (s === '-' ? Buffer.alloc(0) : Buffer.from(s, 'hex'));
const names = Object.keys(FrameType) as FrameTypeName[];

interface Decoded {
  lines: string[];
  status: number | null;
  stderr: string;
}

/** The C side decodes binary frames into text lines. */
function cDecode(input: Buffer): Decoded {
  const r = spawnSync(codecBin, ['decode'], { input, maxBuffer: 256 << 20 });
  return { lines: r.stdout.toString('latin1').split('\n').filter(Boolean), status: r.status, stderr: r.stderr.toString() };
}

/** The C side encodes text lines into binary frames. */
function cEncode(lines: string[]): Buffer {
  return execFileSync(codecBin, ['encode'], { input: lines.join('\n') + '\n', maxBuffer: 256 << 20 });
}

function tsDecodeAll(bytes: Buffer): { frames: Frame[]; pending: number } {
  const d = new FrameDecoder();
  const frames = d.push(bytes);
  return { frames, pending: d.pending() };
}

/** What proto-codec prints for an EXEC request that the agent accepts. */
function execLine(r: ExecRequest): string {
  const list = (xs: Array<string | Buffer>) => (xs.length ? xs.map(hex).join(',') : '-');
  const env = Array.isArray(r.env) ? r.env : Object.entries(r.env).map(([k, v]) => `${k}=${v}`);
  return `exec ${r.stdin ? 'stdin' : 'nostdin'} ${hex(r.cwd)} ${list(r.argv)} ${list(env)}`;
}

describe('agent protocol: the TypeScript and C codecs agree', function () {
  this.timeout(60_000);
  before(() => execFileSync('make', ['-s', '-C', nativeDir, 'build/proto-codec', 'build/agent'], { stdio: 'inherit' }));

  describe('TypeScript encodes, C decodes', () => {
    it('every frame type, by the same number and name, with empty and non-empty payloads', () => {
      const input = Buffer.concat(names.flatMap((n) => [encodeFrame(FrameType[n], 7), encodeFrame(FrameType[n], 8, `payload of ${n}`)]));
      const frames = cDecode(input).lines.filter((l) => l.startsWith('frame '));
      expect(frames).to.deep.equal(names.flatMap((n) => [`frame ${n} 7 -`, `frame ${n} 8 ${hex(`payload of ${n}`)}`]));
    });

    it('stream ids 0 and 2^32-1, and a type the protocol does not have', () => {
      const input = Buffer.concat([encodeFrame(FrameType.STDOUT, 0, 'a'), encodeFrame(FrameType.STDERR, 0xffffffff, 'b'), encodeFrame(200, 5)]);
      expect(cDecode(input).lines).to.deep.equal([`frame STDOUT 0 ${hex('a')}`, `frame STDERR 4294967295 ${hex('b')}`, 'frame 200 5 -']);
    });

    it('a payload of exactly the largest size; a larger one is refused by both, and C skips it and stays in step', () => {
      const big = Buffer.alloc(MAX_PAYLOAD, 0xa5);
      expect(cDecode(encodeFrame(FrameType.STDIN, 3, big)).lines).to.deep.equal([`frame STDIN 3 ${hex(big)}`]);
      expect(() => encodeFrame(FrameType.STDIN, 3, Buffer.alloc(MAX_PAYLOAD + 1))).to.throw(RangeError);
      const tooLong = Buffer.concat([encodeHeader({ length: MAX_PAYLOAD + 1, type: FrameType.EXEC, sid: 4 }), Buffer.alloc(MAX_PAYLOAD + 1, 1)]);
      const r = cDecode(Buffer.concat([tooLong, encodeFrame(FrameType.KILL, 4, '9')]));
      expect(r.lines).to.deep.equal([`refused 4 ${MAX_PAYLOAD + 1} too-long`, `frame KILL 4 ${hex('9')}`]);
      expect(r.status).to.equal(0);
    });

    it('STDIN larger than one frame as several frames, and empty STDIN as the end of input', () => {
      const data = Buffer.alloc(MAX_PAYLOAD * 2 + 10, 0x41);
      const lines = cDecode(Buffer.concat([encodeStdin(9, data), encodeStdin(9, Buffer.alloc(0))])).lines;
      expect(lines.map((l) => l.split(' ').slice(0, 3).join(' '))).to.deep.equal(Array(4).fill('frame STDIN 9'));
      expect(Buffer.concat(lines.map((l) => unhex(l.split(' ')[3]!)))).to.deep.equal(data);
      expect(lines[3]).to.equal('frame STDIN 9 -');
    });

    const odd: Array<[string, ExecRequest]> = [
      ['a plain command', { argv: ['true'], env: { PATH: '/bin' }, cwd: '/', stdin: false }],
      ['an empty environment', { argv: ['env'], env: {}, cwd: '/tmp', stdin: true }],
      [
        'spaces, quotes, newlines, tabs, = and non-ASCII text',
        {
          argv: ['sh', '-c', 'echo "$1" \'$2\'\n\texit 3', 'ünïcødé ✓', 'a=b=c', ' leading', 'trailing ', '$HOME', '--'],
          env: { ODD: 'x=y\nz\t"q"', EMPTY: '', 'WITH-DASH': '1', UNI: 'ö' },
          cwd: '/tmp/a dir/with "quotes"',
          stdin: true,
        },
      ],
      [
        'bytes that are not UTF-8',
        {
          argv: [Buffer.from([0xff, 0xfe, 0x80, 0x01]), Buffer.from([0xc3, 0x28]), Buffer.from([0x7f, 0x1b, 0x5b, 0x41])],
          env: [Buffer.from([0x41, 0x3d, 0xff, 0x00].slice(0, 3))],
          cwd: Buffer.from([0x2f, 0xe9]),
          stdin: false,
        },
      ],
      ['a long argument and many', { argv: ['x'.repeat(200_000), ...Array.from({ length: 3000 }, (_, i) => `arg${i}`)], env: { A: 'b'.repeat(100_000) }, cwd: '/', stdin: false }],
    ];
    for (const [what, req] of odd) {
      it(`an EXEC payload with ${what}, as the agent reads it`, () => {
        const lines = cDecode(encodeFrame(FrameType.EXEC, 11, encodeExec(req))).lines;
        expect(lines).to.have.length(2);
        expect(lines[1]).to.equal(execLine(req));
      });
    }

    it('refuses, in TypeScript, what the EXEC layout cannot carry', () => {
      const ok: ExecRequest = { argv: ['a'], env: {}, cwd: '/', stdin: false };
      expect(() => encodeExec({ ...ok, argv: [] })).to.throw(RangeError, /argv is empty/);
      expect(() => encodeExec({ ...ok, argv: ['a', ''] })).to.throw(RangeError, /argv\[1\] is empty/);
      expect(() => encodeExec({ ...ok, argv: ['a\0b'] })).to.throw(RangeError, /NUL/);
      expect(() => encodeExec({ ...ok, env: ['A=1', ''] })).to.throw(RangeError, /environment element 1 is empty/);
      expect(() => encodeExec({ ...ok, env: { 'A=B': '1' } })).to.throw(RangeError, /contains '='/);
      expect(() => encodeExec({ ...ok, cwd: '' })).to.throw(RangeError, /working directory is empty/);
    });

    it('refuses, in C, EXEC payloads that break the layout (the old encoder with an empty environment among them)', () => {
      const bad: Array<[string, string]> = [
        ['a\0\0\0\0/\0stdin\0', 'no working directory'],
        ['a\0b', 'argv is not terminated'],
        ['\0\0/\0stdin\0', 'empty argv'],
        ['a\0\0E=1\0', 'the environment is not terminated'],
        ['a\0\0\0/\0', 'no stdin mode'],
        ['a\0\0\0/\0maybe\0', 'bad stdin mode'],
        ['a\0\0\0/\0stdin\0junk', 'bytes after the stdin mode'],
        ['', 'argv is not terminated'],
      ];
      const lines = cDecode(Buffer.concat(bad.map(([p], i) => encodeFrame(FrameType.EXEC, i + 1, Buffer.from(p, 'latin1'))))).lines;
      expect(lines.filter((l) => l.startsWith('exec'))).to.deep.equal(bad.map(([, why]) => `exec-invalid ${why}`));
    });

    it('every IDENT key, with values as the agent reads them; unknown keys ignored', () => {
      const fields = { id: '3', addr: '10.233.0.13/24', gw: '10.233.0.1', mac: '52:54:00:12:34:56', hostname: 'sfnc0001-3',
        time: '1796167194.000000001', entropy: 'ab'.repeat(64), hosts: '10.233.0.10 a|10.233.0.11 b', ssh: '1', mtu: '1450' };
      expect(Object.keys(fields)).to.deep.equal([...IDENT_KEYS]);
      const lines = cDecode(Buffer.concat([encodeFrame(FrameType.IDENT, GUEST_STREAM, encodeIdent(fields)),
        encodeFrame(FrameType.IDENT, GUEST_STREAM, 'color=blue\nhostname=x=y\nnot a pair\n')])).lines;
      expect(lines.filter((l) => l.startsWith('ident'))).to.deep.equal([
        ...IDENT_KEYS.map((k) => `ident ${k} ${hex(fields[k])}`),
        `ident hostname ${hex('x=y')}`,
      ]);
      expect(() => encodeIdent({ hostname: 'a\nb' })).to.throw(RangeError);
    });

    it('truncated input: C says how many bytes were cut off and fails', () => {
      const whole = encodeFrame(FrameType.STDOUT, 2, 'complete');
      const cut = encodeFrame(FrameType.STDOUT, 2, 'cut short').subarray(0, 12);
      let r = cDecode(Buffer.concat([whole, cut]));
      expect(r.lines).to.deep.equal([`frame STDOUT 2 ${hex('complete')}`, 'truncated 12']);
      expect(r.status).to.equal(1);
      r = cDecode(Buffer.concat([whole, whole.subarray(0, 5)]));
      expect(r.lines.at(-1)).to.equal('truncated 5');
      expect(cDecode(Buffer.alloc(0))).to.deep.include({ lines: [], status: 0 });
    });
  });

  describe('C encodes, TypeScript decodes', () => {
    it('every frame type, by the same number, with empty and non-empty payloads', () => {
      const bytes = cEncode(names.flatMap((n) => [`frame ${n} 7 -`, `frame ${FrameType[n]} 8 ${hex(n)}`]));
      const { frames, pending } = tsDecodeAll(bytes);
      expect(pending).to.equal(0);
      expect(frames).to.deep.equal(names.flatMap((n) => [
        { type: FrameType[n], sid: 7, payload: Buffer.alloc(0) },
        { type: FrameType[n], sid: 8, payload: Buffer.from(n) },
      ]));
    });

    it("the agent's HELLO announces the version this host speaks", () => {
      const [hello] = tsDecodeAll(cEncode(['hello'])).frames;
      expect(hello).to.deep.include({ type: FrameType.HELLO, sid: GUEST_STREAM });
      expect(hello!.payload.toString()).to.equal(HELLO_PAYLOAD);
      expect(decodeHello(hello!.payload)).to.equal(AGENT_VERSION);
      expect(decodeHello(Buffer.from('snowflock-agent 1'))).to.equal(null);
    });

    it("the agent's EXIT payloads, exit codes and signals", () => {
      const codes = [0, 1, 3, 127, 255];
      const signals = [1, 2, 9, 15, 31, 64];
      const { frames } = tsDecodeAll(cEncode([...codes.map((c) => `exit 5 code ${c}`), ...signals.map((s) => `exit 6 signal ${s}`)]));
      expect(frames.map((f) => [f.type, f.sid, decodeExit(f.payload)])).to.deep.equal([
        ...codes.map((code) => [FrameType.EXIT, 5, { code, signal: null }]),
        ...signals.map((signal) => [FrameType.EXIT, 6, { code: null, signal }]),
      ]);
      for (const bad of ['code', 'code -1', 'code 256', 'signal 0', 'exited 3', 'code 3\n']) expect(() => decodeExit(Buffer.from(bad))).to.throw(ProtocolError);
    });

    it('a payload of exactly the largest size, and byte-by-byte input giving the same frames', () => {
      const big = Buffer.alloc(MAX_PAYLOAD, 0x5a);
      const bytes = cEncode([`frame STDOUT 1 ${hex(big)}`, 'frame STDERR 2 -', `frame STDOUT 3 ${hex(Buffer.from([0, 1, 2, 0xff]))}`]);
      const whole = tsDecodeAll(bytes).frames;
      expect(whole.map((f) => f.payload.length)).to.deep.equal([MAX_PAYLOAD, 0, 4]);
      expect(whole[0]!.payload.equals(big)).to.equal(true);
      const small = bytes.subarray(MAX_PAYLOAD + 9);
      const d = new FrameDecoder();
      const pieces: Frame[] = [];
      for (let i = 0; i < small.length; i++) pieces.push(...d.push(small.subarray(i, i + 1)));
      expect(pieces).to.deep.equal(whole.slice(1));
    });

    it('truncated input: the decoder holds the bytes and returns no frame; too long a frame is a ProtocolError', () => {
      const { frames, pending } = tsDecodeAll(cEncode(['frame KILL 4 3135', 'header 100 STDOUT 5']));
      expect(frames).to.have.length(1);
      expect(pending).to.equal(9);
      expect(() => new FrameDecoder().push(cEncode([`header ${MAX_PAYLOAD + 1} STDOUT 5`]))).to.throw(ProtocolError, /exceeds/);
    });

    it('proto-codec refuses a line it cannot encode, with one line and status 2', () => {
      const r = spawnSync(codecBin, ['encode'], { input: 'frame EXEC 1 -\nframe NOPE 1 -\n' });
      expect(r.status).to.equal(2);
      expect(r.stderr.toString().trim().split('\n')).to.deep.equal(['proto-codec: line 2: not a frame description (see the usage in native/proto/codec.c)']);
    });
  });

  describe('the agent itself (on this host: --control-fd, no VM)', () => {
    let agent: ChildProcess;
    let channel: Socket;
    const decoder = new FrameDecoder();
    const got: Frame[] = [];
    let wake: () => void = () => undefined;
    let stderr = '';

    before(() => {
      agent = spawn(agentBin, ['--control-fd', '3'], { stdio: ['ignore', 'ignore', 'pipe', 'pipe'] });
      agent.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      channel = agent.stdio[3] as Socket;
      channel.on('data', (d: Buffer) => {
        got.push(...decoder.push(d));
        wake();
      });
    });
    after(() => agent.kill('SIGKILL'));

    /** Frames of stream sid up to and including the first frame of type `until`. */
    async function until(sid: number, type: number): Promise<Frame[]> {
      for (;;) {
        const i = got.findIndex((f) => f.sid === sid && f.type === type);
        if (i >= 0) {
          const mine = got.filter((f, j) => f.sid === sid && j <= i);
          for (let j = got.length - 1; j >= 0; j--) if (got[j]!.sid === sid && j <= i) got.splice(j, 1);
          return mine;
        }
        await new Promise<void>((r) => (wake = r));
      }
    }
    const send = (type: number, sid: number, payload?: Buffer | string) => channel.write(encodeFrame(type, sid, payload));
    const out = (fs: Frame[], type: number) => Buffer.concat(fs.filter((f) => f.type === type).map((f) => f.payload));

    it('says HELLO with its version', async () => {
      const [hello] = await until(GUEST_STREAM, FrameType.HELLO);
      expect(decodeHello(hello!.payload)).to.equal(AGENT_VERSION);
    });

    it('runs a process with odd arguments, environment and working directory, and reports its exit', async () => {
      const args = [Buffer.from([0xff, 0x20, 0x0a]), Buffer.from('a=b "c"'), Buffer.from(' ')];
      send(FrameType.EXEC, 21, encodeExec({ argv: ['sh', '-c', 'printf "%s\\0" "$@"; printf "%s|" "$ODD" "$PWD" >&2; exit 3', 'sh', ...args],
        env: { ODD: 'x=y\nz', PATH: '/usr/bin:/bin' }, cwd: '/tmp', stdin: false }));
      const fs = await until(21, FrameType.EXIT);
      expect(fs[0]!.type).to.equal(FrameType.STARTED);
      expect(out(fs, FrameType.STDOUT)).to.deep.equal(Buffer.concat(args.flatMap((a) => [a, Buffer.alloc(1)])));
      expect(out(fs, FrameType.STDERR).toString()).to.equal('x=y\nz|/tmp|');
      expect(decodeExit(fs.at(-1)!.payload)).to.deep.equal({ code: 3, signal: null });
    });

    it('passes STDIN through (more than one frame of it) and ends it on an empty frame', async () => {
      const data = Buffer.alloc(MAX_PAYLOAD + 12345);
      for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
      send(FrameType.EXEC, 22, encodeExec({ argv: ['cat'], env: { PATH: '/usr/bin:/bin' }, cwd: '/', stdin: true }));
      channel.write(encodeStdin(22, data));
      channel.write(encodeStdin(22, Buffer.alloc(0)));
      const fs = await until(22, FrameType.EXIT);
      expect(out(fs, FrameType.STDOUT).equals(data)).to.equal(true);
      expect(decodeExit(fs.at(-1)!.payload)).to.deep.equal({ code: 0, signal: null });
    });

    it('delivers KILL, and reports the signal', async () => {
      send(FrameType.EXEC, 23, encodeExec({ argv: ['sleep', '30'], env: { PATH: '/usr/bin:/bin' }, cwd: '/', stdin: false }));
      await until(23, FrameType.STARTED);
      send(FrameType.KILL, 23, '15');
      const fs = await until(23, FrameType.EXIT);
      expect(decodeExit(fs.at(-1)!.payload)).to.deep.equal({ code: null, signal: 15 });
    });

    it('answers FAILED, as the last frame of the stream, for a missing program, a bad EXEC, a frame too long', async () => {
      send(FrameType.EXEC, 24, encodeExec({ argv: ['/no/such/program'], env: {}, cwd: '/', stdin: false }));
      send(FrameType.EXEC, 25, Buffer.from('a\0\0\0\0/\0stdin\0', 'latin1'));
      channel.write(Buffer.concat([encodeHeader({ length: MAX_PAYLOAD + 1, type: FrameType.EXEC, sid: 26 }), Buffer.alloc(MAX_PAYLOAD + 1)]));
      send(FrameType.EXEC, 27, encodeExec({ argv: ['true'], env: { PATH: '/usr/bin:/bin' }, cwd: '/', stdin: false }));
      const after = await until(27, FrameType.EXIT);
      expect(decodeExit(after.at(-1)!.payload)).to.deep.equal({ code: 0, signal: null });
      const failed = (sid: number) => got.filter((f) => f.sid === sid).map((f) => [frameName(f.type), f.payload.toString()]);
      expect(failed(24)).to.deep.equal([['FAILED', 'cannot run /no/such/program: No such file or directory']]);
      expect(failed(25)).to.deep.equal([['FAILED', 'bad EXEC: no working directory']]);
      expect(failed(26)).to.deep.equal([['FAILED', `EXEC refused: ${MAX_PAYLOAD + 1} bytes: longer than the protocol allows`]]);
    });

    it('refuses an identity on a host', async () => {
      send(FrameType.IDENT, GUEST_STREAM, encodeIdent({ hostname: 'must-not-rename-this-host' }));
      const [f] = await until(GUEST_STREAM, FrameType.FAILED);
      expect(f!.payload.toString()).to.match(/identity refused/);
    });

    it('ends when the channel closes, cleanly', async () => {
      const exited = new Promise<number | null>((r) => agent.once('exit', (code) => r(code)));
      channel.end();
      expect(await exited).to.equal(0);
      expect(stderr).to.not.match(/AddressSanitizer|runtime error/);
    });
  });
});

function frameName(type: number): string {
  return names.find((n) => FrameType[n] === type) ?? String(type);
}
