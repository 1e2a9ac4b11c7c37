/**
 * The read path: blocks still in the write buffer are served from there; the rest are looked
 * up in the index and come from, in order: the memory cache of clean blocks, a block being
 * fetched already (read-ahead), the disk cache (cache/disk-cache.ts), the store. Contiguous
 * blocks of one segment are fetched with one ranged GET, large runs split into parts fetched
 * in parallel (at most `maxGets` GETs in flight per volume); every block is verified against
 * the CRC32C of its index entry wherever it came from.
 *
 * Read-ahead: a table of recent sequential streams (several, so that interleaved readers
 * such as nbdcopy's connections each count as one). A read continuing a stream twice starts
 * prefetching past its end with a window that doubles on every continuation up to
 * `readAheadBytes`; a read that continues no stream starts a new one (the oldest is
 * forgotten), so a broken pattern stops the prefetching. The window is bounded by half of
 * the memory cache. A prefetched run of raw blocks stored back to back (what sequential
 * writes leave) is kept whole as a verified part outside the memory cache until its blocks
 * are read (at most the window plus the parts in flight); reads copy straight out of it.
 * Such a part is read from the disk cache when it holds all of its blocks, else from the
 * store (and then goes to the disk cache). Other prefetched blocks go to the memory cache.
 *
 * Read-around: a random read that must go to the store also fetches, in the same GET, the
 * blocks of neighbouring addresses stored right next to it in the same segment (up to
 * `readAroundBytes` in all), when the index nodes saying so are in memory already.
 *
 * Also answers block status (extents of data and holes).
 */
import { dataError, type HyperError } from '../../errors.js';
import type { DiskCache } from '../cache/disk-cache.js';
import { crc32c } from '../codec/binary.js';
import { crc32cOfRun } from '../codec/crc-combine.js';
import { CODEC_SEALED, openStoredBlock, openStoredBlockNow } from '../codec/seal.js';
import { CODEC_LZ4 } from '../codec/block.js';
import {
  PENDING_SEG,
  entrySegment,
  leafCodec,
  leafCrc,
  leafIsPending,
  leafLength,
  leafOffset,
  readLeaf,
  type BlockPtr,
} from '../codec/node.js';
import { Miss, type BTree, type ScanEntry } from '../index/btree.js';
import { DataCache, OldestKey } from '../index/cache.js';
import type { NodeLoader } from '../index/loader.js';
import { isLocalStoreUrl } from '../store/url.js';
import type { SegmentSource } from './segments.js';
import { KiB, MiB, type Extent } from './types.js';
import type { BufferedBlock } from './write-buffer.js';

/** Extents answers cover at most this many blocks per call (clients ask again for the rest). */
const MAX_EXTENT_BLOCKS = 1 << 20;
/** Sequential streams remembered for read-ahead. */
const STREAMS = 8;

export const DEFAULT_READ_AHEAD = 16 * MiB;
/** Read-around for stores where a request costs a round trip (0 for file:// and mem://). */
export const DEFAULT_READ_AROUND = 64 * KiB;
/**
 * Read-around runs while at least 1 in AROUND_PAYS of the random misses are (or, while it is
 * off, would be) served by the neighbours of an earlier one. Measured on a loopback RGW (fio
 * 4k randread QD16 over 256 MiB, 2,000 reads, 64 KiB around): neighbours served 10% of the
 * reads (1,826 GETs instead of 2,032) and doubled the server's CPU (2.0 s instead of 1.1 s:
 * 16 times the bytes received, verified and cached per GET), so IOPS fell from ~1,000 to
 * ~750. At a quarter of the reads it saves a third of the round trips, which on a store tens
 * of milliseconds away is worth the CPU.
 */
const AROUND_PAYS = 4;
/** Random misses counted before the first verdict; the counts halve past 4 times this. */
const AROUND_SAMPLE = 64;
/**
 * Data per read-ahead GET. 4 MiB rather than 2: half the requests per GiB, and each costs
 * both sides CPU (a cold 256 MiB nbdcopy read from a loopback RGW: 0.63-0.71 s against
 * 0.66-0.86 s, server CPU 0.54-0.65 s against 0.57-0.85 s; with 20 ms added to every reply,
 * 0.78-0.93 s against 0.99-1.28 s). Larger parts gained nothing more.
 */
export const DEFAULT_READ_PART = 4 * MiB;
export const DEFAULT_MAX_GETS = 16;
/**
 * Reads of at least this many bytes from a local store leave the memory cache alone: the page
 * cache serves a re-read for one pread, while caching them would cost CPU per block and push
 * out the blocks random reads come back to.
 */
export const BULK_READ = 64 * KiB;
/**
 * Bytes of sent reply buffers kept for reuse (bulk local reads), per volume. nbdcopy keeps
 * up to 64 MiB of 256 KiB reads in flight over its four connections: with 8 MiB kept, most
 * replies of a sequential read took fresh memory (7–14k page faults per GiB when warm);
 * with 32 MiB, 2–6k, and 15% less CPU for the read.
 */
const SPARE_BYTES = 32 * MiB;

/**
 * Buffers kept for reuse by length, at most `maxBytes` in all: memory already faulted in,
 * instead of fresh pages that fault on the first copy into them (costly in a VM). They hold
 * their pages while kept, so all are let go after `idleMs` without one given back.
 */
export class SpareBuffers {
  private free = new Map<number, Buffer[]>();
  private bytes = 0;
  private idle: NodeJS.Timeout | undefined;

  constructor(
    private readonly maxBytes: number,
    private readonly idleMs = 10_000,
  ) {}

  take(length: number): Buffer | undefined {
    const list = this.free.get(length);
    const b = list?.pop();
    if (!b) return undefined;
    if (list?.length === 0) this.free.delete(length);
    this.bytes -= length;
    return b;
  }

  give(b: Buffer): void {
    if (this.bytes + b.length > this.maxBytes) return;
    let list = this.free.get(b.length);
    if (!list) this.free.set(b.length, (list = []));
    list.push(b);
    this.bytes += b.length;
    if (this.idle === undefined) {
      this.idle = setTimeout(() => {
        this.idle = undefined;
        this.free = new Map();
        this.bytes = 0;
      }, this.idleMs);
      this.idle.unref();
    } else this.idle.refresh();
  }

  /** Bytes kept (tests). */
  get kept(): number {
    return this.bytes;
  }
}

/** What the reader reads through: the engine's current index and write buffer. */
export interface ReadView {
  /** The index as of now (a restore replaces it). */
  tree(): BTree;
  /** The write buffer's word on a block. */
  buffered(lba: number): BufferedBlock;
  /** The write buffer's word on every block of [lo, hi) it knows, ascending, if cheap (WriteBuffer.knownIn). */
  knownIn?(lo: number, hi: number): [lba: number, zero: boolean][] | undefined;
}

/** The disk cache as the reader uses it: which blocks may go there, under which store. */
export interface DiskTier {
  cache: DiskCache;
  /** The cache's number of the store segment `seg` lives in. */
  storeOf(seg: number): number;
  /** Whether segment `seg` is committed (its id can never name other bytes). */
  cacheable(seg: number): boolean;
}

export interface ReadTuning {
  /** Bytes of clean data blocks kept in memory. */
  memoryBytes: number;
  /** Largest read-ahead window (0: no read-ahead). */
  readAheadBytes?: number;
  /** Bytes a random read's GET may grow to with neighbouring blocks (0: none). */
  readAroundBytes?: number;
  /** Runs longer than this are fetched as several GETs in parallel. */
  partBytes?: number;
  /** GETs in flight at most (demand reads and read-ahead together). */
  maxGets?: number;
}

export interface ReadCounters {
  /** Ranged GETs of data blocks. */
  gets: number;
  diskHits: number;
  /** Blocks fetched by read-ahead. */
  prefetched: number;
  /** Reads of blocks that read-ahead had fetched (first read of each). */
  prefetchHits: number;
  /** Blocks fetched by read-around beyond what was asked. */
  readAround: number;
  /** Read-around blocks read later (first read of each). */
  readAroundHits: number;
  /** Random misses fetched alone because read-around was not paying (aroundPays). */
  readAroundSkipped: number;
}

/** A run of blocks stored back to back in one segment: one ranged GET. */
interface Run {
  seg: number;
  off: number;
  /** Bytes from `off` to the end of the last block (gaps between blocks included). */
  len: number;
  /** lba of each block (for read-around extras: -1, not copied out). */
  lbas: number[];
  ptrs: BlockPtr[];
  /** Fetched by read-ahead. */
  ahead?: boolean;
  /** Not kept in the memory cache (a bulk read from a local store). */
  transient?: boolean;
  /**
   * Where the run's blocks go in the read's output when they fill it back to back (raw
   * blocks of consecutive addresses, stored back to back): the store reads them there.
   */
  dest?: Buffer;
  /**
   * Where the run's plain blocks go in the read's output when they are of consecutive
   * addresses inside the read (block k at k * bs) but not raw back to back: compressed and
   * sealed blocks open straight there.
   */
  plain?: Buffer;
}

