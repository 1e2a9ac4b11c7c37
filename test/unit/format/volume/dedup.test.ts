/**
 * Deduplication through the engine: equal blocks are stored once per volume, whatever else
 * happens to the volume (overwrites, zeroes, reopens, compaction deleting what the content
 * index pointed at, clones and flattening, failed segment PUTs); the volume always reads back
 * as the model and `file check --deep` finds every index entry true to its block.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import type { Compression } from '../../../../src/format/codec/block.js';
import { encodeHead } from '../../../../src/format/codec/head.js';
import { ENTRY_SIZE, encodeNode, encodedNodeSize } from '../../../../src/format/codec/node.js';
import type { Cipher } from '../../../../src/format/codec/seal.js';
import { HEAD_KEY, segmentKey } from '../../../../src/format/keys.js';
import { CountingStore } from '../../../../src/format/store/counting.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { statVolume } from '../../../../src/format/volume/admin.js';
import { checkVolume } from '../../../../src/format/volume/check.js';
import { cloneVolume, flattenVolume } from '../../../../src/format/volume/clone.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import { dedupRootOf, readHead } from '../../../../src/format/volume/heads.js';
import { KiB, MiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { rng } from '../../../helpers/rng.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const KEY = Buffer.alloc(32, 0x42);
const BS = 4096;

/** Block `n` of a small pool of contents (so that writes repeat them), never all zeros. */
function poolBlock(n: number): Buffer {
  const b = Buffer.alloc(BS);
  const r = rng(1000 + n);
  // Half of the pool compresses (a repeated phrase), half does not.
  if (n % 2 === 0) b.write(`pool block ${n} `.repeat(300).slice(0, BS));
  else for (let o = 0; o < BS; o++) b[o] = (r() * 256) | 0;
  return b;
}

function uniqueBlocks(count: number, seed: number): Buffer {
  const b = Buffer.alloc(count * BS);
  const r = rng(seed);
  for (let o = 0; o < b.length; o++) b[o] = (r() * 256) | 0;
  return b;
}

const stored = async (store: MemStore): Promise<number> => (await statVolume(store)).storedBytes;

/** `file check --deep` finds nothing wrong (every block, tag and content-index hash). */
async function assertDeepClean(store: MemStore): Promise<Awaited<ReturnType<typeof checkVolume>>> {
  const c = await checkVolume(store, { deep: true });
  assert.equal(c.clean, true, JSON.stringify(c.problems));
  return c;
}

