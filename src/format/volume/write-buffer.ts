/**
 * The write-back buffer: writes land here as whole blocks until a flush writes them into a
 * segment. It holds the `active` generation taking writes and, while a flush runs, the
 * `frozen` one being written; reads look at both before the index (double buffering: a
 * flush never stalls reads or new writes). Partial-block writes read the old block first,
 * under a per-block lock so overlapping writes apply in order. Writers wait while the
 * buffer is full (back-pressure) until a flush makes room.
 */
import { HyperError } from '../../errors.js';
import { isZero } from '../codec/binary.js';
import { BlockRanges } from './block-ranges.js';

/** Written bytes: one buffer, or the pieces of one (an NBD payload as it arrived). */
export type Data = Buffer | readonly Buffer[];

/** Copy `d` to the start of `out` (which has room for it). */
export function copyDataInto(d: Data, out: Buffer): void {
  if (Buffer.isBuffer(d)) d.copy(out);
  else {
    let at = 0;
    for (const b of d) at += b.copy(out, at);
  }
}

/** `d` as one buffer of its own (a copy, also of a single buffer). */
export function copyData(d: Data, length = dataLength(d)): Buffer {
  const out = Buffer.allocUnsafe(length);
  copyDataInto(d, out);
  return out;
}

export function dataLength(d: Data): number {
  if (Buffer.isBuffer(d)) return d.length;
  let n = 0;
  for (const p of d) n += p.length;
  return n;
}

/**
 * walk(from, to, part): part(piece, start, end, at) for each piece of `d` holding bytes of
 * [from, to), with the bytes' [start, end) in the piece and their offset `at` from `from`;
 * stops early, returning false, once part returns false. Calls must come with increasing
 * `from` (a cursor walks the pieces once).
 */
function pieceWalker(
  d: readonly Buffer[],
): (
  from: number,
  to: number,
  part: (p: Buffer, start: number, end: number, at: number) => boolean,
) => boolean {
  let k = 0;
  let base = 0;
  return (from, to, part) => {
    while (k < d.length && base + (d[k] as Buffer).length <= from)
      base += (d[k++] as Buffer).length;
    for (let i = k, b = base; i < d.length && b < to; b += (d[i++] as Buffer).length) {
      const p = d[i] as Buffer;
      const s = Math.max(from, b);
      const e = Math.min(to, b + p.length);
      if (e > s && !part(p, s - b, e - b, s - from)) return false;
    }
    return true;
  };
}

/**
 * copy(dst, at, from, to): bytes [from, to) of `d` into dst[at..]. Calls must come with
 * increasing `from`.
 */
function copier(d: Data): (dst: Buffer, at: number, from: number, to: number) => void {
  if (Buffer.isBuffer(d)) return (dst, at, from, to) => void d.copy(dst, at, from, to);
  const walk = pieceWalker(d);
  return (dst, at, from, to) =>
    void walk(from, to, (p, s, e, off) => {
      p.copy(dst, at + off, s, e);
      return true;
    });
}

/**
 * zero(from, to): whether bytes [from, to) of `d` are all zeros. Calls must come with
 * increasing `from`.
 */
function zeroTester(d: Data): (from: number, to: number) => boolean {
  if (Buffer.isBuffer(d)) return (from, to) => isZero(d, from, to);
  const walk = pieceWalker(d);
  return (from, to) => walk(from, to, (p, s, e) => isZero(p, s, e));
}

/** Trims of at most this many blocks are kept per block; larger ones as ranges. */
const SMALL_TRIM = 1024;
/**
 * What a hole (a null entry of a generation's map) counts for in the bound on what the
 * buffer holds: about what a map entry takes in memory. A trimmed range counts more than its
 * memory, so that a generation holds at most some tens of thousands of separate ranges (a
 * range added amid them moves those after it: BlockRanges).
 */
