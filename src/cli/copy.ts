/**
 * Volume to volume copy, for `hyper file copy` (what `rbd cp` and `qemu-img convert` do): one
 * checkpoint of the source, opened read-only, into a target volume on any store, without an
 * image file in between.
 *
 * Only mapped ranges are read (the source's extents); holes and blocks of zeros are not
 * written to a new target (it reads as zeros), and are zeroed in an existing one that holds
 * data (which stores nothing either). The target commits as it goes, like an import: an
 * interrupted or failed copy leaves it at a valid checkpoint, and the same copy run again
 * (without `create`) finishes it, since the source's checkpoint does not change.
 */
import { HyperError, isHyperError } from '../errors.js';
import type { Compression } from '../format/codec/block.js';
import type { Cipher } from '../format/codec/seal.js';
import { keyById } from '../format/keyring.js';
import {
  createSnapshot,
  diffCheckpoints,
  listSnapshots,
  type ChangedExtent,
  type SnapshotInfo,
} from '../format/volume/history.js';
import type { ObjectStore } from '../format/store/types.js';
import type {
  CheckpointInfo,
  CheckpointRef,
  CreateOptions,
  OpenOptions,
  VolumeInfo,
} from '../format/volume/types.js';
import { Volume } from '../format/volume/volume.js';
import { bytesWithExact } from './results.js';
import {
  DEFAULT_CONCURRENCY,
  EXTENT_WINDOW,
  chunkSizeFor,
  pool,
  usingVolume,
  withVolume,
  writeChunk,
  type TransferStats,
} from './transfer.js';

/** How to make the target: each setting absent is the source's. */
export interface CopyCreateOptions {
  compression?: Compression;
  /** A cipher needs `key`; 'none' makes a plain target of an encrypted source. */
  encryption?: Cipher | 'none';
  key?: Buffer;
  dedup?: boolean;
}

export interface CopyOptions {
  /** Copy this checkpoint of the source instead of its current one. */
  at?: CheckpointRef;
  /** Create the target first (it must not exist). */
  create?: CopyCreateOptions;
  /**
   * Copy the source's named snapshots too: each one's checkpoint, oldest first, as the
   * changes from the one before, named the same in the target. Into a new volume (`create`),
   * or, without it, to finish an interrupted copy of them: the target must hold the first of
   * them already, as that copy left it.
   */
  snapshots?: boolean;
  /** Take the target's lease from a live writer (it is fenced). */
  force?: boolean;
  /**
   * How both volumes are opened (how a clone's parents are reached, where the engine logs,
   * the target's lease holder and timers); the copy's own settings win.
   */
  open?: Pick<
    OpenOptions,
    'openStore' | 'logger' | 'holder' | 'leaseTtlMs' | 'flushIntervalMs' | 'headUpdateDelayMs'
  >;
  /** Bytes per read/write (rounded up to whole data blocks; default 4 MiB). */
  chunkSize?: number;
  /** Chunks in flight (default 4). */
  concurrency?: number;
  signal?: AbortSignal;
  /** Bytes of the source's address space covered so far, of its size. */
  onProgress?: (done: number, total: number) => void;
}

export interface CopyResult {
  /** The source as copied (its checkpoint). */
  source: VolumeInfo;
  /** The target after the copy. */
  target: VolumeInfo;
  created: boolean;
  stats: TransferStats;
  /** The target's checkpoint that holds the copy. */
  checkpoint: CheckpointInfo;
  /** The snapshots copied (with `snapshots`), oldest first. */
  snapshots: SnapshotInfo[];
}

/**
 * Copy one checkpoint of the volume in `from` into the volume in `to` (created first with
 * `create`). The target must be at least as large as the source; past the source's size it
 * keeps what it holds. Interrupted (the signal), it commits what was copied and fails with
 * ABORTED; nothing of the source is ever changed.
 */
