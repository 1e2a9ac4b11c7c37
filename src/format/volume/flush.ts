/**
 * The body of one flush: apply a frozen generation to the copy-on-write index and lay it out
 * as one segment; the dirty index nodes then become clean cached nodes at their new homes, so
 * the next segment can be built on this one while its PUT is in flight. The façade
 * (volume.ts) runs the pipeline: when to flush, the PUTs, and when the head is CASed.
 */
import { crc32c } from '../codec/binary.js';
import { CODEC_RAW, encodeBlock, type StoredBlock } from '../codec/block.js';
import type { Sealer } from '../codec/seal.js';
import type { HeadRecord } from '../codec/head.js';
import { ENTRY_SIZE, NODE_HEADER, PENDING_SEG } from '../codec/node.js';
import { type BTree, Miss, type Node } from '../index/btree.js';
import type { NodeLoader } from '../index/loader.js';
import { buildCheckpoint, type BuiltCheckpoint } from './segment-builder.js';
import type { Generation } from './write-buffer.js';

/** A checkpoint's head, except its index root (the segment builder fills that in). */
export type NextHead = Omit<HeadRecord, 'root' | 'rootLevel'>;

export interface FlushInput {
  tree: BTree;
  loader: NodeLoader;
  /** The frozen generation to write. */
  gen: Generation;
  /** The head of the checkpoint written as segment `id`. */
  head: (id: number, nowMs: number) => NextHead;
  blockSize: number;
  /**
   * Volumes with block codecs (FEATURE_CODECS): the compression of new blocks. Blocks are
   * then packed at byte offsets, and the generation keeps its plain blocks until the segment
   * lands (the segment holds them compressed).
   */
  compression?: number;
  /** Recent compression outcomes (data that does not compress is mostly not tried). */
  compressibility?: Compressibility;
  /** Encrypted volumes: seals blocks and nodes (compress, then seal). */
  sealer?: Sealer;
  /** Buffers for the segment (see SegmentBuffers). */
  buffers?: SegmentBuffers;
}

/**
 * Recycled buffers for segments: a segment of tens of MiB written into fresh memory pays a
 * page fault per 4 KiB page on the copy (costly in a VM, where it was most of a sequential
 * write's CPU time). A segment's buffer comes back once its PUT has landed and nothing reads
 * from it any more (the frozen generation it served is released); a segment whose PUT failed
 * keeps its buffer (its blocks go back into the write buffer from there).
 */
export class SegmentBuffers {
  private readonly free: ArrayBuffer[] = [];

  /** At most `keep` buffers wait for reuse. */
  constructor(private readonly keep: number) {}

  take(bytes: number): Buffer {
    // Any free buffer large enough; smaller ones are dropped (segments grow to a steady size).
    while (this.free.length > 0) {
      const ab = this.free.pop() as ArrayBuffer;
      if (ab.byteLength >= bytes) return Buffer.from(ab, 0, bytes);
    }
    // Room to grow a little, so that the next segment, slightly larger, fits too.
    return Buffer.from(new ArrayBuffer(Math.ceil((bytes * 1.125) / 65536) * 65536), 0, bytes);
  }

  give(segment: Buffer): void {
    const ab = segment.buffer;
    if (!(ab instanceof ArrayBuffer) || segment.byteOffset !== 0) return;
    if (this.free.length < this.keep && !this.free.includes(ab)) this.free.push(ab);
  }
}

/**
 * Early abort for data that does not compress (already compressed or encrypted files,
 * random data): after MISSES blocks in a row saved nothing, only the first block of every
 * PROBE is tried (the others are stored raw) until one saves again. A switch back to
 * compressible data costs at most PROBE blocks stored raw.
 */
export class Compressibility {
  static readonly MISSES = 64;
  static readonly PROBE = 16;
  private misses = 0;
  private skips = 0;

  /** Only probing: blocks go in groups of PROBE, the first one tried. */
  get probing(): boolean {
    return this.misses >= Compressibility.MISSES;
  }

  shouldTry(): boolean {
    if (!this.probing) return true;
    return this.skips++ % Compressibility.PROBE === 0;
  }

  record(saved: boolean): void {
    this.misses = saved ? 0 : this.misses + 1;
    if (saved) this.skips = 0;
  }
}

/** Blocks per batch of compressions (in parallel on the thread pool). */
const COMPRESS_BATCH = 256;

async function compressAll(
  blocks: Buffer[],
  codec: number,
  c: Compressibility = new Compressibility(),
): Promise<StoredBlock[]> {
  const out: StoredBlock[] = [];
  for (let i = 0; i < blocks.length;) {
    // While probing, a batch is one probe group: its outcome decides the next one.
    const n = c.probing ? Compressibility.PROBE : COMPRESS_BATCH;
    const batch = blocks.slice(i, i + n);
    i += batch.length;
    const tried = batch.map(() => codec !== CODEC_RAW && c.shouldTry());
    const enc = await Promise.all(
      batch.map((b, k) => (tried[k] ? encodeBlock(b, codec) : { bytes: b, codec: CODEC_RAW })),
    );
    enc.forEach((e, k) => {
      if (tried[k]) c.record(e.codec !== CODEC_RAW);
      out.push(e);
    });
  }
  return out;
}