/**
 * Bulk reads of a local store read stretches of raw blocks at least this long straight into
 * their place in the reply; shorter ones go with the other blocks of their segment (one
 * read for blocks scattered over a few KiB apart, gaps included, instead of one each).
 */
const DENSE_MIN = 64 * KiB;

/**
 * Raw blocks of a bulk read at consecutive addresses from `first`, stored back to back in
 * segment `seg` from `off`: one pread into the reply. `crcs` holds each block's CRC32C.
 */
interface DenseRun {
  seg: number;
  off: number;
  first: number;
  crcs: number[];
}

/**
 * Dead bytes a run may skip between two of its blocks: fetching them costs less than another
 * request. Blocks of one segment that a read needs sit in LBA order; between them are blocks
 * of other addresses or overwritten since.
 */
export const RUN_GAP = 32 * KiB;

/**
 * Groups the blocks a read needs into runs: blocks of one segment at ascending offsets, at
 * most RUN_GAP apart, become one ranged GET — also when the addresses between them live in
 * other segments (random writes spread a range over many segments).
 */
class Runs {
  readonly list: Run[] = [];
  private readonly open = new Map<number, Run>();

  add(lba: number, p: BlockPtr, ahead?: boolean): void {
    const run = this.open.get(p.seg);
    const end = run ? run.off + run.len : 0;
    if (run && p.off >= end && p.off - end <= RUN_GAP) {
      run.lbas.push(lba);
      run.ptrs.push(p);
      run.len = p.off + p.len - run.off;
      return;
    }
    const r: Run = { seg: p.seg, off: p.off, len: p.len, lbas: [lba], ptrs: [p] };
    if (ahead) r.ahead = true;
    this.list.push(r);
    this.open.set(p.seg, r);
  }
}

/**
 * A part of a read-ahead run: blocks of one segment stored back to back, fetched with one GET
 * and verified. Reads copy their blocks out of it (plain block k at k * bs of its body); it
 * goes once each block was read (or when newer parts need the room).
 */
interface AheadPart {
  seg: number;
  /** Stored bytes [off, end) of the segment. */
  off: number;
  end: number;
  /** The verified plain blocks, once they arrived (of raw blocks: the stored bytes). */
  body: Buffer | undefined;
  /** Settles when the GET is over (the part then has its body, or is gone). */
  ready: Promise<void>;
  /** CRC32C of each block's stored bytes. */
  crcs: Uint32Array;
  /**
   * Where each block is stored, when the part is not raw blocks (block k at off + k * bs):
   * compressed or sealed blocks, block k at offs[k] (offs[n] is `end`).
   */
  offs?: Uint32Array | undefined;
  /** Blocks not read yet. */
  left: number;
  /** The pooled memory the GET read the body into (`body` is it), to give back later. */
  pooled?: Buffer | undefined;
  /** The disk cache is writing the body's blocks out (the memory must stay as it is). */
  caching?: boolean;
  /** readv() pieces of the body not yet sent (the memory is reused only after they are). */
  lent: number;
  /** Out of the read-ahead tables (read whole, or pushed out). */
  dropped: boolean;
}

interface Stream {
  next: number;
  prefetched: number;
  window: number;
  hits: number;
  used: number;
}

/**
 * Memory cache key of a stored block: segment id and byte offset (below 4 GiB). A number
 * while it stays exact (segment ids below 2^21), a string past that.
 */
type BlockKey = number | string;
const blockKey = (seg: number, off: number): BlockKey =>
  seg < 2097152 ? seg * 4294967296 + off : `${seg}:${off}`;

export class Reader {
  readonly dataCache: DataCache<BlockKey>;
  readonly counters: ReadCounters = {
    gets: 0,
    diskHits: 0,
    prefetched: 0,
    prefetchHits: 0,
    readAround: 0,
    readAroundHits: 0,
    readAroundSkipped: 0,
  };
  private readonly inflight = new Map<BlockKey, Promise<void>>();
  /** Blocks fetched ahead of a read and not read yet: 1 read-ahead, 2 read-around. */
  private readonly speculative = new Map<BlockKey, number>();
  private readonly oldestSpeculative = new OldestKey(() => this.speculative.keys());
  private readonly streams: Stream[] = [];
  /** Read-ahead parts by segment, and all of them oldest first. */
  private readonly ahead = new Map<number, AheadPart[]>();
  private readonly aheadOrder: AheadPart[] = [];
  /**
   * Bodies of read-ahead parts read whole and sent, for the next parts' GETs: the socket
   * reads a body into memory already faulted in, instead of fresh pages that fault on the
   * kernel's copy (a fifth of the CPU of a sequential read from RGW at loopback). It keeps
   * up to the read-ahead budget, what the parts may hold at once anyway: kept to 16 MiB, 52
   * of a 256 MiB read's 128 parts took fresh memory; kept to the budget (48 MiB), 24, and the
   * read took 15% less CPU.
   */
  private readonly partPool: SpareBuffers;
  /** readv() pieces lent out of read-ahead parts, until release() says they were sent. */
  private readonly lentPieces = new WeakMap<Buffer, AheadPart>();
  private aheadBytes = 0;
  private readonly aheadBudget: number;
  private useClock = 0;
  private readonly readAhead: number;
  private readonly readAround: number;
  /**
   * Random misses (and reads of read-around blocks, which would have been misses), and how
   * many of those a neighbour fetched with an earlier miss serves or would serve: both
   * decaying. `recentMisses` holds the latest misses by segment and read-around window
   * (bucket: where the miss was), as many as the cache keeps the neighbours of.
   */
  private aroundReads = 0;
  private aroundNear = 0;
  private readonly recentMisses = new Map<BlockKey, number>();
  private readonly recentMissCap: number;
  private readonly partBytes: number;
  /** Bytes of segment one GET may span (partBytes of data as stored). */
  private readonly partSpan: number;
  private readonly gets: Semaphore;
  private readonly memoryBytes: number;
  /** The store is local (file://, mem://): no latency to hide, a re-read costs a pread. */
  private readonly local: boolean;
  /**
   * Reply buffers of bulk local reads that were sent (release()), by length, for the next
   * reads of that length: a fresh buffer per read cost a sequential read of a local volume a
   * sixth of its thread in garbage collection (V8 runs a full collection for every few dozen
   * MiB of buffers allocated outside its heap). `lent` holds the buffers handed out that may
   * come back; nothing else keeps them (bulk local reads never cache the blocks they read).
   */
  private readonly spare = new SpareBuffers(SPARE_BYTES);
  private readonly lent = new WeakSet<Buffer>();

  constructor(
    private readonly view: ReadView,
    private readonly loader: NodeLoader,
    private readonly segments: SegmentSource,
    private readonly bs: number,
    tuning: ReadTuning,
    private readonly disk?: DiskTier,
  ) {
    this.dataCache = new DataCache(tuning.memoryBytes);
    this.memoryBytes = tuning.memoryBytes;
    // On a local store there is no latency to hide: read-ahead and read-around only cost CPU
    // there (measured on tmpfs), so they are off unless asked for.
    const local = isLocalStoreUrl(segments.own.url);
    this.local = local;
    // Read-ahead only pays while its blocks stay in memory until they are read.
    this.readAhead = Math.min(
      tuning.readAheadBytes ?? (local ? 0 : DEFAULT_READ_AHEAD),
      Math.floor(tuning.memoryBytes / 2),
    );
    this.readAround =
      tuning.memoryBytes > 0 ? (tuning.readAroundBytes ?? (local ? 0 : DEFAULT_READ_AROUND)) : 0;
    // Misses remembered for read-around's verdict: as many as the cache's probation quarter
    // keeps the neighbours of.
    this.recentMissCap =
      this.readAround > 0
        ? Math.max(16, Math.floor(tuning.memoryBytes / 4 / Math.max(bs, this.readAround)))
        : 0;
    this.partBytes = Math.max(bs, tuning.partBytes ?? DEFAULT_READ_PART);
    // Sealed blocks are longer than the data they hold: a part of partBytes of data may span
    // that much more of the segment (else every part would split in two GETs).
    this.partSpan = this.partBytes + (this.partBytes / bs) * (segments.sealer?.overhead ?? 0);
    const maxGets = Math.max(1, tuning.maxGets ?? DEFAULT_MAX_GETS);
    this.gets = new Semaphore(maxGets);
    // The window, plus room for the parts in flight so that none is dropped before it lands.
    this.aheadBudget = this.readAhead + maxGets * this.partBytes;
    this.partPool = new SpareBuffers(this.readAhead > 0 ? this.aheadBudget : 0);
  }

