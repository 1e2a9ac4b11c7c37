/**
 * The body of one flush: apply a frozen generation to the copy-on-write index and lay it out
 * as one segment; the dirty index nodes then become clean cached nodes at their new homes, so
 * the next segment can be built on this one while its PUT is in flight. The façade
 * (volume.ts) runs the pipeline: when to flush, the PUTs, and when the head is CASed.
 */
import { HyperError } from '../../errors.js';
import { crc32c } from '../codec/binary.js';
import {
  CODEC_LZ4,
  CODEC_RAW,
  compressionProbe,
  encodeBlock,
  lz4Packer,
  type StoredBlock,
} from '../codec/block.js';
import type { Sealer } from '../codec/seal.js';
import type { HeadRecord } from '../codec/head.js';
import { ENTRY_SIZE, NODE_HEADER, PENDING_SEG } from '../codec/node.js';
import { type BTree, type BlockPtr, Miss, type Node } from '../index/btree.js';
import {
  type ContentHasher,
  hashEntry,
  hashMatches,
  hashPrefix,
  pointerKey,
} from '../codec/dedup.js';
import type { NodeLoader } from '../index/loader.js';
import { buildCheckpoint, layAhead, type BuiltCheckpoint } from './segment-builder.js';
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
  /** Deduplicating volumes: the content-hash index and the changes asked of it. */
  dedup?: {
    tree: BTree;
    hasher: ContentHasher;
    patch?: DedupPatch | undefined;
    /**
     * Write the content index's changed nodes into this segment only once they take this
     * many bytes (or a patch asks for it): the index is a cache of where contents are, so a
     * checkpoint may carry an older one, and leaves that collect many new entries before they
     * are written cost one node write for all of them instead of one per flush.
     */
    deferBytes: number;
  };
}

/**
 * Changes to the content-hash index besides those writes make (compaction, flatten): applied
 * at the start of the next segment, before its blocks are looked up. Any patch, even an empty
 * one (close, restore), makes that segment write the index's changed nodes.
 */
export interface DedupPatch {
  /** Drop the entries of these hash prefixes (their blocks are being moved or are dead). */
  forget?: number[];
  /** Rewrite the index nodes holding these keys (their segment is being emptied). */
  touch?: number[];
}

/** Two patches as one, `b` applied after `a`. */
function mergeDedupPatches(a?: DedupPatch, b?: DedupPatch): DedupPatch | undefined {
  if (!a || !b) return a ?? b;
  return {
    forget: [...(a.forget ?? []), ...(b.forget ?? [])],
    touch: [...(a.touch ?? []), ...(b.touch ?? [])],
  };
}

/**
 * Recycled buffers for segments: a segment of tens of MiB written into fresh memory pays a
 * page fault per 4 KiB page on the copy (costly in a VM, where it was most of a sequential
 * write's CPU time). A segment's buffer comes back once its PUT has landed and nothing reads
 * from it any more (the frozen generation it served is released); a segment whose PUT failed
 * keeps its buffer (its blocks go back into the write buffer from there).
 *
 * Every buffer is made `largest` bytes long (pages never written cost nothing), so that any
 * kept buffer fits any segment of the usual size: segments cut by flushes at arbitrary points
 * (a replica commits every second) vary in size, and a pool that dropped the smaller buffers
 * faulted in nearly every byte it shipped (80k faults per 312 MiB in the replica's worker).
 * A segment with more of its own than `largest` (a flush that took in more than a segment's
 * worth while PUTs were in flight: 45-70 MiB segments in the replica's worker) takes several
 * buffers (the builder's SegmentMemory) instead of a fresh outsized one that was never kept.
 * Kept buffers hold their pages: they are let go after `idleMs` without a segment built.
 */
/** Resident bytes past what recent segments need that a kept segment buffer may hold. */
const STALE_SLACK = 4 * 1024 * 1024;

