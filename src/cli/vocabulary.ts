/**
 * The JSON vocabulary of hyper: the shape of every command's `--json` output, as zod schemas
 * (exported so that tests validate each command against its schema) and the TypeScript types
 * the commands return. Commands import only the types (`import type`), so this module and zod
 * are not loaded at run time.
 *
 * Rules (the README's "Conventions" section says the same for users):
 *
 * 1. Bytes are integers. A field holding a number of bytes is named `size`, `…Size` (the size
 *    of a thing: `dataBlockSize`, `imageSize`), `…Bytes` (an amount of data: `storedBytes`,
 *    `copiedBytes`, optionally followed by `Before`/`After`), or is the `offset`/`length` of a
 *    byte range. No other field is in bytes, and no byte field has another name.
 * 2. Durations are seconds, named `…Seconds`, rounded to milliseconds (at most 3 decimals).
 * 3. Times are ISO-8601 UTC strings with milliseconds (`2026-01-31T12:00:00.000Z`), named
 *    `time`, `…Time` or `…At`.
 * 4. Absent is `null`: every field of a shape is always present; a value that does not apply
 *    or is unknown is `null` (never an omitted field, never 0 or a 1970 date).
 * 5. Counts are integers named `…Count` (`segmentCount`, `deletedObjectCount`, optionally
 *    followed by `Before`/`After`). A plural name (`checkpoints`, `volumes`, `extents`,
 *    `problems`, `uris`) is always an array of items.
 * 6. `checkpoint` is always a checkpoint number; `…Checkpoint` too. A checkpoint reference as
 *    the user gave it (`--at`, `--from`, `--to`) is one of `{ "checkpoint": 42 }`,
 *    `{ "snapshot": "name" }` or `{ "time": "<ISO-8601>" }`.
 * 7. `requests` is always the `RequestStats` object (requests the command made to the store).
 * 8. `url` is the volume (or prefix) URL the command acted on; other URLs are `…Url` or an
 *    object with a `url` (`parent`, `clone`).
 * 9. A failure is `{ "error": ErrorBody }` on stdout with the exit code of the error table.
 *
 * A command prints exactly one JSON document on stdout, except `serve` and `daemon`, which
 * print JSON Lines: one `{"event":"listening",…}` line once they listen and one
 * `{"event":"stopped",…}` line when they stop (or an error document instead).
 */
import { z } from 'zod';

const int = z.number().int();
const count = int.min(0);
const bytes = int.min(0);
const checkpointNumber = int.min(0);
/** An ISO-8601 UTC time with milliseconds. */
const isoTime = z.iso.datetime({ precision: 3 });
/** Seconds rounded to milliseconds. */
const seconds = z
  .number()
  .min(0)
  .refine((v) => Math.abs(v * 1000 - Math.round(v * 1000)) < 1e-6, 'at most 3 decimals');

export const checkpointRefSchema = z.union([
  z.strictObject({ checkpoint: checkpointNumber }),
  z.strictObject({ snapshot: z.string() }),
  z.strictObject({ time: isoTime }),
]);

export const requestStatsSchema = z.strictObject({
  totalCount: count,
  getCount: count,
  putCount: count,
  listCount: count,
  headCount: count,
  deleteCount: count,
  /** Bytes received from the store. */
  receivedBytes: bytes,
  /** Bytes sent to the store. */
  sentBytes: bytes,
});

export const volumeSummarySchema = z.strictObject({
  url: z.string(),
  uuid: z.string(),
  formatVersion: int,
  /** How new data blocks are stored: none, zstd or lz4. */
  compression: z.enum(['none', 'zstd', 'lz4']),
  /** Client-side encryption of blocks and index nodes: none, xchacha20-poly1305 or aes-256-gcm. */
  encryption: z.enum(['none', 'xchacha20-poly1305', 'aes-256-gcm']),
  /** The id of an encrypted volume's key (never the key), else null. */
  keyId: z.string().nullable(),
  /** Blocks of equal content are stored once (a content-hash index in the volume). */
  dedup: z.boolean(),
  size: bytes,
  dataBlockSize: bytes,
  metaBlockSize: bytes,
  segmentSize: bytes,
  createdAt: isoTime,
  checkpoint: checkpointNumber,
  checkpointTime: isoTime,
});

export const errorBodySchema = z.strictObject({
  kind: z.enum(['invalid', 'not-found', 'conflict', 'unavailable', 'data', 'internal']),
  code: z.string().regex(/^[A-Z][A-Z0-9_]*$/),
  message: z.string(),
  suggestion: z.string().nullable(),
  /** The object found damaged or missing (data errors), else null. */
  key: z.string().nullable(),
  exitCode: int,
});
export const errorJsonSchema = z.strictObject({ error: errorBodySchema });

