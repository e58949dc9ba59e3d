/**
 * The guest agent's control protocol, host side. It mirrors native/proto/agent.h exactly (that
 * file is the definition: the wire format, what each frame means, the EXEC layout, the IDENT keys);
 * test/unit/agent-protocol.test.ts checks this codec against the C one in both directions.
 *
 *   frame  = header (9 bytes) | payload
 *   header = u32 payload length (LE) | u8 type | u32 stream id (LE)
 *
 * Pure functions and one decoder class; node builtins only.
 */
import { Buffer } from 'node:buffer';

/** HELLO says "version=N"; the host refuses an agent of another version. */
export const AGENT_VERSION = 1;
export const HELLO_PAYLOAD = `version=${AGENT_VERSION}`;
export const HEADER_SIZE = 9;
/** Longest payload either side sends or accepts (AGENT_MAX_PAYLOAD). */
export const MAX_PAYLOAD = 4 * 1024 * 1024;
/** Stream 0 is the guest's own: IDENT, HELLO, READY, and a FAILED answering an IDENT. */
export const GUEST_STREAM = 0;

export const FrameType = {
  IDENT: 1,
  EXEC: 2,
  STDIN: 3,
  KILL: 4,
  HELLO: 64,
  READY: 65,
  STARTED: 66,
  FAILED: 67,
  STDOUT: 68,
  STDERR: 69,
  EXIT: 70,
} as const;
export type FrameTypeName = keyof typeof FrameType;

const typeNames = new Map<number, FrameTypeName>(Object.entries(FrameType).map(([k, v]) => [v, k as FrameTypeName]));

/** "EXEC" for 2; undefined for a type the protocol does not have. */
export function frameTypeName(type: number): FrameTypeName | undefined {
  return typeNames.get(type);
}

/** A frame that breaks the protocol (too long, a malformed payload): the channel cannot go on. */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

export interface Header {
  length: number;
  type: number;
  sid: number;
}

export interface Frame {
  type: number;
  sid: number;
  payload: Buffer;
}

function checkU32(n: number, what: string): void {
  if (!Number.isInteger(n) || n < 0 || n > 0xffffffff) throw new RangeError(`${what} ${n} is not a 32-bit unsigned integer`);
}

/** The 9 header bytes alone (any length: a test may describe a frame the protocol refuses). */
export function encodeHeader(h: Header): Buffer {
  checkU32(h.length, 'frame length');
  checkU32(h.sid, 'stream id');
  if (!Number.isInteger(h.type) || h.type < 0 || h.type > 255) throw new RangeError(`frame type ${h.type} is not a byte`);
  const b = Buffer.alloc(HEADER_SIZE);
  b.writeUInt32LE(h.length, 0);
  b.writeUInt8(h.type, 4);
  b.writeUInt32LE(h.sid, 5);
  return b;
}

export function decodeHeader(buf: Buffer, offset = 0): Header {
  if (buf.length - offset < HEADER_SIZE) throw new RangeError('a frame header is 9 bytes');
  return { length: buf.readUInt32LE(offset), type: buf.readUInt8(offset + 4), sid: buf.readUInt32LE(offset + 5) };
}

/** One whole frame; a payload longer than MAX_PAYLOAD is refused (split STDIN with encodeStdin). */
export function encodeFrame(type: number, sid: number, payload: Buffer | string = ''): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  if (body.length > MAX_PAYLOAD) throw new RangeError(`a frame payload of ${body.length} bytes exceeds the protocol's ${MAX_PAYLOAD}`);
  return Buffer.concat([encodeHeader({ length: body.length, type, sid }), body]);
}

/** STDIN bytes as frames of at most MAX_PAYLOAD each; empty data is the end of input. */
export function encodeStdin(sid: number, data: Buffer): Buffer {
  if (data.length === 0) return encodeFrame(FrameType.STDIN, sid);
  const frames: Buffer[] = [];
  for (let at = 0; at < data.length; at += MAX_PAYLOAD) frames.push(encodeFrame(FrameType.STDIN, sid, data.subarray(at, at + MAX_PAYLOAD)));
  return Buffer.concat(frames);
}

/** Splits a byte stream into frames, across chunk boundaries. */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);

  /** The frames completed by this chunk. Throws ProtocolError for a frame longer than MAX_PAYLOAD. */
  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const frames: Frame[] = [];
    let at = 0;
    while (this.buf.length - at >= HEADER_SIZE) {
      const h = decodeHeader(this.buf, at);
      if (h.length > MAX_PAYLOAD) {
        this.buf = this.buf.subarray(at);
        throw new ProtocolError(`a frame of ${h.length} bytes (type ${h.type}, stream ${h.sid}) exceeds the protocol's ${MAX_PAYLOAD}`);
      }
      if (this.buf.length - at < HEADER_SIZE + h.length) break;
      // A copy: the payload must not pin the whole chunk it came in.
      frames.push({ type: h.type, sid: h.sid, payload: Buffer.from(this.buf.subarray(at + HEADER_SIZE, at + HEADER_SIZE + h.length)) });
      at += HEADER_SIZE + h.length;
    }
    this.buf = this.buf.subarray(at);
    return frames;
  }

  /** Bytes of an incomplete frame held: nonzero at the end of the stream means it was cut short. */
  pending(): number {
    return this.buf.length;
  }
}

