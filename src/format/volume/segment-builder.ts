/**
 * Laying out one checkpoint segment (FORMAT.md "Segments"): the header with the embedded
 * head, the dirty index nodes (leaves first, so siblings sit together), then the data
 * blocks. A failed PUT is retried with the same parts; a build that fails leaves the caller
 * to go back to its last clean index (the dirty nodes' entries may be located by then).
 *
 * The segment comes out in pieces for a gather write: one buffer with the header and the
 * blocks copied after it; each index node as its header, its entries (from the node's own
 * memory) and padding; and, between the buffer's parts, long runs of blocks that stay where
 * the caller holds them (a sequential write's blocks lie in order in the write buffer's
 * slabs; copying tens of MiB per segment was most of a local write's CPU time).
 * Building locates the dirty nodes' entries in place (the caller adopts them as they are);
 * the nodes must not change until the segment has landed, which copy-on-write guarantees
 * once they are clean.
 */
import { encodeHead, type HeadRecord } from '../codec/head.js';
import {
  ENTRY_SIZE,
  NODE_HEADER,
  SECTOR,
  encodeNode,
  encodeNodeHeader,
  encodedNodeSize,
  leafIsPending,
  setChildLocation,
  setLeafFields,
} from '../codec/node.js';
import { crc32c } from '../codec/binary.js';
import { CODEC_SEALED, type Sealer } from '../codec/seal.js';
import { isHashKey } from '../codec/dedup.js';
import { encodeSegmentHeader, segmentHeaderSize } from '../codec/segment.js';
import { HyperError } from '../../errors.js';
import type { Node } from '../index/btree.js';
import { lowerBound } from './block-ranges.js';

/** What goes into a checkpoint segment. */
export interface CheckpointInput {
  id: number;
  nowMs: number;
  /** The new head, except its index root (the builder encodes the root in place). */
  head: Omit<HeadRecord, 'root' | 'rootLevel'>;
  root: Node;
  /** Dirty nodes below the root, in the order they are written (BTree.dirtyNodes()). */
  nodes: Node[];
  /**
   * Deduplicating volumes: the content-hash index (its dirty nodes follow the block index's)
   * and where its pending entries point: the position in `lbas` of the block stored for each
   * pending pointer key.
   */
  dedup?: { root: Node; nodes: Node[]; slots: Map<number, number> };
  /**
   * Blocks that store nothing of their own: a pending entry for lba `a` points at the block
   * stored for lba `b` (equal content written twice in one flush).
   */
  aliases?: Map<number, number>;
  nodeSize: number;
  blockSize: number;
  /**
   * Logical block of each new data block, ascending, and the blocks as stored (before
   * sealing) with the CRC32C of their stored bytes (computed here for sealed blocks).
   */
  lbas: number[];
  blocks: Buffer[];
  crcs?: number[];
  /**
   * The codec of each stored block (volumes with FEATURE_CODECS): blocks are then packed
   * back to back at byte offsets. Without it every block is raw, one data block long, at
   * sector-aligned offsets (FORMAT.md version 1).
   */
  codecs?: number[];
  /**
   * Encrypted volumes: blocks and index nodes are sealed here, straight into the segment
   * (block k under nonce counter k, nodes under the counters after the blocks).
   */
  sealer?: Sealer;
  /** Where the segment's own bytes go (recycled memory); fresh buffers by default. */
  memory?: SegmentMemory;
  /**
   * Blocks the caller already copied into the segment's memory (layAhead): `blocks` names
   * them there. They are sent from those buffers as they are, and the segment's header gets
   * a small buffer of its own (not one of `buffers`).
   */
  laid?: LaidBlocks;
}

/** Buffers from a segment's memory that layAhead filled with blocks, in order. */
export interface LaidBlocks {
  buffers: Buffer[];
}

/**
 * Memory for the bytes a segment holds of its own (header, nodes, copied blocks). Blocks
 * copied past `largest` bytes go into further buffers, each part of the segment in turn, so
 * that a segment larger than usual (a flush that took more than a segment's worth) still
 * lands in recycled memory instead of a fresh outsized buffer.
 */
export interface SegmentMemory {
  take(bytes: number): Buffer;
  /** The most one buffer should hold (the header and nodes go in the first, whatever size). */
  readonly largest: number;
}

