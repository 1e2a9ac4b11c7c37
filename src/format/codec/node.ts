/**
 * Index nodes of the copy-on-write B+tree (FORMAT.md "Index nodes").
 *
 *   0  magic   "HYND"
 *   4  version u8 (1)
 *   5  level   u8 (0 = leaf)
 *   6  count   u16 entries
 *   8  segment u64 the segment the node was written in (0 for the root inline in a head)
 *   16 reserved 12 bytes (0)
 *   28 crc32c  u32 over bytes [0, 28) then the entries [32, 32 + 32 × count)
 *   32 entries, 32 bytes each; the rest of the meta block is zero padding
 *
 * Leaf entry:     lba u64 | segment u64 | offset u32 (512-byte units) | length u32 |
 *                 crc32c u32 of the stored bytes | codec u16 (0 = raw) | byte u16
 *                 (low 9 bits: byte offset within that sector; 0 in volumes without codecs)
 * Internal entry: first lba u64 | segment u64 | offset u32 (512-byte units) | reserved u32 |
 *                 mapped blocks in the subtree u64
 */
import { DecodeError, crc32c, readU64, writeU64 } from './binary.js';

export const NODE_MAGIC = 'HYND';
export const NODE_VERSION = 1;
export const NODE_HEADER = 32;
export const ENTRY_SIZE = 32;
export const SECTOR = 512;

/** Entries that fit in a node of `nodeSize` bytes. */
export const nodeCapacity = (nodeSize: number): number =>
  Math.floor((nodeSize - NODE_HEADER) / ENTRY_SIZE);

/** A decoded node: `entries` holds `count` raw 32-byte entries (plus spare capacity). */
export interface DecodedNode {
  level: number;
  count: number;
  segment: number;
  entries: Buffer;
}

export function encodeNode(
  out: Buffer,
  at: number,
  level: number,
  count: number,
  segment: number,
  entries: Buffer,
): number {
  entries.copy(out, at + NODE_HEADER, 0, count * ENTRY_SIZE);
  encodeNodeHeader(out, at, level, count, segment, entries);
  return at + NODE_HEADER + count * ENTRY_SIZE;
}

/**
 * The 32-byte header of a node whose `count` entries are `entries` (wherever they lie: a
 * segment written in pieces sends a node's entries from the node's own memory).
 */
export function encodeNodeHeader(
  out: Buffer,
  at: number,
  level: number,
  count: number,
  segment: number,
  entries: Buffer,
): void {
  out.write(NODE_MAGIC, at, 'ascii');
  out.writeUInt8(NODE_VERSION, at + 4);
  out.writeUInt8(level, at + 5);
  out.writeUInt16LE(count, at + 6);
  writeU64(out, at + 8, segment);
  out.fill(0, at + 16, at + 32);
  const crc = crc32c(entries.subarray(0, count * ENTRY_SIZE), crc32c(out.subarray(at, at + 28)));
  out.writeUInt32LE(crc, at + 28);
}

/** Encoded size (without padding) of a node with `count` entries. */
export const encodedNodeSize = (count: number): number => NODE_HEADER + count * ENTRY_SIZE;

/**
 * Decode and verify a node. `capacity` entries are allocated so the node can be mutated
 * in memory (one spare slot lets an insert overflow before a split). `content`: the node
 * belongs to a content-hash index (codec/dedup.ts), whose leaves hold a hash entry after
 * each pointer entry.
 */