describe('deduplication', () => {
  const combos: [Compression, Cipher | undefined][] = [
    ['none', undefined],
    ['lz4', undefined],
    ['zstd', 'xchacha20-poly1305'],
    ['none', 'aes-256-gcm'],
  ];
  for (const [compression, encrypted] of combos) {
    for (const seed of [1, 2, 3]) {
      const name = `${compression}${encrypted ? ` + ${encrypted}` : ''}, seed ${seed}`;
      it(`${name}: writes from a pool of contents, compaction and reopens match the model`, async () => {
        const size = 2 * MiB;
        const blocks = size / BS;
        const store = MemStore.isolated();
        await Volume.create(store, {
          size,
          compression,
          dedup: true,
          segmentSize: 1 * MiB,
          ...(encrypted ? { encryption: encrypted, key: KEY } : {}),
        });
        const model = Buffer.alloc(size);
        const r = rng(seed * 31 + compression.length);
        let v = await Volume.open(store, {
          flushIntervalMs: 0,
          dataCacheBytes: 64 * KiB,
          flushBytes: 256 * KiB,
        });
        for (let step = 0; step < 400; step++) {
          const op = r();
          const lba = Math.floor(r() * blocks);
          const count = Math.min(blocks - lba, 1 + Math.floor(r() * 8));
          if (op < 0.6) {
            // Whole blocks from the pool (mostly) or new content.
            const parts: Buffer[] = [];
            for (let k = 0; k < count; k++)
              parts.push(
                r() < 0.8 ? poolBlock(Math.floor(r() * 12)) : uniqueBlocks(1, step * 8 + k),
              );
            const data = Buffer.concat(parts);
            await v.write(lba * BS, data);
            data.copy(model, lba * BS);
          } else if (op < 0.7) {
            // A partial block: the rest of the block is read, merged and hashed again.
            const off = lba * BS + Math.floor(r() * BS);
            const data = uniqueBlocks(1, 50_000 + step).subarray(0, 1 + Math.floor(r() * 1000));
            const len = Math.min(data.length, size - off);
            await v.write(off, data.subarray(0, len));
            data.copy(model, off, 0, len);
          } else if (op < 0.8) {
            await v.writeZeroes(lba * BS, count * BS);
            model.fill(0, lba * BS, (lba + count) * BS);
          } else if (op < 0.9) {
            const got = await v.read(lba * BS, count * BS);
            assert.equal(
              sha(got),
              sha(model.subarray(lba * BS, (lba + count) * BS)),
              `step ${step}`,
            );
          } else if (op < 0.95) {
            await v.flush();
          } else if (op < 0.975) {
            await v.close();
            // Compaction deletes segments the content index pointed at; reuse must not.
            const c = await compactVolume(store, { keepLast: 1, graceMs: 0, minLive: 0.9 });
            assert.equal(c.dryRun, false);
            v = await Volume.open(store, { flushIntervalMs: 0, dataCacheBytes: 64 * KiB });
          } else {
            await v.close();
            v = await Volume.open(store, { flushIntervalMs: 0, dataCacheBytes: 0 });
          }
        }
        await v.close();
        await compactVolume(store, { keepLast: 1, graceMs: 0 });
        const ro = await Volume.open(store, { readOnly: true, dataCacheBytes: 0 });
        assert.equal(sha(await ro.read(0, size)), sha(model), 'whole volume after compaction');
        assert.equal(ro.info.dedup, true);
        // Never more distinct blocks stored than the model holds distinct non-zero blocks.
        const distinct = new Set<string>();
        for (let b = 0; b < blocks; b++) {
          const blk = model.subarray(b * BS, (b + 1) * BS);
          if (blk.some((x) => x !== 0)) distinct.add(sha(blk));
        }
        assert.ok(
          (ro.info.dedupBlocks ?? 0) <= distinct.size,
          `${ro.info.dedupBlocks} index entries for ${distinct.size} distinct blocks`,
        );
        await ro.close();
        const c = await assertDeepClean(store);
        assert.ok(c.blocksChecked > 0);
      });
    }
  }

  it('a second copy of the same data costs index entries, not data', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 32 * MiB, dedup: true, compression: 'none' });
    const data = uniqueBlocks(1024, 7); // 4 MiB of distinct blocks
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, data);
    await v.flush();
    const first = await stored(store);
    await v.write(8 * MiB, data);
    // …and the same blocks in another order, within one flush as well.
    const shuffled = Buffer.concat(
      Array.from({ length: 256 }, (_, k) =>
        data.subarray(((k * 37) % 1024) * BS, (((k * 37) % 1024) + 1) * BS),
      ),
    );
    await v.write(16 * MiB, Buffer.concat([shuffled, shuffled]));
    await v.close();
    const total = await stored(store);
    assert.ok(first >= 4 * MiB, `first copy ${first}`);
    // The second copy stores its block-index leaves only (32 bytes per block): < 5%.
    assert.ok(total - first < 0.05 * first, `second copy added ${total - first} bytes to ${first}`);
    const ro = await Volume.open(store, { readOnly: true });
    assert.equal(ro.info.dedupBlocks, 1024);
    assert.equal(ro.info.mappedBlocks, 1024 + 1024 + 512);
    assert.equal(sha(await ro.read(8 * MiB, 4 * MiB)), sha(data));
    assert.equal(sha(await ro.read(16 * MiB, 1 * MiB)), sha(shuffled));
    assert.equal(sha(await ro.read(17 * MiB, 1 * MiB)), sha(shuffled));
    await ro.close();
  });

  it('content the volume no longer holds is stored anew after compaction deleted it', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, {
      size: 8 * MiB,
      dedup: true,
      compression: 'lz4',
      segmentSize: 1 * MiB,
    });
    const a = uniqueBlocks(256, 1);
    let v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, a);
    await v.flush();
    // Overwrite every block: the first segment is dead, yet the content index names it.
    await v.write(0, uniqueBlocks(256, 2));
    await v.close();
    const before = await stored(store);
    const c = await compactVolume(store, { keepLast: 1, graceMs: 0 });
    assert.ok(c.segmentsDeleted > 0, JSON.stringify(c));
    // The dead megabyte is gone although the content index named every block of it.
    assert.ok(before - (await stored(store)) > 0.9 * MiB, `${before} → ${await stored(store)}`);
    assert.ok(!(await store.head(segmentKey(2))), 'the first data segment is deleted');
    v = await Volume.open(store, { flushIntervalMs: 0 });
    assert.equal(v.info.dedupBlocks, 256, 'only the live content is indexed');
    // Writing the old content again stores it again: nothing points at deleted bytes.
    await v.write(4 * MiB, a);
    await v.close();
    const ro = await Volume.open(store, { readOnly: true, dataCacheBytes: 0 });
    assert.equal(sha(await ro.read(4 * MiB, 1 * MiB)), sha(a));
    await ro.close();
    await assertDeepClean(store);
  });

  it('a segment PUT that keeps failing leaves the index consistent; the retry stores the block', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 4 * MiB, dedup: true, compression: 'lz4' });
    const a = uniqueBlocks(4, 3);
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, a);
    const put = store.put.bind(store);
    // The flush PUTs its segment once more with the same bytes: both attempts fail.
    let fail = 2;
    store.put = async (key, body, opts) => {
      if (fail > 0 && key.startsWith('seg/')) {
        fail--;
        throw Object.assign(new Error('injected'), { code: 'ECONNRESET' });
      }
      return put(key, body, opts);
    };
    await assert.rejects(v.flush());
    await v.write(1 * MiB, a); // the same content, after the failure
    await v.flush();
    await v.close();
    const ro = await Volume.open(store, { readOnly: true, dataCacheBytes: 0 });
    assert.equal(sha(await ro.read(0, 4 * BS)), sha(a));
    assert.equal(sha(await ro.read(1 * MiB, 4 * BS)), sha(a));
    assert.equal(ro.info.dedupBlocks, 4);
    await ro.close();
    await assertDeepClean(store);
  });

  it('clones share the parent’s blocks; flattening moves them and the index lets go', async () => {
    const parent = MemStore.isolated('mem://dedup-parent/');
    await Volume.create(parent, {
      size: 8 * MiB,
      dedup: true,
      compression: 'zstd',
      encryption: 'xchacha20-poly1305',
      key: KEY,
    });
    const a = uniqueBlocks(128, 4);
    let v = await Volume.open(parent, { flushIntervalMs: 0 });
    await v.write(0, a);
    await v.close();
    const child = MemStore.isolated('mem://dedup-child/');
    const open = async (): Promise<MemStore> => parent;
    await cloneVolume(parent, { checkpoint: (await readHead(parent)).head.checkpoint }, child, {
      openStore: open,
    });
    v = await Volume.open(child, { flushIntervalMs: 0, openStore: open });
    await v.write(2 * MiB, a); // found in the parent's segments: nothing stored
    await v.close();
    assert.ok((await stored(child)) < 64 * KiB, `clone stores ${await stored(child)} bytes`);
    await flattenVolume(child, { openStore: open });
    // After flattening nothing may point into the parent: delete it and read everything.
    for await (const page of parent.list('')) await parent.delete(page.objects.map((o) => o.key));
    const ro = await Volume.open(child, { readOnly: true, dataCacheBytes: 0 });
    assert.equal(sha(await ro.read(0, 512 * KiB)), sha(a));
    assert.equal(sha(await ro.read(2 * MiB, 512 * KiB)), sha(a));
    assert.equal(ro.info.dedupBlocks, 128, 'stored once in the clone');
    await ro.close();
    await assertDeepClean(child);
  });

  it('sealed blocks are bound to their place: one moved within its segment fails with the key named', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, {
      size: 1 * MiB,
      dedup: true,
      compression: 'none',
      encryption: 'xchacha20-poly1305',
      key: KEY,
    });
    const a = uniqueBlocks(2, 5);
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, a);
    await v.close();
    const id = (await readHead(store)).head.checkpoint;
    const seg = (await store.get(segmentKey(id))).body;
    // Swap the two sealed blocks (same length): each CRC in the index no longer matches, so
    // fix the swap up to the CRC level by swapping whole entries is impossible (nodes are
    // sealed too); the read reports the segment.
    const len = BS + 40;
    const end = seg.length;
    const first = Buffer.from(seg.subarray(end - 2 * len, end - len));
    seg.copy(seg, end - 2 * len, end - len, end);
    first.copy(seg, end - len);
    await store.put(segmentKey(id), seg);
    const ro = await Volume.open(store, { readOnly: true, dataCacheBytes: 0 });
    await assert.rejects(ro.read(0, BS), (e: Error) => e.message.includes(segmentKey(id)));
    await ro.close();
    const c = await checkVolume(store, { deep: true });
    assert.equal(c.clean, false);
    assert.ok(c.problems.some((p) => p.key === segmentKey(id)));
  });

  it('check --deep finds an index entry whose hash does not match its block', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 1 * MiB, dedup: true, compression: 'none' });
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, uniqueBlocks(3, 6));
    await v.close();
    await assertDeepClean(store);
    // Change one hash entry's bytes in the inline root and rewrite a valid head around it.
    const { head } = await readHead(store);
    const root = dedupRootOf(head);
    assert.ok(root && root.level === 0 && root.length === 6);
    const entries = Buffer.from(root.entries.subarray(0, root.length * ENTRY_SIZE));
    entries[ENTRY_SIZE + 20] = (entries[ENTRY_SIZE + 20] as number) ^ 0xff; // entry 1: a hash entry
    const bytes = Buffer.alloc(encodedNodeSize(root.length));
    encodeNode(bytes, 0, 0, root.length, head.checkpoint, entries);
    await store.put(HEAD_KEY, encodeHead({ ...head, dedup: { ...head.dedup!, root: bytes } }));
    const c = await checkVolume(store, { deep: true });
    assert.equal(c.clean, false);
    assert.ok(
      c.problems.some((p) => /other content than the dedup index says/.test(p.message)),
      JSON.stringify(c.problems),
    );
  });
  it('the content index loads lazily: a read never touches it, a write loads one path', async () => {
    const store = new CountingStore(MemStore.isolated());
    await Volume.create(store, { size: 256 * MiB, dedup: true, compression: 'none' });
    let v = await Volume.open(store, { flushIntervalMs: 0 });
    // 20,000 distinct blocks: 40,000 index entries, a content index three levels deep.
    for (let k = 0; k < 20; k++) await v.write(k * 4 * MiB, uniqueBlocks(1000, 100 + k));
    await v.close();
    const { head } = await readHead(store);
    assert.equal(dedupRootOf(head)?.level, 2, 'a three-level content index');
    store.resetStats();
    const ro = await Volume.open(store, { readOnly: true });
    assert.equal(sha(await ro.read(4 * MiB, BS)), sha(uniqueBlocks(1000, 101).subarray(0, BS)));
    await ro.close();
    // The head, the block index below its root (two nodes), the block: as without dedup.
    const readGets = store.stats().get;
    assert.ok(readGets <= 5, `a read costs ${readGets} GETs`);
    store.resetStats();
    v = await Volume.open(store, { flushIntervalMs: 0 });
    const before = store.stats().get;
    await v.write(200 * MiB, uniqueBlocks(1, 9)); // new content
    await v.write(201 * MiB, uniqueBlocks(1000, 105).subarray(0, BS)); // known content
    await v.flush();
    const gets = store.stats().get - before;
    await v.close();
    // Two paths below the root of each index (two nodes each), nothing more.
    assert.ok(gets <= 8, `two writes cost ${gets} GETs`);
    const after = (await readHead(store)).head;
    const ro2 = await Volume.open(store, { readOnly: true });
    assert.equal(ro2.info.dedupBlocks, 20_001);
    await ro2.close();
    assert.ok(after.checkpoint > head.checkpoint);
  });
  it('content-index changes wait in memory until they fill their budget or the volume closes; a writer that dies loses only them', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 16 * MiB, dedup: true, compression: 'none' });
    const a = uniqueBlocks(256, 21);
    const w = await Volume.open(store, { flushIntervalMs: 0, leaseTtlMs: 60_000 });
    await w.write(0, a);
    await w.flush();
    // Committed data, the content index as it was (kept back: far below 16 MiB of nodes).
    assert.equal(dedupRootOf((await readHead(store)).head)?.length, 0);
    const afterFirst = await stored(store);
    // Within the session the index knows the blocks: a copy costs no data.
    await w.write(4 * MiB, a);
    await w.flush();
    assert.ok((await stored(store)) - afterFirst < 64 * KiB);
    // The writer dies (no close). The next one does not know those contents: it stores them
    // again, and everything reads back.
    const v = await Volume.open(store, { flushIntervalMs: 0, force: true });
    assert.equal(v.info.dedupBlocks, 0);
    const before = await stored(store);
    await v.write(8 * MiB, a);
    await v.close();
    assert.ok((await stored(store)) - before >= 1 * MiB, 'stored again');
    const ro = await Volume.open(store, { readOnly: true, dataCacheBytes: 0 });
    for (const off of [0, 4 * MiB, 8 * MiB]) assert.equal(sha(await ro.read(off, 1 * MiB)), sha(a));
    assert.equal(ro.info.dedupBlocks, 256, 'written at close');
    await ro.close();
    await assertDeepClean(store);
    // A small budget writes the index with the segment that fills it.
    const s2 = MemStore.isolated();
    await Volume.create(s2, { size: 16 * MiB, dedup: true, compression: 'none' });
    const x = await Volume.open(s2, { flushIntervalMs: 0, dedupDeferBytes: 4096 });
    await x.write(0, a);
    await x.flush();
    assert.ok(((await readHead(s2)).head.dedup?.root.length ?? 0) > 64);
    await x.close();
  });
  it('a content index far larger than the node cache: lookups and inserts load what they miss', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 256 * MiB, dedup: true, compression: 'lz4' });
    const chunks = Array.from({ length: 24 }, (_, k) => uniqueBlocks(1024, 300 + k)); // 96 MiB
    const model = new Map<number, Buffer>();
    const r = rng(77);
    for (let session = 0; session < 3; session++) {
      // A node cache of 256 nodes (the minimum) for an index of about 1,000 leaves.
      const v = await Volume.open(store, {
        flushIntervalMs: 0,
        nodeCacheBytes: 0,
        dedupDeferBytes: session === 1 ? 64 * KiB : 16 * MiB,
      });
      for (let n = 0; n < 12; n++) {
        const c = Math.floor(r() * chunks.length);
        const at = Math.floor(r() * 60) * 4 * MiB;
        await v.write(at, chunks[c] as Buffer);
        model.set(at, chunks[c] as Buffer);
        if (n % 4 === 3) await v.flush();
      }
      await v.close();
    }
    const ro = await Volume.open(store, { readOnly: true, dataCacheBytes: 0 });
    for (const [at, c] of model) assert.equal(sha(await ro.read(at, 4 * MiB)), sha(c), `at ${at}`);
    const distinct = new Set([...model.values()]).size;
    assert.ok((ro.info.dedupBlocks ?? 0) >= distinct * 1024, `${ro.info.dedupBlocks} indexed`);
    await ro.close();
    await assertDeepClean(store);
  });
  it('restore brings the checkpoint’s content index back with its content', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 8 * MiB, dedup: true, compression: 'none' });
    const a = uniqueBlocks(64, 31);
    const b = uniqueBlocks(64, 32);
    let v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, a);
    await v.close();
    const first = (await readHead(store)).head;
    v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, b);
    await v.close();
    v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.restore(first.checkpoint);
    assert.equal(v.info.dedupBlocks, 64);
    await v.close();
    const head = (await readHead(store)).head;
    const entries = (h: typeof head): Buffer => {
      const r = dedupRootOf(h);
      return Buffer.from(r?.entries.subarray(0, r.length * ENTRY_SIZE) ?? []);
    };
    assert.ok(entries(head).equals(entries(first)), 'the restored content index');
    const ro = await Volume.open(store, { readOnly: true, dataCacheBytes: 0 });
    assert.equal(sha(await ro.read(0, 64 * BS)), sha(a));
    await ro.close();
    await assertDeepClean(store);
  });
});
