/**
 * A template's memory descriptor (native/memory/descriptor.h has the format): what a clone host
 * needs instead of the RAM file. Built by the native `memdesc` when the vm provider checkpoints a
 * template, next to its RAM file; read here directly, header and page map, with the file's CRC32C
 * checked. A descriptor that cannot be read is a ProvisionError: it came from the parent's host.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCommand } from '../common/command.js';
import { ProvisionError } from '../common/errors.js';
import { nativeProgram } from './helper.js';

export const PAGE = 4096;

export interface DescriptorInfo {
  path: string;
  key: string;
  /** 32 hex digits: memserver and memtap talk only when theirs match. */
  id: string;
  ramSize: number;
  granuleSize: number;
  pages: number;
  /** Pages that hold data: what may cross the network. */
  dataPages: number;
  /** Zero pages, by how they came to be zero: never touched by the guest, or zeroed (init_on_free). */
  holePages: number;
  zeroedPages: number;
  granules: number;
  dataGranules: number;
  stateBytes: number;
  fileBytes: number;
}

export interface Descriptor extends DescriptorInfo {
  /** One bit per page, little-endian 64-bit words: set = data. */
  dataMap: Buffer;
  state: Buffer;
}

/** What a template offers to describe (src/providers/vm/checkpoint.ts's Template has these). */
export interface TemplateFiles {
  key: string;
  dir: string;
  ram: string;
  state: string;
}

const MAGIC = 'SFMEMDSC';
const HEADER = 128;
const align8 = (n: number) => (n + 7) & ~7;

let table: Uint32Array | null = null;
function crc32c(buf: Buffer): number {
  if (!table) {
    table = new Uint32Array(256);
    for (let i = 0; i < 256; i++) {
      let c = i;
      for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
      table[i] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = table[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** Parses a descriptor file; throws a ProvisionError naming what is wrong with it. */
export function readDescriptor(path: string): Descriptor {
  let b: Buffer;
  try {
    b = readFileSync(path);
  } catch (e) {
    throw new ProvisionError(`cannot read the memory descriptor ${path}: ${(e as Error).message}`);
  }
  const bad = (why: string) => new ProvisionError(`memory descriptor ${path}: ${why}`);
  if (b.length < HEADER || b.toString('latin1', 0, 8) !== MAGIC) throw bad('not a snowflock memory descriptor');
  if (b.readUInt32LE(8) !== 1) throw bad('made by another version of snowflock; rebuild it');
  const stored = b.readUInt32LE(124);
  const copy = Buffer.from(b);
  copy.writeUInt32LE(0, 124);
  if (crc32c(copy) !== stored) throw bad('damaged (its checksum does not match)');
  const ramSize = Number(b.readBigUInt64LE(16));
  const granuleSize = b.readUInt32LE(28);
  const dataGranules = Number(b.readBigUInt64LE(32));
  const stateBytes = Number(b.readBigUInt64LE(40));
  const keyLen = b.readUInt32LE(48);
  const pages = ramSize / PAGE;
  const mapBytes = Math.ceil(pages / 64) * 8;
  const mapAt = HEADER + align8(keyLen);
  const stateAt = mapAt + mapBytes + align8(dataGranules * 4);
  if (stateAt + stateBytes !== b.length) throw bad('its sections do not add up to its size');
  const dataMap = b.subarray(mapAt, mapAt + mapBytes);
  const holePages = Number(b.readBigUInt64LE(72));
  const zeroedPages = Number(b.readBigUInt64LE(80));
  return {
    path,
    key: b.toString('utf8', HEADER, HEADER + keyLen),
    id: b.subarray(56, 72).toString('hex'),
    ramSize,
    granuleSize,
    pages,
    dataPages: pages - holePages - zeroedPages,
    holePages,
    zeroedPages,
    granules: ramSize / granuleSize,
    dataGranules,
    stateBytes,
    fileBytes: b.length,
    dataMap,
    state: b.subarray(stateAt, stateAt + stateBytes),
  };
}

/** Whether page p of the guest holds data (else it is zero and never fetched). */
export function pageHasData(d: Descriptor, p: number): boolean {
  return ((d.dataMap[p >> 3]! >> (p & 7)) & 1) === 1;
}

/** Whether granule g is all zero. */
export function granuleIsZero(d: Descriptor, g: number): boolean {
  const per = d.granuleSize / PAGE;
  for (let p = g * per; p < (g + 1) * per; p++) if (pageHasData(d, p)) return false;
  return true;
}

/** The granule the vm provider describes templates with (native/memory/README.md: why 4 KiB). */
export const GRANULE = 4096;

/** Where a template's descriptor for a granule size lives: next to its RAM file. */
export function descriptorPath(templateDir: string, granuleSize = GRANULE): string {
  return join(templateDir, `memory-${granuleSize >> 10}K.desc`);
}

/** Where the working set recorded by the template's memservers is kept (native/memory/workset.h). */
export function worksetPath(templateDir: string): string {
  return join(templateDir, 'memory.ws');
}

export interface BuildOptions {
  granuleSize?: number;
  out?: string;
  /** Give back the memory of the RAM file's zero pages (holes punched; contents unchanged). */
  punch?: boolean;
}

export interface Built {
  descriptor: Descriptor;
  /** Bytes of /dev/shm the punched holes gave back (0 without punch). */
  punchedBytes: number;
}

/** Builds a descriptor with the native memdesc (atomically: a reader never sees half a file). */
export async function buildDescriptor(nativeDir: string, t: TemplateFiles, o: BuildOptions = {}): Promise<Built> {
  const granule = o.granuleSize ?? GRANULE;
  const out = o.out ?? descriptorPath(t.dir, granule);
  const args = ['build', '--ram', t.ram, '--state', t.state, '--key', t.key, '--granule', String(granule), '--out', out, ...(o.punch ? ['--punch'] : [])];
  const r = await runCommand(nativeProgram(nativeDir, 'memdesc'), args, { reject: false });
  if (r.exitCode !== 0) throw new ProvisionError(r.stderr.trim().split('\n').pop()?.replace(/^memdesc: /, '') || `memdesc failed (exit ${r.exitCode})`);
  const info = JSON.parse(r.stdout.trim().split('\n').pop()!) as { punchedBytes?: number };
  return { descriptor: readDescriptor(out), punchedBytes: info.punchedBytes ?? 0 };
}
