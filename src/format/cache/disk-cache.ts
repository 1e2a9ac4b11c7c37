/**
 * A local disk cache of immutable store data: data blocks and index nodes of segments,
 * bounded by a byte size, reused across restarts.
 *
 * Layout of the cache directory (nothing else is touched in it):
 *
 *   manifest.json  format version, the volume uuid, the slot size and count, and the store
 *                  URLs entries refer to by number (the volume's own store, clone parents)
 *   slots.dat      `slots` fixed slots of `slotSize` bytes: the cached bytes
 *   slots.idx      `slots` 32-byte entry headers, slot i at i × 32:
 *                    0  magic "HYCE"      4  store u16     6  offset within the sector u16
 *                    8  segment u64       16 offset u32 (512-byte units)
 *                    20 length u32        24 crc32c u32 of the cached bytes
 *                    28 crc32c u32 of header bytes [0, 28)
 *   lock           the pid of the process using the cache
 *
 * Two files whatever the size (no inode per entry), written with plain positional writes
 * and never fsynced: the cache holds nothing that is not in the store. Every entry carries
 * the CRC32C of its bytes, and every read checks them, so a torn write (a kill -9 or power
 * loss between the two writes of an entry, a slot reused while a read was in flight) makes
 * a miss, never a wrong answer: the entry is dropped and the caller fetches from the store.
 * The caller checks again what it knows (the block CRC of the index entry, or the index
 * node's own checksum and segment id) and drops the entry when that fails.
 *
 * Keys are (store, segment id, offset). Segments are written once, create-only, and a
 * committed segment's id is never used again: a head's `lastSegment` only grows, and ids at
 * or below it that did not commit are listed in `skipped`. The one way an id can name other
 * bytes later is a flush that never committed (an orphan past the committed head), deleted
 * by compaction and written again under its id. The engine therefore only puts blocks of
 * committed segments here (volume.ts `cacheable`): what it caches can never change under
 * its key, restore, compaction and takeover included. Keying on the writer's epoch as well
 * would need the segment header for every block read; the committed-only rule and the CRC
 * check of every hit make it unnecessary.
 *
 * Eviction is S3-FIFO (s3fifo.ts): one scan does not flush the hot set. Writes go through a
 * bounded queue in the background: a read never waits for the cache to be written, and when
 * the disk is slower than the store, entries are dropped instead of queued without end.
 *
 * Memory: about 50 bytes per slot (130 MiB for 10 GiB of 4 KiB blocks) for the key table.
 */
