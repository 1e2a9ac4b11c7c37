import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  NbdParser,
  ParserMode,
  writeSimpleReply,
  writeStructuredHeader,
  encodeOptionReply,
  type ParserHandler,
} from '../../../src/nbd/codec.js';
import { rng } from '../../helpers/rng.js';

// An independent encoder of client frames, written from the spec's field tables with DataView
// (the parser under test uses Buffer reads), so the two cannot share a mistake.
function u32(n: number): number[] {
  return [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
}
function u16(n: number): number[] {
  return [(n >>> 8) & 255, n & 255];
}
function u64(n: bigint): number[] {
  const out: number[] = [];
  for (let i = 7; i >= 0; i--) out.push(Number((n >> BigInt(i * 8)) & 255n));
  return out;
}
const IHAVEOPT = [0x49, 0x48, 0x41, 0x56, 0x45, 0x4f, 0x50, 0x54]; // "IHAVEOPT"
function option(code: number, data: number[]): number[] {
  return [...IHAVEOPT, ...u32(code), ...u32(data.length), ...data];
}
function request(
  flags: number,
  type: number,
  handle: bigint,
  offset: bigint,
  length: number,
  payload: number[] = [],
): number[] {
  return [
    0x25,
    0x60,
    0x95,
    0x13,
    ...u16(flags),
    ...u16(type),
    ...u64(handle),
    ...u64(offset),
    ...u32(length),
    ...payload,
  ];
}

type Event = [string, ...unknown[]];
function recorder(parserRef: { p?: NbdParser }): { events: Event[]; handler: ParserHandler } {
  const events: Event[] = [];
  const handler: ParserHandler = {
    onClientFlags(flags) {
      events.push(['flags', flags]);
      parserRef.p!.mode = ParserMode.Options;
    },
    onOption(code, data) {
      events.push(['option', code, [...data]]);
      if (code === 7) parserRef.p!.mode = ParserMode.Requests; // GO switches to transmission
    },
    onOptionTooBig(code, length) {
      events.push(['toobig', code, length]);
    },
    onRequest(r) {
      // The parser reuses `r`: record its fields, not the object.
      events.push([
        'req',
        r.flags,
        r.type,
        r.handleHigh,
        r.handleLow,
        r.offset,
        r.length,
        r.payload === undefined ? null : [...Buffer.concat([r.payload].flat())],
      ]);
    },
    onProtocolError(message) {
      events.push(['error', message]);
    },
    payloadBuffer(length) {
      return Buffer.alloc(length);
    },
  };
  return { events, handler };
}

function parseAll(bytes: number[], cuts: number[], maxPayload = 1 << 20): Event[] {
  const ref: { p?: NbdParser } = {};
  const { events, handler } = recorder(ref);
  const p = new NbdParser(handler, maxPayload);
  ref.p = p;
  const buf = Buffer.from(bytes);
  let prev = 0;
  for (const c of [...cuts, buf.length]) {
    p.push(buf.subarray(prev, c));
    prev = c;
  }
  return events;
}

describe('NbdParser', () => {
  const payload = Array.from({ length: 300 }, (_, i) => (i * 7) & 255);
  const stream = [
    ...u32(3),
    ...option(8, []),
    ...option(6, [...u32(3), 0x61, 0x62, 0x63, ...u16(1), ...u16(3)]),
    ...option(7, [...u32(0), ...u16(0)]),
    ...request(0, 0, 0x0102030405060708n, 4096n, 512),
    ...request(1, 1, 0xffffffff00000001n, 2n ** 40n, payload.length, payload),
    ...request(0, 3, 5n, 0n, 0),
    ...request(0, 0, 6n, 2n ** 53n, 1),
    ...request(0, 0, 7n, 2n ** 53n - 1n, 1),
    ...request(0, 0, 9n, 2n ** 64n - 1n, 1),
    ...request(0, 0, 10n, 2n ** 32n + 5n, 1),
    ...request(0, 2, 8n, 0n, 0),
  ];
  const expected: Event[] = [
    ['flags', 3],
    ['option', 8, []],
    ['option', 6, [...u32(3), 0x61, 0x62, 0x63, ...u16(1), ...u16(3)]],
    ['option', 7, [...u32(0), ...u16(0)]],
    ['req', 0, 0, 0x01020304, 0x05060708, 4096, 512, null],
    ['req', 1, 1, 0xffffffff, 1, 2 ** 40, payload.length, payload],
    ['req', 0, 3, 0, 5, 0, 0, null],
    ['req', 0, 0, 0, 6, -1, 1, null], // beyond 2^53 - 1: flagged, not rounded
    ['req', 0, 0, 0, 7, Number.MAX_SAFE_INTEGER, 1, null],
    ['req', 0, 0, 0, 9, -1, 1, null],
    ['req', 0, 0, 0, 10, 2 ** 32 + 5, 1, null],
    ['req', 0, 2, 0, 8, 0, 0, null],
  ];

  it('parses a whole stream pushed at once', () => {
    assert.deepEqual(parseAll(stream, []), expected);
  });

  it('gives the same frames when split at every offset', () => {
    for (let cut = 1; cut < stream.length; cut++) {
      assert.deepEqual(parseAll(stream, [cut]), expected, `split at ${cut}`);
    }
  });

  it('gives the same frames when fed one byte at a time', () => {
    const cuts = Array.from({ length: stream.length - 1 }, (_, i) => i + 1);
    assert.deepEqual(parseAll(stream, cuts), expected);
  });

  it('stops on a bad request magic and reports it', () => {
    const bad = [
      ...u32(1),
      ...option(7, [...u32(0), ...u16(0)]),
      0xde,
      0xad,
      0xbe,
      0xef,
      ...new Array(24).fill(0),
      ...request(0, 0, 1n, 0n, 1),
    ];
    const ev = parseAll(bad, [10]);
    assert.equal(ev.length, 3);
    assert.equal(ev[2]![0], 'error');
    assert.match(String(ev[2]![1]), /magic/);
  });

  it('refuses a WRITE payload above the limit without buffering it', () => {
    const ev = parseAll(
      [...u32(1), ...option(7, [...u32(0), ...u16(0)]), ...request(0, 1, 1n, 0n, 0xffffffff)],
      [],
      1 << 20,
    );
    assert.equal(ev.at(-1)![0], 'error');
    assert.match(String(ev.at(-1)![1]), /exceeds/);
  });

  it('skips an oversized option payload and keeps parsing', () => {
    const big = new Array(70_000).fill(1);
    const ev = parseAll([...u32(1), ...option(99, big), ...option(8, [])], [5000, 40_000]);
    assert.deepEqual(ev, [
      ['flags', 1],
      ['toobig', 99, 70_000],
      ['option', 8, []],
    ]);
  });
});

describe('NbdParser with borrowed chunks', () => {
  // Writes of many sizes, some large enough to be read straight into place.
  const sizes = [1, 300, 4096, 32 * 1024 - 1, 32 * 1024 + 1, 100_000, 1 << 20, 65_536, 7];
  const payloads = sizes.map((n, i) =>
    Buffer.from(Array.from({ length: n }, (_, j) => (j * 31 + i) & 255)),
  );
  const stream = Buffer.from([
    ...u32(1),
    ...option(6, [...u32(3), 0x61, 0x62, 0x63, ...u16(0)]),
    ...option(7, [...u32(0), ...u16(0)]),
    ...payloads.flatMap((p, i) => [
      ...request(0, 0, BigInt(i), 0n, 512),
      ...request(0, 1, BigInt(i), BigInt(i) * 4096n, p.length, [...p]),
    ]),
    ...request(0, 2, 99n, 0n, 0),
  ]);

  /**
   * Feed the stream the way input.ts reads a socket: each read goes into the parser's read
   * target when it has one, else into one scratch buffer that is overwritten after every
   * push. Read sizes are random. Payloads are checked only at the end, so one kept by
   * reference into the scratch buffer would show as garbage.
   */
  function feed(seed: number): { events: [string, ...unknown[]][]; handed: Set<Buffer> } {
    const next = rng(seed);
    const rand = (n: number): number => Math.floor(next() * n);
    const scratch = Buffer.alloc(64 * 1024);
    const events: [string, ...unknown[]][] = [];
    const handed = new Set<Buffer>();
    const kept: Buffer[] = [];
    const handler: ParserHandler = {
      onClientFlags: () => (parser.mode = ParserMode.Options),
      onOption(code, data) {
        kept.push(data);
        events.push(['option', code, kept.length - 1]);
        if (code === 7) parser.mode = ParserMode.Requests;
      },
      onOptionTooBig: () => assert.fail('no option is too big'),
      onRequest(r) {
        let payload = -1;
        if (r.payload !== undefined) {
          assert.ok(!Array.isArray(r.payload), 'a borrowed payload is one buffer');
          kept.push(r.payload);
          payload = kept.length - 1;
        }
        events.push(['req', r.type, r.handleLow, r.length, payload]);
      },
      onProtocolError: (m) => assert.fail(m),
      payloadBuffer(length) {
        const b = Buffer.alloc(length, 0xee);
        handed.add(b);
        return b;
      },
    };
    const parser = new NbdParser(handler, 1 << 20);
    parser.borrowed = true;
    let at = 0;
    while (at < stream.length) {
      const direct = parser.readTarget();
      const limit = parser.headerBytes();
      const into = direct ?? (limit > 0 ? scratch.subarray(0, limit) : scratch);
      const n = Math.min(
        stream.length - at,
        into.length,
        1 + rand(rand(2) === 0 ? 64 : into.length),
      );
      stream.copy(into, 0, at, at + n);
      at += n;
      if (direct !== undefined) {
        parser.filled(n);
      } else {
        assert.equal(parser.push(scratch.subarray(0, n)), n);
        scratch.fill(0x55);
      }
    }
    return {
      events: events.map((e) =>
        e.at(-1) === -1 ? e.slice(0, -1) : [...e.slice(0, -1), [...kept[e.at(-1) as number]!]],
      ) as [string, ...unknown[]][],
      handed,
    };
  }

  it('delivers every payload intact in memory it asked for, whatever the read sizes', () => {
    const expected = [
      ['option', 6, [...u32(3), 0x61, 0x62, 0x63, ...u16(0)]],
      ['option', 7, [...u32(0), ...u16(0)]],
      ...payloads.flatMap((p, i) => [
        ['req', 0, i, 512],
        ['req', 1, i, p.length, [...p]],
      ]),
      ['req', 2, 99, 0],
    ];
    for (let seed = 1; seed <= 12; seed++) {
      const { events, handed } = feed(seed);
      assert.deepEqual(events, expected, `seed ${seed}`);
      assert.equal(handed.size, payloads.length, `seed ${seed}: one payload buffer per WRITE`);
    }
  });

  it('reads the rest of a large payload straight into it, and small ones not', () => {
    const handler = {
      ...recorder({}).handler,
      onRequest: () => undefined,
      payloadBuffer: (n: number) => Buffer.alloc(n),
    };
    const parser = new NbdParser(handler, 1 << 20);
    parser.borrowed = true;
    parser.mode = ParserMode.Requests;
    const head = Buffer.from(request(0, 1, 1n, 0n, 100_000));
    parser.push(Buffer.concat([head, Buffer.alloc(1000, 1)]));
    const target = parser.readTarget();
    assert.equal(target?.length, 99_000);
    parser.filled(99_000 - 20_000);
    assert.equal(parser.readTarget(), undefined, 'under 32 KiB left: read into scratch');
    parser.push(Buffer.alloc(20_000, 2));
    assert.ok(parser.idle);
  });

  it('after a large WRITE reads only up to the next header, so its payload is read into place', () => {
    const got: number[] = [];
    const handler = {
      ...recorder({}).handler,
      onRequest: (r: { type: number; payload?: Buffer | Buffer[] }) => {
        got.push(r.type);
        if (Buffer.isBuffer(r.payload)) assert.ok(r.payload.every((x) => x === 7));
      },
      payloadBuffer: (n: number) => Buffer.alloc(n),
    };
    const parser = new NbdParser(handler, 1 << 20);
    parser.borrowed = true;
    parser.mode = ParserMode.Requests;
    const write = (handle: bigint): Buffer =>
      Buffer.concat([Buffer.from(request(0, 1, handle, 0n, 65536)), Buffer.alloc(65536, 7)]);
    // A client writing sequentially, then a READ, a small WRITE and a large one.
    const stream = Buffer.concat([
      write(1n),
      write(2n),
      write(3n),
      Buffer.from(request(0, 0, 4n, 0n, 4096)),
      Buffer.from(request(0, 1, 5n, 0n, 4)),
      Buffer.alloc(4, 7),
      write(6n),
    ]);
    const scratch = Buffer.alloc(64 * 1024);
    const limits: number[] = [];
    for (let at = 0; at < stream.length;) {
      const direct = parser.readTarget();
      const limit = parser.headerBytes();
      if (direct === undefined) limits.push(limit);
      // (The third read into scratch stops inside a header: the next one asks for the rest.)
      const room = direct?.length ?? (limits.length === 3 ? 10 : limit || scratch.length);
      const n = Math.min(room, stream.length - at);
      stream.copy(direct ?? scratch, 0, at, at + n);
      at += n;
      if (direct !== undefined) parser.filled(n);
      else assert.equal(parser.push(scratch.subarray(0, n)), n);
      scratch.fill(0);
    }
    assert.deepEqual(got, [1, 1, 1, 0, 1, 1]);
    // 1st WRITE: read as much as fits (nothing large seen yet); its last 28 bytes with the
    // 2nd's header; the 3rd's header in two reads; the READ's header; the small WRITE and
    // most of the large one as much as fits; the large one's rest.
    assert.deepEqual(limits, [0, 56, 28, 18, 28, 0, 88]);
    assert.ok(parser.idle);
  });
});

describe('reply encoders', () => {
  it('encode simple, structured and option replies byte for byte', () => {
    const b = Buffer.alloc(16);
    writeSimpleReply(b, 0, 22, 0x01020304, 0x05060708);
    assert.deepEqual([...b], [0x67, 0x44, 0x66, 0x98, ...u32(22), 1, 2, 3, 4, 5, 6, 7, 8]);
    const s = Buffer.alloc(20);
    writeStructuredHeader(s, 0, 1, 5, 0, 9, 12);
    assert.deepEqual(
      [...s],
      [0x66, 0x8e, 0x33, 0xef, ...u16(1), ...u16(5), ...u32(0), ...u32(9), ...u32(12)],
    );
    const o = encodeOptionReply(7, 0x80000003, Buffer.from('no'));
    assert.deepEqual(
      [...o],
      [...u64(0x3e889045565a9n), ...u32(7), ...u32(0x80000003), ...u32(2), 0x6e, 0x6f],
    );
  });
});
