/**
 * Stored forms of data blocks (FORMAT.md "Block codecs"). A leaf entry's codec says how its
 * block is stored:
 *
 *   codec 0 (raw):  the block itself, exactly one data block long.
 *   codec 1 (zstd), codec 2 (lz4): a compressed envelope
 *       crc32c u32 of the plain block | the compressor's output: a zstd frame, or the plain
 *       block's length (u32 LE) then an LZ4 block (LZ4's block format, no frame)
 *
 * The entry's CRC32C covers the stored bytes (checked before anything is decoded); the CRC in
 * the envelope covers the plain block, checked after decompression together with its length,
 * so a decompressor fault cannot return wrong data either.
 *
 * A block is stored compressed only when that saves at least MIN_SAVING bytes: below that,
 * the CPU a read spends on decompressing costs more than the bytes saved.
 *
 * The native compressors are loaded on first use (start-up of commands that never compress
 * stays fast). zstd runs on libuv's thread pool, off the event loop; lz4 on this thread, as
 * LZ4's own C library takes 1-7 µs for a 4 KiB block, less than a hand-off to the pool.
 */
import { DecodeError, crc32c } from './binary.js';
import type * as Lz4 from 'lz4';

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
  /**
   * The compressor's output for `b` when it is at most `limit` bytes, else undefined
   * (lz4 gives up as soon as it passes the limit: incompressible data costs little).
   */
  compress(b: Buffer, limit: number): Buffer | undefined | Promise<Buffer | undefined>;
  /** The plain block, `size` bytes, decoded into `into` where the compressor can. */
  decompress(b: Buffer, size: number, into?: Buffer): Buffer | Promise<Buffer>;
}

/** Bytes in front of an lz4 block: the plain block's length. */
const LZ4_LENGTH = 4;

/**
 * The lz4 binding, imported once: every later use awaits this settled promise. (An import()
 * per use costs a trip through the module loader each time, a thread of its own under a
 * loader hook, which also made seeded test runs depend on real time.)
 */
let lz4Module: Promise<typeof Lz4> | undefined;
const loadLz4 = (): Promise<typeof Lz4> => (lz4Module ??= import('lz4'));

async function lz4Compressor(): Promise<Compressor> {
  const lz4 = await loadLz4();
  // One scratch buffer for every block compressed on this thread (each is copied out).
  let scratch = Buffer.alloc(0);
  return {
    compress(b, limit) {
      if (limit <= LZ4_LENGTH) return undefined;
      if (scratch.length < limit) scratch = Buffer.allocUnsafe(Math.max(limit, 64 * 1024));
      // Room for `limit` bytes of output in all: 0 when the block does not fit (or is empty).
      const n = lz4.encodeBlock(b, scratch, LZ4_LENGTH, limit);
      if (n <= 0) return undefined;
      const out = Buffer.allocUnsafe(LZ4_LENGTH + n);
      out.writeUInt32LE(b.length, 0);
      scratch.copy(out, LZ4_LENGTH, LZ4_LENGTH, LZ4_LENGTH + n);
      return out;
    },
    decompress(b, size, into) {
      if (b.length < LZ4_LENGTH) throw new Error(`${b.length} bytes, no length`);
      const length = b.readUInt32LE(0);
      if (length !== size) throw new Error(`its length says ${length} bytes`);
      const plain = into?.length === size ? into : Buffer.allocUnsafe(size);
      // (A negative count: the input is malformed at that offset; the output is bounded.)
      const n = size === 0 ? 0 : lz4.decodeBlock(b, plain, LZ4_LENGTH, b.length);
      if (n !== size) throw new Error(n < 0 ? `malformed at byte ${-n}` : `${n} bytes`);
      return plain;
    },
  };
}

const loaded = new Map<number, Promise<Compressor>>();
/** The compressors loaded by now (decodeBlockNow uses them on this thread). */
const ready = new Map<number, Compressor>();

