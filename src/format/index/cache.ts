/** A least-recently-used map bounded by a byte budget. */
export class LruCache<K, V> {
  private readonly map = new Map<K, { v: V; size: number }>();
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
    while (this.used > this.budget) {
      const first = this.map.keys().next();
      if (first.done) break;
      const e = this.map.get(first.value);
      this.map.delete(first.value);
      if (e) this.used -= e.size;
    }
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
    this.used = 0;
  }

  get bytes(): number {
    return this.used;
  }
  get size(): number {
    return this.map.size;
  }
}