export async function copyVolume(
  from: ObjectStore,
  to: ObjectStore,
  options: CopyOptions = {},
): Promise<CopyResult> {
  if (sameVolume(from.url, to.url)) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `The source and the target are the same volume (${from.url})`,
      {
        suggestion: `To bring a volume back to an older checkpoint use \`hyper snapshot restore ${from.url} --to REF\`; to copy it, give another target URL.`,
      },
    );
  }
  return withVolume(
    from,
    { ...options.open, readOnly: true, ...(options.at ? { at: options.at } : {}) },
    async (source) => {
      const info = source.info;
      let created = false;
      if (options.create) {
        await Volume.create(to, {
          ...targetLayout(info, options.create),
          ...(options.signal ? { signal: options.signal } : {}),
        });
        created = true;
      }
      const open = Volume.open(to, {
        ...options.open,
        ...(options.force ? { force: true } : {}),
      }).catch((e: unknown) => {
        throw !created && isHyperError(e, 'VOLUME_NOT_FOUND') ? missingTarget(e, to.url) : e;
      });
      return usingVolume(open, async (target) => {
        if (target.info.size < info.size) {
          throw new HyperError(
            'invalid',
            'OUT_OF_RANGE',
            `The target ${to.url} (${bytesWithExact(target.info.size)}) is smaller than the source (${bytesWithExact(info.size)})`,
            {
              suggestion: `Grow it first (\`hyper file set-len ${to.url} --size ${info.size}\`), or copy to a new volume with --create.`,
            },
          );
        }
        const snapshots: SnapshotInfo[] = [];
        // Snapshots the target held before (an interrupted copy of them being finished).
        const held = { before: 0 };
        const stats = options.snapshots
          ? await copyHistory(from, source, target, to, { ...options, created }, snapshots, held)
          : await copyInto(source, target, {
              ...options,
              // A new or empty target reads as zeros: holes and zeros need no writes there.
              zeroFill: !created && target.info.mappedBlocks > 0,
            });
        const checkpoint = await target.flush();
        if (stats.interrupted) {
          throw new HyperError(
            'unavailable',
            'ABORTED',
            `Copy interrupted after ${bytesWithExact(stats.bytesDone)} of ${bytesWithExact(info.size)}; what was copied is committed in ${to.url} as checkpoint ${checkpoint.checkpoint}`,
            {
              suggestion:
                options.snapshots && held.before + snapshots.length === 0
                  ? `No snapshot was copied yet: delete the target (\`hyper file delete ${to.url} --yes\`) and run the same copy again.`
                  : `Run the same copy again without --create${options.snapshots ? ' (with --snapshots)' : ''} to finish it.`,
            },
          );
        }
        return { source: info, target: target.info, created, stats, checkpoint, snapshots };
      });
    },
  );
}

/**
 * Copy the source's named snapshots at or before `last`'s checkpoint into `target`, oldest
 * first, then `last` itself: each step writes only what changed since the one before
 * (diffCheckpoints, from the indexes) and commits, and the snapshots of that step are named
 * after its checkpoint in the target. The target follows the source's size at each step.
 * Stops early (interrupted) when the signal fires; the caller commits.
 *
 * Into a target that was not created now, it finishes an interrupted copy: the steps whose
 * snapshots the target holds are done (a step cut short while naming its snapshots gets the
 * rest at the same checkpoint), and the next one is written as the changes since the last
 * step done, when everything the target changed since that step's checkpoint lies within
 * them (what the interrupted step wrote); otherwise, as a whole copy of it.
 */
async function copyHistory(
  from: ObjectStore,
  last: Volume,
  target: Volume,
  to: ObjectStore,
  options: CopyOptions & { created: boolean },
  copied: SnapshotInfo[],
  held: { before: number },
): Promise<TransferStats> {
  const end = last.info.checkpoint;
  const byCheckpoint = new Map<number, string[]>();
  for (const s of await listSnapshots(from)) {
    if (s.checkpoint > end) continue;
    byCheckpoint.set(s.checkpoint, [...(byCheckpoint.get(s.checkpoint) ?? []), s.name].sort());
  }
  const steps = [...new Set([...byCheckpoint.keys(), end])].sort((a, b) => a - b);
  const resume = options.created ? undefined : await resumePoint(from, to, steps, byCheckpoint);
  const first = resume?.next ?? 0;
  held.before = resume?.held ?? 0;
  // The snapshots of a step cut short while they were named.
  if (resume?.unnamed)
    for (const name of resume.unnamed.names)
      copied.push(await createSnapshot(to, name, { checkpoint: resume.unnamed.checkpoint }));
  const plans: { checkpoint: number; changes: ChangedExtent[] | 'whole' }[] = [];
  let prev = first > 0 ? steps[first - 1] : undefined;
  for (const c of steps.slice(first)) {
    let changes: ChangedExtent[] | 'whole' = await diffCheckpoints(
      from,
      prev === undefined ? null : { checkpoint: prev },
      { checkpoint: c },
      { ...(options.open?.openStore ? { openStore: options.open.openStore } : {}) },
    );
    if (resume && c === steps[first] && !(await onlyWithin(to, resume.doneAt, changes)))
      changes = 'whole';
    plans.push({ checkpoint: c, changes });
    prev = c;
  }
  const sizeOf = (p: (typeof plans)[number]): number =>
    p.changes === 'whole' ? last.info.size : p.changes.reduce((m, x) => m + x.length, 0);
  const total = plans.reduce((n, p) => n + sizeOf(p), 0);
  const stats: TransferStats = { bytesDone: 0, dataBytes: 0, zeroBytes: 0, interrupted: false };
  for (const { checkpoint, changes } of plans) {
    const source =
      checkpoint === end
        ? last
        : await Volume.open(from, { ...options.open, readOnly: true, at: { checkpoint } });
    try {
      if (target.info.size !== source.info.size)
        await target.resize(source.info.size, { allowShrink: true });
      // (The target may hold other data there: blocks of zeros are zeroed.)
      const how = {
        ...options,
        zeroFill: true,
        onProgress: (done: number) => options.onProgress?.(stats.bytesDone + done, total),
      };
      const step =
        changes === 'whole'
          ? await copyInto(source, target, how)
          : await copyRanges(source, target, changes, how);
      stats.bytesDone += step.bytesDone;
      stats.dataBytes += step.dataBytes;
      stats.zeroBytes += step.zeroBytes;
      if (step.interrupted) return { ...stats, interrupted: true };
    } finally {
      if (source !== last) await source.close();
    }
    const cp = await target.flush();
    for (const name of byCheckpoint.get(checkpoint) ?? [])
      copied.push(await createSnapshot(to, name, { checkpoint: cp.checkpoint }));
  }
  return stats;
}

