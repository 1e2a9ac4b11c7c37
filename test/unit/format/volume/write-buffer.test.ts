import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ADOPT_MIN, SlabPool, WriteBuffer } from '../../../../src/format/volume/write-buffer.js';
import { rng } from '../../../helpers/rng.js';

const BS = 4096;

/** A buffer over a "stored" image: what the index would return for blocks not buffered. */
function setup(blocks: number, maxDirtyBytes = 1 << 30) {
  const stored = Buffer.alloc(blocks * BS);
  let reads = 0;
  let room = 0;
  const buf: WriteBuffer = new WriteBuffer({
    blockSize: BS,
    maxDirtyBytes,
    readBlock: async (lba) => {
      reads++;
      await new Promise((r) => setImmediate(r));
      // A read-modify-write sees what reads see: the buffer first, then the store.
      const v = buf.lookup(lba);
      if (v === null) return Buffer.alloc(BS);
      if (v) return Buffer.from(v);
      return Buffer.from(stored.subarray(lba * BS, (lba + 1) * BS));
    },
    checkWritable: () => undefined,
    flushForRoom: () => {
      room++;
    },
    lastFlushError: () => undefined,
  });
  /** The image as reads would see it. */
  const image = (): Buffer => {
    const out = Buffer.from(stored);
    for (let lba = 0; lba < blocks; lba++) {
      const v = buf.lookup(lba);
      if (v === null) out.fill(0, lba * BS, (lba + 1) * BS);
      else if (v) v.copy(out, lba * BS);
    }
    return out;
  };
  return { buf, stored, image, reads: () => reads, roomAsked: () => room };
}