/** Changes to the head that the next checkpoint records besides its content. */
export interface MetadataPatch {
  /** Compaction history: checkpoints below `floor` are dropped except `kept`. */
  history?: { floor: number | 'self'; floorMs: number; kept: number[] };
  /** This checkpoint restores that one. */
  restoredFrom?: number;
  /** The volume no longer reads from a parent (flatten). */
  detach?: true;
}

/** The head of checkpoint `id`, written after `prev` with `patch` applied. */
export function nextHead(
  prev: HeadRecord,
  c: { id: number; nowMs: number; size: number; patch: MetadataPatch; walSeq: number | undefined },
): NextHead {
  // A restore marks only its own checkpoint; history and everything else carry over.
  const { restoredFrom: _previousRestore, ...base } = prev;
  const { history, restoredFrom, detach } = c.patch;
  return {
    ...base,
    ...(c.walSeq === undefined ? {} : { walSeq: c.walSeq }),
    ...(history
      ? {
          history: {
            floor: history.floor === 'self' ? c.id : history.floor,
            floorMs: history.floorMs,
            kept: history.kept,
          },
        }
      : {}),
    ...(restoredFrom === undefined ? {} : { restoredFrom }),
    ...(detach ? { clone: undefined } : {}),
    size: c.size,
    checkpoint: c.id,
    checkpointMs: c.nowMs,
    prevCheckpoint: prev.checkpoint,
    lastSegment: c.id,
  };
}

const PENDING = { seg: PENDING_SEG, off: 0, len: 0, crc: 0, codec: 0 };

/**
 * Apply `gen` to the index and lay it out as segment `id` (not yet written). From here on the
 * frozen blocks live in the segment buffer (immutable): the generation serves reads from
 * there, so a flush holds its data once.
 */
export async function buildSegment(
  f: FlushInput & { id: () => number },
): Promise<BuiltCheckpoint & { nodes: Node[]; keptPlain: boolean }> {
  const { tree, loader, gen } = f;
  for (const [lo, hi] of gen.ranges) await loader.run(() => tree.deleteRange(lo, hi));
  const lbas: number[] = [];
  const blocks: Buffer[] = [];
  for (const lba of [...gen.blocks.keys()].sort((a, b) => a - b)) {
    const v = gen.blocks.get(lba) as Buffer | null;
    const change = (): number | Miss =>
      v ? tree.insert(lba, PENDING) : tree.deleteRange(lba, lba + 1);
    if (change() instanceof Miss) await loader.run(change);
    if (v) {
      lbas.push(lba);
      blocks.push(v);
    }
  }
  let codecs: number[] | undefined;
  let stored = blocks;
  if (f.compression !== undefined) {
    const enc = await compressAll(blocks, f.compression, f.compressibility);
    stored = enc.map((e) => e.bytes);
    codecs = enc.map((e) => e.codec);
  }
  const nodes = tree.dirtyNodes();
  // The id is taken only now, after the last await: builds run one at a time.
  const id = f.id();
  const nowMs = Date.now();
  const sealer = f.sealer;
  // (Sealed blocks are sealed into the segment by the builder, which takes their CRCs.)
  const crcs = sealer ? undefined : stored.map((b) => crc32c(b));
  const out = buildCheckpoint({
    id,
    nowMs,
    head: f.head(id, nowMs),
    root: tree.root,
    nodes,
    nodeSize: loader.nodeSize,
    blockSize: f.blockSize,
    lbas,
    blocks: stored,
    ...(crcs ? { crcs } : {}),
    ...(codecs ? { codecs } : {}),
    ...(sealer ? { sealer } : {}),
    ...(f.buffers ? { alloc: (n: number) => (f.buffers as SegmentBuffers).take(n) } : {}),
  });
  // From here on the generation serves the blocks stored raw from the segment (immutable);
  // compressed or sealed ones stay in its slabs until the segment lands.
  let kept = false;
  for (let k = 0; k < blocks.length; k++) {
    if (out.codecs && out.codecs[k] !== CODEC_RAW) {
      kept = true;
      continue;
    }
    const at = out.blockOffsets[k] as number;
    gen.blocks.set(lbas[k] as number, out.segment.subarray(at, at + f.blockSize));
  }
  // Nothing refers to the generation's slabs any more (readers copy out synchronously).
  if (!kept) gen.recycleSlabs();
  return { ...out, nodes, keptPlain: kept };
}

/**
 * The checkpoint is written: its dirty nodes become clean cached nodes at their new homes,
 * with the entries exactly as written (taken back from the segment).
 */
export function adoptNodes(
  built: BuiltCheckpoint & { nodes: Node[] },
  tree: BTree,
  loader: NodeLoader,
): void {
  const id = built.head.checkpoint;
  built.nodes.forEach((node, k) => {
    const off = built.nodeOffsets[k] as number;
    // (Sealed nodes: their plain encoding, kept by the builder.)
    const plain = built.plainNodes?.[k];
    const src = plain ?? built.segment;
    const at = (plain ? 0 : off) + NODE_HEADER;
    src.copy(node.entries, 0, at, at + node.length * ENTRY_SIZE);
    node.dirty = false;
    node.children = undefined;
    loader.add(id, off, node);
  });
  const root = tree.root;
  built.rootEntries.copy(root.entries, 0);
  root.dirty = false;
  root.children = undefined;
}
