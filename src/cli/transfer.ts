/**
 * Copying raw images into and out of volumes, for `file import` and `file export` (and the
 * chunked, zero-skipping writes of `file copy`, copy.ts).
 *
 * Both directions move large chunks (4 MiB by default) with several in flight, skip zeros at
 * data-block granularity (import writes no all-zero blocks; export leaves holes in a sparse
 * file), report progress, and stop taking new work when the AbortSignal fires: chunks already
 * in flight complete, so the caller can commit (import) or discard (export) a whole state.
 * `exportToImageFile` is a whole export: the image appears complete and synced, or not at all.
 */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { lstat, open, readFile, rename, stat, unlink, type FileHandle } from 'node:fs/promises';
import { promisify } from 'node:util';
import { basename, dirname, join } from 'node:path';
import { HyperError, toHyperError } from '../errors.js';
import type { ObjectStore } from '../format/store/types.js';
import {
  MiB,
  type CheckpointRef,
  type OpenOptions,
  type VolumeInfo,
} from '../format/volume/types.js';
import { streamSink } from '../format/volume/diff-stream.js';
import { Volume } from '../format/volume/volume.js';
import { bytesWithExact } from './results.js';

const execFileAsync = promisify(execFile);

export const DEFAULT_CHUNK_SIZE = 4 * MiB;
export const DEFAULT_CONCURRENCY = 4;
/** Extents are asked for in windows of this many bytes, so a huge sparse volume streams. */
export const EXTENT_WINDOW = 16 * 1024 * MiB;

export interface TransferOptions {
  /** Bytes per read/write request (rounded up to a multiple of the block size). */
  chunkSize?: number;
  /** Chunks in flight. */
  concurrency?: number;
  /** Zeros are detected per block of this size (the volume's data block size). */
  blockSize: number;
  signal?: AbortSignal;
  /** Called after each chunk with the bytes of the image covered so far. */
  onProgress?: (done: number, total: number) => void;
}

export interface TransferStats {
  /** Bytes of the image covered (data and zeros). */
  bytesDone: number;
  /** Bytes of data actually copied (not zero). */
  dataBytes: number;
  /** Bytes skipped because they were zeros or holes. */
  zeroBytes: number;
  /** True when the signal stopped the copy before the end. */
  interrupted: boolean;
}

/** Open a volume, run `fn`, and close it; a close failure never hides an earlier error. */
export function withVolume<R>(
  store: ObjectStore,
  options: OpenOptions,
  fn: (volume: Volume) => Promise<R>,
): Promise<R> {
  return usingVolume(Volume.open(store, options), fn);
}

/** Run `fn` on the volume `opening` gives, and close it (as withVolume). */
export async function usingVolume<R>(
  opening: Promise<Volume>,
  fn: (volume: Volume) => Promise<R>,
): Promise<R> {
  const volume = await opening;
  let result: R;
  try {
    result = await fn(volume);
  } catch (e) {
    await volume.close().catch(() => undefined);
    throw e;
  }
  await volume.close();
  return result;
}

/**
 * Run `work` on each item of `items` with at most `concurrency` in flight. Stops taking items
 * when the signal fires or a task fails; waits for the tasks in flight; rethrows the first
 * failure. Returns true when every item was processed.
 */
export async function pool<T>(
  items: AsyncIterable<T> | Iterable<T>,
  concurrency: number,
  work: (item: T) => Promise<void>,
  signal?: AbortSignal,
): Promise<boolean> {
  const iterator =
    Symbol.asyncIterator in items
      ? (items as AsyncIterable<T>)[Symbol.asyncIterator]()
      : (items as Iterable<T>)[Symbol.iterator]();
  let failed = false;
  let firstError: unknown;
  let exhausted = false;
  const worker = async (): Promise<void> => {
    while (!failed && !exhausted && !signal?.aborted) {
      try {
        const next = await iterator.next();
        if (next.done) {
          exhausted = true;
          return;
        }
        await work(next.value);
      } catch (e) {
        if (!failed) firstError = e;
        failed = true;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, concurrency) }, () => worker()));
  if (failed) {
    await Promise.resolve(iterator.return?.()).catch(() => undefined);
    throw firstError;
  }
  if (!exhausted) {
    // Interrupted: was anything left? (The signal may fire just after the last item.)
    const next = await iterator.next();
    exhausted = next.done === true;
    await Promise.resolve(iterator.return?.()).catch(() => undefined);
  }
  return exhausted;
}