export interface BuiltCheckpoint {
  /**
   * The segment's bytes, in order, to be stored back to back: parts of `buffer` and runs of
   * the caller's blocks (which must not change until the segment has landed).
   */
  parts: Buffer[];
  /** The segment's length. */
  length: number;
  /**
   * The first buffer from `memory`: the header (up to the nodes' offset), then (sealed
   * volumes) the nodes at their segment offsets, then the blocks that were copied, as many
   * as fit. With blocks laid ahead, a buffer of its own holding the header only.
   */
  buffer: Buffer;
  /**
   * Every buffer from `memory` the segment holds: `buffer` first (unless the blocks were
   * laid ahead: the laid buffers first then), the rest hold copied blocks.
   */
  buffers: Buffer[];
  /** Bytes of the segment in `buffers` (the rest are the caller's runs, gathered, and the nodes). */
  ownBytes: number;
  /**
   * Bytes of the segment that are index nodes sent from the nodes' own memory (their
   * entries, with a header and padding each): held until the segment lands.
   */
  nodeBytes: number;
  /** Where each stored block's bytes lie: in `buffers`, or the caller's own buffer. */
  stored: Buffer[];
  /** Whether some part is the caller's memory (else `buffers` hold the whole segment). */
  gathered: boolean;
  head: HeadRecord;
  headBytes: Buffer;
  /** Offset of the first data block in the segment (blocks follow in `lbas` order, packed). */
  dataOffset: number;
  /** Offset assigned to each of `nodes`, in the same order. */
  nodeOffsets: number[];
  /** The root's entries with this segment's locations filled in. */
  rootEntries: Buffer;
  /** Deduplicating volumes: the same for the content-hash index's root. */
  dedupRootEntries?: Buffer;
  /** Encrypted volumes: each node's plain encoding (the segment holds them sealed). */
  plainNodes?: Buffer[];
  /** Offset, stored length and CRC32C of each data block in the segment, and (codec volumes) the codec it got. */
  blockOffsets: number[];
  blockLengths: number[];
  blockCrcs: number[];
  codecs?: number[];
}

const align = (v: number, a: number): number => Math.ceil(v / a) * a;

