/**
 * The volume engine: reads, writes, trims and flushes of one volume, on any ObjectStore.
 *
 * Data path: writes land in the `active` generation (whole blocks, bounded in bytes); a
 * flush freezes it, applies it to the copy-on-write index, builds one segment (header with
 * the embedded head, dirty index nodes, new data blocks), PUTs it create-only and then
 * CASes the head — the commit point. Reads consult active, then frozen, then the index, and
 * fetch stored blocks with coalesced, verified ranged GETs through a block cache.
 * See FORMAT.md for the bytes and DESIGN notes there for the reasons.
 */
import { randomBytes } from 'node:crypto';
import { HyperError, dataError, isHyperError } from '../../errors.js';
import { DecodeError, crc32c } from '../codec/binary.js';
import { decodeHead, encodeHead, isRetainedCheckpoint, type HeadRecord } from '../codec/head.js';
import {
  ENTRY_SIZE,
  NODE_HEADER,
  SECTOR,
  decodeNode,
  encodeNode,
  encodedNodeSize,
  nodeCapacity,
} from '../codec/node.js';
import { decodeEmbeddedHead, encodeSegmentHeader } from '../codec/segment.js';
import { BTree, Miss, Node, PENDING_SEG, type BlockPtr, newEntries } from '../index/btree.js';
import { LruCache } from '../index/cache.js';
import { NodeLoader } from '../index/loader.js';
import { HEAD_KEY, SEGMENT_PREFIX, parseSegmentKey, segmentKey, snapshotKey } from '../keys.js';
import { decodeSnapshot, type SnapshotRecord } from '../codec/snapshot.js';
import { probeConditionalWrites } from '../store/probe.js';
import type { ObjectStore } from '../store/types.js';
import { Generation } from './dirty.js';
import { WalWriter, listWal, readWal, walKeyFor } from './wal.js';
import { encodeWal, type WalEntry } from '../codec/wal.js';
import { SegmentSource } from './segments.js';
import { DEFAULT_LEASE_TTL_MS, Lease, defaultHolder } from './lease.js';
import {
  DEFAULT_BLOCK_SIZE,
  DEFAULT_SEGMENT_SIZE,
  MAX_DATA_BLOCK_SIZE,
  MAX_META_BLOCK_SIZE,
  MAX_SEGMENT_SIZE,
  MAX_VOLUME_SIZE,
  MIN_DATA_BLOCK_SIZE,
  MIN_META_BLOCK_SIZE,
  MIN_SEGMENT_SIZE,
  MiB,
  silentLogger,
  type CheckpointInfo,
  type CreateOptions,
  type EngineStats,
  type Extent,
  type Logger,
  type OpenOptions,
  type VolumeInfo,
} from './types.js';

export const FORMAT_VERSION = 1;

export interface WriteOptions {
  /** Force Unit Access: durable (committed) before the promise resolves. */
  fua?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** Keep storage allocated (NBD NO_HOLE): hyper stores zeros as holes anyway, so reads are identical. */
  noHole?: boolean;
}

const PENDING: BlockPtr = { seg: PENDING_SEG, off: 0, len: 0, crc: 0, codec: 0 };
const isMiss = (r: unknown): r is Miss => r instanceof Miss;
/** Extents answers cover at most this many blocks per call (clients ask again for the rest). */
const MAX_EXTENT_BLOCKS = 1 << 20;
/** Bytes fetched to read a checkpoint's embedded head from its segment. */
const EMBEDDED_HEAD_PREFIX = 16 * 1024;

function checkPow2(name: string, v: number, min: number, max: number): void {
  if (!Number.isSafeInteger(v) || v < min || v > max || (v & (v - 1)) !== 0) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `${name} must be a power of two from ${min} to ${max} bytes (got ${v})`,
    );
  }
}

