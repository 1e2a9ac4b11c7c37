/**
 * A fixed set of cache slots with an S3-FIFO eviction policy (small FIFO, main FIFO, ghost
 * keys), kept in typed arrays so that millions of entries cost tens of bytes each and no
 * per-entry object.
 *
 * Keys are (store, seg, off): a small store number, a segment id and a byte offset in the
 * segment (a multiple of 512 below 2^41). New keys enter the small queue (about a tenth of
 * the slots); a key read again before it leaves the small queue moves to the main queue, any
 * other leaves, and only its key is remembered (ghost). A key that comes back while it is a
 * ghost goes straight to the main queue. The main queue is a CLOCK: an entry read since its
 * last pass gets another round. So a sequential scan of blocks read once passes through the
 * small queue and never pushes the hot set out of the main queue.
 */
import { OldestKey } from '../index/cache.js';

const EMPTY = -1;

export class SlotPolicy {
  readonly slots: number;
  private readonly seg: Float64Array;
  private readonly off: Float64Array;
  private readonly store: Uint16Array;
  /** 0 free, 1 small, 2 main, 3 removed but still queued (reused when the queue reaches it). */
  private readonly where: Uint8Array;
  private readonly freq: Uint8Array;
  /** Open-addressing hash table (linear probing) of slot numbers. */
  private readonly table: Int32Array;
  private readonly mask: number;
  private readonly small: Ring;
  private readonly main: Ring;
  private readonly free: Int32Array;
  private freeCount: number;
  private readonly smallTarget: number;
  private readonly ghost = new Set<number>();
  private readonly ghostOldest = new OldestKey(() => this.ghost.values());
  private readonly ghostMax: number;
  used = 0;

  constructor(slots: number) {
    if (!Number.isSafeInteger(slots) || slots < 1) throw new RangeError(`bad slot count ${slots}`);
    this.slots = slots;
    this.seg = new Float64Array(slots);
    this.off = new Float64Array(slots);
    this.store = new Uint16Array(slots);
    this.where = new Uint8Array(slots);
    this.freq = new Uint8Array(slots);
    let cap = 1;
    while (cap < slots * 2) cap *= 2;
    this.table = new Int32Array(cap).fill(EMPTY);
    this.mask = cap - 1;
    this.small = new Ring(slots);
    this.main = new Ring(slots);
    this.free = new Int32Array(slots);
    for (let i = 0; i < slots; i++) this.free[i] = slots - 1 - i;
    this.freeCount = slots;
    this.smallTarget = Math.max(1, Math.floor(slots / 10));
    this.ghostMax = slots;
  }

  /** The slot holding a key, or -1. Does not count as an access. */
  find(store: number, seg: number, off: number): number {
    let h = hash(store, seg, off) & this.mask;
    for (;;) {
      const s = this.table[h] as number;
      if (s === EMPTY) return -1;
      if (this.seg[s] === seg && this.off[s] === off && this.store[s] === store) return s;
      h = (h + 1) & this.mask;
    }
  }

  /** Record a read of an occupied slot. */
  touch(slot: number): void {
    const f = this.freq[slot] as number;
    if (f < 3) this.freq[slot] = f + 1;
  }

  /**
   * A slot for a new key (the caller checked it is not present): a free one, or one whose
   * entry is evicted now (`onEvict` is told which, before it is reused).
   */
  insert(store: number, seg: number, off: number, onEvict?: (slot: number) => void): number {
    let slot: number;
    if (this.freeCount > 0) slot = this.free[--this.freeCount] as number;
    else {
      const live = this.evict();
      slot = live < 0 ? -live - 1 : live;
      if (live >= 0) onEvict?.(slot);
    }
    this.seg[slot] = seg;
    this.off[slot] = off;
    this.store[slot] = store;
    this.freq[slot] = 0;
    const g = ghostKey(store, seg, off);
    if (this.ghost.delete(g)) {
      this.where[slot] = 2;
      this.main.push(slot);
    } else {
      this.where[slot] = 1;
      this.small.push(slot);
    }
    this.tableAdd(slot);
    this.used++;
    return slot;
  }

  /** Take a specific free slot for a key found on disk at start-up (goes to the main queue). */
  restore(slot: number, store: number, seg: number, off: number): boolean {
    if (this.where[slot] !== 0 || this.find(store, seg, off) >= 0) return false;
    // Remove `slot` from the free stack (start-up only: the stack is still in order).
    const idx = this.free.lastIndexOf(slot, this.freeCount - 1);
    if (idx < 0) return false;
    this.free[idx] = this.free[--this.freeCount] as number;
    this.seg[slot] = seg;
    this.off[slot] = off;
    this.store[slot] = store;
    this.freq[slot] = 0;
    this.where[slot] = 2;
    this.main.push(slot);
    this.tableAdd(slot);
    this.used++;
    return true;
  }