// file …

export const fileCreateSchema = volumeSummarySchema;
export const fileCreateOptSchema = volumeSummarySchema;

export const fileSetLenSchema = z.strictObject({
  url: z.string(),
  previousSize: bytes,
  size: bytes,
  /** The checkpoint recording the new size (the current one when nothing changed). */
  checkpoint: checkpointNumber,
  checkpointTime: isoTime,
  /**
   * A server on this host served the volume read-write and grew it itself (its control socket
   * and export name); null when the command resized the volume directly.
   */
  resizedBy: z.strictObject({ controlSocket: z.string(), export: z.string() }).nullable(),
});

export const leaseSchema = z.strictObject({
  holder: z.string(),
  epoch: int,
  /** live: held and not expired; expired: its holder stopped renewing; released: given back. */
  state: z.enum(['live', 'expired', 'released']),
  /** When a live or expired lease expires/expired; null for a released lease. */
  expiresAt: isoTime.nullable(),
});

export const spaceUsageSchema = z.strictObject({
  liveBytes: bytes,
  deadBytes: bytes,
  historyBytes: bytes,
  garbageBytes: bytes,
  inheritedBytes: bytes,
});

export const fileStatSchema = volumeSummarySchema.extend({
  mappedBlockCount: count,
  /** Deduplicating volumes: distinct stored blocks the content index knows, else null. */
  distinctBlockCount: count.nullable(),
  segmentCount: count,
  uncommittedSegmentCount: count,
  storedBytes: bytes,
  provisionedBytes: bytes,
  usedBytes: bytes,
  snapshotCount: count,
  /** The last lease record, or null if no lease was ever taken. */
  lease: leaseSchema.nullable(),
  walUrl: z.string().nullable(),
  /** Checkpoints that can be opened, restored or cloned. */
  checkpointCount: count,
  oldestCheckpoint: checkpointNumber.nullable(),
  clonePinCount: count,
  parent: z.strictObject({ url: z.string(), checkpoint: checkpointNumber }).nullable(),
  /** A flatten stopped right after dropping the link: the parent checkpoint it still pins. */
  unfinishedFlatten: z.strictObject({ url: z.string(), checkpoint: checkpointNumber }).nullable(),
  /** With --space, else null. */
  space: spaceUsageSchema.nullable(),
});

export const fileListSchema = z.strictObject({
  url: z.string(),
  volumes: z.array(
    z.strictObject({
      /** Path relative to the listed prefix, ending with `/`. */
      name: z.string(),
      url: z.string(),
      /** Null when the head could not be read (see `error`). */
      size: bytes.nullable(),
      checkpoint: checkpointNumber.nullable(),
      checkpointTime: isoTime.nullable(),
      error: z.string().nullable(),
    }),
  ),
});

export const fileImportSchema = z.strictObject({
  image: z.string(),
  url: z.string(),
  imageSize: bytes,
  created: z.boolean(),
  volumeSize: bytes,
  dataBytes: bytes,
  zeroBytes: bytes,
  checkpoint: checkpointNumber,
  checkpointTime: isoTime,
  elapsedSeconds: seconds,
});

export const fileExportSchema = z.strictObject({
  url: z.string(),
  image: z.string(),
  size: bytes,
  at: checkpointRefSchema.nullable(),
  checkpoint: checkpointNumber,
  checkpointTime: isoTime,
  dataBytes: bytes,
  zeroBytes: bytes,
  elapsedSeconds: seconds,
});

export const fileCopySchema = z.strictObject({
  source: z.string(),
  target: z.string(),
  size: bytes,
  at: checkpointRefSchema.nullable(),
  /** The source's checkpoint that was copied. */
  sourceCheckpoint: checkpointNumber,
  created: z.boolean(),
  /** The target's checkpoint that holds the copy. */
  checkpoint: checkpointNumber,
  checkpointTime: isoTime,
  /** With --snapshots: the snapshots copied, oldest first, at their checkpoints in the target. */
  snapshots: z.array(z.strictObject({ name: z.string(), checkpoint: checkpointNumber })),
  dataBytes: bytes,
  zeroBytes: bytes,
  elapsedSeconds: seconds,
});