/** Runs of whole blocks in `buf` that are all zeros or not, in order. */
export function* zeroRuns(
  buf: Buffer,
  blockSize: number,
): Generator<{ start: number; end: number; zero: boolean }> {
  const zeros = zeroBuffer(blockSize);
  let runStart = 0;
  let runZero: boolean | undefined;
  for (let i = 0; i < buf.length; i += blockSize) {
    const end = Math.min(i + blockSize, buf.length);
    const zero = buf.compare(zeros, 0, end - i, i, end) === 0;
    if (runZero === undefined) runZero = zero;
    else if (zero !== runZero) {
      yield { start: runStart, end: i, zero: runZero };
      runStart = i;
      runZero = zero;
    }
  }
  if (runZero !== undefined) yield { start: runStart, end: buf.length, zero: runZero };
}

let zeroCache = Buffer.alloc(0);
function zeroBuffer(n: number): Buffer {
  if (zeroCache.length < n) zeroCache = Buffer.alloc(n);
  return zeroCache;
}

export function chunkSizeFor(options: TransferOptions): number {
  const want = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
  return Math.max(options.blockSize, Math.ceil(want / options.blockSize) * options.blockSize);
}

/**
 * Copy `size` bytes of the image `file` to the volume from offset 0. Blocks of zeros are not
 * written; when `zeroFill` is set (the volume may hold older data) they are zeroed with
 * writeZeroes, which stores nothing. The last partial sector is padded with zeros.
 * The caller flushes: everything copied before an interruption is then committed at once.
 */
