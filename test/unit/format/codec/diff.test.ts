import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  DIFF_HEADER_SIZE,
  DIFF_MAX_DATA_RECORD,
  DIFF_RECORD_HEADER_SIZE,
  DiffDecoder,
  DiffEncoder,
  DiffStreamError,
  type DiffEvent,
  type DiffHeader,
} from '../../../../src/format/codec/diff.js';

const header: DiffHeader = {
  sourceUuid: '0123456789abcdef0123456789abcdef',
  fromCheckpoint: 7,
  fromSize: 1 << 20,
  fromTimeMs: 1_700_000_000_000,
  toCheckpoint: 9,
  toSize: 2 << 20,
  toTimeMs: 1_700_000_100_000,
  dataBlockSize: 4096,
  createdMs: 1_700_000_200_000,
};

/** A small stream: two data records around a zero record; returns the bytes and where each record starts. */
function sample(): { bytes: Buffer; starts: number[] } {
  const enc = new DiffEncoder(header);
  const parts: Buffer[] = [enc.start()];
  const starts: number[] = [];
  const at = (): number => parts.reduce((s, p) => s + p.length, 0);
  starts.push(at());
  parts.push(...enc.data(0, Buffer.from('hello, world')));
  starts.push(at());
  parts.push(enc.zero(4096, 8192));
  starts.push(at());
  parts.push(...enc.data(65536, Buffer.alloc(100, 7)));
  starts.push(at());
  parts.push(enc.end());
  return { bytes: Buffer.concat(parts), starts };
}

/** Decode `bytes` fed in pieces as the decoder asks; returns the events or throws. */
function decode(bytes: Buffer): DiffEvent[] {
  const dec = new DiffDecoder();
  const out: DiffEvent[] = [];
  let pos = 0;
  for (;;) {
    const n = dec.wants();
    if (n === 0) {
      dec.eof(bytes.subarray(pos));
      return out;
    }
    if (pos + n > bytes.length) {
      dec.eof(bytes.subarray(pos));
      assert.fail('eof did not throw');
    }
    const ev = dec.feed(bytes.subarray(pos, pos + n));
    pos += n;
    if (ev) out.push(ev);
  }
}

const problem = (bytes: Buffer): DiffStreamError => {
  try {
    decode(bytes);
  } catch (e) {
    assert.ok(e instanceof DiffStreamError, `not a DiffStreamError: ${String(e)}`);
    return e;
  }
  assert.fail('the damaged stream decoded');
};