  /** Forget the entry in `slot` (damaged, or invalid): the slot is free again. */
  remove(slot: number): void {
    if (this.where[slot] === 0) return;
    if (this.where[slot] === 3) return;
    this.tableDelete(slot);
    // It stays in its queue (each slot is queued at most once): eviction reuses it first.
    this.where[slot] = 3;
    this.used--;
  }

  occupied(slot: number): boolean {
    const w = this.where[slot] as number;
    return w === 1 || w === 2;
  }

  keyOf(slot: number): { store: number; seg: number; off: number } {
    return {
      store: this.store[slot] as number,
      seg: this.seg[slot] as number,
      off: this.off[slot] as number,
    };
  }

  /** Evict one entry and return its (now unlisted) slot; a removed slot reused is -slot-1. */
  private evict(): number {
    for (;;) {
      if (this.small.size > 0 && (this.small.size >= this.smallTarget || this.main.size === 0)) {
        const s = this.small.shift();
        if (this.where[s] === 3) {
          this.where[s] = 0;
          return -s - 1;
        }
        if ((this.freq[s] as number) > 0) {
          this.freq[s] = 0;
          this.where[s] = 2;
          this.main.push(s);
          continue;
        }
        const g = ghostKey(this.store[s] as number, this.seg[s] as number, this.off[s] as number);
        this.ghost.add(g);
        if (this.ghost.size > this.ghostMax) {
          const first = this.ghostOldest.take();
          if (first !== undefined) this.ghost.delete(first);
        }
        return this.take(s);
      }
      if (this.main.size === 0) throw new Error('s3fifo: nothing to evict');
      const s = this.main.shift();
      if (this.where[s] === 3) {
        this.where[s] = 0;
        return -s - 1;
      }
      const f = this.freq[s] as number;
      if (f > 0) {
        this.freq[s] = f - 1;
        this.main.push(s);
        continue;
      }
      return this.take(s);
    }
  }

  private take(slot: number): number {
    this.tableDelete(slot);
    this.where[slot] = 0;
    this.used--;
    return slot;
  }

  private tableAdd(slot: number): void {
    let h =
      hash(this.store[slot] as number, this.seg[slot] as number, this.off[slot] as number) &
      this.mask;
    while (this.table[h] !== EMPTY) h = (h + 1) & this.mask;
    this.table[h] = slot;
  }

  /** Delete with backward shift (no tombstones: probe chains stay short). */
  private tableDelete(slot: number): void {
    const mask = this.mask;
    let h =
      hash(this.store[slot] as number, this.seg[slot] as number, this.off[slot] as number) & mask;
    while (this.table[h] !== slot) {
      if (this.table[h] === EMPTY) return;
      h = (h + 1) & mask;
    }
    let hole = h;
    let j = h;
    for (;;) {
      j = (j + 1) & mask;
      const s = this.table[j] as number;
      if (s === EMPTY) break;
      const home =
        hash(this.store[s] as number, this.seg[s] as number, this.off[s] as number) & mask;
      // Move s into the hole unless its home lies cyclically in (hole, j].
      const inRange = hole <= j ? home > hole && home <= j : home > hole || home <= j;
      if (!inRange) {
        this.table[hole] = s;
        hole = j;
      }
    }
    this.table[hole] = EMPTY;
  }
}

/** A FIFO of slot numbers with room for every slot once. */
class Ring {
  private readonly buf: Int32Array;
  private head = 0;
  size = 0;
  constructor(cap: number) {
    this.buf = new Int32Array(cap);
  }
  push(v: number): void {
    if (this.size === this.buf.length) throw new Error('s3fifo: queue overflow');
    this.buf[(this.head + this.size) % this.buf.length] = v;
    this.size++;
  }
  shift(): number {
    const v = this.buf[this.head] as number;
    this.head = (this.head + 1) % this.buf.length;
    this.size--;
    return v;
  }
}

function hash(store: number, seg: number, off: number): number {
  const lo = (seg >>> 0) ^ Math.imul(store, 0x27d4eb2d);
  const hi = Math.floor(seg / 4294967296);
  const o = Math.floor(off / 512) ^ Math.imul(off % 512, 0x165667b1);
  let h = Math.imul(lo ^ 0x9e3779b9, 0x85ebca6b);
  h ^= Math.imul(o ^ (hi << 16), 0xc2b2ae35);
  h ^= h >>> 15;
  h = Math.imul(h, 0x27d4eb2f);
  h ^= h >>> 13;
  return h >>> 0;
}

/** A number naming a key for the ghost set (collisions only misplace an entry). */
function ghostKey(store: number, seg: number, off: number): number {
  return (hash(store, seg, off) * 4096 + (Math.floor(off / 512) & 4095)) % Number.MAX_SAFE_INTEGER;
}