// ---- EXEC ----

export interface ExecRequest {
  /** At least one element; none empty. Buffers carry bytes that are not UTF-8. */
  argv: Array<string | Buffer>;
  /** NAME=value pairs (NAME non-empty, without '='), or ready "NAME=value" elements. */
  env: Record<string, string> | Array<string | Buffer>;
  /** The absolute working directory. */
  cwd: string | Buffer;
  /** true: STDIN frames follow; false: the process reads /dev/null. */
  stdin: boolean;
}

export const EXEC_STDIN = 'stdin';
export const EXEC_NOSTDIN = 'nostdin';

function execString(s: string | Buffer, what: string): Buffer {
  const b = typeof s === 'string' ? Buffer.from(s, 'utf8') : s;
  if (b.length === 0) throw new RangeError(`${what} is empty: the agent protocol (version ${AGENT_VERSION}) cannot carry an empty string there`);
  if (b.includes(0)) throw new RangeError(`${what} contains a NUL byte`);
  return b;
}

function envElements(env: ExecRequest['env']): Array<string | Buffer> {
  if (Array.isArray(env)) return env;
  return Object.entries(env).map(([k, v]) => {
    if (!k || k.includes('=')) throw new RangeError(`environment variable name '${k}' is empty or contains '='`);
    return `${k}=${v}`;
  });
}

/**
 * The EXEC payload: argv[0] .. argv[n-1] "" env[0] .. env[m-1] "" cwd stdin-mode, every string
 * NUL-terminated. Throws RangeError for what the layout cannot carry (an empty element, a NUL).
 */
export function encodeExec(req: ExecRequest): Buffer {
  if (req.argv.length === 0) throw new RangeError('argv is empty');
  const nul = Buffer.alloc(1);
  const parts: Buffer[] = [];
  req.argv.forEach((a, i) => parts.push(execString(a, `argv[${i}]`), nul));
  parts.push(nul);
  envElements(req.env).forEach((e, i) => parts.push(execString(e, `environment element ${i}`), nul));
  parts.push(nul);
  parts.push(execString(req.cwd, 'the working directory'), nul);
  parts.push(Buffer.from(req.stdin ? EXEC_STDIN : EXEC_NOSTDIN), nul);
  return Buffer.concat(parts);
}

// ---- EXIT, HELLO, IDENT ----

export type ExitPayload = { code: number; signal: null } | { code: null; signal: number };

/** "code N" or "signal N". Throws ProtocolError for anything else. */
export function decodeExit(payload: Buffer): ExitPayload {
  const m = /^(code|signal) (\d{1,3})$/.exec(payload.toString('latin1'));
  const n = m ? Number(m[2]) : NaN;
  if (m?.[1] === 'code' && n <= 255) return { code: n, signal: null };
  if (m?.[1] === 'signal' && n >= 1 && n < 128) return { code: null, signal: n };
  throw new ProtocolError(`a malformed EXIT payload: ${JSON.stringify(payload.toString('latin1').slice(0, 40))}`);
}

/** The version a HELLO announces, or null if it names none (an agent older than version 1). */
export function decodeHello(payload: Buffer): number | null {
  for (const line of payload.toString('utf8').split('\n')) {
    const m = /^version=(\d+)$/.exec(line);
    if (m) return Number(m[1]);
  }
  return null;
}

export const IDENT_KEYS = ['id', 'addr', 'gw', 'mac', 'hostname', 'time', 'entropy', 'hosts', 'ssh', 'mtu'] as const;
export type IdentKey = (typeof IDENT_KEYS)[number];

/** "key=value" lines, in IDENT_KEYS order. Throws RangeError for a value holding a newline or NUL. */
export function encodeIdent(fields: Partial<Record<IdentKey, string>>): Buffer {
  const lines: string[] = [];
  for (const key of IDENT_KEYS) {
    const v = fields[key];
    if (v === undefined) continue;
    if (/[\n\0]/.test(v)) throw new RangeError(`identity value ${key} contains a newline or NUL`);
    lines.push(`${key}=${v}`);
  }
  return Buffer.from(lines.map((l) => `${l}\n`).join(''), 'utf8');
}