export const fileCompareSchema = z.strictObject({
  first: z.string(),
  /** A volume URL, or the path of an image. */
  second: z.string(),
  firstAt: checkpointRefSchema.nullable(),
  secondAt: checkpointRefSchema.nullable(),
  firstSize: bytes,
  secondSize: bytes,
  /** Every byte matched (the shorter side read as zeros past its end). */
  identical: z.boolean(),
  /** The first offset whose bytes differ (null when identical). */
  firstDifference: bytes.nullable(),
  /** Bytes read and compared (ranges both volumes hold as holes are not read). */
  comparedBytes: bytes,
  elapsedSeconds: seconds,
});

/** The identity of a diff stream (its header): the source volume and the two checkpoints. */
const diffHeaderFields = {
  /** The uuid of the volume the diff was exported from. */
  sourceUuid: z.string(),
  fromCheckpoint: checkpointNumber,
  fromSize: bytes,
  fromTime: isoTime,
  toCheckpoint: checkpointNumber,
  toSize: bytes,
  toTime: isoTime,
  /** The source volume's data block size. */
  dataBlockSize: bytes,
  dataRecordCount: count,
  zeroRecordCount: count,
  /** Bytes of data the stream carries. */
  dataBytes: bytes,
  /** Bytes of ranges that read as zeros in the to-checkpoint. */
  zeroBytes: bytes,
  /** Bytes of the whole stream. */
  streamBytes: bytes,
};

export const fileExportDiffSchema = z.strictObject({
  url: z.string(),
  /** The file written, or `-` for stdout (never with --json). */
  file: z.string(),
  /** null: a full stream (no --from; its fromCheckpoint is 0). */
  from: checkpointRefSchema.nullable(),
  to: checkpointRefSchema,
  ...diffHeaderFields,
  elapsedSeconds: seconds,
});

export const fileImportDiffSchema = z.strictObject({
  /** The diff read, or `-` for stdin. */
  file: z.string(),
  url: z.string(),
  ...diffHeaderFields,
  /** What showed the target holds the from-checkpoint: its marker snapshot (`resumed`: changed since only where this diff writes, as an import of it cut short leaves it), --assume-base, or (a full stream) a target without data. */
  base: z.enum(['marker', 'resumed', 'assumed', 'empty']),
  /** The marker snapshot that proved the base, else null. */
  baseSnapshot: z.string().nullable(),
  /** The target's checkpoint and size before the import. */
  previousCheckpoint: checkpointNumber,
  previousSize: bytes,
  /** The target's checkpoint holding the to-checkpoint's content; null on a dry run. */
  checkpoint: checkpointNumber.nullable(),
  checkpointTime: isoTime.nullable(),
  size: bytes,
  /** The marker snapshot naming that checkpoint; null on a dry run. */
  snapshot: z.string().nullable(),
  /** The marker the import started from, deleted; null when there was none. */
  removedSnapshot: z.string().nullable(),
  /** The stream (stdin or a pipe) was copied to a temporary file before being applied. */
  spooled: z.boolean(),
  dryRun: z.boolean(),
  elapsedSeconds: seconds,
});

export const fileDeleteSchema = z.strictObject({
  url: z.string(),
  /** False when there was no volume and --if-exists was given. */
  deleted: z.boolean(),
  deletedObjectCount: count,
  /**
   * A clone's pin on its parent: released, or (with --force, the parent out of reach) left
   * there. Null for a volume that is no clone.
   */
  parent: z
    .strictObject({ url: z.string(), pinKey: z.string(), pinReleased: z.boolean() })
    .nullable(),
});

export const fileCheckSchema = z.strictObject({
  url: z.string(),
  clean: z.boolean(),
  deep: z.boolean(),
  checkpoint: checkpointNumber,
  checkedCheckpointCount: count,
  segmentCount: count,
  checkedNodeCount: count,
  checkedBlockCount: count,
  verifiedBytes: bytes,
  problems: z.array(
    z.strictObject({
      kind: z.enum([
        'missing',
        'corrupt',
        'dangling',
        'orphan',
        'uncommitted',
        'stale-pin',
        'unfinished-flatten',
      ]),
      key: z.string(),
      message: z.string(),
    }),
  ),
  /** With damage: the newest retained checkpoint that uses none of the damaged objects. */
  restoreCheckpoint: checkpointNumber.nullable(),
  /**
   * Records of the write-ahead log past the head that no writer can replay (from the first
   * damaged or missing one on), which `file repair --apply` drops; 0 when the log is whole.
   */
  unreplayableWalRecordCount: count,
});