  /** Read [offset, offset+length) (the caller checked the range). */
  async read(offset: number, length: number): Promise<Buffer> {
    if (this.readAhead > 0 && length > 0) this.observe(offset, length);
    return this.fill(offset, length);
  }

  /**
   * Read [offset, offset+length) as pieces in order, which the caller may keep but must not
   * change: when every block of the range is in parts read ahead, the pieces are those parts'
   * bytes (no copy); otherwise one buffer, as read() gives.
   */
  async readv(offset: number, length: number): Promise<Buffer[]> {
    if (this.readAhead > 0 && length > 0) this.observe(offset, length);
    if (length === this.bs && offset % length === 0) {
      const lone = this.lone(offset / length);
      if (lone) return [await lone];
    }
    const pieces = this.ahead.size > 0 ? await this.aheadPieces(offset, length) : undefined;
    return pieces ?? [await this.fill(offset, length)];
  }

  /**
   * Block `lba` for readv() without a copy, when it is a stored block in the memory cache or
   * one GET gets it alone (no read-around to add): the cache's buffer, or the fetched one, is
   * the reply (of a local store: a reused one). A 4 KiB random read of a local volume
   * otherwise took two fresh buffers and a copy. Undefined where the general path must
   * decide (buffered, a hole, not in memory down the index, read ahead, being fetched).
   */
  private lone(lba: number): Buffer | Promise<Buffer> | undefined {
    if (this.view.buffered(lba) !== undefined) return undefined;
    const p = this.view.tree().lookup(lba);
    if (p === undefined || p instanceof Miss || p.seg === PENDING_SEG) return undefined;
    if (this.ahead.size > 0 && this.findAhead(p)) return undefined;
    const key = blockKey(p.seg, p.off);
    const cached = this.dataCache.get(key);
    if (cached) {
      if (cached.length !== this.bs) return undefined;
      if (this.speculative.size > 0) this.usedSpeculative(key);
      return cached;
    }
    if (this.readAround > 0 || this.inflight.has(key)) return undefined;
    const r: Run = { seg: p.seg, off: p.off, len: p.len, lbas: [lba], ptrs: [p] };
    if (this.local && this.disk === undefined && p.codec === 0 && p.len === this.bs) {
      // A local store: the block is read into a reply buffer lent for reuse, not cached (a
      // pread costs less than the cache's bookkeeping, and into memory of a sent reply it
      // costs a third of a pread into fresh memory, whose pages fault on the copy).
      const out = this.spare.take(this.bs) ?? Buffer.allocUnsafeSlow(this.bs);
      r.transient = true;
      r.dest = out;
      return this.fetchRun(r).then(([b]) => {
        // (mem:// and a segment still in flight hand out their own bytes, not `out`.)
        if (b && (b.buffer !== out.buffer || b.byteOffset !== out.byteOffset)) b.copy(out);
        this.lent.add(out);
        return out;
      });
    }
    // (The run's one block, plain: what fill() would copy whole.)
    return this.fetchRun(r).then(([b]) => b as Buffer);
  }

  /**
   * The pieces of read-ahead parts that hold a whole-block range (waiting for parts still in
   * flight), or undefined when some block is elsewhere: buffered, a hole, not read ahead.
   */
  private async aheadPieces(offset: number, length: number): Promise<Buffer[] | undefined> {
    const bs = this.bs;
    if (length === 0 || offset % bs !== 0 || length % bs !== 0) return undefined;
    const lo = offset / bs;
    const n = length / bs;
    for (let i = 0; i < n; i++) if (this.view.buffered(lo + i) !== undefined) return undefined;
    const tree = this.view.tree();
    // Parts are looked up a turn later: the read-ahead this read started (observe()) announces
    // its parts once its own index walk has resolved, which it does first.
    await undefined;
    // The part holding each block, and where: from the leaf entries in place.
    const found = await this.loader.run(() => {
      const parts: AheadPart[] = [];
      const offs: number[] = [];
      const miss = tree.visit(lo, lo + n, (lba, e, i) => {
        if (lba !== lo + parts.length || parts.length < offs.length || leafIsPending(e, i)) return;
        const off = leafOffset(e, i);
        const a = this.findAheadAt(
          entrySegment(e, i),
          off,
          leafLength(e, i),
          leafCodec(e, i),
          leafCrc(e, i),
        );
        offs.push(off);
        if (a) parts.push(a);
      });
      return miss ?? (parts.length === n ? { parts, offs } : undefined);
    });
    if (found === undefined) return undefined;
    const { parts, offs } = found;
    let pending: Set<Promise<void>> | undefined;
    for (const a of parts) if (!a.body) (pending ??= new Set()).add(a.ready);
    // (A part dropped for room meanwhile still holds the right bytes: segments never change.)
    if (pending) {
      await Promise.all(pending);
      if (parts.some((a) => a.body === undefined)) return undefined;
    }
    const out: Buffer[] = [];
    let part: AheadPart | undefined;
    let from = 0;
    let to = 0;
    const lend = (): void => {
      if (!part) return;
      const piece = (part.body as Buffer).subarray(from, to);
      this.lentPieces.set(piece, part);
      part.lent++;
      out.push(piece);
    };
    const done: AheadPart[] = [];
    for (let i = 0; i < n; i++) {
      const a = parts[i] as AheadPart;
      const at =
        a.offs === undefined ? (offs[i] as number) - a.off : this.slot(a, offs[i] as number) * bs;
      if (a === part && at === to) to += bs;
      else {
        lend();
        part = a;
        from = at;
        to = at + bs;
      }
      this.counters.prefetchHits++;
      if (--a.left === 0) done.push(a);
    }
    lend();
    // Dropped only now that their pieces are counted as lent (a drop may free the memory).
    for (const a of done) this.dropAhead(a);
    return out;
  }

  /**
   * A buffer read() or readv() returned has been sent and nobody uses it any more: one lent
   * by a bulk local read serves a later read of the same length. Others are ignored.
   */
  release(buf: Buffer): void {
    const part = this.lentPieces.get(buf);
    if (part) {
      this.lentPieces.delete(buf);
      part.lent--;
      this.recycleAhead(part);
      return;
    }
    if (this.lent.delete(buf)) this.spare.give(buf);
  }

  /** A bulk read: of a local store, BULK_READ or more (its blocks are not cached). */
  private bulk(length: number): boolean {
    return this.local && length >= BULK_READ;
  }

  private async fill(offset: number, length: number): Promise<Buffer> {
    // Bulk reads of a local store put none of their blocks in a cache (readFromIndex): their
    // buffer may be lent and come back. (A disk cache would write the blocks out later.)
    const lend = this.bulk(length) && this.disk === undefined;
    const out = (lend ? this.spare.take(length) : undefined) ?? Buffer.allocUnsafe(length);
    if (length === 0) return out;
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    for (;;) {
      let fromIndex: number[] | undefined;
      for (let lba = first; lba <= last; lba++) {
        const v = this.view.buffered(lba);
        if (v === undefined) (fromIndex ??= []).push(lba);
        else copyBlock(out, offset, length, lba, bs, v);
      }
      if (fromIndex === undefined) break;
      if (await this.readFromIndex(out, offset, length, fromIndex)) break;
      // An index entry was still being flushed: the buffer has it now; go again.
    }
    if (lend) this.lent.add(out);
    return out;
  }

