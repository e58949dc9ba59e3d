/**
 * The host agent protocol: what a job's launcher (the coordinator) and `snowflock agent` on each
 * other host of the job say to each other, both sides in TypeScript. One module, one version.
 *
 * Transport: one TCP connection per agent, opened by the agent to the coordinator (agents listen
 * on nothing). Frames:
 *
 *   u32 LE  length of the rest
 *   u32 LE  length H of the header
 *   H bytes the header, JSON: a Message
 *   rest    the payload (raw bytes: a process's output or input, an sf-pmix frame), may be empty
 *
 * Handshake (mutual, by a per-job secret K that both sides have and the network never sees: the
 * agent reads it from its stdin, which srun or the SSH channel carries):
 *
 *   coordinator -> agent   challenge {version, nonce: Nc}
 *   agent -> coordinator   hello     {version, host, nonce: Na, proof: HMAC(K, "agent" Nc Na host), facts}
 *   coordinator -> agent   welcome   {proof: HMAC(K, "coordinator" Na Nc host), beatMs, deadMs}
 *
 * Either side that finds the version different, or the proof wrong, sends `refused {why}` and
 * closes. Until the handshake is done a frame may be at most MAX_HANDSHAKE_FRAME bytes, so that an
 * unauthenticated peer cannot make either side buffer much. After it:
 *
 *   requests (coordinator -> agent) carry `id`; the agent answers each with `done {id, result}` or
 *   `failed {id, message, exitCode}` (exitCode: the UserError's, so a refusal keeps its status);
 *   streams: `spawn` starts a process (in a clone, or one of snowflock's helpers on the host);
 *   `output` (agent -> coordinator, payload = bytes of fd 1 or 2), `stdin` / `stdin-end`,
 *   `signal`, and `exit` once its output has ended;
 *   `failure {line}` (agent -> coordinator): the host's clones lost something, said in one line;
 *   `beat` both ways every beatMs: a side that hears nothing for deadMs takes the other for gone
 *   (a host whose network was cut never closes its connection);
 *   `bye` (coordinator -> agent): the job is over, exit.
 *
 * Memory on demand (VM clones on other hosts, issue 11): the coordinator's `checkpoint` carries
 * `memory` (the launcher's memserver and the ticket's token) and, as its payload, the template's
 * descriptor (tens of KB), which the agent writes into its ticket's directory; `memory-figures`
 * asks for what this host's memtap fetched, for --report. (Version 2 added both.)
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { CheckpointSource } from '../providers/checkpoint.js';

/** Bumped with any change to the messages below; the handshake carries it and both sides check. */
export const AGENT_PROTOCOL_VERSION = 2;
/** Largest frame before the handshake is done. */
export const MAX_HANDSHAKE_FRAME = 64 << 10;
/** Largest frame after it (sf-pmix's own frames are at most 64 MiB; fences of big jobs are large). */
export const MAX_FRAME = (64 << 20) + (64 << 10);

/** What an agent tells about its host in its hello. */
export interface HostFacts {
  /** The agent's process, as its host sees it. */
  pid: number;
  /** The host's underlay: the address its connection to the coordinator came from, its device and MTU. */
  underlay: { address: string; dev: string; mtu: number };
  cpus: number;
}

/** What a ticket is on one host of a cluster spanning hosts (the engine's TicketOptions.span). */
export interface SpanPart {
  id: string;
  subnet: string;
  /** This host's address on the ticket's subnet, as an offset from its base (.1 is the coordinator's). */
  hostOffset: number;
  mtu: number;
  overlay: { local: string; peers: string[]; dev: string };
}

export interface ClaimRequest {
  span: SpanPart;
  /** Clones the whole ticket has (on all hosts). */
  count: number;
  provider: 'netns' | 'vm';
  share: string[];
}

/** What a clone is, as the coordinator needs it to reach it through its agent. */
export interface RemoteCloneInfo {
  id: number;
  hostname: string;
  address: string;
  mac: string;
}

/** Where a clone host's VM clones get their memory: the launcher's memserver (the descriptor is the frame's payload). */
export interface MemoryOfferWire {
  /** The memserver's ADDR:PORT on the underlay. */
  server: string;
  /** The ticket's token (hex), which memserver and memtap prove to each other. */
  token: string;
  /** The ticket's group, where the memserver pushes the template (unset: unicast only). */
  multicast?: { group: string };
}

export type SpawnTarget = { clone: number } | { helper: 'sf-pmix' };