export const fileRepairSchema = z.strictObject({
  url: z.string(),
  /** The head as found. */
  head: z.enum(['intact', 'damaged', 'missing']),
  /** The rebuilt head was written (--apply on a damaged or missing head). */
  applied: z.boolean(),
  /** The checkpoint the rebuilt head commits (the current one when the head is intact). */
  checkpoint: checkpointNumber.nullable(),
  checkpointTime: isoTime.nullable(),
  /** The segment whose embedded head is used (null when the head is intact). */
  segmentKey: z.string().nullable(),
  /** Newer segments that did not verify, newest first. */
  skippedSegments: z.array(z.strictObject({ key: z.string(), message: z.string() })),
  /** The write-ahead log past the head (volumes with a WAL), else null. */
  wal: z
    .strictObject({
      url: z.string(),
      /** Records the next writer replays (before the first one it cannot). */
      replayableRecordCount: count,
      /** The first record no writer can replay, or null when the log replays whole. */
      damaged: z
        .strictObject({
          seq: int.min(1),
          key: z.string(),
          kind: z.enum(['corrupt', 'missing']),
          message: z.string(),
        })
        .nullable(),
      /** Sequence numbers of the records from that one on: what --apply drops. */
      droppedRecords: z.array(int.min(1)),
      /** They were dropped (--apply). */
      applied: z.boolean(),
    })
    .nullable(),
});

// snapshot …

export const snapshotListSchema = z.strictObject({
  url: z.string(),
  checkpoints: z.array(
    z.strictObject({
      checkpoint: checkpointNumber,
      time: isoTime,
      names: z.array(z.string()),
      /** Bytes of the segment the checkpoint's flush wrote. */
      writtenBytes: bytes,
      current: z.boolean(),
      restoredFrom: checkpointNumber.nullable(),
      /** The clones that start from this checkpoint (the URLs their pins on it record). */
      cloneUrls: z.array(z.string()),
    }),
  ),
});

export const snapshotCreateSchema = z.strictObject({
  url: z.string(),
  name: z.string(),
  checkpoint: checkpointNumber,
  createdAt: isoTime,
  at: checkpointRefSchema.nullable(),
  /**
   * A daemon on this host served the volume read-write and committed what it had acknowledged
   * first (its control socket, export name, and that checkpoint), so the snapshot holds every
   * write made before the command; null otherwise.
   */
  flushedBy: z
    .strictObject({ controlSocket: z.string(), export: z.string(), checkpoint: checkpointNumber })
    .nullable(),
  requests: requestStatsSchema,
});

export const snapshotDeleteSchema = z.strictObject({
  url: z.string(),
  name: z.string(),
  checkpoint: checkpointNumber,
  createdAt: isoTime,
});

const pinSchema = z.strictObject({
  key: z.string(),
  checkpoint: checkpointNumber,
  cloneUrl: z.string(),
});

export const snapshotUnpinSchema = z.strictObject({
  url: z.string(),
  /** Pins released: their clones are gone. */
  released: z.array(pinSchema),
  /** Pins that named the clone and stay: it exists, or whether it does could not be told. */
  kept: z.array(pinSchema.extend({ cloneExists: z.boolean(), reason: z.string() })),
});

export const snapshotDiffSchema = z.strictObject({
  url: z.string(),
  from: checkpointRefSchema,
  to: checkpointRefSchema,
  fromCheckpoint: checkpointNumber,
  toCheckpoint: checkpointNumber,
  extents: z.array(z.strictObject({ offset: bytes, length: bytes, zero: z.boolean() })),
  changedBytes: bytes,
});

export const snapshotRestoreSchema = z.strictObject({
  url: z.string(),
  to: checkpointRefSchema,
  targetCheckpoint: checkpointNumber,
  targetTime: isoTime,
  /** The current checkpoint before the restore (restore to it to undo). */
  previousCheckpoint: checkpointNumber,
  /** The new checkpoint; null on a dry run, and when nothing changed. */
  checkpoint: checkpointNumber.nullable(),
  dryRun: z.boolean(),
  /** True when --to named the current state (or a time at or after it): nothing committed. */
  unchanged: z.boolean(),
  requests: requestStatsSchema,
});

export const snapshotCloneSchema = z.strictObject({
  url: z.string(),
  from: checkpointRefSchema,
  checkpoint: checkpointNumber,
  clone: volumeSummarySchema,
  flattened: z
    .strictObject({ copiedBlockCount: count, copiedBytes: bytes, checkpoint: checkpointNumber })
    .nullable(),
  requests: requestStatsSchema,
});