export class SegmentBuffers {
  private free: ArrayBuffer[] = [];
  private idle: NodeJS.Timeout | undefined;
  /** The most bytes each buffer has held: its pages up to there are resident for good. */
  private readonly marks = new WeakMap<ArrayBuffer, number>();
  /** Bytes asked per take, smoothed over the last few. */
  private recent = 0;

  /**
   * At most `keep` buffers wait for reuse, none larger than `largest` bytes (an outsized
   * segment's buffer goes back to the allocator instead of staying resident).
   */
  constructor(
    private keep: number,
    readonly largest = Infinity,
    private readonly idleMs = 10_000,
  ) {}

  /**
   * Keep at most `n` buffers from now on (the write buffer's bound, in segments, changed):
   * every kept buffer stays resident up to the largest segment it ever held, so a pool
   * larger than the segments the bound lets be in flight is memory held for nothing.
   */
  setKeep(n: number): void {
    this.keep = n;
    if (this.free.length > n) this.free.length = n;
  }

  take(bytes: number): Buffer {
    this.recent = this.recent === 0 ? bytes : 0.75 * this.recent + 0.25 * bytes;
    // The kept buffer that has held at least as much already, the least of them (no page to
    // fault in, the fewest idle ones), else the one that has held the most.
    let pick = -1;
    let pickMark = 0;
    for (let i = 0; i < this.free.length; i++) {
      const ab = this.free[i] as ArrayBuffer;
      if (ab.byteLength < bytes) continue;
      const mark = this.marks.get(ab) ?? 0;
      const better =
        pick < 0 ||
        (mark >= bytes ? pickMark < bytes || mark < pickMark : pickMark < bytes && mark > pickMark);
      if (better) {
        pick = i;
        pickMark = mark;
      }
    }
    let ab: ArrayBuffer;
    if (pick >= 0) ab = this.free.splice(pick, 1)[0] as ArrayBuffer;
    else {
      const size = Number.isFinite(this.largest) && bytes <= this.largest ? this.largest : bytes;
      ab = new ArrayBuffer(Math.ceil(size / 65536) * 65536);
    }
    this.marks.set(ab, Math.max(this.marks.get(ab) ?? 0, bytes));
    return Buffer.from(ab, 0, bytes);
  }

  give(segment: Buffer): void {
    const ab = segment.buffer;
    if (!(ab instanceof ArrayBuffer) || segment.byteOffset !== 0) return;
    if (ab.byteLength > Math.ceil(this.largest / 65536) * 65536) return;
    if (this.free.length >= this.keep || this.free.includes(ab)) return;
    // A buffer that once held far more than the segments now being built keeps those pages
    // resident for nothing (random writes' segments shrink as their index nodes grow): let it
    // go, and a fresh one is touched only as far as it is used.
    if ((this.marks.get(ab) ?? 0) > 1.5 * this.recent + STALE_SLACK) return;
    this.free.push(ab);
    if (this.idle === undefined) {
      this.idle = setTimeout(() => {
        this.idle = undefined;
        this.free = [];
      }, this.idleMs);
      this.idle.unref();
    } else this.idle.refresh();
  }

  /** Buffers waiting for reuse (tests). */
  get kept(): number {
    return this.free.length;
  }
}

/**
 * Early abort for data that does not compress (already compressed or encrypted files,
 * random data): after MISSES blocks in a row saved nothing, only the first block of every
 * PROBE is tried, with a quick lz4 test (compressionProbe), and the others are stored raw,
 * until one saves again. A switch back to compressible data costs at most PROBE blocks
 * stored raw.
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

/**
 * Let other requests run: a segment build is up to ~100 ms of work on the event loop (index
 * inserts, CRCs, compression), which in one piece put every read arriving meanwhile behind
 * it. The build yields by counts of work done, never by time (a seeded run replays the same).
 */
