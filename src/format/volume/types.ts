import type { Compression } from '../codec/block.js';
import type { Cipher } from '../codec/seal.js';
import type { ObjectStore } from '../store/types.js';

/**
 * Public shapes of the volume engine: what `serve` and every command use.
 * All byte offsets and sizes are JavaScript numbers checked to be safe integers
 * (volumes are limited to 2^53 - 1 bytes = 8 PiB); the engine rejects anything else.
 */

/** See OpenOptions.dedupDeferBytes. */
export const DEFAULT_DEDUP_DEFER_BYTES = 16 * 1024 * 1024;
export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;
export const TiB = 1024 * GiB;

/** Largest volume: the largest safe integer rounded down to 1 MiB. */
export const MAX_VOLUME_SIZE = Math.floor(Number.MAX_SAFE_INTEGER / MiB) * MiB;
export const MIN_DATA_BLOCK_SIZE = 4 * KiB;
export const MAX_DATA_BLOCK_SIZE = 4 * MiB;
export const MIN_META_BLOCK_SIZE = 4 * KiB;
export const MAX_META_BLOCK_SIZE = 1 * MiB;
export const DEFAULT_BLOCK_SIZE = 4 * KiB;
export const DEFAULT_SEGMENT_SIZE = 32 * MiB;
/**
 * Compression of volumes the CLI creates (README "Compression and encryption" gives the
 * measurements behind it: lz4 stores about half of a typical image for 0.75-1x the raw
 * codec's throughput). The library's createVolume writes raw blocks unless asked.
 */
export const DEFAULT_COMPRESSION: Compression = 'lz4';
export const MIN_SEGMENT_SIZE = 1 * MiB;
export const MAX_SEGMENT_SIZE = 4 * GiB;

/**
 * How often a conditional write (segment id, head, lease, WAL sequence) is retried after
 * losing a race before giving up with the conflict: one bound for all of them.
 */
export const CONFLICT_RETRIES = 16;

export interface CreateOptions {
  /** Logical size in bytes (default 0; a multiple of 512). */
  size?: number;
  dataBlockSize?: number;
  metaBlockSize?: number;
  /** Target segment size: a flush starts when this many bytes are dirty. */
  segmentSize?: number;
  /** Optional WAL location (another prefix or bucket), recorded in the head. */
  walUrl?: string;
  /**
   * Compression of new blocks. Any value but 'none' makes a format version 2 volume (block
   * codecs); 'none' or absent keeps version 1, readable by every hyper.
   */
  compression?: Compression;
  /**
   * Encrypt data blocks and index nodes (client-side, authenticated) with `key` (32 bytes;
   * the volume records its id, never the key). Makes a format version 2 volume.
   */
  encryption?: Cipher;
  key?: Buffer;
  /**
   * Store blocks of equal content once (FORMAT.md "Deduplication"): a content-hash index in
   * the volume. Makes a format version 2 volume.
   */
  dedup?: boolean;
}

/** Which checkpoint to open: a number, a named snapshot, or the last one at or before a time. */
export type CheckpointRef = { checkpoint: number } | { snapshot: string } | { time: Date };

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};

