/**
 * The cache and write-buffer flags `serve` and `daemon` share become the serving library's
 * settings: each flag given reaches its field, those left out stay unset (the engine's
 * defaults apply), and the daemon's disk cache is divided by export name.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { tuningOf } from '../../../src/flags.js';

const MiB = 1024 * 1024;

describe('volume tuning flags', () => {
  it('maps every flag to its setting and leaves the rest to the defaults', () => {
    const base = { 'cache-size': 10 * 1024 * MiB, 'cache-mode': 'reuse', 'memory-cache': 32 * MiB };
    assert.deepEqual(tuningOf(base), { memoryCacheBytes: 32 * MiB });
    assert.deepEqual(
      tuningOf({
        ...base,
        'cache-dir': '/var/cache/hyper',
        'cache-size': 64 * MiB,
        'cache-mode': 'recreate',
        'memory-cache': 0,
        'read-ahead': 4 * MiB,
        'index-cache': 8 * MiB,
        'max-dirty': 80 * MiB,
      }),
      {
        memoryCacheBytes: 0,
        readAheadBytes: 4 * MiB,
        indexCacheBytes: 8 * MiB,
        maxDirtyBytes: 80 * MiB,
        diskCache: { dir: '/var/cache/hyper', sizeBytes: 64 * MiB, mode: 'recreate' },
      },
    );
    // (A daemon divides the directory by export name itself: DaemonOptions.tuning.)
    assert.deepEqual(tuningOf({ ...base, 'cache-dir': '/c' }).diskCache, {
      dir: '/c',
      sizeBytes: 10 * 1024 * MiB,
      mode: 'reuse',
    });
  });
});
