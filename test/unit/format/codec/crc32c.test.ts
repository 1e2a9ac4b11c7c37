import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import {
  CRC32C_IMPLEMENTATION,
  crc32c,
  tableCrc32cOf,
} from '../../../../src/format/codec/binary.js';
import { rng } from '../../../helpers/rng.js';

/** Whether this processor has the SSE 4.2 CRC32 instruction. */
function hasSse42(): boolean {
  if (process.arch !== 'x64') return false;
  try {
    return /\bsse4_2\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));
  } catch {
    return false;
  }
}

describe('CRC-32C', () => {
  it('has the check value of the Castagnoli CRC (RFC 3720) and 0 for nothing', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
    assert.equal(crc32c(Buffer.alloc(0)), 0);
    // 32 bytes of zeros, RFC 3720 B.4.
    assert.equal(crc32c(Buffer.alloc(32)), 0x8a9136aa);
  });

  it('gives the table walk’s value for any length, alignment and continuation', () => {
    const r = rng(11);
    const pool = randomBytes(300_000);
    const shared = new Uint8Array(new SharedArrayBuffer(70_000));
    shared.set(pool.subarray(0, shared.length));
    for (let i = 0; i < 2000; i++) {
      const len = i < 70 ? i : Math.floor(r() * (r() < 0.1 ? 200_000 : 9000));
      const at = Math.floor(r() * (pool.length - len));
      const piece = pool.subarray(at, at + len);
      assert.equal(crc32c(piece), tableCrc32cOf(piece), `length ${len} at ${at}`);
      const cut = Math.floor(r() * (len + 1));
      const head = crc32c(piece.subarray(0, cut));
      assert.equal(crc32c(piece.subarray(cut), head), crc32c(piece), `continued at ${cut}`);
      const initial = Math.floor(r() * 2 ** 32);
      assert.equal(crc32c(piece, initial), tableCrc32cOf(piece, initial));
      if (len <= shared.length - 1) {
        const s = shared.subarray(1, 1 + len);
        assert.equal(crc32c(s), tableCrc32cOf(Buffer.from(s)), 'over shared memory');
      }
    }
  });

  it('uses the CRC32 instruction where the processor has one (the addon is built)', () => {
    // Without it every block written and read costs twice the CPU: a failed build of the
    // native addon (which does not fail the install) must not pass unnoticed.
    assert.equal(CRC32C_IMPLEMENTATION, hasSse42() ? 'sse4.2' : 'table');
  });
});