import { open, readFile, rename, rm, statfs, writeFile, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { HyperError, toHyperError } from '../../errors.js';
import { crc32c, readU64, writeU64 } from '../codec/binary.js';
import { crc32cOfRun } from '../codec/crc-combine.js';
import { SlotPolicy } from './s3fifo.js';
import { Preader } from '../store/pread.js';
import { makeDirs } from '../../make-dirs.js';
import { RecurringWarning } from '../recurring.js';

export const CACHE_FORMAT = 1;
/** Bytes of one slot's entry header in slots.idx. */
export const ENTRY_HEADER_BYTES = 32;
const HEADER = ENTRY_HEADER_BYTES;
const MAGIC = 0x45435948; // "HYCE" little-endian
/** The cache directory's files (see above). */
export const CACHE_FILES = { manifest: 'manifest.json', data: 'slots.dat', index: 'slots.idx' };
const MANIFEST = CACHE_FILES.manifest;
const DATA = CACHE_FILES.data;
const INDEX = CACHE_FILES.index;
const LOCK = 'lock';
/** Room kept for the manifest and lock file in the size budget. */
const RESERVED = 64 * 1024;
/**
 * At most one warning about failing cache writes per this long. (No "works again" message:
 * on a nearly full disk, writes to slots written before succeed between the failures.)
 */
const WRITE_WARN_INTERVAL_MS = 10 * 60_000;
/** Bytes of entries waiting to be written before new ones are dropped. */
const MAX_QUEUED_BYTES = 64 * 1024 * 1024;
const MIN_SLOTS = 16;

export type CacheMode = 'reuse' | 'recreate';

export interface DiskCacheOptions {
  dir: string;
  /** Bytes the cache's files may take on disk, in total. */
  sizeBytes: number;
  /** `reuse` (default) keeps a cache of the same volume; `recreate` starts empty. */
  mode?: CacheMode;
  /** The volume uuid: a cache of another volume is never used (it is recreated). */
  identity: string;
  /** Bytes per slot: the largest entry (the data block or index node size). */
  slotSize: number;
  /**
   * Told when the file system cannot hold the whole cache, and when writing entries fails (a
   * full or failing disk: reads go on, from the store, and the warning repeats at most every
   * ten minutes).
   */
  log?: ConstructorParameters<typeof RecurringWarning>[0];
}

export interface DiskCacheStats {
  hits: number;
  misses: number;
  /** Entries dropped because their bytes failed a check. */
  dropped: number;
  /** Entries written. */
  writes: number;
  /** Entries not cached because the write queue was full. */
  skipped: number;
  /** Entries not cached because writing them failed (a full or failing disk). */
  writeFailures: number;
  entries: number;
  slots: number;
  /** Entries found valid when the cache was opened. */
  reused: number;
}

interface Manifest {
  format: number;
  volume: string;
  slotSize: number;
  slots: number;
  stores: string[];
}

interface Job {
  slot: number;
  gen: number;
  header: Buffer;
  body: Buffer;
  /** Called once the cache is done with `body` (written, dropped or left out). */
  done?: () => void;
}

export class DiskCache {
  private readonly policy: SlotPolicy;
  private readonly gen: Uint32Array;
  private readonly crc: Uint32Array;
  private readonly len: Uint32Array;
  /** 1 while the slot's entry is queued or being written (not readable yet). */
  private readonly pending: Uint8Array;
  private readonly queue: Job[] = [];
  private queuedBytes = 0;
  private writing: Promise<void> | undefined;
  private closed = false;
  /** Slot reads in flight, and who waits for them to end (close). */
  private reads = 0;
  private readonly preader = new Preader();
  private readsDone: (() => void) | undefined;
  private readonly counters = {
    hits: 0,
    misses: 0,
    dropped: 0,
    writes: 0,
    skipped: 0,
    writeFailures: 0,
    reused: 0,
  };
  private readonly writeFailed: RecurringWarning | undefined;

  private constructor(
    readonly dir: string,
    private readonly manifest: Manifest,
    private readonly data: FileHandle,
    private readonly index: FileHandle,
    log?: DiskCacheOptions['log'],
  ) {
    this.writeFailed = log && new RecurringWarning(log, WRITE_WARN_INTERVAL_MS);
    const n = manifest.slots;
    this.policy = new SlotPolicy(n);
    this.gen = new Uint32Array(n);
    this.crc = new Uint32Array(n);
    this.len = new Uint32Array(n);
    this.pending = new Uint8Array(n);
  }

  /** Slots a cache of `sizeBytes` holds at `slotSize` bytes each. */
  static slotsFor(sizeBytes: number, slotSize: number): number {
    return Math.floor((sizeBytes - RESERVED) / (slotSize + HEADER));
  }

  /**
   * Open (or create) the cache in `dir`. With `reuse`, a cache of the same volume and slot
   * size keeps its valid entries; anything else starts empty. Fails if another live process
   * uses the directory.
   */
  static async open(o: DiskCacheOptions): Promise<DiskCache> {
    const slots = DiskCache.slotsFor(o.sizeBytes, o.slotSize);
    if (slots < MIN_SLOTS) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `A disk cache of ${o.sizeBytes} bytes is too small for ${o.slotSize}-byte blocks`,
        {
          suggestion: `Give --cache-size at least ${MIN_SLOTS * (o.slotSize + HEADER) + RESERVED} bytes.`,
        },
      );
    }
    let locked = false;
    try {
      await makeDirs(o.dir);
      await takeLock(o.dir);
      locked = true;
      const old = o.mode === 'recreate' ? undefined : await readManifest(o.dir);
      const keep =
        old !== undefined &&
        old.format === CACHE_FORMAT &&
        old.volume === o.identity &&
        old.slotSize === o.slotSize;
      if (!keep) {
        await rm(join(o.dir, DATA), { force: true });
        await rm(join(o.dir, INDEX), { force: true });
      }
      const manifest: Manifest = {
        format: CACHE_FORMAT,
        volume: o.identity,
        slotSize: o.slotSize,
        slots,
        stores: keep ? old.stores : [],
      };
      // (Rewritten only when it changes: a full disk does not stop a cache from being reused.)
      if (!keep || old.slots !== slots) await writeManifest(o.dir, manifest);
      const data = await openRw(join(o.dir, DATA));
      const index = await openRw(join(o.dir, INDEX));
      // A smaller cache than last time: drop the slots past the end.
      await data.truncate(Math.min((await data.stat()).size, slots * o.slotSize));
      await index.truncate(Math.min((await index.stat()).size, slots * HEADER));
      await warnIfNoRoom(o, [data, index]);
      const cache = new DiskCache(o.dir, manifest, data, index, o.log);
      if (keep) await cache.load();
      return cache;
    } catch (e) {
      if (locked) await rm(join(o.dir, LOCK), { force: true }).catch(() => undefined);
      if (e instanceof HyperError) throw e;
      throw toHyperError(e);
    }
  }

  get slotSize(): number {
    return this.manifest.slotSize;
  }

  /** The number entries name `url` by (the store list is kept in the manifest). */
  async storeId(url: string): Promise<number> {
    const i = this.manifest.stores.indexOf(url);
    if (i >= 0) return i;
    if (this.manifest.stores.length >= 0xffff)
      throw new HyperError('internal', 'INTERNAL', 'too many stores in one disk cache');
    this.manifest.stores.push(url);
    await writeManifest(this.dir, this.manifest);
    return this.manifest.stores.length - 1;
  }

  stats(): DiskCacheStats {
    return { ...this.counters, entries: this.policy.used, slots: this.policy.slots };
  }

  /** Whether the cache may have the entry (no I/O, no counting). */
  has(store: number, seg: number, off: number): boolean {
    const s = this.policy.find(store, seg, off);
    return s >= 0 && this.pending[s] === 0;
  }

  /**
   * The cached bytes of (store, seg, off), `length` bytes long, or undefined. With `crc`,
   * the bytes must also have that CRC32C (the index entry's); an entry failing any check
   * is dropped.
   */
  async get(
    store: number,
    seg: number,
    off: number,
    length: number,
    crc?: number,
  ): Promise<Buffer | undefined> {
    const s = this.policy.find(store, seg, off);
    if (s < 0 || this.pending[s] !== 0 || this.closed) {
      this.counters.misses++;
      return undefined;
    }
    if (this.len[s] !== length) {
      this.drop(s);
      this.counters.misses++;
      return undefined;
    }
    this.policy.touch(s);
    const g = this.gen[s] as number;
    const buf = Buffer.allocUnsafe(length);
    const n = await this.readSlots(buf, s);
    // Reused while we read: not ours any more (and not a damaged entry).
    if (this.gen[s] !== g) {
      this.counters.misses++;
      return undefined;
    }
    const got = n === length ? crc32c(buf) : -1;
    if (got !== this.crc[s] || (crc !== undefined && got !== crc)) {
      this.drop(s);
      this.counters.misses++;
      return undefined;
    }
    this.counters.hits++;
    return buf;
  }

  /**
   * Blocks `off + k * length` (k < crcs.length) of one segment, each `length` bytes, into
   * `into` back to back, if the cache has every one of them with the CRC given: entries in
   * consecutive slots are read with one pread (a sequential fill leaves them so). Returns
   * false, having served nothing, when one is missing, changes meanwhile or fails its check
   * (that one is dropped); all of them then count as misses.
   */
  async readRun(
    store: number,
    seg: number,
    off: number,
    length: number,
    crcs: Uint32Array,
    into: Buffer,
  ): Promise<boolean> {
    const n = crcs.length;
    if (this.closed || into.length < n * length) return false;
    // Served from the store instead: every block of the run counts as a miss.
    const miss = (): false => {
      this.counters.misses += n;
      return false;
    };
    const slots = new Int32Array(n);
    const gens = new Uint32Array(n);
    for (let k = 0; k < n; k++) {
      const sl = this.policy.find(store, seg, off + k * length);
      if (sl < 0 || this.pending[sl] !== 0 || this.len[sl] !== length) return miss();
      slots[k] = sl;
      gens[k] = this.gen[sl] as number;
    }
    const size = this.manifest.slotSize;
    const reads: Promise<boolean>[] = [];
    for (let k = 0; k < n;) {
      let m = 1;
      while (k + m < n && slots[k + m] === (slots[k] as number) + m) m++;
      const first = k;
      const dst =
        size === length
          ? into.subarray(k * length, (k + m) * length)
          : Buffer.allocUnsafe(m * size);
      reads.push(
        this.readSlots(dst, slots[k] as number).then((got) => {
          if (got !== dst.length) return false;
          if (size !== length)
            for (let j = 0; j < m; j++)
              dst.copy(into, (first + j) * length, j * size, j * size + length);
          return true;
        }),
      );
      k += m;
    }
    const ok = (await Promise.all(reads)).every(Boolean);
    if (!ok) return miss();
    for (let k = 0; k < n; k++) if (this.gen[slots[k] as number] !== gens[k]) return miss();
    // One CRC over the run when every entry's own CRC is the one asked for; block by block
    // (to drop the entries that fail) otherwise.
    let same = n > 1;
    for (let k = 0; same && k < n; k++) same = this.crc[slots[k] as number] === crcs[k];
    const whole =
      same &&
      crc32c(into.subarray(0, n * length)) === crc32cOfRun(0, n, length, (k) => crcs[k] as number);
    for (let k = 0; k < n && !whole; k++) {
      const sl = slots[k] as number;
      const got = crc32c(into.subarray(k * length, (k + 1) * length));
      if (got !== this.crc[sl] || got !== crcs[k]) {
        this.drop(sl);
        return miss();
      }
    }
    for (let k = 0; k < n; k++) this.policy.touch(slots[k] as number);
    this.counters.hits += n;
    return true;
  }

  /**
   * Read `buf.length` bytes from slot `s` on (bytes read, -1 on error) on the file's
   * descriptor, in the event loop while the page cache serves the file (see Preader): a read
   * served from the cache pays this per entry. Reads are counted so that close() waits for
   * them before the descriptor can be closed (and reused for another file).
   */
  private readSlots(buf: Buffer, s: number): Promise<number> {
    this.reads++;
    const done = (n: number): number => {
      if (--this.reads === 0) this.readsDone?.();
      return n;
    };
    return this.preader
      .read(this.data.fd, buf, 0, buf.length, s * this.manifest.slotSize)
      .then(done, () => done(-1));
  }

  /** Drop an entry whose bytes the caller found bad. */
  invalidate(store: number, seg: number, off: number): void {
    const s = this.policy.find(store, seg, off);
    if (s >= 0) this.drop(s);
  }

  /**
   * Cache `bytes` as (store, seg, off) in the background. The buffer must not change
   * afterwards. Entries larger than a slot, and entries arriving while the write queue is
   * full, are not cached. `knownCrc`: the CRC32C of `bytes`, when the caller has just
   * checked them against it (else it is computed).
   */
  put(store: number, seg: number, off: number, bytes: Buffer, knownCrc?: number): void {
    this.enqueue(store, seg, off, bytes, knownCrc);
  }

  /**
   * put() of the blocks of a run: block k of `body` is (store, seg, off + k * blockSize),
   * with CRC32C crcs[k] (checked by the caller). Settles once the cache is done with `body`
   * (every block written, dropped or left out), so that the caller may reuse its memory.
   */
  putRun(
    store: number,
    seg: number,
    off: number,
    blockSize: number,
    body: Buffer,
    crcs: Uint32Array,
  ): Promise<void> {
    let left = 1;
    let settle!: () => void;
    const done = new Promise<void>((resolve) => (settle = resolve));
    const finish = (): void => {
      if (--left === 0) settle();
    };
    for (let k = 0; k < crcs.length && (k + 1) * blockSize <= body.length; k++) {
      const at = k * blockSize;
      const job = this.enqueue(store, seg, off + at, body.subarray(at, at + blockSize), crcs[k]);
      if (job) {
        left++;
        job.done = finish;
      }
    }
    finish();
    return done;
  }

  private enqueue(
    store: number,
    seg: number,
    off: number,
    bytes: Buffer,
    knownCrc?: number,
  ): Job | undefined {
    if (this.closed || bytes.length > this.manifest.slotSize || bytes.length === 0) return;
    if (off / 512 > 0xffffffff) return;
    if (this.policy.find(store, seg, off) >= 0) return;
    if (this.queuedBytes + bytes.length > MAX_QUEUED_BYTES) {
      this.counters.skipped++;
      return;
    }
    const s = this.policy.insert(store, seg, off, (victim) => this.evicted(victim));
    const g = (this.gen[s] = ((this.gen[s] as number) + 1) >>> 0);
    const crc = knownCrc ?? crc32c(bytes);
    this.crc[s] = crc;
    this.len[s] = bytes.length;
    this.pending[s] = 1;
    const header = encodeEntryHeader({
      store,
      segment: seg,
      offset: off,
      length: bytes.length,
      crc,
    });
    const job: Job = { slot: s, gen: g, header, body: bytes };
    this.queue.push(job);
    this.queuedBytes += bytes.length;
    this.writing ??= this.drain();
    return job;
  }

  /** Wait until every queued entry is written (tests, close). */
  async settle(): Promise<void> {
    while (this.writing) await this.writing;
  }

  /** Write what is queued, then close the files and release the directory. */
  async close(): Promise<void> {
    if (this.closed) return;
    await this.settle();
    this.closed = true;
    if (this.reads > 0) await new Promise<void>((r) => (this.readsDone = r));
    await this.data.close().catch(() => undefined);
    await this.index.close().catch(() => undefined);
    await rm(join(this.dir, LOCK), { force: true }).catch(() => undefined);
  }

  private evicted(slot: number): void {
    this.gen[slot] = ((this.gen[slot] as number) + 1) >>> 0;
    this.pending[slot] = 0;
  }

  private drop(slot: number): void {
    this.counters.dropped++;
    this.forget(slot);
  }

  /** Make the slot free again (its entry, written or not, is gone). */
  private forget(slot: number): void {
    this.gen[slot] = ((this.gen[slot] as number) + 1) >>> 0;
    this.pending[slot] = 0;
    this.policy.remove(slot);
  }

  /**
   * Write the queue out. Entries in consecutive slots (what a sequential fill leaves) go as
   * one positional writev of their bodies, then one of their headers (at most 256 entries:
   * within IOV_MAX). Caching a 256 MiB cold read took two file writes per 4 KiB block, each a
   * round trip through libuv's pool: the read took half again as long as without a cache.
   */
  private async drain(): Promise<void> {
    try {
      const ss = this.manifest.slotSize;
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0, 256);
        const runs: Job[][] = [];
        let run: Job[] | undefined;
        for (const j of batch) {
          if (this.gen[j.slot] !== j.gen) {
            // Evicted before it was written: left out, and the run splits around it.
            this.queuedBytes -= j.body.length;
            j.done?.();
            run = undefined;
            continue;
          }
          const last = run?.[run.length - 1];
          if (run && last && last.slot + 1 === j.slot && last.body.length === ss) run.push(j);
          else runs.push((run = [j]));
        }
        await Promise.all(runs.map((r) => this.writeRun(r)));
      }
    } finally {
      this.writing = undefined;
    }
  }

  /** Jobs for consecutive slots, each body filling its slot but the last's. */
  private async writeRun(jobs: Job[]): Promise<void> {
    const first = (jobs[0] as Job).slot;
    const bodies = jobs.map((j) => j.body);
    const total = bodies.reduce((n, b) => n + b.length, 0);
    try {
      await writevAll(this.data, bodies, first * this.manifest.slotSize);
      // Headers after the bodies, as for one entry: a crash between leaves a header that
      // does not match its body, and every read checks the CRC (the entry is dropped).
      await writevAll(
        this.index,
        jobs.map((j) => j.header),
        first * HEADER,
      );
      for (const j of jobs) {
        if (this.gen[j.slot] === j.gen) {
          this.pending[j.slot] = 0;
          this.counters.writes++;
        }
      }
    } catch (e) {
      // A full or failing disk: the entries are simply not cached.
      let entries = 0;
      for (const j of jobs) {
        if (this.gen[j.slot] !== j.gen) continue;
        this.forget(j.slot);
        entries++;
      }
      this.counters.writeFailures += entries;
      this.writeFailed?.warn(
        'disk cache: writing entries failed; blocks read meanwhile are not cached',
        { dir: this.dir, error: (e as NodeJS.ErrnoException).code ?? String(e), entries },
      );
    } finally {
      this.queuedBytes -= total;
      for (const j of jobs) j.done?.();
    }
  }

  /** Read every slot header and keep the entries whose header checks out. */
  private async load(): Promise<void> {
    const n = this.manifest.slots;
    const stores = this.manifest.stores.length;
    const chunkSlots = 65536;
    const buf = Buffer.allocUnsafe(chunkSlots * HEADER);
    for (let first = 0; first < n; first += chunkSlots) {
      const want = Math.min(chunkSlots, n - first) * HEADER;
      const { bytesRead } = await this.index.read(buf, 0, want, first * HEADER);
      if (bytesRead <= 0) break;
      for (let k = 0; k + HEADER <= bytesRead; k += HEADER) {
        const e = decodeEntryHeader(buf.subarray(k, k + HEADER));
        if (!e || e.store >= stores || e.length > this.manifest.slotSize) continue;
        const slot = first + k / HEADER;
        if (!this.policy.restore(slot, e.store, e.segment, e.offset)) continue;
        this.crc[slot] = e.crc;
        this.len[slot] = e.length;
        this.counters.reused++;
      }
      if (bytesRead < want) break;
    }
  }
}