  /** Fill `out` for blocks that are not buffered. Returns false to ask for a retry. */
  private async readFromIndex(
    out: Buffer,
    offset: number,
    length: number,
    lbas: number[],
  ): Promise<boolean> {
    const bs = this.bs;
    const tree = this.view.tree();
    const lo = lbas[0] as number;
    const hi = (lbas[lbas.length - 1] as number) + 1;
    let entries: ScanEntry[];
    const jobs: Promise<void>[] = [];
    const bulk = this.bulk(length);
    if (bulk && this.ahead.size === 0 && this.disk === undefined && lbas.length > 1) {
      // A bulk read of a local store: its dense stretches straight into place, the rest
      // (holes zeroed already) below.
      const plan = await this.loader.run(() => this.planBulk(tree, lbas, out, offset, length));
      if (plan === undefined) return false;
      for (const r of plan.dense) jobs.push(this.readDense(r, out, offset));
      entries = plan.rest;
      lbas = plan.rest.map((p) => p.lba);
    } else if (lbas.length === 1) {
      let p = tree.lookup(lo);
      if (p instanceof Miss) p = await this.loader.run(() => tree.lookup(lo));
      if (p) (p as ScanEntry).lba = lo;
      entries = p ? [p as ScanEntry] : [];
    } else {
      entries = await this.loader.run(() => tree.scan(lo, hi));
    }
    // Group the blocks of each segment into runs: one ranged GET each.
    const runs = new Runs();
    let waits: { promises: Set<Promise<void>>; blocks: { lba: number; p: BlockPtr }[] } | undefined;
    let k = 0;
    for (const lba of lbas) {
      while (k < entries.length && (entries[k] as ScanEntry).lba < lba) k++;
      const p =
        k < entries.length && (entries[k] as ScanEntry).lba === lba
          ? (entries[k] as ScanEntry)
          : undefined;
      if (!p) {
        copyBlock(out, offset, length, lba, bs, null);
        continue;
      }
      if (p.seg === PENDING_SEG) {
        if (jobs.length > 0) await Promise.all(jobs);
        return false;
      }
      const a = this.findAhead(p);
      if (a) {
        if (a.body) this.copyAhead(a, p, out, offset, length, lba);
        else {
          (waits ??= { promises: new Set(), blocks: [] }).promises.add(a.ready);
          waits.blocks.push({ lba, p });
        }
        continue;
      }
      const key = blockKey(p.seg, p.off);
      const cached = this.dataCache.get(key);
      if (cached) {
        if (this.speculative.size > 0) this.usedSpeculative(key);
        copyBlock(out, offset, length, lba, bs, cached);
        continue;
      }
      const pending = this.inflight.get(key);
      if (pending) {
        // Being fetched (read-ahead): wait for it rather than GET it twice.
        (waits ??= { promises: new Set(), blocks: [] }).promises.add(pending);
        waits.blocks.push({ lba, p });
        continue;
      }
      runs.add(lba, p);
    }
    if (waits) jobs.push(this.afterInflight(waits.promises, waits.blocks, out, offset, length));
    for (const r of runs.list) {
      if (bulk) r.transient = true;
      jobs.push(this.fetchInto(r, out, offset, length, tree));
    }
    if (jobs.length === 1) await jobs[0];
    else if (jobs.length > 1) await Promise.all(jobs);
    return true;
  }

  /**
   * The plan of a bulk read of `lbas` (ascending, not buffered) from the index leaves, read
   * in place (no object per block): stretches of at least DENSE_MIN of raw blocks of
   * consecutive addresses, whole inside the read and stored back to back in one segment (at
   * most a part each), and the other blocks as entries for the general path (which groups
   * scattered blocks of a segment into one GET). Holes are zeroed in `out` here. Undefined
   * when a block is still being flushed (the caller looks at the write buffer again).
   */
  private planBulk(
    tree: BTree,
    lbas: number[],
    out: Buffer,
    offset: number,
    length: number,
  ): { dense: DenseRun[]; rest: ScanEntry[] } | undefined | Miss {
    const bs = this.bs;
    const most = Math.max(1, Math.floor(this.partBytes / bs));
    const least = Math.max(2, Math.ceil(DENSE_MIN / bs));
    const dense: DenseRun[] = [];
    const rest: ScanEntry[] = [];
    let run: DenseRun | undefined;
    let pending = false;
    let j = 0;
    const holesBefore = (lba: number): void => {
      for (; j < lbas.length && (lbas[j] as number) < lba; j++)
        copyBlock(out, offset, length, lbas[j] as number, bs, null);
    };
    // A stretch too short for a pread of its own joins the rest (in address order).
    const close = (): void => {
      if (run === undefined) return;
      if (run.crcs.length >= least) dense.push(run);
      else
        for (let k = 0; k < run.crcs.length; k++) {
          const crc = run.crcs[k] as number;
          rest.push({
            lba: run.first + k,
            seg: run.seg,
            off: run.off + k * bs,
            len: bs,
            crc,
            codec: 0,
          });
        }
      run = undefined;
    };
    const miss = tree.visit(
      lbas[0] as number,
      (lbas[lbas.length - 1] as number) + 1,
      (lba, e, i) => {
        holesBefore(lba);
        // (A block the write buffer holds is not the index's to read.)
        if (lbas[j] !== lba) return;
        j++;
        if (leafIsPending(e, i)) {
          pending = true;
          return;
        }
        const inside = lba * bs >= offset && (lba + 1) * bs <= offset + length;
        if (inside && leafCodec(e, i) === 0 && leafLength(e, i) === bs) {
          const seg = entrySegment(e, i);
          const off = leafOffset(e, i);
          if (
            run !== undefined &&
            run.seg === seg &&
            off === run.off + run.crcs.length * bs &&
            lba === run.first + run.crcs.length &&
            run.crcs.length < most
          ) {
            run.crcs.push(leafCrc(e, i));
            return;
          }
          close();
          run = { seg, off, first: lba, crcs: [leafCrc(e, i)] };
          return;
        }
        close();
        const p = readLeaf(e, i) as ScanEntry;
        p.lba = lba;
        rest.push(p);
      },
    );
    if (miss) return miss;
    close();
    holesBefore(Number.MAX_SAFE_INTEGER);
    return pending ? undefined : { dense, rest };
  }

  /**
   * One ranged read of segment `seg`'s data (into `into` when the store can), within the
   * volume's bound on data GETs in flight.
   */
  private async getData(
    seg: number,
    offset: number,
    length: number,
    into: Buffer | undefined,
  ): Promise<Buffer> {
    await this.gets.acquire();
    try {
      this.counters.gets++;
      return await this.segments.get(seg, { offset, length }, 'volume data', into);
    } finally {
      this.gets.release();
    }
  }

  /**
   * Read a dense stretch of a bulk read into its place in `out` (one pread of a local
   * segment) and check it whole against the CRCs of its entries (combined); a mismatch names
   * the first damaged block.
   */
  private async readDense(r: DenseRun, out: Buffer, offset: number): Promise<void> {
    const bs = this.bs;
    const total = r.crcs.length * bs;
    const dest = out.subarray(r.first * bs - offset, r.first * bs - offset + total);
    const body = await this.getData(r.seg, r.off, total, dest);
    const key = this.segments.keyFor(r.seg);
    if (body.length < total)
      throw await this.segments.explainDamage(r.seg, truncated(key, r.off, total));
    // (mem:// and a segment still in flight hand out their own bytes.)
    if (body.buffer !== dest.buffer || body.byteOffset !== dest.byteOffset)
      body.copy(dest, 0, 0, total);
    const crcs = r.crcs;
    if (crc32c(dest) === crc32cOfRun(0, crcs.length, bs, (k) => crcs[k] as number)) return;
    let k = 0;
    while (k < crcs.length - 1 && crc32c(dest.subarray(k * bs, (k + 1) * bs)) === crcs[k]) k++;
    throw await this.segments.explainDamage(r.seg, damaged(key, bs, r.first + k, r.off + k * bs));
  }

  /** Blocks other fetches are getting: copy them once there (fetch those that are gone). */
  private async afterInflight(
    pending: Set<Promise<void>>,
    blocks: { lba: number; p: BlockPtr }[],
    out: Buffer,
    offset: number,
    length: number,
  ): Promise<void> {
    await Promise.all([...pending].map((q) => q.catch(() => undefined)));
    // Blocks gone meanwhile (a failed fetch, evicted before this read got to them): fetched
    // again, grouped into runs like any read's.
    let again: Runs | undefined;
    for (const { lba, p } of blocks) {
      const a = this.findAhead(p);
      if (a?.body) {
        this.copyAhead(a, p, out, offset, length, lba);
        continue;
      }
      const key = blockKey(p.seg, p.off);
      const blk = this.dataCache.get(key);
      if (blk) {
        if (this.speculative.size > 0) this.usedSpeculative(key);
        copyBlock(out, offset, length, lba, this.bs, blk);
        continue;
      }
      (again ??= new Runs()).add(lba, p);
    }
    if (!again) return;
    await Promise.all(
      again.list.map(async (r) => {
        const got = await this.fetchRun(r);
        for (let k = 0; k < r.lbas.length; k++)
          copyBlock(out, offset, length, r.lbas[k] as number, this.bs, got[k] as Buffer);
      }),
    );
  }

  private usedSpeculative(key: BlockKey): void {
    const kind = this.speculative.get(key);
    if (kind === undefined) return;
    this.speculative.delete(key);
    if (kind === 1) this.counters.prefetchHits++;
    else {
      this.counters.readAroundHits++;
      this.countAround(true);
    }
  }

  private countAround(near: boolean): void {
    this.aroundReads++;
    if (near) this.aroundNear++;
    if (this.aroundReads > 4 * AROUND_SAMPLE) {
      this.aroundReads /= 2;
      this.aroundNear /= 2;
    }
  }

