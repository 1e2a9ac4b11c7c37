/**
 * The volume engine's façade: open, close, read, write, trim, resize, flush and the history
 * commits of one volume, on any ObjectStore. Each concern lives in its own file:
 *
 *   heads.ts           reading heads, checkpoint heads, snapshots; resolving references
 *   create.ts          creating a volume
 *   write-buffer.ts    un-flushed writes (generations), block locks, back-pressure
 *   reader.ts          reads through the buffer and the index, coalesced verified GETs
 *   flush.ts           one flush: index update, segment, node adoption
 *   segment-builder.ts laying out a checkpoint segment (pure)
 *   commit.ts          the one committer: lease, epoch, segment PUT, head CAS, fencing
 *   wal.ts             the write-ahead log session
 *
 * A flush freezes the write buffer, applies it to the copy-on-write index, builds one
 * segment and PUTs it create-only: once it and every segment before it have landed, the
 * checkpoint is committed (the chain). The head CAS that names it follows: at once for
 * flush(), in the background for sync(); see FORMAT.md "Commit protocol".
 */
import { HyperError, isHyperError } from '../../errors.js';
import { FEATURE_CODECS, isRetainedCheckpoint, type HeadRecord } from '../codec/head.js';
import type { WalEntry } from '../codec/wal.js';
import { DiskCache } from '../cache/disk-cache.js';
import { RecurringWarning } from '../recurring.js';
import { BTree } from '../index/btree.js';
import { NodeLoader, type NodeDiskTier } from '../index/loader.js';
import type { ObjectStore } from '../store/types.js';
import { Committer, SerialQueue } from './commit.js';
import { checkVolumeSize, createVolume } from './create.js';
import { sealerFor } from '../keyring.js';
import {
  dedupRootOf,
  droppedWhileRead,
  headAt,
  keptHeadAt,
  infoOf,
  nodeCapacityOf,
  readHead,
  resolveCheckpoint,
  rootOf,
  takenOverWhileRead,
} from './heads.js';
import { ContentHasher, contentsIndexed } from '../codec/dedup.js';
import { DEFAULT_LEASE_TTL_MS, defaultHolder } from './lease.js';
import { Reader, type DiskTier } from './reader.js';
import {
  adoptNodes,
  buildSegment,
  Compressibility,
  nextHead,
  SegmentBuffers,
  type MetadataPatch,
  mergePatches,
  type DedupPatch,
} from './flush.js';
import { SegmentSource } from './segments.js';
import {
  CONFLICT_RETRIES,
  MiB,
  silentLogger,
  DEFAULT_DEDUP_DEFER_BYTES,
  type CheckpointInfo,
  type CreateOptions,
  type EngineObserver,
  type EngineStats,
  type Extent,
  type Logger,
  type OpenOptions,
  type VolumeInfo,
  FLUSH_INTERVAL_MS,
} from './types.js';
import { WalSession, withWalUrl } from './wal.js';
import {
  WriteBuffer,
  type ChangeWatch,
  dataLength,
  type ApplyLog,
  type Data,
  type Generation,
} from './write-buffer.js';

export interface WriteOptions {
  /** Force Unit Access: durable (committed) before the promise resolves. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** Keep storage allocated (NBD NO_HOLE): hyper stores zeros as holes anyway, so reads are identical. */
  noHole?: boolean;
}

/**
 * What a flush is asked to do: commit a checkpoint and name it in the head object; make
 * everything written durable (committed once its segment lands: the head CAS follows in the
 * background); or only write a segment for room.
 */
type FlushKind = 'checkpoint' | 'durable' | 'segment';

/**
 * After a durable flush, the head object is CASed in the background once this many durable
 * flushes wait, or this long after the first of them (FORMAT.md "Commit protocol").
 */
const PUBLISH_EVERY = 8;
const PUBLISH_DELAY_MS = 100;

/** Segment PUTs in flight at once by default (pipelined flushes). */
export const DEFAULT_FLUSH_PIPELINE = 4;

/**
 * Default bound of everything the write buffer holds, in segments (flushBytes): the filling
 * one plus segments in flight: sequential writes keep about two PUTs in flight. Scattered
 * writes get SCATTERED_MAX_DIRTY_SEGMENTS (memory stays bounded: see README "Tuning").
 */
export const DEFAULT_MAX_DIRTY_SEGMENTS = 3;

/**
 * The default bound while writes are scattered (most blocks of the last segment did not
 * follow the one before): small random writes over a large volume. Each of their segments
 * carries about as many bytes of index nodes as of data, and holds its own buffer of copied
 * blocks and nodes until it lands, so every segment in flight costs a segment's worth of
 * memory; a third one did not measurably speed them up (fio 4k randwrite QD16 on a 1 TiB
 * S3 volume on RGW, fresh RGW per pair: 18,200-22,200 IOPS with two, 18,700-22,000 with
 * three) and cost 30-70 MiB at the peak (bench/memory.ts). Sequential writes keep three:
 * their uploads overlap with the next segment filling (3-8% faster on RGW).
 */
export const SCATTERED_MAX_DIRTY_SEGMENTS = 2;

/**
 * Largest bytes of index nodes per byte of data a segment is expected to carry (a guard
 * against one odd segment). Random 4 KiB writes over 1 TiB measure about 0.9 (each block
 * rewrites most of a leaf); a wide, sparse tree written in small segments reaches several.
 * Counting them keeps a segment near the segment size, and the write buffer near its bound.
 */
const MAX_NODE_RATIO = 16;

/** One segment built and written in the background, oldest first in `Volume.stages`. */
interface Stage {
  built: Awaited<ReturnType<typeof buildSegment>>;
  /** The frozen generation it holds: serves reads until the segment is durable. */
  gen: Generation;
  /** Head changes it records (put back if it fails). */
  patch: MetadataPatch;
  /** The checkpoint whose index it was built on (the index goes back there if it fails). */
  base: HeadRecord;
  state: 'flying' | 'landed' | 'failed';
  error?: unknown;
  /** Settles (never rejects) once the PUT is done. */
  done: Promise<void>;
}

