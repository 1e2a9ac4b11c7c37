/**
 * The URL-keyed store factory. `openStore(url)` returns the store for
 * `file:///abs/dir/`, `file://./rel/dir/`, `s3://bucket/prefix/` or `mem://name/`, wrapped
 * as counting(retrying(backend)): retries only for S3 (the file and mem stores do not fail
 * transiently), counting outermost so the counts are the requests hyper asked for.
 */
import { CountingStore } from './counting.js';
import { FileStore } from './file.js';
import { MemStore } from './mem.js';
import { RetryingStore, type RetryOptions } from './retry.js';
import type { S3StoreOptions } from './s3.js';
import type { ObjectStore, StoreOptions } from './types.js';
import { parseStoreUrl } from './url.js';

export type { ObjectStore, StoreOptions, StoreStats } from './types.js';
export { parseStoreUrl, isLocalStoreUrl, ACCEPTED_URL_FORMS, type StoreUrl } from './url.js';
export {
  CountingStore,
  storeStats,
  diffStats,
  emptyStats,
  requestCount,
  totalRequests,
} from './counting.js';
export { RetryingStore, type RetryOptions } from './retry.js';
export { AbortableStore } from './abortable.js';
export { probeConditionalWrites } from './probe.js';
export {
  ObservedStore,
  observeStore,
  storeLabel,
  type StoreObserver,
  type StoreOp,
  type StoreRequestEvent,
  type StoreRetryEvent,
} from './observed.js';

export interface OpenStoreOptions
  extends StoreOptions, Pick<S3StoreOptions, 'credentials' | 'maxSockets' | 'profile'> {
  /** Keys per list page (tests use small pages to exercise pagination). */
  pageSize?: number;
  /** Retry policy details for S3 (maxAttempts comes from StoreOptions). */
  retry?: Omit<RetryOptions, 'maxAttempts'>;
}

let defaults: OpenStoreOptions = {};

/**
 * The options for stores a volume names and a caller opens without an opener of its own (a
 * clone's parent, a WAL: volume/segments.ts `defaultOpenStore`). The CLI sets its endpoint,
 * region and profile here (base-command.ts), so that a path that forgets to pass its opener
 * still reaches the same store instead of AWS's default endpoint.
 */
export function setDefaultStoreOptions(options: OpenStoreOptions): void {
  defaults = options;
}

/** What `setDefaultStoreOptions` set (nothing by default: the environment decides). */
export const defaultStoreOptions = (): OpenStoreOptions => defaults;

/**
 * Open the store rooted at `url`. Throws INVALID_URL / UNSUPPORTED_STORE for a bad URL;
 * a missing directory or bucket is reported by the first request (BUCKET_NOT_FOUND).
 */
export async function openStore(
  url: string,
  options: OpenStoreOptions = {},
): Promise<CountingStore> {
  const u = parseStoreUrl(url);
  let store: ObjectStore;
  switch (u.scheme) {
    case 'mem': {
      const m = new MemStore(u.url);
      if (options.pageSize !== undefined) m.pageSize = options.pageSize;
      store = m;
      break;
    }
    case 'file':
      store = new FileStore(
        u.dir,
        options.pageSize === undefined ? {} : { pageSize: options.pageSize },
      );
      break;
    case 's3': {
      // Loaded on demand: the AWS SDK costs ~200 ms of start-up that file:// commands skip.
      const { S3Store } = await import('./s3.js');
      const s3 = new S3Store(u.bucket, u.prefix, {
        ...options,
        // One retry policy: ours. The SDK makes a single attempt.
        maxAttempts: 1,
      });
      store = new RetryingStore(s3, {
        ...options.retry,
        ...(options.maxAttempts === undefined ? {} : { maxAttempts: options.maxAttempts }),
      });
      break;
    }
  }
  return new CountingStore(store);
}