const HOLE_BYTES = 64;
const RANGE_BYTES = 1024;

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
  readonly ranges = new BlockRanges();
  /** Bytes of block data held. */
  bytes = 0;
  /** Entries of `blocks` that are null (blocks trimmed or zeroed one by one). */
  holes = 0;
  /**
   * Once frozen and laid out as a segment: the segment's size (its blocks now live in it,
   * with the index nodes), which is what it holds until the segment is durable.
   */
  segmentBytes = 0;
  /**
   * Blocks are carved from slabs (few large allocations) that live with the generation until
   * nothing reads them any more: once the blocks are copied into a segment's buffer, or, when
   * the segment's PUT gathers runs of them from the slabs, once it has landed. Then they go
   * back to the pool for the next generations (no fresh memory to fault in for every
   * segment, no dead slabs waiting for the GC).
   */
  private slab: Buffer | undefined;
  private slabUsed = 0;
  private readonly slabs: Buffer[] = [];
  /** Payloads whose blocks this generation took as they are (WriteBuffer.writeOwned). */
  private readonly adopted: Buffer[] = [];
  /**
   * Bytes of memory taken for blocks (slabs and kept payloads) until they are recycled. More
   * than `bytes` once blocks were dropped (trimmed, or replaced by zeros): their memory stays
   * until the generation's slabs are recycled (see `waste`).
   */
  memory = 0;

  constructor(
    private readonly blockSize: number,
    private readonly pool: SlabPool = new SlabPool(blockSize, 0),
    private readonly payloads?: PayloadPool,
  ) {}

  /** `b` (from `payloads`) holds blocks of this generation now: it lives as the slabs do. */
  adopt(b: Buffer): void {
    this.adopted.push(b);
    this.memory += b.length;
  }

  /**
   * Memory held for blocks no longer in the generation (beyond the slab being filled): a
   * client that writes, trims and writes a range again takes new memory each time while
   * `bytes` stays the same, so the bound on buffered bytes counts this too.
   */
  get waste(): number {
    return Math.max(0, this.memory - this.bytes - this.pool.slabSize);
  }

  /** A fresh, uninitialised block buffer for this generation. */
  alloc(): Buffer {
    if (!this.slab || this.slabUsed + this.blockSize > this.slab.length) {
      this.slab = this.pool.take();
      this.slabs.push(this.slab);
      this.slabUsed = 0;
      this.memory += this.slab.length;
    }
    const b = this.slab.subarray(this.slabUsed, this.slabUsed + this.blockSize);
    this.slabUsed += this.blockSize;
    return b;
  }

  get empty(): boolean {
    return this.blocks.size === 0 && this.ranges.size === 0;
  }

  /**
   * Every block now lives elsewhere (copied into a segment, `blocks` pointing there), or the
   * segment whose PUT gathered them from the slabs has landed (`gathered`): the slabs go back
   * to the pool. Only once nothing refers to them any more.
   */
  recycleSlabs(gathered = false): void {
    for (const b of this.slabs) this.pool.give(b, gathered);
    this.slabs.length = 0;
    this.slab = undefined;
    for (const b of this.adopted) this.payloads?.give(b);
    this.adopted.length = 0;
    this.memory = 0;
  }

  lookup(lba: number): BufferedBlock {
    const v = this.blocks.get(lba);
    if (v !== undefined) return v;
    return this.ranges.has(lba) ? null : undefined;
  }

  set(lba: number, v: Buffer | null): void {
    const old = this.blocks.get(lba);
    if (old) this.bytes -= this.blockSize;
    else if (old === null) this.holes--;
    if (v) this.bytes += this.blockSize;
    else this.holes++;
    this.blocks.set(lba, v);
  }

  /**
   * Memory the generation's entries take besides block data: the map's entries for holes
   * and the trimmed ranges. A client trimming block after block (a guest deleting files with
   * online discard) holds no data, yet each trimmed block is an entry until the flush.
   */
  get entryBytes(): number {
    return this.holes * HOLE_BYTES + this.ranges.size * RANGE_BYTES;
  }

  /** What the generation holds besides its blocks' bytes: `waste` and `entryBytes`. */
  get overhead(): number {
    return this.waste + this.entryBytes;
  }

  trim(lo: number, hi: number): void {
    if (hi - lo <= SMALL_TRIM) {
      for (let lba = lo; lba < hi; lba++) this.set(lba, null);
      return;
    }
    const drop = (lba: number, v: Buffer | null): void => {
      if (v) this.bytes -= this.blockSize;
      else this.holes--;
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
    this.ranges.add(lo, hi);
  }

  /**
   * Replay `newer` on top of this generation (used to put back a failed flush); its memory
   * (slabs, kept payloads) is this generation's from now on.
   */
  absorb(newer: Generation): void {
    for (const [lo, hi] of newer.ranges) this.trim(lo, hi);
    for (const [lba, v] of newer.blocks) this.set(lba, v);
    this.slabs.push(...newer.slabs);
    this.adopted.push(...newer.adopted);
    this.memory += newer.memory;
    newer.slabs.length = 0;
    newer.adopted.length = 0;
    newer.slab = undefined;
    newer.memory = 0;
  }
}