  /**
   * Whether the random miss of run `r` fetches its neighbours: while neighbours serve, or
   * would serve, enough of the reads (AROUND_PAYS). Counts the miss as near when an earlier
   * one still remembered sits within the read-around window of it in the same segment
   * (whether or not its neighbours were fetched), so the verdict follows the pattern both
   * while read-around is on and while it is off.
   */
  private aroundPays(r: Run): boolean {
    const w = this.readAround;
    const bucket = Math.floor(r.off / w);
    let near = false;
    for (let b = Math.max(0, bucket - 1); b <= bucket + 1 && !near; b++) {
      const at = this.recentMisses.get(blockKey(r.seg, b));
      if (at !== undefined && Math.abs(at - r.off) < w) near = true;
    }
    const key = blockKey(r.seg, bucket);
    this.recentMisses.delete(key);
    this.recentMisses.set(key, r.off);
    if (this.recentMisses.size > this.recentMissCap) {
      const oldest = this.recentMisses.keys().next();
      if (!oldest.done) this.recentMisses.delete(oldest.value);
    }
    this.countAround(near);
    if (this.aroundReads < AROUND_SAMPLE || this.aroundNear * AROUND_PAYS >= this.aroundReads)
      return true;
    this.counters.readAroundSkipped++;
    return false;
  }

  /** Fetch a run (disk cache, then the store) and copy it into `out`. */
  private async fetchInto(
    r: Run,
    out: Buffer,
    offset: number,
    length: number,
    tree: BTree,
  ): Promise<void> {
    if (r.transient) {
      const place = inPlace(r, out, offset, length, this.bs);
      if (place && rawBackToBack(r, this.bs)) r.dest = place;
      else if (place) r.plain = place;
    } else if (this.readAround > r.len && r.lbas.length < 8 && this.aroundPays(r))
      this.extendAround(r, tree);
    const blocks = await this.fetchRun(r);
    for (let k = 0; k < r.lbas.length; k++) {
      const lba = r.lbas[k] as number;
      if (lba >= 0) copyBlock(out, offset, length, lba, this.bs, blocks[k] as Buffer);
    }
  }

  /**
   * Grow a short run with the blocks of the addresses around it that sit right before or
   * after it in the same segment, not cached and not being fetched, as far as the index
   * nodes in memory tell (nothing is loaded for this).
   */
  private extendAround(r: Run, tree: BTree): void {
    const bs = this.bs;
    const span = Math.floor(this.readAround / bs);
    const lo = Math.max(0, (r.lbas[0] as number) - span);
    const hi = (r.lbas[r.lbas.length - 1] as number) + 1 + span;
    const found = tree.scan(lo, hi);
    if (found instanceof Miss) return;
    const firstLba = r.lbas[0] as number;
    const lastLba = r.lbas[r.lbas.length - 1] as number;
    let at = found.findIndex((e) => e.lba === firstLba);
    const end = found.findIndex((e) => e.lba === lastLba);
    if (at < 0 || end < 0) return;
    // Neighbours the disk cache holds are cheap to read when asked for: not fetched now.
    const disk = this.disk;
    const diskStore = disk ? disk.storeOf(r.seg) : 0;
    const free = (e: ScanEntry): boolean => {
      const key = blockKey(e.seg, e.off);
      return (
        this.findAhead(e) === undefined &&
        this.dataCache.peek(key) === undefined &&
        !(disk && disk.cache.has(diskStore, e.seg, e.off)) &&
        !this.inflight.has(key) &&
        this.view.buffered(e.lba) === undefined
      );
    };
    const before: ScanEntry[] = [];
    let off = r.off;
    let len = r.len;
    let prevLba = firstLba;
    for (let i = at - 1; i >= 0; i--) {
      const e = found[i] as ScanEntry;
      if (
        e.lba !== prevLba - 1 ||
        e.seg !== r.seg ||
        e.off + e.len !== off ||
        len + e.len > this.readAround ||
        !free(e)
      )
        break;
      before.push(e);
      off = e.off;
      len += e.len;
      prevLba = e.lba;
    }
    const after: ScanEntry[] = [];
    let endOff = r.off + r.len;
    let nextLba = lastLba + 1;
    for (let i = end + 1; i < found.length; i++) {
      const e = found[i] as ScanEntry;
      if (
        e.lba !== nextLba ||
        e.seg !== r.seg ||
        e.off !== endOff ||
        len + e.len > this.readAround ||
        !free(e)
      )
        break;
      after.push(e);
      endOff += e.len;
      len += e.len;
      nextLba++;
    }
    if (before.length === 0 && after.length === 0) return;
    before.reverse();
    at = before.length;
    r.lbas = [...before.map(() => -1), ...r.lbas, ...after.map(() => -1)];
    r.ptrs = [...before, ...r.ptrs, ...after];
    r.off = off;
    r.len = len;
    this.counters.readAround += before.length + after.length;
    for (const e of before) this.speculative.set(blockKey(e.seg, e.off), 2);
    for (const e of after) this.speculative.set(blockKey(e.seg, e.off), 2);
    this.trimSpeculative();
  }

  /**
   * The blocks of a run, each verified: from the disk cache where it has them, the rest
   * from the store in parts of at most `partBytes`, GETs in parallel. Every block fetched
   * goes to the memory cache (and the disk cache, for committed segments).
   */
  private async fetchRun(r: Run): Promise<Buffer[]> {
    const out: Buffer[] = new Array<Buffer>(r.ptrs.length);
    // Parts: consecutive blocks not served by the disk cache, at most partBytes each.
    const parts: { from: number; to: number; len: number }[] = [];
    const diskReads: Promise<void>[] = [];
    const disk = this.disk;
    const store = disk ? disk.storeOf(r.seg) : 0;
    let part: { from: number; to: number; len: number } | undefined;
    for (let k = 0; k < r.ptrs.length; k++) {
      const p = r.ptrs[k] as BlockPtr;
      if (disk && disk.cache.has(store, p.seg, p.off)) {
        part = undefined;
        diskReads.push(
          disk.cache.get(store, p.seg, p.off, p.len, p.crc).then(async (hit) => {
            const lba = lbaOf(r, k);
            let b: Buffer | undefined;
            try {
              b = hit && (await this.decode(hit, p, lba));
            } catch {
              b = undefined;
            }
            if (b) {
              this.counters.diskHits++;
              const key = blockKey(p.seg, p.off);
              this.dataCache.set(key, b, b.length, r.lbas[k] === -1);
              // (Read ahead from the disk cache: counted when read, as from the store.)
              if (r.ahead) {
                this.speculative.set(key, 1);
                this.trimSpeculative();
              }
              out[k] = b;
            } else {
              out[k] = (
                await this.getParts(r, [{ from: k, to: k + 1, len: p.len }], true)
              )[0] as Buffer;
            }
          }),
        );
        continue;
      }
      const span = part ? p.off + p.len - (r.ptrs[part.from] as BlockPtr).off : 0;
      if (part && span <= this.partSpan) {
        part.to = k + 1;
        part.len = span;
      } else {
        part = { from: k, to: k + 1, len: p.len };
        parts.push(part);
      }
    }
    const fetched = parts.length > 0 ? this.getParts(r, parts, true, r.dest) : undefined;
    if (diskReads.length > 0) await Promise.all(diskReads);
    if (fetched) {
      const blocks = await fetched;
      let i = 0;
      for (const pt of parts) for (let k = pt.from; k < pt.to; k++) out[k] = blocks[i++] as Buffer;
    }
    return out;
  }

  /**
   * GET `parts` of run `r` (indices into its blocks), verified, in parallel; a dense run's
   * parts are read into their place in `dest` (block k of the run at k * bs).
   */
  private async getParts(
    r: Run,
    parts: { from: number; to: number; len: number }[],
    toDisk: boolean,
    dest?: Buffer,
  ): Promise<Buffer[]> {
    const bs = this.bs;
    const results = await Promise.all(
      parts.map((pt) =>
        this.getPart(r, pt.from, pt.to, pt.len, toDisk, dest?.subarray(pt.from * bs, pt.to * bs)),
      ),
    );
    return results.length === 1 ? (results[0] as Buffer[]) : results.flat();
  }