/** One slot's entry header (slots.idx): the key, and the length and CRC32C of the bytes. */
export interface EntryHeader {
  store: number;
  segment: number;
  offset: number;
  length: number;
  crc: number;
}

export function encodeEntryHeader(e: EntryHeader): Buffer {
  const header = Buffer.alloc(HEADER);
  header.writeUInt32LE(MAGIC, 0);
  header.writeUInt16LE(e.store, 4);
  header.writeUInt16LE(e.offset % 512, 6);
  writeU64(header, 8, e.segment);
  header.writeUInt32LE(Math.floor(e.offset / 512), 16);
  header.writeUInt32LE(e.length, 20);
  header.writeUInt32LE(e.crc, 24);
  header.writeUInt32LE(crc32c(header.subarray(0, 28)), 28);
  return header;
}

/** The entry a slot header holds, or undefined (never written, torn, or not an entry). */
export function decodeEntryHeader(h: Buffer): EntryHeader | undefined {
  if (h.length < HEADER || h.readUInt32LE(0) !== MAGIC) return undefined;
  if (crc32c(h.subarray(0, 28)) !== h.readUInt32LE(28)) return undefined;
  const length = h.readUInt32LE(20);
  if (length === 0) return undefined;
  let segment: number;
  try {
    segment = readU64(h, 8);
  } catch {
    return undefined;
  }
  return {
    store: h.readUInt16LE(4),
    segment,
    offset: h.readUInt32LE(16) * 512 + (h.readUInt16LE(6) & 511),
    length,
    crc: h.readUInt32LE(24),
  };
}

