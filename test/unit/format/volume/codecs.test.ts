/**
 * Block codecs through the engine: compressed volumes round-trip every kind of write against
 * a model across flushes, reopens, compaction, clones and the disk cache; damage to a
 * compressed block is reported with its key, never returned.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, describe, it } from 'node:test';
import { isHyperError } from '../../../../src/errors.js';
import { CODEC_RAW, CODEC_ZSTD, type Compression } from '../../../../src/format/codec/block.js';
import type { Cipher } from '../../../../src/format/codec/seal.js';
import { crc32c } from '../../../../src/format/codec/binary.js';
import { encodeHead, type HeadRecord } from '../../../../src/format/codec/head.js';
import {
  encodeNode,
  encodedNodeSize,
  readLeaf,
  writeLeaf,
} from '../../../../src/format/codec/node.js';
import { decodeSegmentHeader } from '../../../../src/format/codec/segment.js';
import { addKey, clearKeys } from '../../../../src/format/keyring.js';
import { segmentKey } from '../../../../src/format/keys.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { statVolume } from '../../../../src/format/volume/admin.js';
import { checkVolume } from '../../../../src/format/volume/check.js';
import { cloneVolume } from '../../../../src/format/volume/clone.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import { readHead, rootOf } from '../../../../src/format/volume/heads.js';
import { readLease } from '../../../../src/format/volume/lease.js';
import { KiB, MiB } from '../../../../src/format/volume/types.js';
import { Compressibility } from '../../../../src/format/volume/flush.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { rng } from '../../../helpers/rng.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const dir = mkdtempSync(join(tmpdir(), 'hyper-codecs-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Text that compresses (this repository's source), random bytes that do not, and zeros. */
/**
 * Compressible text of fixed content: log lines drawn with a fixed seed. (Text read from a
 * source file changed its size whenever that file was edited.)
 */