  private async getPart(
    r: Run,
    from: number,
    to: number,
    total: number,
    toDisk: boolean,
    dest?: Buffer,
  ): Promise<Buffer[]> {
    const first = r.ptrs[from] as BlockPtr;
    const seg = r.seg;
    const off = first.off;
    const keep = r.transient !== true;
    const keys: BlockKey[] = [];
    let settle!: () => void;
    const done = new Promise<void>((res) => (settle = res));
    // Blocks that will not be cached are not announced: a read waiting for them would not
    // find them in the cache anyway.
    for (let k = from; keep && k < to; k++) {
      const p = r.ptrs[k] as BlockPtr;
      const key = blockKey(p.seg, p.off);
      if (!this.inflight.has(key)) {
        this.inflight.set(key, done);
        keys.push(key);
      }
    }
    try {
      const body = await this.getData(seg, off, total, dest);
      const key = this.segments.keyFor(seg);
      if (body.length < total) throw truncated(key, off, total);
      const single = to - from === 1;
      const disk = toDisk && this.disk && this.disk.cacheable(seg) ? this.disk : undefined;
      const whole = wholeRunVerified(r, from, to, body);
      const out: Buffer[] = [];
      const around = r.lbas.includes(-1);
      const store = disk ? disk.storeOf(seg) : 0;
      let decoding: Promise<void>[] | undefined;
      // Sealed raw blocks and lz4 blocks read now or soon open or decompress into one buffer
      // for the part (as raw blocks share the part's body: no buffer per block to allocate
      // and collect); read-around extras and the other codecs get buffers of their own.
      let slab: Buffer | undefined;
      for (let k = from; k < to; k++) {
        const p = r.ptrs[k] as BlockPtr;
        const at = p.off - off;
        const blk = body.subarray(at, at + p.len);
        if (!whole && crc32c(blk) !== p.crc) {
          // Name the volume range the block holds (read-around extras carry their lba).
          const lba = (r.lbas[k] ?? -1) >= 0 ? (r.lbas[k] as number) : (p as { lba?: number }).lba;
          throw damaged(key, this.bs, lba, off + at);
        }
        if (p.codec !== 0) {
          // Stored bytes go to the disk cache; the plain block, decoded off the event loop,
          // to memory (a buffer of its own).
          const i = out.length;
          out.push(blk);
          disk?.cache.put(store, seg, p.off, copyOf(blk), p.crc);
          let into: Buffer | undefined;
          if (r.plain) into = r.plain.subarray(k * this.bs, (k + 1) * this.bs);
          else if ((p.codec === CODEC_SEALED || p.codec === CODEC_LZ4) && !around) {
            slab ??= Buffer.allocUnsafeSlow((to - from) * this.bs);
            into = slab.subarray((k - from) * this.bs, (k - from + 1) * this.bs);
          }
          const cache = (plain: Buffer): void => {
            out[i] = plain;
            if (keep)
              this.dataCache.set(blockKey(seg, p.off), plain, plain.length, r.lbas[k] === -1);
          };
          const plain = this.decode(blk, p, lbaOf(r, k), key, into);
          if (plain instanceof Promise) (decoding ??= []).push(plain.then(cache));
          else cache(plain);
          continue;
        }
        // Blocks read now or soon (this read, read-ahead) share the part's body, which goes
        // when they do; the blocks of a read-around GET are copied: a few of them staying in
        // the cache must not pin the whole body.
        const copy = single || !around ? blk : copyOf(blk);
        // Read-around neighbours wait in probation; read-ahead blocks are read soon: main.
        if (keep) this.dataCache.set(blockKey(seg, p.off), copy, copy.length, r.lbas[k] === -1);
        disk?.cache.put(store, seg, p.off, copy, p.crc);
        out.push(copy);
      }
      if (decoding) await Promise.all(decoding);
      return out;
    } catch (e) {
      throw await this.segments.explainDamage(seg, e);
    } finally {
      for (const k of keys) this.inflight.delete(k);
      if (r.ahead) {
        for (const k of keys) this.speculative.set(k, 1);
        this.trimSpeculative();
      }
      settle();
    }
  }

  /**
   * The plain block of stored bytes that passed their CRC (raw blocks are their own): opened
   * if sealed (bound to `lba`), then decompressed.
   */
  private decode(
    stored: Buffer,
    p: BlockPtr,
    lba: number,
    key?: string,
    into?: Buffer,
  ): Buffer | Promise<Buffer> {
    if (p.codec === 0 && stored.length === this.bs) return stored;
    const at = { lba, seg: p.seg, off: p.off };
    const sealer = this.segments.sealer;
    try {
      // (lz4 and raw blocks on this thread: no promise per block.)
      const now = openStoredBlockNow(stored, p.codec, at, this.bs, sealer, into);
      if (now) return now;
    } catch (e) {
      throw this.undecodable(e, p, key);
    }
    return openStoredBlock(stored, p.codec, at, this.bs, sealer, into).catch((e: unknown) => {
      throw this.undecodable(e, p, key);
    });
  }

  private undecodable(e: unknown, p: BlockPtr, key: string | undefined): HyperError {
    return dataError(
      'CORRUPT_OBJECT',
      key ?? this.segments.keyFor(p.seg),
      `Data block at segment offset ${p.off}: ${e instanceof Error ? e.message : String(e)}`,
    );
  }

  // ------------------------------------------------------------------ read-ahead

  /** Note a read; continue or start a stream, and prefetch past a stream that continues. */
  private observe(offset: number, length: number): void {
    const end = offset + length;
    this.useClock++;
    let s: Stream | undefined;
    for (const c of this.streams) {
      const slack = Math.max(c.window, 1 * MiB);
      if (offset >= c.next - slack && offset <= c.next + slack) {
        s = c;
        break;
      }
    }
    if (!s) {
      const fresh: Stream = {
        next: end,
        prefetched: end,
        window: Math.max(4 * length, 256 * KiB),
        hits: 0,
        used: this.useClock,
      };
      if (this.streams.length < STREAMS) this.streams.push(fresh);
      else {
        let old = 0;
        for (let i = 1; i < this.streams.length; i++)
          if ((this.streams[i] as Stream).used < (this.streams[old] as Stream).used) old = i;
        this.streams[old] = fresh;
      }
      return;
    }
    s.used = this.useClock;
    if (end > s.next) s.next = end;
    s.hits++;
    if (s.hits < 2) return;
    // Streams prefetching at once share the budget (it must fit in the memory cache).
    let active = 0;
    for (const c of this.streams) if (c.hits >= 2 && this.useClock - c.used < 64) active++;
    const cap = Math.max(this.partBytes, Math.floor(this.readAhead / Math.max(1, active)));
    s.window = Math.min(s.window * 2, cap);
    // Prefetch whole parts of the address space: a sequential write stored them back to
    // back, so each is one GET of partBytes (a window's edge would cut one in two).
    const step = this.partBytes;
    const target = Math.ceil((s.next + s.window) / step) * step;
    // Top up once a quarter of the window is used.
    if (target - s.prefetched < s.window / 4) return;
    const from = Math.max(s.prefetched, s.next);
    s.prefetched = target;
    this.prefetch(from, target);
  }

  /** Fetch [from, to) into the caches in the background, part by part. */
  private prefetch(from: number, to: number): void {
    const bs = this.bs;
    const step = this.partBytes;
    for (let a = Math.floor(from / bs) * bs; a < to;) {
      const b = Math.min(to, (Math.floor(a / step) + 1) * step);
      this.prefetchRange(a, b).catch(() => undefined);
      a = b;
    }
  }

  private async prefetchRange(from: number, to: number): Promise<void> {
    const bs = this.bs;
    const lo = Math.floor(from / bs);
    const hi = Math.ceil(to / bs);
    const tree = this.view.tree();
    const entries = await this.loader.run(() => tree.scan(lo, hi));
    const runs = new Runs();
    for (const p of entries) {
      const key = blockKey(p.seg, p.off);
      if (
        p.seg === PENDING_SEG ||
        this.findAhead(p) !== undefined ||
        this.dataCache.peek(key) !== undefined ||
        this.inflight.has(key) ||
        this.view.buffered(p.lba) !== undefined
      )
        continue;
      runs.add(p.lba, p, true);
    }
    await Promise.all(
      runs.list.map(async (r) => {
        if (this.keepsWhole(r)) {
          await this.fetchAhead(r);
          return;
        }
        const blocks = await this.fetchRun(r);
        this.counters.prefetched += blocks.length;
      }),
    );
  }

  /**
   * Whether a read-ahead run is kept as whole parts: blocks stored back to back. A part of
   * raw blocks comes from the disk cache when it holds every block (in one pread per stretch
   * of consecutive slots), else from the store: a few cached blocks are fetched again rather
   * than cutting the run into a GET per gap between them. A run of compressed or sealed
   * blocks is a whole part when the disk cache holds none of them (each goes to the cache as
   * the part lands), else it goes block by block (fetchRun: the cache's, then the store's).
   */
  private keepsWhole(r: Run): boolean {
    const bs = this.bs;
    if (rawBackToBack(r, bs)) return true;
    const disk = this.disk;
    if (disk !== undefined) {
      const store = disk.storeOf(r.seg);
      if (r.ptrs.some((p) => disk.cache.has(store, p.seg, p.off))) return false;
    }
    return backToBack(r.ptrs);
  }