describe('write buffer', () => {
  it('writes a payload given in pieces exactly like the joined buffer', async () => {
    const rand = rng(7);
    const a = setup(64);
    const b = setup(64);
    const model = Buffer.alloc(64 * BS);
    for (let i = 0; i < 300; i++) {
      const off = Math.floor(rand() * 60 * BS);
      const len = 1 + Math.floor(rand() * Math.min(64 * BS - off, 20 * BS));
      const data = Buffer.alloc(len);
      for (let k = 0; k < len; k++) data[k] = Math.floor(rand() * 256);
      // Some writes hold blocks of zeros (holes, tested in place), or all but one byte zeros.
      if (rand() < 0.3) data.fill(0, 0, Math.floor(rand() * len));
      if (rand() < 0.2) data.fill(0)[Math.floor(rand() * len)] = 1;
      // Cut it at random points (pieces of any size, some empty).
      const parts: Buffer[] = [];
      for (let at = 0; at < len;) {
        const n = Math.min(len - at, Math.floor(rand() * 3 * BS));
        parts.push(data.subarray(at, at + n));
        at += n;
      }
      await Promise.all([a.buf.write(off, data), b.buf.write(off, parts)]);
      data.copy(model, off);
    }
    assert.ok(a.image().equals(model));
    assert.ok(b.image().equals(model));
  });

  it('matches a byte model over random unaligned writes, write-zeroes and trims', async () => {
    const blocks = 64;
    const { buf, stored, image } = setup(blocks);
    const rand = rng(3);
    for (let i = 0; i < stored.length; i++) stored[i] = (i * 31) & 0xff;
    const model = Buffer.from(stored);
    for (let step = 0; step < 3000; step++) {
      const off = Math.floor(rand() * (model.length - 1));
      const len = 1 + Math.floor(rand() * Math.min(model.length - off, 3 * BS));
      const r = rand();
      if (r < 0.6) {
        const data = Buffer.alloc(len, step & 0xff);
        await buf.write(off, data);
        data.copy(model, off);
      } else if (r < 0.8) {
        await buf.zero(off, len, 'zero');
        model.fill(0, off, off + len);
      } else {
        // A trim unmaps whole blocks only; partial edges keep their bytes.
        await buf.zero(off, len, 'keep');
        const lo = Math.ceil(off / BS) * BS;
        const hi = Math.floor((off + len) / BS) * BS;
        if (hi > lo) model.fill(0, lo, hi);
      }
      if (step % 500 === 0) assert.ok(image().equals(model), `step ${step}`);
    }
    assert.ok(image().equals(model));
  });

  it('orders overlapping partial writes: the later one wins even though the earlier one waits for a read', async () => {
    const { buf, image, reads } = setup(4);
    const a = buf.write(100, Buffer.alloc(10, 1)); // partial: reads block 0 first
    const b = buf.write(105, Buffer.alloc(10, 2)); // overlaps a, must apply after it
    await Promise.all([a, b]);
    const img = image();
    assert.deepEqual([...img.subarray(100, 115)], [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]);
    assert.equal(reads(), 1, 'the second write found the block buffered');
  });

  it('logs each change in the step that applies it (write-zeroes edges included)', async () => {
    const { buf } = setup(8);
    const order: string[] = [];
    // A zero with partial edges reads its edge blocks; a write to an edge block arrives
    // meanwhile. Whatever order they apply in, the log must show the same order.
    const z = buf.zero(1000, 3 * BS, 'zero', () => {
      order.push(`zero applied=${buf.lookup(0) === null ? 'hole' : 'data'}`);
      return undefined;
    });
    const w = buf.write(0, Buffer.alloc(BS, 9), () => {
      order.push('write');
      return undefined;
    });
    await Promise.all([z, w]);
    assert.equal(order.length, 2);
    const blk0 = buf.lookup(0) as Buffer;
    // The later-logged change is the one whose bytes are visible in block 0.
    if (order[1] === 'write') assert.equal(blk0[2000], 9);
    else assert.equal(blk0[2000], 0);
    assert.equal(blk0[500], 9, "bytes before the zeroed range are the write's either way");
  });

  it('makes writers wait for room when full, and asks for a flush', async () => {
    const { buf, roomAsked } = setup(64, 4 * BS);
    for (let i = 0; i < 4; i++) await buf.write(i * BS, Buffer.alloc(BS, 1));
    let done = false;
    const p = buf.write(10 * BS, Buffer.alloc(BS, 2)).then(() => {
      done = true;
    });
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(done, false, 'blocked while full');
    assert.ok(roomAsked() >= 1);
    // A flush freezes the full generation and, once committed, makes room.
    const gen = buf.freeze();
    assert.equal(gen.bytes, 4 * BS);
    assert.ok(buf.lookup(0), 'frozen blocks still read');
    buf.release(gen);
    buf.roomMade();
    await p;
    assert.equal(done, true);
    assert.equal(buf.lookup(0), undefined, 'committed blocks now come from the index');
  });

  it('puts a failed flush back under newer writes', async () => {
    const { buf } = setup(8);
    await buf.write(0, Buffer.alloc(BS, 1));
    await buf.write(BS, Buffer.alloc(BS, 1));
    const gen = buf.freeze();
    await buf.write(BS, Buffer.alloc(BS, 2)); // newer than the frozen one
    buf.putBack([gen]);
    assert.equal((buf.lookup(0) as Buffer)[0], 1);
    assert.equal((buf.lookup(1) as Buffer)[0], 2, 'the newer write wins');
    assert.equal(buf.dirtyBytes, 2 * BS);
  });

  it('serves several frozen generations newest first and puts a failed suffix back in order', async () => {
    const { buf } = setup(64);
    await buf.write(0, Buffer.alloc(BS, 1));
    const g1 = buf.freeze();
    await buf.write(0, Buffer.alloc(BS, 2));
    await buf.write(BS, Buffer.alloc(BS, 2));
    const g2 = buf.freeze();
    await buf.zero(BS, BS, 'keep');
    await buf.write(2 * BS, Buffer.alloc(BS, 3));
    const g3 = buf.freeze();
    await buf.write(3 * BS, Buffer.alloc(BS, 4));
    assert.equal((buf.lookup(0) as Buffer)[0], 2, 'newest frozen generation wins');
    assert.equal(buf.lookup(1), null, 'a trim in a newer generation hides an older write');
    // (The trimmed block counts as the map entry it is: 64 bytes.)
    assert.equal(buf.frozenBytes, 4 * BS + 64);
    assert.equal(buf.heldBytes, 5 * BS + 64);
    // g1 landed; g2 and g3 failed: they come back under the active generation, in order.
    buf.release(g1);
    buf.putBack([g2, g3]);
    assert.equal(buf.frozen.length, 0);
    assert.equal((buf.lookup(0) as Buffer)[0], 2);
    assert.equal(buf.lookup(1), null);
    assert.equal((buf.lookup(2) as Buffer)[0], 3);
    assert.equal((buf.lookup(3) as Buffer)[0], 4);
    assert.throws(() => {
      const a = buf.freeze();
      buf.freeze();
      buf.putBack([a]);
    }, /suffix/);
  });

  it('keeps a large block-aligned payload handed over as its blocks, copies others, and recycles kept memory only with its generation', async () => {
    const { buf, image } = setup(256);
    const model = Buffer.alloc(256 * BS);
    const fill = (b: Buffer, seed: number): Buffer => {
      for (let i = 0; i < b.length; i++) b[i] = (i * 31 + seed) & 0xff;
      return b;
    };
    // 64 KiB at a block boundary: kept, no copy.
    const kept = fill(buf.payloads.take(ADOPT_MIN), 1);
    kept.copy(model, 8 * BS);
    await buf.writeOwned(8 * BS, kept);
    assert.equal((buf.lookup(8) as Buffer).buffer, kept.buffer, 'the payload is the block');
    assert.equal(buf.payloads.held, 0);
    // Too small, or not on a block boundary: copied, and the memory goes back to the pool.
    const small = fill(buf.payloads.take(4 * BS), 2);
    small.copy(model, 100 * BS);
    await buf.writeOwned(100 * BS, small);
    assert.notEqual((buf.lookup(100) as Buffer).buffer, small.buffer);
    const odd = fill(buf.payloads.take(ADOPT_MIN), 3);
    odd.copy(model, 120 * BS + 512);
    await buf.writeOwned(120 * BS + 512, odd);
    assert.notEqual((buf.lookup(121) as Buffer).buffer, odd.buffer);
    assert.equal(buf.payloads.held, 4 * BS + ADOPT_MIN);
    assert.equal(buf.payloads.take(4 * BS), small, 'a copied payload is reused');
    // A later partial write to a kept block updates it; a kept block of zeros is a hole.
    await buf.write(9 * BS + 100, Buffer.from('later'));
    Buffer.from('later').copy(model, 9 * BS + 100);
    // A payload over blocks the generation holds updates them in place and goes back at once.
    const over = fill(buf.payloads.take(ADOPT_MIN), 4);
    over.copy(model, 8 * BS);
    await buf.writeOwned(8 * BS, over);
    assert.equal((buf.lookup(8) as Buffer).buffer, kept.buffer, 'updated in place');
    assert.equal(buf.payloads.take(ADOPT_MIN), over, 'copied, and handed out again');
    const zeros = buf.payloads.take(ADOPT_MIN).fill(0);
    await buf.writeOwned(40 * BS, zeros);
    assert.equal(buf.lookup(40), null);
    assert.ok(image().equals(model));
    // Kept payloads come back only when their generation gives its slabs back.
    const gen = buf.freeze();
    assert.notEqual(buf.payloads.take(ADOPT_MIN), kept, 'still in use: not handed out again');
    assert.ok(image().equals(model), 'a frozen generation serves the kept blocks');
    buf.release(gen);
    gen.recycleSlabs();
    const again = [buf.payloads.take(ADOPT_MIN), buf.payloads.take(ADOPT_MIN)];
    assert.ok(again.includes(kept), 'recycled with the generation');
  });
});