/**
 * Where an interrupted copy of the snapshots stopped: the target's snapshots must be those
 * of the first steps (the last of them maybe cut short), none other. `next` is the first
 * step to write, `doneAt` the target's checkpoint of the step before it.
 */
async function resumePoint(
  from: ObjectStore,
  to: ObjectStore,
  steps: number[],
  byCheckpoint: Map<number, string[]>,
): Promise<{
  next: number;
  doneAt: number;
  held: number;
  unnamed?: { checkpoint: number; names: string[] };
}> {
  const held = new Map((await listSnapshots(to)).map((s) => [s.name, s.checkpoint]));
  const stepOf = new Map<string, number>();
  steps.forEach((c, i) => {
    for (const name of byCheckpoint.get(c) ?? []) stepOf.set(name, i);
  });
  const notAResume = (why: string): HyperError =>
    new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `${to.url} is not an interrupted copy of the snapshots of ${from.url}: ${why}`,
      {
        suggestion: `Copy into a new volume with --create --snapshots, or copy only the checkpoint (without --snapshots).`,
      },
    );
  if (held.size === 0) throw notAResume('it holds no snapshot');
  let next = 0;
  let newest = '';
  for (const name of held.keys()) {
    const i = stepOf.get(name);
    if (i === undefined)
      throw notAResume(`its snapshot ${name} is not one of the source's being copied`);
    if (i + 1 > next) [next, newest] = [i + 1, name];
  }
  for (let i = 0; i < next - 1; i++) {
    const missing = (byCheckpoint.get(steps[i] as number) ?? []).filter((n) => !held.has(n));
    if (missing.length > 0)
      throw notAResume(`it lacks snapshot ${missing[0]}, older than its ${newest}`);
  }
  const names = byCheckpoint.get(steps[next - 1] as number) ?? [];
  const doneAt = held.get(names.find((n) => held.has(n)) as string) as number;
  const unnamed = names.filter((n) => !held.has(n));
  return {
    next,
    doneAt,
    held: held.size,
    ...(unnamed.length ? { unnamed: { checkpoint: doneAt, names: unnamed } } : {}),
  };
}

/** Whether every range the volume at `to` changed since `checkpoint` lies within `ranges`. */
async function onlyWithin(
  to: ObjectStore,
  checkpoint: number,
  ranges: readonly ChangedExtent[],
): Promise<boolean> {
  const changed = await diffCheckpoints(to, { checkpoint });
  let j = 0;
  for (const c of changed) {
    let pos = c.offset;
    const stop = c.offset + c.length;
    while (pos < stop) {
      while (
        j < ranges.length &&
        (ranges[j] as ChangedExtent).offset + (ranges[j] as ChangedExtent).length <= pos
      )
        j++;
      const r = ranges[j];
      if (r === undefined || r.offset > pos) return false;
      pos = r.offset + r.length;
    }
  }
  return true;
}

/** The target is no volume, and the copy was not asked to create it. */
export function missingTarget(cause: unknown, url: string): HyperError {
  return new HyperError('not-found', 'VOLUME_NOT_FOUND', `No volume at ${url}`, {
    suggestion: 'Add --create to make the target a new volume laid out like the source.',
    cause,
  });
}