/**
 * Slabs of block buffers kept for reuse, up to a limit. Slabs a segment gathered from come
 * back only once it lands, a whole generation's at once and often several generations'
 * together, while the generations filling meanwhile took new ones: those are kept up to a
 * larger bound (`gatheredLimit`, the write buffer's), as the next generations need as many
 * again. A slab dropped instead is garbage, and its replacement is fresh memory whose every
 * page faults on the first copy (the replica's worker spent twice as long in its write
 * buffer's copy). The surplus drains once writes stop gathering: generations take slabs
 * from the pool first, and those that did not gather give back only up to `limit`.
 */
export class SlabPool {
  private readonly free: Buffer[] = [];
  readonly slabSize: number;

  constructor(
    blockSize: number,
    private readonly limit: number,
    private readonly gatheredLimit = limit,
  ) {
    this.slabSize = Math.max(blockSize, 1024 * 1024);
  }

  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(this.slabSize);
  }

  /** `gathered`: a slab a landed segment gathered from (kept up to the larger bound). */
  give(b: Buffer, gathered = false): void {
    if (b.length !== this.slabSize) return;
    if (this.free.length < (gathered ? this.gatheredLimit : this.limit)) this.free.push(b);
  }

  /** Slabs waiting for reuse. */
  get size(): number {
    return this.free.length;
  }
}

/**
 * Payloads of at least this many bytes, starting and ending on block boundaries, become the
 * blocks they carry (WriteBuffer.writeOwned): no copy into a slab. Smaller ones are copied
 * (a buffer per 4 KiB block would be a buffer object for the GC per block).
 */
export const ADOPT_MIN = 64 * 1024;

/**
 * Memory for payloads the buffer may keep (writeOwned), reused by length. Kept payloads come
 * back with the slabs of their generation (recycleSlabs): once their blocks were copied into
 * a segment, or the segment that gathered them has landed, often a segment's worth at once;
 * up to `maxBytes` of those wait (fresh memory instead would fault in every page on the
 * socket's first write into it). Payloads too small to keep come back as soon as they are
 * copied, so a few of them are enough: up to SMALL_PAYLOADS bytes.
 */
export class PayloadPool {
  private readonly free = new Map<number, Buffer[]>();
  private bytes = 0;
  private smallBytes = 0;

  constructor(private readonly maxBytes: number) {}

  take(length: number): Buffer {
    const b = this.free.get(length)?.pop();
    if (b === undefined) return Buffer.allocUnsafeSlow(length);
    if (length < ADOPT_MIN) this.smallBytes -= length;
    else this.bytes -= length;
    return b;
  }

  give(b: Buffer): void {
    const small = b.length < ADOPT_MIN;
    if (small ? this.smallBytes + b.length > SMALL_PAYLOADS : this.bytes + b.length > this.maxBytes)
      return;
    let list = this.free.get(b.length);
    if (list === undefined) this.free.set(b.length, (list = []));
    list.push(b);
    if (small) this.smallBytes += b.length;
    else this.bytes += b.length;
  }

  /** Bytes waiting for reuse. */
  get held(): number {
    return this.bytes + this.smallBytes;
  }
}

/** Bytes of payloads too small to keep that wait for reuse (PayloadPool). */
const SMALL_PAYLOADS = 4 * 1024 * 1024;

/** Blocks [lo, hi) changed since a watch began (WriteBuffer.watch). */
export class ChangeWatch {
  readonly touched = new Set<number>();
  ended = false;

  constructor(
    readonly lo: number,
    readonly hi: number,
  ) {}
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
  /** Dirty bytes at which writers wait for a flush (the flush may lower it: setLimit). */
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
  /**
   * Generations being written (segments in flight), oldest first. Each stays here until its
   * segment is durable, so reads are served from it meanwhile.
   */
  frozen: Generation[] = [];
  readonly locks = new BlockLocks();
  private readonly bs: number;
  private roomWaiters: (() => void)[] = [];
  private readonly pool: SlabPool;
  /** Memory for payloads that writeOwned may keep. */
  readonly payloads: PayloadPool;

