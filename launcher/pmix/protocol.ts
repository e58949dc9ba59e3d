/**
 * The sf-pmix protocol, the TypeScript side: one table mirroring native/pmix/protocol.h (its
 * header comment is the definition, the schema in native/pmix/protocol.c the C side's table),
 * message by message and field by field in wire order. Field names are the C names in camelCase.
 * test/system/pmix-protocol.test.ts round-trips every message through the C codec.
 *
 * Frame: u32 body length (LE) | u8 type | fields. u8/u32/i32 fixed width (LE); str and bytes:
 * u32 length | bytes; u32s/strs/list: u32 count | elements.
 */

/** Bumped with any change to the table below; HELLO and READY carry it and both sides check. */
export const PROTOCOL_VERSION = 1;
/** A frame body is at most this long (the C side refuses longer ones). */
export const MAX_FRAME = 64 << 20;
/** PMIx's rank wildcard: "every rank of the job" in participants and targets. */
export const ALL_RANKS = 0xfffffffe;

type Scalar = 'u8' | 'u32' | 'i32' | 'str' | 'bytes' | 'u32s' | 'strs';
type Kind = Scalar | { readonly list: Shape };
type Shape = readonly (readonly [string, Kind])[];

const node = [['hostname', 'str'], ['ranks', 'u32s']] as const;

/** The table of protocol.h. Launcher -> server below 64, server -> launcher from 64. */
export const messages = {
  HELLO: { type: 1, fields: [['version', 'u32'], ['listen', 'str'], ['handshakeMs', 'u32'], ['tmpdir', 'str'], ['shareTopology', 'u8']] },
  JOB: { type: 2, fields: [['nspace', 'str'], ['nodes', { list: node }], ['appnums', 'u32s'], ['localNodes', 'u32s']] },
  ENV_REQ: { type: 3, fields: [['rank', 'u32']] },
  FENCE_DONE: { type: 4, fields: [['seq', 'u32'], ['ok', 'u8'], ['data', 'bytes']] },
  SHUTDOWN: { type: 5, fields: [] },
  READY: { type: 64, fields: [['version', 'u32'], ['pid', 'u32'], ['uri', 'str']] },
  JOB_OK: { type: 65, fields: [['nspace', 'str'], ['localRanks', 'u32s']] },
  ENV: { type: 66, fields: [['rank', 'u32'], ['vars', 'strs']] },
  CONNECTED: { type: 67, fields: [['rank', 'u32']] },
  FINALIZED: { type: 68, fields: [['rank', 'u32']] },
  DISCONNECTED: { type: 69, fields: [['rank', 'u32']] },
  ABORT: { type: 70, fields: [['rank', 'u32'], ['status', 'i32'], ['message', 'str'], ['targets', 'u32s']] },
  FENCE: { type: 71, fields: [['seq', 'u32'], ['participants', 'u32s'], ['data', 'bytes']] },
  FENCE_LOCAL: { type: 72, fields: [['seq', 'u32'], ['participants', 'u32s'], ['nbytes', 'u32']] },
  UNSUPPORTED: { type: 73, fields: [['rank', 'u32'], ['call', 'str']] },
  ERROR: { type: 74, fields: [['message', 'str']] },
} as const satisfies Record<string, { type: number; fields: Shape }>;

type ValueOf<K> = K extends 'u8' | 'u32' | 'i32'
  ? number
  : K extends 'str'
    ? string
    : K extends 'bytes'
      ? Buffer
      : K extends 'u32s'
        ? number[]
        : K extends 'strs'
          ? string[]
          : K extends { readonly list: infer S extends Shape }
            ? ShapeValue<S>[]
            : never;
type ShapeValue<S extends Shape> = { -readonly [F in S[number] as F[0]]: ValueOf<F[1]> };

export type MessageName = keyof typeof messages;
/** A message as the codec reads and writes it: its name and its fields. */
export type Message = { [N in MessageName]: { type: N } & ShapeValue<(typeof messages)[N]['fields']> }[MessageName];
export type MessageOf<N extends MessageName> = Extract<Message, { type: N }>;

const byType = new Map<number, MessageName>(Object.entries(messages).map(([name, m]) => [m.type, name as MessageName]));

export class ProtocolError extends Error {}

// ---- encoding ----

class Writer {
  private chunks: Buffer[] = [];
  length = 0;
  private push(b: Buffer): void {
    this.chunks.push(b);
    this.length += b.length;
  }
  u8(v: number, what: string): void {
    if (!Number.isInteger(v) || v < 0 || v > 0xff) throw new ProtocolError(`${what}: ${v} is not a u8`);
    this.push(Buffer.from([v]));
  }
  u32(v: number, what: string): void {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) throw new ProtocolError(`${what}: ${v} is not a u32`);
    const b = Buffer.alloc(4);
    b.writeUInt32LE(v);
    this.push(b);
  }
  i32(v: number, what: string): void {
    if (!Number.isInteger(v) || v < -0x80000000 || v > 0x7fffffff) throw new ProtocolError(`${what}: ${v} is not an i32`);
    const b = Buffer.alloc(4);
    b.writeInt32LE(v);
    this.push(b);
  }
  bytes(b: Buffer, what: string): void {
    this.u32(b.length, what);
    this.push(b);
  }
  str(s: string, what: string): void {
    if (s.includes('\0')) throw new ProtocolError(`${what}: strings cannot contain NUL`);
    this.bytes(Buffer.from(s, 'utf8'), what);
  }
  done(): Buffer {
    return Buffer.concat(this.chunks, this.length);
  }
}