export async function importImage(
  file: FileHandle,
  size: number,
  volume: Volume,
  options: TransferOptions & { zeroFill: boolean },
): Promise<TransferStats> {
  const chunk = chunkSizeFor(options);
  const stats: TransferStats = { bytesDone: 0, dataBytes: 0, zeroBytes: 0, interrupted: false };
  function* offsets(): Generator<number> {
    for (let off = 0; off < size; off += chunk) yield off;
  }
  const complete = await pool(
    offsets(),
    options.concurrency ?? DEFAULT_CONCURRENCY,
    async (off) => {
      const len = Math.min(chunk, size - off);
      // Pad to a whole sector; a fresh buffer per chunk, since the volume may keep it.
      const buf = Buffer.alloc(Math.ceil(len / 512) * 512);
      let got = 0;
      while (got < len) {
        const { bytesRead } = await file.read(buf, got, len - got, off + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      await writeChunk(volume, off, buf, options, stats);
      stats.bytesDone += len;
      options.onProgress?.(stats.bytesDone, size);
    },
    options.signal,
  );
  stats.interrupted = !complete;
  return stats;
}

/**
 * Write one chunk of an image into the volume: runs of zero blocks are skipped (or written
 * as zeroes with `zeroFill`), the rest written as data; counted in `stats`.
 */
export async function writeChunk(
  volume: Volume,
  off: number,
  buf: Buffer,
  options: TransferOptions & { zeroFill: boolean },
  stats: TransferStats,
): Promise<void> {
  for (const run of zeroRuns(buf, options.blockSize)) {
    const n = run.end - run.start;
    if (run.zero) {
      if (options.zeroFill) await volume.writeZeroes(off + run.start, n);
      stats.zeroBytes += n;
    } else {
      await volume.write(off + run.start, buf.subarray(run.start, run.end));
      stats.dataBytes += n;
    }
  }
}

/**
 * Copy the whole volume into `file`, which the caller has truncated to the volume size (so
 * it is sparse): holes reported by `extents` are not read, and blocks of zeros inside data
 * extents are not written.
 */
export async function exportImage(
  volume: Volume,
  file: FileHandle,
  options: TransferOptions & { writeZeros?: boolean },
): Promise<TransferStats> {
  const size = volume.info.size;
  const chunk = chunkSizeFor(options);
  const stats: TransferStats = { bytesDone: 0, dataBytes: 0, zeroBytes: 0, interrupted: false };
  const report = (n: number): void => {
    stats.bytesDone += n;
    options.onProgress?.(stats.bytesDone, size);
  };
  async function* pieces(): AsyncGenerator<{ offset: number; length: number }> {
    for (let win = 0; win < size; win += EXTENT_WINDOW) {
      const winLen = Math.min(EXTENT_WINDOW, size - win);
      for (const ext of await volume.extents(win, winLen)) {
        if (ext.hole && !options.writeZeros) {
          stats.zeroBytes += ext.length;
          report(ext.length);
          continue;
        }
        const end = ext.offset + ext.length;
        for (let off = ext.offset; off < end; off += chunk) {
          yield { offset: off, length: Math.min(chunk, end - off) };
        }
      }
    }
  }
  const complete = await pool(
    pieces(),
    options.concurrency ?? DEFAULT_CONCURRENCY,
    async ({ offset, length }) => {
      const buf = await volume.read(offset, length);
      for (const run of zeroRuns(buf, options.blockSize)) {
        const n = run.end - run.start;
        if (run.zero) {
          stats.zeroBytes += n;
          // A device (not a fresh sparse file) may hold old data there: overwrite it.
          if (!options.writeZeros) continue;
        } else {
          stats.dataBytes += n;
        }
        let written = 0;
        while (written < n) {
          const { bytesWritten } = await file.write(
            buf,
            run.start + written,
            n - written,
            offset + run.start + written,
          );
          written += bytesWritten;
        }
      }
      report(length);
    },
    options.signal,
  );
  stats.interrupted = !complete;
  return stats;
}

/** Refuse a `path` that is not a regular file, or that exists unless `overwrite` is set. */
async function checkImageTarget(
  path: string,
  options: { overwrite?: boolean } = {},
): Promise<void> {
  const existing = await stat(path).catch(() => undefined);
  if (existing?.isBlockDevice()) {
    if (!options.overwrite) {
      throw new HyperError(
        'conflict',
        'OBJECT_EXISTS',
        `${JSON.stringify(path)} is a block device: exporting overwrites its contents`,
        { suggestion: 'Add --overwrite to write the volume onto the device.' },
      );
    }
    return;
  }
  const link = await lstat(path).catch(() => undefined);
  if (link && !link.isFile()) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `${JSON.stringify(path)} exists and is not a regular file`,
      {
        suggestion: 'Export to a regular file path.',
      },
    );
  }
  if (existing && !options.overwrite) {
    throw new HyperError(
      'conflict',
      'OBJECT_EXISTS',
      `The image file ${JSON.stringify(path)} already exists`,
      {
        suggestion: 'Add --overwrite to replace it, or choose another path.',
      },
    );
  }
}

export interface ExportFileOptions extends Omit<TransferOptions, 'blockSize'> {
  /** Export this checkpoint instead of the current one. */
  at?: CheckpointRef;
  /** Replace an existing image file. */
  overwrite?: boolean;
}

/**
 * Export the volume in `store` (opened read-only: no lease, nothing written) to the sparse raw
 * image `path`, as large as the volume. `path` is checked before the volume is opened. The
 * image is written under a temporary name in the same directory, synced to disk and renamed
 * over `path` only when complete, so a failed or interrupted export (ABORTED) leaves no
 * partial file, and an image it would replace intact.
 */
