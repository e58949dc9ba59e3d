/**
 * The two codecs of the sf-pmix protocol agree: every message type of launcher/pmix/protocol.ts,
 * with values at the edges of every field kind, goes through the C codec (`sf-pmix --echo`
 * decodes each frame and encodes it back) and comes back equal. Malformed frames get an ERROR
 * from the C side; a launcher of another version is refused by the server, a server of another
 * version by the driver.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { ALL_RANKS, FrameReader, PROTOCOL_VERSION, ProtocolError, encode, messages, type Message, type MessageName } from '../../launcher/pmix/protocol.js';
import { PmixServer } from '../../launcher/pmix/server.js';
import { sanitizerEnv, serverBinary } from './pmix-harness.js';

type Kind = (typeof messages)[MessageName]['fields'][number][1];

/** A value of each kind: 'edge' at the limits (max integers, non-ASCII, NUL-free bytes with 0s), 'empty' at the bottom. */
function sample(kind: Kind, flavour: 'edge' | 'empty'): unknown {
  const edge = flavour === 'edge';
  if (typeof kind === 'object') {
    const one = () => Object.fromEntries(kind.list.map(([n, k]) => [n, sample(k, flavour)]));
    return edge ? [one(), one()] : [];
  }
  switch (kind) {
    case 'u8': return edge ? 255 : 0;
    case 'u32': return edge ? 0xffffffff : 0;
    case 'i32': return edge ? -0x80000000 : 0;
    case 'str': return edge ? 'sfpx-n0 ünïcödé ✓ "quoted" \\ \n' : '';
    case 'bytes': return edge ? Buffer.from(Array.from({ length: 300 }, (_, i) => i % 256)) : Buffer.alloc(0);
    case 'u32s': return edge ? [0, 1, ALL_RANKS, 0xffffffff] : [];
    case 'strs': return edge ? ['PMIX_RANK=3', '', 'A=B=C'] : [];
  }
}

function messageOf(name: MessageName, flavour: 'edge' | 'empty'): Message {
  const fields = Object.fromEntries(messages[name].fields.map(([n, k]) => [n, sample(k as Kind, flavour)]));
  return { type: name, ...fields } as Message;
}

/** Writes frames to `sf-pmix --echo` and collects what it sends back until it exits. */
async function echo(frames: Buffer[], sanitized = false): Promise<{ messages: Message[]; code: number | null; stderr: string }> {
  const child = spawn(serverBinary(sanitized), ['--echo'], { stdio: ['pipe', 'pipe', 'pipe'], env: sanitized ? sanitizerEnv() : process.env });
  const reader = new FrameReader();
  const got: Message[] = [];
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => got.push(...reader.push(b)));
  child.stderr.on('data', (b) => (stderr += b));
  for (const f of frames) child.stdin.write(f);
  child.stdin.end();
  const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
  return { messages: got, code, stderr };
}

/** A frame with an arbitrary body (for malformed ones). */
function rawFrame(body: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32LE(body.length);
  return Buffer.concat([len, body]);
}

