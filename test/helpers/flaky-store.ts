/**
 * A store that fails requests when told to: every request of every view shares one `Faults`
 * switch. A failure comes before the request reaches the store or after the store applied
 * it (the answer lost), as a store that resets connections does; both are
 * STORE_UNAVAILABLE, like the real stores' exhausted retries.
 */
import { HyperError } from '../../src/errors.js';
import type {
  GetOptions,
  GetResult,
  ListOptions,
  ListPage,
  ObjectMeta,
  ObjectStore,
  PutBody,
  PutOptions,
} from '../../src/format/store/types.js';

export interface Faults {
  /** Chance that a request fails (0: none). */
  rate: number;
  /** Fail every request whose operation is listed, whatever the rate. */
  down?: Set<'get' | 'head' | 'put' | 'list' | 'delete'>;
  /** Random numbers in [0, 1) (seeded, so that a run replays). */
  rand: () => number;
  /** Counts of injected failures. */
  injected: number;
  /** Counts of requests (each view's, failed ones included). */
  requests?: number;
  /** Milliseconds each request waits before it reaches the store (a store far away). */
  delayMs?: () => number;
}

export class FlakyStore implements ObjectStore {
  readonly url: string;

  constructor(
    private readonly inner: ObjectStore,
    private readonly faults: Faults,
  ) {
    this.url = inner.url;
  }

  private fails(op: 'get' | 'head' | 'put' | 'list' | 'delete'): 'before' | 'after' | undefined {
    const f = this.faults;
    if (f.down?.has(op)) return 'before';
    if (f.rate <= 0 || f.rand() >= f.rate) return undefined;
    return f.rand() < 0.5 ? 'before' : 'after';
  }

  private failure(op: string, key: string): HyperError {
    this.faults.injected++;
    return new HyperError('unavailable', 'STORE_UNAVAILABLE', `injected failure: ${op} ${key}`);
  }

  private async run<T>(
    op: 'get' | 'head' | 'put' | 'list' | 'delete',
    key: string,
    fn: () => Promise<T>,
  ): Promise<T> {
    this.faults.requests = (this.faults.requests ?? 0) + 1;
    const ms = this.faults.delayMs?.() ?? 0;
    if (ms > 0) await new Promise((resolve) => setTimeout(resolve, ms));
    const f = this.fails(op);
    if (f === 'before') throw this.failure(op, key);
    const out = await fn();
    if (f === 'after') throw this.failure(op, key);
    return out;
  }

  get(key: string, options?: GetOptions): Promise<GetResult> {
    return this.run('get', key, () => this.inner.get(key, options));
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectMeta | undefined> {
    return this.run('head', key, () => this.inner.head(key, options));
  }

  put(key: string, body: PutBody, options?: PutOptions): Promise<{ etag: string }> {
    return this.run('put', key, () => this.inner.put(key, body, options));
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ListPage> {
    const pages = await this.run('list', prefix, async () => {
      const out: ListPage[] = [];
      for await (const p of this.inner.list(prefix, options)) out.push(p);
      return out;
    });
    yield* pages;
  }

  delete(keys: readonly string[], options?: { signal?: AbortSignal }): Promise<void> {
    return this.run('delete', keys[0] ?? '', () => this.inner.delete(keys, options));
  }

  sub(prefix: string): ObjectStore {
    return new FlakyStore(this.inner.sub(prefix), this.faults);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
