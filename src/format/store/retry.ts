/**
 * Retries around a store: the one retry policy of hyper (the S3 client itself is configured
 * for a single attempt when wrapped). Retried: STORE_UNAVAILABLE (throttling such as 503
 * SlowDown, other 5xx, timeouts, connection errors). Never retried: not-found, conflicts
 * (412/409), access denied, invalid input, aborts.
 *
 * Backoff is exponential with full jitter: attempt n waits uniform(0, min(maxDelay, base·2^n)).
 *
 * A conditional PUT whose earlier attempt failed with a retryable error may in fact have
 * landed (the response was lost). Its retry then fails with OBJECT_EXISTS (create-only) or
 * PRECONDITION_FAILED (CAS) against our own write. In that case the wrapper HEADs the key and
 * treats the write as done if the stored ETag is the MD5 of our body (what S3 and RGW return
 * for a single PUT; the mem store does the same), or, when the ETag is not an MD5, if a GET
 * returns exactly our bytes. (Another writer storing byte-identical content in between is
 * indistinguishable, and harmless: the object holds what we meant to write.)
 */
import { createHash } from 'node:crypto';
import { isHyperError, type HyperError } from '../../errors.js';
import { reportRetry } from './observed.js';
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
import { DEFAULT_MAX_ATTEMPTS } from './types.js';
import { bodyLength, bodyParts, joinBody } from './common.js';

export interface RetryOptions {
  /** Total attempts, first included (default DEFAULT_MAX_ATTEMPTS). */
  maxAttempts?: number;
  /** First backoff ceiling in ms (default 50). */
  baseDelayMs?: number;
  /** Largest backoff ceiling in ms (default 5000). */
  maxDelayMs?: number;
  /** Called before each retry (for logs and tests). */
  onRetry?: (info: {
    op: string;
    key?: string;
    attempt: number;
    delayMs: number;
    error: HyperError;
  }) => void;
  /** Test hook: replaces the timer. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
}

export function isRetryable(e: unknown): boolean {
  return isHyperError(e, 'STORE_UNAVAILABLE');
}

const defaultSleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal?.reason as Error);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

export class RetryingStore implements ObjectStore {
  readonly url: string;
  private readonly maxAttempts: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly sleep: (ms: number, signal?: AbortSignal) => Promise<void>;

  constructor(
    readonly inner: ObjectStore,
    private readonly options: RetryOptions = {},
  ) {
    this.url = inner.url;
    this.maxAttempts = Math.max(1, options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS);
    this.baseDelayMs = options.baseDelayMs ?? 50;
    this.maxDelayMs = options.maxDelayMs ?? 5000;
    this.sleep = options.sleep ?? defaultSleep;
  }

  private async run<T>(
    op: string,
    key: string | undefined,
    signal: AbortSignal | undefined,
    fn: (attempt: number) => Promise<T>,
  ): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await fn(attempt);
      } catch (e) {
        if (!isRetryable(e) || attempt >= this.maxAttempts || signal?.aborted) throw e;
        const ceiling = Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (attempt - 1));
        const delayMs = Math.random() * ceiling;
        this.options.onRetry?.({
          op,
          ...(key === undefined ? {} : { key }),
          attempt,
          delayMs,
          error: e as HyperError,
        });
        reportRetry(op, e, attempt);
        await this.sleep(delayMs, signal);
      }
    }
  }

  get(key: string, options?: GetOptions): Promise<GetResult> {
    return this.run('get', key, options?.signal, () => this.inner.get(key, options));
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectMeta | undefined> {
    return this.run('head', key, options?.signal, () => this.inner.head(key, options));
  }

  async put(key: string, body: PutBody, options: PutOptions = {}): Promise<{ etag: string }> {
    const conditional = options.ifNoneMatch === true || options.ifMatch !== undefined;
    let mayHaveLanded = false;
    return this.run('put', key, options.signal, async () => {
      try {
        return await this.inner.put(key, body, options);
      } catch (e) {
        if (isRetryable(e)) {
          mayHaveLanded = true;
          throw e;
        }
        if (
          conditional &&
          mayHaveLanded &&
          (isHyperError(e, 'OBJECT_EXISTS') || isHyperError(e, 'PRECONDITION_FAILED'))
        ) {
          const hash = createHash('md5');
          for (const p of bodyParts(body)) hash.update(p);
          const md5 = hash.digest('hex');
          const signal = options.signal ? { signal: options.signal } : {};
          const meta = await this.inner.head(key, signal);
          if (meta && meta.size === bodyLength(body)) {
            if (meta.etag === md5) return { etag: meta.etag };
            // ETag is not an MD5 here (e.g. SSE-KMS, or the file store): compare the bytes.
            const cur = await this.inner.get(key, signal);
            if (cur.body.equals(joinBody(body))) return { etag: cur.etag };
          }
        }
        throw e;
      }
    });
  }

  async *list(prefix: string, options: ListOptions = {}): AsyncIterable<ListPage> {
    // Resume after the last key seen, so a failed page is retried without repeating keys.
    let after = options.startAfter;
    let attempt = 1;
    for (;;) {
      try {
        const it = this.inner.list(prefix, {
          ...options,
          ...(after === undefined ? {} : { startAfter: after }),
        });
        for await (const page of it) {
          const last = page.objects[page.objects.length - 1]?.key;
          const lastPrefix = page.prefixes[page.prefixes.length - 1];
          // Past a common prefix means past every key under it.
          const pastPrefix = lastPrefix === undefined ? undefined : `${lastPrefix}\u{10FFFF}`;
          if (
            last !== undefined &&
            (pastPrefix === undefined ||
              Buffer.compare(Buffer.from(last), Buffer.from(pastPrefix)) > 0)
          ) {
            after = last;
          } else if (pastPrefix !== undefined) {
            after = pastPrefix;
          }
          yield page;
          attempt = 1;
        }
        return;
      } catch (e) {
        if (!isRetryable(e) || attempt >= this.maxAttempts || options.signal?.aborted) throw e;
        const delayMs =
          Math.random() * Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (attempt - 1));
        this.options.onRetry?.({
          op: 'list',
          key: prefix,
          attempt,
          delayMs,
          error: e as HyperError,
        });
        reportRetry('list', e, attempt);
        attempt++;
        await this.sleep(delayMs, options.signal);
      }
    }
  }

  delete(keys: readonly string[], options?: { signal?: AbortSignal }): Promise<void> {
    // Deletes are idempotent (missing keys are not an error): retrying the whole call is safe.
    return this.run('delete', undefined, options?.signal, () => this.inner.delete(keys, options));
  }

  sub(prefix: string): ObjectStore {
    return new RetryingStore(this.inner.sub(prefix), this.options);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
