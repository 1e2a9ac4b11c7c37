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
 * segment, PUTs it create-only and CASes the head (the commit point); see FORMAT.md.
 */
import { HyperError } from '../../errors.js';
import { isRetainedCheckpoint, type HeadRecord } from '../codec/head.js';
import { nodeCapacity } from '../codec/node.js';
import type { WalEntry } from '../codec/wal.js';
import { BTree } from '../index/btree.js';
import { NodeLoader } from '../index/loader.js';
import type { ObjectStore } from '../store/types.js';
import { Committer, SerialQueue } from './commit.js';
import { checkVolumeSize, createVolume } from './create.js';
import { headAt, infoOf, readHead, resolveCheckpoint, rootOf } from './heads.js';
import { DEFAULT_LEASE_TTL_MS, defaultHolder } from './lease.js';
import { Reader } from './reader.js';
import { adoptNodes, nextHead, writeCheckpoint, type MetadataPatch } from './flush.js';
import { SegmentSource } from './segments.js';
import {
  MiB,
  silentLogger,
  type CheckpointInfo,
  type CreateOptions,
  type EngineObserver,
  type EngineStats,
  type Extent,
  type Logger,
  type OpenOptions,
  type VolumeInfo,
} from './types.js';
import { WalSession, withWalUrl } from './wal.js';
import { WriteBuffer } from './write-buffer.js';

export interface WriteOptions {
  /** Force Unit Access: durable (committed) before the promise resolves. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** Keep storage allocated (NBD NO_HOLE): hyper stores zeros as holes anyway, so reads are identical. */
  noHole?: boolean;
}

/** What a flush is asked to do: commit a checkpoint, or only write a segment for room. */
type FlushKind = 'checkpoint' | 'segment';

export class Volume {
  private readonly bs: number;
  private readonly loader: NodeLoader;
  private tree: BTree;
  private readonly buffer: WriteBuffer;
  private readonly reader: Reader;
  private size: number;
  /** Head changes waiting for the next checkpoint (undefined: none). */
  private pendingMeta: MetadataPatch | undefined;
  private readonly flushes: SerialQueue<CheckpointInfo>;
  private lastFlushError: unknown;
  private timer: NodeJS.Timeout | undefined;
  private wal: WalSession | undefined;
  private closed = false;
  private readonly flushBytes: number;
  private readonly log: Logger;
  private readonly counters = { flushes: 0, segmentsWritten: 0, bytesWritten: 0, bytesRead: 0 };
  private readonly observer: EngineObserver | undefined;
  /** The checkpoint the head object names (a segment written for room is not one yet). */
  private committed: { checkpoint: number; ms: number };

