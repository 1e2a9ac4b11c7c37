/**
 * Stored forms of data blocks (FORMAT.md "Block codecs"). A leaf entry's codec says how its
 * block is stored:
 *
 *   codec 0 (raw):  the block itself, exactly one data block long.
 *   codec 1 (zstd), codec 2 (lz4): a compressed envelope
 *       crc32c u32 of the plain block | the compressor's output (a zstd frame; an lz4 block
 *       with its length in front, as lz4-napi writes it)
 *
 * The entry's CRC32C covers the stored bytes (checked before anything is decoded); the CRC in
 * the envelope covers the plain block, checked after decompression together with its length,
 * so a decompressor fault cannot return wrong data either.
 *
 * A block is stored compressed only when that saves at least MIN_SAVING bytes: below that,
 * the CPU a read spends on decompressing costs more than the bytes saved.
 *
 * The native compressors are loaded on first use (start-up of commands that never compress
 * stays fast) and run on libuv's thread pool, off the event loop.
 */
import { DecodeError, crc32c } from './binary.js';

export const CODEC_RAW = 0;
export const CODEC_ZSTD = 1;
export const CODEC_LZ4 = 2;
/** The bits of a leaf entry's codec that name its compression (others: codec/seal.ts). */
export const CODEC_COMPRESSION = 0xff;

/** Compression of new blocks, as a volume records it. */
export type Compression = 'none' | 'zstd' | 'lz4';

export const COMPRESSIONS: readonly Compression[] = ['none', 'zstd', 'lz4'];

export const compressionCodec = (c: Compression): number =>
  c === 'zstd' ? CODEC_ZSTD : c === 'lz4' ? CODEC_LZ4 : CODEC_RAW;

export function compressionOf(codec: number): Compression {
  if (codec === CODEC_ZSTD) return 'zstd';
  if (codec === CODEC_LZ4) return 'lz4';
  if (codec === CODEC_RAW) return 'none';
  throw new DecodeError(`unknown compression ${codec}`);
}

/** Bytes of the envelope in front of compressed data. */
export const COMPRESSED_HEADER = 4;
/** A compressed block must be at least this much smaller than the plain one. */
export const MIN_SAVING = 512;
/** zstd level for new blocks (level 1–3 store the same on 4 KiB blocks; 3 is zstd's default). */
export const ZSTD_LEVEL = 3;

interface Compressor {
  compress(b: Buffer): Promise<Buffer>;
  decompress(b: Buffer): Promise<Buffer>;
  /** On this thread (lz4 only: a few microseconds for a block). */
  compressSync?(b: Buffer): Buffer;
}

const loaded = new Map<number, Promise<Compressor>>();

function compressor(codec: number): Promise<Compressor> {
  let c = loaded.get(codec);
  if (!c) {
    if (codec === CODEC_ZSTD) {
      c = import('@mongodb-js/zstd').then((z) => ({
        compress: (b: Buffer) => z.compress(b, ZSTD_LEVEL),
        decompress: (b: Buffer) => z.decompress(b),
      }));
    } else if (codec === CODEC_LZ4) {
      c = import('lz4-napi').then((l) => ({
        compress: (b: Buffer) => l.compress(b),
        decompress: (b: Buffer) => l.uncompress(b),
        compressSync: (b: Buffer) => l.compressSync(b),
      }));
    } else {
      return Promise.reject(new DecodeError(`unknown block codec ${codec}`));
    }
    loaded.set(codec, c);
  }
  return c;
}

/** How one block is stored: its bytes and codec. */
export interface StoredBlock {
  bytes: Buffer;
  codec: number;
}

/**
 * The stored form of `plain` under compression `codec`: the compressed envelope when it
 * saves at least MIN_SAVING bytes, the block itself otherwise.
 */
export async function encodeBlock(plain: Buffer, codec: number): Promise<StoredBlock> {
  if (codec === CODEC_RAW) return { bytes: plain, codec: CODEC_RAW };
  const c = await compressor(codec);
  const packed = await c.compress(plain);
  const len = COMPRESSED_HEADER + packed.length;
  if (len > plain.length - MIN_SAVING) return { bytes: plain, codec: CODEC_RAW };
  const out = Buffer.allocUnsafe(len);
  out.writeUInt32LE(crc32c(plain), 0);
  packed.copy(out, COMPRESSED_HEADER);
  return { bytes: out, codec };
}

/**
 * A quick test, on this thread, of whether a block would compress: whether lz4 saves at least
 * MIN_SAVING bytes on it. Used to notice data that compresses again after a run that did not
 * (see Compressibility), whatever the volume's codec: where lz4 saves, zstd saves too (it is
 * then tried on the block itself).
 */
export async function compressionProbe(): Promise<(plain: Buffer) => boolean> {
  const c = await compressor(CODEC_LZ4);
  const sync = c.compressSync as (b: Buffer) => Buffer;
  return (plain) => COMPRESSED_HEADER + sync(plain).length <= plain.length - MIN_SAVING;
}

/**
 * The plain block (`blockSize` bytes) of stored bytes whose CRC the caller has checked.
 * Throws DecodeError when the codec is unknown or the decoded block is not the one stored.
 */
export async function decodeBlock(
  stored: Buffer,
  codec: number,
  blockSize: number,
): Promise<Buffer> {
  if (codec === CODEC_RAW) {
    if (stored.length !== blockSize)
      throw new DecodeError(`raw block is ${stored.length} bytes, expected ${blockSize}`);
    return stored;
  }
  if (stored.length < COMPRESSED_HEADER)
    throw new DecodeError(`compressed block of ${stored.length} bytes`);
  const c = await compressor(codec);
  let plain: Buffer;
  try {
    plain = await c.decompress(stored.subarray(COMPRESSED_HEADER));
  } catch (e) {
    throw new DecodeError(
      `${compressionOf(codec)} block does not decompress: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
  if (plain.length !== blockSize)
    throw new DecodeError(
      `${compressionOf(codec)} block decompresses to ${plain.length} bytes, expected ${blockSize}`,
    );
  if (crc32c(plain) !== stored.readUInt32LE(0))
    throw new DecodeError(
      `${compressionOf(codec)} block decompresses to bytes that fail their CRC`,
    );
  return plain;
}