/**
 * Warn when the file system holding the cache has less room than the cache's size (the
 * files are sparse and grow as entries are written; what does not fit is not cached).
 */
async function warnIfNoRoom(o: DiskCacheOptions, files: FileHandle[]): Promise<void> {
  if (!o.log) return;
  let room: number;
  try {
    const fs = await statfs(o.dir);
    room = fs.bavail * fs.bsize;
    for (const f of files) room += (await f.stat()).blocks * 512;
  } catch {
    return;
  }
  if (room < o.sizeBytes)
    o.log.warn(
      'disk cache: its file system has less room than the cache size; it holds what fits',
      {
        dir: o.dir,
        cacheSizeBytes: o.sizeBytes,
        roomBytes: room,
      },
    );
}

/**
 * Write all of `bufs` at `position`: a short write (a disk filling up) goes on with the rest,
 * so that what stops it is thrown with its errno (ENOSPC), not taken for success.
 */
async function writevAll(f: FileHandle, bufs: Buffer[], position: number): Promise<void> {
  let rest = bufs;
  let at = position;
  while (rest.length > 0) {
    let n = (await f.writev(rest, at)).bytesWritten;
    if (n <= 0) throw new Error(`wrote nothing at ${at}`);
    at += n;
    let k = 0;
    while (k < rest.length && n >= (rest[k] as Buffer).length) n -= (rest[k++] as Buffer).length;
    rest = k < rest.length ? [(rest[k] as Buffer).subarray(n), ...rest.slice(k + 1)] : [];
  }
}