  /** The bound writers wait at (maxDirtyBytes; see setLimit). */
  private limit: number;

  constructor(private readonly o: WriteBufferOptions) {
    this.bs = o.blockSize;
    this.limit = o.maxDirtyBytes;
    // Up to one segment's worth of slabs (a third of the bound) waits for reuse, and up to the
    // bound's worth of slabs that landed segments gathered from (see SlabPool). (A pool as
    // large as the bound for every slab kept the peak of random writes resident: 357 MiB
    // instead of 313 on the memory bench.)
    const pool = new SlabPool(o.blockSize, 0);
    this.pool = new SlabPool(
      o.blockSize,
      Math.ceil(o.maxDirtyBytes / 3 / pool.slabSize),
      Math.ceil(o.maxDirtyBytes / pool.slabSize),
    );
    // Kept payloads come back when a segment lands, like gathered slabs: up to half the bound
    // waits (a sequential write's segments in flight hold the rest).
    this.payloads = new PayloadPool(Math.ceil(o.maxDirtyBytes / 2));
    this.active = new Generation(o.blockSize, this.pool, this.payloads);
  }

  /** What the un-flushed generations say about a block (active first, then frozen, newest first). */
  lookup(lba: number): BufferedBlock {
    const a = this.active.lookup(lba);
    if (a !== undefined) return a;
    for (let k = this.frozen.length - 1; k >= 0; k--) {
      const v = (this.frozen[k] as Generation).lookup(lba);
      if (v !== undefined) return v;
    }
    return undefined;
  }

  /**
   * Every block in [lo, hi) the un-flushed generations know, ascending, each with whether it
   * now reads as zeros; or undefined when that list would cost more than asking block by
   * block: a trimmed range crosses [lo, hi), or more blocks are held than [lo, hi) spans.
   */
  knownIn(lo: number, hi: number): [lba: number, zero: boolean][] | undefined {
    const gens = [...this.frozen, this.active];
    let held = 0;
    for (const g of gens) {
      held += g.blocks.size;
      if (g.ranges.overlaps(lo, hi)) return undefined;
    }
    if (held > hi - lo) return undefined;
    const known = new Map<number, boolean>();
    // Oldest first: a newer generation's word replaces an older one's.
    for (const g of gens)
      for (const [lba, v] of g.blocks) if (lba >= lo && lba < hi) known.set(lba, v === null);
    return [...known].sort((x, y) => x[0] - y[0]);
  }

  /**
   * Bytes of index nodes a segment carries per byte of data, as the last full segment had
   * (random writes over a large volume change about one leaf per block, so their segments can
   * carry several times as many bytes of nodes as of data). Set by the flush.
   */
  nodeRatio = 0;

  /** Bytes written since the last flush started. */
  get dirtyBytes(): number {
    return this.active.bytes;
  }

  /**
   * The size the active generation would take as a segment (data plus index nodes), and the
   * memory it holds for blocks it no longer has: a flush recycles that.
   */
  get activeEstimate(): number {
    const a = this.active;
    return a.bytes * (1 + this.nodeRatio) + a.overhead;
  }

  /** Bytes held by generations whose segments are still in flight. */
  get frozenBytes(): number {
    let n = 0;
    for (const g of this.frozen) n += Math.max(g.bytes, g.segmentBytes) + g.overhead;
    return n;
  }

  /**
   * Everything the buffer holds, the active generation counted as the segment it will be:
   * what back-pressure bounds by maxDirtyBytes.
   */
  get heldBytes(): number {
    return this.activeEstimate + this.frozenBytes;
  }

  /** Buffered bytes (segments in flight included) at which writers wait for room. */
  get maxDirtyBytes(): number {
    return this.limit;
  }

  /** Change the bound (writers waiting for room are let go when it grows). */
  setLimit(bytes: number): void {
    const grew = bytes > this.limit;
    this.limit = bytes;
    if (grew) this.roomMade();
  }

  /** Write `data` at `offset` (any alignment). */
  async write(offset: number, data: Data, log?: ApplyLog): Promise<void> {
    await this.waitForRoom();
    const length = dataLength(data);
    const first = Math.floor(offset / this.bs);
    const last = Math.floor((offset + length - 1) / this.bs);
    for (let busy = this.locks.untilFree(first, last); busy;) {
      await busy;
      busy = this.locks.untilFree(first, last);
    }
    await this.apply(first, last, this.edgesToRead(offset, length), log, (old) =>
      this.copyIn(offset, data, old),
    );
  }

