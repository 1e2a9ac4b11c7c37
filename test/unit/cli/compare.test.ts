import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  compareSides,
  imageSide,
  unionOfData,
  volumeSide,
  type CompareSide,
} from '../../../src/cli/compare.js';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';

const KiB = 1024;
const MiB = 1024 * KiB;
let n = 0;

/** A volume of `size` holding `writes`, opened read-only. */
async function volume(size: number, writes: [number, Buffer][]): Promise<Volume> {
  const store = await openStore(`mem://compare-${process.pid}-${++n}/`);
  await Volume.create(store, { size });
  const v = await Volume.open(store);
  for (const [off, data] of writes) await v.write(off, data);
  await v.close();
  return Volume.open(store, { readOnly: true });
}

/** A side over a buffer, counting the bytes read. */
function bufferSide(buf: Buffer, holes?: [number, number][]): CompareSide & { read_: number } {
  const side = {
    size: buf.length,
    read_: 0,
    read(offset: number, length: number): Promise<Buffer> {
      side.read_ += length;
      return Promise.resolve(Buffer.from(buf.subarray(offset, offset + length)));
    },
    ...(holes
      ? {
          extents(offset: number, length: number) {
            const end = offset + length;
            const out: { offset: number; length: number; hole: boolean }[] = [];
            let at = offset;
            for (const [lo, hi] of holes) {
              if (hi <= at || lo >= end) continue;
              if (lo > at) out.push({ offset: at, length: lo - at, hole: false });
              out.push({
                offset: Math.max(lo, at),
                length: Math.min(hi, end) - Math.max(lo, at),
                hole: true,
              });
              at = Math.min(hi, end);
            }
            if (at < end) out.push({ offset: at, length: end - at, hole: false });
            return Promise.resolve(out);
          },
        }
      : {}),
    close: () => Promise.resolve(),
  };
  return side;
}

describe('compareSides', () => {
  it('finds two volumes identical, holes and written zeros alike, without reading shared holes', async () => {
    const data = randomBytes(MiB);
    const a = await volume(64 * MiB, [[MiB, data]]);
    const b = await volume(64 * MiB, [
      [MiB, data],
      [10 * MiB, Buffer.alloc(MiB)],
    ]);
    let last = 0;
    const r = await compareSides(volumeSide(a), volumeSide(b), {
      chunkSize: 256 * KiB,
      onProgress: (done, total) => {
        assert.equal(total, 64 * MiB);
        assert.ok(done >= last);
        last = done;
      },
    });
    assert.deepEqual([r.identical, r.firstDifference, r.interrupted], [true, undefined, false]);
    assert.equal(last, 64 * MiB);
    // Only what either volume maps was read: the data, and b's written zeros (b stores none).
    assert.ok(r.comparedBytes <= 2 * MiB, `${r.comparedBytes} bytes compared`);
    await a.close();
    await b.close();
  });

  it('names the first differing byte, whichever chunk in flight finds it first', async () => {
    const base = randomBytes(8 * MiB);
    for (const at of [0, 5, 256 * KiB - 1, 256 * KiB, 3 * MiB + 17, 8 * MiB - 1]) {
      const other = Buffer.from(base);
      other[at] = (other[at] as number) ^ 0x40;
      // A later difference too: the earlier one is reported.
      if (at + MiB < other.length) other[at + MiB] = (other[at + MiB] as number) ^ 1;
      const r = await compareSides(bufferSide(base), bufferSide(other), {
        chunkSize: 256 * KiB,
        concurrency: 4,
      });
      assert.deepEqual([r.identical, r.firstDifference], [false, at], `difference at ${at}`);
    }
  });

  it('compares sides of different sizes as if the shorter went on with zeros', async () => {
    const a = Buffer.concat([randomBytes(MiB), Buffer.alloc(MiB)]);
    const short = bufferSide(a.subarray(0, MiB));
    assert.equal((await compareSides(bufferSide(a), short)).identical, true);
    const tail = Buffer.from(a);
    tail[2 * MiB - 1] = 1;
    const r = await compareSides(short, bufferSide(tail));
    assert.deepEqual([r.identical, r.firstDifference], [false, 2 * MiB - 1]);
  });

  it('reads neither side where both report holes', async () => {
    const buf = Buffer.alloc(16 * MiB);
    buf.fill(7, 0, MiB);
    const a = bufferSide(buf, [[MiB, 16 * MiB]]);
    const b = bufferSide(buf, [
      [2 * MiB, 8 * MiB],
      [12 * MiB, 16 * MiB],
    ]);
    const r = await compareSides(a, b);
    assert.equal(r.identical, true);
    // a maps [0, 1M); b maps [0, 2M) and [8M, 12M).
    assert.equal(r.comparedBytes, 6 * MiB);
    assert.equal(a.read_, 6 * MiB);
  });

  it('stops when the signal fires, reporting an interruption, not a verdict', async () => {
    const buf = randomBytes(8 * MiB);
    const ac = new AbortController();
    const r = await compareSides(bufferSide(buf), bufferSide(Buffer.from(buf)), {
      chunkSize: 256 * KiB,
      signal: ac.signal,
      onProgress: (done) => {
        if (done >= MiB) ac.abort();
      },
    });
    assert.deepEqual([r.identical, r.interrupted], [false, true]);
  });

  it('compares a volume with a raw image file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'hyper-compare-'));
    try {
      const data = randomBytes(3 * MiB + 512);
      const v = await volume(4 * MiB, [[0, data]]);
      const path = join(dir, 'disk.img');
      await writeFile(path, Buffer.concat([data, Buffer.alloc(MiB - 512)]));
      const img = await imageSide(path);
      assert.equal((await compareSides(volumeSide(v), img)).identical, true);
      await img.close();
      data[2 * MiB + 3] = (data[2 * MiB + 3] as number) ^ 1;
      await writeFile(path, data);
      const img2 = await imageSide(path);
      const r = await compareSides(volumeSide(v), img2);
      assert.deepEqual([r.identical, r.firstDifference], [false, 2 * MiB + 3]);
      await img2.close();
      await v.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('unionOfData', () => {
  it('merges overlapping and touching ranges', () => {
    assert.deepEqual(
      unionOfData(
        [
          [0, 10],
          [20, 30],
        ],
        [
          [5, 12],
          [12, 15],
          [40, 50],
        ],
      ),
      [
        [0, 15],
        [20, 30],
        [40, 50],
      ],
    );
    assert.deepEqual(unionOfData([], []), []);
  });
});