describe('change watches (online compaction)', () => {
  it('copies a run over the blocks no change touched since its watch began, and refuses a copy outside a watch', async () => {
    const { buf } = setup(64);
    const w = buf.watch(10, 20);
    await buf.write(12 * BS, Buffer.alloc(BS, 2));
    await buf.zero(15 * BS, 2 * BS, 'keep');
    await buf.write(25 * BS, Buffer.alloc(BS, 2)); // outside the watch
    assert.deepEqual(
      [...w.touched].sort((x, y) => x - y),
      [12, 15, 16],
    );
    const copy = Buffer.alloc(10 * BS, 9);
    assert.equal(await buf.rewrite(10, copy, w), 7);
    assert.equal((buf.lookup(12) as Buffer)[0], 2, 'the write made after the watch began stays');
    assert.equal(buf.lookup(15), null, 'so does the trim');
    assert.equal((buf.lookup(10) as Buffer)[0], 9, 'untouched blocks take the copy');
    await assert.rejects(buf.rewrite(18, Buffer.alloc(4 * BS), w), /outside its change watch/);
    buf.unwatch(w);
    await assert.rejects(buf.rewrite(10, copy, w), /outside its change watch/);
    await buf.write(11 * BS, Buffer.alloc(BS, 3));
    assert.equal(w.touched.has(11), false, 'an ended watch records nothing');
  });
});

describe('SlabPool', () => {
  it('keeps slabs up to its limit, and those of landed gathered segments up to the larger one', () => {
    const pool = new SlabPool(4096, 2, 5);
    const slabs = Array.from({ length: 8 }, () => pool.take());
    assert.equal(slabs[0]?.length, 1024 * 1024);
    for (const s of slabs.slice(0, 4)) pool.give(s);
    assert.equal(pool.size, 2, 'plain slabs: up to the limit');
    for (const s of slabs.slice(4)) pool.give(s, true);
    assert.equal(pool.size, 5, 'gathered slabs: up to the larger limit');
    pool.give(Buffer.alloc(4096), true);
    assert.equal(pool.size, 5, 'a buffer of another size is not a slab');
    // Taken again first; what plain generations give back drains the surplus.
    const again = [pool.take(), pool.take(), pool.take()];
    assert.ok(
      again.every((s) => slabs.includes(s)),
      'reused, not new',
    );
    assert.equal(pool.size, 2);
    for (const s of again) pool.give(s);
    assert.equal(pool.size, 2, 'nothing kept above the limit from plain generations');
  });
});