export function buildCheckpoint(c: CheckpointInput): BuiltCheckpoint {
  const { id, nodeSize, blockSize: bs, root } = c;
  const dedup = c.dedup;
  // Every node written here: the block index's, then the dedup index's.
  const nodes = dedup ? [...c.nodes, ...dedup.nodes] : c.nodes;
  const isDedup = (k: number): boolean => k >= c.nodes.length;
  const withRoots = (rootBytes: Buffer, dedupBytes?: Buffer): HeadRecord => ({
    ...c.head,
    rootLevel: root.level,
    root: rootBytes,
    ...(dedup && c.head.dedup && dedupBytes
      ? { dedup: { ...c.head.dedup, rootLevel: dedup.root.level, root: dedupBytes } }
      : {}),
  });
  // The header's length does not depend on node offsets: size it with provisional roots.
  const provisional = encodeHead(
    withRoots(
      Buffer.alloc(encodedNodeSize(root.length)),
      dedup ? Buffer.alloc(encodedNodeSize(dedup.root.length)) : undefined,
    ),
  );
  const headerLen = segmentHeaderSize(provisional.length, c.lbas.length, nodes.length);
  const nodesOffset = align(headerLen, SECTOR);
  const nodeOffsets = nodes.map((_, k) => nodesOffset + k * nodeSize);
  // Children find their new offset through this map while their parents are encoded.
  const offsetOf = new Map<Node, number>();
  nodes.forEach((nd, k) => offsetOf.set(nd, nodeOffsets[k] as number));
  const dataOffset = nodesOffset + nodes.length * nodeSize;
  const sealer = c.sealer;
  if (sealer && !c.codecs)
    throw new HyperError('internal', 'INTERNAL', 'sealed blocks need the codecs layout');
  // (Sealing marks each block's codec: a copy, the caller's list stays as it was.)
  const codecs = c.codecs && sealer ? c.codecs.map((x) => x | CODEC_SEALED) : c.codecs;
  const extra = sealer ? sealer.overhead : 0;
  const blockOffsets: number[] = [];
  const lens: number[] = [];
  let total = dataOffset;
  for (const b of c.blocks) {
    if (!codecs && b.length !== bs)
      throw new HyperError('internal', 'INTERNAL', 'raw block of the wrong size');
    blockOffsets.push(total);
    lens.push(b.length + extra);
    total += b.length + extra;
  }
  const slot = slotFinder(c.lbas, c.aliases);

  /** Fill in the locations this segment assigns (pending blocks, dirty children) in `e`. */
  const locate = (nd: Node, e: Buffer, inDedup: boolean): void => {
    for (let i = 0; i < nd.length; i++) {
      if (nd.level === 0) {
        // (Most entries of a dirty leaf point elsewhere: test that before decoding the key.)
        if (!leafIsPending(e, i)) continue;
        const key = nd.key(i);
        // (Dedup index: only pointer entries, at even keys, are block pointers.)
        if (inDedup && isHashKey(key)) continue;
        const k = inDedup ? dedup?.slots.get(key) : slot(key);
        if (k === undefined)
          throw new HyperError(
            'internal',
            'INTERNAL',
            `${inDedup ? 'dedup index' : 'index'} entry ${key} has no data`,
          );
        setLeafFields(
          e,
          i,
          id,
          blockOffsets[k] as number,
          lens[k] as number,
          crcs[k] as number,
          codecs ? (codecs[k] as number) : 0,
        );
      } else {
        const child = nd.children?.[i];
        if (child) setChildLocation(e, i, id, offsetOf.get(child) as number);
      }
    }
  };

  // Data first: the entries located below name each block's CRC.
  const laid = c.laid ? new Set<ArrayBufferLike>(c.laid.buffers.map((b) => b.buffer)) : undefined;
  const runs = sealer ? [] : blockRuns(c.blocks, laid);
  // Bytes sent from the caller's memory, and from buffers laid ahead (the segment's own).
  let kept = 0;
  let laidBytes = 0;
  for (const r of runs) {
    if (r.laid) laidBytes += r.bytes.length;
    else if (r.keep) kept += r.bytes.length;
  }
  // Plain nodes are not copied: each is sent as a 32-byte header, its entries from the
  // node's own memory (located in place: the dirty nodes are the tree's, and become its
  // clean nodes as they are, which copy on write from then on) and zero padding. The
  // buffer holds the segment's header and the copied blocks after it. (Random writes over a
  // large volume carry nearly as many bytes of nodes as of blocks: a copy of each in every
  // segment in flight, and another back into the nodes once built.) Sealed nodes are sealed
  // into their places in the buffer, with the blocks.
  const nodeBytes = sealer ? 0 : nodes.length * nodeSize;
  const own = total - kept - nodeBytes;
  // Where the blocks start in the buffer.
  const blocksAt = dataOffset - nodeBytes;
  const take = (n: number): Buffer => (c.memory ? c.memory.take(n) : Buffer.allocUnsafe(n));
  // (Sealed blocks are sealed at their offsets in one buffer.)
  const largest = sealer ? Infinity : (c.memory?.largest ?? Infinity);
  // (With blocks laid ahead, nothing is left to copy: the header alone, in fresh memory, so
  // that a recycled segment-sized buffer is not held for it.)
  const segment = laid
    ? Buffer.allocUnsafe(Math.max(blocksAt, own - laidBytes))
    : take(Math.max(blocksAt, Math.min(own, largest)));
  let parts: Buffer[] = [segment];
  let buffers: Buffer[] = [segment];
  let stored: Buffer[];
  let crcs: number[];
  if (sealer) {
    crcs = sealBlocks(c, sealer, codecs as number[], segment, blockOffsets, lens);
    stored = blockOffsets.map((at, k) => segment.subarray(at, at + (lens[k] as number)));
  } else {
    if (!c.crcs) throw new HyperError('internal', 'INTERNAL', 'block CRCs missing');
    crcs = c.crcs;
    const more = (need: number, left: number): Buffer =>
      take(Math.max(need, Math.min(left, largest)));
    ({ parts, stored, buffers } = layBlocks(
      c.blocks,
      runs,
      segment,
      blocksAt,
      own - laidBytes,
      more,
    ));
    if (c.laid) buffers = [...c.laid.buffers, ...buffers.slice(1)];
  }
  const plainNodes: Buffer[] = [];
  const nodeParts: Buffer[] = [];
  const heads = sealer ? Buffer.alloc(0) : Buffer.allocUnsafe(nodes.length * NODE_HEADER);
  const zeros = sealer ? Buffer.alloc(0) : Buffer.alloc(nodeSize);
  nodes.forEach((nd, k) => {
    const at = nodeOffsets[k] as number;
    const used = NODE_HEADER + nd.length * ENTRY_SIZE;
    if (!sealer) {
      const e = nd.entries.subarray(0, nd.length * ENTRY_SIZE);
      locate(nd, e, isDedup(k));
      encodeNodeHeader(heads, k * NODE_HEADER, nd.level, nd.length, id, e);
      nodeParts.push(heads.subarray(k * NODE_HEADER, (k + 1) * NODE_HEADER));
      if (e.length > 0) nodeParts.push(e);
      if (used < nodeSize) nodeParts.push(zeros.subarray(0, nodeSize - used));
      return;
    }
    // A sealed node is encoded on its own first, then sealed into its place.
    const dst = Buffer.alloc(nodeSize - sealer.overhead);
    nd.entries.copy(dst, NODE_HEADER, 0, nd.length * ENTRY_SIZE);
    const e = dst.subarray(NODE_HEADER, used);
    locate(nd, e, isDedup(k));
    encodeNode(dst, 0, nd.level, nd.length, id, e);
    const nonce = sealer.nonce(id, c.blocks.length + k);
    sealer.seal(dst, nonce, sealer.nodeAd(id, at), segment, at);
    plainNodes.push(dst);
  });
  if (!sealer) {
    // The buffer's first part (header, then the first copied blocks) is split around them.
    const first = parts[0] as Buffer;
    if (
      first.buffer !== segment.buffer ||
      first.byteOffset !== segment.byteOffset ||
      first.length < nodesOffset
    )
      throw new HyperError('internal', 'INTERNAL', 'segment buffer parts out of order');
    const rest = first.length > nodesOffset ? [first.subarray(nodesOffset)] : [];
    parts = [segment.subarray(0, nodesOffset), ...nodeParts, ...rest, ...parts.slice(1)];
  }
  const encodeRoot = (r: Node, inDedup: boolean): [Buffer, Buffer] => {
    const entries = Buffer.from(r.entries.subarray(0, r.length * ENTRY_SIZE));
    locate(r, entries, inDedup);
    const bytes = Buffer.alloc(encodedNodeSize(r.length));
    encodeNode(bytes, 0, r.level, r.length, id, entries);
    return [entries, bytes];
  };
  const [rootEntries, rootBytes] = encodeRoot(root, false);
  const dedupRoot = dedup ? encodeRoot(dedup.root, true) : undefined;
  const head = withRoots(rootBytes, dedupRoot?.[1]);
  const headBytes = encodeHead(head);
  const header = encodeSegmentHeader({
    segmentId: id,
    createdMs: c.nowMs,
    nodesOffset,
    nodeCount: nodes.length,
    nodeSize,
    dataOffset,
    blockCount: c.blocks.length,
    dataBlockSize: bs,
    totalLength: total,
    headBytes,
    lbas: c.lbas,
    nodes: nodes.map((nd, k) => ({
      firstLba: nd.length > 0 ? nd.key(0) : 0,
      level: nd.level,
      ...(isDedup(k) ? { dedup: true } : {}),
    })),
  });
  if (header.length !== headerLen)
    throw new HyperError('internal', 'INTERNAL', 'segment header size changed while encoding');
  header.copy(segment, 0);
  segment.fill(0, header.length, nodesOffset);
  return {
    parts,
    length: total,
    buffer: segment,
    buffers,
    ownBytes: own,
    nodeBytes,
    stored,
    gathered: kept > 0,
    head,
    headBytes,
    dataOffset,
    nodeOffsets,
    rootEntries,
    ...(dedupRoot ? { dedupRootEntries: dedupRoot[0] } : {}),
    ...(sealer ? { plainNodes } : {}),
    blockOffsets,
    blockLengths: lens,
    blockCrcs: crcs,
    ...(codecs ? { codecs } : {}),
  };
}

