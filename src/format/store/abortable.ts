/**
 * A store whose every request ends when one signal fires: the signal is passed down with the
 * request (the S3 store aborts its HTTP request, the retry wrapper its backoff), and the
 * answer is raced against it, so that a request to a store that hangs without honouring
 * signals ends too. For owners that must stop in bounded time whatever the store does
 * (`hyper replica serve` giving up on a replica that stopped answering).
 *
 * Once the signal fired, a request that was raced may still complete underneath; memory
 * passed as `GetOptions.into` may then still be written. Owners abort only when they stop.
 */
import { HyperError } from '../../errors.js';
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

export class AbortableStore implements ObjectStore {
  readonly url: string;

  constructor(
    readonly inner: ObjectStore,
    private readonly signal: AbortSignal,
  ) {
    this.url = inner.url;
  }

  private options<T extends { signal?: AbortSignal }>(o: T | undefined): T {
    const signal = o?.signal === undefined ? this.signal : AbortSignal.any([o.signal, this.signal]);
    return { ...(o ?? ({} as T)), signal };
  }

  private reason(): HyperError {
    const r: unknown = this.signal.reason;
    return r instanceof HyperError
      ? r
      : new HyperError('unavailable', 'ABORTED', 'The store request was abandoned', { cause: r });
  }

  /** `start()`'s answer, or the signal's reason if it fires first (then nothing is started). */
  private race<T>(start: () => Promise<T>): Promise<T> {
    if (this.signal.aborted) return Promise.reject(this.reason());
    const p = start();
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void => reject(this.reason());
      this.signal.addEventListener('abort', onAbort, { once: true });
      p.then(
        (v) => {
          this.signal.removeEventListener('abort', onAbort);
          resolve(v);
        },
        (e: unknown) => {
          this.signal.removeEventListener('abort', onAbort);
          reject(this.signal.aborted ? this.reason() : (e as Error));
        },
      );
    });
  }

  get(key: string, options?: GetOptions): Promise<GetResult> {
    return this.race(() => this.inner.get(key, this.options(options)));
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectMeta | undefined> {
    return this.race(() => this.inner.head(key, this.options(options)));
  }

  put(key: string, body: PutBody, options?: PutOptions): Promise<{ etag: string }> {
    return this.race(() => this.inner.put(key, body, this.options(options)));
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ListPage> {
    const it = this.inner.list(prefix, this.options(options))[Symbol.asyncIterator]();
    try {
      for (;;) {
        const page = await this.race(() => it.next());
        if (page.done === true) return;
        yield page.value;
      }
    } finally {
      // (An abandoned page may never settle: return() is not awaited.)
      void it.return?.()?.catch(() => undefined);
    }
  }

  delete(keys: readonly string[], options?: { signal?: AbortSignal }): Promise<void> {
    return this.race(() => this.inner.delete(keys, this.options(options)));
  }

  sub(prefix: string): ObjectStore {
    return new AbortableStore(this.inner.sub(prefix), this.signal);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