function encodeShape(w: Writer, shape: Shape, value: Record<string, unknown>, where: string): void {
  for (const [name, kind] of shape) {
    const v = value[name];
    const what = `${where}.${name}`;
    if (v === undefined) throw new ProtocolError(`${what} is missing`);
    if (typeof kind === 'object') {
      const list = v as Record<string, unknown>[];
      w.u32(list.length, what);
      list.forEach((e, i) => encodeShape(w, kind.list, e, `${what}[${i}]`));
      continue;
    }
    switch (kind) {
      case 'u8': w.u8(v as number, what); break;
      case 'u32': w.u32(v as number, what); break;
      case 'i32': w.i32(v as number, what); break;
      case 'str': w.str(v as string, what); break;
      case 'bytes': w.bytes(v as Buffer, what); break;
      case 'u32s': w.u32((v as number[]).length, what); for (const x of v as number[]) w.u32(x, what); break;
      case 'strs': w.u32((v as string[]).length, what); for (const x of v as string[]) w.str(x, what); break;
    }
  }
}

/** One whole frame (length prefix included). Throws ProtocolError for a value the wire cannot carry. */
export function encode(msg: Message): Buffer {
  const m = messages[msg.type];
  if (!m) throw new ProtocolError(`unknown message ${String(msg.type)}`);
  const w = new Writer();
  w.u32(0, 'length');
  w.u8(m.type, 'type');
  encodeShape(w, m.fields, msg as unknown as Record<string, unknown>, msg.type);
  const frame = w.done();
  if (frame.length - 4 > MAX_FRAME) throw new ProtocolError(`${msg.type}: ${frame.length - 4} bytes is longer than a frame may be`);
  frame.writeUInt32LE(frame.length - 4, 0);
  return frame;
}

// ---- decoding ----

class Reader {
  pos = 0;
  constructor(private readonly b: Buffer) {}
  private need(n: number): void {
    if (this.b.length - this.pos < n) throw new ProtocolError('message ends inside a field');
  }
  u8(): number {
    this.need(1);
    return this.b[this.pos++];
  }
  u32(): number {
    this.need(4);
    const v = this.b.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }
  i32(): number {
    this.need(4);
    const v = this.b.readInt32LE(this.pos);
    this.pos += 4;
    return v;
  }
  count(minBytes: number): number {
    const n = this.u32();
    if (n > Math.floor((this.b.length - this.pos) / minBytes)) throw new ProtocolError('count larger than the message');
    return n;
  }
  bytes(): Buffer {
    const n = this.count(1);
    const v = Buffer.from(this.b.subarray(this.pos, this.pos + n));
    this.pos += n;
    return v;
  }
  str(): string {
    const b = this.bytes();
    if (b.includes(0)) throw new ProtocolError('string contains a NUL byte');
    return b.toString('utf8');
  }
  left(): number {
    return this.b.length - this.pos;
  }
}

function decodeShape(r: Reader, shape: Shape): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, kind] of shape) {
    if (typeof kind === 'object') {
      const n = r.count(4);
      out[name] = Array.from({ length: n }, () => decodeShape(r, kind.list));
      continue;
    }
    switch (kind) {
      case 'u8': out[name] = r.u8(); break;
      case 'u32': out[name] = r.u32(); break;
      case 'i32': out[name] = r.i32(); break;
      case 'str': out[name] = r.str(); break;
      case 'bytes': out[name] = r.bytes(); break;
      case 'u32s': out[name] = Array.from({ length: r.count(4) }, () => r.u32()); break;
      case 'strs': out[name] = Array.from({ length: r.count(4) }, () => r.str()); break;
    }
  }
  return out;
}

/** Decodes one frame body (type byte first, no length prefix). Throws ProtocolError. */
export function decode(body: Buffer): Message {
  if (body.length < 1) throw new ProtocolError('empty message');
  const name = byType.get(body[0]);
  if (!name) throw new ProtocolError(`unknown message type ${body[0]}`);
  const r = new Reader(body);
  r.u8();
  const fields = decodeShape(r, messages[name].fields);
  if (r.left() !== 0) throw new ProtocolError(`${name}: bytes left over after the last field`);
  return { type: name, ...fields } as Message;
}

/** Splits a byte stream into frames and decodes them. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  /** Every whole message the bytes so far complete. Throws ProtocolError (the stream is then unusable). */
  push(chunk: Buffer): Message[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Message[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32LE(0);
      if (len > MAX_FRAME) throw new ProtocolError(`frame of ${len} bytes is longer than the protocol allows`);
      if (this.buf.length < 4 + len) break;
      out.push(decode(this.buf.subarray(4, 4 + len)));
      this.buf = this.buf.subarray(4 + len);
    }
    return out;
  }

  /** Bytes of an unfinished frame (non-zero at the end of the stream means it was cut). */
  get pending(): number {
    return this.buf.length;
  }
}
