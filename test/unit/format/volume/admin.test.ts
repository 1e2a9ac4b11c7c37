import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { HyperError, isHyperError } from '../../../../src/errors.js';
import { LEASE_KEY } from '../../../../src/format/keys.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { deleteVolume, listVolumes, statVolume } from '../../../../src/format/volume/admin.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import { MiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';

async function count(store: MemStore): Promise<number> {
  let n = 0;
  for await (const p of store.list('')) n += p.objects.length;
  return n;
}

describe('volume admin', () => {
  it('stat adds up segments, stored, provisioned and used bytes and shows the lease', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 10 * MiB });
    const v = await Volume.open(store, { holder: 'stat-test', flushIntervalMs: 0 });
    await v.write(0, Buffer.alloc(1 * MiB, 1));
    await v.flush();
    const s = await statVolume(store);
    assert.equal(s.size, 10 * MiB);
    assert.equal(s.provisionedBytes, 10 * MiB);
    assert.equal(s.usedBytes, 1 * MiB);
    assert.equal(s.segments, 2);
    assert.equal(s.lease?.holder, 'stat-test');
    assert.equal(s.lease?.live, true);
    assert.ok(s.storedBytes > 1 * MiB);
    await v.close();
    assert.equal((await statVolume(store)).lease?.live, false);
  });

  it('stat --space splits stored bytes into live, dead in live segments, history and garbage', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 8 * MiB });
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, Buffer.alloc(1 * MiB, 1));
    await v.flush();
    await v.write(0, Buffer.alloc(1 * MiB, 2)); // the first copy is now history
    await v.flush();
    await v.close();
    const s = await statVolume(store, { space: true });
    assert.equal(s.checkpoints, 3);
    const sp = s.space as NonNullable<typeof s.space>;
    assert.ok(sp.liveBytes >= 1 * MiB && sp.liveBytes < 1.1 * MiB, `live ${sp.liveBytes}`);
    assert.ok(sp.historyBytes >= 1 * MiB, `history ${sp.historyBytes}`);
    assert.equal(sp.garbageBytes, 0);
    // Dropping history under a grace period turns it into garbage until the next run.
    await compactVolume(store, { keepLast: 1 });
    const g = await statVolume(store, { space: true });
    const gs = g.space as NonNullable<typeof g.space>;
    assert.ok(gs.garbageBytes >= 1 * MiB, `garbage ${gs.garbageBytes}`);
    // The four parts are the segments; the rest of the stored bytes is the small head and lease.
    const parts = gs.liveBytes + gs.deadBytes + gs.historyBytes + gs.garbageBytes;
    assert.ok(
      parts <= g.storedBytes && parts > g.storedBytes - 64 * 1024,
      `${parts} vs ${g.storedBytes}`,
    );
  });

  it('stat --space counts replaced blocks of a segment still in use as dead, not history', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 8 * MiB });
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, randomBytes(4 * MiB));
    await v.flush();
    await v.write(0, randomBytes(128 * 1024)); // 1/32 of the first segment replaced
    await v.flush();
    await v.close();
    const before = (await statVolume(store, { space: true })).space;
    assert.ok(before, 'space');
    // The first segment is still read from: what it holds that is replaced is dead there.
    assert.ok(before.deadBytes >= 128 * 1024, `dead ${before.deadBytes}`);
    assert.ok(before.historyBytes < 64 * 1024, `history ${before.historyBytes}`);
    // One checkpoint kept, nothing deferred: no history at all. The first segment is 97% live,
    // so it stays as it is, its replaced blocks with it.
    await compactVolume(store, { keepLast: 1, graceMs: 0 });
    const s = await statVolume(store, { space: true });
    assert.equal(s.checkpoints, 1);
    const sp = s.space as NonNullable<typeof s.space>;
    assert.equal(sp.historyBytes, 0);
    assert.equal(sp.garbageBytes, 0);
    assert.ok(sp.deadBytes >= 128 * 1024 && sp.deadBytes < 256 * 1024, `dead ${sp.deadBytes}`);
    assert.ok(sp.liveBytes >= 4 * MiB, `live ${sp.liveBytes}`);
  });

  it('lists volumes below a prefix, at any depth', async () => {
    const root = MemStore.isolated();
    await Volume.create(root.sub('a/'), { size: 1 * MiB });
    await Volume.create(root.sub('team/b/'), { size: 2 * MiB });
    await root.put('unrelated/file.txt', Buffer.from('x'));
    const vols = await listVolumes(root);
    assert.deepEqual(
      vols.map((v) => [v.name, v.size]),
      [
        ['a/', 1 * MiB],
        ['team/b/', 2 * MiB],
      ],
    );
  });

  it('delete removes every object, refuses a live lease without force, and refuses non-volumes', async () => {
    const root = MemStore.isolated();
    const store = root.sub('vol/') as MemStore;
    await Volume.create(store, { size: 4 * MiB });
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, Buffer.alloc(4096, 1));
    await v.flush();
    await assert.rejects(deleteVolume(store), (e) => isHyperError(e, 'LEASE_HELD'));
    // A store that fails the read of the lease may hide a live one: refused, nothing deleted.
    const leaseDown = new Proxy(store, {
      get(target, prop, receiver) {
        if (prop === 'get')
          return async (key: string, ...rest: unknown[]): Promise<unknown> => {
            if (key === LEASE_KEY)
              throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'injected: get lease');
            return (target.get as (...a: unknown[]) => Promise<unknown>).call(target, key, ...rest);
          };
        const f = Reflect.get(target, prop, receiver) as unknown;
        return typeof f === 'function' ? (f as (...a: unknown[]) => unknown).bind(target) : f;
      },
    });
    await assert.rejects(deleteVolume(leaseDown), (e) => isHyperError(e, 'STORE_UNAVAILABLE'));
    assert.equal(await count(store), 4);
    const events: number[] = [];
    const r = await deleteVolume(store, { force: true, onProgress: (e) => events.push(e.done) });
    assert.equal(r.objectsDeleted, 4); // head, lease, 2 segments
    assert.equal(await count(store), 0);
    assert.equal(events.at(-1), 4);
    await assert.rejects(deleteVolume(store), (e) => isHyperError(e, 'VOLUME_NOT_FOUND'));
    const other = root.sub('other/') as MemStore;
    await other.put('precious.txt', Buffer.from('keep'));
    await assert.rejects(deleteVolume(other), (e) => isHyperError(e, 'NOT_A_VOLUME'));
    assert.equal(await count(other), 1);
  });
});