describe('diff stream codec', () => {
  it('round-trips the header, data and zero records and the end record', () => {
    const { bytes, starts } = sample();
    const events = decode(bytes);
    assert.deepEqual(
      events.map((e) => e.kind),
      ['header', 'data', 'zero', 'data', 'end'],
    );
    assert.deepEqual(events[0], { kind: 'header', header });
    const d = events[1] as Extract<DiffEvent, { kind: 'data' }>;
    assert.equal(d.offset, 0);
    assert.equal(d.data.toString(), 'hello, world');
    assert.equal(d.at, starts[0]);
    assert.deepEqual(events[2], { kind: 'zero', offset: 4096, length: 8192, at: starts[1] });
    const end = events[4] as Extract<DiffEvent, { kind: 'end' }>;
    assert.deepEqual(end.summary, {
      dataRecordCount: 2,
      zeroRecordCount: 1,
      dataBytes: 112,
      zeroBytes: 8192,
    });
    assert.equal(end.streamBytes, bytes.length);
    // The layout FORMAT.md gives: header, 32-byte record headers, a 96-byte end record.
    assert.equal(starts[0], DIFF_HEADER_SIZE);
    assert.equal(starts[1], DIFF_HEADER_SIZE + DIFF_RECORD_HEADER_SIZE + 12);
    assert.equal(bytes.length - (starts[3] as number), DIFF_RECORD_HEADER_SIZE + 64);
    assert.equal(bytes.toString('latin1', 0, 4), 'HYDF');
    assert.equal(bytes.readUInt16LE(4), 1);
    assert.equal(bytes[starts[0] as number], 0x44); // 'D'
    assert.equal(bytes[starts[1] as number], 0x5a); // 'Z'
    assert.equal(bytes[starts[3] as number], 0x45); // 'E'
  });

  it('an empty diff is a header and an end record', () => {
    const enc = new DiffEncoder(header);
    const bytes = Buffer.concat([enc.start(), enc.end()]);
    const events = decode(bytes);
    assert.deepEqual(
      events.map((e) => e.kind),
      ['header', 'end'],
    );
  });

  it('detects every flipped byte', () => {
    const { bytes } = sample();
    for (let i = 0; i < bytes.length; i++) {
      for (const mask of [0x01, 0x80]) {
        const bad = Buffer.from(bytes);
        bad[i] = (bad[i] as number) ^ mask;
        const e = problem(bad);
        assert.ok(
          ['checksum', 'corrupt', 'not-diff', 'version'].includes(e.problem),
          `byte ${i}: ${e.problem}`,
        );
      }
    }
  });

  it('names the damaged record by its offset in the stream', () => {
    const { bytes, starts } = sample();
    const inData = Buffer.from(bytes);
    const second = starts[2] as number;
    const i = second + DIFF_RECORD_HEADER_SIZE + 5;
    inData[i] = (inData[i] as number) ^ 0xff;
    const e = problem(inData);
    assert.equal(e.problem, 'checksum');
    assert.equal(e.offset, second);
    assert.match(e.message, new RegExp(`record at byte ${second}\\b`));
    assert.match(e.message, /volume range 65536\+100/);

    const inHeader = Buffer.from(bytes);
    const j = (starts[1] as number) + 9; // in the zero record's offset
    inHeader[j] = (inHeader[j] as number) ^ 0x10;
    const h = problem(inHeader);
    assert.equal(h.problem, 'checksum');
    assert.equal(h.offset, starts[1]);
  });

  it('refuses a truncated stream at every length, and bytes after the end record', () => {
    const { bytes } = sample();
    for (let n = 0; n < bytes.length; n++) {
      const e = problem(bytes.subarray(0, n));
      assert.equal(e.problem, 'truncated', `length ${n}: ${e.message}`);
    }
    assert.match(problem(Buffer.alloc(0)).message, /empty/);
    const extra = problem(Buffer.concat([bytes, Buffer.from([0])]));
    assert.equal(extra.problem, 'corrupt');
    assert.match(extra.message, /follow the end record/);
  });

  it('refuses another file and an unknown version', () => {
    assert.equal(problem(Buffer.from('this is not a diff stream, just text')).problem, 'not-diff');
    assert.equal(problem(Buffer.from('text')).problem, 'not-diff');
    assert.equal(problem(Buffer.from('HY')).problem, 'truncated');
    const { bytes } = sample();
    const v2 = Buffer.from(bytes);
    v2.writeUInt16LE(2, 4);
    const e = problem(v2);
    assert.equal(e.problem, 'version');
    assert.match(e.message, /version 2; this hyper reads version 1/);
  });

  it('refuses records out of order, overlapping or past the end, and counts that do not match', () => {
    // Splice the streams of two encoders: each record is valid on its own.
    const records = (build: (enc: DiffEncoder) => Buffer[]): Buffer[] => {
      const enc = new DiffEncoder(header);
      enc.start();
      return build(enc);
    };
    const start = new DiffEncoder(header).start();
    const a = records((enc) => [...enc.data(8192, Buffer.alloc(10, 1))]);
    const b = records((enc) => [enc.zero(4096, 8192)]);
    const outOfOrder = problem(Buffer.concat([start, ...a, ...b]));
    assert.equal(outOfOrder.problem, 'corrupt');
    assert.match(outOfOrder.message, /before the end of the previous record/);

    // A record dropped: the end record's counts (and hash) say so.
    const enc = new DiffEncoder(header);
    const parts = [enc.start(), ...enc.data(0, Buffer.alloc(10, 1)), enc.zero(4096, 4096)];
    const end = enc.end();
    const dropped = problem(Buffer.concat([parts[0] as Buffer, parts[3] as Buffer, end]));
    assert.equal(dropped.problem, 'corrupt');
    assert.match(dropped.message, /records are missing or extra/);

    // The encoder itself refuses what the decoder would.
    const e2 = new DiffEncoder(header);
    e2.start();
    e2.zero(4096, 4096);
    assert.throws(() => e2.zero(0, 4096), RangeError);
    assert.throws(() => e2.zero(8000, 4096), RangeError);
    assert.throws(() => e2.zero(header.toSize - 512, 1024), RangeError);
    assert.throws(() => e2.data(header.toSize, Buffer.alloc(0)), RangeError);
    assert.throws(() => e2.data(0x100000, Buffer.alloc(DIFF_MAX_DATA_RECORD + 1)), RangeError);
  });
});