export function decodeNode(
  buf: Buffer,
  at: number,
  capacity: number,
  expectSegment?: number,
  content = false,
): DecodedNode {
  if (buf.length - at < NODE_HEADER) throw new DecodeError('truncated index node');
  if (buf.toString('ascii', at, at + 4) !== NODE_MAGIC)
    throw new DecodeError('bad index node magic');
  const version = buf.readUInt8(at + 4);
  if (version !== NODE_VERSION) throw new DecodeError(`unsupported index node version ${version}`);
  const level = buf.readUInt8(at + 5);
  const count = buf.readUInt16LE(at + 6);
  const segment = readU64(buf, at + 8);
  const end = at + NODE_HEADER + count * ENTRY_SIZE;
  if (count > capacity || end > buf.length)
    throw new DecodeError(`index node entry count ${count} out of range`);
  const want = buf.readUInt32LE(at + 28);
  const got = crc32c(buf.subarray(at + NODE_HEADER, end), crc32c(buf.subarray(at, at + 28)));
  if (want !== got) throw new DecodeError('index node checksum mismatch');
  if (expectSegment !== undefined && segment !== expectSegment) {
    throw new DecodeError(`index node says segment ${segment}, expected ${expectSegment}`);
  }
  const entries = Buffer.alloc((capacity + 1) * ENTRY_SIZE);
  buf.copy(entries, 0, at + NODE_HEADER, end);
  // Keys must be strictly ascending and safe integers. An entry's other 64-bit fields must be
  // too (read later, where a bad one would not be reported as a damaged node), and it points
  // into a stored segment (ids start at 1; PENDING_SEG lives only in memory). A content
  // index's hash entries (odd keys) hold hash bytes there instead: they are not pointers.
  let prev = -1;
  for (let i = 0; i < count; i++) {
    const e = i * ENTRY_SIZE;
    const k = readU64(entries, e);
    if (k <= prev) throw new DecodeError('index node keys out of order');
    prev = k;
    if (level === 0 && content && k % 2 === 1) continue; // (dedup.ts isHashKey)
    if (readU64(entries, e + 8) === PENDING_SEG)
      throw new DecodeError(`index node entry ${i} points to no segment`);
    if (level > 0) readU64(entries, e + 24);
  }
  return { level, count, segment, entries };
}

// ---------------------------------------------------------------- entries
// Every read or write of an entry's fields goes through these, so the layout above is the
// only place that knows the byte offsets.

/** Where one logical block is stored. `seg` 0 means "in the flush being built" (pending). */
export interface BlockPtr {
  seg: number;
  /** Byte offset in the segment object (stored in 512-byte units). */
  off: number;
  len: number;
  crc: number;
  codec: number;
}

/** The segment id of an entry that points into the flush being built. */
export const PENDING_SEG = 0;

export const entryKey = (entries: Buffer, i: number): number => readU64(entries, i * ENTRY_SIZE);

/** This machine stores 32-bit words little-endian, as the format does. */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

/**
 * The entries as 32-bit words, for `wordsKey`: undefined where a view cannot read them in
 * place (a big-endian machine, or memory not on a 4-byte boundary).
 */
export function entryWords(entries: Buffer): Uint32Array | undefined {
  if (!LITTLE_ENDIAN || entries.byteOffset % 4 !== 0 || entries.length % 4 !== 0) return undefined;
  return new Uint32Array(entries.buffer, entries.byteOffset, entries.length / 4);
}

/**
 * entryKey read through `entryWords` (a binary search reads a dozen keys per node, and
 * readU64 costs two bounds-checked reads and a range check each). Keys in memory are safe
 * integers: decodeNode checked them and setEntryKey writes only those.
 */
export const wordsKey = (words: Uint32Array, i: number): number =>
  (words[i * (ENTRY_SIZE / 4) + 1] as number) * 4294967296 +
  (words[i * (ENTRY_SIZE / 4)] as number);

export const entrySegment = (entries: Buffer, i: number): number =>
  readU64(entries, i * ENTRY_SIZE + 8);

/** Byte offset of the entry's target in its segment. */
export const entryOffset = (entries: Buffer, i: number): number =>
  entries.readUInt32LE(i * ENTRY_SIZE + 16) * SECTOR;

/** Leaf entries: stored length of the block. */
export const leafLength = (entries: Buffer, i: number): number =>
  entries.readUInt32LE(i * ENTRY_SIZE + 20);

