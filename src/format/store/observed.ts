/**
 * Reporting a store's requests to an observer (for metrics): each request hyper makes, with
 * its bytes, duration and outcome, and each retry the retry layer below makes for it.
 *
 * `observeStore(store, observer)` wraps any store; the stores it hands out with `sub()` report
 * to the same observer. Retries happen inside RetryingStore, below this wrapper: the wrapper
 * runs every request in an async context that carries the observer, and RetryingStore reports
 * each retry to the observer of the request it retries (`reportRetry`). So one store opened
 * once can be observed separately by several owners (e.g. one per export).
 *
 * Errors are reported by their stable HyperError code (OBJECT_NOT_FOUND, PRECONDITION_FAILED,
 * STORE_UNAVAILABLE, …); the mapping from backend errors stays in the stores themselves.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { isHyperError } from '../../errors.js';
import type {
  GetOptions,
  GetResult,
  ListOptions,
  ListPage,
  ObjectMeta,
  ObjectStore,
  PutBody,
  PutOptions,
} from './types.js';
import { bodyLength } from './common.js';
import { parseStoreUrl } from './url.js';

/** Request kinds as S3 names them. A LIST is one page; a DELETE one batch call. */
export type StoreOp = 'GET' | 'PUT' | 'HEAD' | 'DELETE' | 'LIST';

export interface StoreRequestEvent {
  op: StoreOp;
  /** Bytes received (GET) or sent (PUT); 0 otherwise. */
  bytes: number;
  /** Time the request took, retries included. */
  seconds: number;
  /** HyperError code of a failed request (after retries); undefined on success. */
  error: string | undefined;
}

export interface StoreRetryEvent {
  op: StoreOp;
  /** HyperError code of the attempt that is retried (STORE_UNAVAILABLE). */
  code: string;
  /** The attempt that failed (1 = the first). */
  attempt: number;
}

/** Callbacks must be cheap and must not throw (what they throw is ignored). */
export interface StoreObserver {
  request?(event: StoreRequestEvent): void;
  retry?(event: StoreRetryEvent): void;
}

const context = new AsyncLocalStorage<StoreObserver>();

const RETRY_OPS: Record<string, StoreOp> = {
  get: 'GET',
  put: 'PUT',
  head: 'HEAD',
  delete: 'DELETE',
  list: 'LIST',
};

/** Called by the retry layer before each retry: tells the observer of the request, if any. */
export function reportRetry(op: string, error: unknown, attempt: number): void {
  const observer = context.getStore();
  if (observer?.retry === undefined) return;
  try {
    observer.retry({ op: RETRY_OPS[op] ?? 'GET', code: errorCode(error), attempt });
  } catch {
    // An observer never changes the outcome of a request.
  }
}

function errorCode(e: unknown): string {
  return isHyperError(e) ? e.code : 'INTERNAL';
}

/**
 * A short, bounded label for the store behind a URL: `s3://bucket`, `file` or `mem` (a
 * directory path or prefix would make one time series per volume).
 */
export function storeLabel(url: string): string {
  try {
    const u = parseStoreUrl(url);
    return u.scheme === 's3' ? `s3://${u.bucket}` : u.scheme;
  } catch {
    return 'unknown';
  }
}

export function observeStore(store: ObjectStore, observer: StoreObserver): ObjectStore {
  return new ObservedStore(store, observer);
}

export class ObservedStore implements ObjectStore {
  readonly url: string;

  constructor(
    readonly inner: ObjectStore,
    private readonly observer: StoreObserver,
  ) {
    this.url = inner.url;
  }

  private report(op: StoreOp, bytes: number, t0: number, error: unknown): void {
    if (this.observer.request === undefined) return;
    try {
      this.observer.request({
        op,
        bytes,
        seconds: (performance.now() - t0) / 1000,
        error: error === undefined ? undefined : errorCode(error),
      });
    } catch {
      // An observer never changes the outcome of a request.
    }
  }

  private async run<T>(op: StoreOp, bytes: (r: T) => number, fn: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    let r: T;
    try {
      r = await context.run(this.observer, fn);
    } catch (e) {
      this.report(op, 0, t0, e);
      throw e;
    }
    this.report(op, bytes(r), t0, undefined);
    return r;
  }

  get(key: string, options?: GetOptions): Promise<GetResult> {
    return this.run(
      'GET',
      (r) => r.body.length,
      () => this.inner.get(key, options),
    );
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectMeta | undefined> {
    return this.run(
      'HEAD',
      () => 0,
      () => this.inner.head(key, options),
    );
  }

  put(key: string, body: PutBody, options?: PutOptions): Promise<{ etag: string }> {
    return this.run(
      'PUT',
      () => bodyLength(body),
      () => this.inner.put(key, body, options),
    );
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ListPage> {
    const it = context.run(this.observer, () =>
      this.inner.list(prefix, options)[Symbol.asyncIterator](),
    );
    // One LIST request per page, as S3 bills them: the end of the listing is known from the
    // last page, so asking for the next one costs nothing (unless there was no page at all).
    for (let pages = 0; ; pages++) {
      const t0 = performance.now();
      let page: IteratorResult<ListPage>;
      try {
        page = await context.run(this.observer, () => it.next());
      } catch (e) {
        this.report('LIST', 0, t0, e);
        throw e;
      }
      if (page.done !== true || pages === 0) this.report('LIST', 0, t0, undefined);
      if (page.done === true) return;
      yield page.value;
    }
  }

  delete(keys: readonly string[], options?: { signal?: AbortSignal }): Promise<void> {
    if (keys.length === 0) return this.inner.delete(keys, options);
    return this.run(
      'DELETE',
      () => 0,
      () => this.inner.delete(keys, options),
    );
  }

  sub(prefix: string): ObjectStore {
    return new ObservedStore(this.inner.sub(prefix), this.observer);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
