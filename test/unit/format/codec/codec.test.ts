/**
 * Byte layouts pinned with fixed bytes: a change to any of these is a format change and
 * must bump the record's version (FORMAT.md "Versioning").
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { DecodeError, crc32c, readU64, writeU64 } from '../../../../src/format/codec/binary.js';
import { decodeEnvelope, encodeEnvelope } from '../../../../src/format/codec/envelope.js';
import {
  CODEC_LZ4,
  CODEC_RAW,
  CODEC_ZSTD,
  decodeBlock,
  decodeBlockNow,
  encodeBlock,
  lz4Packer,
} from '../../../../src/format/codec/block.js';
import {
  FEATURE_CODECS,
  FEATURE_SEALED,
  FEATURE_DEDUP,
  decodeHead,
  encodeHead,
  type HeadRecord,
} from '../../../../src/format/codec/head.js';
import { Sealer, keyIdOf } from '../../../../src/format/codec/seal.js';
import {
  ContentHasher,
  DEDUP_HASH_BLAKE2B_256,
  hashEntry,
  hashMatches,
  hashPrefix,
  pointerKey,
} from '../../../../src/format/codec/dedup.js';
import { decodeLease, encodeLease } from '../../../../src/format/codec/lease.js';
import { decodeWal, encodeWal } from '../../../../src/format/codec/wal.js';
import {
  decodeNode,
  encodeNode,
  encodedNodeSize,
  readLeaf,
  writeLeaf,
} from '../../../../src/format/codec/node.js';
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

  it('head: the fence list is extension 0x0009 (skippable), absent when empty — pinned', () => {
    const h = { ...head, fences: [5, 9] };
    const b = encodeHead(h);
    assert.equal(b.readUInt16LE(4), 1, 'no feature flag: still a version 1 record');
    const ext = b.subarray(b.length - 4 - (6 + 4 + 16), b.length - 4);
    assert.equal(
      hex(ext),
      '0900' + '14000000' + '02000000' + '0500000000000000' + '0900000000000000',
    );
    assert.deepEqual(decodeHead(b).head.fences, [5, 9]);
    assert.ok(encodeHead({ ...head, fences: [] }).equals(encodeHead(head)));
    assert.equal(decodeHead(encodeHead(head)).head.fences, undefined);
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
    writeU64(entries, 8, 42);
    writeU64(entries, 32, 9);
    writeU64(entries, 40, 42);
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
    // An internal node's fields read later are checked now, so that a bad one is a damaged
    // node: an entry pointing to no segment, a block count above 2^53.
    writeU64(entries, 40, 0);
    encodeNode(out, 0, 1, 2, 42, entries);
    assert.throws(() => decodeNode(out, 0, 127), /entry 1 points to no segment/);
    writeU64(entries, 40, 42);
    entries.writeUInt32LE(0x00200000, 60);
    encodeNode(out, 0, 1, 2, 42, entries);
    assert.throws(() => decodeNode(out, 0, 127), /exceeds 2\^53/);
    // A leaf's too, but for the hash entries (odd keys) of a content index's leaf, which hold
    // hash bytes there.
    writeU64(entries, 40, 0);
    encodeNode(out, 0, 0, 2, 42, entries);
    assert.throws(() => decodeNode(out, 0, 127), /entry 1 points to no segment/);
    assert.equal(decodeNode(out, 0, 127, 42, true).count, 2);
    entries.writeUInt32LE(0x00200000, 44);
    encodeNode(out, 0, 0, 2, 42, entries);
    assert.throws(() => decodeNode(out, 0, 127, 42), /exceeds 2\^53/);
    assert.equal(decodeNode(out, 0, 127, 42, true).count, 2);
    writeU64(entries, 32, 10);
    encodeNode(out, 0, 0, 2, 42, entries);
    assert.throws(() => decodeNode(out, 0, 127, 42, true), /exceeds 2\^53/);
    writeU64(entries, 40, 42);
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

  it('head: the WAL change number is extension 0x000a (skippable) — pinned', () => {
    const b = encodeHead({ ...head, walChange: 2 ** 40 + 7 });
    assert.equal(b.readUInt16LE(4), 1, 'no feature flag: still a version 1 record');
    const ext = b.subarray(b.length - 4 - (6 + 8), b.length - 4);
    assert.equal(hex(ext), '0a00' + '08000000' + '0700000000010000');
    assert.equal(decodeHead(b).head.walChange, 2 ** 40 + 7);
    assert.equal(decodeHead(encodeHead(head)).head.walChange, undefined);
  });

  it('WAL entries carry their change number where the reserved bytes were (0: none) — pinned', () => {
    const r = {
      uuid: '00112233445566778899aabbccddeeff',
      epoch: 3,
      seq: 9,
      entries: [
        {
          op: 'write' as const,
          offset: 4096,
          length: 2,
          data: Buffer.from([1, 2]),
          change: 2 ** 33 + 1,
        },
        { op: 'trim' as const, offset: 0, length: 4096 },
      ],
    };
    const b = encodeWal(r);
    // After the envelope header (12), uuid (16), epoch, seq (8 each) and count (4): op, change.
    assert.equal(hex(b.subarray(48, 56)), '01' + '01000000' + '0200' + '00');
    assert.deepEqual(decodeWal(b), r);
  });

  it("a WAL record's trailer says its predecessor's epoch; a record without one reads as before — pinned", () => {
    const r = {
      uuid: '00112233445566778899aabbccddeeff',
      epoch: 5,
      seq: 10,
      entries: [{ op: 'zero' as const, offset: 0, length: 4096, change: 7 }],
    };
    const plain = encodeWal(r);
    const linked = encodeWal({ ...r, prevEpoch: 4 });
    // Eight bytes more, right before the envelope's checksum; everything before them the same.
    assert.equal(linked.length, plain.length + 8);
    assert.equal(hex(linked.subarray(linked.length - 12, linked.length - 4)), '0400000000000000');
    assert.deepEqual(linked.subarray(12, plain.length - 4), plain.subarray(12, plain.length - 4));
    assert.deepEqual(decodeWal(plain), r);
    assert.deepEqual(decodeWal(linked), { ...r, prevEpoch: 4 });
    // A fence (no entries) carries it too.
    const fence = { uuid: r.uuid, epoch: 6, seq: 11, entries: [], prevEpoch: 5 };
    assert.deepEqual(decodeWal(encodeWal(fence)), fence);
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

describe('version 2 layouts: block codecs and sealing', () => {
  const base: HeadRecord = {
    uuid: '00112233445566778899aabbccddeeff',
    createdMs: 1_700_000_000_000,
    size: 2 ** 30,
    dataBlockShift: 12,
    metaBlockShift: 12,
    flags: 0,
    segmentSize: 32 * 2 ** 20,
    checkpoint: 1,
    checkpointMs: 1_700_000_000_000,
    prevCheckpoint: 0,
    lastSegment: 1,
    epoch: 0,
    rootLevel: 0,
    root: Buffer.alloc(0),
    skipped: [],
  };
  const seal = { cipher: 1, keyId: '0102030405060708', salt: Buffer.alloc(16, 0x5a) };

  it('head: version 1 without features, version 2 with them; extensions pinned', () => {
    assert.equal(encodeHead(base).readUInt16LE(4), 1);
    const h = { ...base, flags: FEATURE_CODECS | FEATURE_SEALED, compression: 1, seal };
    const b = encodeHead(h);
    assert.equal(b.readUInt16LE(4), 2, 'record version');
    assert.equal(b.readUInt16LE(46), 3, 'feature flags');
    // The two extensions, last in the body: type u16 | length u32 | data.
    const tail = hex(b.subarray(b.length - 4 - (6 + 4) - (6 + 28), b.length - 4));
    assert.equal(
      tail,
      '0680' +
        '04000000' +
        '01000000' +
        '0780' +
        '1c000000' +
        '01000000' +
        '0102030405060708' +
        '5a'.repeat(16),
    );
    const back = decodeHead(b).head;
    assert.equal(back.compression, 1);
    assert.deepEqual(
      { ...back.seal, salt: hex(back.seal?.salt as Buffer) },
      { ...seal, salt: '5a'.repeat(16) },
    );
    // A version 1 record may not carry feature flags; a version 2 one no unknown flag.
    const v1 = Buffer.from(b);
    v1.writeUInt16LE(1, 4);
    const body = (x: Buffer): Buffer => x.subarray(12, x.length - 4);
    assert.throws(() => decodeHead(encodeEnvelope('HYHD', 1, body(v1))), /feature flags/);
    const unknown = Buffer.from(b);
    unknown.writeUInt16LE(0x0010 | 3, 46);
    assert.throws(() => decodeHead(encodeEnvelope('HYHD', 2, body(unknown))), /feature flags/);
    // The seal extension without its flag (or the flag without it) is refused.
    const noFlag = encodeHead({ ...h, flags: FEATURE_CODECS, seal: undefined });
    assert.equal(decodeHead(noFlag).head.seal, undefined);
    const flagOnly = Buffer.from(noFlag);
    flagOnly.writeUInt16LE(3, 46);
    assert.throws(() => decodeHead(encodeEnvelope('HYHD', 2, body(flagOnly))), /sealed flag/);
  });

  it('leaf entry: byte offset within the sector in its last u16, codec before it', () => {
    const e = Buffer.alloc(32);
    writeLeaf(e, 0, 5, { seg: 9, off: 4096 + 300, len: 1234, crc: 0xdeadbeef, codec: 0x101 });
    assert.equal(
      hex(e),
      '0500000000000000' +
        '0900000000000000' +
        '08000000' +
        'd2040000' +
        'efbeadde' +
        '0101' +
        '2c01',
    );
    assert.deepEqual(readLeaf(e, 0), {
      seg: 9,
      off: 4396,
      len: 1234,
      crc: 0xdeadbeef,
      codec: 0x101,
    });
    // A version 1 entry (last u16 zero) reads as before.
    writeLeaf(e, 0, 5, { seg: 9, off: 8192, len: 4096, crc: 1, codec: 0 });
    assert.equal(e.readUInt16LE(30), 0);
    assert.equal(readLeaf(e, 0).off, 8192);
  });

  it('compressed envelope: crc32c of the plain block, then the frame', async () => {
    const plain = Buffer.alloc(4096, 'abcd');
    const z = await encodeBlock(plain, CODEC_ZSTD);
    assert.equal(z.codec, CODEC_ZSTD);
    assert.equal(z.bytes.readUInt32LE(0), crc32c(plain));
    assert.equal(hex(z.bytes.subarray(4, 8)), '28b52ffd', 'a zstd frame follows');
    assert.ok(z.bytes.length <= 4096 - 512);
    assert.ok((await decodeBlock(z.bytes, CODEC_ZSTD, 4096)).equals(plain));
    const l = await encodeBlock(plain, CODEC_LZ4);
    assert.equal(l.bytes.readUInt32LE(0), crc32c(plain));
    assert.ok((await decodeBlock(l.bytes, CODEC_LZ4, 4096)).equals(plain));
    // Random bytes do not save a sector: stored raw.
    const random = randomBytes(4096);
    assert.equal((await encodeBlock(random, CODEC_ZSTD)).codec, CODEC_RAW);
    assert.equal((await encodeBlock(random, CODEC_LZ4)).codec, CODEC_RAW);
    // A frame that decompresses to other bytes (its plain CRC differs) is refused.
    const bad = Buffer.from(z.bytes);
    bad.writeUInt32LE(crc32c(plain) ^ 1, 0);
    await assert.rejects(decodeBlock(bad, CODEC_ZSTD, 4096), /CRC/);
    await assert.rejects(decodeBlock(z.bytes, CODEC_ZSTD, 8192), /expected 8192/);
  });

  it('lz4 envelope: the plain length, then an LZ4 block; blocks stored by earlier builds read back', async () => {
    const plain = Buffer.alloc(4096);
    for (let i = 0; i < plain.length; i++) plain[i] = ((i * 7 + (i >> 5) * 13) % 61) + 32;
    // Stored by hyper builds before 2026-12-03 (lz4-napi: lz4_flex's block with its length
    // in front): the same layout, another encoder's choice of matches.
    const earlier = Buffer.concat([
      Buffer.from('b44870f1', 'hex'),
      Buffer.from(LZ4_EARLIER_BUILD, 'base64'),
    ]);
    assert.equal(earlier.length, 4 + 404);
    assert.ok((await decodeBlock(earlier, CODEC_LZ4, 4096)).equals(plain));
    const now = await encodeBlock(plain, CODEC_LZ4);
    assert.equal(now.codec, CODEC_LZ4);
    assert.equal(now.bytes.readUInt32LE(0), crc32c(plain));
    assert.equal(now.bytes.readUInt32LE(4), 4096, 'the plain length');
    assert.ok(now.bytes.length <= 4096 - 512);
    assert.ok((await decodeBlock(now.bytes, CODEC_LZ4, 4096)).equals(plain));
    // Malformed input, a wrong length or a truncated block are refused, never returned.
    const wrongLength = Buffer.from(now.bytes);
    wrongLength.writeUInt32LE(8192, 4);
    await assert.rejects(decodeBlock(wrongLength, CODEC_LZ4, 4096), /length says 8192/);
    await assert.rejects(
      decodeBlock(now.bytes.subarray(0, now.bytes.length - 9), CODEC_LZ4, 4096),
      /does not decompress/,
    );
    const garbage = Buffer.concat([now.bytes.subarray(0, 8), Buffer.alloc(200, 0xff)]);
    await assert.rejects(decodeBlock(garbage, CODEC_LZ4, 4096), /does not decompress/);
    await assert.rejects(decodeBlock(now.bytes.subarray(0, 6), CODEC_LZ4, 4096), /no length/);
  });

  it('lz4 packer: the same stored bytes as encodeBlock, packed back to back across slabs', async () => {
    const packer = await lz4Packer();
    const text = (seed: number): Buffer => {
      const b = Buffer.alloc(4096);
      for (let i = 0; i < b.length; i++) b[i] = ((i * seed + (i >> 4) * 13) % 53) + 32;
      return b;
    };
    let prev: Buffer | undefined;
    let backToBack = 0;
    let slabs = 0;
    // ~1,000 blocks of 0.3-2 KiB stored and some that do not compress: over a slab of 1 MiB.
    for (let k = 0; k < 1200; k++) {
      const plain = k % 7 === 3 ? randomBytes(4096) : text(k);
      if (k % 7 !== 3) randomBytes(1536).copy(plain);
      const packed = packer.pack(plain);
      const alone = await encodeBlock(plain, CODEC_LZ4);
      assert.equal(packed.codec, alone.codec, `block ${k}`);
      assert.ok(packed.bytes.equals(alone.bytes), `block ${k}: the same stored bytes`);
      if (packed.codec === CODEC_RAW) {
        assert.equal(packed.bytes, plain, 'a block that does not compress is stored as it is');
        continue;
      }
      assert.ok((decodeBlockNow(packed.bytes, CODEC_LZ4, 4096) as Buffer).equals(plain));
      if (prev && packed.bytes.buffer === prev.buffer) {
        assert.equal(packed.bytes.byteOffset, prev.byteOffset + prev.length, 'back to back');
        backToBack++;
      } else slabs++;
      prev = packed.bytes;
    }
    assert.ok(slabs >= 2, `${slabs} slabs`);
    assert.ok(backToBack > 900, `${backToBack} blocks right after the one before`);
    // A slab's blocks are not changed by later ones.
    const first = packer.pack(text(5));
    const copy = Buffer.from(first.bytes);
    for (let k = 0; k < 600; k++) packer.pack(text(k + 11));
    assert.ok(first.bytes.equals(copy));
  });

  it('sealed object: nonce | AES-256-GCM ciphertext | tag, bound to its place — pinned', () => {
    const key = Buffer.alloc(32, 7);
    assert.equal(keyIdOf(key), keyIdOf(Buffer.alloc(32, 7)));
    assert.match(keyIdOf(key), /^[0-9a-f]{16}$/);
    const s = new Sealer(key, { ...seal, keyId: keyIdOf(key) });
    const nonce = s.nonce(0x0102030405, 0x0a0b0c);
    assert.equal(hex(nonce.subarray(4)), '0504030201' + '0c0b0a', 'segment u40 | counter u24');
    assert.equal(
      hex(s.blockAd({ lba: 3, seg: 0, off: 0 }, 0x101)),
      hex(Buffer.from('HYBK')) + '5a'.repeat(16) + '0300000000000000' + '0101',
    );
    assert.equal(
      hex(s.nodeAd(9, 4096)),
      hex(Buffer.from('HYND')) + '5a'.repeat(16) + '0900000000000000' + '0010000000000000',
    );
    const fixedNonce = Buffer.from('000102030405060708090a0b', 'hex');
    const sealed = s.seal(
      Buffer.from('hyper'),
      fixedNonce,
      s.blockAd({ lba: 3, seg: 0, off: 0 }, 0x100),
    );
    assert.equal(sealed.length, 5 + 28);
    assert.equal(keyIdOf(key), '4fe8cfed62f6d021');
    assert.equal(hex(sealed.subarray(12)), '556c111bcc' + '86040145a19f611ec91ee9a046391ce7');
    assert.equal(hex(sealed.subarray(0, 12)), hex(fixedNonce));
    // AES-256-GCM under HKDF-SHA256(key, salt, "hyper seal v1") is deterministic for a nonce.
    const again = new Sealer(key, { ...seal, keyId: keyIdOf(key) });
    assert.equal(
      hex(
        again.seal(Buffer.from('hyper'), fixedNonce, s.blockAd({ lba: 3, seg: 0, off: 0 }, 0x100)),
      ),
      hex(sealed),
    );
    assert.equal(s.open(sealed, s.blockAd({ lba: 3, seg: 0, off: 0 }, 0x100)).toString(), 'hyper');
    assert.throws(
      () => s.open(sealed, s.blockAd({ lba: 4, seg: 0, off: 0 }, 0x100)),
      /authentication/,
    );
    assert.throws(
      () => s.open(sealed, s.blockAd({ lba: 3, seg: 0, off: 0 }, 0x101)),
      /authentication/,
    );
    const other = new Sealer(key, { ...seal, salt: Buffer.alloc(16, 1) });
    assert.throws(
      () => other.open(sealed, other.blockAd({ lba: 3, seg: 0, off: 0 }, 0x100)),
      /authentication/,
    );
    const flipped = Buffer.from(sealed);
    flipped[14] = (flipped[14] as number) ^ 1;
    assert.throws(
      () => s.open(flipped, s.blockAd({ lba: 3, seg: 0, off: 0 }, 0x100)),
      /authentication/,
    );
  });

  it('XChaCha20-Poly1305: 24-byte nonce (16 session bytes), 40 bytes of overhead — pinned', () => {
    const key = Buffer.alloc(32, 7);
    const params = { cipher: 2, keyId: keyIdOf(key), salt: Buffer.alloc(16, 0x5a) };
    const s = new Sealer(key, params);
    assert.equal(s.overhead, 40);
    const nonce = s.nonce(0x0102030405, 0x0a0b0c);
    assert.equal(nonce.length, 24);
    assert.equal(hex(nonce.subarray(16)), '0504030201' + '0c0b0a');
    const fixed = Buffer.from('000102030405060708090a0b0c0d0e0f1011121314151617', 'hex');
    const sealed = s.seal(
      Buffer.from('hyper'),
      fixed,
      s.blockAd({ lba: 3, seg: 0, off: 0 }, 0x100),
    );
    assert.equal(sealed.length, 5 + 40);
    assert.equal(hex(sealed.subarray(24)), '94a7795307' + '9cc0e6f26b82023bc4f2963815444b5e');
    assert.equal(hex(sealed.subarray(0, 24)), hex(fixed));
    const again = new Sealer(key, params);
    assert.equal(
      hex(again.seal(Buffer.from('hyper'), fixed, s.blockAd({ lba: 3, seg: 0, off: 0 }, 0x100))),
      hex(sealed),
    );
    assert.equal(s.open(sealed, s.blockAd({ lba: 3, seg: 0, off: 0 }, 0x100)).toString(), 'hyper');
    assert.throws(
      () => s.open(sealed, s.blockAd({ lba: 4, seg: 0, off: 0 }, 0x100)),
      /authentication/,
    );
    // The same key, nonce and data under AES-256-GCM seal differently (the cipher is recorded).
    const aes = new Sealer(key, { ...params, cipher: 1 });
    assert.throws(
      () => aes.open(sealed, aes.blockAd({ lba: 3, seg: 0, off: 0 }, 0x100)),
      /authentication/,
    );
    const flipped = Buffer.from(sealed);
    flipped[30] = (flipped[30] as number) ^ 1;
    assert.throws(
      () => s.open(flipped, s.blockAd({ lba: 3, seg: 0, off: 0 }, 0x100)),
      /authentication/,
    );
  });
  it('dedup: head extension 0x8008, the two index entries of a hash, HYBL binding — pinned', () => {
    const root = Buffer.alloc(encodedNodeSize(0));
    encodeNode(root, 0, 0, 0, 1, Buffer.alloc(0));
    const h = {
      ...base,
      flags: FEATURE_CODECS | FEATURE_DEDUP,
      compression: 0,
      dedup: { hash: DEDUP_HASH_BLAKE2B_256, rootLevel: 0, root },
    };
    const b = encodeHead(h);
    assert.equal(b.readUInt16LE(46), 5, 'feature flags: codecs | dedup');
    const ext = b.subarray(b.length - 4 - (6 + 8 + root.length), b.length - 4);
    assert.equal(hex(ext.subarray(0, 14)), '0880' + '28000000' + '01' + '00' + '0000' + '20000000');
    assert.ok(ext.subarray(14).equals(root));
    const back = decodeHead(b).head;
    assert.equal(back.dedup?.hash, 1);
    assert.ok(back.dedup?.root.equals(root));
    // The flag without the extension (or the reverse), or dedup without codecs: refused.
    const body = (x: Buffer): Buffer => x.subarray(12, x.length - 4);
    const noExt = encodeHead({ ...h, dedup: undefined, flags: FEATURE_CODECS });
    const flagOnly = Buffer.from(noExt);
    flagOnly.writeUInt16LE(5, 46);
    assert.throws(() => decodeHead(encodeEnvelope('HYHD', 2, body(flagOnly))), /dedup flag/);
    // A hash's prefix: its first 52 bits, little-endian; pointer key 2p, hash entry 2p + 1
    // holding bytes 8..31.
    const hash = Buffer.from(
      '0102030405061f08' + '1112131415161718' + '2122232425262728' + '3132333435363738',
      'hex',
    );
    const p = hashPrefix(hash);
    assert.equal(p, 0x0f060504030201);
    assert.equal(pointerKey(p), 2 * p);
    const e = hashEntry(hash);
    assert.equal(readU64(e, 0), 2 * p + 1);
    assert.equal(hex(e.subarray(8)), hex(hash.subarray(8)));
    assert.ok(hashMatches(e, hash));
    const other = Buffer.from(hash);
    other[31] = 0;
    assert.ok(!hashMatches(e, other));
    // BLAKE2b-256: unkeyed for plain volumes, keyed (the volume's dedup key) when sealed.
    assert.equal(
      hex(new ContentHasher().hash(Buffer.from('abc'))),
      'bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319',
    );
    assert.notEqual(
      hex(new ContentHasher(Buffer.alloc(32, 1)).hash(Buffer.from('abc'))),
      hex(new ContentHasher().hash(Buffer.from('abc'))),
    );
    // Sealed blocks of deduplicating volumes are bound to their place in the segment.
    const key = Buffer.alloc(32, 7);
    const s = new Sealer(key, { ...seal, keyId: keyIdOf(key) }, true);
    assert.equal(
      hex(s.blockAd({ lba: 3, seg: 9, off: 4196 }, 0x101)),
      hex(Buffer.from('HYBL')) + '5a'.repeat(16) + '0900000000000000' + '6410000000000000' + '0101',
    );
  });
});

/** An lz4 block (with the plain length in front) as builds before 2026-12-03 stored it. */
const LZ4_EARLIER_BUILD =
  'ABAAAP8SICcuNTxDSlFYIikwNz5FTFNaJCsyOUBHTlVcJi00O0JWIQAMH08hAAwfSCEADB9BIQAMHzohAAwfMyEADB8sIQAMHyUhAAwfWyEADB9UIQAMH00hAAwfRiEADB8/IQAMHzghAAwfMSEADB8qIQAMHyMhAAwfWSEADB9SIQAMH0shAAwfRCEADB89IQAMHzYhAAwfLyEADB8oIQAMHyEhAAwfVyEADB9QIQAMH0khAAwfQiEADB87IQAMHzQhAAwABAQPYwAJASUEDyEACAJGBA8hAAcDZwQPIQAGBIgEDyEABR9HIQAMH0AhAAwH6wQPYwACCAwFDyEAAQktBQ8hAAAKTgUOIQALbwUNIQAMkAUMIQANsQULIQAO0gUKIQAP8wUACSEADxQGAQghAA81BgIHIQAPVgYDBiEAD3cGBAUhAA+YBgUEIQAPuQYGAyEAD9oGBwIhAA/7BggBIQAPHAcJACEADz0HCj9JUFdeBwsvSVB/BwwfSX8HDA+gB///////////MGA5QEdOVVw=';