  /** Fetch a run stored back to back as parts of at most partBytes of data, GETs in parallel. */
  private async fetchAhead(r: Run): Promise<void> {
    const per = Math.max(1, Math.floor(this.partBytes / this.bs));
    const jobs: Promise<void>[] = [];
    for (let k = 0; k < r.ptrs.length; k += per)
      jobs.push(this.fetchPart(r.seg, r.ptrs.slice(k, k + per), r.lbas.slice(k, k + per)));
    await Promise.all(jobs);
  }

  /**
   * One read-ahead part: announced before its GET (reads of its blocks wait for it), verified
   * whole when it lands. A failed or damaged part is dropped: reads then fetch the blocks
   * themselves, and report what they find.
   */
  private async fetchPart(seg: number, ptrs: BlockPtr[], lbas: number[]): Promise<void> {
    const bs = this.bs;
    const off = (ptrs[0] as BlockPtr).off;
    const len = ptrs.length * bs;
    const last = ptrs[ptrs.length - 1] as BlockPtr;
    const end = last.off + last.len;
    // (Raw blocks back to back: block k at off + k * bs. Others: where each is stored.)
    const raw = allRaw(ptrs, bs);
    let offs: Uint32Array | undefined;
    if (!raw) {
      offs = new Uint32Array(ptrs.length + 1);
      for (let k = 0; k < ptrs.length; k++) offs[k] = (ptrs[k] as BlockPtr).off;
      offs[ptrs.length] = end;
    }
    let settle!: () => void;
    const a: AheadPart = {
      seg,
      off,
      end,
      offs,
      body: undefined,
      ready: new Promise<void>((res) => (settle = res)),
      crcs: Uint32Array.from(ptrs, (p) => p.crc),
      left: ptrs.length,
      lent: 0,
      dropped: false,
    };
    this.addAhead(a);
    // Memory for the body that is reused once the part was read and sent: a sent part's,
    // or fresh (also for a part cut short by a segment's end, unless it would hold less
    // than half of that memory).
    const mem =
      len <= this.partBytes && 2 * len >= this.partBytes
        ? (this.partPool.take(this.partBytes) ?? Buffer.allocUnsafeSlow(this.partBytes))
        : undefined;
    const into = mem?.subarray(0, len);
    try {
      if (offs !== undefined) {
        const plain = await this.openPart(a, ptrs, lbas, offs, into ?? Buffer.allocUnsafe(len));
        // (A part dropped meanwhile to make room stays dropped; nothing saw its memory.)
        if (a.dropped) {
          if (mem) this.partPool.give(mem);
          return;
        }
        a.body = plain;
        a.pooled = mem;
        this.counters.prefetched += ptrs.length;
        return;
      }
      // Every block in the disk cache (checked there against these CRCs): read from it.
      const disk = this.disk && this.disk.cacheable(seg) ? this.disk : undefined;
      if (disk) {
        const body = into ?? Buffer.allocUnsafe(len);
        if (await disk.cache.readRun(disk.storeOf(seg), seg, off, bs, a.crcs, body)) {
          this.counters.diskHits += ptrs.length;
          if (!a.dropped) {
            a.body = body;
            a.pooled = mem;
          }
          return;
        }
      }
      const body = await this.getData(seg, off, len, into);
      if (body.length < len) throw new Error('short');
      // (A block that fails drops the part; the read that needs it fetches and names it.)
      const want = crc32cOfRun(0, ptrs.length, bs, (k) => a.crcs[k] as number);
      if (crc32c(body.subarray(0, ptrs.length * bs)) !== want) throw new Error('crc');
      const own =
        into !== undefined && body.buffer === into.buffer && body.byteOffset === into.byteOffset;
      // (A part dropped meanwhile to make room stays dropped; nothing saw its memory.)
      if (a.dropped) {
        if (own) this.partPool.give(mem as Buffer);
        return;
      }
      a.body = body;
      this.counters.prefetched += ptrs.length;
      // (Some stores hand out bytes of their own: mem://, a segment still in flight.)
      if (own) a.pooled = mem;
      if (disk) {
        // The memory goes back to the pool only once the disk cache wrote the blocks out.
        a.caching = true;
        void disk.cache.putRun(disk.storeOf(seg), seg, off, bs, body, a.crcs).then(() => {
          a.caching = false;
          this.recycleAhead(a);
        });
      }
    } catch {
      this.dropAhead(a);
    } finally {
      settle();
    }
  }

  /**
   * The plain blocks of read-ahead part `a` of compressed or sealed blocks, in `plain`: one
   * GET of their stored bytes (into pooled memory), each block checked against its CRC,
   * given to the disk cache (of a committed segment) and opened into its place (block k at
   * k * bs).
   */
  private async openPart(
    a: AheadPart,
    ptrs: BlockPtr[],
    lbas: number[],
    offs: Uint32Array,
    plain: Buffer,
  ): Promise<Buffer> {
    const bs = this.bs;
    const stored = a.end - a.off;
    // (Sealed blocks take more room than their data: up to partSpan for a part.)
    const spare =
      stored <= this.partSpan
        ? (this.partPool.take(this.partSpan) ?? Buffer.allocUnsafeSlow(this.partSpan))
        : undefined;
    const key = this.segments.keyFor(a.seg);
    const disk = this.disk && this.disk.cacheable(a.seg) ? this.disk : undefined;
    const diskStore = disk ? disk.storeOf(a.seg) : 0;
    try {
      const body = await this.getData(a.seg, a.off, stored, spare?.subarray(0, stored));
      if (body.length < stored) throw new Error('short');
      let opening: Promise<void>[] | undefined;
      for (let k = 0; k < ptrs.length; k++) {
        const p = ptrs[k] as BlockPtr;
        const blk = body.subarray((offs[k] as number) - a.off, (offs[k + 1] as number) - a.off);
        if (crc32c(blk) !== p.crc) throw new Error('crc');
        // (Stored bytes to the disk cache, a copy: the pooled memory is reused.)
        disk?.cache.put(diskStore, a.seg, p.off, copyOf(blk), p.crc);
        const into = plain.subarray(k * bs, (k + 1) * bs);
        const b = this.decode(blk, p, lbas[k] as number, key, into);
        if (b instanceof Promise) (opening ??= []).push(b.then((x) => placeBlock(x, into)));
        else placeBlock(b, into);
      }
      // (Every decoding settles before the stored bytes' memory goes back to the pool.)
      if (opening) {
        const failed = (await Promise.allSettled(opening)).find((o) => o.status === 'rejected');
        if (failed) throw failed.reason;
      }
      return plain;
    } finally {
      if (spare) this.partPool.give(spare);
    }
  }

  /** The read-ahead part holding block `p` as verified (stored at the same place, same CRC). */
  private findAhead(p: BlockPtr): AheadPart | undefined {
    return this.findAheadAt(p.seg, p.off, p.len, p.codec, p.crc);
  }

  private findAheadAt(
    seg: number,
    off: number,
    len: number,
    codec: number,
    crc: number,
  ): AheadPart | undefined {
    const list = this.ahead.get(seg);
    if (!list) return undefined;
    // (The same stored bytes, by place and CRC, hold the same block: segments are write-once.)
    for (const a of list) {
      if (off < a.off || off + len > a.end) continue;
      if (a.offs === undefined && (codec !== 0 || len !== this.bs)) return undefined;
      const k = this.slot(a, off);
      if (k < 0 || a.crcs[k] !== crc) return undefined;
      return a.offs === undefined || (a.offs[k + 1] as number) - off === len ? a : undefined;
    }
    return undefined;
  }