export interface OpenOptions {
  /** Open read-only: nothing is ever written (no lease, no roll-forward). */
  readOnly?: boolean;
  /** Open a past checkpoint (implies readOnly). */
  at?: CheckpointRef;
  /** Name recorded in the lease (default host:pid). */
  holder?: string;
  /** Lease time-to-live (default 30 s); renewed every third of it. */
  leaseTtlMs?: number;
  /** Log every write to a WAL at this URL before acknowledging it (recorded in the head). */
  walUrl?: string;
  /**
   * With a WAL: `write` (default) logs each write before its reply; `flush` acknowledges
   * writes from memory, as without a WAL, and makes them durable at the next FLUSH (or FUA
   * write) with one WAL PUT instead of a segment and a head CAS.
   */
  walAck?: 'write' | 'flush';
  /** Take the lease even if another holder's lease is live (fences that holder). */
  force?: boolean;
  /** Take a live lease back if it is this holder's own (see LeaseOptions.reclaim). */
  reclaim?: boolean;
  /** Bytes of index nodes kept in memory (default 32 MiB). */
  nodeCacheBytes?: number;
  /**
   * Deduplicating volumes: changed content-index nodes are kept in memory and written with a
   * segment once they take this many bytes (default 16 MiB), or when the volume closes.
   */
  dedupDeferBytes?: number;
  /** Bytes of clean data blocks kept in memory (default 32 MiB). */
  dataCacheBytes?: number;
  /**
   * Keep data blocks and index nodes read from the store in a cache on local disk
   * (cache/disk-cache.ts), reused by the next open of the same volume unless `mode` is
   * `recreate`. One directory per volume.
   */
  diskCache?: { dir: string; sizeBytes: number; mode?: 'reuse' | 'recreate' };
  /** Largest read-ahead window for sequential reads (default 16 MiB; 0 disables). */
  readAheadBytes?: number;
  /**
   * After opening, load the index into the node cache in the background (up to half of it),
   * so that cold random reads pay one GET each instead of one more per index level they miss.
   * `hyper serve` sets it for volumes on remote stores; short-lived tools leave it off.
   */
  warmIndex?: boolean;
  /** A random read's GET may take neighbouring blocks up to this many bytes (default 64 KiB; 0 disables). */
  readAroundBytes?: number;
  /** Large reads are split into GETs of this size, fetched in parallel (default 4 MiB). */
  readPartBytes?: number;
  /** Data GETs in flight at most per volume (default 16). */
  maxReadGets?: number;
  /** Dirty bytes that start a flush (default: the volume's segment size). */
  flushBytes?: number;
  /**
   * Buffered bytes, segments in flight included (data and index nodes), at which writers
   * wait for a flush (at least 2 × flushBytes). By default 3 × flushBytes, and 2 × while
   * writes are scattered (the last segment's blocks mostly did not follow one another:
   * SCATTERED_MAX_DIRTY_SEGMENTS).
   */
  maxDirtyBytes?: number;
  /**
   * Segment PUTs in flight at once while the next segment fills (default 4). Heads are
   * still committed in order and name only durable segments.
   */
  flushPipeline?: number;
  /** Flush dirty data at least this often (default FLUSH_INTERVAL_MS; 0 disables the timer). */
  flushIntervalMs?: number;
  /**
   * After a durable flush (NBD FLUSH, FUA), the head object is updated in the background
   * once 8 such flushes wait or this long after the first (default 100 ms; 0: only after 8,
   * or at the next flush, timer or close). Readers roll forward past it either way.
   */
  headUpdateDelayMs?: number;
  logger?: Logger;
  /** Told about every flush and commit (for metrics). */
  observer?: EngineObserver;
  signal?: AbortSignal;
  /**
   * Opens a parent volume's store for a clone (default: `openStore(url)` with settings from
   * the environment). The CLI passes one that applies its --endpoint / --region.
   */
  openStore?: (url: string) => Promise<ObjectStore>;
}

export interface CheckpointInfo {
  checkpoint: number;
  time: Date;
}

export interface LeaseInfo {
  holder: string;
  epoch: number;
  expiresAt: Date;
  /** True when the lease is held and not expired at the time of reading. */
  live: boolean;
}

