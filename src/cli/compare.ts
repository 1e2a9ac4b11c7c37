/**
 * Content comparison, for `hyper file compare` (what `qemu-img compare` and `cmp` do): a
 * checkpoint of a volume against another volume's or a raw image's content, to verify a copy,
 * an import, an export or a backup.
 *
 * Ranges that both sides report as holes are not read. Everything else is read in chunks
 * (4 MiB by default, several in flight, in order of offset) and compared; the first chunk that
 * differs stops the comparison at its first differing byte. Sides of different sizes compare
 * as if the shorter one went on with zeros: its tail must read as zeros.
 */
import { open } from 'node:fs/promises';
import { HyperError } from '../errors.js';
import type { Extent } from '../format/volume/types.js';
import type { Volume } from '../format/volume/volume.js';
import {
  DEFAULT_CHUNK_SIZE,
  DEFAULT_CONCURRENCY,
  EXTENT_WINDOW,
  imageSize,
  pool,
} from './transfer.js';

/** One side of a comparison. */
export interface CompareSide {
  readonly size: number;
  read(offset: number, length: number): Promise<Buffer>;
  /** Data and holes of [offset, offset + length), within the size; absent: all data. */
  extents?(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}

/** A volume (opened by the caller, closed with the side). */
export function volumeSide(v: Volume): CompareSide {
  return {
    size: v.info.size,
    read: (o, n) => v.read(o, n),
    extents: (o, n) => v.extents(o, n),
    close: () => v.close(),
  };
}

/** A raw image file or block device, read-only. */
export async function imageSide(path: string): Promise<CompareSide> {
  const size = await imageSize(path);
  const fh = await open(path, 'r');
  return {
    size,
    async read(offset, length) {
      const buf = Buffer.alloc(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(buf, got, length - got, offset + got);
        if (bytesRead === 0) {
          throw new HyperError(
            'unavailable',
            'IO_ERROR',
            `${JSON.stringify(path)} ended at ${offset + got} bytes while being compared (it was ${size})`,
            { suggestion: 'Compare an image that nothing writes to meanwhile.' },
          );
        }
        got += bytesRead;
      }
      return buf;
    },
    close: () => fh.close(),
  };
}

export interface CompareOptions {
  chunkSize?: number;
  concurrency?: number;
  signal?: AbortSignal;
  /** Bytes of the compared range (the larger size) covered so far, of it. */
  onProgress?: (done: number, total: number) => void;
}

export interface CompareStats {
  /** Whether every byte matched (the shorter side padded with zeros). */
  identical: boolean;
  /** The first offset whose bytes differ, when not identical. */
  firstDifference: number | undefined;
  /** Bytes read and compared on both sides (holes of both are not read). */
  comparedBytes: number;
  /** Stopped by the signal before a difference or the end. */
  interrupted: boolean;
}

/** Compare `a` with `b` byte for byte (see the module comment). */
export async function compareSides(
  a: CompareSide,
  b: CompareSide,
  options: CompareOptions = {},
): Promise<CompareStats> {
  const total = Math.max(a.size, b.size);
  const chunk = Math.max(512, options.chunkSize ?? DEFAULT_CHUNK_SIZE);
  let covered = 0;
  let comparedBytes = 0;
  let first: number | undefined;
  const found = new AbortController();
  const stop = options.signal ? AbortSignal.any([options.signal, found.signal]) : found.signal;
  const report = (n: number): void => {
    covered += n;
    options.onProgress?.(covered, total);
  };
  async function* pieces(): AsyncGenerator<{ offset: number; length: number }> {
    for (let win = 0; win < total; win += EXTENT_WINDOW) {
      const end = Math.min(total, win + EXTENT_WINDOW);
      const data = unionOfData(await dataIn(a, win, end), await dataIn(b, win, end));
      let at = win;
      for (const [lo, hi] of data) {
        if (lo > at) report(lo - at);
        for (let off = lo; off < hi; off += chunk)
          yield { offset: off, length: Math.min(chunk, hi - off) };
        at = hi;
      }
      if (end > at) report(end - at);
    }
  }
  const complete = await pool(
    pieces(),
    options.concurrency ?? DEFAULT_CONCURRENCY,
    async ({ offset, length }) => {
      const [x, y] = await Promise.all([
        readPadded(a, offset, length),
        readPadded(b, offset, length),
      ]);
      comparedBytes += length;
      if (!x.equals(y)) {
        let k = 0;
        while (x[k] === y[k]) k++;
        // Chunks are taken in order: those before this one are all in flight or done.
        if (first === undefined || offset + k < first) first = offset + k;
        found.abort();
      }
      report(length);
    },
    stop,
  );
  return {
    identical: first === undefined && complete,
    firstDifference: first,
    comparedBytes,
    interrupted: first === undefined && !complete,
  };
}

/** `length` bytes of `side` at `offset`, zeros past its size. */
async function readPadded(side: CompareSide, offset: number, length: number): Promise<Buffer> {
  const have = Math.max(0, Math.min(length, side.size - offset));
  if (have === length) return side.read(offset, length);
  const out = Buffer.alloc(length);
  if (have > 0) (await side.read(offset, have)).copy(out);
  return out;
}

/** The ranges of [lo, hi) where `side` may hold data (past its size: none). */
async function dataIn(side: CompareSide, lo: number, hi: number): Promise<[number, number][]> {
  const end = Math.min(hi, side.size);
  if (end <= lo) return [];
  if (!side.extents) return [[lo, end]];
  return (await side.extents(lo, end - lo))
    .filter((e) => !e.hole)
    .map((e): [number, number] => [e.offset, e.offset + e.length]);
}

/** The union of two sorted lists of ranges, sorted and merged. */
export function unionOfData(
  x: readonly [number, number][],
  y: readonly [number, number][],
): [number, number][] {
  const all = [...x, ...y].sort((p, q) => p[0] - q[0]);
  const out: [number, number][] = [];
  for (const [lo, hi] of all) {
    const last = out[out.length - 1];
    if (last && lo <= last[1]) last[1] = Math.max(last[1], hi);
    else out.push([lo, hi]);
  }
  return out;
}