const nextTurn = (): Promise<void> => new Promise((r) => setImmediate(r));
/** Blocks whose CRC is taken before other requests get a turn (~1.5 ms, ~2.5 as a table walk). */
const CRC_TURN = 2048;

/** Blocks per batch of compressions (zstd: in parallel on the thread pool). */
const COMPRESS_BATCH = 64;
/**
 * Compressing on the event loop (lz4), the blocks compressed before other requests get a
 * turn (~0.6 ms of a typical image). A 32 MiB segment of one takes ~75 ms to compress: held in
 * one piece, it put reads arriving meanwhile behind all of it.
 */
const YIELD_BLOCKS = 64;

async function compressAll(
  blocks: Buffer[],
  codec: number,
  c: Compressibility = new Compressibility(),
  /** Told the bytes of memory the stored forms hold besides `blocks` (lz4's slabs). */
  held: { bytes: number } = { bytes: 0 },
): Promise<StoredBlock[]> {
  const out: StoredBlock[] = [];
  if (codec === CODEC_RAW) {
    for (const b of blocks) out.push({ bytes: b, codec: CODEC_RAW });
    return out;
  }
  if (codec === CODEC_LZ4) {
    // Packed on this thread (lz4 is its own probe).
    const packer = await lz4Packer();
    for (let i = 0; i < blocks.length; i++) {
      const b = blocks[i] as Buffer;
      if (!c.shouldTry()) out.push({ bytes: b, codec: CODEC_RAW });
      else {
        const e = packer.pack(b);
        c.record(e.codec !== CODEC_RAW);
        out.push(e);
      }
      // (Counted, not timed: a seeded run must replay the same.)
      if (i % YIELD_BLOCKS === YIELD_BLOCKS - 1 && i + 1 < blocks.length) await nextTurn();
    }
    held.bytes = packer.slabBytes;
    return out;
  }
  const probe = await compressionProbe();
  let sinceYield = 0;
  for (let i = 0; i < blocks.length;) {
    const batch = blocks.slice(i, i + COMPRESS_BATCH);
    i += batch.length;
    const tried: boolean[] = [];
    const pending: (StoredBlock | Promise<StoredBlock>)[] = [];
    for (const b of batch) {
      if (c.probing) {
        // Probing is decided here, block by block, with a quick lz4 test on this thread:
        // waiting for probes on the thread pool (every 16 blocks) held up the segment
        // build, and with it the writers, for a fifth of a sequential write.
        const probed = c.shouldTry();
        const saves = probed && probe(b);
        if (probed) c.record(saves);
        sinceYield += (probed ? 1 : 0) + (saves ? 1 : 0);
        tried.push(false);
        pending.push(saves ? encodeBlock(b, codec) : { bytes: b, codec: CODEC_RAW });
      } else {
        sinceYield++;
        tried.push(true);
        pending.push(encodeBlock(b, codec));
      }
    }
    const enc = pending.some((p) => p instanceof Promise)
      ? await Promise.all(pending)
      : (pending as StoredBlock[]);
    enc.forEach((e, k) => {
      if (tried[k]) c.record(e.codec !== CODEC_RAW);
      out.push(e);
    });
    // lz4 compresses on the event loop (a 4 KiB block of a typical image: ~9 µs): let
    // other requests in every YIELD_BLOCKS compressions rather than after a whole
    // segment's worth. (Counted, not timed: a seeded run must replay the same.)
    if (i < blocks.length && sinceYield >= YIELD_BLOCKS) {
      await nextTurn();
      sinceYield = 0;
    }
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
  /** The volume is a clone again (a flatten that found a clone of it made meanwhile). */
  attach?: NonNullable<HeadRecord['clone']>;
  /** Changes to the content-hash index (deduplicating volumes). */
  dedup?: DedupPatch;
}

/** Two patches as one, `b` applied after `a` (dedup changes accumulate). */
export function mergePatches(a: MetadataPatch | undefined, b: MetadataPatch | undefined) {
  if (!a || !b) return a ?? b;
  const dedup = mergeDedupPatches(a.dedup, b.dedup);
  const out: MetadataPatch = { ...a, ...b, ...(dedup ? { dedup } : {}) };
  // The later of detach and attach wins.
  if (b.attach) delete out.detach;
  if (b.detach) delete out.attach;
  return out;
}

/** The head of checkpoint `id`, written after `prev` with `patch` applied. */
export function nextHead(
  prev: HeadRecord,
  c: {
    id: number;
    nowMs: number;
    size: number;
    patch: MetadataPatch;
    walSeq: number | undefined;
    walChange?: number | undefined;
  },
): NextHead {
  // A restore marks only its own checkpoint; history and everything else carry over.
  const { restoredFrom: _previousRestore, ...base } = prev;
  const { history, restoredFrom, detach, attach, dedup: _dedup } = c.patch;
  return {
    ...base,
    ...(c.walSeq === undefined ? {} : { walSeq: c.walSeq }),
    ...(c.walChange === undefined ? {} : { walChange: c.walChange }),
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
    ...(attach ? { clone: attach } : {}),
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
): Promise<
  BuiltCheckpoint & { nodes: Node[]; keptPlain: boolean; scattered: boolean; packedBytes: number }
> {
  const { tree, loader, gen } = f;
  for (const [lo, hi] of gen.ranges) await loader.run(() => tree.deleteRange(lo, hi));
  const lbas: number[] = [];
  const blocks: Buffer[] = [];
  const sorted = ascending([...gen.blocks.keys()]);
  let follow = 0;
  for (let i = 1; i < sorted.length; i++)
    if ((sorted[i] as number) === (sorted[i - 1] as number) + 1) follow++;
  const dd = f.dedup ? await dedupPlan(f.dedup, loader, gen, sorted) : undefined;
  const step = Math.max(
    INDEX_BATCH.min,
    Math.min(INDEX_BATCH.max, Math.floor(loader.cacheNodes / 4)),
  );
  for (let at = 0; at < sorted.length; at += step) {
    const batch = sorted.slice(at, at + step);
    let prefetched = false;
    for (let i = 0; i < batch.length; i++) {
      const lba = batch[i] as number;
      const v = gen.blocks.get(lba) as Buffer | null;
      // A block whose content is stored already points there, and stores nothing.
      const found = dd?.found.get(lba);
      // (No closure per block unless a node is missing: a flush does this for every block.)
      const p = found ?? PENDING;
      if ((v ? tree.insert(lba, p) : tree.deleteRange(lba, lba + 1)) instanceof Miss) {
        const change = (): number | Miss =>
          v ? tree.insert(lba, p) : tree.deleteRange(lba, lba + 1);
        // The first miss of a batch loads the leaves (and nodes above them) the rest of it
        // changes, many at once: random writes over a large volume miss a leaf for most
        // blocks, and one load at a time costs a store round trip each. (A batch whose nodes
        // are all in memory, as a sequential write's are, skips that walk.)
        if (!prefetched) {
          prefetched = true;
          await prefetch(tree, loader, batch.slice(i));
        }
        if (change() instanceof Miss) await loader.run(change);
      }
      if (v && !found && !dd?.aliases.has(lba)) {
        lbas.push(lba);
        blocks.push(v);
      }
    }
    // A batch of inserts is up to ~7 ms on the event loop: other requests get a turn.
    if (at + step < sorted.length) await nextTurn();
  }
  let codecs: number[] | undefined;
  let stored = blocks;
  const packed = { bytes: 0 };
  if (f.compression !== undefined) {
    const enc = await compressAll(blocks, f.compression, f.compressibility, packed);
    stored = enc.map((e) => e.bytes);
    codecs = enc.map((e) => e.codec);
  }
  const sealer = f.sealer;
  // (Sealed blocks are sealed into the segment by the builder, which takes their CRCs.)
  // ~0.7 µs a 4 KiB block (~1.3 as a table walk): a turn for other requests every CRC_TURN blocks.
  let crcs: number[] | undefined;
  if (!sealer) {
    crcs = new Array<number>(stored.length);
    for (let k = 0; k < stored.length; k++) {
      crcs[k] = crc32c(stored[k] as Buffer);
      if (k % CRC_TURN === CRC_TURN - 1 && k + 1 < stored.length) await nextTurn();
    }
  }
  // Blocks the build would copy are copied now, a piece per turn (the build is one step).
  const laid = sealer ? undefined : await layAhead(stored, f.buffers, nextTurn);
  const nodes = tree.dirtyNodes();
  const dirtyContent = f.dedup ? f.dedup.tree.dirtyNodes() : [];
  const writeContent =
    !!f.dedup &&
    (f.dedup.patch !== undefined ||
      (dirtyContent.length + 1) * loader.nodeSize >= f.dedup.deferBytes);
  const dedupNodes = writeContent ? dirtyContent : [];
  // The id is taken only now, after the last await: builds run one at a time.
  const id = f.id();
  const nowMs = Date.now();
  const out = buildCheckpoint({
    id,
    nowMs,
    head: f.head(id, nowMs),
    root: tree.root,
    nodes,
    ...(f.dedup && dd && writeContent
      ? { dedup: { root: f.dedup.tree.root, nodes: dedupNodes, slots: slotsOf(dd.owners, lbas) } }
      : {}),
    ...(dd ? { aliases: dd.aliases } : {}),
    nodeSize: loader.nodeSize,
    blockSize: f.blockSize,
    lbas,
    blocks: laid ? laid.blocks : stored,
    ...(laid ? { laid: laid.laid } : {}),
    ...(crcs ? { crcs } : {}),
    ...(codecs ? { codecs } : {}),
    ...(sealer ? { sealer } : {}),
    ...(f.buffers ? { memory: f.buffers } : {}),
  });
  // A content index kept back: its new entries learn where their blocks went, in memory
  // (their paths are dirty, nothing to load).
  if (f.dedup && dd && !writeContent) {
    const at = slotsOf(dd.owners, lbas);
    for (const [key, k] of at) {
      const r = f.dedup.tree.insert(key, {
        seg: id,
        off: out.blockOffsets[k] as number,
        len: out.blockLengths[k] as number,
        crc: out.blockCrcs[k] as number,
        codec: out.codecs ? (out.codecs[k] as number) : CODEC_RAW,
      });
      if (r instanceof Miss)
        throw new HyperError('internal', 'INTERNAL', 'content index entry not in memory');
    }
  }
  // From here on the generation serves the blocks stored raw that the segment's buffer holds
  // (immutable); compressed or sealed ones stay in its slabs until the segment lands, and so
  // do those that stored nothing of their own (deduplicated) and the runs the segment's PUT
  // gathers from the slabs.
  let kept = out.gathered || (!!dd && (dd.found.size > 0 || dd.aliases.size > 0));
  for (let k = 0; k < blocks.length; k++) {
    if (out.codecs && out.codecs[k] !== CODEC_RAW) {
      kept = true;
      continue;
    }
    // (A block the segment's PUT gathers from where it is stays as it is.)
    const st = out.stored[k] as Buffer;
    if (st !== blocks[k]) gen.blocks.set(lbas[k] as number, st);
  }
  // Nothing refers to the generation's slabs any more (readers copy out synchronously).
  if (!kept) gen.recycleSlabs();
  return {
    ...out,
    nodes: [...nodes, ...dedupNodes],
    keptPlain: kept,
    // lz4 blocks stay in the packer's slabs until the segment lands (sent from there, or
    // copied into its buffers).
    packedBytes: packed.bytes,
    // Most blocks do not follow the one before: small writes scattered over the volume.
    scattered: follow * 2 < sorted.length - 1,
  };
}

/**
 * `keys` in ascending order. A sequential write's blocks arrive in order (a Map keeps
 * insertion order), so most generations need no sort; the others sort as a typed array
 * (numeric, without a comparator call per comparison).
 */
export function ascending(keys: number[]): number[] {
  for (let i = 1; i < keys.length; i++)
    if ((keys[i] as number) < (keys[i - 1] as number))
      return Array.from(Float64Array.from(keys).sort());
  return keys;
}

/** Pointer key → position in `lbas` of the block it points at. */
function slotsOf(owners: Map<number, number>, lbas: number[]): Map<number, number> {
  const at = new Map<number, number>();
  lbas.forEach((lba, k) => at.set(lba, k));
  return new Map([...owners].map(([key, lba]) => [key, at.get(lba) as number]));
}

/** Blocks looked up in the content-hash index per batch (their nodes are loaded in parallel). */
const DEDUP_BATCH = 512;
/**
 * Blocks applied to the block index per batch (their nodes are loaded in parallel first): a
 * quarter of what the node cache holds (so the batch's leaves stay cached until it is
 * applied), within these bounds.
 */
const INDEX_BATCH = { min: 64, max: 2048 };
/** Index nodes loaded at once ahead of a batch. */
const PREFETCH_LOADS = 16;

interface DedupPlanned {
  /** Blocks whose content is stored already: where. */
  found: Map<number, BlockPtr>;
  /** Blocks whose content another block of this flush stores: lba → that block's lba. */
  aliases: Map<number, number>;
  /** Pending pointer entries of the index: key → the lba whose block they point at. */
  owners: Map<number, number>;
}

/**
 * Look every block of the generation up in the content-hash index (after applying the
 * patch): contents it knows are not stored again, new ones get index entries pointing at
 * the block this segment stores (pending until the builder lays it out).
 */
async function dedupPlan(
  d: NonNullable<FlushInput['dedup']>,
  loader: NodeLoader,
  gen: Generation,
  sorted: number[],
): Promise<DedupPlanned> {
  const { tree } = d;
  const p = d.patch;
  await prefetch(tree, loader, [...(p?.forget ?? []).map(pointerKey), ...(p?.touch ?? [])], true);
  for (const x of p?.forget ?? []) {
    const k = pointerKey(x);
    await loader.run(() => tree.deleteRange(k, k + 2));
  }
  for (const k of p?.touch ?? []) {
    // Writing an entry back as it is makes its path dirty: the next segment rewrites it.
    const e = await loader.run(() => tree.lookupEntry(k));
    if (e) {
      const copy = Buffer.from(e);
      await loader.run(() => tree.putEntry(k, copy));
    }
  }
  const out: DedupPlanned = { found: new Map(), aliases: new Map(), owners: new Map() };
  const ownerOf = new Map<number, number>();
  for (let i = 0; i < sorted.length; i += DEDUP_BATCH) {
    const batch: [number, Buffer][] = [];
    for (const lba of sorted.slice(i, i + DEDUP_BATCH)) {
      const v = gen.blocks.get(lba);
      if (v) batch.push([lba, d.hasher.hash(v)]);
    }
    // Load the nodes the batch needs first, many at once, while nothing changes (a miss
    // names a child of an in-memory node by position: valid only until the next change).
    // Then plan each block in order; a node evicted since is loaded on the spot.
    await prefetch(
      tree,
      loader,
      batch.map(([, h]) => pointerKey(hashPrefix(h))),
      true,
    );
    for (const [lba, hash] of batch) {
      for (let m = planBlock(tree, lba, hash, ownerOf, out); m;) {
        await loader.load(m);
        m = planBlock(tree, lba, hash, ownerOf, out);
      }
    }
    // Hashing is CPU work on the event loop: let other requests in between batches.
    await nextTurn();
  }
  return out;
}

/**
 * Look one block's content up and record the outcome in `out` (found, alias, or a new owner
 * with its two index entries added); or, having changed nothing, the node it misses.
 */
function planBlock(
  tree: BTree,
  lba: number,
  hash: Buffer,
  ownerOf: Map<number, number>,
  out: DedupPlanned,
): Miss | undefined {
  const x = hashPrefix(hash);
  const k = pointerKey(x);
  const tail = tree.lookupEntry(k + 1);
  if (tail instanceof Miss) return tail;
  // (The pointer entry sits next to its hash entry: normally in the same leaf.)
  const ptr = tree.lookup(k);
  if (ptr instanceof Miss) return ptr;
  if (tail) {
    if (!hashMatches(tail, hash)) return undefined; // another content with the same prefix
    const owner = ownerOf.get(x);
    if (owner !== undefined) {
      out.aliases.set(lba, owner);
      return undefined;
    }
    if (ptr) {
      if (ptr.seg !== PENDING_SEG) out.found.set(lba, ptr);
      return undefined;
    }
  }
  // Both entries go in together: first make sure neither insert can miss a node.
  const m = tree.reach(k) ?? tree.reach(k + 1);
  if (m) return m;
  const a = tree.insert(k, PENDING);
  const b = tree.putEntry(k + 1, hashEntry(hash, x));
  if (a instanceof Miss || b instanceof Miss)
    throw new HyperError('internal', 'INTERNAL', 'content index node evicted while planning');
  ownerOf.set(x, lba);
  out.owners.set(k, lba);
  return undefined;
}

/**
 * Load the index nodes that changing keys `keys` needs (with `pairs`, the key after each too:
 * a dedup pointer and its hash entry), several at once. Best effort: a node evicted again
 * before its change is loaded then.
 */
async function prefetch(
  tree: BTree,
  loader: NodeLoader,
  keys: number[],
  pairs = false,
): Promise<void> {
  for (let round = 0; round < 16; round++) {
    const misses = new Map<string, Miss>();
    for (const k of keys) {
      const r = tree.reach(k) ?? (pairs ? tree.reach(k + 1) : undefined);
      if (r) misses.set(`${r.parent.seg(r.index)}:${r.parent.off(r.index)}`, r);
    }
    if (misses.size === 0) return;
    await loadAll(loader, [...misses.values()]);
  }
}

/** Load these missed nodes, PREFETCH_LOADS at a time. */
async function loadAll(loader: NodeLoader, misses: Miss[]): Promise<void> {
  const queue = misses.slice();
  await Promise.all(
    Array.from({ length: Math.min(PREFETCH_LOADS, queue.length) }, async () => {
      for (let m = queue.pop(); m; m = queue.pop()) await loader.load(m);
    }),
  );
}

/**
 * The checkpoint is written: its dirty nodes become clean cached nodes at their new homes,
 * with the entries exactly as written (taken back from the segment).
 */
export function adoptNodes(
  built: BuiltCheckpoint & { nodes: Node[] },
  tree: BTree,
  loader: NodeLoader,
  dedupTree?: BTree,
): void {
  const id = built.head.checkpoint;
  built.nodes.forEach((node, k) => {
    const off = built.nodeOffsets[k] as number;
    // Sealed nodes were located in their plain encoding (kept by the builder); the others'
    // entries were located in place and are what the segment holds.
    const plain = built.plainNodes?.[k];
    if (plain) plain.copy(node.entries, 0, NODE_HEADER, NODE_HEADER + node.length * ENTRY_SIZE);
    node.dirty = false;
    node.children = undefined;
    loader.add(id, off, node);
  });
  const settle = (root: Node, entries: Buffer): void => {
    entries.copy(root.entries, 0);
    root.dirty = false;
    root.children = undefined;
  };
  settle(tree.root, built.rootEntries);
  if (dedupTree && built.dedupRootEntries) settle(dedupTree.root, built.dedupRootEntries);
}