export const snapshotFlattenSchema = z.strictObject({
  url: z.string(),
  /** The parent the clone read from, and the checkpoint it started from (now unpinned). */
  parent: z.strictObject({ url: z.string(), checkpoint: checkpointNumber }),
  copiedBlockCount: count,
  copiedBytes: bytes,
  checkpoint: checkpointNumber,
  /** This run finished a flatten that had stopped right after dropping the parent link. */
  resumed: z.boolean(),
});

// compact, serve

export const compactSchema = z.strictObject({
  url: z.string(),
  dryRun: z.boolean(),
  checkpointCountBefore: count,
  checkpointCountAfter: count,
  droppedCheckpointCount: count,
  segmentCountBefore: count,
  deletedSegmentCount: count,
  /** Unreachable segments left for a later run because of the grace period. */
  deferredSegmentCount: count,
  reclaimedBytes: bytes,
  rewrittenSegmentCount: count,
  rewrittenBlockCount: count,
  rewrittenBytes: bytes,
  storedBytesBefore: bytes,
  storedBytesAfter: bytes,
  liveBytes: bytes,
  checkpoint: checkpointNumber,
  /** The store had no room for the blocks to move: only checkpoints were dropped and segments deleted. */
  rewriteSkipped: z.boolean(),
  keepLast: count.nullable(),
  keepWithinSeconds: seconds.nullable(),
  minLive: z.number().min(0).max(1),
  graceSeconds: seconds,
  /**
   * The volume was served read-write by a daemon on this host, which compacted it online on
   * this command's behalf (its control socket and export name); null when this command
   * compacted it itself.
   */
  online: z.strictObject({ controlSocket: z.string(), export: z.string() }).nullable(),
  requests: requestStatsSchema,
  elapsedSeconds: seconds,
});

const serveExport = z.strictObject({ name: z.string(), url: z.string(), readOnly: z.boolean() });

export const serveListeningSchema = z.strictObject({
  event: z.literal('listening'),
  uris: z.array(z.string()),
  exports: z.array(serveExport),
  at: checkpointRefSchema.nullable(),
  /** Where Prometheus metrics are served (--metrics-port), else null. */
  metricsUrl: z.string().nullable(),
});

export const serveStoppedSchema = z.strictObject({
  event: z.literal('stopped'),
  uris: z.array(z.string()),
  exports: z.array(serveExport),
  at: checkpointRefSchema.nullable(),
  metricsUrl: z.string().nullable(),
  /** Why the server stopped. */
  reason: z.enum(['interrupted']),
});

// replica …

const replicaMode = z.enum(['logging', 'forward-part', 'forward-full', 'reverse-full']);

/** `hyper replica format --json`. */
export const replicaFormatSchema = z.strictObject({
  uuid: z.string(),
  file: z.string(),
  deviceSize: count,
  regionSize: count,
  /** The replica volume's URL (<replica prefix>/<uuid>/). */
  replicaUrl: z.string(),
  mode: z.enum(['logging', 'forward-full']),
});

/** The replicator's state (`hyper replica status --json`, GET /v1/replica). */
export const replicaStatusSchema = z.strictObject({
  uuid: z.string(),
  mode: replicaMode,
  deviceSize: count,
  regionSize: count,
  replicaUrl: z.string(),
  /** Whether a replicator serves the primary now (false: read from the primary's header). */
  live: z.boolean(),
  replica: z.strictObject({
    connected: z.boolean(),
    error: z.string().nullable(),
    checkpoint: count,
    lastConsistentCheckpoint: count,
    lastConsistentTime: z.string().nullable(),
    /** Seconds the replica commit in flight has been running (null: none). */
    commitSeconds: z.number().min(0).nullable(),
  }),
  lag: z.strictObject({
    bytes: count,
    ios: count,
    seconds: z.number().min(0),
    p50Seconds: z.number().min(0),
    p99Seconds: z.number().min(0),
  }),
  pool: z.strictObject({ bytes: count, limit: count, overflows: count }),
  dirtyRegions: count,
  regions: count,
  resync: z.strictObject({ pending: count, copied: count, total: count }).nullable(),
  restore: z
    .strictObject({ from: count, restored: count, total: count, lazy: z.boolean() })
    .nullable(),
  shipped: z.strictObject({
    bytes: count,
    ios: count,
    checkpoints: count,
    bytesPerSecond: z.number().min(0),
  }),
});

/** `hyper replica resync --json`. */
export const replicaResyncSchema = z.strictObject({
  /** Regions that will be copied. */
  regions: count,
  full: z.boolean(),
  /** False: recorded in the primary's header for the next `replica serve`. */
  live: z.boolean(),
});

