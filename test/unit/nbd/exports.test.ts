import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ExportTable, effectiveBlockSizes, transmissionFlags } from '../../../src/nbd/exports.js';
import { MemoryDevice } from '../../../src/nbd/testing/memory-device.js';

// Flag bits from the spec's table, written out independently of src/nbd/protocol.ts.
const HAS_FLAGS = 1;
const READ_ONLY = 2;
const SEND_FLUSH = 4;
const SEND_FUA = 8;
const SEND_TRIM = 32;
const SEND_WRITE_ZEROES = 64;
const SEND_DF = 128;
const CAN_MULTI_CONN = 256;
const SEND_CACHE = 1024;
const SEND_FAST_ZERO = 2048;

describe('transmission flags', () => {
  it('advertise exactly what the device can do', () => {
    const all = new MemoryDevice({ size: 1024 });
    assert.equal(
      transmissionFlags(all, true),
      HAS_FLAGS |
        SEND_FLUSH |
        SEND_FUA |
        SEND_TRIM |
        SEND_WRITE_ZEROES |
        SEND_DF |
        CAN_MULTI_CONN |
        SEND_CACHE |
        SEND_FAST_ZERO,
    );
    assert.equal(transmissionFlags(all, false) & SEND_DF, 0);
    const ro = new MemoryDevice({ size: 1024, readOnly: true });
    assert.equal(
      transmissionFlags(ro, false),
      HAS_FLAGS | READ_ONLY | SEND_FLUSH | CAN_MULTI_CONN | SEND_CACHE,
    );
    const plain = new MemoryDevice({
      size: 1024,
      capabilities: {
        canFlush: false,
        canFua: false,
        canTrim: false,
        canZero: false,
        canFastZero: true,
        canCache: false,
        canMultiConn: false,
      },
    });
    // FAST_ZERO without WRITE_ZEROES is never advertised.
    assert.equal(transmissionFlags(plain, false), HAS_FLAGS);
  });
});

describe('block sizes', () => {
  it('clamp the maximum to the server limit and keep minimum ≤ preferred ≤ maximum', () => {
    const d = new MemoryDevice({
      size: 1 << 20,
      blockSize: { minimum: 512, preferred: 1 << 26, maximum: 1 << 30 },
    });
    assert.deepEqual(effectiveBlockSizes(d, 32 << 20), {
      minimum: 512,
      preferred: 32 << 20,
      maximum: 32 << 20,
    });
    const e = new MemoryDevice({
      size: 1 << 20,
      blockSize: { minimum: 4096, preferred: 512, maximum: 10_000 },
    });
    assert.deepEqual(effectiveBlockSizes(e, 1 << 20), {
      minimum: 4096,
      preferred: 4096,
      maximum: 8192,
    });
  });
});

describe('export table', () => {
  const dev = new MemoryDevice({ size: 1 });
  it('maps "" to the only export, and only then', () => {
    const one = new ExportTable([{ name: 'a', open: () => dev }]);
    assert.equal(one.lookup('')?.name, 'a');
    assert.equal(one.lookup('b'), undefined);
    const two = new ExportTable([
      { name: 'a', open: () => dev },
      { name: 'b', open: () => dev },
    ]);
    assert.equal(two.lookup(''), undefined);
    assert.equal(two.lookup('b')?.name, 'b');
    assert.throws(
      () =>
        new ExportTable([
          { name: 'a', open: () => dev },
          { name: 'a', open: () => dev },
        ]),
      /duplicate/,
    );
  });

  it('follows exports added and removed later', () => {
    const t = new ExportTable();
    assert.equal(t.lookup(''), undefined);
    t.add({ name: 'a', open: () => dev });
    assert.equal(t.lookup('')?.name, 'a');
    t.add({ name: 'b', open: () => dev });
    assert.throws(() => t.add({ name: 'b', open: () => dev }), /duplicate/);
    assert.deepEqual(
      t.list().map((e) => e.name),
      ['a', 'b'],
    );
    assert.equal(t.remove('a'), true);
    assert.equal(t.remove('a'), false);
    assert.equal(t.lookup('')?.name, 'b');
  });
});
