import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { crc32c } from '../../../../src/format/codec/binary.js';
import { crc32cCombine, crc32cOfRun } from '../../../../src/format/codec/crc-combine.js';
import { rng } from '../../../helpers/rng.js';

describe('CRC-32C of a concatenation', () => {
  it('combines the CRCs of two pieces as the CRC of both, for any lengths', () => {
    const r = rng(5);
    for (let i = 0; i < 300; i++) {
      const a = randomBytes(Math.floor(r() * 5000));
      const b = randomBytes(i < 10 ? i : Math.floor(r() * (r() < 0.1 ? 200_000 : 5000)));
      assert.equal(
        crc32cCombine(crc32c(a), crc32c(b), b.length),
        crc32c(Buffer.concat([a, b])),
        `|A| ${a.length}, |B| ${b.length}`,
      );
    }
  });

  it('names the CRC of a run of equal pieces, and changes with any one piece', () => {
    for (const len of [1, 512, 4096, 4096 + 16, 65536]) {
      const n = 37;
      const run = randomBytes(n * len);
      const crcs = Array.from({ length: n }, (_, k) =>
        crc32c(run.subarray(k * len, (k + 1) * len)),
      );
      assert.equal(
        crc32cOfRun(0, n, len, (k) => crcs[k] as number),
        crc32c(run),
        `len ${len}`,
      );
      assert.equal(
        crc32cOfRun(5, 9, len, (k) => crcs[k] as number),
        crc32c(run.subarray(5 * len, 9 * len)),
      );
      // One flipped bit in any one piece: the run's CRC no longer matches the combination.
      for (const k of [0, 17, n - 1]) {
        const bad = Buffer.from(run);
        const at = k * len + ((k * 7) % len);
        bad[at] = (bad[at] as number) ^ 0x10;
        assert.notEqual(
          crc32c(bad),
          crc32cOfRun(0, n, len, (j) => crcs[j] as number),
        );
      }
    }
  });
});