function compressor(codec: number): Promise<Compressor> {
  let c = loaded.get(codec);
  if (!c) {
    if (codec === CODEC_ZSTD) {
      c = import('@mongodb-js/zstd').then((z) => ({
        compress: async (b: Buffer, limit: number) => {
          const packed = await z.compress(b, ZSTD_LEVEL);
          return packed.length <= limit ? packed : undefined;
        },
        decompress: (b: Buffer) => z.decompress(b),
      }));
    } else if (codec === CODEC_LZ4) {
      c = lz4Compressor();
      void c.then((x) => ready.set(codec, x));
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
  const packed = await c.compress(plain, plain.length - MIN_SAVING - COMPRESSED_HEADER);
  if (packed === undefined) return { bytes: plain, codec: CODEC_RAW };
  const out = Buffer.allocUnsafe(COMPRESSED_HEADER + packed.length);
  out.writeUInt32LE(crc32c(plain), 0);
  packed.copy(out, COMPRESSED_HEADER);
  return { bytes: out, codec };
}

/** Bytes of each slab a BlockPacker stores blocks in. */
const PACK_SLAB = 1024 * 1024;

/** Compresses the new blocks of one segment build with lz4, on this thread. */
export interface BlockPacker {
  /** The stored form of `plain`, as encodeBlock() gives it. */
  pack(plain: Buffer): StoredBlock;
  /** Bytes of the slabs allocated so far (held while any block packed in them is). */
  readonly slabBytes: number;
}

/**
 * lz4 blocks packed back to back in slabs of PACK_SLAB, compressed in place: a slab
 * allocation per MiB rather than two buffers and two copies per block. Blocks that sit back
 * to back are sent by the segment builder as they are (GATHER_MIN), not copied again into
 * the segment. Stores what encodeBlock(plain, CODEC_LZ4) stores.
 */
export async function lz4Packer(): Promise<BlockPacker> {
  const lz4 = await loadLz4();
  await compressor(CODEC_LZ4);
  let slab = Buffer.alloc(0);
  let at = 0;
  let slabBytes = 0;
  return {
    get slabBytes() {
      return slabBytes;
    },
    pack(plain) {
      // At most this many bytes after the envelope's CRC: the length and the LZ4 block.
      const limit = plain.length - MIN_SAVING - COMPRESSED_HEADER;
      if (limit <= LZ4_LENGTH) return { bytes: plain, codec: CODEC_RAW };
      const room = COMPRESSED_HEADER + limit;
      if (at + room > slab.length) {
        slab = Buffer.allocUnsafeSlow(Math.max(PACK_SLAB, room));
        slabBytes += slab.length;
        at = 0;
      }
      const from = at + COMPRESSED_HEADER + LZ4_LENGTH;
      // (The binding does not check `at + room` against the slab's length: it fits, above.)
      const n = lz4.encodeBlock(plain, slab, from, at + room);
      if (n <= 0) return { bytes: plain, codec: CODEC_RAW };
      slab.writeUInt32LE(crc32c(plain), at);
      slab.writeUInt32LE(plain.length, at + COMPRESSED_HEADER);
      // (The next block right after it: blocks back to back are gathered as one run.)
      const bytes = slab.subarray(at, from + n);
      at = from + n;
      return { bytes, codec: CODEC_LZ4 };
    },
  };
}

/**
 * A quick test, on this thread, of whether a block would compress: whether lz4 saves at least
 * MIN_SAVING bytes on it. Used to notice data that compresses again after a run that did not
 * (see Compressibility), whatever the volume's codec: where lz4 saves, zstd saves too (it is
 * then tried on the block itself).
 */
export async function compressionProbe(): Promise<(plain: Buffer) => boolean> {
  const c = await compressor(CODEC_LZ4);
  return (plain) => c.compress(plain, plain.length - MIN_SAVING - COMPRESSED_HEADER) !== undefined;
}

/**
 * The plain block (`blockSize` bytes) of stored bytes whose CRC the caller has checked, in
 * `into` (blockSize bytes) when given and the codec decodes in place (lz4), else a buffer of
 * its own. Throws DecodeError when the codec is unknown or the decoded block is not the one
 * stored (`into` may then hold anything).
 */
export async function decodeBlock(
  stored: Buffer,
  codec: number,
  blockSize: number,
  into?: Buffer,
): Promise<Buffer> {
  const now = decodeBlockNow(stored, codec, blockSize, into);
  if (now !== undefined) return now;
  const c = await compressor(codec);
  let plain: Buffer;
  try {
    plain = await c.decompress(stored.subarray(COMPRESSED_HEADER), blockSize, into);
  } catch (e) {
    throw undecodable(codec, e);
  }
  return checked(plain, stored, codec, blockSize);
}

/**
 * decodeBlock() on this thread, when the codec runs here and is loaded (raw blocks, lz4
 * once a block was decoded or encoded with it): undefined otherwise. A read part's blocks
 * then cost no promise each.
 */
export function decodeBlockNow(
  stored: Buffer,
  codec: number,
  blockSize: number,
  into?: Buffer,
): Buffer | undefined {
  if (codec === CODEC_RAW) {
    if (stored.length !== blockSize)
      throw new DecodeError(`raw block is ${stored.length} bytes, expected ${blockSize}`);
    return stored;
  }
  if (stored.length < COMPRESSED_HEADER)
    throw new DecodeError(`compressed block of ${stored.length} bytes`);
  const c = ready.get(codec);
  if (c === undefined) return undefined;
  let plain: Buffer;
  try {
    plain = c.decompress(stored.subarray(COMPRESSED_HEADER), blockSize, into) as Buffer;
  } catch (e) {
    throw undecodable(codec, e);
  }
  return checked(plain, stored, codec, blockSize);
}

/** Whether decodeBlockNow() decodes blocks of compression `codec`. */
export const decodesNow = (codec: number): boolean => codec === CODEC_RAW || ready.has(codec);

function undecodable(codec: number, e: unknown): DecodeError {
  return new DecodeError(
    `${compressionOf(codec)} block does not decompress: ${e instanceof Error ? e.message : String(e)}`,
  );
}

/** The decompressed block, once its length and its envelope's CRC say it is the one stored. */
function checked(plain: Buffer, stored: Buffer, codec: number, blockSize: number): Buffer {
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