/**
 * The position in `lbas` of each key's block (an alias: of the block it shares). The nodes
 * are located in key order, so with `lbas` ascending (as a flush lists them) the next key is
 * mostly the one after the last found, else a binary search finds it: no map of a segment's
 * every block. A list that is not ascending gets the map.
 */
function slotFinder(
  lbas: readonly number[],
  aliases: ReadonlyMap<number, number> | undefined,
): (key: number) => number | undefined {
  let ascending = true;
  for (let i = 1; i < lbas.length && ascending; i++)
    ascending = (lbas[i] as number) > (lbas[i - 1] as number);
  if (!ascending) {
    const m = new Map<number, number>();
    lbas.forEach((lba, k) => m.set(lba, k));
    for (const [a, b] of aliases ?? []) m.set(a, m.get(b) as number);
    return (key) => m.get(key);
  }
  let next = 0;
  const find = (key: number): number | undefined => {
    if (lbas[next] === key) return next++;
    const lo = lowerBound(lbas, key);
    if (lbas[lo] !== key) return undefined;
    next = lo + 1;
    return lo;
  };
  if (!aliases || aliases.size === 0) return find;
  return (key) => {
    const b = aliases.get(key);
    return find(b ?? key);
  };
}

/**
 * Runs of at least this many bytes of blocks lying back to back in memory stay where they
 * are (gathered by the PUT); shorter ones are copied, as a piece per block would cost the
 * store more (a syscall vector entry, a socket write) than the copy.
 */