async function openRw(path: string): Promise<FileHandle> {
  try {
    return await open(path, 'r+');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    return open(path, 'w+');
  }
}

async function readManifest(dir: string): Promise<Manifest | undefined> {
  try {
    const m = JSON.parse(await readFile(join(dir, MANIFEST), 'utf8')) as Partial<Manifest>;
    if (
      typeof m.format !== 'number' ||
      typeof m.volume !== 'string' ||
      typeof m.slotSize !== 'number' ||
      typeof m.slots !== 'number' ||
      !Array.isArray(m.stores) ||
      !m.stores.every((s) => typeof s === 'string')
    )
      return undefined;
    return m as Manifest;
  } catch {
    return undefined;
  }
}

async function writeManifest(dir: string, m: Manifest): Promise<void> {
  const tmp = join(dir, `${MANIFEST}.${process.pid}.tmp`);
  await writeFile(tmp, `${JSON.stringify(m)}\n`);
  await rename(tmp, join(dir, MANIFEST));
}

/** One process per cache directory: a lock file naming a live pid other than ours refuses. */
async function takeLock(dir: string): Promise<void> {
  const path = join(dir, LOCK);
  for (let tries = 0; tries < 3; tries++) {
    try {
      await writeFile(path, `${process.pid}\n`, { flag: 'wx' });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    const pid = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
    if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && alive(pid)) {
      throw new HyperError(
        'conflict',
        'LEASE_HELD',
        `The cache directory ${dir} is in use by process ${pid}`,
        { suggestion: 'Give each served volume its own --cache-dir.' },
      );
    }
    // Left by a process that is gone (or by us): take it over.
    await rm(path, { force: true });
  }
  throw new HyperError('conflict', 'LEASE_HELD', `Could not lock the cache directory ${dir}`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