/** Internal entries: mapped blocks in the child's subtree. */
export const childBlocks = (entries: Buffer, i: number): number =>
  readU64(entries, i * ENTRY_SIZE + 24);

/** Leaf entries: byte offset of the stored block in its segment (sector plus byte within). */
export const leafOffset = (entries: Buffer, i: number): number =>
  entries.readUInt32LE(i * ENTRY_SIZE + 16) * SECTOR +
  (entries.readUInt16LE(i * ENTRY_SIZE + 30) & (SECTOR - 1));

/** Leaf entries: CRC32C of the stored block. */
export const leafCrc = (entries: Buffer, i: number): number =>
  entries.readUInt32LE(i * ENTRY_SIZE + 24);

/** Leaf entries: how the block is stored (0: raw). */
export const leafCodec = (entries: Buffer, i: number): number =>
  entries.readUInt16LE(i * ENTRY_SIZE + 28);

export function readLeaf(entries: Buffer, i: number): BlockPtr {
  return {
    seg: entrySegment(entries, i),
    off: leafOffset(entries, i),
    len: leafLength(entries, i),
    crc: leafCrc(entries, i),
    codec: leafCodec(entries, i),
  };
}

export function writeLeaf(entries: Buffer, i: number, lba: number, p: BlockPtr): void {
  writeU64(entries, i * ENTRY_SIZE, lba);
  setLeafLocation(entries, i, p);
}

/** Fill in where a leaf's block is stored (a flush does this for pending entries). */
export function setLeafLocation(entries: Buffer, i: number, p: BlockPtr): void {
  setLeafFields(entries, i, p.seg, p.off, p.len, p.crc, p.codec);
}

/** setLeafLocation from the fields themselves (a flush locates every block: no object each). */
export function setLeafFields(
  entries: Buffer,
  i: number,
  seg: number,
  off: number,
  len: number,
  crc: number,
  codec: number,
): void {
  const o = i * ENTRY_SIZE;
  const within = off % SECTOR;
  writeU64(entries, o + 8, seg);
  entries.writeUInt32LE((off - within) / SECTOR, o + 16);
  entries.writeUInt32LE(len, o + 20);
  entries.writeUInt32LE(crc >>> 0, o + 24);
  entries.writeUInt16LE(codec, o + 28);
  entries.writeUInt16LE(within, o + 30);
}

/** True for a leaf entry whose block is in the flush being built. */
export const leafIsPending = (entries: Buffer, i: number): boolean =>
  // (PENDING_SEG is 0: both words of the segment id are zero; no 64-bit decode needed.)
  entries.readUInt32LE(i * ENTRY_SIZE + 8) === 0 && entries.readUInt32LE(i * ENTRY_SIZE + 12) === 0;
// (Fails to compile if PENDING_SEG ever stops being 0.)
const PENDING_IS_ZERO: 0 = PENDING_SEG;
void PENDING_IS_ZERO;

/** An internal entry for a child whose location is not known yet (it is dirty). */
export function writeChild(entries: Buffer, i: number, key: number, blocks: number): void {
  const o = i * ENTRY_SIZE;
  writeU64(entries, o, key);
  writeU64(entries, o + 8, PENDING_SEG);
  entries.writeUInt32LE(0, o + 16);
  entries.writeUInt32LE(0, o + 20);
  writeU64(entries, o + 24, blocks);
}

/** Fill in where a child node was written (a flush does this for dirty children). */
export function setChildLocation(entries: Buffer, i: number, seg: number, off: number): void {
  const o = i * ENTRY_SIZE;
  writeU64(entries, o + 8, seg);
  entries.writeUInt32LE(off / SECTOR, o + 16);
}

export const setEntryKey = (entries: Buffer, i: number, key: number): void =>
  writeU64(entries, i * ENTRY_SIZE, key);

export const setChildBlocks = (entries: Buffer, i: number, blocks: number): void =>
  writeU64(entries, i * ENTRY_SIZE + 24, blocks);
