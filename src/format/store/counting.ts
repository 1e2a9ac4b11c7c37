/**
 * Request and byte counters around any store. `openStore` puts this wrapper outermost, so the
 * counts are the requests the engine asked for (one per call; a list counts one per page, a
 * delete one per 1000 keys, as S3 bills them). Retries below it are not counted again.
 * The commands that report their requests (compact, snapshot) and the benchmarks read them with
 * `storeStats()` or `requestCount()`.
 */
import type {
  GetOptions,
  GetResult,
  ListOptions,
  ListPage,
  ObjectMeta,
  ObjectStore,
  PutBody,
  PutOptions,
  StoreStats,
} from './types.js';
import { bodyLength } from './common.js';

export const emptyStats = (): StoreStats => ({
  get: 0,
  put: 0,
  list: 0,
  head: 0,
  delete: 0,
  bytesIn: 0,
  bytesOut: 0,
});

/** Keys per delete request (S3 DeleteObjects limit). */
const DELETE_BATCH = 1000;

export class CountingStore implements ObjectStore {
  readonly url: string;

  /** `stats` is shared with the stores returned by `sub()`. */
  constructor(
    readonly inner: ObjectStore,
    private readonly counters: StoreStats = emptyStats(),
  ) {
    this.url = inner.url;
  }

  /** A snapshot of the counters (shared by this store and its `sub()` stores). */
  stats(): StoreStats {
    return { ...this.counters };
  }

  resetStats(): void {
    Object.assign(this.counters, emptyStats());
  }

  async get(key: string, options?: GetOptions): Promise<GetResult> {
    this.counters.get++;
    const r = await this.inner.get(key, options);
    this.counters.bytesIn += r.body.length;
    return r;
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectMeta | undefined> {
    this.counters.head++;
    return this.inner.head(key, options);
  }

  put(key: string, body: PutBody, options?: PutOptions): Promise<{ etag: string }> {
    this.counters.put++;
    this.counters.bytesOut += bodyLength(body);
    return this.inner.put(key, body, options);
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ListPage> {
    this.counters.list++;
    let first = true;
    for await (const page of this.inner.list(prefix, options)) {
      if (!first) this.counters.list++;
      first = false;
      yield page;
    }
  }

  delete(keys: readonly string[], options?: { signal?: AbortSignal }): Promise<void> {
    this.counters.delete += Math.ceil(keys.length / DELETE_BATCH);
    return this.inner.delete(keys, options);
  }

  sub(prefix: string): ObjectStore {
    return new CountingStore(this.inner.sub(prefix), this.counters);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** The counters of a store opened by `openStore` (undefined for an unwrapped store). */
export function storeStats(store: ObjectStore): StoreStats | undefined {
  return store instanceof CountingStore ? store.stats() : undefined;
}

/** Requests of every kind in a counter snapshot. */
export function totalRequests(s: StoreStats): number {
  return s.get + s.put + s.list + s.head + s.delete;
}

/** Requests made so far through a store opened by `openStore` (0 if it does not count). */
export function requestCount(store: ObjectStore): number {
  const s = storeStats(store);
  return s === undefined ? 0 : totalRequests(s);
}

/** Difference of two counter snapshots (`after - before`). */
export function diffStats(after: StoreStats, before: StoreStats): StoreStats {
  return {
    get: after.get - before.get,
    put: after.put - before.put,
    list: after.list - before.list,
    head: after.head - before.head,
    delete: after.delete - before.delete,
    bytesIn: after.bytesIn - before.bytesIn,
    bytesOut: after.bytesOut - before.bytesOut,
  };
}
