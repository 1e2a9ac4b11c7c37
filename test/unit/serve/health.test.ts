/**
 * exportProblem (src/serve/health.ts) on a live engine: a writer whose store fills up reports
 * failing flushes, then a lapsed lease once its renewals are refused past the TTL; both clear
 * once the store has room and a flush gets through, and nothing held is lost.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../src/errors.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { exportProblem } from '../../../src/serve/health.js';
import { FillableStore } from '../../helpers/fillable-store.js';
import { encodeWal } from '../../../src/format/codec/wal.js';
import { walKey } from '../../../src/format/keys.js';
import { MemStore } from '../../../src/format/store/mem.js';
import type { ObjectStore } from '../../../src/format/store/types.js';
import { listWal, readWal } from '../../../src/format/volume/wal.js';

const MiB = 1024 * 1024;

describe('export health', () => {
  it('reports failing flushes and a lapsed lease, and clears both once a flush stores the writes', async () => {
    const store = new FillableStore('mem://health/vol/', new Map());
    await Volume.create(store, { size: 8 * MiB });
    const vol = await Volume.open(store, { leaseTtlMs: 600, flushIntervalMs: 0 });
    try {
      assert.equal(exportProblem(vol.stats()), undefined);
      const data = randomBytes(128 * 1024);
      await vol.write(0, data);
      store.full = true;
      await assert.rejects(vol.flush(), (e) => isHyperError(e, 'NO_SPACE'));
      let s = vol.stats();
      assert.equal(s.flushFailing?.failures, 1);
      assert.match(exportProblem(s) ?? '', /^flushes failing for \d+ s \(1 failed; .*test: full/);
      // Renewals (every 250 ms) are refused past the 600 ms TTL: the lease lapses.
      for (let i = 0; i < 40 && !vol.stats().lease?.lapsed; i++)
        await new Promise((r) => setTimeout(r, 50));
      s = vol.stats();
      assert.equal(s.lease?.lapsed, true);
      assert.equal(s.lease?.lost, false);
      assert.match(exportProblem(s) ?? '', /^lease lapsed: .*; flushes failing/);

      store.full = false;
      await vol.flush();
      s = vol.stats();
      assert.equal(s.lease?.lapsed, false);
      assert.equal(s.flushFailing, undefined);
      assert.equal(exportProblem(s), undefined);
      assert.deepEqual(await vol.read(0, data.length), data);
    } finally {
      await vol.close();
    }
  });

  it('a writer stopped by a damaged WAL says so, not that the lease was taken over', async () => {
    const store = MemStore.isolated('mem://health-wal/vol/');
    const wal = MemStore.isolated('mem://health-wal/wal/');
    const openStore = (u: string): Promise<ObjectStore> =>
      Promise.resolve(u === wal.url ? wal : store);
    await Volume.create(store, { size: 8 * MiB });
    const vol = await Volume.open(store, { walUrl: wal.url, openStore, flushIntervalMs: 0 });
    try {
      const uuid = vol.info.uuid;
      const [fence] = await listWal(wal, uuid);
      assert.ok(fence !== undefined);
      // The number after this writer's claim holds an older writer's record (this writer's
      // claim took the number of one of that writer's records, which had been lost).
      const { epoch } = await readWal(wal, uuid, fence);
      const next = fence + 1;
      await wal.put(
        walKey(uuid, next),
        encodeWal({ uuid, epoch: epoch - 1, seq: next, entries: [] }),
      );
      await assert.rejects(vol.write(0, Buffer.alloc(4096, 1)), (e) =>
        isHyperError(e, 'CORRUPT_OBJECT'),
      );
      // (The next FLUSH stops the writer: nothing more commits.)
      await assert.rejects(vol.sync(), (e) => isHyperError(e, 'CORRUPT_OBJECT'));
      const s = vol.stats();
      assert.equal(s.lease?.lost, true);
      assert.match(
        exportProblem(s) ?? '',
        new RegExp(
          `^writes fail: WAL record ${fence} \\(epoch ${epoch}\\) is followed by record ${next} of an older writer`,
        ),
      );
    } finally {
      await vol.close().catch(() => undefined);
    }
  });

  it('a full store that refuses the lease renewal fails writes waiting for room, instead of retrying at once forever', async () => {
    const store = new FillableStore('mem://health-spin/vol/', new Map());
    await Volume.create(store, { size: 64 * MiB, segmentSize: 1 * MiB });
    // A lease shorter than the renewal margin: every segment renews it first.
    const vol = await Volume.open(store, {
      leaseTtlMs: 600,
      flushIntervalMs: 0,
      flushBytes: 256 * 1024,
      maxDirtyBytes: 1 * MiB,
    });
    try {
      store.full = true;
      const writes = (async () => {
        for (let i = 0; i < 64; i++) await vol.write(i * 256 * 1024, randomBytes(256 * 1024));
      })();
      const outcome = await Promise.race([
        writes.then(
          () => 'all written',
          (e: unknown) => (isHyperError(e, 'NO_SPACE') ? 'NO_SPACE' : String(e)),
        ),
        new Promise((r) => setTimeout(() => r('still waiting after 10 s'), 10_000)),
      ]);
      assert.equal(outcome, 'NO_SPACE');
      // A few attempts, not one after another for as long as the store stays full.
      assert.ok(store.refused < 100, `${store.refused} PUTs refused`);
    } finally {
      store.full = false;
      await vol.close().catch(() => undefined);
    }
  });

  it('a lost lease says so alone: nothing else matters then', () => {
    const p = exportProblem({
      lease: { epoch: 2, expiresMs: 0, lost: true, lapsed: true },
      flushFailing: { sinceMs: 0, failures: 3, error: 'x' },
    } as Parameters<typeof exportProblem>[0]);
    assert.equal(p, 'lease lost: another writer took the volume over; writes fail');
  });
});