function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export class Volume {
  private readonly bs: number;
  /** Volumes with block codecs: the compression of new blocks (undefined: version 1 layout). */
  private readonly compression: number | undefined;
  private readonly compressibility = new Compressibility();
  private readonly loader: NodeLoader;
  private tree: BTree;
  /** Deduplicating volumes: the content-hash index (codec/dedup.ts) and its hash. */
  private dedup: { tree: BTree; hasher: ContentHasher } | undefined;
  /** Changed content-index nodes are written once they take this many bytes (flush.ts). */
  private readonly dedupDeferBytes: number;
  private readonly buffer: WriteBuffer;
  /** Buffers of landed segments, for the next ones. */
  private readonly segmentBuffers: SegmentBuffers;
  private readonly reader: Reader;
  private size: number;
  /** Head changes waiting for the next checkpoint (undefined: none). */
  private pendingMeta: MetadataPatch | undefined;
  private readonly flushes: SerialQueue<CheckpointInfo>;
  /** Segments built and in flight or landed out of order, oldest first. */
  private stages: Stage[] = [];
  /** Segment PUTs allowed in flight at once. */
  private readonly pipeline: number;
  /**
   * The checkpoint whose index root is the newest clean state of `tree` (every node in a
   * segment, durable or in flight): what the next segment records as its base.
   */
  private cleanHead: HeadRecord;
  private lastFlushError: unknown;
  /** Set once the WAL's store was full (commitInstead), to throttle its warning. */
  private walFull: RecurringWarning | undefined;
  /** Flushes failing since the last success (stats().flushFailing). */
  private flushFailing: { sinceMs: number; failures: number; error: string } | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** The background load of the index (OpenOptions.warmIndex): nodes visited. */
  private warming: Promise<number> = Promise.resolve(0);
  private wal: WalSession | undefined;
  /** A WAL is being replayed (startWal): nothing may commit meanwhile. */
  private replaying = false;
  /**
   * The number of the newest change logged or replayed (WAL entries are numbered in the
   * order they are applied, across writers); a segment records the number it was frozen at.
   */
  private walChange = 0;
  /**
   * A resize logged and not yet applied (its record is not durable yet): its change number.
   * A segment frozen meanwhile holds the changes before it only (commitResize).
   */
  private resizeChange: number | undefined;
  /** The resizes asked for, run one at a time; resizeRunning while one changes the buffer. */
  private resizing: Promise<void> = Promise.resolve();
  private resizeRunning = false;
  private closed = false;
  /** close() is flushing: nothing is kept back any more. */
  private closing = false;
  private readonly flushBytes: number;
  /** Whether writers wait at the default bound (no maxDirtyBytes given), which follows the writes. */
  private readonly defaultBound: boolean;
  /** OpenOptions.headUpdateDelayMs. */
  private readonly publishDelayMs: number;
  private readonly log: Logger;
  /** Failures to store (flushes, segment PUTs): said once a minute while they go on. */
  private readonly storing: RecurringWarning;
  private readonly counters = { flushes: 0, segmentsWritten: 0, bytesWritten: 0, bytesRead: 0 };
  /** Own segments with ids up to this one, except `committedSkipped`, are committed. */
  private committedLast: number;
  private committedSkipped: Set<number>;
  private readonly observer: EngineObserver | undefined;
  /**
   * The newest committed checkpoint: its segment and every one before it landed (the head
   * object may name it later), for metrics.
   */
  private committed: { checkpoint: number; ms: number };
  /** Durable flushes whose checkpoint the head object does not name yet (publishInBackground). */
  private unpublished = 0;
  private publishTimer: NodeJS.Timeout | undefined;

  private constructor(
    private readonly store: ObjectStore,
    /** The head as opened (read-only volumes keep this one; writers follow the committer). */
    private readonly openedHead: HeadRecord,
    readonly readOnly: boolean,
    /** Writers only: every change of the head goes through it. */
    private readonly committer: Committer | undefined,
    opts: OpenOptions,
    private readonly segments: SegmentSource,
    private readonly disk?: { cache: DiskCache; storeIds: number[] },
  ) {
    const head = openedHead;
    this.committedLast = head.lastSegment;
    this.committedSkipped = new Set(head.skipped);
    this.bs = 2 ** head.dataBlockShift;
    this.compression = head.flags & FEATURE_CODECS ? (head.compression ?? 0) : undefined;
    const nodeSize = 2 ** head.metaBlockShift;
    this.size = head.size;
    this.log = opts.logger ?? silentLogger;
    this.storing = new RecurringWarning(this.log);
    this.observer = opts.observer;
    this.committed = { checkpoint: head.checkpoint, ms: head.checkpointMs };
    const tier = this.diskTier();
    this.loader = new NodeLoader(segments, nodeSize, opts.nodeCacheBytes ?? 32 * MiB, tier?.nodes);
    this.tree = new BTree(rootOf(head), nodeCapacityOf(head), this.loader);
    const dedupRoot = dedupRootOf(head);
    this.dedup = dedupRoot
      ? {
          tree: new BTree(dedupRoot, nodeCapacityOf(head), this.loader),
          hasher: new ContentHasher(segments.sealer?.dedupKey),
        }
      : undefined;
    this.dedupDeferBytes = opts.dedupDeferBytes ?? DEFAULT_DEDUP_DEFER_BYTES;
    this.cleanHead = head;
    this.flushBytes = opts.flushBytes ?? head.segmentSize;
    this.defaultBound = opts.maxDirtyBytes === undefined;
    this.pipeline = Math.max(1, Math.floor(opts.flushPipeline ?? DEFAULT_FLUSH_PIPELINE));
    // One buffer per segment in flight, and one more for the segment being built: as many
    // as the write buffer's bound holds segments (see keptSegmentBuffers).
    this.segmentBuffers = new SegmentBuffers(
      this.keptSegmentBuffers(opts.maxDirtyBytes ?? DEFAULT_MAX_DIRTY_SEGMENTS * this.flushBytes),
      1.25 * this.flushBytes,
    );
    this.buffer = new WriteBuffer({
      blockSize: this.bs,
      // Everything buffered counts, segments in flight included (with their index nodes).
      maxDirtyBytes: Math.max(
        opts.maxDirtyBytes ?? DEFAULT_MAX_DIRTY_SEGMENTS * this.flushBytes,
        2 * this.flushBytes,
      ),
      readBlock: (lba) => this.readBlock(lba),
      checkWritable: () => this.checkWritable(),
      flushForRoom: () => this.flushForRoom(),
      lastFlushError: () => this.lastFlushError,
    });
    // The flush queue wakes writers waiting for room after every flush.
    this.flushes = new SerialQueue(() => this.buffer.roomMade());
    this.reader = new Reader(
      {
        tree: () => this.tree,
        buffered: (lba) => this.buffer.lookup(lba),
        knownIn: (lo, hi) => this.buffer.knownIn(lo, hi),
      },
      this.loader,
      segments,
      this.bs,
      {
        memoryBytes: opts.dataCacheBytes ?? 32 * MiB,
        ...(opts.readAheadBytes === undefined ? {} : { readAheadBytes: opts.readAheadBytes }),
        ...(opts.readAroundBytes === undefined ? {} : { readAroundBytes: opts.readAroundBytes }),
        ...(opts.readPartBytes === undefined ? {} : { partBytes: opts.readPartBytes }),
        ...(opts.maxReadGets === undefined ? {} : { maxGets: opts.maxReadGets }),
      },
      tier?.data,
    );
    this.publishDelayMs = opts.headUpdateDelayMs ?? PUBLISH_DELAY_MS;
    if (opts.warmIndex) {
      // Up to half the node cache, so that the reads it serves keep room of their own.
      this.warming = this.loader
        .warm(this.tree.root, Math.floor(this.loader.cacheNodes / 2), () => this.closed)
        .catch((e: unknown) => {
          this.log.debug('index warm-up stopped', { error: errorText(e) });
          return 0;
        });
    }
    const interval = opts.flushIntervalMs ?? FLUSH_INTERVAL_MS;
    if (!readOnly && interval > 0) {
      this.timer = setInterval(() => {
        const dirty =
          !this.buffer.active.empty || this.committer?.headPending || this.stages.length > 0;
        if (dirty && !this.flushes.busy && !this.replaying) {
          this.flush().catch((e: unknown) =>
            this.storing.warn('timed flush failed', { error: errorText(e) }),
          );
        }
      }, interval);
      this.timer.unref();
    }
  }

  // ------------------------------------------------------------------ lifecycle

  /** Create a volume (see create.ts). */
  static create(
    store: ObjectStore,
    options: CreateOptions & { signal?: AbortSignal } = {},
  ): Promise<VolumeInfo> {
    return createVolume(store, options);
  }

  /**
   * Open the current checkpoint for writing (takes the lease and the head over under a new
   * epoch, replays the WAL), or a checkpoint read-only (`readOnly`, `at`: writes nothing).
   */
  static async open(store: ObjectStore, options: OpenOptions = {}): Promise<Volume> {
    const cur = await readHead(store);
    // An encrypted volume's key is checked before anything is taken over.
    sealerFor(store.url, cur.head);
    const source = (h: HeadRecord): Promise<SegmentSource> =>
      SegmentSource.forHead(store, h, options.openStore);
    if (options.at || options.readOnly) {
      const head = options.at
        ? await keptHeadAt(store, cur.head, await resolveCheckpoint(store, cur.head, options.at))
        : cur.head;
      const src = await source(head);
      // What a compaction or restore deletes under a reader is no damage: say so.
      src.explain = (_seg, key) => droppedWhileRead(store, head.checkpoint, key);
      const disk = await openDiskCache(options, head, src);
      try {
        return new Volume(store, head, true, undefined, options, src, disk);
      } catch (e) {
        await disk?.cache.close();
        throw e;
      }
    }

    options.signal?.throwIfAborted();
    if (options.walAck === 'flush' && !(options.walUrl ?? cur.head.walUrl)) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        'Writes can be logged at FLUSH only to a WAL, and this volume has none',
        { suggestion: 'Pass --wal-url <url> as well (it is recorded in the volume).' },
      );
    }
    const lease = {
      holder: options.holder ?? defaultHolder(),
      ttlMs: options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS,
      force: options.force ?? false,
      reclaim: options.reclaim ?? false,
      minEpoch: cur.head.epoch,
    };
    const log = options.logger ?? silentLogger;
    const committer = await Committer.takeOver(store, lease, log, (head) =>
      withWalUrl(head, options.walUrl),
    );
    let vol: Volume | undefined;
    let disk: { cache: DiskCache; storeIds: number[] } | undefined;
    try {
      const src = await source(committer.head);
      // What a takeover (a forced compaction) deletes under this writer: it was fenced.
      const epoch = committer.head.epoch;
      src.explain = (_seg, key) => takenOverWhileRead(store, epoch, key);
      disk = await openDiskCache(options, committer.head, src);
      vol = new Volume(store, committer.head, false, committer, options, src, disk);
      const walUrl = committer.head.walUrl;
      if (walUrl)
        await vol.startWal(
          await (options.openStore ?? SegmentSource.defaultOpen)(walUrl),
          options.walAck === 'flush',
        );
      return vol;
    } catch (e) {
      // Nothing is flushed on the way out: a failed replay must not commit half of the log.
      if (vol) await vol.discard();
      else await disk?.cache.close();
      await committer.release(vol?.allLanded ?? true).catch(() => undefined);
      throw e;
    }
  }

  /** Settles when the background load of the index is over (OpenOptions.warmIndex): nodes visited. */
  indexWarmed(): Promise<number> {
    return this.warming;
  }

  /** The head of the newest checkpoint (for tools; do not modify). */
  get headRecord(): HeadRecord {
    return this.committer?.head ?? this.openedHead;
  }

  get info(): VolumeInfo {
    const i = infoOf(this.store.url, this.headRecord, this.readOnly);
    i.size = this.size;
    i.mappedBlocks = this.tree.mapped;
    if (this.dedup) i.dedupBlocks = contentsIndexed(this.dedup.tree.mapped);
    if (this.committer) i.writerEpoch = this.committer.head.epoch;
    return i;
  }

  stats(): EngineStats {
    const r = this.reader.counters;
    const d = this.disk?.cache.stats();
    return {
      ...this.counters,
      nodeCacheHits: this.loader.hits,
      nodeCacheMisses: this.loader.misses,
      dataCacheHits: this.reader.dataCache.hits,
      dataCacheMisses: this.reader.dataCache.misses,
      dataGets: r.gets,
      diskCacheHits: d?.hits ?? 0,
      diskCacheMisses: d?.misses ?? 0,
      diskCacheDropped: d?.dropped ?? 0,
      diskCacheWrites: d?.writes ?? 0,
      diskCacheWriteFailures: d?.writeFailures ?? 0,
      prefetchedBlocks: r.prefetched,
      prefetchHits: r.prefetchHits,
      readAroundBlocks: r.readAround,
      readAroundHits: r.readAroundHits,
      readAroundSkipped: r.readAroundSkipped,
      // Everything buffered, segments in flight included: what maxDirtyBytes bounds.
      dirtyBytes: this.buffer.heldBytes,
      maxDirtyBytes: this.buffer.maxDirtyBytes,
      checkpoint: this.committed.checkpoint,
      checkpointMs: this.committed.ms,
      ...(this.committer ? { lease: this.committer.leaseState } : {}),
      ...(this.flushFailing ? { flushFailing: { ...this.flushFailing } } : {}),
    };
  }

  /** The disk cache's own counters (undefined without one). */
  diskCacheStats(): ReturnType<DiskCache['stats']> | undefined {
    return this.disk?.cache.stats();
  }

  /**
   * What the reader and the node loader use of the disk cache. Only blocks of committed
   * segments go there (disk-cache.ts explains why that makes every key immutable).
   */
  private diskTier(): { data: DiskTier; nodes: NodeDiskTier } | undefined {
    const disk = this.disk;
    if (!disk) return undefined;
    const storeOf = (seg: number): number => disk.storeIds[this.segments.storeIndex(seg)] as number;
    const cacheable = (seg: number): boolean =>
      this.segments.inherited(seg) ||
      (seg <= this.committedLast && !this.committedSkipped.has(seg));
    return {
      data: { cache: disk.cache, storeOf, cacheable },
      nodes: {
        get: (seg, off, length) => disk.cache.get(storeOf(seg), seg, off, length),
        has: (seg, off) => disk.cache.has(storeOf(seg), seg, off),
        put: (seg, off, bytes) => {
          if (cacheable(seg)) disk.cache.put(storeOf(seg), seg, off, bytes);
        },
        invalidate: (seg, off) => disk.cache.invalidate(storeOf(seg), seg, off),
      },
    };
  }

  /** Flush, stop timers, release the lease. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (this.committer && !this.committer.isFenced) {
        // Content-index changes kept back (flush.ts) are written now, for the next session:
        // the last segments carry every change, and one more is made if none is left to.
        this.closing = true;
        await this.flush();
        if (this.dedup?.tree.root.dirty) await this.commitContentIndex();
      }
    } finally {
      this.closed = true;
      if (this.timer) clearInterval(this.timer);
      this.timer = undefined;
      this.cancelPublish();
      // (The index warm-up stops at its next step; a GET of it still in flight is not waited
      // for: on a store that stopped answering it could hold the close through its retries.)
      await this.settle();
      await this.wal?.close();
      await this.segments.close().catch(() => undefined);
      await this.disk?.cache.close().catch(() => undefined);
      await this.committer?.release(this.allLanded);
    }
  }

  /**
   * Whether every segment this writer started has landed (or was abandoned, its id taken):
   * only then may the lease be given back. A PUT whose outcome stayed unknown may still land,
   * and the next writer fences it only when the lease was not given back.
   */
  private get allLanded(): boolean {
    return this.stages.every((s) => s.state === 'landed');
  }

  /**
   * Stop without flushing, as a process that ends does: writes not yet committed are lost,
   * the volume stays as its last commit left it, and the lease is given back (unless a
   * segment sent may still land: then it lapses). For a close whose flush failed, when the
   * caller will not try again. Idempotent.
   */
  async abandon(): Promise<void> {
    if (this.closed) return;
    await this.discard();
    await this.committer?.release(this.allLanded);
  }

  /** Stop without flushing (a failed open); the caller releases the lease. */
  private async discard(): Promise<void> {
    this.closed = true;
    this.cancelPublish();
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.settle();
    await this.wal?.close();
    await this.segments.close().catch(() => undefined);
    await this.disk?.cache.close().catch(() => undefined);
  }

  // ------------------------------------------------------------------ checks

  private checkRange(offset: number, length: number): void {
    if (
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) ||
      offset < 0 ||
      length < 0
    ) {
      throw new HyperError('invalid', 'INVALID_ARGUMENT', `Invalid range ${offset}+${length}`);
    }
    if (offset + length > this.size) {
      throw new HyperError(
        'invalid',
        'OUT_OF_RANGE',
        `Range ${offset}+${length} is past the end of the volume (${this.size} bytes)`,
      );
    }
  }

  private checkOpen(): void {
    if (this.closed) throw new HyperError('invalid', 'INVALID_ARGUMENT', 'The volume is closed');
  }

  private checkWritable(): void {
    this.checkOpen();
    if (!this.committer)
      throw new HyperError('invalid', 'READ_ONLY', 'The volume is open read-only');
    this.committer.check();
  }

  // ------------------------------------------------------------------ reads

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    this.checkOpen();
    const out = await this.again(() => this.reader.read(offset, length));
    this.counters.bytesRead += length;
    return out;
  }

  /**
   * Segments this writer's own online compaction deleted (their keys, the newest few
   * thousand): a read that found where a block was before compaction moved it, and asked
   * for it after the old segment went, finds it missing. Such a read is done again: it finds
   * the block where it is now. Any other missing segment is damage, reported as before.
   */
  private readonly compactedAway = new Set<string>();

  /** Online compaction is about to delete these segments (compact.ts). */
  deletingSegments(keys: readonly string[]): void {
    for (const k of keys) {
      this.compactedAway.delete(k);
      this.compactedAway.add(k);
    }
    for (const k of this.compactedAway) {
      if (this.compactedAway.size <= 4096) break;
      this.compactedAway.delete(k);
    }
  }

  /** `op` (a read), done again while it meets a segment compaction deleted under it. */
  private async again<T>(op: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await op();
      } catch (e) {
        if (
          attempt >= 4 ||
          !isHyperError(e, 'MISSING_OBJECT') ||
          e.key === undefined ||
          !this.compactedAway.has(e.key)
        )
          throw e;
      }
    }
  }

  /**
   * Like read(), as pieces in order that the caller must not change (blocks read ahead are
   * handed out without a copy; reader.ts).
   */
  async readv(offset: number, length: number): Promise<Buffer[]> {
    this.checkRange(offset, length);
    this.checkOpen();
    const out = await this.again(() => this.reader.readv(offset, length));
    this.counters.bytesRead += length;
    return out;
  }

  /**
   * A buffer read() or readv() returned was sent and is no longer used: the reader may use
   * its memory for a later read (only buffers it lent for that; others are ignored).
   */
  release(buf: Buffer): void {
    this.reader.release(buf);
  }

  /** The current content of one block (for read-modify-write). */
  private async readBlock(lba: number): Promise<Buffer> {
    const b = await this.read(lba * this.bs, Math.min(this.bs, this.size - lba * this.bs));
    if (b.length === this.bs) return b;
    const full = Buffer.alloc(this.bs);
    b.copy(full);
    return full;
  }

  /** Runs of data and holes, for NBD block status and sparse export. */
  extents(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length);
    return this.again(() => this.reader.extents(offset, length));
  }

  // ------------------------------------------------------------------ writes

  /** Write `data` (one buffer, or the pieces of one, e.g. an NBD payload as it arrived). */
  async write(offset: number, data: Data, options: WriteOptions = {}): Promise<void> {
    await this.applyWrite(offset, data, options, (log) => this.buffer.write(offset, data, log));
  }

  /** A write's checks, log, counters and durability around `apply` (the write buffer's step). */
  private async applyWrite(
    offset: number,
    data: Data,
    options: WriteOptions,
    apply: (log: ApplyLog | undefined) => Promise<void>,
  ): Promise<void> {
    this.checkWritable();
    const length = dataLength(data);
    this.checkRange(offset, length);
    if (length === 0) return;
    await apply(this.logged({ op: 'write', offset, length }, data));
    this.counters.bytesWritten += length;
    await this.afterWrite(options);
  }

  /**
   * Memory for the data of a write that writeOwned() will be handed (recycled; the NBD server
   * reads a WRITE's payload straight into it).
   */
  payloadBuffer(length: number): Buffer {
    return this.buffer.payloads.take(length);
  }

  /**
   * write(), with `data` from payloadBuffer(), which the volume owns from here on: a large
   * write of whole blocks keeps it as its blocks, no copy (WriteBuffer.writeOwned). With a
   * WAL, which logs the data by reference, it is copied like any write.
   */
  async writeOwned(offset: number, data: Buffer, options: WriteOptions = {}): Promise<void> {
    let handed = false;
    try {
      await this.applyWrite(offset, data, options, (log) => {
        handed = true;
        return this.buffer.writeOwned(offset, data, log, !this.wal);
      });
    } finally {
      // Refused before the buffer took it (read-only, out of range, empty): back to the pool.
      if (!handed) this.buffer.payloads.give(data);
    }
  }

  /**
   * Compaction's copy of whole blocks out of old segments, at block-aligned `offset`, read
   * after `watch` began: only the blocks that no write, zero or trim changed since
   * (WriteBuffer.rewrite). Not logged in the WAL: the blocks are committed already. Returns
   * the blocks copied.
   */
  async rewrite(offset: number, data: Buffer, watch: ChangeWatch): Promise<number> {
    this.checkWritable();
    this.checkRange(offset, data.length);
    if (offset % this.bs !== 0) throw new RangeError(`rewrite at ${offset}: not block-aligned`);
    const copied = await this.buffer.rewrite(offset / this.bs, data, watch);
    await this.afterWrite({});
    return copied;
  }

  /**
   * Record which blocks of [offset, offset+length) changes touch from now on, until
   * unwatchChanges(): begun before blocks are read to be moved beside this writer's clients,
   * ended once their copy is in (rewrite).
   */
  watchChanges(offset: number, length: number): ChangeWatch {
    return this.buffer.watch(Math.floor(offset / this.bs), Math.ceil((offset + length) / this.bs));
  }

  unwatchChanges(watch: ChangeWatch): void {
    this.buffer.unwatch(watch);
  }

  /**
   * Online compaction takes the volume for its whole run (compact.ts), and a restore for
   * its own: two compactions at once would each decide what to delete under its own history
   * while the other commits another (the later commit could keep checkpoints the earlier run
   * deleted; chaos seed 49), and a restore could bring back a checkpoint whose segments a
   * compaction is deleting. Returns the release; a second claim is refused.
   */
  claimExclusive(what: 'compaction' | 'restore'): () => void {
    const running = this.exclusive;
    if (running !== undefined)
      throw new HyperError(
        'conflict',
        'LEASE_HELD',
        `A ${running} of ${this.store.url} runs in its writer; the ${what} did not start`,
        { suggestion: `Run the ${what} again once the ${running} has ended.` },
      );
    this.exclusive = what;
    return () => {
      if (this.exclusive === what) this.exclusive = undefined;
    };
  }

  private exclusive: 'compaction' | 'restore' | undefined;

  /** Zero a range: whole blocks become holes; partial edges are written with zeros. */
  async writeZeroes(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length);
    if (length === 0) return;
    await this.buffer.zero(offset, length, 'zero', this.logged({ op: 'zero', offset, length }));
    await this.afterWrite(options);
  }

  /** Discard a range: whole blocks become holes (read as zeros); partial edges are left as they are. */
  async trim(offset: number, length: number, options: WriteOptions = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length);
    if (length === 0) return;
    await this.buffer.zero(offset, length, 'keep', this.logged({ op: 'trim', offset, length }));
    await this.afterWrite(options);
  }

  /**
   * The WAL append for a change (with the written `data`), called in the step that applies it
   * (log order = apply order).
   */
  private logged(entry: WalEntry, data?: Data): (() => Promise<void> | undefined) | undefined {
    const wal = this.wal;
    if (!wal) return undefined;
    // Numbered in the step that applies it: a segment frozen before that step holds every
    // change up to its number, and none after (startSegment, replay).
    const numbered = (): WalEntry => {
      entry.change = ++this.walChange;
      return entry;
    };
    // record() copies the data: the caller may reuse its buffers once acknowledged.
    if (wal.writer.deferred) return () => wal.writer.record(numbered(), data);
    return () =>
      wal.writer
        .append(
          data === undefined
            ? numbered()
            : {
                ...numbered(),
                data: Buffer.isBuffer(data) ? data : Buffer.concat(data, entry.length),
              },
        )
        .then(this.walRoom, (e: unknown) => this.commitInstead(e));
  }

  /** A WAL append landed: the log has room (again). */
  private readonly walRoom = (): void => {
    this.walFull?.ok('the WAL has room again: writes are logged');
  };

  /**
   * The WAL's store is full (NO_SPACE): the change is already applied, so a checkpoint
   * committed now holds it, and is as durable as the log would have made it. Committing also
   * lets the log delete the records the checkpoint covers, which frees its room. Any other
   * failure is the write's. `apply`: a change applied only once logged (a resize), applied
   * now, before the checkpoint.
   */
  private async commitInstead(e: unknown, apply?: () => void): Promise<void> {
    const wal = this.wal;
    if (!isHyperError(e, 'NO_SPACE') || !this.committer || !wal || wal.fenced) throw e;
    apply?.();
    (this.walFull ??= new RecurringWarning(this.log)).warn(
      "the WAL's store is full: acknowledged writes are committed to the volume instead (a checkpoint each, slower) until it has room",
      { error: errorText(e) },
    );
    // (Logging at FLUSH: what waits for a record is applied already, so the checkpoint holds
    // it, and it need not wait any more.)
    const waiting = wal.writer.waiting();
    await this.flushes.runShared('durable', () => this.flushOnce('durable'));
    wal.writer.dropCovered(waiting);
  }

  async resize(size: number, options: { allowShrink?: boolean } = {}): Promise<CheckpointInfo> {
    this.checkWritable();
    checkVolumeSize(size);
    // One at a time: each changes the blocks between the size the one before left and its own.
    const run = this.resizing.then(() => this.resizeNext(size, options));
    this.resizing = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private async resizeNext(
    size: number,
    options: { allowShrink?: boolean },
  ): Promise<CheckpointInfo> {
    this.checkWritable();
    if (size < this.size && !options.allowShrink) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `Shrinking from ${this.size} to ${size} bytes drops data`,
        { suggestion: 'Pass --allow-shrink to confirm.' },
      );
    }
    if (size !== this.size) {
      this.resizeRunning = true;
      try {
        await this.buffer.resize(this.size, size, (apply) =>
          this.commitResize(size, this.sizing(size, apply)),
        );
      } finally {
        this.resizeRunning = false;
      }
    }
    return this.flush();
  }

  /** A resize's step: its change to the blocks (`blocks`, from the buffer), then the size. */
  private sizing(size: number, blocks: () => void): () => void {
    return () => {
      blocks();
      this.size = size;
      this.pendingMeta ??= {};
    };
  }

  /**
   * Apply a resize (`apply`: its blocks and the size, one synchronous step) and log it. The
   * size, the blocks and the change number a segment frozen meanwhile records must agree
   * (startSegment takes them in one step): with a WAL that logs each change, the resize is
   * numbered as it is logged and applied in the step its record becomes durable (until then a
   * segment records the number before it: resizeChange), so a log that fails leaves the
   * volume as it was; logged at FLUSH, it is numbered and applied in one step. Either way a
   * write past the old end (possible only once applied) is logged after it: it replays onto a
   * volume that has the room, even if this resize's checkpoint never landed.
   */
  private commitResize(size: number, apply: () => void): Promise<void> | undefined {
    const wal = this.wal;
    if (!wal) {
      apply();
      return undefined;
    }
    const entry: WalEntry = { op: 'resize', offset: 0, length: size, change: ++this.walChange };
    if (wal.writer.deferred) {
      apply();
      return wal.writer.record(entry);
    }
    const change = entry.change as number;
    this.resizeChange = change;
    const applied = (): void => {
      if (this.resizeChange === change) this.resizeChange = undefined;
      apply();
    };
    return wal.writer.append(entry, applied).then(this.walRoom, (e: unknown) => {
      if (this.resizeChange === change) this.resizeChange = undefined;
      // (The WAL's store is full: applied and committed to the volume instead.)
      return this.commitInstead(e, applied);
    });
  }

  private async afterWrite(options: WriteOptions): Promise<void> {
    // With a WAL that logs each write, an acknowledged write is durable: FUA needs nothing
    // more; one that logs at FLUSH logs now.
    if (options.fua) {
      if (!this.wal) {
        await this.sync();
        return;
      }
      if (this.wal.writer.deferred) await this.sync();
    }
    if (this.segmentEstimate() >= this.flushBytes) this.flushForRoom();
  }

  /** The size the buffered writes would take as a segment (see WriteBuffer.nodeRatio). */
  private segmentEstimate(): number {
    return this.buffer.activeEstimate;
  }

  // ------------------------------------------------------------------ durability

  /**
   * A durability barrier for everything acknowledged so far (NBD FLUSH): with a WAL it is
   * already durable (wait for batches in flight); without, commit a checkpoint.
   */
  async sync(): Promise<void> {
    const wal = this.wal;
    if (!wal) {
      if (this.committer) await this.flushes.runShared('durable', () => this.flushOnce('durable'));
      return;
    }
    this.committer?.check();
    // (Writes logged at FLUSH learn of a takeover here: the sync fails, fenced.)
    await wal.writer.sync().catch((e: unknown) => {
      if (!wal.fenced) return this.commitInstead(e);
    });
    if (wal.fenced) throw this.committer?.fence(wal.fenced) ?? wal.fenced;
  }

  /** Whether acknowledged writes are logged before their reply. */
  get hasWal(): boolean {
    return this.wal !== undefined && !this.wal.writer.deferred;
  }

  /** Replay what the WAL holds beyond the head, claim its fence, then log. Writers only. */
  private async startWal(walStore: ObjectStore, deferred: boolean): Promise<void> {
    const head = this.headRecord;
    // Nothing commits until the whole log is applied: the log re-applies changes older than
    // some the head holds, so a checkpoint of part of it (the buffer asking for room, the
    // timed flush) would read a content no writer ever had. The buffer's bound waits.
    const bound = this.buffer.maxDirtyBytes;
    // Entries numbered up to the head's change number are in it already: replaying them
    // would put older data over newer (a batch logged at FLUSH, or one whose PUT landed
    // although it failed, carries changes a later segment holds).
    const holds = head.walChange ?? 0;
    this.walChange = holds;
    this.replaying = true;
    this.buffer.setLimit(Number.MAX_SAFE_INTEGER);
    let started;
    try {
      started = await WalSession.start(
        walStore,
        head.uuid,
        head.epoch,
        head.walSeq ?? 0,
        (e) => this.replay(e, holds),
        this.log,
        deferred,
        async () => (await readHead(this.store)).head.epoch > head.epoch,
      );
    } finally {
      this.buffer.setLimit(bound);
      this.replaying = false;
    }
    const { session, replayed } = started;
    this.wal = session;
    if (replayed > 0) {
      this.log.info('replayed WAL', { entries: replayed });
      await this.flush();
    }
  }

  /**
   * Apply one WAL entry without logging it again, unless the head holds it (numbered at or
   * below `holds`): false then.
   */
  private async replay(e: WalEntry, holds: number): Promise<boolean> {
    if (e.change !== undefined) {
      if (e.change <= holds) return false;
      this.walChange = Math.max(this.walChange, e.change);
    }
    if (e.op === 'write') await this.buffer.write(e.offset, e.data as Buffer);
    else if (e.op === 'zero') await this.buffer.zero(e.offset, e.length, 'zero');
    else if (e.op === 'trim') await this.buffer.zero(e.offset, e.length, 'keep');
    else if (e.op === 'resize') {
      await this.buffer.resize(this.size, e.length, (apply) => {
        this.sizing(e.length, apply)();
        return undefined;
      });
    }
    return true;
  }

  // ------------------------------------------------------------------ history

  /**
   * Make a new checkpoint whose content is checkpoint `id`'s (the index root and size are
   * taken from it; nothing is copied). History is kept: the restore can itself be undone.
   */
  async restore(id: number): Promise<CheckpointInfo> {
    this.checkWritable();
    const release = this.claimExclusive('restore');
    try {
      return await this.restoreClaimed(id);
    } finally {
      release();
    }
  }

  private async restoreClaimed(id: number): Promise<CheckpointInfo> {
    // (With a WAL, changes made before the restore are numbered at or below the change number
    // its checkpoint records: a replay after a crash skips them, never undoing the restore.)
    await this.flush();
    const head = this.headRecord;
    if (!isRetainedCheckpoint(head, id)) {
      throw new HyperError(
        'not-found',
        'CHECKPOINT_NOT_FOUND',
        `Checkpoint ${id} does not exist or was dropped by compaction`,
      );
    }
    const target = await headAt(this.store, head, id);
    // (A change that read its partial blocks, or a resize that took the size, before the
    // restore would apply them after it: what it read is not the restored content.)
    if (
      !this.buffer.active.empty ||
      this.flushes.busy ||
      this.stages.length > 0 ||
      this.buffer.locks.size > 0 ||
      this.resizeRunning
    ) {
      throw new HyperError(
        'conflict',
        'PRECONDITION_FAILED',
        'The volume was written during the restore; retry',
      );
    }
    this.resetTrees(target);
    this.size = target.size;
    // (Deduplicating volumes: the restored checkpoint's content index goes with it.)
    return this.commitMetadata({ restoredFrom: id, ...(this.dedup ? { dedup: {} } : {}) });
  }

  /**
   * Record compaction history at a new checkpoint: checkpoints below `floor` are dropped
   * except `kept`. `floor: 'self'` puts the floor at the new checkpoint itself.
   */
  setHistory(floor: number | 'self', kept: number[]): Promise<CheckpointInfo> {
    return this.commitMetadata({ history: { floor, floorMs: Date.now(), kept } });
  }

  /**
   * Flattening's last step: a checkpoint that no longer names the parent. Older checkpoints
   * of the clone may still read parent segments, so they are dropped (history floor here).
   */
  detachFromParent(): Promise<CheckpointInfo> {
    return this.commitMetadata({
      detach: true,
      history: { floor: 'self', floorMs: Date.now(), kept: [] },
    });
  }

  /**
   * Undo detachFromParent in a new checkpoint: the volume reads from `link` again and retains
   * what `before` (the head before the detach) retained.
   */
  reattachToParent(
    link: NonNullable<HeadRecord['clone']>,
    before: HeadRecord['history'],
  ): Promise<CheckpointInfo> {
    return this.commitMetadata({
      attach: link,
      // No history retained every checkpoint: floor 1 does the same.
      history: before
        ? { floor: before.floor, floorMs: before.floorMs, kept: before.kept }
        : { floor: 1, floorMs: Date.now(), kept: [] },
    });
  }

  /**
   * Deduplicating volumes: change the content-hash index at the next segment (compaction
   * and flatten, before they rewrite blocks; see flush.ts DedupPatch). Nothing is flushed.
   */
  patchDedup(change: DedupPatch): void {
    this.checkWritable();
    if (!this.dedup) return;
    this.pendingMeta = mergePatches(this.pendingMeta, { dedup: change });
  }

  /**
   * Deduplicating volumes: commit a checkpoint that writes every content-index change kept
   * back in memory (flush.ts `deferBytes`), and return its id, P. Online compaction needs it:
   * the writer dedups new blocks onto whatever its content index names, so a segment only an
   * entry kept back names is still in use, though no committed checkpoint reaches it (chaos
   * seed 52345). Every entry naming a block in a segment up to P is in P's content index
   * and in every later one (but those a compaction forgets); entries added after P's build
   * name blocks in segments above P. Segments build one at a time, in id order.
   */
  async commitContentIndex(): Promise<number> {
    this.pendingMeta = mergePatches(this.pendingMeta, { dedup: {} });
    await this.flush();
    return this.contentCommittedAt;
  }

  /** The last segment built with a content-index patch (commitContentIndex). */
  private contentCommittedAt = 0;

  /** The trees as `head` has them (a rollback, a restore). */
  private resetTrees(head: HeadRecord): void {
    this.tree = new BTree(rootOf(head), this.tree.capacity, this.loader);
    const d = this.dedup;
    if (d) {
      const root = dedupRootOf(head);
      d.tree = root
        ? new BTree(root, d.tree.capacity, this.loader)
        : BTree.empty(d.tree.capacity, this.loader, true);
    }
    this.cleanHead = head;
  }

  /** Commit a checkpoint that records `patch` (with whatever else is dirty). */
  private commitMetadata(patch: MetadataPatch): Promise<CheckpointInfo> {
    this.checkWritable();
    this.pendingMeta = mergePatches(this.pendingMeta, patch);
    return this.flush();
  }

  /**
   * Prove this writer still owns the volume (lease renewed by CAS, head still under our
   * epoch); throws FENCED otherwise. Deleters call it right before each delete batch.
   */
  confirmWriter(): Promise<void> {
    this.checkWritable();
    return (this.committer as Committer).confirm();
  }

  /** Whether segment `seg` belongs to a parent volume (clones). */
  inherited(seg: number): boolean {
    return this.segments.inherited(seg);
  }

  // ------------------------------------------------------------------ flush

  /**
   * Commit everything written before this call. Flushes run strictly one after another; a
   * call made while a commit is queued but not started shares it (that commit freezes the
   * writes when it starts, so it covers this caller's too). It waits for every segment in
   * flight, then CASes the head once.
   */
  flush(): Promise<CheckpointInfo> {
    if (!this.committer) return Promise.resolve(this.checkpointInfo());
    return this.flushes.runShared('checkpoint', () => this.flushOnce('checkpoint'));
  }

  /**
   * The write-back buffer is full: write it out as a segment. Nobody asked for durability,
   * so the head CAS waits for the next flush/FUA/timer/close (one PUT per segment while
   * streaming, not two). The PUT runs in the background (up to `pipeline` at once) while the
   * next segment fills. Failures are logged; the next flush retries.
   */
  private flushForRoom(): void {
    if (this.flushes.busy) return;
    const failed = this.stages.some((s) => s.state === 'failed');
    const full = this.segmentEstimate() >= this.flushBytes;
    // A smaller buffer waits for a segment in flight to land (that wakes the writers).
    if (!failed && !full && (this.stages.length > 0 || this.buffer.active.empty)) return;
    this.flushes
      .run(() => this.flushOnce('segment'))
      .catch((e: unknown) => {
        this.storing.warn('background flush failed', { error: errorText(e) });
      });
  }

  private checkpointInfo(): CheckpointInfo {
    const head = this.headRecord;
    return { checkpoint: head.checkpoint, time: new Date(head.checkpointMs) };
  }

  /** Every flush, whoever asked: its outcome is what `stats().flushFailing` reports. */
  private async flushOnce(kind: FlushKind): Promise<CheckpointInfo> {
    try {
      const r = await this.flushOnceTimed(kind);
      this.storing.ok('flushes reach the store again');
      this.flushFailing = undefined;
      return r;
    } catch (e) {
      const f = (this.flushFailing ??= { sinceMs: Date.now(), failures: 0, error: '' });
      f.failures++;
      f.error = errorText(e);
      throw e;
    }
  }

  private async flushOnceTimed(kind: FlushKind): Promise<CheckpointInfo> {
    const flushed = this.observer?.flushed;
    // Only flushes with something to write are timed (an idle FLUSH is not one).
    const idle =
      this.buffer.active.empty &&
      !this.pendingMeta &&
      !this.committer?.headPending &&
      this.stages.length === 0;
    if (flushed === undefined || idle) return this.flushOnceUnobserved(kind);
    const t0 = performance.now();
    let ok = false;
    try {
      const r = await this.flushOnceUnobserved(kind);
      ok = true;
      return r;
    } finally {
      // (A durable flush commits a checkpoint too: the chain continues there.)
      const k = kind === 'segment' ? 'segment' : 'checkpoint';
      notify(() => flushed({ kind: k, seconds: (performance.now() - t0) / 1000, ok }));
    }
  }

  /** The head CAS, timed for the observer; then what the head now names is committed. */
  private async publish(): Promise<void> {
    const committer = this.committer as Committer;
    const committed = this.observer?.committed;
    const t0 = performance.now();
    let ok = false;
    try {
      const head = await committer.publishPending();
      ok = true;
      if (head) this.headCommitted(head);
    } finally {
      if (committed) notify(() => committed({ seconds: (performance.now() - t0) / 1000, ok }));
    }
  }

  /**
   * A durable flush returned: name its checkpoint in the head object without holding it up,
   * once PUBLISH_EVERY of them wait or publishDelayMs after the first. A head CAS per
   * flush would double the requests of small synced writes; the chain past the head that
   * readers roll forward stays short.
   */
  private publishInBackground(): void {
    if (!this.committer?.headPending) return;
    if (++this.unpublished < PUBLISH_EVERY) {
      if (this.publishDelayMs === 0) return;
      this.publishTimer ??= setTimeout(() => this.publishNow(), this.publishDelayMs);
      this.publishTimer.unref();
      return;
    }
    this.publishNow();
  }

  /** Forget a background head update that is due (one is about to run, or none is needed). */
  private cancelPublish(): void {
    clearTimeout(this.publishTimer);
    this.publishTimer = undefined;
    this.unpublished = 0;
  }

  private publishNow(): void {
    this.cancelPublish();
    if (this.closed || !this.committer?.headPending) return;
    this.publish().catch((e: unknown) => {
      // The next flush, the timer or close publishes again.
      this.log.warn('head update failed', { error: errorText(e) });
    });
  }

  private async flushOnceUnobserved(kind: FlushKind): Promise<CheckpointInfo> {
    this.checkWritable();
    const committer = this.committer as Committer;
    // A segment that failed earlier: write it again (or, if its id turned out to be taken,
    // its changes under a new one).
    await this.resolveFailed();
    if (kind === 'segment') {
      while (this.stages.length >= this.pipeline) {
        await (this.stages[0] as Stage).done;
        await this.resolveFailed();
      }
      if (!this.buffer.active.empty || this.pendingMeta) await this.startSegment(committer);
      return this.checkpointInfo();
    }
    for (let attempt = 0; ; attempt++) {
      if (!this.buffer.active.empty || this.pendingMeta) await this.startSegment(committer);
      await this.settle();
      const taken = await this.resolveFailed();
      if (taken === undefined) break;
      // A segment id taken by an old writer's leftover (its PUT landed after our takeover):
      // the ids are skipped now, write again under new ones. An old writer leaves at most a
      // pipeline's worth: ids taken this many times over are a failure the writers learn of.
      if (attempt >= CONFLICT_RETRIES) {
        this.lastFlushError = taken;
        throw taken;
      }
    }
    // Every segment is durable, so committed: the chain continues there.
    if (kind === 'durable') this.publishInBackground();
    // One CAS names them all in the head object.
    else {
      this.cancelPublish();
      if (committer.headPending) await this.publish();
    }
    return this.checkpointInfo();
  }

  /**
   * Segment buffers kept for reuse under a write-buffer bound of `bound` bytes: the segments
   * it holds (in flight or being built), at least two and at most one per PUT in flight plus
   * the one being built. (Five were kept whatever the bound: with two segments' worth
   * buffered, random writes still left three or four buffers resident, each touched up to a
   * segment's size, ~30 MiB apiece of serve's memory.)
   */
  private keptSegmentBuffers(bound: number): number {
    return Math.min(this.pipeline + 1, Math.max(2, Math.ceil(bound / this.flushBytes)));
  }

  /**
   * Freeze the buffer, build the next segment on the index and start its PUT in the
   * background. The index adopts the segment's nodes right away, so the next segment is
   * built on this one; the frozen generation keeps serving reads until the PUT lands.
   */
  private async startSegment(committer: Committer): Promise<void> {
    try {
      await committer.prepare();
    } catch (e) {
      // (The lease could not be renewed, e.g. a full store: writers waiting for room learn of
      // it and fail, instead of asking for flush after flush that fail the same way at once.)
      this.lastFlushError = e;
      throw e;
    }
    const gen = this.buffer.freeze();
    // Durable WAL batches hold only writes applied to `gen`: this checkpoint covers them. It
    // also holds every change numbered up to walChange: a batch still in flight (or whose
    // PUT failed but landed) is replayed after a crash without those.
    const walSeq = this.wal?.writer.lastDurable;
    // (A resize logged and not yet applied is not in `gen`: the number before it.)
    const walChange = !this.wal
      ? undefined
      : this.resizeChange !== undefined
        ? this.resizeChange - 1
        : this.walChange;
    // The size the frozen changes were made at: a resize during the build is the next
    // checkpoint's (it is applied in one step with its blocks and change number: resize).
    const size = this.size;
    const patch = this.pendingMeta ?? {};
    this.pendingMeta = undefined;
    const base = this.cleanHead;
    let built: Awaited<ReturnType<typeof buildSegment>>;
    try {
      built = await buildSegment({
        tree: this.tree,
        loader: this.loader,
        gen,
        id: () => committer.nextId(),
        head: (id, nowMs) => nextHead(committer.tip, { id, nowMs, size, patch, walSeq, walChange }),
        blockSize: this.bs,
        ...(this.compression === undefined
          ? {}
          : { compression: this.compression, compressibility: this.compressibility }),
        ...(this.segments.sealer ? { sealer: this.segments.sealer } : {}),
        ...(this.dedup
          ? {
              dedup: {
                ...this.dedup,
                patch: patch.dedup,
                deferBytes: this.closing ? 0 : this.dedupDeferBytes,
              },
            }
          : {}),
        buffers: this.segmentBuffers,
      });
    } catch (e) {
      // Nothing was built: the changes go back under the newer ones, the patch too.
      this.buffer.putBack([gen]);
      // (Read through a cast: TypeScript does not see that the await above may have set it.)
      const newer = this.pendingMeta as MetadataPatch | undefined;
      this.pendingMeta = mergePatches(patch, newer) ?? {};
      // The build may have changed the index before it failed: back to the last one built.
      this.resetTrees(this.cleanHead);
      this.lastFlushError = e;
      throw e;
    }
    committer.built(built);
    if (this.defaultBound) {
      const bound =
        (built.scattered ? SCATTERED_MAX_DIRTY_SEGMENTS : DEFAULT_MAX_DIRTY_SEGMENTS) *
        this.flushBytes;
      this.buffer.setLimit(bound);
      this.segmentBuffers.setKeep(this.keptSegmentBuffers(bound));
    }
    // Compressed or sealed blocks stay in the generation next to the segment until it lands,
    // and lz4 blocks in the slabs they were packed in.
    gen.segmentBytes =
      built.ownBytes + built.nodeBytes + (built.keptPlain ? gen.bytes : 0) + built.packedBytes;
    // Bytes of header and nodes per byte of blocks buffered (what the estimate multiplies;
    // compressed or deduplicated blocks count whole). Learned from segments the estimate
    // expected to be at least half full, not from a small checkpoint whose nodes weigh more;
    // a high ratio thus learns again from the smaller segments it makes.
    if (gen.bytes > 0 && gen.bytes * (1 + this.buffer.nodeRatio) >= this.flushBytes / 2)
      this.buffer.nodeRatio = Math.min(MAX_NODE_RATIO, built.dataOffset / gen.bytes);
    adoptNodes(built, this.tree, this.loader, this.dedup?.tree);
    this.cleanHead = built.head;
    if (patch.dedup) this.contentCommittedAt = built.head.checkpoint;
    const id = built.head.checkpoint;
    this.segments.hold(id, built.parts);
    const stage: Stage = { built, gen, patch, base, state: 'flying', done: Promise.resolve() };
    this.stages.push(stage);
    this.putStage(stage);
  }

  /** PUT a stage's segment (again, after a failure: the same bytes) in the background. */
  private putStage(stage: Stage): void {
    stage.state = 'flying';
    stage.error = undefined;
    stage.done = (this.committer as Committer).putSegment(stage.built).then(
      () => {
        stage.state = 'landed';
        this.advance();
      },
      (e: unknown) => {
        stage.state = 'failed';
        stage.error = e;
        // Writers waiting for room learn of it (and start the flush that resolves it).
        this.buffer.roomMade();
      },
    );
  }

  /** Segments landed in order become the committer's head; their buffers go. */
  private advance(): void {
    const committer = this.committer as Committer;
    let moved = false;
    while (this.stages[0]?.state === 'landed') {
      const s = this.stages.shift() as Stage;
      committer.landed(s.built.head);
      this.committed = { checkpoint: s.built.head.checkpoint, ms: s.built.head.checkpointMs };
      this.buffer.release(s.gen);
      // (Blocks of a volume with codecs stayed in the generation's slabs until now.)
      s.gen.recycleSlabs(s.built.gathered);
      this.segments.landed(s.built.head.checkpoint);
      // Nothing reads from the segment's buffers any more: the next segments may reuse them.
      for (const b of s.built.buffers) this.segmentBuffers.give(b);
      this.counters.segmentsWritten++;
      this.counters.flushes++;
      moved = true;
    }
    if (moved) {
      this.lastFlushError = undefined;
      this.buffer.roomMade();
    }
  }

  /**
   * Once every PUT in flight has settled: the oldest segment not landed failed. If its id
   * turned out to be an older writer's (OBJECT_EXISTS from putSegment), it and every later
   * segment are abandoned (their ids skipped: each later one names it as its previous
   * checkpoint, so none can ever continue the chain), the index goes back to the state
   * before it, and their changes go back into the buffer under the newer ones. Returns the
   * OBJECT_EXISTS error when it rolled back: no failure of the writes (they are buffered
   * again), so not the last flush error the writers waiting for room would fail with. Runs
   * only inside the flush queue, with every stage settled.
   */
  private rollBackFailed(): HyperError | undefined {
    this.advance();
    const first = this.stages[0];
    if (first?.state !== 'failed' || !isHyperError(first.error, 'OBJECT_EXISTS')) return undefined;
    // Not while a later PUT failed without an answer: only its retry can tell whether a
    // takeover's fence holds that id (then this writer is fenced; giving the segment up and
    // writing its changes at a new id would land them past the new writer's chain).
    if (this.stages.some(unanswered)) return undefined;
    const failed = this.stages;
    this.stages = [];
    const committer = this.committer as Committer;
    committer.abandon(failed.map((s) => s.built.head.checkpoint));
    this.segments.abandoned(failed.map((s) => s.built.head.checkpoint));
    this.resetTrees(first.base);
    this.buffer.putBack(failed.map((s) => s.gen));
    // Their metadata goes back too, even an empty patch: a resize changes nothing but the
    // size the next head is built with, and its patch is empty. Dropped, a grow that met a
    // leftover was acknowledged without a commit (no block went back to start a segment).
    let patch: MetadataPatch = {};
    for (const s of failed) patch = mergePatches(patch, s.patch) ?? patch;
    this.pendingMeta = mergePatches(patch, this.pendingMeta);
    this.lastFlushError = undefined;
    this.log.warn('segment id taken by an older writer; its changes are written again', {
      segments: failed.map((s) => s.built.head.checkpoint).join(','),
      error: errorText(first.error),
    });
    this.buffer.roomMade();
    return first.error;
  }

  /**
   * When a segment PUT failed: wait for the others in flight, then PUT every failed one
   * again with the same bytes (a PUT whose outcome is unknown may still land: another
   * segment in its place could break the chain), and roll back if an id was taken. Returns
   * the OBJECT_EXISTS error if it rolled back; throws the failure if a segment still could
   * not be written (it stays, and the next flush tries again).
   */
  private async resolveFailed(): Promise<HyperError | undefined> {
    if (!this.stages.some((s) => s.state === 'failed')) return undefined;
    for (let round = 0; ; round++) {
      await this.settle();
      const taken = this.rollBackFailed();
      if (taken) return taken;
      // (A PUT that met an older writer's leftover gets the same answer again: not retried.)
      const failed = this.stages.filter(unanswered);
      if (failed.length === 0) return undefined;
      const error = (failed[0] as Stage).error;
      this.lastFlushError = error;
      if (round > 0 || this.committer?.isFenced) throw error;
      this.storing.warn('segment write failed; writing it again', {
        segments: failed.map((s) => s.built.head.checkpoint).join(','),
        error: errorText(error),
      });
      for (const s of failed) this.putStage(s);
    }
  }

  /** Wait until no segment PUT is in flight (close, discard). */
  private async settle(): Promise<void> {
    await Promise.all(this.stages.map((s) => s.done));
  }

  /** The head object names checkpoint `head`: WAL records it covers can go. */
  private headCommitted(head: HeadRecord): void {
    this.committedLast = head.lastSegment;
    this.committedSkipped = new Set(head.skipped);
    const seq = head.walSeq;
    if (seq !== undefined) this.wal?.covered(seq);
  }
}