  /**
   * write(), with `data` from `payloads` handed over: when it is ADOPT_MIN or more of whole
   * blocks at a block boundary, its blocks are kept as they are (the active generation owns
   * the buffer from the step that applies the write); otherwise it is copied like any write
   * and goes back to the pool once applied. `keep` false (a log that keeps the data by
   * reference, the WAL's: a later write updates a kept block in place) copies it always.
   */
  async writeOwned(offset: number, data: Buffer, log?: ApplyLog, keep = true): Promise<void> {
    const bs = this.bs;
    if (!keep || data.length < ADOPT_MIN || offset % bs !== 0 || data.length % bs !== 0) {
      try {
        await this.write(offset, data, log);
      } finally {
        this.payloads.give(data);
      }
      return;
    }
    const first = offset / bs;
    const last = first + data.length / bs - 1;
    try {
      await this.waitForRoom();
      for (let busy = this.locks.untilFree(first, last); busy;) {
        await busy;
        busy = this.locks.untilFree(first, last);
      }
    } catch (e) {
      // (A failed flush while waiting for room: the payload was never taken.)
      this.payloads.give(data);
      throw e;
    }
    await this.apply(first, last, [], log, () => this.adoptIn(first, data));
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
      if (hi > lo) {
        this.active.trim(lo, hi);
        this.touch(lo, hi);
      }
    };
    if (edges === 'keep' || (offset % bs === 0 && end % bs === 0)) {
      // (Holes and ranges take memory too: see Generation.entryBytes.)
      await this.waitForRoom();
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

  /** The watches in force (see watch()). */
  private readonly watches = new Set<ChangeWatch>();

  /**
   * Record which of blocks [lo, hi) writes, zeroes and trims change from now on, until
   * unwatch(): an online compaction's copy of blocks out of an old segment must never land
   * over a change made after it began reading them. One watch per copy in flight, so what
   * is recorded is bounded by the blocks being copied, however long the compaction runs.
   */
  watch(lo: number, hi: number): ChangeWatch {
    const w = new ChangeWatch(lo, hi);
    this.watches.add(w);
    return w;
  }

  unwatch(w: ChangeWatch): void {
    w.ended = true;
    this.watches.delete(w);
  }

  /** Blocks [lo, hi) changed (in the step that applies the change). */
  private touch(lo: number, hi: number): void {
    if (this.watches.size === 0) return;
    for (const w of this.watches)
      for (let lba = Math.max(lo, w.lo), end = Math.min(hi, w.hi); lba < end; lba++)
        w.touched.add(lba);
  }

  /**
   * Compaction's copy of blocks `first`, `first + 1`, … (`data`, read after `w` began; a
   * short last block reads as zeros past its end) into the active generation, in one
   * synchronous step once there is room. A block a change touched since `w` began is left as
   * that change made it: the copy is older. Not logged: the blocks are committed already.
   * Returns how many blocks were copied.
   */
  async rewrite(first: number, data: Buffer, w: ChangeWatch): Promise<number> {
    await this.waitForRoom();
    this.o.checkWritable();
    const bs = this.bs;
    // Outside a watch nothing tells which blocks changed since the copy was read: refused.
    if (w.ended || first < w.lo || first + Math.ceil(data.length / bs) > w.hi)
      throw new HyperError(
        'internal',
        'INTERNAL',
        `a copy of blocks ${first}+${Math.ceil(data.length / bs)} arrived outside its change watch`,
      );
    let copied = 0;
    for (let k = 0; k * bs < data.length; k++) {
      const lba = first + k;
      if (w.touched.has(lba)) continue;
      const blk = this.active.blocks.get(lba) ?? this.active.alloc();
      const n = data.copy(blk, 0, k * bs, Math.min(data.length, (k + 1) * bs));
      if (n < bs) blk.fill(0, n);
      this.active.set(lba, isZero(blk) ? null : blk);
      copied++;
    }
    return copied;
  }

  /**
   * A resize from `from` bytes to `to`: from the step that applies it, the bytes between the
   * two ends read as zeros (a shrink drops them; a grow shows zeros there even where a write
   * racing an earlier shrink left something past its end). `commit` is handed that step
   * (`apply`, synchronous, which the caller extends with the size change) and calls it once:
   * at once, or when the change's WAL record is durable. The partial edge block, read before,
   * is held until `commit` settles, so no change to it can slip in between.
   */
  async resize(
    from: number,
    to: number,
    commit: (apply: () => void) => Promise<void> | undefined,
  ): Promise<void> {
    const bs = this.bs;
    const lo = Math.min(from, to);
    const hi = Math.max(from, to);
    const edge = Math.floor(lo / bs);
    const edgeEnd = Math.min(hi, Math.ceil(lo / bs) * bs);
    const wholeLo = Math.ceil(lo / bs);
    const wholeHi = Math.ceil(hi / bs);
    const apply = (old: Map<number, Buffer>): void => {
      if (edgeEnd > lo) this.copyIn(lo, Buffer.alloc(edgeEnd - lo), old);
      if (wholeHi > wholeLo) {
        this.active.trim(wholeLo, wholeHi);
        this.touch(wholeLo, wholeHi);
      }
    };
    await this.waitForRoom();
    if (edgeEnd <= lo) {
      this.o.checkWritable();
      await commit(() => apply(new Map()));
      return;
    }
    for (let busy = this.locks.untilFree(edge, edge); busy;) {
      await busy;
      busy = this.locks.untilFree(edge, edge);
    }
    await this.locks.hold(edge, edge, async () => {
      const old = new Map([[edge, await this.o.readBlock(edge)]]);
      this.o.checkWritable();
      await commit(() => apply(old));
    });
  }

  /** Move the active generation to frozen (a flush writes it); writes go to a new one. */
  freeze(): Generation {
    const gen = this.active;
    this.active = new Generation(this.bs, this.pool, this.payloads);
    this.frozen.push(gen);
    return gen;
  }

  /** The oldest frozen generation's segment is durable: the index serves its blocks now. */
  release(gen: Generation): void {
    const k = this.frozen.indexOf(gen);
    if (k >= 0) this.frozen.splice(k, 1);
  }

  /**
   * Nothing of `gens` (frozen generations, oldest first) was committed: put their changes
   * back under the newer ones (the later frozen generations and the active one).
   */
  putBack(gens: Generation[]): void {
    if (gens.length === 0) return;
    const back = new Set(gens);
    const keep = this.frozen.filter((g) => !back.has(g));
    // Only a suffix of the frozen list can be put back: older writes stay under newer ones.
    if (keep.some((g) => this.frozen.indexOf(g) > this.frozen.indexOf(gens[0] as Generation)))
      throw new Error('WriteBuffer.putBack: not a suffix of the frozen generations');
    const merged = gens[0] as Generation;
    for (const g of gens.slice(1)) merged.absorb(g);
    merged.absorb(this.active);
    this.active = merged;
    this.frozen = keep;
  }

  /** Wake writers waiting for room (after every flush, successful or not). */
  roomMade(): void {
    const waiters = this.roomWaiters;
    this.roomWaiters = [];
    for (const w of waiters) w();
  }

  /** Back-pressure: wait while the buffer (segments in flight included) is full. */
  private async waitForRoom(): Promise<void> {
    while (this.heldBytes >= this.limit) {
      this.o.flushForRoom();
      await new Promise<void>((resolve) => this.roomWaiters.push(resolve));
      this.o.checkWritable();
      // (A segment id taken by an older writer's leftover is no failure of the writes: the
      // flush rolls back without one and writes them again under new ids, which the next
      // turn of this loop asks for.)
      const failure = this.o.lastFlushError();
      if (failure && this.heldBytes >= this.limit) {
        throw failure instanceof HyperError
          ? failure
          : new HyperError('unavailable', 'STORE_UNAVAILABLE', String(failure));
      }
    }
  }

  /** Blocks of [offset, offset+length) that are partly covered (read unless in the active generation). */
  private edgesToRead(offset: number, length: number): number[] {
    const bs = this.bs;
    const first = Math.floor(offset / bs);
    const last = Math.floor((offset + length - 1) / bs);
    const headPartial = offset % bs !== 0 || (first === last && length < bs);
    const tailPartial = (offset + length) % bs !== 0;
    const out: number[] = [];
    if (headPartial) out.push(first);
    if (tailPartial && last !== first) out.push(last);
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
    const missing = (old: Map<number, Buffer>): number[] =>
      toRead.filter((lba) => !this.active.blocks.get(lba) && !old.has(lba));
    if (missing(new Map()).length === 0) {
      change(new Map());
      await log?.();
      return;
    }
    let durable: Promise<void> | undefined;
    await this.locks.hold(first, last, async () => {
      const old = new Map<number, Buffer>();
      // Until no edge is missing in the same step as the change: a flush may have frozen an
      // edge block that was in the active generation while another edge was being read.
      for (let need = missing(old); need.length > 0; need = missing(old)) {
        await Promise.all(
          need.map(async (lba) => {
            old.set(lba, await this.o.readBlock(lba));
          }),
        );
      }
      this.o.checkWritable();
      change(old);
      durable = log?.();
    });
    await durable;
  }

  /**
   * The whole blocks of `data` become blocks `first`… of the active generation (synchronous).
   * Only when the generation holds none of them yet: a block it holds is updated in place (a
   * kept payload replaced block by block would stay held for nothing, a client rewriting one
   * range could make it hold any amount), so then `data` is copied and goes back at once.
   */
  private adoptIn(first: number, data: Buffer): void {
    const bs = this.bs;
    const n = data.length / bs;
    const gen = this.active;
    for (let k = 0; k < n; k++) {
      if (gen.blocks.has(first + k)) {
        this.copyIn(first * bs, data, new Map());
        this.payloads.give(data);
        return;
      }
    }
    let kept = false;
    for (let k = 0; k < n; k++) {
      const zero = isZero(data, k * bs, (k + 1) * bs);
      gen.set(first + k, zero ? null : data.subarray(k * bs, (k + 1) * bs));
      kept ||= !zero;
    }
    // (Zeros only: nothing of the payload is kept.)
    if (kept) gen.adopt(data);
    else this.payloads.give(data);
    this.touch(first, first + n);
  }

  /**
   * Copy `data` into whole blocks of the active generation (synchronous). Whole blocks that
   * sit next to each other in memory (new blocks are carved from a slab in order) take one
   * copy per run, not one per block: a copy call costs ~2 µs whatever its length, more
   * than copying the 4 KiB itself. A whole block of zeros becomes a hole without taking
   * memory (a client writing zeros over a large range would otherwise fill slabs with blocks
   * that are dropped as soon as they are copied).
   */
  private copyIn(offset: number, data: Data, old: Map<number, Buffer>): void {
    const copy = copier(data);
    const zeroAt = zeroTester(data);
    const bs = this.bs;
    const end = offset + dataLength(data);
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    // The run of whole blocks waiting to be copied: its first block, source offset, length.
    let run: Buffer | undefined;
    let runFrom = 0;
    let runLen = 0;
    const whole: Buffer[] = [];
    const wholeLbas: number[] = [];
    const flushRun = (): void => {
      if (run === undefined) return;
      const dst = runLen === bs ? run : Buffer.from(run.buffer, run.byteOffset, runLen);
      copy(dst, 0, runFrom - offset, runFrom - offset + runLen);
      run = undefined;
    };
    for (let lba = first; lba <= last; lba++) {
      const bStart = lba * bs;
      const from = Math.max(offset, bStart);
      const to = Math.min(end, bStart + bs);
      // A block already in the active generation is updated in place (reads copy out of it).
      const cur = this.active.blocks.get(lba);
      if (to - from === bs) {
        if (zeroAt(from - offset, to - offset)) {
          flushRun();
          this.active.set(lba, null);
          continue;
        }
        const blk = cur ?? this.active.alloc();
        whole.push(blk);
        wholeLbas.push(lba);
        if (
          run !== undefined &&
          blk.buffer === run.buffer &&
          blk.byteOffset === run.byteOffset + runLen
        ) {
          runLen += bs;
        } else {
          flushRun();
          run = blk;
          runFrom = from;
          runLen = bs;
        }
        continue;
      }
      flushRun();
      let blk: Buffer;
      if (cur) blk = cur;
      else {
        const before = old.get(lba);
        blk = this.active.alloc();
        if (before) before.copy(blk);
        else blk.fill(0);
      }
      copy(blk, from - bStart, from - offset, to - offset);
      this.active.set(lba, isZero(blk) ? null : blk);
    }
    flushRun();
    this.touch(first, last + 1);
    // Whole blocks are set once copied (none of them is zeros).
    for (let k = 0; k < whole.length; k++)
      this.active.set(wholeLbas[k] as number, whole[k] as Buffer);
  }
}
