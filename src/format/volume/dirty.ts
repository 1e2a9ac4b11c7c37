/**
 * One generation of un-flushed changes. A volume has an `active` generation taking writes
 * and, while a flush runs, a `frozen` one being written into a segment; reads look at both
 * before the index.
 *
 * Invariant: every entry in `blocks` is newer than every range in `ranges` that covers it
 * (trimming a range deletes the entries inside it), so a flush applies the ranges first and
 * the blocks after.
 */

/** Trims of at most this many blocks are kept per block; larger ones as ranges. */
const SMALL_TRIM = 1024;

export class Generation {
  /** lba → the whole new block, or null for a block that now reads as zeros. */
  readonly blocks = new Map<number, Buffer | null>();
  /** Block ranges [lo, hi) unmapped by large trims / write-zeroes / shrinks. */
  readonly ranges: [number, number][] = [];
  /** Bytes of block data held. */
  bytes = 0;
  /** Blocks are carved from slabs that live and die with the generation (few large allocations). */
  private slab: Buffer | undefined;
  private slabUsed = 0;
  private readonly slabSize: number;

  constructor(private readonly blockSize: number) {
    this.slabSize = Math.max(blockSize, 1024 * 1024);
  }

  /** A fresh, uninitialised block buffer for this generation. */
  alloc(): Buffer {
    if (!this.slab || this.slabUsed + this.blockSize > this.slab.length) {
      this.slab = Buffer.allocUnsafeSlow(this.slabSize);
      this.slabUsed = 0;
    }
    const b = this.slab.subarray(this.slabUsed, this.slabUsed + this.blockSize);
    this.slabUsed += this.blockSize;
    return b;
  }

  get empty(): boolean {
    return this.blocks.size === 0 && this.ranges.length === 0;
  }

  /**
   * What this generation says about a block: a Buffer (data), null (zeros), or undefined
   * (nothing: look further down).
   */
  lookup(lba: number): Buffer | null | undefined {
    const v = this.blocks.get(lba);
    if (v !== undefined) return v;
    for (const [lo, hi] of this.ranges) if (lba >= lo && lba < hi) return null;
    return undefined;
  }

  set(lba: number, v: Buffer | null): void {
    const old = this.blocks.get(lba);
    if (old) this.bytes -= this.blockSize;
    if (v) this.bytes += this.blockSize;
    this.blocks.set(lba, v);
  }

  trim(lo: number, hi: number): void {
    if (hi - lo <= SMALL_TRIM) {
      for (let lba = lo; lba < hi; lba++) this.set(lba, null);
      return;
    }
    if (this.blocks.size < hi - lo) {
      for (const [lba, v] of this.blocks) {
        if (lba >= lo && lba < hi) {
          if (v) this.bytes -= this.blockSize;
          this.blocks.delete(lba);
        }
      }
    } else {
      for (let lba = lo; lba < hi; lba++) {
        const v = this.blocks.get(lba);
        if (v !== undefined) {
          if (v) this.bytes -= this.blockSize;
          this.blocks.delete(lba);
        }
      }
    }
    this.ranges.push([lo, hi]);
  }

  /** Replay `newer` on top of this generation (used to put back a failed flush). */
  absorb(newer: Generation): void {
    for (const [lo, hi] of newer.ranges) this.trim(lo, hi);
    for (const [lba, v] of newer.blocks) this.set(lba, v);
  }
}
