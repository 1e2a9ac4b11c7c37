/**
 * Byte layouts pinned with fixed bytes: a change to any of these is a format change and
 * must bump the record's version (FORMAT.md "Versioning").
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DecodeError, crc32c, readU64, writeU64 } from '../../../../src/format/codec/binary.js';
import { decodeEnvelope, encodeEnvelope } from '../../../../src/format/codec/envelope.js';
import { decodeHead, encodeHead, type HeadRecord } from '../../../../src/format/codec/head.js';
import { decodeLease, encodeLease } from '../../../../src/format/codec/lease.js';
import { decodeNode, encodeNode, encodedNodeSize } from '../../../../src/format/codec/node.js';
import {
  EMBEDDED_HEAD_OFFSET,
  decodeEmbeddedHead,
  decodeSegmentHeader,
  encodeSegmentHeader,
} from '../../../../src/format/codec/segment.js';
import { parseSegmentKey, segmentKey, snapshotKey } from '../../../../src/format/keys.js';

const hex = (b: Buffer): string => b.toString('hex');

describe('codecs', () => {
  it('crc32c is the Castagnoli polynomial', () => {
    assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
  });

  it('u64 fields are little-endian and refuse values above 2^53', () => {
    const b = Buffer.alloc(8);
    writeU64(b, 0, 2 ** 53 - 1);
    assert.equal(hex(b), 'ffffffffffff1f00');
    assert.equal(readU64(b, 0), 2 ** 53 - 1);
    b.writeUInt32LE(0x200000, 4);
    assert.throws(() => readU64(b, 0), DecodeError);
    assert.throws(() => writeU64(b, 0, 2 ** 53), RangeError);
  });

  it('envelope: magic, version, flags, length, body, crc32c — pinned', () => {
    const e = encodeEnvelope('TEST', 1, Buffer.from([0xaa, 0xbb]));
    assert.equal(hex(e.subarray(0, 14)), '544553540100' + '0000' + '12000000' + 'aabb');
    assert.equal(e.readUInt32LE(14), crc32c(e.subarray(0, 14)));
    assert.equal(decodeEnvelope(e, 'TEST', 1).length, 18);
    const bad = Buffer.from(e);
    bad[12] = 0;
    assert.throws(() => decodeEnvelope(bad, 'TEST', 1), /checksum/);
    const v2 = encodeEnvelope('TEST', 2, Buffer.alloc(0));
    assert.throws(() => decodeEnvelope(v2, 'TEST', 1), /unsupported TEST version 2/);
    assert.throws(() => decodeEnvelope(e, 'HYHD', 1), /bad magic/);
    assert.throws(() => decodeEnvelope(e.subarray(0, 10), 'TEST', 1), DecodeError);
  });

  const head: HeadRecord = {
    uuid: '00112233445566778899aabbccddeeff',
    createdMs: 1_700_000_000_000,
    size: 10 * 2 ** 30,
    dataBlockShift: 12,
    metaBlockShift: 12,
    flags: 0,
    segmentSize: 32 * 2 ** 20,
    checkpoint: 7,
    checkpointMs: 1_700_000_001_000,
    prevCheckpoint: 6,
    lastSegment: 9,
    epoch: 3,
    rootLevel: 0,
    root: Buffer.alloc(0),
    skipped: [8],
  };

  it('head record round-trips and its fixed fields sit at pinned offsets', () => {
    const root = Buffer.alloc(encodedNodeSize(0));
    encodeNode(root, 0, 0, 0, 7, Buffer.alloc(32));
    const h = { ...head, root, walUrl: 's3://wal/vol/' };
    const b = encodeHead(h);
    assert.equal(b.toString('ascii', 0, 4), 'HYHD');
    assert.equal(hex(b.subarray(12, 28)), h.uuid);
    assert.equal(readU64(b, 36), h.size); // after uuid and created ms
    assert.equal(b[44], 12);
    assert.equal(readU64(b, 52), h.segmentSize);
    assert.equal(readU64(b, 60), h.checkpoint);
    assert.equal(readU64(b, 92), h.epoch);
    const back = decodeHead(b).head;
    assert.deepEqual({ ...back, root: hex(back.root) }, { ...h, root: hex(root) });
  });

  it('head: unknown required extensions and feature flags are refused', () => {
    const b = encodeHead(head);
    const copy = Buffer.from(b);
    copy.writeUInt16LE(1, 46); // feature flags
    const fixed = encodeEnvelope('HYHD', 1, copy.subarray(12, copy.length - 4));
    assert.throws(() => decodeHead(fixed), /feature flags/);
  });

  it('index node: header layout, crc over header and entries, key order', () => {
    const entries = Buffer.alloc(3 * 32);
    writeU64(entries, 0, 5);
    writeU64(entries, 32, 9);
    const out = Buffer.alloc(4096);
    const end = encodeNode(out, 0, 0, 2, 42, entries);
    assert.equal(end, 96);
    assert.equal(hex(out.subarray(0, 16)), '48594e4401000200' + '2a00000000000000');
    const d = decodeNode(out, 0, 127, 42);
    assert.equal(d.count, 2);
    assert.equal(readU64(d.entries, 32), 9);
    assert.throws(() => decodeNode(out, 0, 127, 41), /segment 42/);
    const flipped = Buffer.from(out);
    flipped.writeUInt8((flipped[40] ?? 0) ^ 1, 40);
    assert.throws(() => decodeNode(flipped, 0, 127), /checksum/);
    writeU64(entries, 32, 5);
    encodeNode(out, 0, 0, 2, 42, entries);
    assert.throws(() => decodeNode(out, 0, 127), /order/);
  });

  it('segment header embeds the head at a fixed offset', () => {
    const headBytes = encodeHead(head);
    const seg = encodeSegmentHeader({
      segmentId: 7,
      createdMs: 1,
      nodesOffset: 4096,
      nodeCount: 1,
      nodeSize: 4096,
      dataOffset: 8192,
      blockCount: 2,
      dataBlockSize: 4096,
      totalLength: 16384,
      headBytes,
      lbas: [3, 4],
      nodes: [{ firstLba: 3, level: 0 }],
    });
    assert.equal(seg.toString('ascii', 0, 4), 'HYSG');
    assert.equal(seg.toString('ascii', EMBEDDED_HEAD_OFFSET, EMBEDDED_HEAD_OFFSET + 4), 'HYHD');
    assert.equal(
      decodeEmbeddedHead(seg.subarray(0, EMBEDDED_HEAD_OFFSET + headBytes.length)).checkpoint,
      7,
    );
    const d = decodeSegmentHeader(seg);
    assert.deepEqual(d.lbas, [3, 4]);
    assert.deepEqual(d.nodes, [{ firstLba: 3, level: 0 }]);
    assert.equal(d.dataOffset, 8192);
  });

  it('lease record round-trips', () => {
    const l = { holder: 'host:123', epoch: 4, acquiredMs: 10, expiresMs: 20 };
    assert.deepEqual(decodeLease(encodeLease(l)), l);
  });

  it('segment keys sort numerically and parse back', () => {
    assert.equal(segmentKey(1), 'seg/0000000000000001');
    assert.equal(segmentKey(255), 'seg/00000000000000ff');
    assert.ok(segmentKey(16) > segmentKey(15));
    assert.equal(parseSegmentKey(segmentKey(2 ** 40)), 2 ** 40);
    assert.equal(parseSegmentKey('seg/xyz'), undefined);
    assert.throws(() => snapshotKey('../x'), /Invalid snapshot name/);
  });
});