export const GATHER_MIN = 64 * 1024;

interface Run {
  /** Index of the run's first block. */
  first: number;
  count: number;
  /** The run's bytes: the caller's memory. */
  bytes: Buffer;
  /** Stored by reference (long enough, or laid ahead), not copied. */
  keep: boolean;
  /** In a buffer laid ahead (the segment's own memory, not the caller's). */
  laid: boolean;
}

/**
 * The blocks as runs that sit back to back in memory (sequential writes fill slabs in order).
 * Runs in the buffers of `laid` are kept whatever their length.
 */
function blockRuns(blocks: Buffer[], laid?: Set<ArrayBufferLike>): Run[] {
  const runs: Run[] = [];
  for (let k = 0; k < blocks.length;) {
    const b = blocks[k] as Buffer;
    let n = 1;
    let len = b.length;
    for (; k + n < blocks.length; n++) {
      const nb = blocks[k + n] as Buffer;
      if (nb.buffer !== b.buffer || nb.byteOffset !== b.byteOffset + len) break;
      len += nb.length;
    }
    const bytes = n === 1 ? b : Buffer.from(b.buffer, b.byteOffset, len);
    const inLaid = laid !== undefined && laid.has(b.buffer);
    runs.push({ first: k, count: n, bytes, keep: inLaid || len >= GATHER_MIN, laid: inLaid });
    k += n;
  }
  return runs;
}

/** Bytes layAhead copies between two pauses. */
export const LAY_PIECE = 2 * 1024 * 1024;

/**
 * Copy the blocks a build would copy (runs shorter than GATHER_MIN: random writes' blocks,
 * scattered over the write buffer's slabs) into buffers from `memory` ahead of the build,
 * calling `pause` after every LAY_PIECE bytes. The build (buildCheckpoint with `laid`) then
 * copies nothing: a segment of random writes was ~30 MiB of copies in one synchronous step,
 * which held every request arriving meanwhile for tens of milliseconds. Nothing here depends
 * on the segment's id or header, so the pauses may come before the id is taken.
 * Returns the blocks with the copied ones in their new places (the others as they were), or
 * undefined when there is nothing to copy.
 */
export async function layAhead(
  blocks: Buffer[],
  memory: SegmentMemory | undefined,
  pause: () => Promise<void>,
): Promise<{ blocks: Buffer[]; laid: LaidBlocks } | undefined> {
  const runs = blockRuns(blocks);
  let left = 0;
  for (const r of runs) if (!r.keep) left += r.bytes.length;
  if (left === 0) return undefined;
  const largest = memory?.largest ?? Infinity;
  const take = (need: number): Buffer => {
    const n = Math.max(need, Math.min(left, largest));
    // (Never from Node's shared pool: a laid buffer is known by its memory.)
    return memory ? memory.take(n) : Buffer.allocUnsafeSlow(n);
  };
  const out = blocks.slice();
  const buffers: Buffer[] = [];
  let buf: Buffer | undefined;
  let at = 0;
  let piece = 0;
  for (const r of runs) {
    if (r.keep) continue;
    // A whole run at once where it fits; a block never straddles two buffers.
    const whole = buf !== undefined && at + r.bytes.length <= buf.length;
    if (whole) r.bytes.copy(buf as Buffer, at);
    for (let k = r.first; k < r.first + r.count; k++) {
      const b = blocks[k] as Buffer;
      if (!whole && (buf === undefined || at + b.length > buf.length)) {
        buf = take(b.length);
        buffers.push(buf);
        at = 0;
      }
      const into = buf as Buffer;
      if (!whole) b.copy(into, at);
      out[k] = into.subarray(at, at + b.length);
      at += b.length;
      left -= b.length;
    }
    piece += r.bytes.length;
    if (piece >= LAY_PIECE && left > 0) {
      piece = 0;
      await pause();
    }
  }
  return { blocks: out, laid: { buffers } };
}