  /** The index of the block stored at `off` in part `a` (-1: no block starts there). */
  private slot(a: AheadPart, off: number): number {
    const offs = a.offs;
    if (offs === undefined) {
      const k = (off - a.off) / this.bs;
      return Number.isInteger(k) ? k : -1;
    }
    let lo = 0;
    let hi = offs.length - 2;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const at = offs[mid] as number;
      if (at === off) return mid;
      if (at < off) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  /** Copy block `p` out of read-ahead part `a`; the part goes once all its blocks were read. */
  private copyAhead(
    a: AheadPart,
    p: BlockPtr,
    out: Buffer,
    offset: number,
    length: number,
    lba: number,
  ): void {
    const at = this.slot(a, p.off) * this.bs;
    copyBlock(out, offset, length, lba, this.bs, (a.body as Buffer).subarray(at, at + this.bs));
    this.counters.prefetchHits++;
    if (--a.left <= 0) this.dropAhead(a);
  }

  private addAhead(a: AheadPart): void {
    const list = this.ahead.get(a.seg);
    if (list) list.push(a);
    else this.ahead.set(a.seg, [a]);
    this.aheadOrder.push(a);
    this.aheadBytes += a.crcs.length * this.bs;
    // Oldest first (the budget leaves room for the parts in flight).
    while (this.aheadBytes > this.aheadBudget && this.aheadOrder.length > 1)
      this.dropAhead(this.aheadOrder[0] as AheadPart);
  }

  private dropAhead(a: AheadPart): void {
    if (a.dropped) return;
    a.dropped = true;
    const i = this.aheadOrder.indexOf(a);
    this.aheadOrder.splice(i, 1);
    this.aheadBytes -= a.crcs.length * this.bs;
    const list = this.ahead.get(a.seg) as AheadPart[];
    list.splice(list.indexOf(a), 1);
    if (list.length === 0) this.ahead.delete(a.seg);
    this.recycleAhead(a);
  }

  /**
   * A dropped part whose pieces were all sent gives its pooled memory back for the next
   * part's GET. Its body is gone then: a read that waited for it (aheadPieces) finds none
   * and reads the blocks another way.
   */
  private recycleAhead(a: AheadPart): void {
    if (!a.dropped || a.lent > 0 || a.caching || a.pooled === undefined) return;
    const mem = a.pooled;
    a.pooled = undefined;
    a.body = undefined;
    this.partPool.give(mem);
  }

  private trimSpeculative(): void {
    // Bounded: entries of blocks never read are forgotten oldest first.
    const max = Math.max(1024, Math.floor((2 * this.memoryBytes) / this.bs));
    while (this.speculative.size > max) {
      const first = this.oldestSpeculative.take();
      if (first === undefined) break;
      this.speculative.delete(first);
    }
  }

  /** Runs of data and holes in [offset, offset+length) (the caller checked the range). */
  async extents(offset: number, length: number): Promise<Extent[]> {
    if (length === 0) return [];
    const bs = this.bs;
    const lo = Math.floor(offset / bs);
    const hi = Math.min(Math.ceil((offset + length) / bs), lo + MAX_EXTENT_BLOCKS);
    // The index and the write buffer at one moment (a block leaves the buffer only once the
    // index has it); the buffer's word comes first. Asked block by block only when the
    // buffer holds more than the range spans.
    const [mapped, known] = await this.loader.run(() => {
      const m = this.view.tree().mappedRuns(lo, hi);
      if (m instanceof Miss) return m;
      return [m, this.view.knownIn?.(lo, hi) ?? this.knownByBlock(lo, hi)] as const;
    });
    const out: Extent[] = [];
    const end = Math.min(offset + length, hi * bs);
    const add = (a: number, b: number, hole: boolean): void => {
      const from = Math.max(a * bs, offset);
      const to = Math.min(b * bs, end);
      const prev = out[out.length - 1];
      if (prev && prev.hole === hole) prev.length = to - prev.offset;
      else out.push({ offset: from, length: to - from, hole });
    };
    let r = 0; // mapped[r], mapped[r+1]: the first run not wholly before `at`
    let k = 0; // known[k]: the next block the buffer knows
    for (let at = lo; at < hi;) {
      const next = known[k];
      if (next !== undefined && next[0] === at) {
        add(at, at + 1, next[1]);
        k++;
        at++;
        continue;
      }
      const stop = next === undefined ? hi : next[0];
      while (r < mapped.length && (mapped[r + 1] as number) <= at) r += 2;
      const a = r < mapped.length ? (mapped[r] as number) : hi;
      if (a <= at) {
        const b = Math.min(mapped[r + 1] as number, stop);
        add(at, b, false);
        at = b;
      } else {
        const b = Math.min(a, stop);
        add(at, b, true);
        at = b;
      }
    }
    return out;
  }

  /** knownIn() the slow way: every block of [lo, hi) asked. */
  private knownByBlock(lo: number, hi: number): [number, boolean][] {
    const out: [number, boolean][] = [];
    for (let lba = lo; lba < hi; lba++) {
      const d = this.view.buffered(lba);
      if (d !== undefined) out.push([lba, d === null]);
    }
    return out;
  }
}

/**
 * Whether blocks [from, to) of run `r`, stored back to back at the start of `body` with one
 * length, pass their checksums as a whole: one CRC over the part against the combination of
 * theirs. False when they are not laid so, or when some block fails: the caller then checks
 * each block (and names the one that failed).
 */
function wholeRunVerified(r: Run, from: number, to: number, body: Buffer): boolean {
  if (to - from < 2) return false;
  const first = r.ptrs[from] as BlockPtr;
  const len = first.len;
  for (let k = from + 1; k < to; k++) {
    const p = r.ptrs[k] as BlockPtr;
    if (p.len !== len || p.off !== first.off + (k - from) * len) return false;
  }
  const total = (to - from) * len;
  if (body.length < total) return false;
  const want = crc32cOfRun(from, to, len, (k) => (r.ptrs[k] as BlockPtr).crc);
  return crc32c(body.subarray(0, total)) === want;
}

/** The address of block k of a run (read-around extras carry it in their entry). */
function lbaOf(r: Run, k: number): number {
  const lba = r.lbas[k] as number;
  return lba >= 0 ? lba : ((r.ptrs[k] as ScanEntry).lba ?? -1);
}

/** A counting semaphore (FIFO). */
class Semaphore {
  private free: number;
  private readonly waiting: (() => void)[] = [];
  constructor(n: number) {
    this.free = n;
  }
  acquire(): Promise<void> | void {
    if (this.free > 0) {
      this.free--;
      return;
    }
    return new Promise((r) => this.waiting.push(r));
  }
  release(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.free++;
  }
}

/** Copy the part of block `lba` (or zeros for null) that overlaps [offset, offset+length) into out. */
function copyBlock(
  out: Buffer,
  offset: number,
  length: number,
  lba: number,
  bs: number,
  blk: Buffer | null,
): void {
  const bStart = lba * bs;
  const from = Math.max(offset, bStart);
  const to = Math.min(offset + length, bStart + bs);
  // A block the store read into its place in `out` (a dense run) is there already.
  if (blk && blk.buffer === out.buffer && blk.byteOffset === out.byteOffset + bStart - offset)
    return;
  if (blk) blk.copy(out, from - offset, from - bStart, to - bStart);
  else out.fill(0, from - offset, to - offset);
}

/**
 * The part of a read's output `out` (of [offset, offset+length)) that run `r` fills on its
 * own, when its blocks are of consecutive addresses inside the read. Raw blocks stored back
 * to back may then be read straight there by the store; other blocks open there.
 */
function inPlace(
  r: Run,
  out: Buffer,
  offset: number,
  length: number,
  bs: number,
): Buffer | undefined {
  const first = r.lbas[0] as number;
  const n = r.ptrs.length;
  if (first * bs < offset || (first + n) * bs > offset + length) return undefined;
  for (let k = 0; k < n; k++) if (r.lbas[k] !== first + k) return undefined;
  return out.subarray(first * bs - offset, (first + n) * bs - offset);
}

/** Put plain block `b` at `into` (where it may already be: opened in place). */
function placeBlock(b: Buffer, into: Buffer): void {
  if (b.buffer !== into.buffer || b.byteOffset !== into.byteOffset) b.copy(into);
}

/** Whether a run's blocks are all raw, one block long each, stored back to back. */
function rawBackToBack(r: Run, bs: number): boolean {
  return allRaw(r.ptrs, bs) && backToBack(r.ptrs);
}

/** Whether blocks are stored back to back, in order. */
function backToBack(ptrs: BlockPtr[]): boolean {
  for (let k = 1; k < ptrs.length; k++) {
    const prev = ptrs[k - 1] as BlockPtr;
    if ((ptrs[k] as BlockPtr).off !== prev.off + prev.len) return false;
  }
  return true;
}

/** Whether blocks are all raw, one block long each. */
function allRaw(ptrs: BlockPtr[], bs: number): boolean {
  return ptrs.every((p) => p.codec === 0 && p.len === bs);
}

/** A segment shorter than the blocks the index places in it. */
function truncated(key: string, off: number, length: number): HyperError {
  return dataError(
    'CORRUPT_OBJECT',
    key,
    `Segment is truncated: blocks at ${off}+${length} not present`,
  );
}

/** A stored block that failed its CRC32C: the volume range it holds, when known, and where. */
function damaged(key: string, bs: number, lba: number | undefined, segOffset: number): HyperError {
  const range =
    lba === undefined
      ? 'Data block'
      : `Data block of volume bytes ${lba * bs}..${(lba + 1) * bs} (block ${lba})`;
  return dataError(
    'CHECKSUM_MISMATCH',
    key,
    `${range} failed its checksum at segment offset ${segOffset}`,
  );
}

/** A copy of `b` in memory of its own (Buffer.from(buffer) takes a slower generic path). */
function copyOf(b: Buffer): Buffer {
  const c = Buffer.allocUnsafeSlow(b.length);
  b.copy(c);
  return c;
}
