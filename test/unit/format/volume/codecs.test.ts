/**
 * Block codecs through the engine: compressed volumes round-trip every kind of write against
 * a model across flushes, reopens, compaction, clones and the disk cache; damage to a
 * compressed block is reported with its key, never returned.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { isHyperError } from '../../../../src/errors.js';
import { CODEC_RAW, CODEC_ZSTD, type Compression } from '../../../../src/format/codec/block.js';
import { readLeaf } from '../../../../src/format/codec/node.js';
import { segmentKey } from '../../../../src/format/keys.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { statVolume } from '../../../../src/format/volume/admin.js';
import { checkVolume } from '../../../../src/format/volume/check.js';
import { cloneVolume } from '../../../../src/format/volume/clone.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import { readHead, rootOf } from '../../../../src/format/volume/heads.js';
import { KiB, MiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { rng } from '../../../helpers/rng.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const dir = mkdtempSync(join(tmpdir(), 'hyper-codecs-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Text that compresses (this repository's source), random bytes that do not, and zeros. */
const TEXT = readFileSync(new URL('../../../../src/format/volume/reader.ts', import.meta.url));
function chunk(kind: number, len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  if (kind === 0) {
    const start = seed % TEXT.length;
    for (let o = 0; o < len; o++) b[o] = TEXT[(start + o) % TEXT.length] as number;
  } else if (kind === 1) {
    const r = rng(seed);
    for (let o = 0; o < len; o++) b[o] = (r() * 256) | 0;
  }
  return b;
}

const stored = async (store: MemStore): Promise<number> => (await statVolume(store)).storedBytes;