/**
 * Lay the blocks out after the nodes: short runs copied into `segment` (from `dataOffset`
 * on, in order), long ones left where they are. Copies that do not fit in `segment` go on in
 * buffers from `more` (told the block's length and the bytes still to copy; a block never
 * straddles two buffers).
 * Returns the segment's parts in order, where each block's stored bytes lie, and the
 * buffers used (`segment` first).
 */
function layBlocks(
  blocks: Buffer[],
  runs: Run[],
  segment: Buffer,
  dataOffset: number,
  own: number,
  more: (need: number, left: number) => Buffer,
): { parts: Buffer[]; stored: Buffer[]; buffers: Buffer[] } {
  const parts: Buffer[] = [];
  const buffers = [segment];
  const stored: Buffer[] = new Array<Buffer>(blocks.length);
  let buf = segment;
  let from = 0; // start of the current buffer's current part
  let at = dataOffset; // where the next copied byte goes in the current buffer
  let left = own - dataOffset; // bytes still to copy
  const cut = (): void => {
    if (at > from) parts.push(buf.subarray(from, at));
    from = at;
  };
  for (const r of runs) {
    if (r.keep) {
      cut();
      parts.push(r.bytes);
      for (let k = r.first; k < r.first + r.count; k++) stored[k] = blocks[k] as Buffer;
      continue;
    }
    if (at + r.bytes.length <= buf.length) {
      r.bytes.copy(buf, at);
      for (let k = r.first; k < r.first + r.count; k++) {
        const len = (blocks[k] as Buffer).length;
        stored[k] = buf.subarray(at, at + len);
        at += len;
      }
      left -= r.bytes.length;
      continue;
    }
    for (let k = r.first; k < r.first + r.count; k++) {
      const b = blocks[k] as Buffer;
      if (at + b.length > buf.length) {
        cut();
        buf = more(b.length, left);
        buffers.push(buf);
        from = 0;
        at = 0;
      }
      b.copy(buf, at);
      stored[k] = buf.subarray(at, at + b.length);
      at += b.length;
      left -= b.length;
    }
  }
  if (at > from || parts.length === 0) parts.push(buf.subarray(from, at));
  return { parts, stored, buffers };
}

/** Seal each block into its place in the segment, bound to its address and codec; their CRCs. */
function sealBlocks(
  c: CheckpointInput,
  sealer: Sealer,
  codecs: number[],
  segment: Buffer,
  offsets: number[],
  lens: number[],
): number[] {
  const crcs: number[] = [];
  for (let k = 0; k < c.blocks.length; k++) {
    const at = offsets[k] as number;
    const ad = sealer.blockAd(
      { lba: c.lbas[k] as number, seg: c.id, off: at },
      codecs[k] as number,
    );
    sealer.seal(c.blocks[k] as Buffer, sealer.nonce(c.id, k), ad, segment, at);
    crcs.push(crc32c(segment.subarray(at, at + (lens[k] as number))));
  }
  return crcs;
}

/** A segment with no nodes and no data (the first checkpoint of a new volume or clone). */
export function buildEmptySegment(id: number, nowMs: number, headBytes: Buffer): Buffer {
  const headerLen = segmentHeaderSize(headBytes.length, 0, 0);
  const nodesOffset = align(headerLen, SECTOR);
  return Buffer.concat([
    encodeSegmentHeader({
      segmentId: id,
      createdMs: nowMs,
      nodesOffset,
      nodeCount: 0,
      nodeSize: 0,
      dataOffset: nodesOffset,
      blockCount: 0,
      dataBlockSize: 0,
      totalLength: nodesOffset,
      headBytes,
      lbas: [],
      nodes: [],
    }),
    Buffer.alloc(nodesOffset - headerLen),
  ]);
}
