import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isZero } from '../../../../src/format/codec/binary.js';

describe('isZero', () => {
  it('finds a single set byte anywhere in a range, across 64 KiB pieces, and nothing outside it', () => {
    const b = Buffer.alloc(200 * 1024);
    assert.ok(isZero(b));
    assert.ok(isZero(b, 5, 5), 'an empty range');
    for (const at of [0, 1, 4095, 65535, 65536, 100_000, b.length - 1]) {
      b[at] = 1;
      assert.equal(isZero(b), false, `byte ${at}`);
      assert.equal(isZero(b, 0, at), true, `before ${at}`);
      assert.equal(isZero(b, at + 1), true, `after ${at}`);
      assert.equal(isZero(b, Math.max(0, at - 3), at + 1), false, `ending at ${at}`);
      b[at] = 0;
    }
  });
});
