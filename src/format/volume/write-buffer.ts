/**
 * The write-back buffer: writes land here as whole blocks until a flush writes them into a
 * segment. It holds the `active` generation taking writes and, while a flush runs, the
 * `frozen` one being written; reads look at both before the index (double buffering: a
 * flush never stalls reads or new writes). Partial-block writes read the old block first,
 * under a per-block lock so overlapping writes apply in order. Writers wait while the
 * buffer is full (back-pressure) until a flush makes room.
 */
import { HyperError } from '../../errors.js';

/** Trims of at most this many blocks are kept per block; larger ones as ranges. */
const SMALL_TRIM = 1024;

/**
 * What the buffer says about one block: the new content, `null` for a block that now reads
 * as zeros, or `undefined` when the buffer knows nothing of it (look in the index).
 */
export type BufferedBlock = Buffer | null | undefined;

/**
 * One generation of un-flushed changes.
 *
 * Invariant: every entry in `blocks` is newer than every range in `ranges` that covers it
 * (trimming a range deletes the entries inside it), so a flush applies the ranges first and
 * the blocks after.
 */
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

  lookup(lba: number): BufferedBlock {
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
    const drop = (lba: number, v: Buffer | null): void => {
      if (v) this.bytes -= this.blockSize;
      this.blocks.delete(lba);
    };
    if (this.blocks.size < hi - lo) {
      for (const [lba, v] of this.blocks) if (lba >= lo && lba < hi) drop(lba, v);
    } else {
      for (let lba = lo; lba < hi; lba++) {
        const v = this.blocks.get(lba);
        if (v !== undefined) drop(lba, v);
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

/** Blocks with a read-modify-write in progress, so later overlapping changes wait for it. */
export class BlockLocks {
  private readonly held = new Map<number, Promise<void>>();

  get size(): number {
    return this.held.size;
  }

  /**
   * undefined when no block in [first, last] is held, else a promise that settles when the
   * current holders are done. After such a wait another change may have taken the blocks in
   * the meantime, so callers loop until it answers undefined and then act (and `hold`)
   * without awaiting anything in between: checking and holding must be one synchronous step.
   */
  untilFree(first: number, last: number): Promise<void> | undefined {
    const waits = this.holders(first, last);
    if (waits.length === 0) return undefined;
    return Promise.all(waits).then(() => undefined);
  }

  private holders(first: number, last: number): Promise<void>[] {
    const waits: Promise<void>[] = [];
    if (this.held.size === 0) return waits;
    if (last - first < this.held.size) {
      for (let lba = first; lba <= last; lba++) {
        const p = this.held.get(lba);
        if (p) waits.push(p);
      }
    } else {
      for (const [lba, p] of this.held) if (lba >= first && lba <= last) waits.push(p);
    }
    return waits;
  }

  /** Hold [first, last] while `fn` runs. The blocks are held before this returns its promise. */
  async hold(first: number, last: number, fn: () => Promise<void>): Promise<void> {
    const p = fn();
    const done = p.then(
      () => undefined,
      () => undefined,
    );
    for (let lba = first; lba <= last; lba++) this.held.set(lba, done);
    try {
      await p;
    } finally {
      for (let lba = first; lba <= last; lba++)
        if (this.held.get(lba) === done) this.held.delete(lba);
    }
  }
}

export interface WriteBufferOptions {
  blockSize: number;
  /** Dirty bytes at which writers wait for a flush. */
  maxDirtyBytes: number;
  /** Current content of one block (for read-modify-write of partial blocks). */
  readBlock(lba: number): Promise<Buffer>;
  /** Throws when writes are no longer allowed (closed, read-only, fenced). */
  checkWritable(): void;
  /** The buffer is full: start a flush (no durability asked). */
  flushForRoom(): void;
  /** Why the last flush failed, if it did (writers waiting for room get it). */
  lastFlushError(): unknown;
}

/**
 * Called in the same synchronous step as a change is applied, so the order of a log (the
 * WAL) is the order of application; returns what to wait for before acknowledging.
 */
export type ApplyLog = () => Promise<void> | undefined;

export class WriteBuffer {
  active: Generation;
  frozen: Generation | undefined;
  readonly locks = new BlockLocks();
  private readonly bs: number;
  private readonly zeroBlock: Buffer;
  private roomWaiters: (() => void)[] = [];

  constructor(private readonly o: WriteBufferOptions) {
    this.bs = o.blockSize;
    this.zeroBlock = Buffer.alloc(o.blockSize);
    this.active = new Generation(o.blockSize);
  }

  /** What the un-flushed generations say about a block (active first, then frozen). */
  lookup(lba: number): BufferedBlock {
    const a = this.active.lookup(lba);
    if (a !== undefined || !this.frozen) return a;
    return this.frozen.lookup(lba);
  }

  get dirtyBytes(): number {
    return this.active.bytes;
  }

  /** Dirty bytes at which writers wait for room. */
  get maxDirtyBytes(): number {
    return this.o.maxDirtyBytes;
  }

  /** Write `data` at `offset` (any alignment). */
  async write(offset: number, data: Buffer, log?: ApplyLog): Promise<void> {
    await this.waitForRoom();
    const first = Math.floor(offset / this.bs);
    const last = Math.floor((offset + data.length - 1) / this.bs);
    for (let busy = this.locks.untilFree(first, last); busy;) {
      await busy;
      busy = this.locks.untilFree(first, last);
    }
    await this.apply(first, last, this.edgesToRead(offset, data.length), log, (old) =>
      this.copyIn(offset, data, old),
    );
  }

  /**
   * Make a range read as zeros. Whole blocks become holes; with `edges: 'zero'` partial edge
   * blocks are written with zeros, with `edges: 'keep'` (a trim) they are left as they are.
   */
  async zero(
    offset: number,
    length: number,
    edges: 'zero' | 'keep',
    log?: ApplyLog,
  ): Promise<void> {
    const bs = this.bs;
    const end = offset + length;
    const lo = Math.ceil(offset / bs);
    const hi = Math.floor(end / bs);
    const trimWhole = (): void => {
      if (hi > lo) this.active.trim(lo, hi);
    };
    if (edges === 'keep' || (offset % bs === 0 && end % bs === 0)) {
      for (let busy = hi > lo ? this.locks.untilFree(lo, hi - 1) : undefined; busy;) {
        await busy;
        busy = this.locks.untilFree(lo, hi - 1);
      }
      trimWhole();
      await log?.();
      return;
    }
    await this.waitForRoom();
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    for (let busy = this.locks.untilFree(first, last); busy;) {
      await busy;
      busy = this.locks.untilFree(first, last);
    }
    // Edges, then whole blocks, applied and logged as one step (log order = apply order).
    await this.apply(first, last, this.edgesToRead(offset, length), log, (old) => {
      if (offset % bs !== 0) {
        const edgeEnd = Math.min(end, lo * bs);
        this.copyIn(offset, Buffer.alloc(edgeEnd - offset), old);
      }
      if (end % bs !== 0 && hi * bs >= offset && hi >= lo) {
        const from = Math.max(hi * bs, offset);
        this.copyIn(from, Buffer.alloc(end - from), old);
      }
      trimWhole();
    });
  }

  /**
   * Shrinking a volume of `from` bytes to `to`: zero the rest of the new last block (a later
   * grow reads zeros there) and unmap the blocks past it.
   */
  async truncate(from: number, to: number): Promise<void> {
    const bs = this.bs;
    const blockEnd = Math.ceil(to / bs) * bs;
    if (blockEnd > to) await this.write(to, Buffer.alloc(Math.min(blockEnd, from) - to));
    const end = Math.ceil(from / bs) * bs;
    if (end > blockEnd) await this.zero(blockEnd, end - blockEnd, 'keep');
  }

  /** Move the active generation to frozen (a flush writes it); writes go to a new one. */
  freeze(): Generation {
    const gen = this.active;
    this.active = new Generation(this.bs);
    this.frozen = gen;
    return gen;
  }

  /** The frozen generation is in the index now (committed) or was put back (failed). */
  unfreeze(committed: boolean): void {
    const gen = this.frozen;
    this.frozen = undefined;
    if (!committed && gen) {
      // Nothing was committed: put the changes back under the newer ones.
      gen.absorb(this.active);
      this.active = gen;
    }
  }

  /** Wake writers waiting for room (after every flush, successful or not). */
  roomMade(): void {
    const waiters = this.roomWaiters;
    this.roomWaiters = [];
    for (const w of waiters) w();
  }

  /** Back-pressure: wait while the buffer is full. */
  private async waitForRoom(): Promise<void> {
    while (this.active.bytes >= this.o.maxDirtyBytes) {
      this.o.flushForRoom();
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
      this.o.checkWritable();
      const failure = this.o.lastFlushError();
      if (failure && this.active.bytes >= this.o.maxDirtyBytes) {
        throw failure instanceof HyperError
          ? failure
          : new HyperError('unavailable', 'STORE_UNAVAILABLE', String(failure));
      }
    }
  }

  /** Blocks of [offset, offset+length) that are partly covered and not already buffered. */
  private edgesToRead(offset: number, length: number): number[] {
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const headPartial = offset % bs !== 0 || (first === last && length < bs);
    const tailPartial = (offset + length) % bs !== 0;
    const out: number[] = [];
    if (headPartial && !this.active.blocks.get(first)) out.push(first);
    if (tailPartial && last !== first && !this.active.blocks.get(last)) out.push(last);
    return out;
  }

  /**
   * Apply a change to blocks [first, last] and log it in one synchronous step. When old
   * blocks must be read first, the blocks are held meanwhile so overlapping changes wait.
   */
  private async apply(
    first: number,
    last: number,
    toRead: number[],
    log: ApplyLog | undefined,
    change: (old: Map<number, Buffer>) => void,
  ): Promise<void> {
    if (toRead.length === 0) {
      change(new Map());
      await log?.();
      return;
    }
    let durable: Promise<void> | undefined;
    await this.locks.hold(first, last, async () => {
      const old = new Map<number, Buffer>();
      await Promise.all(
        toRead.map(async (lba) => {
          old.set(lba, await this.o.readBlock(lba));
        }),
      );
      this.o.checkWritable();
      change(old);
      durable = log?.();
    });
    await durable;
  }

  /** Copy `data` into whole blocks of the active generation (synchronous). */
  private copyIn(offset: number, data: Buffer, old: Map<number, Buffer>): void {
    const bs = this.bs;
    const end = offset + data.length;
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    for (let lba = first; lba <= last; lba++) {
      const bStart = lba * bs;
      const from = Math.max(offset, bStart);
      const to = Math.min(end, bStart + bs);
      // A block already in the active generation is updated in place (reads copy out of it).
      const cur = this.active.blocks.get(lba);
      let blk: Buffer;
      if (to - from === bs) {
        blk = cur ?? this.active.alloc();
        data.copy(blk, 0, from - offset, to - offset);
      } else {
        if (cur) blk = cur;
        else {
          const before = old.get(lba);
          blk = this.active.alloc();
          if (before) before.copy(blk);
          else blk.fill(0);
        }
        data.copy(blk, from - bStart, from - offset, to - offset);
      }
      this.active.set(lba, blk.equals(this.zeroBlock) ? null : blk);
    }
  }
}