describe('sf-pmix protocol: the TypeScript and C codecs', function () {
  this.timeout(60_000);
  const names = Object.keys(messages) as MessageName[];

  for (const sanitized of [false, true]) {
    it(`round-trips every message type, at the edges and empty${sanitized ? ' (ASan, UBSan)' : ''}`, async () => {
      const sent = names.flatMap((n) => [messageOf(n, 'edge'), messageOf(n, 'empty')]);
      const { messages: back, code, stderr } = await echo(sent.map(encode), sanitized);
      expect(stderr).to.equal('');
      expect(code).to.equal(0);
      expect(back).to.deep.equal(sent);
    });
  }

  it('the C side knows exactly the types of the TypeScript table', async () => {
    const known = new Set<number>(names.map((n) => messages[n].type));
    const unknown = Array.from({ length: 256 }, (_, t) => t).filter((t) => !known.has(t));
    const { messages: back } = await echo(unknown.map((t) => rawFrame(Buffer.from([t]))));
    expect(back).to.have.length(unknown.length);
    for (const m of back) expect(m).to.deep.include({ type: 'ERROR' });
    expect((back[0] as { message: string }).message).to.match(/^protocol: unknown message type/);
  });

  for (const sanitized of [false, true]) it(`answers a malformed frame with ERROR and reads on${sanitized ? ' (ASan, UBSan)' : ''}`, async () => {
    const body = encode(messageOf('HELLO', 'edge')).subarray(4);
    const connected = encode(messageOf('CONNECTED', 'edge')).subarray(4);
    const withNul = encode({ type: 'ERROR', message: 'x' });
    withNul[withNul.length - 1] = 0;
    const cases: [Buffer, RegExp][] = [
      [rawFrame(connected.subarray(0, connected.length - 2)), /message ends inside a field/],
      [rawFrame(body.subarray(0, body.length - 2)), /count larger than the message/],
      [rawFrame(Buffer.concat([body, Buffer.from([7])])), /bytes left over after the last field/],
      [rawFrame(Buffer.from([messages.ENV.type, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x0f])), /count larger than the message/],
      [withNul, /string contains a NUL byte/],
      [rawFrame(Buffer.alloc(0)), /empty message/],
    ];
    const ok = encode(messageOf('CONNECTED', 'edge'));
    const { messages: back, code, stderr } = await echo([...cases.map((c) => c[0]), ok], sanitized);
    expect(back.map((m) => m.type)).to.deep.equal([...cases.map(() => 'ERROR'), 'CONNECTED']);
    cases.forEach(([, why], i) => expect((back[i] as { message: string }).message).to.match(why));
    expect(stderr).to.not.match(/Sanitizer|runtime error/);
    expect(code).to.equal(0);
  });

  it('gives up on a frame longer than the protocol allows', async () => {
    const huge = Buffer.alloc(4);
    huge.writeUInt32LE(0xffffffff);
    const { messages: back, code } = await echo([huge, encode(messageOf('CONNECTED', 'edge'))]);
    expect(back).to.have.length(1);
    expect(back[0]).to.deep.include({ type: 'ERROR' });
    expect(code).to.equal(2);
  });

  it('refuses to encode what the wire cannot carry', () => {
    expect(() => encode({ type: 'CONNECTED', rank: -1 })).to.throw(ProtocolError, /CONNECTED.rank: -1 is not a u32/);
    expect(() => encode({ type: 'ABORT', rank: 0, status: 2 ** 31, message: '', targets: [] })).to.throw(ProtocolError, /not an i32/);
    expect(() => encode({ type: 'ERROR', message: 'a\0b' })).to.throw(ProtocolError, /NUL/);
  });

  it('the server refuses a launcher of another protocol version', async () => {
    const child = spawn(serverBinary(), [], { stdio: ['pipe', 'pipe', 'pipe'] });
    const reader = new FrameReader();
    const got: Message[] = [];
    child.stdout.on('data', (b: Buffer) => got.push(...reader.push(b)));
    child.stderr.resume();
    child.stdin.end(encode({ type: 'HELLO', version: PROTOCOL_VERSION + 1, listen: '127.0.0.1', handshakeMs: 1000, tmpdir: '', shareTopology: 0 }));
    const code = await new Promise((resolve) => child.on('close', resolve));
    expect(code).to.equal(2);
    expect(got).to.have.length(1);
    expect(got[0]).to.deep.equal({
      type: 'ERROR',
      message: `protocol: the launcher speaks version ${PROTOCOL_VERSION + 1}, this sf-pmix speaks ${PROTOCOL_VERSION}: rebuild both from one tree (make -C native)`,
    });
  });

  it('the driver refuses a server of another protocol version', async () => {
    // A stand-in server that answers HELLO with a READY of the next version: the real one cannot
    // be made to, and this checks the driver's side of the handshake.
    const dir = mkdtempSync(join(tmpdir(), 'sfpx-fake-'));
    const fake = join(dir, 'fake-sf-pmix');
    writeFileSync(
      join(dir, 'fake.mts'),
      [
        `import { encode, FrameReader, PROTOCOL_VERSION } from ${JSON.stringify(join(import.meta.dirname, '../../launcher/pmix/protocol.ts'))};`,
        `const r = new FrameReader();`,
        `process.stdin.on('data', (b) => { for (const m of r.push(b)) if (m.type === 'HELLO') process.stdout.write(encode({ type: 'READY', version: PROTOCOL_VERSION + 1, pid: process.pid, uri: 'x' })); });`,
      ].join('\n'),
    );
    writeFileSync(fake, `#!/bin/sh\nexec "${process.execPath}" --import tsx "${join(dir, 'fake.mts')}"\n`, { mode: 0o755 });
    try {
      await PmixServer.start({ listen: '127.0.0.1', binary: fake });
      expect.fail('started');
    } catch (e) {
      expect((e as Error).message).to.equal(`${fake} speaks protocol version ${PROTOCOL_VERSION + 1}, this launcher ${PROTOCOL_VERSION}: rebuild both from one tree (npm run build)`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