describe('block codecs', () => {
  for (const compression of ['zstd', 'lz4', 'none'] as Compression[]) {
    it(`${compression}: random writes, trims and reopens read back as the model`, async () => {
      const size = 4 * MiB;
      const store = MemStore.isolated();
      await Volume.create(store, { size, compression, segmentSize: 1 * MiB });
      const model = Buffer.alloc(size);
      const r = rng(compression.length * 7 + 1);
      let v = await Volume.open(store, { flushIntervalMs: 0 });
      for (let step = 0; step < 300; step++) {
        const op = r();
        const off = Math.floor(r() * size);
        const len = Math.min(size - off, 1 + Math.floor(r() * 64 * KiB));
        if (op < 0.75) {
          const data = chunk(Math.floor(r() * 3), len, step);
          await v.write(off, data);
          data.copy(model, off);
        } else if (op < 0.85) {
          await v.writeZeroes(off, len);
          model.fill(0, off, off + len);
        } else if (op < 0.95) {
          assert.equal(sha(await v.read(off, len)), sha(model.subarray(off, off + len)));
        } else {
          await v.close();
          v = await Volume.open(store, { flushIntervalMs: 0, dataCacheBytes: 64 * KiB });
        }
        if (step % 40 === 39) await v.flush();
      }
      await v.close();
      v = await Volume.open(store, { readOnly: true });
      assert.equal(sha(await v.read(0, size)), sha(model), 'whole volume after reopening');
      assert.equal(v.info.compression, compression);
      assert.equal(v.info.formatVersion, compression === 'none' ? 1 : 2);
      await v.close();
      const c = await checkVolume(store, { deep: true });
      assert.equal(c.clean, true, JSON.stringify(c.problems));
      assert.ok(c.blocksChecked > 0);
    });
  }

  it('stores text in fewer bytes, random data raw, and reads both back', async () => {
    const sizes: Record<string, number> = {};
    for (const compression of ['none', 'zstd', 'lz4'] as Compression[]) {
      const store = MemStore.isolated();
      await Volume.create(store, { size: 8 * MiB, compression });
      const v = await Volume.open(store, { flushIntervalMs: 0 });
      await v.write(0, chunk(0, 4 * MiB, 5));
      await v.write(4 * MiB, chunk(1, 1 * MiB, 6));
      await v.close();
      sizes[compression] = await stored(store);
      const ro = await Volume.open(store, { readOnly: true });
      assert.equal(sha(await ro.read(0, 4 * MiB)), sha(chunk(0, 4 * MiB, 5)));
      assert.equal(sha(await ro.read(4 * MiB, 1 * MiB)), sha(chunk(1, 1 * MiB, 6)));
      await ro.close();
    }
    const none = sizes['none'] as number;
    assert.ok(none > 5 * MiB, `raw: ${none}`);
    // Text compresses to well under half; the random megabyte stays raw (~1 MiB).
    assert.ok((sizes['zstd'] as number) < 1 * MiB + 2 * MiB, JSON.stringify(sizes));
    assert.ok((sizes['lz4'] as number) < 1 * MiB + 2.5 * MiB, JSON.stringify(sizes));
  });

  it('packs compressed blocks at byte offsets and raw ones in between', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 1 * MiB, compression: 'zstd' });
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    // Block 0 text, block 1 random, block 2 text: one leaf in the head's root.
    await v.write(0, Buffer.concat([chunk(0, 4096, 1), chunk(1, 4096, 2), chunk(0, 4096, 3)]));
    await v.close();
    const root = rootOf((await readHead(store)).head);
    assert.equal(root.level, 0);
    const p = [0, 1, 2].map((i) => readLeaf(root.entries, i));
    assert.deepEqual(
      p.map((e) => e.codec),
      [CODEC_ZSTD, CODEC_RAW, CODEC_ZSTD],
    );
    assert.ok((p[0]?.len as number) < 4096 - 512);
    assert.equal(p[1]?.off, (p[0]?.off as number) + (p[0]?.len as number), 'packed');
    assert.equal(p[2]?.off, (p[1]?.off as number) + 4096, 'packed');
    assert.notEqual((p[1]?.off as number) % 512, 0, 'a raw block off a sector boundary');
  });

  it('compaction, clones and the disk cache keep compressed blocks readable', async () => {
    const store = MemStore.isolated('mem://codecs-parent/');
    await Volume.create(store, { size: 4 * MiB, compression: 'zstd', segmentSize: 1 * MiB });
    const model = Buffer.alloc(4 * MiB);
    let v = await Volume.open(store, { flushIntervalMs: 0 });
    for (let i = 0; i < 6; i++) {
      const data = chunk(i % 2, 1 * MiB, i);
      const off = ((i * 3) % 4) * MiB;
      await v.write(off, data);
      data.copy(model, off);
      await v.flush();
    }
    await v.close();
    const res = await compactVolume(store, { keepLast: 1, graceMs: 0 });
    assert.ok(res.segmentsDeleted > 0, JSON.stringify(res));
    const cacheDir = join(dir, 'cache');
    for (let round = 0; round < 2; round++) {
      v = await Volume.open(store, {
        readOnly: true,
        diskCache: { dir: cacheDir, sizeBytes: 64 * MiB },
        dataCacheBytes: 0,
      });
      const r = rng(9);
      for (let i = 0; i < 200; i++) {
        const off = Math.floor(r() * 1023) * 4096;
        assert.equal(sha(await v.read(off, 8192)), sha(model.subarray(off, off + 8192)));
      }
      const s = v.stats();
      if (round === 1) assert.ok(s.diskCacheHits > 100, `disk cache hits ${s.diskCacheHits}`);
      await v.close();
    }
    const child = MemStore.isolated('mem://codecs-child/');
    const head = (await readHead(store)).head;
    await cloneVolume(store, { checkpoint: head.checkpoint }, child, {
      openStore: async () => store,
    });
    const c = await Volume.open(child, { flushIntervalMs: 0, openStore: async () => store });
    assert.equal(c.info.compression, 'zstd');
    await c.write(0, chunk(0, 64 * KiB, 99));
    chunk(0, 64 * KiB, 99).copy(model, 0);
    assert.equal(sha(await c.read(0, 4 * MiB)), sha(model));
    await c.close();
  });

  it('a damaged compressed block is an error naming its segment, never data', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 1 * MiB, compression: 'zstd' });
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, chunk(0, 8192, 4));
    await v.close();
    const p = readLeaf(rootOf((await readHead(store)).head).entries, 0);
    assert.equal(p.codec, CODEC_ZSTD);
    const key = segmentKey(p.seg);
    const body = Buffer.from((await store.get(key)).body);
    body[p.off + 10] = (body[p.off + 10] as number) ^ 0x40;
    await store.put(key, body);
    const ro = await Volume.open(store, { readOnly: true });
    await assert.rejects(ro.read(0, 4096), (e: unknown) => {
      assert.ok(isHyperError(e, 'CHECKSUM_MISMATCH'), String(e));
      assert.match((e as Error).message, /block 0/);
      assert.equal((e as { key?: string }).key, key);
      return true;
    });
    // The other block is fine.
    assert.equal(sha(await ro.read(4096, 4096)), sha(chunk(0, 8192, 4).subarray(4096)));
    await ro.close();
    const c = await checkVolume(store, { deep: true });
    assert.equal(c.clean, false);
    assert.equal(c.problems[0]?.key, key);
  });
});