export async function exportToImageFile(
  store: ObjectStore,
  path: string,
  options: ExportFileOptions = {},
): Promise<{ info: VolumeInfo; stats: TransferStats }> {
  const { at, overwrite, ...transfer } = options;
  await checkImageTarget(path, { overwrite });
  const device = await blockDeviceSize(path);
  return withVolume(store, { readOnly: true, ...(at ? { at } : {}) }, async (volume) => {
    const info = volume.info;
    if (device !== undefined) {
      // A block device is written in place (no temporary file, no rename), zeros included.
      if (device < info.size) {
        throw new HyperError(
          'invalid',
          'OUT_OF_RANGE',
          `The device ${path} (${bytesWithExact(device)}) is smaller than the volume (${bytesWithExact(info.size)})`,
          { suggestion: 'Export to a device at least as large as the volume, or to a file.' },
        );
      }
      // Exclusively (O_EXCL on a device, as mkfs opens one): the kernel refuses a device that
      // is mounted or held by another program, which this would write under (DEVICE_BUSY).
      const dev = await open(path, constants.O_RDWR | constants.O_EXCL).catch((e: unknown) => {
        throw toHyperError(e);
      });
      try {
        const stats = await exportImage(volume, dev, {
          ...transfer,
          blockSize: info.dataBlockSize,
          writeZeros: true,
        });
        if (stats.interrupted) {
          throw new HyperError(
            'unavailable',
            'ABORTED',
            `Export interrupted after ${bytesWithExact(stats.bytesDone)} of ${bytesWithExact(info.size)}; the device ${path} holds a partial copy.`,
          );
        }
        await dev.sync();
        return { info, stats };
      } finally {
        await dev.close();
      }
    }
    const temp = join(dirname(path), `.${basename(path)}.hyper-${process.pid}.partial`);
    const file = await open(temp, 'wx');
    let done = false;
    try {
      await file.truncate(info.size);
      const stats = await exportImage(volume, file, { ...transfer, blockSize: info.dataBlockSize });
      if (stats.interrupted) {
        throw new HyperError(
          'unavailable',
          'ABORTED',
          `Export interrupted after ${bytesWithExact(stats.bytesDone)} of ${bytesWithExact(info.size)}; no image was written.`,
        );
      }
      await file.sync();
      await file.close();
      await rename(temp, path);
      done = true;
      return { info, stats };
    } finally {
      if (!done) {
        await file.close().catch(() => undefined);
        await unlink(temp).catch(() => undefined);
      }
    }
  });
}

/**
 * The size of an image to import: a regular file's size, or a block device's (from
 * /sys/dev/block/MAJ:MIN/size, else `blockdev --getsize64`). Anything else is a usage error
 * naming the path.
 */
export async function imageSize(path: string): Promise<number> {
  let st;
  try {
    st = await stat(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Cannot read image ${JSON.stringify(path)}: ${code === 'ENOENT' ? 'no such file' : String(code ?? e)}`,
      { cause: e },
    );
  }
  if (st.isBlockDevice()) return (await blockDeviceSize(path))!;
  if (!st.isFile()) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Image ${JSON.stringify(path)} is not a regular file or a block device`,
      {
        suggestion: 'Give the path of a raw image file or a block device, or - for stdin.',
      },
    );
  }
  return st.size;
}

/** @deprecated kept for callers of the old name: see imageSize. */
export const regularFileSize = imageSize;

/**
 * The size in bytes of the block device at `path`, or undefined when it is not one. Node has
 * no ioctl (BLKGETSIZE64) and no lseek(SEEK_END): the kernel's sysfs entry gives the size in
 * 512-byte sectors; `blockdev --getsize64` is the fallback.
 */
