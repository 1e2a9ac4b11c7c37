import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { exportImage, importImage, pool, zeroRuns } from '../../../src/cli/transfer.js';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('zeroRuns', () => {
  it('splits a buffer into alternating runs of zero and data blocks', () => {
    const buf = Buffer.alloc(10 * 4096);
    buf[2 * 4096 + 5] = 1; // block 2
    buf[3 * 4096] = 1; // block 3
    buf[7 * 4096 + 4095] = 1; // block 7
    assert.deepEqual(
      [...zeroRuns(buf, 4096)].map((r) => [r.start / 4096, r.end / 4096, r.zero]),
      [
        [0, 2, true],
        [2, 4, false],
        [4, 7, true],
        [7, 8, false],
        [8, 10, true],
      ],
    );
  });

  it('handles a partial last block and an all-zero or all-data buffer', () => {
    assert.deepEqual(
      [...zeroRuns(Buffer.alloc(5000), 4096)],
      [{ start: 0, end: 5000, zero: true }],
    );
    const data = Buffer.alloc(5000, 1);
    assert.deepEqual([...zeroRuns(data, 4096)], [{ start: 0, end: 5000, zero: false }]);
    const tail = Buffer.alloc(5000);
    tail[4999] = 1;
    assert.deepEqual(
      [...zeroRuns(tail, 4096)],
      [
        { start: 0, end: 4096, zero: true },
        { start: 4096, end: 5000, zero: false },
      ],
    );
    assert.deepEqual([...zeroRuns(Buffer.alloc(0), 4096)], []);
  });
});

describe('pool', () => {
  it('runs every item with bounded concurrency', async () => {
    let running = 0;
    let peak = 0;
    const seen: number[] = [];
    const done = await pool([1, 2, 3, 4, 5, 6, 7, 8], 3, async (n) => {
      running++;
      peak = Math.max(peak, running);
      await sleep(5);
      seen.push(n);
      running--;
    });
    assert.equal(done, true);
    assert.equal(peak, 3);
    assert.deepEqual(seen.sort(), [1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('stops taking items when aborted and waits for the ones in flight', async () => {
    const ac = new AbortController();
    let finished = 0;
    let inFlight = 0;
    const done = await pool(
      Array.from({ length: 100 }, (_, i) => i),
      4,
      async (i) => {
        inFlight++;
        if (i === 5) ac.abort();
        await sleep(5);
        inFlight--;
        finished++;
      },
      ac.signal,
    );
    assert.equal(done, false);
    assert.equal(inFlight, 0, 'nothing left running');
    assert.ok(finished < 20, `stopped early (${finished})`);
  });

  it('reports completion when the signal fires after the last item', async () => {
    const ac = new AbortController();
    const done = await pool([1, 2], 2, async () => ac.abort(), ac.signal);
    assert.equal(done, true);
  });

  it('rethrows the first failure after the others settle', async () => {
    let settled = 0;
    await assert.rejects(
      pool([1, 2, 3, 4], 4, async (n) => {
        await sleep(n * 3);
        settled++;
        if (n === 1) throw new Error('boom');
      }),
      /boom/,
    );
    assert.ok(settled >= 1);
  });

  it('stops when the item source throws', async () => {
    function* items(): Generator<number> {
      yield 1;
      throw new Error('source failed');
    }
    await assert.rejects(
      pool(items(), 2, async () => undefined),
      /source failed/,
    );
  });
});

describe('importImage / exportImage', () => {
  const withTemp = async (fn: (dir: string) => Promise<void>): Promise<void> => {
    const dir = await mkdtemp(join(tmpdir(), 'hyper-transfer-'));
    try {
      await fn(dir);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  };

  it('round-trips an image with holes and an unaligned tail, writing a sparse file', async () => {
    await withTemp(async (dir) => {
      const size = 3 * MiB + 1000; // not a multiple of 512: padded with zeros in the volume
      const image = randomBytes(size);
      image.fill(0, 256 * KiB, 2 * MiB);
      const imagePath = join(dir, 'in.img');
      await writeFile(imagePath, image);

      const store = await openStore(`mem://transfer-${Date.now()}/`);
      await Volume.create(store, { size: Math.ceil(size / 512) * 512 });
      const volume = await Volume.open(store);
      const inFile = await open(imagePath, 'r');
      const imported = await importImage(inFile, size, volume, {
        blockSize: 4096,
        chunkSize: 256 * KiB,
        concurrency: 3,
        zeroFill: false,
      });
      await inFile.close();
      await volume.flush();
      assert.equal(imported.interrupted, false);
      assert.equal(imported.bytesDone, size);
      assert.ok(imported.zeroBytes >= 2 * MiB - 256 * KiB);
      // Whole data blocks are mapped; the last one is partly padding.
      const mapped = volume.info.mappedBlocks * 4096;
      assert.ok(mapped >= imported.dataBytes && mapped < imported.dataBytes + 4096, `${mapped}`);

      const outPath = join(dir, 'out.img');
      const outFile = await open(outPath, 'w');
      await outFile.truncate(volume.info.size);
      const exported = await exportImage(volume, outFile, {
        blockSize: 4096,
        chunkSize: 128 * KiB,
      });
      await outFile.close();
      await volume.close();
      assert.equal(exported.interrupted, false);
      const out = await readFile(outPath);
      assert.ok(out.subarray(0, size).equals(image), 'same bytes');
      assert.ok(out.subarray(size).equals(Buffer.alloc(out.length - size)), 'zero padding');
      const st = await stat(outPath);
      assert.ok(st.blocks * 512 < size - MiB, `sparse (${st.blocks * 512} bytes allocated)`);
    });
  });

  it('zeroes old data when importing zeros over an existing volume (zeroFill)', async () => {
    await withTemp(async (dir) => {
      const store = await openStore(`mem://transfer-fill-${Date.now()}/`);
      await Volume.create(store, { size: MiB });
      const volume = await Volume.open(store);
      await volume.write(0, Buffer.alloc(MiB, 0xaa));
      await volume.flush();
      const imagePath = join(dir, 'zeros.img');
      await writeFile(imagePath, Buffer.alloc(MiB));
      const f = await open(imagePath, 'r');
      await importImage(f, MiB, volume, { blockSize: 4096, zeroFill: true });
      await f.close();
      await volume.flush();
      assert.ok((await volume.read(0, MiB)).equals(Buffer.alloc(MiB)));
      assert.equal(volume.info.mappedBlocks, 0);
      await volume.close();
    });
  });
});