  private constructor(
    private readonly store: ObjectStore,
    /** The head as opened (read-only volumes keep this one; writers follow the committer). */
    private readonly openedHead: HeadRecord,
    readonly readOnly: boolean,
    /** Writers only: every change of the head goes through it. */
    private readonly committer: Committer | undefined,
    opts: OpenOptions,
    private readonly segments: SegmentSource,
  ) {
    const head = openedHead;
    this.bs = 2 ** head.dataBlockShift;
    const nodeSize = 2 ** head.metaBlockShift;
    this.size = head.size;
    this.log = opts.logger ?? silentLogger;
    this.observer = opts.observer;
    this.committed = { checkpoint: head.checkpoint, ms: head.checkpointMs };
    this.loader = new NodeLoader(segments, nodeSize, opts.nodeCacheBytes ?? 32 * MiB);
    this.tree = new BTree(rootOf(head), nodeCapacity(nodeSize), this.loader);
    this.flushBytes = opts.flushBytes ?? head.segmentSize;
    this.buffer = new WriteBuffer({
      blockSize: this.bs,
      maxDirtyBytes: Math.max(opts.maxDirtyBytes ?? 1.5 * this.flushBytes, this.flushBytes),
      readBlock: (lba) => this.readBlock(lba),
      checkWritable: () => this.checkWritable(),
      flushForRoom: () => this.flushForRoom(),
      lastFlushError: () => this.lastFlushError,
    });
    // The flush queue wakes writers waiting for room after every flush.
    this.flushes = new SerialQueue(() => this.buffer.roomMade());
    this.reader = new Reader(
      { tree: () => this.tree, buffered: (lba) => this.buffer.lookup(lba) },
      this.loader,
      segments,
      this.bs,
      opts.dataCacheBytes ?? 32 * MiB,
    );
    const interval = opts.flushIntervalMs ?? 5000;
    if (!readOnly && interval > 0) {
      this.timer = setInterval(() => {
        const dirty = !this.buffer.active.empty || this.committer?.headPending;
        if (dirty && !this.flushes.busy) {
          this.flush().catch((e: unknown) =>
            this.log.warn('timed flush failed', {
              error: e instanceof Error ? e.message : String(e),
            }),
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
    const source = (h: HeadRecord): Promise<SegmentSource> =>
      SegmentSource.forHead(store, h, options.openStore);
    if (options.at) {
      const head = await headAt(
        store,
        cur.head,
        await resolveCheckpoint(store, cur.head, options.at),
      );
      return new Volume(store, head, true, undefined, options, await source(head));
    }
    if (options.readOnly)
      return new Volume(store, cur.head, true, undefined, options, await source(cur.head));

    options.signal?.throwIfAborted();
    const lease = {
      holder: options.holder ?? defaultHolder(),
      ttlMs: options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS,
      force: options.force ?? false,
      minEpoch: cur.head.epoch,
    };
    const log = options.logger ?? silentLogger;
    const committer = await Committer.takeOver(store, lease, log, (head) =>
      withWalUrl(head, options.walUrl),
    );
    let vol: Volume | undefined;
    try {
      vol = new Volume(
        store,
        committer.head,
        false,
        committer,
        options,
        await source(committer.head),
      );
      const walUrl = committer.head.walUrl;
      if (walUrl)
        await vol.startWal(await (options.openStore ?? SegmentSource.defaultOpen)(walUrl));
      return vol;
    } catch (e) {
      // Nothing is flushed on the way out: a failed replay must not commit half of the log.
      await vol?.discard();
      await committer.release().catch(() => undefined);
      throw e;
    }
  }

  /** The head of the newest checkpoint (for tools; do not modify). */
  get headRecord(): HeadRecord {
    return this.committer?.head ?? this.openedHead;
  }

  get info(): VolumeInfo {
    const i = infoOf(this.store.url, this.headRecord, this.readOnly);
    i.size = this.size;
    i.mappedBlocks = this.tree.mapped;
    return i;
  }

  stats(): EngineStats {
    return {
      ...this.counters,
      nodeCacheHits: this.loader.hits,
      nodeCacheMisses: this.loader.misses,
      dataCacheHits: this.reader.dataCache.hits,
      dataCacheMisses: this.reader.dataCache.misses,
      dirtyBytes: this.buffer.dirtyBytes,
      maxDirtyBytes: this.buffer.maxDirtyBytes,
      checkpoint: this.committed.checkpoint,
      checkpointMs: this.committed.ms,
      ...(this.committer ? { lease: this.committer.leaseState } : {}),
    };
  }

  /** Flush, stop timers, release the lease. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (this.committer && !this.committer.isFenced) await this.flush();
    } finally {
      this.closed = true;
      if (this.timer) clearInterval(this.timer);
      this.timer = undefined;
      await this.wal?.close();
      await this.segments.close().catch(() => undefined);
      await this.committer?.release();
    }
  }

  /** Stop without flushing (a failed open); the caller releases the lease. */
  private async discard(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    await this.wal?.close();
    await this.segments.close().catch(() => undefined);
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
    const out = await this.reader.read(offset, length);
    this.counters.bytesRead += length;
    return out;
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
    return this.reader.extents(offset, length);
  }

  // ------------------------------------------------------------------ writes

  async write(offset: number, data: Buffer, options: WriteOptions = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    await this.buffer.write(
      offset,
      data,
      this.logged({ op: 'write', offset, length: data.length, data }),
    );
    this.counters.bytesWritten += data.length;
    await this.afterWrite(options);
  }

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

  /** The WAL append for a change, called in the step that applies it (log order = apply order). */
  private logged(entry: WalEntry): (() => Promise<void>) | undefined {
    const wal = this.wal;
    return wal ? () => wal.writer.append(entry) : undefined;
  }

  async resize(size: number, options: { allowShrink?: boolean } = {}): Promise<CheckpointInfo> {
    this.checkWritable();
    checkVolumeSize(size);
    if (size < this.size) {
      if (!options.allowShrink) {
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `Shrinking from ${this.size} to ${size} bytes drops data`,
          { suggestion: 'Pass --allow-shrink to confirm.' },
        );
      }
      await this.buffer.truncate(this.size, size);
    }
    if (size !== this.size) {
      this.size = size;
      this.pendingMeta ??= {};
    }
    return this.flush();
  }

  private async afterWrite(options: WriteOptions): Promise<void> {
    // With a WAL every acknowledged write is already durable: FUA needs nothing more.
    if (options.fua && !this.wal) {
      await this.flush();
      return;
    }
    if (this.buffer.dirtyBytes >= this.flushBytes) this.flushForRoom();
  }

  // ------------------------------------------------------------------ durability

  /**
   * A durability barrier for everything acknowledged so far (NBD FLUSH): with a WAL it is
   * already durable (wait for batches in flight); without, commit a checkpoint.
   */
  async sync(): Promise<void> {
    const wal = this.wal;
    if (!wal) {
      await this.flush();
      return;
    }
    this.committer?.check();
    await wal.writer.sync();
    if (wal.fenced) throw this.committer?.fence(wal.fenced) ?? wal.fenced;
  }

  /** Bytes written but not yet committed in a checkpoint. */
  get dirtyBytes(): number {
    return this.buffer.dirtyBytes;
  }

  /** Whether acknowledged writes are logged before their reply. */
  get hasWal(): boolean {
    return this.wal !== undefined;
  }

  /** Replay what the WAL holds beyond the head, claim its fence, then log. Writers only. */
  private async startWal(walStore: ObjectStore): Promise<void> {
    const head = this.headRecord;
    const { session, replayed } = await WalSession.start(
      walStore,
      head.uuid,
      head.epoch,
      head.walSeq ?? 0,
      (e) => this.replay(e),
      this.log,
    );
    this.wal = session;
    if (replayed > 0) {
      this.log.info('replayed WAL', { entries: replayed });
      await this.flush();
    }
  }

  /** Apply one WAL entry without logging it again. */
  private async replay(e: WalEntry): Promise<void> {
    if (e.op === 'write') await this.buffer.write(e.offset, e.data as Buffer);
    else if (e.op === 'zero') await this.buffer.zero(e.offset, e.length, 'zero');
    else if (e.op === 'trim') await this.buffer.zero(e.offset, e.length, 'keep');
    else if (e.op === 'resize') this.size = e.length;
  }

  // ------------------------------------------------------------------ history

  /**
   * Make a new checkpoint whose content is checkpoint `id`'s (the index root and size are
   * taken from it; nothing is copied). History is kept: the restore can itself be undone.
   */
  async restore(id: number): Promise<CheckpointInfo> {
    this.checkWritable();
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
    if (!this.buffer.active.empty || this.flushes.busy) {
      throw new HyperError(
        'conflict',
        'PRECONDITION_FAILED',
        'The volume was written during the restore; retry',
      );
    }
    this.tree = new BTree(rootOf(target), this.tree.capacity, this.loader);
    this.size = target.size;
    return this.commitMetadata({ restoredFrom: id });
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

  /** Commit a checkpoint that records `patch` (with whatever else is dirty). */
  private commitMetadata(patch: MetadataPatch): Promise<CheckpointInfo> {
    this.checkWritable();
    this.pendingMeta = { ...this.pendingMeta, ...patch };
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
   * writes when it starts, so it covers this caller's too).
   */
  flush(): Promise<CheckpointInfo> {
    if (!this.committer) return Promise.resolve(this.checkpointInfo());
    return this.flushes.runShared(() => this.flushOnce('checkpoint'));
  }

  /**
   * The write-back buffer is full: write it out as a segment. Nobody asked for durability,
   * so the head CAS waits for the next flush/FUA/timer/close (one PUT per segment while
   * streaming, not two). Failures are logged; the next flush retries.
   */
  private flushForRoom(): void {
    if (this.flushes.busy) return;
    this.flushes
      .run(() => this.flushOnce('segment'))
      .catch((e: unknown) => {
        this.log.warn('background flush failed', {
          error: e instanceof Error ? e.message : String(e),
        });
      });
  }

  private checkpointInfo(): CheckpointInfo {
    const head = this.headRecord;
    return { checkpoint: head.checkpoint, time: new Date(head.checkpointMs) };
  }

  private async flushOnce(kind: FlushKind): Promise<CheckpointInfo> {
    const flushed = this.observer?.flushed;
    // Only flushes with something to write are timed (an idle FLUSH is not one).
    const idle = this.buffer.active.empty && !this.pendingMeta && !this.committer?.headPending;
    if (flushed === undefined || idle) return this.flushOnceUnobserved(kind);
    const t0 = performance.now();
    let ok = false;
    try {
      const r = await this.flushOnceUnobserved(kind);
      ok = true;
      return r;
    } finally {
      notify(() => flushed({ kind, seconds: (performance.now() - t0) / 1000, ok }));
    }
  }

  /** The head CAS, timed for the observer. */
  private async commit(publish: () => Promise<void>): Promise<void> {
    const committed = this.observer?.committed;
    if (committed === undefined) return publish();
    const t0 = performance.now();
    let ok = false;
    try {
      await publish();
      ok = true;
    } finally {
      notify(() => committed({ seconds: (performance.now() - t0) / 1000, ok }));
    }
  }

  private async flushOnceUnobserved(kind: FlushKind): Promise<CheckpointInfo> {
    this.checkWritable();
    const committer = this.committer as Committer;
    if (this.buffer.active.empty && !this.pendingMeta) {
      // Segments written for room still wait for their head: one CAS commits them.
      if (kind === 'checkpoint' && committer.headPending) {
        await this.commit(() => committer.publishPending());
        this.headCommitted();
      }
      return this.checkpointInfo();
    }
    const gen = this.buffer.freeze();
    // Durable WAL batches hold only writes applied to `gen`: this checkpoint covers them.
    // (A batch still in flight is replayed after a crash; replaying a covered write is harmless.)
    const walSeq = this.wal?.writer.lastDurable;
    const patch = this.pendingMeta ?? {};
    this.pendingMeta = undefined;
    try {
      const built = await writeCheckpoint({
        committer,
        tree: this.tree,
        loader: this.loader,
        gen,
        head: (id, nowMs) =>
          nextHead(committer.head, { id, nowMs, size: this.size, patch, walSeq }),
        blockSize: this.bs,
      });
      this.counters.segmentsWritten++;
      if (kind === 'checkpoint') {
        await this.commit(() => committer.publish(built));
        this.headCommitted();
      } else committer.written(built);
      this.counters.flushes++;
      adoptNodes(built, this.tree, this.loader);
      this.lastFlushError = undefined;
      this.buffer.unfreeze(true);
      return this.checkpointInfo();
    } catch (e) {
      // Nothing was committed: the changes go back under the newer ones, the patch too.
      this.buffer.unfreeze(false);
      // (Read through a cast: TypeScript does not see that the await above may have set it.)
      const newer = this.pendingMeta as MetadataPatch | undefined;
      this.pendingMeta = { ...patch, ...newer };
      this.lastFlushError = e;
      throw e;
    }
  }

  /** The head object names the newest checkpoint: WAL records it covers can go. */
  private headCommitted(): void {
    const head = this.headRecord;
    this.committed = { checkpoint: head.checkpoint, ms: head.checkpointMs };
    const seq = head.walSeq;
    if (seq !== undefined) this.wal?.covered(seq);
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