function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size < 0 || size > MAX_VOLUME_SIZE || size % SECTOR !== 0) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Volume size must be a multiple of 512 bytes from 0 to ${MAX_VOLUME_SIZE} (got ${size})`,
    );
  }
}

const log2 = (v: number): number => Math.round(Math.log2(v));

/** Read and decode the head object; translate absence and damage into domain errors. */
export async function readHead(
  store: ObjectStore,
): Promise<{ head: HeadRecord; etag: string; bytes: Buffer }> {
  let got;
  try {
    got = await store.get(HEAD_KEY);
  } catch (e) {
    if (isHyperError(e, 'OBJECT_NOT_FOUND')) {
      let other = false;
      for await (const page of store.list('')) {
        other = page.objects.length > 0 || page.prefixes.length > 0;
        break;
      }
      throw other
        ? new HyperError(
            'invalid',
            'NOT_A_VOLUME',
            `${store.url} holds objects but no hyper volume (no ${HEAD_KEY} object)`,
            {
              suggestion:
                'Check the URL: a volume URL ends at the prefix that holds `head` and `seg/`.',
            },
          )
        : new HyperError('not-found', 'VOLUME_NOT_FOUND', `No volume at ${store.url}`, {
            suggestion: 'Create it with `hyper file create URL --size SIZE`, or check the URL.',
          });
    }
    throw e;
  }
  try {
    return { head: decodeHead(got.body).head, etag: got.etag, bytes: got.body };
  } catch (e) {
    if (e instanceof DecodeError)
      throw dataError('CORRUPT_OBJECT', HEAD_KEY, `Volume head is damaged: ${e.message}`);
    throw e;
  }
}

/** The head embedded in segment `id` (a checkpoint), from a short ranged GET. */
export async function readCheckpointHead(store: ObjectStore, id: number): Promise<HeadRecord> {
  const key = segmentKey(id);
  let prefix: Buffer;
  try {
    prefix = (await store.get(key, { range: { offset: 0, length: EMBEDDED_HEAD_PREFIX } })).body;
  } catch (e) {
    if (isHyperError(e, 'OBJECT_NOT_FOUND'))
      throw dataError('MISSING_OBJECT', key, `Segment of checkpoint ${id} is missing`);
    throw e;
  }
  try {
    return decodeEmbeddedHead(prefix);
  } catch (e) {
    if (!(e instanceof DecodeError)) throw e;
    // The embedded head may be longer than the prefix: fetch exactly what it says.
    if (prefix.length === EMBEDDED_HEAD_PREFIX && prefix.length >= 80) {
      const need = 72 + prefix.readUInt32LE(72 + 8);
      if (need > prefix.length && need < 64 * MiB) {
        const full = (await store.get(key, { range: { offset: 0, length: need } })).body;
        try {
          return decodeEmbeddedHead(full);
        } catch (e2) {
          if (!(e2 instanceof DecodeError)) throw e2;
        }
      }
    }
    throw dataError(
      'CHECKSUM_MISMATCH',
      key,
      `Segment header of checkpoint ${id} is damaged: ${e.message}`,
    );
  }
}

export class Volume {
  private readonly bs: number;
  private readonly nodeSize: number;
  private readonly capacity: number;
  private readonly loader: NodeLoader;
  private tree: BTree;
  private readonly dataCache: LruCache<string, Buffer>;
  private active: Generation;
  private frozen: Generation | undefined;
  private size: number;
  private metaDirty = false;
  /** Flushes run one at a time, in order: each waits for the previous one (see enqueue). */
  private flushTail: Promise<unknown> = Promise.resolve();
  /** Flushes enqueued and not finished. */
  private flushesPending = 0;
  /** A commit that is queued but has not started: later flush() calls can share it. */
  private nextCommit: Promise<CheckpointInfo> | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Blocks with a read-modify-write in progress → its completion. */
  private readonly locks = new Map<number, Promise<void>>();
  private roomWaiters: (() => void)[] = [];
  private fenced: HyperError | undefined;
  private closed = false;
  private readonly flushBytes: number;
  private readonly maxDirty: number;
  private readonly log: Logger;
  private readonly zero: Buffer;
  private readonly counters = { flushes: 0, segmentsWritten: 0, bytesWritten: 0, bytesRead: 0 };
  /** Head fields to change at the next commit (restore, compaction history). */
  private nextMeta: Partial<Pick<HeadRecord, 'history' | 'restoredFrom' | 'clone' | 'walSeq'>> = {};

  private constructor(
    private readonly store: ObjectStore,
    private head: HeadRecord,
    private headEtag: string,
    readonly readOnly: boolean,
    private readonly lease: Lease | undefined,
    opts: OpenOptions,
    private readonly segments: SegmentSource,
  ) {
    this.bs = 2 ** head.dataBlockShift;
    this.nodeSize = 2 ** head.metaBlockShift;
    this.capacity = nodeCapacity(this.nodeSize);
    this.size = head.size;
    this.log = opts.logger ?? silentLogger;
    this.loader = new NodeLoader(
      segments,
      this.nodeSize,
      this.capacity,
      opts.nodeCacheBytes ?? 32 * MiB,
    );
    this.tree = new BTree(this.decodeRoot(head), this.capacity, this.loader);
    this.dataCache = new LruCache(opts.dataCacheBytes ?? 32 * MiB);
    this.active = new Generation(this.bs);
    this.flushBytes = opts.flushBytes ?? head.segmentSize;
    this.maxDirty = Math.max(opts.maxDirtyBytes ?? 1.5 * this.flushBytes, this.flushBytes);
    this.zero = Buffer.alloc(this.bs);
    const interval = opts.flushIntervalMs ?? 5000;
    if (!readOnly && interval > 0) {
      this.timer = setInterval(() => {
        if ((!this.active.empty || this.headBehind) && !this.flushBusy) {
          this.flush().catch((e: unknown) =>
            this.log.warn('timed flush failed', {
              error: e instanceof Error ? e.message : String(e),
            }),
          );
        }
      }, interval);
      this.timer.unref();
    }
    lease?.startRenewal((e) => {
      this.fenced ??= e;
      this.log.error('lease lost; volume fenced', { error: e.message });
    });
  }

  private decodeRoot(head: HeadRecord): Node {
    try {
      const d = decodeNode(head.root, 0, this.capacity);
      if (d.level !== head.rootLevel) throw new DecodeError('root level does not match head');
      return new Node(d.level, d.count, d.entries, false);
    } catch (e) {
      if (e instanceof DecodeError)
        throw dataError('CORRUPT_OBJECT', HEAD_KEY, `Index root is damaged: ${e.message}`);
      throw e;
    }
  }

  // ------------------------------------------------------------------ lifecycle

  /** Create a volume: segment 1 (an empty checkpoint) then the head, both create-only. */
  static async create(
    store: ObjectStore,
    options: CreateOptions & { signal?: AbortSignal } = {},
  ): Promise<VolumeInfo> {
    const size = options.size ?? 0;
    const dataBlockSize = options.dataBlockSize ?? DEFAULT_BLOCK_SIZE;
    const metaBlockSize = options.metaBlockSize ?? DEFAULT_BLOCK_SIZE;
    const segmentSize = options.segmentSize ?? DEFAULT_SEGMENT_SIZE;
    checkSize(size);
    checkPow2('Data block size', dataBlockSize, MIN_DATA_BLOCK_SIZE, MAX_DATA_BLOCK_SIZE);
    checkPow2('Meta block size', metaBlockSize, MIN_META_BLOCK_SIZE, MAX_META_BLOCK_SIZE);
    if (
      !Number.isSafeInteger(segmentSize) ||
      segmentSize < MIN_SEGMENT_SIZE ||
      segmentSize > MAX_SEGMENT_SIZE
    ) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `Segment size must be from ${MIN_SEGMENT_SIZE} to ${MAX_SEGMENT_SIZE} bytes`,
      );
    }
    if (segmentSize < dataBlockSize) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        'Segment size must be at least the data block size',
      );
    }
    if (await store.head(HEAD_KEY)) {
      throw new HyperError('conflict', 'VOLUME_EXISTS', `A volume already exists at ${store.url}`, {
        suggestion: 'Pick another URL, or delete the existing volume with `hyper file delete`.',
      });
    }
    // A store that ignores create-only / compare-and-swap writes cannot protect a volume.
    await probeConditionalWrites(store, options.signal ? { signal: options.signal } : {});
    const now = Date.now();
    const root = Buffer.alloc(encodedNodeSize(0));
    encodeNode(root, 0, 0, 0, 1, newEntries(0));
    const head: HeadRecord = {
      uuid: randomBytes(16).toString('hex'),
      createdMs: now,
      size,
      dataBlockShift: log2(dataBlockSize),
      metaBlockShift: log2(metaBlockSize),
      flags: 0,
      segmentSize,
      checkpoint: 1,
      checkpointMs: now,
      prevCheckpoint: 0,
      lastSegment: 1,
      epoch: 0,
      rootLevel: 0,
      root,
      skipped: [],
      ...(options.walUrl === undefined ? {} : { walUrl: options.walUrl }),
    };
    const headBytes = encodeHead(head);
    const seg = buildEmptySegment(1, now, headBytes);
    try {
      await store.put(segmentKey(1), seg, {
        ifNoneMatch: true,
        ...(options.signal ? { signal: options.signal } : {}),
      });
    } catch (e) {
      if (isHyperError(e, 'OBJECT_EXISTS')) {
        throw new HyperError(
          'conflict',
          'VOLUME_EXISTS',
          `${store.url} already holds volume segments`,
          {
            suggestion:
              'Another create may be running, or a deleted volume left objects behind: use another URL or delete it.',
          },
        );
      }
      throw e;
    }
    try {
      await store.put(HEAD_KEY, headBytes, { ifNoneMatch: true });
    } catch (e) {
      if (isHyperError(e, 'OBJECT_EXISTS')) {
        throw new HyperError(
          'conflict',
          'VOLUME_EXISTS',
          `A volume already exists at ${store.url}`,
        );
      }
      throw e;
    }
    return infoOf(store.url, head, true);
  }

  static async open(store: ObjectStore, options: OpenOptions = {}): Promise<Volume> {
    const cur = await readHead(store);
    const source = (h: HeadRecord): Promise<SegmentSource> =>
      SegmentSource.forHead(store, h, options.openStore);
    if (options.at) {
      const id = await resolveCheckpoint(store, cur.head, options.at);
      const head = id === cur.head.checkpoint ? cur.head : await readCheckpointHead(store, id);
      return new Volume(store, head, '', true, undefined, options, await source(head));
    }
    if (options.readOnly) {
      return new Volume(
        store,
        cur.head,
        cur.etag,
        true,
        undefined,
        options,
        await source(cur.head),
      );
    }

    const lease = await Lease.acquire(store, {
      holder: options.holder ?? defaultHolder(),
      ttlMs: options.leaseTtlMs ?? DEFAULT_LEASE_TTL_MS,
      force: options.force ?? false,
      minEpoch: cur.head.epoch,
    });
    try {
      // Take over the head under the new epoch: a fenced writer's next CAS now fails.
      // Segments past lastSegment are flushes that never committed: skip their ids.
      let { head, etag } = await readHead(store);
      const skipped = [...head.skipped];
      let last = head.lastSegment;
      for await (const page of store.list(SEGMENT_PREFIX, {
        startAfter: segmentKey(head.lastSegment),
      })) {
        for (const o of page.objects) {
          const id = parseSegmentKey(o.key);
          if (id !== undefined && id > head.lastSegment) {
            skipped.push(id);
            last = Math.max(last, id);
          }
        }
      }
      if (options.walUrl && head.walUrl && options.walUrl !== head.walUrl) {
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `The volume logs to ${head.walUrl}, not ${options.walUrl}`,
          {
            suggestion:
              'Open it with its own WAL URL (or none): it may hold writes that must be replayed first.',
          },
        );
      }
      const walUrl = options.walUrl ?? head.walUrl;
      head = {
        ...head,
        epoch: lease.epoch,
        lastSegment: last,
        skipped,
        ...(walUrl ? { walUrl } : {}),
      };
      const bytes = encodeHead(head);
      ({ etag } = await store.put(HEAD_KEY, bytes, { ifMatch: etag }));
      const vol = new Volume(store, head, etag, false, lease, options, await source(head));
      if (walUrl) {
        try {
          await vol.startWal(await (options.openStore ?? SegmentSource.defaultOpen)(walUrl));
        } catch (e) {
          await vol.close().catch(() => undefined);
          throw e;
        }
      }
      return vol;
    } catch (e) {
      await lease.release().catch(() => undefined);
      if (isHyperError(e, 'PRECONDITION_FAILED')) {
        throw new HyperError(
          'conflict',
          'LEASE_HELD',
          'The volume head changed while taking the lease; another writer is active',
          {
            cause: e,
          },
        );
      }
      throw e;
    }
  }

  get info(): VolumeInfo {
    const i = infoOf(this.store.url, this.head, this.readOnly);
    i.size = this.size;
    i.mappedBlocks = this.tree.mapped;
    return i;
  }

  stats(): EngineStats {
    return {
      ...this.counters,
      nodeCacheHits: this.loader.hits,
      nodeCacheMisses: this.loader.misses,
      dataCacheHits: this.dataCache.hits,
      dataCacheMisses: this.dataCache.misses,
    };
  }

  /** Flush, stop timers, release the lease. Idempotent. */
  async close(): Promise<void> {
    if (this.closed) return;
    try {
      if (!this.readOnly && !this.fenced) await this.flush();
    } finally {
      this.closed = true;
      if (this.timer) clearInterval(this.timer);
      this.timer = undefined;
      await this.walTrim;
      await this.segments.close().catch(() => undefined);
      if (this.lease) {
        if (this.fenced) this.lease.stop();
        else await this.lease.release();
      }
    }
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

  private checkWritable(): void {
    if (this.closed) throw new HyperError('invalid', 'INVALID_ARGUMENT', 'The volume is closed');
    if (this.readOnly) throw new HyperError('invalid', 'READ_ONLY', 'The volume is open read-only');
    if (this.fenced) throw this.fenced;
    if (this.lease?.lost) {
      this.fenced = this.lease.lost;
      throw this.fenced;
    }
  }

  // ------------------------------------------------------------------ reads

  /** What the un-flushed generations say about a block (see Generation.lookup). */
  private dirty(lba: number): Buffer | null | undefined {
    const a = this.active.lookup(lba);
    if (a !== undefined || !this.frozen) return a;
    return this.frozen.lookup(lba);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkRange(offset, length);
    if (this.closed) throw new HyperError('invalid', 'INVALID_ARGUMENT', 'The volume is closed');
    const out = Buffer.allocUnsafe(length);
    if (length === 0) return out;
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    for (;;) {
      const fromIndex: number[] = [];
      for (let lba = first; lba <= last; lba++) {
        const v = this.dirty(lba);
        if (v === undefined) fromIndex.push(lba);
        else copyBlock(out, offset, length, lba, bs, v);
      }
      if (fromIndex.length === 0) break;
      if (await this.readFromIndex(out, offset, length, fromIndex)) break;
      // An index entry was still being flushed: the generations have it now; go again.
    }
    this.counters.bytesRead += length;
    return out;
  }

  /** Fill `out` for blocks that are not dirty. Returns false to ask for a retry. */
  private async readFromIndex(
    out: Buffer,
    offset: number,
    length: number,
    lbas: number[],
  ): Promise<boolean> {
    const bs = this.bs;
    const lo = lbas[0] as number;
    const hi = (lbas[lbas.length - 1] as number) + 1;
    const ptrs = new Map<number, BlockPtr>();
    if (lbas.length === 1) {
      const p = await this.loader.run(() => this.tree.lookup(lo), isMiss);
      if (p) ptrs.set(lo, p);
    } else {
      for (const e of await this.loader.run(() => this.tree.scan(lo, hi), isMiss))
        ptrs.set(e.lba, e);
    }
    // Group contiguous blocks of one segment into runs: one ranged GET each.
    const runs: { seg: number; off: number; lbas: number[]; ptrs: BlockPtr[] }[] = [];
    let run: (typeof runs)[number] | undefined;
    for (const lba of lbas) {
      const p = ptrs.get(lba);
      if (!p) {
        copyBlock(out, offset, length, lba, bs, null);
        run = undefined;
        continue;
      }
      if (p.seg === PENDING_SEG) return false;
      const cached = this.dataCache.get(`${p.seg}:${p.off}`);
      if (cached) {
        copyBlock(out, offset, length, lba, bs, cached);
        run = undefined;
        continue;
      }
      const prev = run?.ptrs[run.ptrs.length - 1];
      const prevLba = run?.lbas[run.lbas.length - 1];
      if (
        run &&
        prev &&
        prev.seg === p.seg &&
        prev.off + prev.len === p.off &&
        prevLba === lba - 1
      ) {
        run.lbas.push(lba);
        run.ptrs.push(p);
      } else {
        run = { seg: p.seg, off: p.off, lbas: [lba], ptrs: [p] };
        runs.push(run);
      }
    }
    await Promise.all(
      runs.map(async (r) => {
        const blocks = await this.fetchBlocks(r.seg, r.off, r.ptrs);
        for (let k = 0; k < r.lbas.length; k++) {
          copyBlock(out, offset, length, r.lbas[k] as number, bs, blocks[k] as Buffer);
        }
      }),
    );
    return true;
  }

  /** GET a run of stored blocks, verify each checksum, cache them. */
  private async fetchBlocks(seg: number, off: number, ptrs: BlockPtr[]): Promise<Buffer[]> {
    const key = this.segments.keyFor(seg);
    const total = ptrs.reduce((s, p) => s + p.len, 0);
    const body = await this.segments.get(seg, { offset: off, length: total }, 'volume data');
    if (body.length < total)
      throw dataError(
        'CORRUPT_OBJECT',
        key,
        `Segment is truncated: blocks at ${off}+${total} not present`,
      );
    const out: Buffer[] = [];
    let at = 0;
    for (const p of ptrs) {
      const blk = body.subarray(at, at + p.len);
      if (p.codec !== 0) throw dataError('CORRUPT_OBJECT', key, `Unknown block codec ${p.codec}`);
      if (crc32c(blk) !== p.crc) {
        throw dataError(
          'CHECKSUM_MISMATCH',
          key,
          `Data block at offset ${off + at} failed its checksum`,
        );
      }
      const copy = ptrs.length === 1 ? blk : Buffer.from(blk);
      this.dataCache.set(`${seg}:${p.off}`, copy, copy.length);
      out.push(copy);
      at += p.len;
    }
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
  async extents(offset: number, length: number): Promise<Extent[]> {
    this.checkRange(offset, length);
    if (length === 0) return [];
    const bs = this.bs;
    const lo = Math.floor(offset / bs);
    const hi = Math.min(Math.ceil((offset + length) / bs), lo + MAX_EXTENT_BLOCKS);
    const mapped = await this.loader.run(() => this.tree.scanKeys(lo, hi), isMiss);
    const out: Extent[] = [];
    const end = Math.min(offset + length, hi * bs);
    let k = 0;
    for (let lba = lo; lba < hi; lba++) {
      while (k < mapped.length && (mapped[k] as number) < lba) k++;
      const d = this.dirty(lba);
      const hole = d === undefined ? mapped[k] !== lba : d === null;
      const a = Math.max(lba * bs, offset);
      const b = Math.min((lba + 1) * bs, end);
      const prev = out[out.length - 1];
      if (prev && prev.hole === hole) prev.length = b - prev.offset;
      else out.push({ offset: a, length: b - a, hole });
    }
    return out;
  }

  // ------------------------------------------------------------------ writes

  async write(offset: number, data: Buffer, options: WriteOptions = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, data.length);
    if (data.length === 0) return;
    await this.doWrite(offset, data, { op: 'write', offset, length: data.length, data });
    this.counters.bytesWritten += data.length;
    await this.afterWrite(options);
  }

  /**
   * Apply a write to the active generation; with a WAL, append `log` in the same synchronous
   * step (so the WAL order is the order of application) and wait until it is durable.
   */
  private async doWrite(offset: number, data: Buffer, log?: WalEntry): Promise<void> {
    await this.admit();
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + data.length - 1) / bs);
    await this.waitLocks(first, last);
    const headPartial = offset % bs !== 0 || (first === last && data.length < bs);
    const tailPartial = (offset + data.length) % bs !== 0;
    const needFirst = headPartial && !this.active.blocks.get(first);
    const needLast = tailPartial && last !== first && !this.active.blocks.get(last);
    if (!needFirst && !needLast) {
      this.applyWrite(offset, data, undefined, undefined);
      return this.logEntry(log);
    }
    let durable: Promise<void> | undefined;
    await this.locked(first, last, async () => {
      const [a, b] = await Promise.all([
        needFirst ? this.readBlock(first) : undefined,
        needLast ? this.readBlock(last) : undefined,
      ]);
      this.checkWritable();
      this.applyWrite(offset, data, a, b);
      durable = this.logEntry(log);
    });
    return durable;
  }

  /** Append to the WAL (when there is one and this is not a replay). */
  private logEntry(entry: WalEntry | undefined): Promise<void> | undefined {
    if (!entry || !this.wal || this.replaying) return undefined;
    return this.wal.append(entry);
  }

  /** Copy `data` into whole blocks of the active generation (synchronous). */
  private applyWrite(
    offset: number,
    data: Buffer,
    firstOld: Buffer | undefined,
    lastOld: Buffer | undefined,
  ): void {
    const bs = this.bs;
    const end = offset + data.length;
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    for (let lba = first; lba <= last; lba++) {
      const bStart = lba * bs;
      const from = Math.max(offset, bStart);
      const to = Math.min(end, bStart + bs);
      // A block already in the active generation is updated in place (reads copy out of it).
      const cur = this.active.blocks.get(lba);
      let blk: Buffer;
      if (to - from === bs) {
        blk = cur ?? this.active.alloc();
        data.copy(blk, 0, from - offset, to - offset);
      } else {
        if (cur) blk = cur;
        else {
          const old = lba === first ? firstOld : lastOld;
          blk = this.active.alloc();
          if (old) old.copy(blk);
          else blk.fill(0);
        }
        data.copy(blk, from - bStart, from - offset, to - offset);
      }
      this.active.set(lba, blk.equals(this.zero) ? null : blk);
    }
  }

  /** Zero a range: whole blocks become holes; partial edges are written with zeros. */
  async writeZeroes(offset: number, length: number, options: ZeroOptions = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length);
    if (length === 0) return;
    await this.zeroRange(offset, length, true, { op: 'zero', offset, length });
    await this.afterWrite(options);
  }

  /** Discard a range: whole blocks become holes (read as zeros); partial edges are left as they are. */
  async trim(offset: number, length: number, options: WriteOptions = {}): Promise<void> {
    this.checkWritable();
    this.checkRange(offset, length);
    if (length === 0) return;
    await this.zeroRange(offset, length, false, { op: 'trim', offset, length });
    await this.afterWrite(options);
  }

  private async zeroRange(
    offset: number,
    length: number,
    edges: boolean,
    log?: WalEntry,
  ): Promise<void> {
    const bs = this.bs;
    const end = offset + length;
    const lo = Math.ceil(offset / bs);
    const hi = Math.floor(end / bs);
    if (edges) {
      if (offset % bs !== 0) {
        const edgeEnd = Math.min(end, lo * bs);
        await this.doWrite(offset, Buffer.alloc(edgeEnd - offset));
      }
      if (end % bs !== 0 && hi * bs >= offset && hi >= lo) {
        const from = Math.max(hi * bs, offset);
        await this.doWrite(from, Buffer.alloc(end - from));
      }
    }
    if (hi > lo) {
      await this.waitLocks(lo, hi - 1);
      this.active.trim(lo, hi);
    }
    await this.logEntry(log);
  }

  async resize(size: number, options: { allowShrink?: boolean } = {}): Promise<CheckpointInfo> {
    this.checkWritable();
    checkSize(size);
    if (size < this.size) {
      if (!options.allowShrink) {
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `Shrinking from ${this.size} to ${size} bytes drops data`,
          {
            suggestion: 'Pass --allow-shrink to confirm.',
          },
        );
      }
      const bs = this.bs;
      const blockEnd = Math.ceil(size / bs) * bs;
      // Zero the tail of the new last block so a later grow reads zeros there.
      if (blockEnd > size)
        await this.doWrite(size, Buffer.alloc(Math.min(blockEnd, this.size) - size));
      const lo = blockEnd / bs;
      const hi = Math.ceil(this.size / bs);
      if (hi > lo) {
        await this.waitLocks(lo, hi - 1);
        this.active.trim(lo, hi);
      }
    }
    if (size !== this.size) {
      this.size = size;
      this.metaDirty = true;
    }
    return this.flush();
  }

  /** Back-pressure: wait while the write-back buffer is full. */
  private async admit(): Promise<void> {
    while (this.active.bytes >= this.maxDirty) {
      this.background();
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
      this.checkWritable();
      if (this.lastFlushError && this.active.bytes >= this.maxDirty) {
        const e = this.lastFlushError;
        throw e instanceof HyperError
          ? e
          : new HyperError('unavailable', 'STORE_UNAVAILABLE', String(e));
      }
    }
  }

  private lastFlushError: unknown;

  private async afterWrite(options: WriteOptions): Promise<void> {
    // With a WAL every acknowledged write is already durable: FUA needs nothing more.
    if (options.fua && !this.wal) {
      await this.flush();
      return;
    }
    if (this.active.bytes >= this.flushBytes) this.background();
  }

  /**
   * Write the dirty data out as a segment because the write-back buffer is full. Nobody asked
   * for durability, so the head CAS waits for the next flush/FUA/timer/close (one PUT per
   * segment while streaming, not two). Failures are logged and retried by the next flush.
   */
  private background(): void {
    if (this.flushBusy) return;
    this.enqueue(false).catch((e: unknown) => {
      this.log.warn('background flush failed', {
        error: e instanceof Error ? e.message : String(e),
      });
    });
  }

  private async waitLocks(first: number, last: number): Promise<void> {
    while (this.locks.size > 0) {
      const waits: Promise<void>[] = [];
      if (last - first < this.locks.size) {
        for (let lba = first; lba <= last; lba++) {
          const p = this.locks.get(lba);
          if (p) waits.push(p);
        }
      } else {
        for (const [lba, p] of this.locks) if (lba >= first && lba <= last) waits.push(p);
      }
      if (waits.length === 0) return;
      await Promise.all(waits.map((p) => p.catch(() => undefined)));
    }
  }

  /** Hold blocks [first, last] for a read-modify-write so later overlapping writes wait. */
  private async locked(first: number, last: number, fn: () => Promise<void>): Promise<void> {
    const p = fn();
    const done = p.then(
      () => undefined,
      () => undefined,
    );
    for (let lba = first; lba <= last; lba++) this.locks.set(lba, done);
    try {
      await p;
    } finally {
      for (let lba = first; lba <= last; lba++)
        if (this.locks.get(lba) === done) this.locks.delete(lba);
    }
  }

  // ------------------------------------------------------------------ durability

  /**
   * A durability barrier for everything acknowledged so far (NBD FLUSH): with a WAL it is
   * already durable (wait for batches in flight); without, commit a checkpoint.
   */
  async sync(): Promise<void> {
    if (this.wal) {
      if (this.fenced) throw this.fenced;
      await this.wal.sync();
      if (this.wal.fenced) throw (this.fenced = this.wal.fenced);
      return;
    }
    await this.flush();
  }

  /** Whether acknowledged writes are logged before their reply. */
  get hasWal(): boolean {
    return this.wal !== undefined;
  }

  /**
   * Replay what the WAL holds beyond the head's checkpoint, claim the next sequence number
   * (fencing any older writer), then start logging. Called once by `open` for writers.
   */
  private async startWal(walStore: ObjectStore): Promise<void> {
    const uuid = this.head.uuid;
    let applied = this.head.walSeq ?? 0;
    let replayed = 0;
    const replayFrom = async (): Promise<number> => {
      const seqs = (await listWal(walStore, uuid)).filter((q) => q > applied);
      this.replaying = true;
      try {
        for (const q of seqs) {
          const rec = await readWal(walStore, uuid, q);
          for (const e of rec.entries) {
            if (e.op === 'write') await this.doWrite(e.offset, e.data as Buffer);
            else if (e.op === 'zero') await this.zeroRange(e.offset, e.length, true);
            else if (e.op === 'trim') await this.zeroRange(e.offset, e.length, false);
            else if (e.op === 'resize') this.size = e.length;
            replayed++;
          }
          applied = q;
        }
      } finally {
        this.replaying = false;
      }
      return seqs.length > 0 ? (seqs[seqs.length - 1] as number) : applied;
    };
    let last = await replayFrom();
    for (let attempt = 0; ; attempt++) {
      const fence = Math.max(last, this.head.walSeq ?? 0) + 1;
      try {
        await walStore.put(
          walKeyFor(uuid, fence),
          encodeWal({ uuid, epoch: this.head.epoch, seq: fence, entries: [] }),
          {
            ifNoneMatch: true,
          },
        );
        this.wal = new WalWriter(walStore, uuid, this.head.epoch, fence);
        break;
      } catch (e) {
        // A writer we are taking over from logged one more batch: replay it too.
        if (!isHyperError(e, 'OBJECT_EXISTS') || attempt > 100) throw e;
        last = await replayFrom();
      }
    }
    this.walTrimmed = this.head.walSeq ?? 0;
    this.committedWalSeq = this.head.walSeq ?? 0;
    if (replayed > 0) {
      this.log.info('replayed WAL', { entries: replayed });
      await this.flush();
    } else this.trimWal();
  }

  /**
   * Delete WAL objects the last commit covers (in the background) — all but the newest one,
   * which must stay: its sequence number is what fences an older writer.
   */
  private trimWal(): void {
    const wal = this.wal;
    const upTo = Math.min(this.committedWalSeq, wal ? wal.lastDurable - 1 : 0);
    if (!wal || upTo <= this.walTrimmed) return;
    const from = this.walTrimmed + 1;
    this.walTrimmed = upTo;
    const keys: string[] = [];
    for (let q = from; q <= upTo && keys.length < 100_000; q++) keys.push(walKeyFor(wal.uuid, q));
    this.walTrim = (this.walTrim ?? Promise.resolve())
      .then(() => wal.store.delete(keys))
      .catch((e: unknown) =>
        this.log.warn('WAL cleanup failed', { error: e instanceof Error ? e.message : String(e) }),
      );
  }

  private walTrim: Promise<void> | undefined;

  // ------------------------------------------------------------------ history

  /** The head record of the last commit (for tools; do not modify). */
  get headRecord(): HeadRecord {
    return this.head;
  }

  /**
   * Make a new checkpoint whose content is checkpoint `id`'s (the index root and size are
   * taken from it; nothing is copied). History is kept: the restore can itself be undone.
   */
  async restore(id: number): Promise<CheckpointInfo> {
    this.checkWritable();
    await this.flush();
    if (!isRetainedCheckpoint(this.head, id)) {
      throw new HyperError(
        'not-found',
        'CHECKPOINT_NOT_FOUND',
        `Checkpoint ${id} does not exist or was dropped by compaction`,
      );
    }
    const target =
      id === this.head.checkpoint ? this.head : await readCheckpointHead(this.store, id);
    if (!this.active.empty || this.flushBusy) {
      throw new HyperError(
        'conflict',
        'PRECONDITION_FAILED',
        'The volume was written during the restore; retry',
      );
    }
    this.tree = new BTree(this.decodeRoot(target), this.capacity, this.loader);
    this.size = target.size;
    this.nextMeta = { ...this.nextMeta, restoredFrom: id };
    this.metaDirty = true;
    return this.flush();
  }

  /**
   * Record compaction history at a new checkpoint: checkpoints below `floor` are dropped
   * except `kept`. `floor: 'self'` puts the floor at the new checkpoint itself.
   */
  async setHistory(floor: number | 'self', kept: number[]): Promise<CheckpointInfo> {
    this.checkWritable();
    this.historyFloorSelf = floor === 'self';
    this.nextMeta = {
      ...this.nextMeta,
      history: { floor: floor === 'self' ? 0 : floor, floorMs: Date.now(), kept },
    };
    this.metaDirty = true;
    return this.flush();
  }

  private historyFloorSelf = false;
  private wal: WalWriter | undefined;
  private replaying = false;
  private walTrimmed = 0;

  /**
   * Flattening's last step: a checkpoint that no longer names the parent. Older checkpoints
   * of the clone may still read parent segments, so they are dropped (history floor here).
   */
  async detachFromParent(): Promise<CheckpointInfo> {
    this.checkWritable();
    this.historyFloorSelf = true;
    this.nextMeta = {
      ...this.nextMeta,
      clone: undefined,
      history: { floor: 0, floorMs: Date.now(), kept: [] },
    };
    this.metaDirty = true;
    return this.flush();
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
    if (this.readOnly) return Promise.resolve(this.checkpointInfo());
    if (this.nextCommit) return this.nextCommit;
    const p: Promise<CheckpointInfo> = this.enqueue(true, () => {
      if (this.nextCommit === p) this.nextCommit = undefined;
    });
    this.nextCommit = p;
    return p;
  }

  private get flushBusy(): boolean {
    return this.flushesPending > 0;
  }

  private checkpointInfo(): CheckpointInfo {
    return { checkpoint: this.head.checkpoint, time: new Date(this.head.checkpointMs) };
  }

  /** Run a flush after every flush enqueued before it (never two at once). */
  private enqueue(commitHead: boolean, onStart?: () => void): Promise<CheckpointInfo> {
    this.flushesPending++;
    const p = this.flushTail.then(async () => {
      onStart?.();
      try {
        return await this.doFlush(commitHead);
      } finally {
        // Before the caller resumes: it may start the next operation right away.
        this.flushesPending--;
        const waiters = this.roomWaiters;
        this.roomWaiters = [];
        for (const w of waiters) w();
      }
    });
    this.flushTail = p.catch(() => undefined);
    return p;
  }

  private async doFlush(commitHead: boolean): Promise<CheckpointInfo> {
    this.checkWritable();
    const gen = this.active;
    if (gen.empty && !this.metaDirty) {
      // Segments written by background flushes still wait for their head: one CAS commits them.
      if (commitHead && this.headBehind) {
        await this.casHead(encodeHead(this.head));
        this.headCommitted();
      }
      return this.checkpointInfo();
    }
    this.active = new Generation(this.bs);
    this.frozen = gen;
    // Durable WAL batches hold only writes applied to `gen`: this checkpoint covers them.
    // (A batch still in flight is replayed after a crash; replaying a covered write is harmless.)
    if (this.wal) this.nextMeta = { ...this.nextMeta, walSeq: this.wal.lastDurable };
    const metaWas = this.metaDirty;
    this.metaDirty = false;
    try {
      const info = await this.commit(gen, commitHead);
      this.lastFlushError = undefined;
      return info;
    } catch (e) {
      // Nothing was committed: put the changes back under the newer ones and report.
      gen.absorb(this.active);
      this.active = gen;
      this.metaDirty ||= metaWas;
      this.lastFlushError = e;
      throw e;
    } finally {
      this.frozen = undefined;
    }
  }

  /** The head object now names this.head: WAL records it covers can go. */
  private headCommitted(): void {
    this.headBehind = false;
    this.committedWalSeq = this.head.walSeq ?? this.committedWalSeq;
    this.trimWal();
  }

  /** True after a background flush wrote a segment whose head is not committed yet. */
  private headBehind = false;
  private committedWalSeq = 0;

  /** Apply `gen` to the index and write it as one segment, then (if asked) CAS the head. */
  private async commit(gen: Generation, commitHead: boolean): Promise<CheckpointInfo> {
    const tree = this.tree;
    for (const [lo, hi] of gen.ranges)
      await this.loader.run(() => tree.deleteRange(lo, hi), isMiss);
    const lbas = [...gen.blocks.keys()].sort((a, b) => a - b);
    const dataLbas: number[] = [];
    const blocks: Buffer[] = [];
    for (const lba of lbas) {
      const v = gen.blocks.get(lba) as Buffer | null;
      let r = v ? tree.insert(lba, PENDING) : tree.deleteRange(lba, lba + 1);
      if (r instanceof Miss) {
        r = await this.loader.run(
          () => (v ? tree.insert(lba, PENDING) : tree.deleteRange(lba, lba + 1)),
          isMiss,
        );
      }
      if (v) {
        dataLbas.push(lba);
        blocks.push(v);
      }
    }
    const crcs = blocks.map((b) => crc32c(b));
    const nodes = tree.dirtyNodes();

    for (let attempt = 0; ; attempt++) {
      this.checkWritable();
      if (this.lease && !this.lease.validFor(2000)) await this.lease.renew();
      const id = this.head.lastSegment + 1;
      const now = Date.now();
      const built = this.buildCheckpoint(id, now, nodes, dataLbas, blocks, crcs);
      // The frozen blocks now also live in the segment buffer (immutable from here on): serve
      // reads from there and let the per-block buffers go, so a flush holds its data once.
      for (let k = 0; k < blocks.length; k++) {
        const view = built.segment.subarray(
          built.dataOffset + k * this.bs,
          built.dataOffset + (k + 1) * this.bs,
        );
        blocks[k] = view;
        gen.blocks.set(dataLbas[k] as number, view);
      }
      try {
        await this.store.put(segmentKey(id), built.segment, { ifNoneMatch: true });
      } catch (e) {
        if (isHyperError(e, 'OBJECT_EXISTS') && attempt < 8) {
          // A flush that never committed (ours after a lost reply, or a fenced writer's) owns
          // this id: check we still own the volume, skip the id, try the next one.
          await this.checkEpoch();
          this.head = { ...this.head, lastSegment: id, skipped: [...this.head.skipped, id] };
          continue;
        }
        throw e;
      }
      this.counters.segmentsWritten++;
      if (commitHead) await this.casHead(built.headBytes);
      this.head = built.head;
      if (commitHead) this.headCommitted();
      else this.headBehind = true;
      this.nextMeta = {};
      this.historyFloorSelf = false;
      this.counters.flushes++;
      // Committed: the dirty nodes become clean cached nodes at their new homes, with the
      // entries exactly as written (taken back from the segment).
      for (const node of nodes) {
        const at = node.newOff + NODE_HEADER;
        built.segment.copy(node.e, 0, at, at + node.n * ENTRY_SIZE);
        node.dirty = false;
        node.kids = undefined;
        this.loader.add(id, node.newOff, node);
      }
      const root = tree.root;
      built.rootEntries.copy(root.e, 0);
      root.dirty = false;
      root.kids = undefined;
      return this.checkpointInfo();
    }
  }

  private async checkEpoch(): Promise<void> {
    const { head } = await readHead(this.store);
    if (head.epoch !== this.head.epoch) this.fence(head.epoch);
  }

  private fence(epoch: number): never {
    this.fenced = new HyperError(
      'conflict',
      'FENCED',
      `Another writer took over the volume (epoch ${epoch}, ours ${this.head.epoch}); this writer commits nothing more`,
      { suggestion: 'Re-open the volume once the other writer is done.' },
    );
    this.lease?.stop();
    throw this.fenced;
  }

  private async casHead(bytes: Buffer): Promise<void> {
    try {
      this.headEtag = (await this.store.put(HEAD_KEY, bytes, { ifMatch: this.headEtag })).etag;
    } catch (e) {
      if (!isHyperError(e, 'PRECONDITION_FAILED')) throw e;
      // A retried CAS whose first attempt landed looks like a conflict: compare the bytes.
      const cur = await readHead(this.store);
      if (cur.bytes.equals(bytes)) {
        this.headEtag = cur.etag;
        return;
      }
      if (cur.head.epoch !== this.head.epoch) this.fence(cur.head.epoch);
      // Same epoch: only this writer writes under it, so the head we see is one of our own
      // earlier commits whose reply was lost. Ours supersedes it.
      this.headEtag = (await this.store.put(HEAD_KEY, bytes, { ifMatch: cur.etag })).etag;
    }
  }

  /** Lay out and encode segment `id`: header, dirty nodes (leaves first), data blocks. */
  private buildCheckpoint(
    id: number,
    now: number,
    nodes: Node[],
    dataLbas: number[],
    blocks: Buffer[],
    crcs: number[],
  ): {
    segment: Buffer;
    head: HeadRecord;
    headBytes: Buffer;
    dataOffset: number;
    rootEntries: Buffer;
  } {
    const bs = this.bs;
    const root = this.tree.root;
    const { restoredFrom: _previousRestore, ...base } = this.head;
    const meta = { ...this.nextMeta };
    if (meta.history && this.historyFloorSelf) meta.history = { ...meta.history, floor: id };
    const nextHead = (rootBytes: Buffer): HeadRecord => ({
      ...base,
      ...meta,
      size: this.size,
      checkpoint: id,
      checkpointMs: now,
      prevCheckpoint: this.head.checkpoint,
      lastSegment: id,
      rootLevel: root.level,
      root: rootBytes,
    });
    // The header's length does not depend on node offsets: size it with a provisional root.
    const provisional = encodeHead(nextHead(Buffer.alloc(encodedNodeSize(root.n))));
    const headerLen = segmentHeaderSize(provisional.length, dataLbas.length, nodes.length);
    const nodesOffset = align(headerLen, SECTOR);
    nodes.forEach((nd, k) => {
      nd.newOff = nodesOffset + k * this.nodeSize;
    });
    const dataOffset = nodesOffset + nodes.length * this.nodeSize;
    const total = dataOffset + blocks.length * bs;
    const pending = new Map<number, number>();
    dataLbas.forEach((lba, k) => pending.set(lba, k));

    /** Fill in the locations this flush assigns (pending blocks, dirty children) in `e`. */
    const patch = (nd: Node, e: Buffer): void => {
      for (let i = 0; i < nd.n; i++) {
        const o = i * ENTRY_SIZE;
        if (nd.level === 0) {
          if (e.readUInt32LE(o + 8) !== PENDING_SEG || e.readUInt32LE(o + 12) !== 0) continue;
          const lba = nd.key(i);
          const k = pending.get(lba);
          if (k === undefined) {
            throw new HyperError(
              'internal',
              'INTERNAL',
              `index entry for block ${lba} has no data`,
            );
          }
          e.writeUInt32LE(id % 2 ** 32, o + 8);
          e.writeUInt32LE(Math.floor(id / 2 ** 32), o + 12);
          e.writeUInt32LE((dataOffset + k * bs) / SECTOR, o + 16);
          e.writeUInt32LE(bs, o + 20);
          e.writeUInt32LE((crcs[k] as number) >>> 0, o + 24);
          e.writeUInt32LE(0, o + 28);
        } else {
          const kid = nd.kids?.[i];
          if (!kid) continue;
          e.writeUInt32LE(id % 2 ** 32, o + 8);
          e.writeUInt32LE(Math.floor(id / 2 ** 32), o + 12);
          e.writeUInt32LE(kid.newOff / SECTOR, o + 16);
        }
      }
    };

    // Nodes are encoded straight into the segment (entries copied, then patched in place);
    // the in-memory nodes change only once the commit has landed (see commit()).
    const segment = Buffer.allocUnsafe(total);
    for (const nd of nodes) {
      const at = nd.newOff + NODE_HEADER;
      segment.fill(0, nd.newOff, nd.newOff + this.nodeSize);
      nd.e.copy(segment, at, 0, nd.n * ENTRY_SIZE);
      const e = segment.subarray(at, at + nd.n * ENTRY_SIZE);
      patch(nd, e);
      encodeNode(segment, nd.newOff, nd.level, nd.n, id, e);
    }
    const rootEntries = Buffer.from(root.e.subarray(0, root.n * ENTRY_SIZE));
    patch(root, rootEntries);
    const rootBytes = Buffer.alloc(encodedNodeSize(root.n));
    encodeNode(rootBytes, 0, root.level, root.n, id, rootEntries);
    const head = nextHead(rootBytes);
    const headBytes = encodeHead(head);
    const header = encodeSegmentHeader({
      segmentId: id,
      createdMs: now,
      nodesOffset,
      nodeCount: nodes.length,
      nodeSize: this.nodeSize,
      dataOffset,
      blockCount: blocks.length,
      dataBlockSize: bs,
      totalLength: total,
      headBytes,
      lbas: dataLbas,
      nodes: nodes.map((nd) => ({ firstLba: nd.n > 0 ? nd.key(0) : 0, level: nd.level })),
    });
    if (header.length !== headerLen)
      throw new HyperError('internal', 'INTERNAL', 'segment header size changed while encoding');
    header.copy(segment, 0);
    segment.fill(0, header.length, nodesOffset);
    for (let k = 0; k < blocks.length; k++)
      (blocks[k] as Buffer).copy(segment, dataOffset + k * bs);
    return { segment, head, headBytes, dataOffset, rootEntries };
  }
}

// ------------------------------------------------------------------ helpers

const align = (v: number, a: number): number => Math.ceil(v / a) * a;

/** Bytes of a segment header envelope with these counts (see codec/segment.ts). */
function segmentHeaderSize(headLen: number, blocks: number, nodes: number): number {
  return 16 + 56 + 4 + headLen + blocks * 8 + nodes * 16;
}

/** A segment with no nodes and no data (the first checkpoint of a new volume or clone). */
export function buildEmptySegment(id: number, now: number, headBytes: Buffer): Buffer {
  const headerLen = segmentHeaderSize(headBytes.length, 0, 0);
  const nodesOffset = align(headerLen, SECTOR);
  return Buffer.concat([
    encodeSegmentHeader({
      segmentId: id,
      createdMs: now,
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
  if (blk) blk.copy(out, from - offset, from - bStart, to - bStart);
  else out.fill(0, from - offset, to - offset);
}

export function infoOf(url: string, head: HeadRecord, readOnly: boolean): VolumeInfo {
  let mapped = 0;
  try {
    const d = decodeNode(head.root, 0, nodeCapacity(2 ** head.metaBlockShift));
    mapped = new Node(d.level, d.count, d.entries, false).total();
  } catch {
    mapped = 0;
  }
  return {
    url,
    uuid: head.uuid,
    formatVersion: FORMAT_VERSION,
    size: head.size,
    dataBlockSize: 2 ** head.dataBlockShift,
    metaBlockSize: 2 ** head.metaBlockShift,
    segmentSize: head.segmentSize,
    createdAt: new Date(head.createdMs),
    checkpoint: head.checkpoint,
    checkpointTime: new Date(head.checkpointMs),
    mappedBlocks: mapped,
    readOnly,
    ...(head.walUrl === undefined ? {} : { walUrl: head.walUrl }),
    ...(head.clone?.chain[0]
      ? { parent: { url: head.clone.chain[0].url, checkpoint: head.clone.checkpoint } }
      : {}),
  };
}

/**
 * The checkpoint a reference names. Committed checkpoints are segment ids ≤ head.checkpoint,
 * not skipped, not dropped by compaction (see isRetainedCheckpoint).
 */
export async function resolveCheckpoint(
  store: ObjectStore,
  head: HeadRecord,
  ref: NonNullable<OpenOptions['at']>,
): Promise<number> {
  if ('snapshot' in ref) {
    const snap = await readSnapshot(store, ref.snapshot);
    return resolveCheckpoint(store, head, { checkpoint: snap.checkpoint });
  }
  if ('checkpoint' in ref) {
    const id = ref.checkpoint;
    if (!isRetainedCheckpoint(head, id)) {
      throw new HyperError(
        'not-found',
        'CHECKPOINT_NOT_FOUND',
        `Checkpoint ${id} does not exist (latest is ${head.checkpoint})`,
        {
          suggestion: 'List checkpoints with `hyper snapshot list`.',
        },
      );
    }
    if (id !== head.checkpoint && !(await store.head(segmentKey(id)))) {
      throw new HyperError(
        'not-found',
        'CHECKPOINT_NOT_FOUND',
        `Checkpoint ${id} was removed by compaction`,
      );
    }
    return id;
  }
  const want = ref.time.getTime();
  const ids = await retainedCheckpoints(store, head);
  // Binary search on the checkpoint times embedded in the segments (ascending with id).
  let lo = 0;
  let hi = ids.length - 1;
  let best: number | undefined;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const id = ids[mid] as number;
    const t =
      id === head.checkpoint
        ? head.checkpointMs
        : (await readCheckpointHead(store, id)).checkpointMs;
    if (t <= want) {
      best = id;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  if (best === undefined) {
    throw new HyperError(
      'not-found',
      'CHECKPOINT_NOT_FOUND',
      `No checkpoint at or before ${ref.time.toISOString()}`,
    );
  }
  return best;
}

/** Retained checkpoint ids, ascending (one LIST of seg/). */
export async function retainedCheckpoints(store: ObjectStore, head: HeadRecord): Promise<number[]> {
  const ids: number[] = [];
  for await (const page of store.list(SEGMENT_PREFIX)) {
    for (const o of page.objects) {
      const id = parseSegmentKey(o.key);
      if (id !== undefined && isRetainedCheckpoint(head, id)) ids.push(id);
    }
  }
  return ids;
}

/** A named snapshot record. */
export async function readSnapshot(store: ObjectStore, name: string): Promise<SnapshotRecord> {
  const key = snapshotKey(name);
  let body: Buffer;
  try {
    body = (await store.get(key)).body;
  } catch (e) {
    if (isHyperError(e, 'OBJECT_NOT_FOUND')) {
      throw new HyperError('not-found', 'SNAPSHOT_NOT_FOUND', `No snapshot named "${name}"`, {
        suggestion: 'List snapshots with `hyper snapshot list --named`.',
      });
    }
    throw e;
  }
  try {
    return decodeSnapshot(body);
  } catch (e) {
    if (e instanceof DecodeError)
      throw dataError('CORRUPT_OBJECT', key, `Snapshot record is damaged: ${e.message}`);
    throw e;
  }
}