export type Message =
  | { t: 'challenge'; version: number; nonce: string }
  | { t: 'hello'; version: number; host: string; nonce: string; proof: string; facts: HostFacts }
  | { t: 'welcome'; proof: string; beatMs: number; deadMs: number }
  | { t: 'refused'; why: string }
  // Requests, answered by done/failed with the same id.
  | { t: 'claim'; id: number; claim: ClaimRequest }
  | { t: 'checkpoint'; id: number; source: CheckpointSource; memory?: MemoryOfferWire }
  | { t: 'memory-figures'; id: number }
  | { t: 'clones'; id: number; ids: number[] }
  | { t: 'open-port'; id: number; port: number }
  | { t: 'spawn'; id: number; proc: number; target: SpawnTarget; argv: string[]; env: Record<string, string>; cwd?: string; stdin: boolean }
  | { t: 'kill'; id: number }
  | { t: 'done'; id: number; result?: unknown }
  | { t: 'failed'; id: number; message: string; exitCode?: number; clash?: { used: string[] } }
  // Streams.
  | { t: 'output'; proc: number; fd: 1 | 2 }
  | { t: 'stdin'; proc: number }
  | { t: 'stdin-end'; proc: number }
  | { t: 'signal'; proc: number; signal: string }
  | { t: 'exit'; proc: number; code: number | null; signal: string | null }
  | { t: 'failure'; line: string }
  | { t: 'beat' }
  | { t: 'bye' };

export type MessageOf<T extends Message['t']> = Extract<Message, { t: T }>;

export interface Frame {
  msg: Message;
  data: Buffer;
}

export class AgentProtocolError extends Error {}

const EMPTY = Buffer.alloc(0);

export function encodeFrame(msg: Message, data: Buffer = EMPTY): Buffer {
  const header = Buffer.from(JSON.stringify(msg), 'utf8');
  const head = Buffer.allocUnsafe(8);
  head.writeUInt32LE(4 + header.length + data.length, 0);
  head.writeUInt32LE(header.length, 4);
  return Buffer.concat([head, header, data]);
}

/** Reassembles frames from a byte stream; refuses frames above the current limit. */
export class FrameReader {
  private buf: Buffer = EMPTY;
  /** Raised once the handshake is done. */
  limit = MAX_HANDSHAKE_FRAME;

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Frame[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32LE(0);
      if (len < 4 || len > this.limit) throw new AgentProtocolError(`a frame of ${len} bytes (at most ${this.limit} now)`);
      if (this.buf.length < 4 + len) break;
      const hlen = this.buf.readUInt32LE(4);
      if (hlen > len - 4) throw new AgentProtocolError(`a header of ${hlen} bytes in a frame of ${len}`);
      let msg: Message;
      try {
        msg = JSON.parse(this.buf.subarray(8, 8 + hlen).toString('utf8')) as Message;
      } catch {
        throw new AgentProtocolError('a header that is not JSON');
      }
      if (typeof msg !== 'object' || msg === null || typeof (msg as { t?: unknown }).t !== 'string') throw new AgentProtocolError('a header without a message type');
      // Copied: the payload must outlive the reassembly buffer.
      out.push({ msg, data: Buffer.from(this.buf.subarray(8 + hlen, 4 + len)) });
      this.buf = this.buf.subarray(4 + len);
    }
    return out;
  }
}

// ---- the handshake's proofs ----

export function newSecret(): string {
  return randomBytes(32).toString('hex');
}

export function newNonce(): string {
  return randomBytes(16).toString('hex');
}

/** HMAC-SHA256 over the role and both nonces in the order the role sees them, and the host's name. */
export function proof(secret: string, role: 'agent' | 'coordinator', theirs: string, mine: string, host: string): string {
  return createHmac('sha256', Buffer.from(secret, 'utf8')).update(`snowflock-agent/${AGENT_PROTOCOL_VERSION}\0${role}\0${theirs}\0${mine}\0${host}`).digest('hex');
}

/** Constant-time comparison of a proof received with the one expected. */
export function proofMatches(got: unknown, expected: string): boolean {
  if (typeof got !== 'string' || got.length !== expected.length) return false;
  return timingSafeEqual(Buffer.from(got, 'utf8'), Buffer.from(expected, 'utf8'));
}

/** The line either side gives when the other speaks another version. */
export function versionMismatch(mine: number, theirs: unknown, where: string): string {
  return `${where} speaks host agent protocol version ${String(theirs)}, this side ${mine}: install one snowflock version on every host`;
}
