/**
 * The S3 path under injected faults: a proxy between hyper and Ceph RGW returns 503/500,
 * resets connections (before and after the server applied a request) and truncates bodies.
 * A verified workload must still read back exactly what it wrote; with the store down,
 * operations fail (bounded retries) and succeed again once it is back.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../src/errors.js';
import { openStore } from '../../../src/format/store/index.js';
import type { ObjectStore } from '../../../src/format/store/types.js';
import { MiB } from '../../../src/format/volume/types.js';
import { checkVolume } from '../../../src/format/volume/check.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { needS3, type S3TestConfig } from '../../helpers/env.js';
import { s3FaultProxy } from '../../helpers/fault-proxy.js';
import { emptyStore, s3Options, uniqueS3Url } from '../../helpers/s3.js';
import { rng } from '../../helpers/rng.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/**
 * A writer of a new 8 MiB volume that committed 1 MiB of 1s at offset 0 and holds 1 MiB of 2s
 * after it, acknowledged and not yet flushed.
 */
async function writerHoldingAWrite(store: ObjectStore): Promise<Volume> {
  await Volume.create(store, { size: 8 * MiB });
  const vol = await Volume.open(store, { flushIntervalMs: 0, dataCacheBytes: 0 });
  await vol.write(0, Buffer.alloc(1 * MiB, 1));
  await vol.flush();
  await vol.write(1 * MiB, Buffer.alloc(1 * MiB, 2));
  return vol;
}

describe('S3 fault injection (Ceph RGW behind a faulty proxy)', () => {
  const faulty = s3FaultProxy(7);

  const open = (cfg: S3TestConfig, url: string) =>
    openStore(url, {
      ...s3Options(cfg, { endpoint: faulty().endpoint }),
      retry: { baseDelayMs: 5, maxDelayMs: 100 },
      maxAttempts: 8,
    });

  it('a verified workload completes with correct data at 5% faults', async (t) => {
    const c = needS3(t);
    if (!c) return;
    const { proxy } = faulty();
    const url = uniqueS3Url(c, 'faults');
    const store = await open(c, url);
    const size = 32 * MiB;
    proxy.rates = {};
    await Volume.create(store, { size, segmentSize: 1 * MiB });
    proxy.rates = {
      slow: 0.05,
      latencyMs: 30,
      slowDown: 0.02,
      internalError: 0.01,
      resetBefore: 0.01,
      resetAfter: 0.005,
      truncate: 0.005,
      // Segment PUTs stream their pieces (runs of blocks gathered from the write buffer):
      // a connection cut mid-body must be retried from the first piece.
      resetDuringEvery: 4,
    };
    const ref = Buffer.alloc(size);
    const rand = rng(3);
    let vol = await Volume.open(store, {
      flushIntervalMs: 0,
      dataCacheBytes: 0,
      nodeCacheBytes: 0,
    });
    for (let round = 0; round < 6; round++) {
      for (let i = 0; i < 40; i++) {
        const off = Math.floor(rand() * (size / 4096 - 64)) * 4096 + (i % 3) * 100;
        const data = Buffer.alloc(
          4096 * (1 + Math.floor(rand() * 32)),
          1 + Math.floor(rand() * 250),
        );
        await vol.write(off, data);
        data.copy(ref, off);
      }
      await vol.flush();
      if (round % 2 === 1) {
        await vol.close();
        vol = await Volume.open(store, {
          flushIntervalMs: 0,
          dataCacheBytes: 0,
          nodeCacheBytes: 0,
        });
      }
      assert.equal(sha(await vol.read(0, size)), sha(ref), `round ${round}`);
    }
    await vol.close();
    const injected =
      proxy.counts.slowDown +
      proxy.counts.internalError +
      proxy.counts.resetBefore +
      proxy.counts.resetAfter +
      proxy.counts.truncate;
    assert.ok(injected >= 5, `faults injected: ${JSON.stringify(proxy.counts)}`);
    assert.ok(proxy.counts.resetDuring >= 1, `PUTs cut mid-body: ${JSON.stringify(proxy.counts)}`);
    proxy.rates = {};
    const check = await checkVolume(store, { deep: true });
    assert.equal(check.clean, true, JSON.stringify(check.problems));
    await emptyStore(store);
  });

  it('with the store down, operations fail after bounded retries and recover when it returns', async (t) => {
    const c = needS3(t);
    if (!c) return;
    const { proxy } = faulty();
    const url = uniqueS3Url(c, 'down');
    const store = await open(c, url);
    proxy.rates = {};
    proxy.down = false;
    const vol = await writerHoldingAWrite(store);
    proxy.down = true;
    const t0 = Date.now();
    await assert.rejects(vol.flush(), (e) => isHyperError(e) && e.kind === 'unavailable');
    await assert.rejects(
      Volume.open(store, { readOnly: true }).then((v) => v.read(0, 4096)),
      (e) => isHyperError(e) && e.kind === 'unavailable',
    );
    assert.ok(Date.now() - t0 < 30_000, 'retries are bounded');
    // Reads of data already in memory keep working; the store comes back; the flush goes through.
    assert.equal((await vol.read(1 * MiB, 1))[0], 2);
    proxy.down = false;
    await vol.flush();
    await vol.close();
    const r = await Volume.open(store, { readOnly: true });
    assert.equal((await r.read(1 * MiB, 1))[0], 2);
    assert.equal((await r.read(0, 1))[0], 1);
    await emptyStore(store);
  });

  // (Without a working timeout the flush waits for good: the test's own timeout fails it.)
  it(
    'with the store silent (requests taken, never answered), a flush fails after the idle timeout and the writes wait for it to answer again',
    { timeout: 60_000 },
    async (t) => {
      const c = needS3(t);
      if (!c) return;
      const { proxy } = faulty();
      t.after(() => proxy.unhang());
      const url = uniqueS3Url(c, 'silent');
      const store = await openStore(url, {
        ...s3Options(c, { endpoint: faulty().endpoint }),
        retry: { baseDelayMs: 5, maxDelayMs: 50 },
        maxAttempts: 2,
        requestTimeoutMs: 400,
      });
      proxy.rates = {};
      proxy.down = false;
      const vol = await writerHoldingAWrite(store);
      // What RGW does when its Ceph cluster is full: it takes the request and waits.
      proxy.hang = true;
      const t0 = Date.now();
      await assert.rejects(vol.flush(), (e) => isHyperError(e, 'STORE_UNAVAILABLE'));
      const ms = Date.now() - t0;
      assert.ok(proxy.counts.hung >= 2, `requests held: ${proxy.counts.hung}`);
      assert.ok(ms >= 700 && ms < 20_000, `the flush failed after ${ms} ms`);
      // The acknowledged write is still there; once the store answers, the flush commits it.
      assert.equal((await vol.read(1 * MiB, 1))[0], 2);
      proxy.unhang();
      await vol.flush();
      await vol.close();
      const r = await Volume.open(store, { readOnly: true });
      assert.equal(
        sha(await r.read(0, 2 * MiB)),
        sha(Buffer.concat([Buffer.alloc(MiB, 1), Buffer.alloc(MiB, 2)])),
      );
      await r.close();
      const chk = await checkVolume(store, { deep: true });
      assert.deepEqual(chk.problems, []);
      await emptyStore(store);
    },
  );
});
