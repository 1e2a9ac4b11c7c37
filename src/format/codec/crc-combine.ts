/**
 * CRC-32C of a concatenation from the CRCs of its pieces, without reading the bytes again.
 *
 * CRC-32C (init and final xor ~0) is linear, so crc(A‖B) = crc(A)·x^(8·|B|) ⊕ crc(B) mod P,
 * the Castagnoli polynomial (reflected 0x82F63B78). A run of stored blocks back to back can
 * then be verified with one native CRC over the whole run against the combination of the
 * blocks' own CRCs: one call instead of one per block (about a third of the cost of
 * verifying 4 KiB blocks one by one is the call itself). An error confined to one block
 * changes the combination exactly when it changes that block's CRC (multiplying by x^k mod
 * P is invertible), so a mismatch is found as surely; the caller then checks block by block
 * to name the one that failed.
 */

const POLY = 0x82f63b78;

/** a·b mod P, both in the reflected representation (bit 31 is x^0). */
function multModP(a: number, b: number): number {
  let m = 0x80000000;
  let p = 0;
  for (;;) {
    if ((a & m) !== 0) {
      p ^= b;
      if ((a & (m - 1)) === 0) break;
    }
    m >>>= 1;
    b = b & 1 ? (b >>> 1) ^ POLY : b >>> 1;
  }
  return p >>> 0;
}

/** x^(8·n) mod P: the factor that moves a CRC past n more bytes. */
function shiftFactor(n: number): number {
  // Square-and-multiply over the bits of 8n: x^(2^k) mod P for k = 0, 1, ...
  let factor = 0x80000000; // x^0
  let power = 0x40000000; // x^1
  let e = n * 8;
  while (e > 0) {
    if (e % 2 === 1) factor = multModP(power, factor);
    power = multModP(power, power);
    e = Math.floor(e / 2);
  }
  return factor;
}

/** Multiplication by a fixed x^(8·n) mod P, a byte of the CRC at a time (4 tables of 256). */
class Shifter {
  private readonly t = new Uint32Array(4 * 256);
  constructor(n: number) {
    const f = shiftFactor(n);
    for (let j = 0; j < 4; j++)
      for (let v = 0; v < 256; v++) this.t[j * 256 + v] = multModP(f, (v << (8 * j)) >>> 0);
  }
  shift(c: number): number {
    const t = this.t;
    return (
      ((t[c & 0xff] as number) ^
        (t[256 + ((c >>> 8) & 0xff)] as number) ^
        (t[512 + ((c >>> 16) & 0xff)] as number) ^
        (t[768 + (c >>> 24)] as number)) >>>
      0
    );
  }
}

const shifters = new Map<number, Shifter>();

function shifterFor(n: number): Shifter {
  let s = shifters.get(n);
  if (!s) {
    if (shifters.size >= 16) shifters.clear();
    shifters.set(n, (s = new Shifter(n)));
  }
  return s;
}

/** crc(A‖B) from crc(A), crc(B) and |B|. */
export function crc32cCombine(crcA: number, crcB: number, lengthB: number): number {
  if (lengthB === 0) return crcA >>> 0;
  return (shifterFor(lengthB).shift(crcA >>> 0) ^ crcB) >>> 0;
}

/**
 * The CRC of pieces of `length` bytes each laid back to back, from the pieces' CRCs
 * (`crcOf(k)` for k in [from, to), to > from).
 */
export function crc32cOfRun(
  from: number,
  to: number,
  length: number,
  crcOf: (k: number) => number,
): number {
  const s = shifterFor(length);
  let c = crcOf(from) >>> 0;
  for (let k = from + 1; k < to; k++) c = (s.shift(c) ^ crcOf(k)) >>> 0;
  return c;
}
