import { randomBytes } from 'node:crypto';
import { HyperError, isHyperError } from '../../errors.js';
import type { ObjectStore } from './types.js';

/**
 * Check that a store really honours conditional writes (some S3-compatible servers ignore
 * `If-None-Match` / `If-Match` and overwrite). Writes a probe key create-only twice and
 * replaces it once with a wrong If-Match; either second write succeeding means the store
 * cannot keep a volume consistent. The probe key is deleted afterwards. The engine calls
 * this when it creates a volume.
 */
export async function probeConditionalWrites(
  store: ObjectStore,
  options: { signal?: AbortSignal } = {},
): Promise<void> {
  const key = `hyper-probe-${randomBytes(8).toString('hex')}`;
  const signal = options.signal ? { signal: options.signal } : {};
  const unsupported = (what: string): HyperError =>
    new HyperError(
      'unavailable',
      'CONDITIONAL_WRITES_UNSUPPORTED',
      `${store.url} ignores conditional writes (${what} overwrote an existing object)`,
      {
        key,
        suggestion:
          'hyper needs If-None-Match / If-Match on PUT: use AWS S3, Ceph RGW, a local directory, or another store that implements them.',
      },
    );
  const { etag } = await store.put(key, Buffer.from('probe 1'), { ...signal, ifNoneMatch: true });
  try {
    try {
      await store.put(key, Buffer.from('probe 2'), { ...signal, ifNoneMatch: true });
      throw unsupported('If-None-Match: *');
    } catch (e) {
      if (!isHyperError(e, 'OBJECT_EXISTS')) throw e;
    }
    try {
      // A wrong tag of the same length that differs in its first character (RGW compares
      // If-Match as a prefix of the stored ETag, so `${etag}x` would match there).
      const wrong = (etag.startsWith('0') ? '1' : '0') + etag.slice(1);
      await store.put(key, Buffer.from('probe 3'), { ...signal, ifMatch: wrong });
      throw unsupported('If-Match with a wrong ETag');
    } catch (e) {
      if (!isHyperError(e, 'PRECONDITION_FAILED')) throw e;
    }
  } finally {
    await store.delete([key], signal).catch(() => undefined);
  }
}