/** `hyper replica check --json`. */
export const replicaCheckSchema = z.strictObject({
  uuid: z.string(),
  file: z.string(),
  replicaUrl: z.string(),
  checkpoint: count,
  consistent: z.boolean(),
  mode: replicaMode,
  served: z.boolean(),
  regions: count,
  matching: count,
  differing: z.array(
    z.strictObject({ region: count, offset: count, length: count, dirty: z.boolean() }),
  ),
  diverged: count,
});

/** `hyper replica restore --json`. */
export const replicaRestoreSchema = z.strictObject({
  uuid: z.string(),
  file: z.string(),
  checkpoint: count,
  replicaCheckpoint: count,
  lazy: z.boolean(),
  restoredRegions: count,
  regions: count,
  resumed: z.boolean(),
});

/** `hyper replica serve --json`: a `listening` line, then a `stopped` line. */
export const replicaServeListeningSchema = z.strictObject({
  event: z.literal('listening'),
  uri: z.string(),
  uuid: z.string(),
  mode: replicaMode,
  controlSocket: z.string().nullable(),
  /** With --metrics-port: where GET /metrics is served, else null. */
  metricsUrl: z.string().nullable(),
});

export const replicaServeStoppedSchema = z.strictObject({
  event: z.literal('stopped'),
  uri: z.string(),
  uuid: z.string(),
  reason: z.enum(['interrupted']),
  status: replicaStatusSchema,
});

// daemon, map, unmap, ls

/** Why a mapping failed: an error body without an exit code (the daemon has no exit code). */
export const exportErrorSchema = z.strictObject({
  kind: errorBodySchema.shape.kind,
  code: errorBodySchema.shape.code,
  message: z.string(),
  suggestion: z.string().nullable(),
  key: z.string().nullable(),
});

/** One export of the daemon (`hyper map`, each item of `hyper ls`). */
export const exportStatusSchema = z.strictObject({
  name: z.string(),
  url: z.string(),
  /** Where the mapping came from: `hyper map` (control) or the --config file. */
  source: z.enum(['control', 'config']),
  state: z.enum(['mapping', 'mapped', 'unmapping', 'failed']),
  /** The NBD URI clients connect to; null unless mapped. */
  uri: z.string().nullable(),
  /** True for --read-only and --at exports (no lease). */
  readOnly: z.boolean(),
  at: checkpointRefSchema.nullable(),
  walUrl: z.string().nullable(),
  /** NBD connections using the export. */
  clientCount: count,
  /** The daemon's lease on the volume (writable, open exports), else null. */
  lease: z.strictObject({ holder: z.string(), epoch: int }).nullable(),
  /** The fields below are null while the volume is not open (mapping, failed). */
  /** The uuid of the volume the export serves (the volume at `url` when it was opened). */
  volumeUuid: z.string().nullable(),
  size: bytes.nullable(),
  /**
   * Written but not yet stored: buffered, and segments in flight or waiting to be written
   * again after a failure (hyper_volume_dirty_bytes).
   */
  dirtyBytes: bytes.nullable(),
  checkpoint: checkpointNumber.nullable(),
  checkpointTime: isoTime.nullable(),
  checkpointAgeSeconds: seconds.nullable(),
  /** Bytes per second read and written by clients over the last 5-10 s. */
  readBytesPerSecond: int.min(0).nullable(),
  writeBytesPerSecond: int.min(0).nullable(),
  /** Why the mapping failed (state `failed`), else null. */
  error: exportErrorSchema.nullable(),
  /**
   * Why the open export cannot make writes durable now (lease lost or lapsed, flushes
   * failing: what GET /healthz reports), else null.
   */
  health: z.string().nullable(),
});

/** The daemon itself (`GET /v1/daemon`, `daemon` of `hyper ls`). */
export const daemonStatusSchema = z.strictObject({
  pid: int.min(1),
  version: z.string().nullable(),
  startedAt: isoTime,
  controlSocket: z.string(),
  stateFile: z.string(),
  configFile: z.string().nullable(),
  /** Where NBD clients connect: a TCP host and port, or a unix socket path. */
  listen: z.strictObject({
    host: z.string().nullable(),
    port: int.min(0).max(65535).nullable(),
    path: z.string().nullable(),
  }),
  /** Where Prometheus metrics are served (--metrics-port), else null. */
  metricsUrl: z.string().nullable(),
  /** Exports mapped and served (not counting failed ones). */
  exportCount: count,
  clientCount: count,
});

