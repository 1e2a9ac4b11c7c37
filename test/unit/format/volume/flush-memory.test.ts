/**
 * What a flush holds and loads: index nodes a batch of changes needs are loaded several at a
 * time (not one store round trip per missed leaf), the write buffer counts the index nodes
 * its blocks will bring when it bounds memory, the default bound follows the writes (two
 * segments while they are scattered, three otherwise), and an outsized segment buffer is
 * not kept.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseSegmentKey } from '../../../../src/format/keys.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type { GetOptions, GetResult } from '../../../../src/format/store/types.js';
import { SegmentBuffers } from '../../../../src/format/volume/flush.js';
import { KiB, MiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { WriteBuffer } from '../../../../src/format/volume/write-buffer.js';
import { rng } from '../../../helpers/rng.js';
import { putLeftover } from '../../../helpers/checkpoint.js';
import { readHead } from '../../../../src/format/volume/heads.js';

const BS = 4 * KiB;
const tick = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A mem store whose ranged segment GETs take a little time, counting how many overlap. */
class SlowGets extends MemStore {
  slow = false;
  inFlight = 0;
  maxInFlight = 0;
  gets = 0;

  override async get(key: string, options?: GetOptions): Promise<GetResult> {
    if (!this.slow || parseSegmentKey(key) === undefined || !options?.range)
      return super.get(key, options);
    this.gets++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      await tick(2);
      return await super.get(key, options);
    } finally {
      this.inFlight--;
    }
  }

  /** Count (and slow down) the segment GETs from now on. */
  watch(): void {
    this.slow = true;
    this.gets = 0;
    this.maxInFlight = 0;
  }
}

const block = (lba: number, gen: number): Buffer => {
  const b = Buffer.alloc(BS, ((lba * 7 + gen) % 251) | 1);
  b.writeUInt32LE(lba, 0);
  b.writeUInt32LE(gen, 4);
  return b;
};

