import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../../src/errors.js';
import { CountingStore } from '../../../../src/format/store/counting.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type { ObjectStore, PutBody, PutOptions } from '../../../../src/format/store/types.js';
import { KiB, MiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { listWal } from '../../../../src/format/volume/wal.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

class Flaky extends CountingStore {
  fail = false;
  override put(key: string, body: PutBody, o?: PutOptions): Promise<{ etag: string }> {
    if (this.fail) return Promise.reject(new Error('store down'));
    return super.put(key, body, o);
  }
}

function setup(): {
  vol: CountingStore;
  wal: Flaky;
  openStore: (url: string) => Promise<ObjectStore>;
} {
  const vol = new CountingStore(MemStore.isolated('mem://vol/'));
  const wal = new Flaky(MemStore.isolated('mem://wal/'));
  return { vol, wal, openStore: (url) => Promise.resolve(url === wal.url ? wal : vol) };
}

describe('write-ahead log', () => {
  it('acknowledged writes survive a crash with no flush, and FUA costs no segment', async () => {
    const { vol, wal, openStore } = setup();
    await Volume.create(vol, { size: 16 * MiB });
    const a = await Volume.open(vol, { walUrl: wal.url, openStore, flushIntervalMs: 0 });
    assert.equal(a.hasWal, true);
    const ref = Buffer.alloc(16 * MiB);
    vol.resetStats();
    for (let i = 0; i < 50; i++) {
      const data = Buffer.alloc(4096 + 100 * i, i + 1);
      const off = i * 200 * KiB + 7;
      await a.write(off, data, { fua: i % 10 === 0 });
      data.copy(ref, off);
    }
    await a.writeZeroes(3 * MiB, 512 * KiB);
    ref.fill(0, 3 * MiB, 3.5 * MiB);
    await a.trim(5 * MiB, 1 * MiB);
    ref.fill(0, 5 * MiB, 6 * MiB);
    await a.sync();
    assert.equal(vol.stats().put, 0, 'no segment or head was written: the WAL carried everything');
    // Crash: no close. The next writer replays the WAL and commits it.
    const b = await Volume.open(vol, { force: true, openStore, flushIntervalMs: 0 });
    assert.equal(b.hasWal, true, 'the WAL URL is recorded in the head');
    assert.equal(sha(await b.read(0, 16 * MiB)), sha(ref));
    await b.close();
    // Covered WAL objects are gone once a checkpoint holds them; the newest stays (it fences).
    assert.equal((await listWal(wal, b.info.uuid)).length, 1);
    const c = await Volume.open(vol, { readOnly: true });
    assert.equal(sha(await c.read(0, 16 * MiB)), sha(ref));
  });

  it('groups concurrent writes into few WAL objects', async () => {
    const { vol, wal, openStore } = setup();
    await Volume.create(vol, { size: 16 * MiB });
    const a = await Volume.open(vol, { walUrl: wal.url, openStore, flushIntervalMs: 0 });
    wal.resetStats();
    await Promise.all(
      Array.from({ length: 200 }, (_, i) => a.write(i * 4096, Buffer.alloc(4096, 1 + (i % 200)))),
    );
    assert.ok(wal.stats().put < 20, `WAL PUTs for 200 concurrent writes: ${wal.stats().put}`);
    await a.close();
  });

  it('a WAL failure fails the write; a takeover fences the old writer through the WAL', async () => {
    const { vol, wal, openStore } = setup();
    await Volume.create(vol, { size: 4 * MiB });
    const a = await Volume.open(vol, {
      walUrl: wal.url,
      openStore,
      flushIntervalMs: 0,
      holder: 'a',
    });
    await a.write(0, Buffer.alloc(4096, 1));
    wal.fail = true;
    await assert.rejects(a.write(4096, Buffer.alloc(4096, 2)), /store down/);
    wal.fail = false;
    await a.write(8192, Buffer.alloc(4096, 3));
    const b = await Volume.open(vol, { force: true, openStore, flushIntervalMs: 0, holder: 'b' });
    await assert.rejects(a.write(12288, Buffer.alloc(4096, 4)), (e) => isHyperError(e, 'FENCED'));
    assert.equal((await b.read(0, 1))[0], 1);
    assert.equal((await b.read(8192, 1))[0], 3);
    assert.equal((await b.read(12288, 1))[0], 0, 'a fenced writer must not get a write in');
    await b.close();
  });
});

describe('write-ahead log replay', () => {
  it('refuses a gap in the log (naming the missing record) instead of opening without acknowledged writes', async () => {
    const { vol, wal, openStore } = setup();
    await Volume.create(vol, { size: 4 * MiB });
    const a = await Volume.open(vol, { walUrl: wal.url, openStore, flushIntervalMs: 0 });
    // Three batches, acknowledged one after another (one record each).
    for (let i = 0; i < 3; i++) await a.write(i * 4096, Buffer.alloc(4096, i + 1));
    const uuid = a.info.uuid;
    const seqs = await listWal(wal, uuid);
    assert.ok(seqs.length >= 4, `fence and three records: ${seqs}`);
    // Crash, and the middle record is lost.
    const middle = seqs[seqs.length - 2] as number;
    const { walKey } = await import('../../../../src/format/keys.js');
    await wal.delete([walKey(uuid, middle)]);
    await assert.rejects(Volume.open(vol, { force: true, openStore, flushIntervalMs: 0 }), (e) => {
      assert.ok(isHyperError(e, 'MISSING_OBJECT'), String(e));
      assert.match(e.message, new RegExp(`WAL record ${middle} is missing`));
      assert.ok(e.key?.endsWith(walKey(uuid, middle)), e.key);
      return true;
    });
    // Nothing was committed on the way: the head still holds none of the three writes.
    const c = await Volume.open(vol, { readOnly: true });
    assert.deepEqual(await c.read(0, 3 * 4096), Buffer.alloc(3 * 4096));
    await c.close();
  });
});