const TEXT = ((): Buffer => {
  const words = ['read', 'write', 'flush', 'segment', 'lease', 'checkpoint', 'block', 'cache'];
  const levels = ['INFO', 'WARN', 'DEBUG'];
  const r = rng(4242);
  const pick = <T>(xs: T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const lines: string[] = [];
  for (let n = 0; n < 2000; n++) {
    const w = `${pick(words)} ${pick(words)} ${pick(words)}`;
    lines.push(
      `2026-12-03T02:${String(n % 60).padStart(2, '0')} ${pick(levels)} volume: ${w} done in ${Math.floor(r() * 900)} ms\n`,
    );
  }
  return Buffer.from(lines.join(''));
})();
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

const KEY = Buffer.alloc(32, 0x42);
const sealed = { encryption: 'xchacha20-poly1305' as const, key: KEY };

describe('block codecs', () => {
  const combos: [Compression, Cipher | undefined][] = [
    ['zstd', undefined],
    ['lz4', undefined],
    ['none', undefined],
    ['none', 'xchacha20-poly1305'],
    ['zstd', 'xchacha20-poly1305'],
    ['none', 'aes-256-gcm'],
    ['lz4', 'aes-256-gcm'],
  ];
  for (const [compression, encrypted] of combos) {
    const name = `${compression}${encrypted ? ` + ${encrypted}` : ''}`;
    it(`${name}: random writes, zeroes and reopens read back as the model`, async () => {
      const size = 4 * MiB;
      const store = MemStore.isolated();
      await Volume.create(store, {
        size,
        compression,
        segmentSize: 1 * MiB,
        ...(encrypted ? { encryption: encrypted, key: KEY } : {}),
      });
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
      assert.equal(v.info.encryption, encrypted ?? 'none');
      assert.equal(v.info.formatVersion, compression === 'none' && !encrypted ? 1 : 2);
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

describe('encryption', () => {
  /** A small encrypted volume whose blocks are all in the head's root leaf. */
  async function small(
    blocks: Buffer[],
    url = 'mem://enc/',
    key = KEY,
  ): Promise<{ store: MemStore; head: HeadRecord }> {
    const store = MemStore.isolated(url);
    await Volume.create(store, { size: 1 * MiB, ...sealed, key });
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, Buffer.concat(blocks));
    await v.close();
    return { store, head: (await readHead(store)).head };
  }

  /** Point leaf i of the head's root at new stored bytes (with their CRC), as an attacker could. */
  async function forge(
    store: MemStore,
    head: HeadRecord,
    i: number,
    bytes: Buffer,
    key: string,
  ): Promise<void> {
    const root = rootOf(head);
    const p = readLeaf(root.entries, i);
    const seg = Buffer.from((await store.get(key)).body);
    bytes.copy(seg, p.off);
    await store.put(key, seg);
    writeLeaf(root.entries, i, root.key(i), { ...p, crc: crc32c(bytes), len: bytes.length });
    const rootBytes = Buffer.alloc(encodedNodeSize(root.length));
    encodeNode(rootBytes, 0, 0, root.length, head.checkpoint, root.entries);
    await store.put('head', encodeHead({ ...head, root: rootBytes }));
  }

  afterEach(() => {
    clearKeys();
    addKey(KEY);
  });

  it('stores no plaintext: neither data nor index bytes appear in the bucket', async () => {
    const secret = Buffer.alloc(4096, 'the quick brown fox ');
    const store = MemStore.isolated();
    await Volume.create(store, { size: 256 * MiB, segmentSize: 1 * MiB, ...sealed });
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    // Enough scattered blocks for index nodes of their own in segments.
    for (let i = 0; i < 600; i++) await v.write(i * 97 * 4096, secret);
    await v.close();
    for await (const page of store.list('seg/')) {
      for (const o of page.objects) {
        const body = (await store.get(o.key)).body;
        assert.equal(body.indexOf('quick brown'), -1, `${o.key} holds plaintext`);
        // (The index root lives in the head, embedded in the segment header, in the clear.)
        const nodes = decodeSegmentHeader(body).nodesOffset;
        assert.equal(body.indexOf('HYND', nodes), -1, `${o.key} holds a plain index node`);
      }
    }
    const ro = await Volume.open(store, { readOnly: true });
    assert.equal(sha(await ro.read(599 * 97 * 4096, 4096)), sha(secret));
    await ro.close();
  });

  it('a missing or wrong key is an error naming the volume and key id, and changes nothing', async () => {
    const { store, head } = await small([chunk(0, 4096, 1)]);
    const before = (await store.get('head')).body;
    const lease = (await readLease(store))?.lease.epoch;
    clearKeys();
    for (const readOnly of [true, false]) {
      await assert.rejects(Volume.open(store, { readOnly }), (e: unknown) => {
        assert.ok(isHyperError(e, 'KEY_REQUIRED'), String(e));
        assert.match((e as Error).message, new RegExp(`mem://enc/.*${head.seal?.keyId}`));
        return true;
      });
    }
    addKey(Buffer.alloc(32, 1));
    await assert.rejects(Volume.open(store), (e: unknown) => {
      assert.ok(isHyperError(e, 'WRONG_KEY'), String(e));
      assert.match((e as Error).message, new RegExp(head.seal?.keyId as string));
      return true;
    });
    await assert.rejects(checkVolume(store, { deep: true }), /KEY_REQUIRED|WRONG_KEY|encrypted/);
    assert.ok((await store.get('head')).body.equals(before), 'the head is untouched');
    assert.equal((await readLease(store))?.lease.epoch, lease, 'no lease was taken');
  });

  it('detects a flipped bit, a block moved to another address and a segment of another volume', async () => {
    // Flipped bit, with the CRC in the index recomputed: the tag catches it.
    let { store, head } = await small([chunk(1, 4096, 1), chunk(1, 4096, 2)]);
    const key = segmentKey(readLeaf(rootOf(head).entries, 0).seg);
    const p0 = readLeaf(rootOf(head).entries, 0);
    const stored0 = Buffer.from((await store.get(key)).body.subarray(p0.off, p0.off + p0.len));
    const flipped = Buffer.from(stored0);
    flipped[100] = (flipped[100] as number) ^ 1;
    await forge(store, head, 0, flipped, key);
    const expectCorrupt = async (s: MemStore, off: number): Promise<void> => {
      const ro = await Volume.open(s, { readOnly: true });
      await assert.rejects(ro.read(off, 4096), (e: unknown) => {
        assert.ok(isHyperError(e, 'CORRUPT_OBJECT'), String(e));
        assert.equal((e as { key?: string }).key, key);
        assert.match((e as Error).message, /authentication/);
        return true;
      });
      await ro.close();
      const c = await checkVolume(s, { deep: true });
      assert.equal(c.clean, false);
      assert.equal(c.problems[0]?.key, key);
    };
    await expectCorrupt(store, 0);

    // Block 0's sealed bytes copied to block 1's place (index entry made to match).
    ({ store, head } = await small([chunk(1, 4096, 1), chunk(1, 4096, 2)]));
    const q0 = readLeaf(rootOf(head).entries, 0);
    const b0 = Buffer.from((await store.get(key)).body.subarray(q0.off, q0.off + q0.len));
    await forge(store, head, 1, b0, key);
    await expectCorrupt(store, 4096);

    // Another volume under the same key, same layout: its segment and index copied over.
    const mine = await small([chunk(1, 4096, 3)], 'mem://enc-a/');
    const theirs = await small([chunk(1, 4096, 3)], 'mem://enc-b/');
    await mine.store.put(key, (await theirs.store.get(key)).body);
    await mine.store.put('head', encodeHead({ ...mine.head, root: theirs.head.root }));
    await expectCorrupt(mine.store, 0);
  });

  it('clones, compaction and restore work on encrypted volumes', async () => {
    const store = MemStore.isolated('mem://enc-parent/');
    await Volume.create(store, {
      size: 4 * MiB,
      segmentSize: 1 * MiB,
      compression: 'zstd',
      ...sealed,
    });
    const model = Buffer.alloc(4 * MiB);
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    for (let i = 0; i < 5; i++) {
      const data = chunk(i % 2, 1 * MiB, i);
      await v.write((i % 4) * MiB, data);
      data.copy(model, (i % 4) * MiB);
      await v.flush();
    }
    await v.close();
    assert.ok((await compactVolume(store, { keepLast: 1, graceMs: 0 })).segmentsDeleted > 0);
    const child = MemStore.isolated('mem://enc-child/');
    const cur = (await readHead(store)).head;
    await cloneVolume(store, { checkpoint: cur.checkpoint }, child, {
      openStore: async () => store,
    });
    const c = await Volume.open(child, { flushIntervalMs: 0, openStore: async () => store });
    assert.equal(c.info.encryption, 'xchacha20-poly1305');
    await c.write(0, chunk(0, 8192, 7));
    chunk(0, 8192, 7).copy(model, 0);
    assert.equal(sha(await c.read(0, 4 * MiB)), sha(model));
    await c.close();
    const chk = await checkVolume(child, { deep: true, openStore: async () => store });
    assert.equal(chk.clean, true, JSON.stringify(chk.problems));
  });

  it('refuses a WAL, a key without encryption and encryption without a key', async () => {
    const store = MemStore.isolated();
    await assert.rejects(
      Volume.create(store, { size: 1 * MiB, encryption: 'aes-256-gcm' }),
      (e: unknown) => isHyperError(e, 'KEY_REQUIRED'),
    );
    await assert.rejects(Volume.create(store, { size: 1 * MiB, key: KEY }), /without encryption/);
    await Volume.create(store, { size: 1 * MiB, ...sealed });
    await assert.rejects(Volume.open(store, { walUrl: 'mem://enc-wal/' }), /WAL/);
  });
});

describe('early abort of compression', () => {
  it('stops trying on data that does not compress and starts again when it does', () => {
    const c = new Compressibility();
    let tried = 0;
    for (let i = 0; i < 1000; i++) {
      if (!c.shouldTry()) continue;
      tried++;
      c.record(false);
    }
    // 64 tries, then one in 16.
    assert.ok(tried >= 64 && tried <= 64 + Math.ceil(936 / 16) + 1, `tried ${tried}`);
    let until = 0;
    while (!c.shouldTry()) until++;
    assert.ok(until < 16);
    c.record(true);
    for (let i = 0; i < 100; i++) assert.equal(c.shouldTry(), true, 'compressible again');
  });

  it('text written after random data is stored compressed', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 8 * MiB, compression: 'zstd' });
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, chunk(1, 2 * MiB, 1));
    await v.flush();
    const afterRandom = await stored(store);
    await v.write(2 * MiB, chunk(0, 2 * MiB, 2));
    await v.close();
    const text = (await stored(store)) - afterRandom;
    // The same text in a volume that never saw random data.
    const fresh = MemStore.isolated('mem://codecs-fresh/');
    await Volume.create(fresh, { size: 8 * MiB, compression: 'zstd' });
    const empty = await stored(fresh);
    const f = await Volume.open(fresh, { flushIntervalMs: 0 });
    await f.write(2 * MiB, chunk(0, 2 * MiB, 2));
    await f.close();
    const baseline = (await stored(fresh)) - empty;
    assert.ok(baseline < 1.5 * MiB, `text compresses (${baseline} bytes)`);
    // At most one probe interval of blocks stored raw after the switch.
    assert.ok(
      text <= baseline + Compressibility.PROBE * 4096,
      `text after random data: ${text} bytes, alone ${baseline}`,
    );
    const ro = await Volume.open(store, { readOnly: true });
    assert.equal(sha(await ro.read(0, 2 * MiB)), sha(chunk(1, 2 * MiB, 1)));
    assert.equal(sha(await ro.read(2 * MiB, 2 * MiB)), sha(chunk(0, 2 * MiB, 2)));
    await ro.close();
  });
});