export const lsSchema = z.strictObject({
  daemon: daemonStatusSchema,
  exports: z.array(exportStatusSchema),
});

export const mapSchema = exportStatusSchema;

export const unmapSchema = z.strictObject({
  name: z.string(),
  url: z.string(),
  /** Client connections ended (after their requests in flight unless --force). */
  disconnectedClientCount: count,
  /** False when a failed mapping was only forgotten. */
  wasMapped: z.boolean(),
});

/** `hyper daemon --json`, first line: what `hyper ls --json` shows, once the daemon is ready. */
export const daemonListeningSchema = lsSchema.extend({ event: z.literal('listening') });

/** `hyper daemon --json`, last line: the daemon and its exports just before it stopped. */
export const daemonStoppedSchema = lsSchema.extend({
  event: z.literal('stopped'),
  reason: z.enum(['interrupted']),
});

const settingSchema = z.strictObject({
  value: z.string().nullable(),
  /** flag, env, profile (the selected profile's section of the file), file, or default. */
  source: z.enum(['flag', 'env', 'profile', 'file', 'default']),
  /** The flag, environment variable or file entry it was read from; null for a default. */
  from: z.string().nullable(),
});

export const configShowSchema = z.strictObject({
  configFile: z.string(),
  configFileExists: z.boolean(),
  profile: settingSchema,
  /** True when the profile is a section of the configuration file. */
  profileInFile: z.boolean(),
  awsProfile: settingSchema,
  endpoint: settingSchema,
  region: settingSchema,
  /** Whether S3 PUT bodies are signed: auto (over http only), on, off. */
  payloadSigning: settingSchema,
  /** How long opening a connection to the store may take (a duration). */
  connectTimeout: settingSchema,
  /** How long a store request may go without a byte moving (a duration). */
  idleTimeout: settingSchema,
  /** Attempts per store request that fails in a retryable way, the first included. */
  maxAttempts: settingSchema,
  /** Default flags the file sets, per command. */
  defaults: z.array(
    z.strictObject({
      command: z.string(),
      flag: z.string(),
      value: z.union([z.string(), z.number(), z.boolean()]),
      source: z.string(),
      from: z.string(),
    }),
  ),
});

export type ConfigShowResult = z.infer<typeof configShowSchema>;

const doctorStatus = z.enum(['ok', 'warn', 'fail', 'skip']);

export const doctorSchema = z.strictObject({
  url: z.string(),
  endpoint: z.string(),
  region: z.string(),
  /** The worst status of any check ('skip' counts as ok). */
  status: z.enum(['ok', 'warn', 'fail']),
  checks: z.array(
    z.strictObject({
      id: z.string(),
      title: z.string(),
      status: doctorStatus,
      detail: z.string(),
      suggestion: z.string().nullable(),
    }),
  ),
  performance: z.array(
    z.strictObject({
      op: z.enum(['put', 'get']),
      sizeBytes: bytes,
      samples: z.number().int(),
      p50Seconds: z.number().nonnegative(),
      maxSeconds: z.number().nonnegative(),
      bytesPerSecond: z.number().int().nonnegative(),
    }),
  ),
  okCount: z.number().int(),
  warnCount: z.number().int(),
  failCount: z.number().int(),
  skipCount: z.number().int(),
});

/**
 * The schema of each command's --json result (for `serve` and `daemon`, of its final line), by oclif
 * command id. A new command adds itself here; the test that walks all commands fails for a
 * command missing from this table.
 */
export const resultSchemas = {
  'file:create': fileCreateSchema,
  'file:create-opt': fileCreateOptSchema,
  'file:set-len': fileSetLenSchema,
  'file:stat': fileStatSchema,
  'file:list': fileListSchema,
  'file:import': fileImportSchema,
  'file:export': fileExportSchema,
  'file:copy': fileCopySchema,
  'file:compare': fileCompareSchema,
  'file:export-diff': fileExportDiffSchema,
  'file:import-diff': fileImportDiffSchema,
  'file:delete': fileDeleteSchema,
  'file:check': fileCheckSchema,
  'file:repair': fileRepairSchema,
  'snapshot:list': snapshotListSchema,
  'snapshot:create': snapshotCreateSchema,
  'snapshot:delete': snapshotDeleteSchema,
  'snapshot:unpin': snapshotUnpinSchema,
  'snapshot:diff': snapshotDiffSchema,
  'snapshot:restore': snapshotRestoreSchema,
  'snapshot:clone': snapshotCloneSchema,
  'snapshot:flatten': snapshotFlattenSchema,
  compact: compactSchema,
  'config:show': configShowSchema,
  doctor: doctorSchema,
  serve: serveStoppedSchema,
  daemon: daemonStoppedSchema,
  map: mapSchema,
  unmap: unmapSchema,
  ls: lsSchema,
  'replica:format': replicaFormatSchema,
  'replica:serve': replicaServeStoppedSchema,
  'replica:status': replicaStatusSchema,
  'replica:resync': replicaResyncSchema,
  'replica:check': replicaCheckSchema,
  'replica:restore': replicaRestoreSchema,
} as const satisfies Record<string, z.ZodType>;