/** The create options of a target like `source`, with the settings `c` gives instead. */
function targetLayout(source: VolumeInfo, c: CopyCreateOptions): CreateOptions {
  const encryption = c.encryption ?? source.encryption;
  // The source's own cipher and key unless another cipher was asked for (with its key).
  const key =
    c.encryption === undefined && source.keyId !== undefined ? keyById(source.keyId) : c.key;
  if (encryption !== 'none' && key === undefined) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Encrypting the copy with ${encryption} needs a key`,
      {
        suggestion:
          'Give the key with --key-file (or HYPER_KEY_FILE), or copy without encryption (--encryption none).',
      },
    );
  }
  return {
    size: source.size,
    dataBlockSize: source.dataBlockSize,
    metaBlockSize: source.metaBlockSize,
    segmentSize: source.segmentSize,
    compression: c.compression ?? source.compression,
    ...(encryption === 'none' ? {} : { encryption, key }),
    ...((c.dedup ?? source.dedup) ? { dedup: true } : {}),
  };
}

/** Whether two store URLs name the same volume (trailing slashes aside). */
function sameVolume(a: string, b: string): boolean {
  const norm = (u: string): string => u.replace(/\/+$/, '');
  return norm(a) === norm(b);
}

/**
 * Copy every byte of `source` into `target` at the same offsets: mapped ranges are read in
 * chunks with several in flight; holes and blocks of zeros are skipped, or zeroed with
 * `zeroFill`. Stops taking chunks when the signal fires (those in flight complete); the
 * caller flushes.
 */
async function copyInto(
  source: Volume,
  target: Volume,
  options: CopyOptions & { zeroFill: boolean },
): Promise<TransferStats> {
  const size = source.info.size;
  // Progress: holes skipped (nothing to write) and the bytes of the ranges copied.
  let skipped = 0;
  let copied = 0;
  async function* ranges(): AsyncGenerator<Range> {
    for (let win = 0; win < size; win += EXTENT_WINDOW) {
      for (const ext of await source.extents(win, Math.min(EXTENT_WINDOW, size - win))) {
        if (!ext.hole) yield { offset: ext.offset, length: ext.length, zero: false };
        else if (options.zeroFill) yield { offset: ext.offset, length: ext.length, zero: true };
        else {
          // Nothing to write: counted as done.
          skipped += ext.length;
          options.onProgress?.(skipped + copied, size);
        }
      }
    }
  }
  const stats = await copyRanges(source, target, ranges(), {
    ...options,
    onProgress: (done) => {
      copied = done;
      options.onProgress?.(skipped + copied, size);
    },
  });
  return { ...stats, bytesDone: stats.bytesDone + skipped, zeroBytes: stats.zeroBytes + skipped };
}

/** A range of the address space to copy: the source's bytes, or zeros. */
interface Range {
  offset: number;
  length: number;
  zero: boolean;
}

/**
 * Write `ranges` (ascending) of `source` into `target`: zero ranges with writeZeroes, the
 * others read in chunks with several in flight (blocks of zeros in them skipped, or zeroed
 * with `zeroFill`). Stops taking chunks when the signal fires (those in flight complete);
 * `onProgress` gets the bytes done of these ranges.
 */
async function copyRanges(
  source: Volume,
  target: Volume,
  ranges: AsyncIterable<Range> | Iterable<Range>,
  options: CopyOptions & { zeroFill: boolean },
): Promise<TransferStats> {
  const blockSize = source.info.dataBlockSize;
  const chunk = chunkSizeFor({
    blockSize,
    ...(options.chunkSize ? { chunkSize: options.chunkSize } : {}),
  });
  const stats: TransferStats = { bytesDone: 0, dataBytes: 0, zeroBytes: 0, interrupted: false };
  async function* pieces(): AsyncGenerator<Range> {
    for await (const r of ranges) {
      if (r.zero) yield r;
      else
        for (let off = r.offset; off < r.offset + r.length; off += chunk)
          yield { offset: off, length: Math.min(chunk, r.offset + r.length - off), zero: false };
    }
  }
  const complete = await pool(
    pieces(),
    options.concurrency ?? DEFAULT_CONCURRENCY,
    async ({ offset, length, zero }) => {
      if (zero) {
        await target.writeZeroes(offset, length);
        stats.zeroBytes += length;
      } else {
        const buf = await source.read(offset, length);
        await writeChunk(target, offset, buf, { blockSize, zeroFill: options.zeroFill }, stats);
      }
      stats.bytesDone += length;
      options.onProgress?.(stats.bytesDone, 0);
    },
    options.signal,
  );
  stats.interrupted = !complete;
  return stats;
}
