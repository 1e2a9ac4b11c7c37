/**
 * Little-endian binary helpers shared by every codec. 64-bit fields are carried as
 * JavaScript numbers only when they are safe integers: decoding a larger value is a
 * corruption error, encoding one is a bug — no bits above 2^53 are ever lost silently.
 */
import { createRequire } from 'node:module';
import { crc32c as tableCrc32c } from '@node-rs/crc32';

export class DecodeError extends Error {
  override readonly name = 'DecodeError';
}

/**
 * CRC-32C with the processor's CRC32 instruction (SSE 4.2) when there is one: hyper's own
 * addon (native/crc32c.c, compiled by node-gyp at install), which runs the instruction in
 * three streams at once and joins them, so it goes about as fast as the unit allows: 65 ms a
 * GiB in 1 MiB pieces and 106 ms in 4 KiB ones here, against 122 and 158 ms for the
 * `sse4_crc32` binding (one stream) and 176 and 228 ms for @node-rs/crc32 (a table walk).
 * Where the addon did not build, or the processor lacks the instruction (ARM), the table walk
 * of @node-rs/crc32. Both give the same values, also when continued from an `initial` CRC.
 */
function hardwareCrc32c(): ((data: Uint8Array, initial?: number) => number) | undefined {
  try {
    const m = createRequire(import.meta.url)('../../../native/build/Release/hyper_native.node') as {
      hardware?: boolean;
      crc32c?: (data: Uint8Array, initial?: number) => number;
    };
    return m.hardware === true ? m.crc32c : undefined;
  } catch {
    return undefined;
  }
}

const hardware = hardwareCrc32c();

/** Which implementation computes CRC-32C here (shown by `hyper doctor`). */
export const CRC32C_IMPLEMENTATION: 'sse4.2' | 'table' = hardware ? 'sse4.2' : 'table';

/** CRC-32C by the table walk whatever the processor has (tests compare the two). */
export function tableCrc32cOf(data: Uint8Array, initial?: number): number {
  return tableCrc32c(data, initial) >>> 0;
}

/** (The addon takes `initial` as any number, keeping its low 32 bits, as the table walk does.) */
export const crc32c: (data: Uint8Array, initial?: number) => number = hardware ?? tableCrc32cOf;

/** Zeros that isZero compares against, 64 KiB at a time. */
const ZEROS = Buffer.alloc(64 * 1024);

/**
 * Whether bytes [from, to) of `b` are all zeros. A byte set at either end or in the middle,
 * as nearly every block of data has, tells without the native compare (whose call costs more
 * than looking at three bytes).
 */
export function isZero(b: Buffer, from = 0, to = b.length): boolean {
  if (to <= from) return true;
  if (b[from] !== 0 || b[to - 1] !== 0 || b[(from + to) >>> 1] !== 0) return false;
  for (let i = from; i < to; i += ZEROS.length) {
    const n = Math.min(ZEROS.length, to - i);
    if (ZEROS.compare(b, i, i + n, 0, n) !== 0) return false;
  }
  return true;
}

const TWO32 = 2 ** 32;

export function readU64(buf: Buffer, off: number): number {
  const lo = buf.readUInt32LE(off);
  const hi = buf.readUInt32LE(off + 4);
  if (hi > 0x1fffff) throw new DecodeError(`64-bit field at ${off} exceeds 2^53`);
  return hi * TWO32 + lo;
}

export function writeU64(buf: Buffer, off: number, v: number): void {
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`not a u64-safe integer: ${v}`);
  buf.writeUInt32LE(v % TWO32, off);
  buf.writeUInt32LE(Math.floor(v / TWO32), off + 4);
}

/** Append-only encoder with a growable buffer. */
export class Writer {
  private buf: Buffer;
  pos = 0;

  constructor(initial = 256) {
    this.buf = Buffer.alloc(initial);
  }

  private ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.pos + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.pos);
    this.buf = next;
  }

  u8(v: number): this {
    this.ensure(1);
    this.buf.writeUInt8(v, this.pos);
    this.pos += 1;
    return this;
  }
  u16(v: number): this {
    this.ensure(2);
    this.buf.writeUInt16LE(v, this.pos);
    this.pos += 2;
    return this;
  }
  u32(v: number): this {
    this.ensure(4);
    this.buf.writeUInt32LE(v >>> 0, this.pos);
    this.pos += 4;
    return this;
  }
  u64(v: number): this {
    this.ensure(8);
    writeU64(this.buf, this.pos, v);
    this.pos += 8;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
    return this;
  }
  zeros(n: number): this {
    this.ensure(n);
    this.buf.fill(0, this.pos, this.pos + n);
    this.pos += n;
    return this;
  }
  /** Patch a u32 written earlier. */
  setU32(at: number, v: number): void {
    this.buf.writeUInt32LE(v >>> 0, at);
  }
  finish(): Buffer {
    return this.buf.subarray(0, this.pos);
  }
}

/** Bounds-checked decoder: running past the end is a DecodeError, never a RangeError. */
export class Reader {
  pos: number;
  constructor(
    readonly buf: Buffer,
    start = 0,
    private readonly end = buf.length,
  ) {
    this.pos = start;
  }
  private need(n: number): void {
    if (this.pos + n > this.end) {
      throw new DecodeError(
        `truncated: need ${n} bytes at ${this.pos}, have ${this.end - this.pos}`,
      );
    }
  }
  u8(): number {
    this.need(1);
    return this.buf.readUInt8(this.pos++);
  }
  u16(): number {
    this.need(2);
    const v = this.buf.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number {
    this.need(4);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }
  u64(): number {
    this.need(8);
    const v = readU64(this.buf, this.pos);
    this.pos += 8;
    return v;
  }
  bytes(n: number): Buffer {
    this.need(n);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  skip(n: number): void {
    this.need(n);
    this.pos += n;
  }
  get remaining(): number {
    return this.end - this.pos;
  }
}
