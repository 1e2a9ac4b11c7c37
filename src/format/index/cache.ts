/**
 * The oldest key of a Map or Set (insertion order) in amortized constant time, for FIFO and LRU
 * eviction. `map.keys().next()` starts at the front of V8's hash table and steps over every slot
 * deleted since the table was last rebuilt, so evicting from the front that way costs time in
 * proportion to the size (3 µs per insert in a cache of 8,192 blocks). One iterator kept across
 * calls does not step over them again. The language defines that an iterator skips entries
 * deleted before it reaches them and visits entries added after it was made, so it always
 * yields the oldest key still there, provided every key it yields is deleted (or deleted and
 * added again, which moves it to the end).
 */
export class OldestKey<K> {
  private it: Iterator<K> | undefined;

  constructor(private readonly keys: () => Iterator<K>) {}

  /** The oldest key, which the caller deletes; undefined when the collection is empty. */
  take(): K | undefined {
    for (let fresh = 0; fresh < 2; fresh++) {
      this.it ??= this.keys();
      const r = this.it.next();
      if (r.done !== true) return r.value;
      // A finished iterator stays finished: entries added since need a new one.
      this.it = undefined;
    }
    return undefined;
  }

  /** Start again from the front (after the collection was cleared). */
  reset(): void {
    this.it = undefined;
  }
}

/** A least-recently-used map bounded by a byte budget. */
export class LruCache<K, V> {
  private readonly map = new Map<K, { v: V; size: number }>();
  private readonly oldest = new OldestKey(() => this.map.keys());
  private used = 0;
  hits = 0;
  misses = 0;

  constructor(private readonly budget: number) {}

  get(k: K): V | undefined {
    const e = this.map.get(k);
    if (!e) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    // Re-insert to mark as most recently used.
    this.map.delete(k);
    this.map.set(k, e);
    return e.v;
  }

  /** Look without counting or reordering. */
  peek(k: K): V | undefined {
    return this.map.get(k)?.v;
  }

  set(k: K, v: V, size: number): void {
    if (size > this.budget) return;
    const old = this.map.get(k);
    if (old) {
      this.used -= old.size;
      this.map.delete(k);
    }
    this.map.set(k, { v, size });
    this.used += size;
    this.trimTo(this.budget);
  }

  delete(k: K): void {
    const e = this.map.get(k);
    if (e) {
      this.used -= e.size;
      this.map.delete(k);
    }
  }

  clear(): void {
    this.map.clear();
    this.oldest.reset();
    this.used = 0;
  }

  /** Evict the least recently used entries until at most `bytes` are used. */
  trimTo(bytes: number): void {
    while (this.used > bytes) {
      const k = this.oldest.take();
      if (k === undefined) break;
      const e = this.map.get(k);
      this.map.delete(k);
      if (e) this.used -= e.size;
    }
  }

  get bytes(): number {
    return this.used;
  }
  get size(): number {
    return this.map.size;
  }
}

/**
 * A memory cache for data blocks in two parts: blocks a read asked for live in the main LRU;
 * blocks fetched on speculation (read-around neighbours) wait in a probation LRU and move to
 * the main part when a read asks for them. Speculation then never evicts the blocks reads
 * keep coming back to: a random read's 64 KiB of neighbours would otherwise push sixteen
 * times its own size through the cache. Probation has a quarter of the budget, and also uses
 * what the main part leaves free (given back as the main part grows): a cold random read
 * keeps four times as many neighbours, which later reads find.
 */
export class DataCache<K> {
  private readonly main: LruCache<K, Buffer>;
  private readonly probation: LruCache<K, Buffer>;
  /** Probation's own share; the rest of what it holds is room the main part does not use. */
  private readonly side: number;

  constructor(private readonly budget: number) {
    const side = Math.floor(budget / 4);
    this.side = side;
    this.main = new LruCache(budget - side);
    this.probation = new LruCache(budget);
  }

  /** What probation may hold now: its share, or all the main part leaves free. */
  private probationRoom(): number {
    return Math.max(this.side, this.budget - this.main.bytes);
  }

  get hits(): number {
    return this.main.hits + this.probation.hits;
  }

  /** Misses of the whole cache (a block in neither part). */
  get misses(): number {
    return this.probation.misses;
  }

  get(k: K): Buffer | undefined {
    const v = this.main.peek(k);
    if (v !== undefined) return this.main.get(k);
    const p = this.probation.get(k);
    if (p === undefined) return undefined;
    this.probation.delete(k);
    this.main.set(k, p, p.length);
    this.probation.trimTo(this.probationRoom());
    return p;
  }

  peek(k: K): Buffer | undefined {
    return this.main.peek(k) ?? this.probation.peek(k);
  }

  /** Keep `v`; `speculative` when no read asked for it (yet). */
  set(k: K, v: Buffer, size: number, speculative = false): void {
    if (speculative && this.main.peek(k) === undefined) {
      if (size > this.side) return;
      this.probation.set(k, v, size);
    } else {
      this.probation.delete(k);
      this.main.set(k, v, size);
    }
    this.probation.trimTo(this.probationRoom());
  }

  delete(k: K): void {
    this.main.delete(k);
    this.probation.delete(k);
  }

  clear(): void {
    this.main.clear();
    this.probation.clear();
  }

  get bytes(): number {
    return this.main.bytes + this.probation.bytes;
  }

  get size(): number {
    return this.main.size + this.probation.size;
  }
}