describe('flush memory and index loads', () => {
  it('loads the leaves a flush changes several at a time, and the result reads back exactly', async () => {
    const store = new SlowGets('mem://flush-loads/');
    const size = 64 * 1024 * BS; // 256 MiB: 65,536 blocks
    await Volume.create(store, { size, segmentSize: MiB });
    const model = new Map<number, number>();
    const r = rng(11);
    const opts = { flushIntervalMs: 0, nodeCacheBytes: 0, dataCacheBytes: 0, leaseTtlMs: 60_000 };
    // Random blocks in two sessions, each over every other stripe of 4096 blocks (a leaf
    // spans ~2,600 of them here): the leaves of a stripe end up in its session's segments,
    // so any batch of a flush over the whole volume needs nodes from several segments,
    // however each session's own flushes fell.
    let v: Volume;
    for (const parity of [0, 1]) {
      v = await Volume.open(store, opts);
      for (let i = 0; i < 1500; i++) {
        const stripe = 2 * Math.floor(r() * 8) + parity;
        const lba = stripe * 4096 + Math.floor(r() * 4096);
        model.set(lba, 1);
        await v.write(lba * BS, block(lba, 1));
      }
      await v.close();
    }
    // A fresh open knows only the root: a flush of random writes misses most leaves.
    v = await Volume.open(store, opts);
    store.watch();
    for (let i = 0; i < 400; i++) {
      const lba = Math.floor(r() * 65_536);
      model.set(lba, 2);
      await v.write(lba * BS, block(lba, 2));
    }
    await v.flush();
    assert.ok(store.gets >= 2, `the flush loaded index nodes (${store.gets} GETs)`);
    assert.ok(
      store.maxInFlight >= 2,
      `index nodes were loaded one at a time (${store.gets} GETs, at most ${store.maxInFlight} at once)`,
    );
    await v.close();
    store.slow = false;
    v = await Volume.open(store, { ...opts, readOnly: true });
    for (const [lba, gen] of model) {
      const got = await v.read(lba * BS, BS);
      assert.ok(got.equals(block(lba, gen)), `block ${lba}`);
    }
    const hole = await v.read(0, BS);
    assert.ok(model.has(0) || hole.equals(Buffer.alloc(BS)));
    await v.close();
  });

  it('holds no more memory than its bound when a client writes, trims and writes again, or writes zeros', async () => {
    const store = MemStore.isolated('mem://flush-waste/');
    const maxDirtyBytes = 4 * MiB;
    await Volume.create(store, { size: 64 * MiB, segmentSize: MiB });
    const v = await Volume.open(store, {
      flushIntervalMs: 0,
      leaseTtlMs: 60_000,
      maxDirtyBytes,
    });
    const buf = (v as unknown as { buffer: WriteBuffer }).buffer;
    const held = (): number => buf.active.memory + buf.frozen.reduce((n, g) => n + g.memory, 0);
    let most = 0;
    const chunk = 256 * KiB;
    let last = Buffer.alloc(0);
    // The same range written (copied, or a payload kept as its blocks) and trimmed, over and
    // over: each write takes new memory while the bytes buffered stay at one chunk.
    for (let i = 0; i < 400; i++) {
      last = Buffer.alloc(chunk, (i % 250) + 1);
      last.writeUInt32LE(i, 0);
      if (i % 2 === 0) await v.write(0, last);
      else {
        const owned = v.payloadBuffer(chunk);
        last.copy(owned);
        await v.writeOwned(0, owned);
      }
      most = Math.max(most, held());
      if (i < 399) await v.trim(0, chunk);
    }
    // (The bound, plus a slab being filled and the segment being built.)
    assert.ok(
      most <= maxDirtyBytes + 3 * MiB,
      `held ${most} bytes for blocks, bound ${maxDirtyBytes}`,
    );
    // Zeros written over the whole volume take no memory for blocks: they are holes.
    const before = buf.active.memory;
    const zeros = Buffer.alloc(MiB);
    for (let off = MiB; off < 64 * MiB; off += MiB) {
      if (off % (4 * MiB) === 0) {
        const owned = v.payloadBuffer(MiB).fill(0);
        await v.writeOwned(off, owned);
      } else await v.write(off, zeros);
    }
    assert.ok(buf.active.memory <= before, `zeros took ${buf.active.memory - before} bytes`);
    assert.ok((await v.read(0, chunk)).equals(last));
    assert.ok((await v.read(MiB, 8 * MiB)).equals(Buffer.alloc(8 * MiB)));
    await v.close();
    const again = await Volume.open(store, { readOnly: true });
    assert.ok((await again.read(0, chunk)).equals(last));
    assert.ok((await again.read(chunk, 63 * MiB)).equals(Buffer.alloc(63 * MiB)));
    await again.close();
  });

  it('counts trimmed blocks and ranges in what it holds: trims one block at a time are flushed and wait at the bound', async () => {
    const store = MemStore.isolated('mem://flush-holes/');
    const maxDirtyBytes = 2 * MiB;
    const size = 64 * 1024 * 1024 * BS; // 256 GiB
    await Volume.create(store, { size, segmentSize: MiB });
    const v = await Volume.open(store, { flushIntervalMs: 0, leaseTtlMs: 60_000, maxDirtyBytes });
    const buf = (v as unknown as { buffer: WriteBuffer }).buffer;
    await v.write(0, Buffer.alloc(64 * KiB, 7));
    await v.flush();
    const before = v.stats().segmentsWritten;
    // 100,000 single blocks trimmed, then 20,000 ranges of 5 MiB apart from each other: no
    // data, but an entry or a range each until a flush.
    let most = 0;
    for (let i = 0; i < 100_000; i++) {
      await v.trim((i * 7 + 16) * BS, BS);
      most = Math.max(most, buf.heldBytes);
    }
    for (let i = 0; i < 20_000; i++) {
      await v.trim(MiB + i * 8 * MiB, 5 * MiB);
      if (i % 100 === 0) most = Math.max(most, buf.heldBytes);
    }
    assert.ok(v.stats().segmentsWritten > before, 'the trims started flushes by themselves');
    assert.ok(most <= maxDirtyBytes + MiB, `held ${most} bytes for trims, bound ${maxDirtyBytes}`);
    // A block between the trims still reads as written; trimmed ones as zeros.
    assert.ok((await v.read(0, 16 * BS)).equals(Buffer.alloc(16 * BS, 7)));
    assert.ok((await v.read(16 * BS, BS)).equals(Buffer.alloc(BS)));
    await v.close();
  });

  it('counts the index nodes the active blocks will bring when it bounds what the buffer holds', async () => {
    let asked = 0;
    const buf = new WriteBuffer({
      blockSize: BS,
      maxDirtyBytes: 8 * BS,
      readBlock: () => Promise.resolve(Buffer.alloc(BS)),
      checkWritable: () => undefined,
      flushForRoom: () => asked++,
      lastFlushError: () => undefined,
    });
    buf.nodeRatio = 1;
    for (let lba = 0; lba < 4; lba++) await buf.write(lba * BS, block(lba, 1));
    assert.equal(buf.dirtyBytes, 4 * BS);
    assert.equal(buf.activeEstimate, 8 * BS);
    assert.equal(buf.heldBytes, 8 * BS);
    // Four blocks and their nodes fill the bound: the fifth waits for room.
    let done = false;
    const fifth = buf.write(4 * BS, block(4, 1)).then(() => (done = true));
    await tick(5);
    assert.equal(done, false);
    assert.ok(asked > 0, 'a flush was asked for');
    buf.freeze();
    buf.release(buf.frozen[0] as never);
    buf.roomMade();
    await fifth;
    assert.equal(buf.dirtyBytes, BS);
  });

  it('holds two segments of scattered writes and three of sequential ones by default; a bound given stays', async () => {
    const store = MemStore.isolated('mem://flush-bound/');
    const seg = 256 * KiB;
    await Volume.create(store, { size: 1024 * 1024 * BS, segmentSize: MiB });
    const opts = { flushIntervalMs: 0, leaseTtlMs: 60_000, flushBytes: seg };
    const r = rng(5);
    const scattered = async (v: Volume, n: number): Promise<void> => {
      for (let i = 0; i < n; i++) {
        const lba = Math.floor(r() * 1024 * 1024);
        await v.write(lba * BS, block(lba, 3));
      }
      await v.flush();
    };
    const sequential = async (v: Volume, from: number, n: number): Promise<void> => {
      for (let lba = from; lba < from + n; lba += 16)
        await v.write(
          lba * BS,
          Buffer.concat(Array.from({ length: 16 }, (_, k) => block(lba + k, 3))),
        );
      await v.flush();
    };
    const v = await Volume.open(store, opts);
    // Before any segment: three.
    assert.equal(v.stats().maxDirtyBytes, 3 * seg);
    await scattered(v, 40);
    assert.equal(v.stats().maxDirtyBytes, 2 * seg, 'random 4 KiB writes: two segments');
    await sequential(v, 5000, 64);
    assert.equal(v.stats().maxDirtyBytes, 3 * seg, 'sequential writes: three again');
    await scattered(v, 40);
    assert.equal(v.stats().maxDirtyBytes, 2 * seg);
    await v.close();
    const v2 = await Volume.open(store, { ...opts, maxDirtyBytes: 5 * seg });
    await scattered(v2, 40);
    assert.equal(v2.stats().maxDirtyBytes, 5 * seg, 'a bound given is kept');
    await v2.close();
  });

  it('keeps a segment buffer for reuse only up to its largest size', () => {
    const pool = new SegmentBuffers(1, 2 * MiB);
    const big = pool.take(3 * MiB);
    pool.give(big);
    const next = pool.take(MiB);
    assert.notEqual(next.buffer, big.buffer, 'an outsized buffer is not kept');
    pool.give(next);
    assert.equal(pool.take(MiB).buffer, next.buffer, 'a buffer within the size is reused');
  });

  it('counts the slabs lz4 blocks were packed in as held until their segment lands', async () => {
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    let waiting = 0;
    let gated = false;
    const store = MemStore.isolated();
    const put = store.put.bind(store);
    store.put = async (key, body, options) => {
      if (gated && parseSegmentKey(key) !== undefined) {
        waiting++;
        await gate;
      }
      return put(key, body, options);
    };
    await Volume.create(store, { size: 64 * MiB, compression: 'lz4' });
    const v = await Volume.open(store, {
      flushIntervalMs: 0,
      flushBytes: 32 * MiB,
      maxDirtyBytes: 64 * MiB,
    });
    gated = true;
    // 8 MiB that compresses to a few dozen bytes a block: one slab of 1 MiB.
    for (let lba = 0; lba < 2048; lba++) await v.write(lba * BS, block(lba, 1));
    const flushed = v.flush();
    while (waiting === 0) await tick(1);
    const held = v.stats().dirtyBytes;
    assert.ok(held >= 9 * MiB, `${held} bytes held: the plain blocks and the slab`);
    assert.ok(held < 12 * MiB, `${held} bytes held`);
    open();
    await flushed;
    assert.ok(v.stats().dirtyBytes < 64 * KiB, 'nothing held once the segment landed');
    for (let lba = 0; lba < 2048; lba += 97)
      assert.ok((await v.read(lba * BS, BS)).equals(block(lba, 1)), `block ${lba}`);
    await v.close();
  });

  it("writers waiting for room go on when a segment id turns out to be an older writer's leftover", async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 64 * MiB });
    const v = await Volume.open(store, {
      flushBytes: 64 * KiB,
      maxDirtyBytes: 128 * KiB,
      flushIntervalMs: 0,
    });
    // PUTs of a writer killed before this one took over land now, at its next ids.
    const { head } = await readHead(store);
    const epoch = Math.max(0, (v.info.writerEpoch ?? 1) - 1);
    for (let id = head.lastSegment + 1; id <= head.lastSegment + 3; id++)
      await putLeftover(store, head, id, epoch);
    const want = new Map<number, number>();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < 400) {
        const i = next++;
        // Scattered, each block once (so the expected content does not depend on the order).
        const lba = (i * 7919) % 16384;
        want.set(lba, i);
        await v.write(lba * 4096, Buffer.alloc(4096, (i % 250) + 1));
      }
    };
    await Promise.all(Array.from({ length: 16 }, worker));
    await v.flush();
    for (const [lba, i] of want) {
      const b = await v.read(lba * 4096, 4096);
      assert.equal(b[0], (i % 250) + 1, `block ${lba}`);
    }
    await v.close();
  });

  it('lets go of a buffer that held far more than the segments now built, and keeps as many as asked', () => {
    const pool = new SegmentBuffers(3, 64 * MiB);
    // A segment of 30 MiB (its pages stay resident), then segments of 8 MiB for a while.
    const big = pool.take(30 * MiB);
    const small = pool.take(8 * MiB);
    pool.give(small);
    for (let i = 0; i < 6; i++) pool.give(pool.take(8 * MiB));
    assert.equal(pool.take(8 * MiB).buffer, small.buffer, 'the buffer that held enough is reused');
    pool.give(big);
    assert.equal(pool.kept, 0, 'the 30 MiB buffer is not kept for 8 MiB segments');
    // Near the recent size: kept, and the one that held at least as much is picked.
    const a = pool.take(10 * MiB);
    const b = pool.take(9 * MiB);
    pool.give(a);
    pool.give(b);
    assert.equal(pool.kept, 2);
    assert.equal(pool.take(9 * MiB).buffer, b.buffer);
    pool.give(b);
    pool.setKeep(1);
    assert.equal(pool.kept, 1, 'a lower bound lets the extra buffers go');
  });

  it('reuses kept segment buffers for segments of any usual size, and lets them go when idle', async () => {
    const pool = new SegmentBuffers(2, 2 * MiB, 50);
    // Segments cut at flushes vary in size: a buffer made for a small one fits a larger one.
    const small = pool.take(MiB / 4);
    const other = pool.take(MiB);
    const third = pool.take(MiB / 2);
    pool.give(small);
    pool.give(other);
    pool.give(third);
    assert.equal(pool.kept, 2, 'at most two are kept');
    const a = pool.take(2 * MiB);
    const b = pool.take((3 * MiB) / 2);
    assert.deepEqual(new Set([a.buffer, b.buffer]), new Set([small.buffer, other.buffer]));
    assert.equal(a.length, 2 * MiB);
    pool.give(a);
    pool.give(b);
    assert.equal(pool.kept, 2);
    await new Promise((r) => setTimeout(r, 120));
    assert.equal(pool.kept, 0, 'idle buffers are let go');
    assert.notEqual(pool.take(MiB).buffer, a.buffer);
  });
});
