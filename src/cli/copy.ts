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
import type { ObjectStore } from '../format/store/types.js';
import type {
  CheckpointInfo,
  CheckpointRef,
  CreateOptions,
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
  /** Take the target's lease from a live writer (it is fenced). */
  force?: boolean;
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
    { readOnly: true, ...(options.at ? { at: options.at } : {}) },
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
      const open = Volume.open(to, options.force ? { force: true } : {}).catch((e: unknown) => {
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
        const stats = await copyInto(source, target, {
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
            { suggestion: 'Run the same copy again without --create to finish it.' },
          );
        }
        return { source: info, target: target.info, created, stats, checkpoint };
      });
    },
  );
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
  const blockSize = source.info.dataBlockSize;
  const chunk = chunkSizeFor({
    blockSize,
    ...(options.chunkSize ? { chunkSize: options.chunkSize } : {}),
  });
  const stats: TransferStats = { bytesDone: 0, dataBytes: 0, zeroBytes: 0, interrupted: false };
  const report = (n: number): void => {
    stats.bytesDone += n;
    options.onProgress?.(stats.bytesDone, size);
  };
  async function* pieces(): AsyncGenerator<{ offset: number; length: number; hole: boolean }> {
    for (let win = 0; win < size; win += EXTENT_WINDOW) {
      for (const ext of await source.extents(win, Math.min(EXTENT_WINDOW, size - win))) {
        if (ext.hole) {
          if (options.zeroFill) yield { offset: ext.offset, length: ext.length, hole: true };
          else {
            stats.zeroBytes += ext.length;
            report(ext.length);
          }
          continue;
        }
        const end = ext.offset + ext.length;
        for (let off = ext.offset; off < end; off += chunk)
          yield { offset: off, length: Math.min(chunk, end - off), hole: false };
      }
    }
  }
  const complete = await pool(
    pieces(),
    options.concurrency ?? DEFAULT_CONCURRENCY,
    async ({ offset, length, hole }) => {
      if (hole) {
        await target.writeZeroes(offset, length);
        stats.zeroBytes += length;
      } else {
        const buf = await source.read(offset, length);
        await writeChunk(target, offset, buf, { blockSize, zeroFill: options.zeroFill }, stats);
      }
      report(length);
    },
    options.signal,
  );
  stats.interrupted = !complete;
  return stats;
}