export async function blockDeviceSize(path: string): Promise<number | undefined> {
  const st = await stat(path).catch(() => undefined);
  if (!st?.isBlockDevice()) return undefined;
  const rdev = st.rdev;
  const major = Math.floor(rdev / 256) & 0xfff;
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 4096) & ~0xff) >>> 0);
  try {
    const sectors = Number(
      (await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim(),
    );
    if (Number.isSafeInteger(sectors) && sectors >= 0) return sectors * 512;
  } catch {
    // no sysfs (a container without it): ask blockdev
  }
  try {
    const { stdout } = await execFileAsync('blockdev', ['--getsize64', path]);
    const n = Number(stdout.trim());
    if (Number.isSafeInteger(n) && n >= 0) return n;
  } catch (e) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Cannot tell the size of the block device ${path}: ${(e as Error).message}`,
      {
        suggestion: 'Run as a user who may read the device, or copy it to an image file first.',
        cause: e,
      },
    );
  }
  throw new HyperError(
    'invalid',
    'INVALID_ARGUMENT',
    `Cannot tell the size of the block device ${path}`,
  );
}

/**
 * Copy a stream (stdin) to the volume from offset 0, at most `limit` bytes (the volume size;
 * more is OUT_OF_RANGE). Chunks are read in order and written with several in flight; zeros
 * are skipped as by importImage. Returns the stats; `bytesDone` is the stream's length.
 */
export async function importStream(
  input: AsyncIterable<Buffer | string>,
  limit: number,
  volume: Volume,
  options: TransferOptions & { zeroFill: boolean },
): Promise<TransferStats> {
  const chunk = chunkSizeFor(options);
  const stats: TransferStats = { bytesDone: 0, dataBytes: 0, zeroBytes: 0, interrupted: false };
  async function* chunks(): AsyncGenerator<{ off: number; buf: Buffer; len: number }> {
    let parts: Buffer[] = [];
    let have = 0;
    let off = 0;
    const emit = (len: number): { off: number; buf: Buffer; len: number } => {
      const all = Buffer.concat(parts, have);
      // Pad to a whole sector; a fresh buffer per chunk, since the volume may keep it.
      const buf = Buffer.alloc(Math.ceil(len / 512) * 512);
      all.copy(buf, 0, 0, len);
      parts = len < have ? [all.subarray(len)] : [];
      have -= len;
      const at = off;
      off += len;
      if (at + len > limit) {
        throw new HyperError(
          'invalid',
          'OUT_OF_RANGE',
          `The input is larger than the volume (${bytesWithExact(limit)})`,
          {
            suggestion:
              'Grow the volume first (hyper file set-len URL --size SIZE), or give a larger --size with --create.',
          },
        );
      }
      return { off: at, buf, len };
    };
    for await (const piece of input) {
      const b = typeof piece === 'string' ? Buffer.from(piece) : piece;
      parts.push(b);
      have += b.length;
      while (have >= chunk) yield emit(chunk);
    }
    if (have > 0) yield emit(have);
  }
  const complete = await pool(
    chunks(),
    options.concurrency ?? DEFAULT_CONCURRENCY,
    async ({ off, buf, len }) => {
      await writeChunk(volume, off, buf, options, stats);
      stats.bytesDone += len;
      options.onProgress?.(stats.bytesDone, limit);
    },
    options.signal,
  );
  stats.interrupted = !complete;
  return stats;
}

/**
 * Write the whole volume to a stream (stdout) in order: reads run ahead with several in
 * flight, writes wait for the stream to drain. Holes are written as zeros (a stream has no
 * holes). The caller opens the volume read-only.
 */
export async function exportStream(
  volume: Volume,
  output: NodeJS.WritableStream,
  options: TransferOptions,
): Promise<TransferStats> {
  const size = volume.info.size;
  const chunk = chunkSizeFor(options);
  const depth = Math.max(1, options.concurrency ?? DEFAULT_CONCURRENCY);
  const stats: TransferStats = { bytesDone: 0, dataBytes: 0, zeroBytes: 0, interrupted: false };
  const queue: Promise<Buffer>[] = [];
  let next = 0;
  const fill = (): void => {
    while (queue.length < depth && next < size) {
      const len = Math.min(chunk, size - next);
      const p = volume.read(next, len);
      p.catch(() => undefined); // awaited in order below
      queue.push(p);
      next += len;
    }
  };
  const write = streamSink(output);
  fill();
  while (queue.length > 0) {
    if (options.signal?.aborted) {
      stats.interrupted = true;
      await Promise.allSettled(queue);
      break;
    }
    const buf = await queue.shift()!;
    fill();
    for (const run of zeroRuns(buf, options.blockSize)) {
      if (run.zero) stats.zeroBytes += run.end - run.start;
      else stats.dataBytes += run.end - run.start;
    }
    await write(buf);
    stats.bytesDone += buf.length;
    options.onProgress?.(stats.bytesDone, size);
  }
  return stats;
}