export interface VolumeInfo {
  url: string;
  uuid: string;
  formatVersion: number;
  size: number;
  dataBlockSize: number;
  metaBlockSize: number;
  segmentSize: number;
  createdAt: Date;
  checkpoint: number;
  checkpointTime: Date;
  /** Data blocks that hold stored data (not holes or zeros). */
  mappedBlocks: number;
  readOnly: boolean;
  /** Compression of new blocks ('none' for version 1 volumes). */
  compression: Compression;
  /** Client-side encryption of blocks and index nodes. */
  encryption: 'none' | Cipher;
  /** Encrypted volumes: the id of their key (codec/seal.ts keyIdOf). */
  keyId?: string;
  /** Blocks of equal content are stored once (FORMAT.md "Deduplication"). */
  dedup: boolean;
  /** Deduplicating volumes: distinct stored blocks the content-hash index knows. */
  dedupBlocks?: number;
  walUrl?: string;
  /** For a clone: the parent volume and the checkpoint it started from. */
  parent?: { url: string; checkpoint: number };
  /** Opened for writing: the lease epoch this writer commits under. */
  writerEpoch?: number;
}

/** One run of blocks for NBD BLOCK_STATUS and `export`: data, or a hole that reads as zeros. */
export interface Extent {
  offset: number;
  length: number;
  /** True when no data is stored for the run (it reads as zeros). */
  hole: boolean;
}

/** Engine counters (request counts come from store/counting.ts), for `serve` logs and the benchmarks. */
export interface EngineStats {
  flushes: number;
  segmentsWritten: number;
  bytesWritten: number;
  bytesRead: number;
  nodeCacheHits: number;
  nodeCacheMisses: number;
  dataCacheHits: number;
  dataCacheMisses: number;
  /** Ranged GETs of data blocks (read path only). */
  dataGets: number;
  /** Data blocks and index nodes served by the disk cache. */
  diskCacheHits: number;
  diskCacheMisses: number;
  /** Disk cache entries dropped because their bytes failed a check. */
  diskCacheDropped: number;
  /** Entries the disk cache wrote out (blocks fetched from the store, index nodes). */
  diskCacheWrites: number;
  /** Entries the disk cache could not write (a full or failing disk): not cached. */
  diskCacheWriteFailures: number;
  /** Blocks fetched by read-ahead, and how many of them were read afterwards. */
  prefetchedBlocks: number;
  prefetchHits: number;
  /** Blocks fetched by read-around, and how many of them were read afterwards. */
  readAroundBlocks: number;
  readAroundHits: number;
  /** Random misses fetched without neighbours while too few of those were being read. */
  readAroundSkipped: number;
  /** Bytes written but not yet in a segment, and the level at which writers wait. */
  dirtyBytes: number;
  maxDirtyBytes: number;
  /** The newest checkpoint the head names (committed), and its time. */
  checkpoint: number;
  checkpointMs: number;
  /**
   * Writers only: the lease (`lost`: taken over or fenced, writes fail; `lapsed`: expired
   * while the store refused its renewals, nothing commits until one gets through;
   * `stopped`: why writes fail when `lost` is not a takeover, e.g. the WAL found damaged).
   */
  lease?: { epoch: number; expiresMs: number; lost: boolean; lapsed: boolean; stopped?: string };
  /**
   * Writers only, while flushes fail: since when (the first failure after the last success),
   * how many failed, and the newest error. Undefined once a flush succeeds.
   */
  flushFailing?: { sinceMs: number; failures: number; error: string };
}

/**
 * Callbacks about the engine's durability work (for metrics); they must be cheap and must not
 * throw. A flush of kind 'segment' writes a segment for room (its head CAS waits); one of
 * kind 'checkpoint' also commits it. A commit is the head CAS itself.
 */
export interface EngineObserver {
  flushed?(event: { kind: 'checkpoint' | 'segment'; seconds: number; ok: boolean }): void;
  committed?(event: { seconds: number; ok: boolean }): void;
}

/** How often a writer commits what it holds, by default (OpenOptions.flushIntervalMs). */
export const FLUSH_INTERVAL_MS = 5000;

/** Compaction deletes only what has been unreachable this long (readers of dropped checkpoints finish). */
export const DEFAULT_GRACE_MS = 10 * 60 * 1000;
/** Segments less live than this are rewritten: keeps stored bytes within ~1.1x of live bytes. */
export const DEFAULT_MIN_LIVE = 0.9;
