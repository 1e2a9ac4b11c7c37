// STUB — the URL-keyed factory; implementations for file:// and s3:// land in file.ts / s3.ts.
import { HyperError } from '../../errors.js';
import { MemStore } from './mem.js';
import type { ObjectStore, StoreOptions } from './types.js';

export type { ObjectStore, StoreOptions } from './types.js';

/**
 * Open the store rooted at `url`: `file:///abs/dir/`, `file://./rel/dir/`, `s3://bucket/prefix/`
 * or `mem://name/`. The returned store is wrapped with retries (s3) and request counting.
 */
export function openStore(url: string, _options: StoreOptions = {}): Promise<ObjectStore> {
  if (url.startsWith('mem://')) return Promise.resolve(new MemStore(url));
  return Promise.reject(new HyperError('invalid', 'UNSUPPORTED_STORE', `not implemented yet: ${url}`));
}
