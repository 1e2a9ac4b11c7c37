import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryDevice } from '../../../src/nbd/testing/memory-device.js';

describe('MemoryDevice', () => {
  it('allocates nothing up front and reads holes as zeros', async () => {
    const d = new MemoryDevice({ size: 1024 ** 3 });
    assert.equal(d.allocatedBytes, 0);
    const b = await d.read(12345, 100_000);
    assert.equal(b.length, 100_000);
    assert.ok(b.every((x) => x === 0));
  });

  it('writes across chunk edges and reads them back, with truthful extents', async () => {
    const d = new MemoryDevice({ size: 1 << 20, chunkSize: 4096 });
    const data = Buffer.from(Array.from({ length: 10_000 }, (_, i) => (i % 251) + 1));
    await d.write(4000, data, { fua: false });
    assert.deepEqual(await d.read(4000, 10_000), data);
    assert.equal((await d.read(3999, 1))[0], 0);
    assert.deepEqual(await d.extents(0, 1 << 20), [
      { offset: 0, length: 16384, hole: false, zero: false },
      { offset: 16384, length: (1 << 20) - 16384, hole: true, zero: true },
    ]);
    await d.trim(4096, 8192, { fua: false });
    assert.ok((await d.read(4096, 8192)).every((x) => x === 0));
    assert.equal((await d.read(4000, 1))[0], data[0]);
    const ext = await d.extents(0, 1 << 20);
    assert.deepEqual(ext.slice(0, 3), [
      { offset: 0, length: 4096, hole: false, zero: false },
      { offset: 4096, length: 8192, hole: true, zero: true },
      { offset: 12288, length: 4096, hole: false, zero: false },
    ]);
  });

  it('rejects out-of-range access with a coded error', async () => {
    const d = new MemoryDevice({ size: 4096 });
    await assert.rejects(
      async () => d.read(4000, 200),
      (e: { code?: string }) => e.code === 'OUT_OF_RANGE',
    );
  });
  it('with prefault on, slabs prepared on the helper thread hold what is written', async () => {
    const d = new MemoryDevice({ size: 256 * 1024 * 1024, prefault: true });
    try {
      for (let round = 0; round < 3; round++) {
        for (let o = 0; o < 128 * 1024 * 1024; o += 4 * 1024 * 1024) {
          await d.write(o, Buffer.alloc(4 * 1024 * 1024, (o >>> 22) + round), { fua: false });
        }
        await new Promise((r) => setTimeout(r, 20)); // let prepared slabs arrive
      }
      for (let o = 0; o < 128 * 1024 * 1024; o += 4 * 1024 * 1024) {
        const b = await d.read(o + 4096, 4096);
        assert.ok(b.every((x) => x === (o >>> 22) + 2));
      }
      assert.equal(d.allocatedBytes, 128 * 1024 * 1024);
    } finally {
      await d.close();
    }
  });
});