export type CheckpointRefJson = z.infer<typeof checkpointRefSchema>;
export type RequestStats = z.infer<typeof requestStatsSchema>;
export type VolumeSummary = z.infer<typeof volumeSummarySchema>;
export type ErrorBody = z.infer<typeof errorBodySchema>;
export type ErrorJson = z.infer<typeof errorJsonSchema>;
export type LeaseSummary = z.infer<typeof leaseSchema>;
export type SpaceUsageJson = z.infer<typeof spaceUsageSchema>;
export type FileCreateResult = z.infer<typeof fileCreateSchema>;
export type FileCreateOptResult = z.infer<typeof fileCreateOptSchema>;
export type FileSetLenResult = z.infer<typeof fileSetLenSchema>;
export type FileStatResult = z.infer<typeof fileStatSchema>;
export type FileListResult = z.infer<typeof fileListSchema>;
export type VolumeListItem = FileListResult['volumes'][number];
export type FileImportResult = z.infer<typeof fileImportSchema>;
export type FileExportResult = z.infer<typeof fileExportSchema>;
export type FileCopyResult = z.infer<typeof fileCopySchema>;
export type FileCompareResult = z.infer<typeof fileCompareSchema>;
export type FileExportDiffResult = z.infer<typeof fileExportDiffSchema>;
export type FileImportDiffResult = z.infer<typeof fileImportDiffSchema>;
/** The fields export-diff and import-diff both show: the stream's header and its counts. */
export type DiffStreamFields = Pick<FileExportDiffResult, keyof typeof diffHeaderFields>;
export type FileDeleteResult = z.infer<typeof fileDeleteSchema>;
export type FileCheckResult = z.infer<typeof fileCheckSchema>;
export type FileRepairResult = z.infer<typeof fileRepairSchema>;
export type SnapshotListResult = z.infer<typeof snapshotListSchema>;
export type SnapshotListItem = SnapshotListResult['checkpoints'][number];
export type SnapshotCreateResult = z.infer<typeof snapshotCreateSchema>;
export type SnapshotDeleteResult = z.infer<typeof snapshotDeleteSchema>;
export type SnapshotUnpinResult = z.infer<typeof snapshotUnpinSchema>;
export type SnapshotDiffResult = z.infer<typeof snapshotDiffSchema>;
export type SnapshotRestoreResult = z.infer<typeof snapshotRestoreSchema>;
export type SnapshotCloneResult = z.infer<typeof snapshotCloneSchema>;
export type SnapshotFlattenResult = z.infer<typeof snapshotFlattenSchema>;
export type CompactCommandResult = z.infer<typeof compactSchema>;
export type ServeListening = z.infer<typeof serveListeningSchema>;
export type ServeResult = z.infer<typeof serveStoppedSchema>;
export type ExportErrorJson = z.infer<typeof exportErrorSchema>;
export type ExportStatus = z.infer<typeof exportStatusSchema>;
export type DaemonStatus = z.infer<typeof daemonStatusSchema>;
export type LsResult = z.infer<typeof lsSchema>;
export type ReplicaFormatResult = z.infer<typeof replicaFormatSchema>;
export type ReplicaStatusResult = z.infer<typeof replicaStatusSchema>;
export type ReplicaResyncResult = z.infer<typeof replicaResyncSchema>;
export type ReplicaCheckResult = z.infer<typeof replicaCheckSchema>;
export type ReplicaRestoreResult = z.infer<typeof replicaRestoreSchema>;
export type ReplicaServeListening = z.infer<typeof replicaServeListeningSchema>;
export type ReplicaServeResult = z.infer<typeof replicaServeStoppedSchema>;
export type MapResult = z.infer<typeof mapSchema>;
export type UnmapResult = z.infer<typeof unmapSchema>;
export type DaemonListening = z.infer<typeof daemonListeningSchema>;
export type DaemonResult = z.infer<typeof daemonStoppedSchema>;
