/**
 * Segment header (magic "HYSG"), at offset 0 of every segment object. See FORMAT.md.
 *
 * Body (version 1):
 *   segment id u64 | created ms u64 |
 *   nodes offset u64 | node count u32 | node size u32 |
 *   data offset u64 | block count u32 | data block size u32 | total length u64 |
 *   head length u32 | head record (a complete "HYHD" envelope, verified on its own) |
 *   lba table: block count × u64 (logical block of each stored block, in storage order) |
 *   node table: node count × (first lba u64 | level u8 | 7 reserved bytes)
 *
 * The embedded head sits at a fixed offset (12 + 56 + 4 = 72) so that a reader who only
 * wants a checkpoint's head fetches a short prefix of the segment.
 */
import { DecodeError, Writer } from './binary.js';
import { ENVELOPE_OVERHEAD, decodeEnvelope, encodeEnvelope, envelopeLength } from './envelope.js';
import { decodeHead, type HeadRecord } from './head.js';

export const SEGMENT_MAGIC = 'HYSG';
export const SEGMENT_VERSION = 1;
/** Offset of the embedded head record inside a segment object. */
export const EMBEDDED_HEAD_OFFSET = 72;

export interface SegmentHeader {
  segmentId: number;
  createdMs: number;
  nodesOffset: number;
  nodeCount: number;
  nodeSize: number;
  dataOffset: number;
  blockCount: number;
  dataBlockSize: number;
  totalLength: number;
  head: HeadRecord;
  headBytes: Buffer;
  lbas: number[];
  /** Per node: its first key, its level, and whether it belongs to the dedup index. */
  nodes: SegmentNode[];
}

export interface SegmentNode {
  firstLba: number;
  level: number;
  dedup?: boolean;
}

/** Bytes of the header envelope for these counts (the layout above, framed). */
export const segmentHeaderSize = (headLen: number, blocks: number, nodes: number): number =>
  ENVELOPE_OVERHEAD + 56 + 4 + headLen + blocks * 8 + nodes * 16;

/**
 * Where the embedded head ends, read from a prefix that holds at least the head's own
 * envelope header (EMBEDDED_HEAD_OFFSET + 12 bytes): how much to fetch to decode it.
 */
export function embeddedHeadEnd(prefix: Buffer): number {
  if (prefix.length < EMBEDDED_HEAD_OFFSET + 12) throw new DecodeError('truncated segment header');
  return EMBEDDED_HEAD_OFFSET + prefix.readUInt32LE(EMBEDDED_HEAD_OFFSET + 8);
}

export function encodeSegmentHeader(h: Omit<SegmentHeader, 'head'>): Buffer {
  const w = new Writer(128 + h.headBytes.length + h.lbas.length * 8 + h.nodes.length * 16);
  w.u64(h.segmentId)
    .u64(h.createdMs)
    .u64(h.nodesOffset)
    .u32(h.nodeCount)
    .u32(h.nodeSize)
    .u64(h.dataOffset)
    .u32(h.blockCount)
    .u32(h.dataBlockSize)
    .u64(h.totalLength)
    .u32(h.headBytes.length)
    .bytes(h.headBytes);
  for (const lba of h.lbas) w.u64(lba);
  for (const n of h.nodes)
    w.u64(n.firstLba)
      .u8(n.level)
      .u8(n.dedup ? 1 : 0)
      .zeros(6);
  return encodeEnvelope(SEGMENT_MAGIC, SEGMENT_VERSION, w.finish());
}

/** Length of the header envelope, from at least its first 12 bytes. */
export const segmentHeaderLength = (prefix: Buffer): number =>
  envelopeLength(prefix, SEGMENT_MAGIC);

export function decodeSegmentHeader(buf: Buffer): SegmentHeader {
  const r = decodeEnvelope(buf, SEGMENT_MAGIC, SEGMENT_VERSION).body;
  const segmentId = r.u64();
  const createdMs = r.u64();
  const nodesOffset = r.u64();
  const nodeCount = r.u32();
  const nodeSize = r.u32();
  const dataOffset = r.u64();
  const blockCount = r.u32();
  const dataBlockSize = r.u32();
  const totalLength = r.u64();
  const headLen = r.u32();
  const headBytes = Buffer.from(r.bytes(headLen));
  const { head } = decodeHead(headBytes);
  if (blockCount > r.remaining / 8) throw new DecodeError('lba table longer than header');
  const lbas: number[] = new Array<number>(blockCount);
  for (let i = 0; i < blockCount; i++) lbas[i] = r.u64();
  const nodes: SegmentNode[] = [];
  for (let i = 0; i < nodeCount; i++) {
    const firstLba = r.u64();
    const level = r.u8();
    const index = r.u8();
    r.skip(6);
    nodes.push(index === 1 ? { firstLba, level, dedup: true } : { firstLba, level });
  }
  return {
    segmentId,
    createdMs,
    nodesOffset,
    nodeCount,
    nodeSize,
    dataOffset,
    blockCount,
    dataBlockSize,
    totalLength,
    head,
    headBytes,
    lbas,
    nodes,
  };
}

/** Decode only the head embedded in a segment, from a prefix of the object. */
export function decodeEmbeddedHead(prefix: Buffer): HeadRecord {
  envelopeLength(prefix, SEGMENT_MAGIC);
  return decodeHead(prefix, EMBEDDED_HEAD_OFFSET).head;
}