/** A segment PUT that failed without saying whether its id is taken (by an older writer's leftover). */
function unanswered(s: Stage): boolean {
  return s.state === 'failed' && !isHyperError(s.error, 'OBJECT_EXISTS');
}

/** The disk cache asked for by `options`, with the numbers of the stores segments come from. */
async function openDiskCache(
  options: OpenOptions,
  head: HeadRecord,
  source: SegmentSource,
): Promise<{ cache: DiskCache; storeIds: number[] } | undefined> {
  const o = options.diskCache;
  if (!o) return undefined;
  try {
    return await openDiskCacheIn(o, options, head, source);
  } catch (e) {
    // The cache only saves requests: a full cache disk does not keep the volume from serving.
    if (!isHyperError(e, 'NO_SPACE')) throw e;
    (options.logger ?? silentLogger).warn('disk cache not used: its disk is full', {
      dir: o.dir,
      error: errorText(e),
    });
    return undefined;
  }
}

async function openDiskCacheIn(
  o: NonNullable<OpenOptions['diskCache']>,
  options: OpenOptions,
  head: HeadRecord,
  source: SegmentSource,
): Promise<{ cache: DiskCache; storeIds: number[] }> {
  const cache = await DiskCache.open({
    dir: o.dir,
    sizeBytes: o.sizeBytes,
    mode: o.mode ?? 'reuse',
    identity: head.uuid,
    slotSize: Math.max(2 ** head.dataBlockShift, 2 ** head.metaBlockShift),
    ...(options.logger ? { log: options.logger } : {}),
  });
  try {
    const storeIds: number[] = [];
    for (const s of source.stores) storeIds.push(await cache.storeId(s.url));
    return { cache, storeIds };
  } catch (e) {
    await cache.close();
    throw e;
  }
}

/** Run an observer callback; it never changes the outcome of what it observes. */
function notify(f: () => void): void {
  try {
    f();
  } catch {
    // ignored
  }
}
