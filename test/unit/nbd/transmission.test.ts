import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { NbdRequest } from '../../../src/nbd/codec.js';
import type { DeviceExtent } from '../../../src/nbd/device.js';
import {
  MAX_EXTENTS,
  blockStatusDescriptors,
  decide,
  structuredError,
  type TransmissionState,
} from '../../../src/nbd/transmission.js';

// Wire values from the NBD spec, written out independently of src/nbd/protocol.ts.
const READ = 0;
const WRITE = 1;
const DISC = 2;
const FLUSH = 3;
const TRIM = 4;
const CACHE = 5;
const WRITE_ZEROES = 6;
const BLOCK_STATUS = 7;
const RESIZE = 8;

const FUA = 1 << 0;
const NO_HOLE = 1 << 1;
const DF = 1 << 2;
const REQ_ONE = 1 << 3;
const FAST_ZERO = 1 << 4;

const HAS_FLAGS = 1 << 0;
const READ_ONLY = 1 << 1;
const SEND_FLUSH = 1 << 2;
const SEND_FUA = 1 << 3;
const SEND_TRIM = 1 << 5;
const SEND_WRITE_ZEROES = 1 << 6;
const SEND_DF = 1 << 7;
const SEND_CACHE = 1 << 10;
const SEND_FAST_ZERO = 1 << 11;

const EPERM = 1;
const EINVAL = 22;
const ENOSPC = 28;
const EOVERFLOW = 75;

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = MiB;
const MAX = 64 * KiB;

/** An export that can do everything, with structured replies and base:allocation. */
const full: TransmissionState = {
  size: SIZE,
  transmissionFlags:
    HAS_FLAGS |
    SEND_FLUSH |
    SEND_FUA |
    SEND_TRIM |
    SEND_WRITE_ZEROES |
    SEND_DF |
    SEND_CACHE |
    SEND_FAST_ZERO,
  readOnly: false,
  structuredReplies: true,
  blockStatus: true,
  minimumBlockSize: 1,
  maximumBlockSize: MAX,
};

/** What a read-only device gets advertised (exports.transmissionFlags). */
const readOnly: TransmissionState = {
  ...full,
  transmissionFlags: HAS_FLAGS | READ_ONLY | SEND_FLUSH | SEND_DF | SEND_CACHE,
  readOnly: true,
};

/** A writable export that advertises nothing optional, without structured replies. */
const bare: TransmissionState = {
  ...full,
  transmissionFlags: HAS_FLAGS,
  structuredReplies: false,
  blockStatus: false,
};

const aligned: TransmissionState = { ...full, minimumBlockSize: 512 };

function request(
  type: number,
  o: { flags?: number; offset?: number; length?: number } = {},
): NbdRequest {
  return {
    type,
    flags: o.flags ?? 0,
    handleHigh: 0x01020304,
    handleLow: 0x05060708,
    offset: o.offset ?? 0,
    length: o.length ?? (type === FLUSH || type === DISC ? 0 : 4096),
    payload: undefined,
  };
}

/** The decision as something easy to compare: 'dispatch READ' / 'disconnect' / an errno. */
function verdict(
  state: TransmissionState,
  type: number,
  o?: { flags?: number; offset?: number; length?: number },
): string | number {
  const d = decide(state, request(type, o));
  if (d.action === 'dispatch') {
    assert.equal(d.command, type, 'dispatch names the command that was sent');
    return 'dispatch';
  }
  if (d.action === 'disconnect') return 'disconnect';
  assert.ok(d.reason.length > 0, 'a refusal says why');
  return d.errno;
}

describe('decide: commands', () => {
  it('dispatches every advertised command with good arguments', () => {
    for (const type of [READ, WRITE, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS])
      assert.equal(verdict(full, type), 'dispatch', `command ${type}`);
    assert.equal(verdict(full, FLUSH), 'dispatch');
  });

  it('refuses unknown commands with EINVAL, whatever they carry', () => {
    for (const type of [RESIZE, 9, 11, 99, 0x8000, 0xffff]) {
      assert.equal(verdict(full, type), EINVAL, `command ${type}`);
      assert.equal(verdict(full, type, { length: 0, flags: 0xffff }), EINVAL);
      assert.equal(verdict(readOnly, type), EINVAL);
    }
    assert.match((decide(full, request(99)) as { reason: string }).reason, /unknown command/);
  });

  it('answers DISC by disconnecting, never with an error', () => {
    assert.equal(verdict(full, DISC), 'disconnect');
    assert.equal(verdict(bare, DISC), 'disconnect');
    assert.equal(verdict(readOnly, DISC), 'disconnect');
    assert.equal(verdict(aligned, DISC, { flags: 0xffff, offset: -1, length: 7 }), 'disconnect');
  });

  it('refuses commands that were not advertised with EINVAL', () => {
    assert.equal(verdict(bare, TRIM), EINVAL);
    assert.equal(verdict(bare, WRITE_ZEROES), EINVAL);
    assert.equal(verdict(bare, FLUSH), EINVAL);
    assert.equal(verdict(bare, CACHE), EINVAL);
    assert.equal(verdict(bare, BLOCK_STATUS), EINVAL);
    // READ and WRITE need no advertisement.
    assert.equal(verdict(bare, READ), 'dispatch');
    assert.equal(verdict(bare, WRITE), 'dispatch');
    // BLOCK_STATUS follows the negotiated context, not a transmission flag.
    assert.equal(verdict({ ...full, blockStatus: false }, BLOCK_STATUS), EINVAL);
    assert.equal(verdict({ ...bare, blockStatus: true }, BLOCK_STATUS), 'dispatch');
  });
});

describe('decide: read-only exports', () => {
  it('refuse WRITE, TRIM and WRITE_ZEROES with EPERM', () => {
    assert.equal(verdict(readOnly, WRITE), EPERM);
    assert.equal(verdict(readOnly, TRIM), EPERM);
    assert.equal(verdict(readOnly, WRITE_ZEROES), EPERM);
  });

  it('still serve READ, FLUSH, CACHE and BLOCK_STATUS', () => {
    assert.equal(verdict(readOnly, READ), 'dispatch');
    assert.equal(verdict(readOnly, FLUSH), 'dispatch');
    assert.equal(verdict(readOnly, CACHE), 'dispatch');
    assert.equal(verdict(readOnly, BLOCK_STATUS), 'dispatch');
  });

  it('answer EPERM before any other check', () => {
    const worst = { flags: 0xffff, offset: -1, length: 0 };
    assert.equal(verdict(readOnly, WRITE, worst), EPERM);
    assert.equal(verdict(readOnly, WRITE, { length: 0xffffffff }), EPERM);
    // Even before "not advertised": a read-only export advertises no TRIM or WRITE_ZEROES.
    assert.equal(verdict({ ...bare, readOnly: true }, TRIM, worst), EPERM);
    assert.equal(verdict({ ...bare, readOnly: true }, WRITE_ZEROES, worst), EPERM);
  });
});

describe('decide: flags', () => {
  it('READ takes DF only with structured replies', () => {
    assert.equal(verdict(full, READ, { flags: DF }), 'dispatch');
    assert.equal(verdict(bare, READ, { flags: DF }), EINVAL);
    for (const f of [FUA, NO_HOLE, REQ_ONE, FAST_ZERO, 1 << 5, 1 << 15])
      assert.equal(verdict(full, READ, { flags: f }), EINVAL, `flag ${f}`);
  });

  it('WRITE takes FUA only when FUA is advertised', () => {
    assert.equal(verdict(full, WRITE, { flags: FUA }), 'dispatch');
    assert.equal(verdict(bare, WRITE, { flags: FUA }), EINVAL);
    assert.equal(verdict({ ...full, transmissionFlags: HAS_FLAGS }, WRITE, { flags: FUA }), EINVAL);
    for (const f of [NO_HOLE, DF, REQ_ONE, FAST_ZERO, 1 << 5])
      assert.equal(verdict(full, WRITE, { flags: f }), EINVAL, `flag ${f}`);
  });

  it('TRIM takes FUA only when FUA is advertised', () => {
    assert.equal(verdict(full, TRIM, { flags: FUA }), 'dispatch');
    const trimOnly = { ...full, transmissionFlags: HAS_FLAGS | SEND_TRIM };
    assert.equal(verdict(trimOnly, TRIM), 'dispatch');
    assert.equal(verdict(trimOnly, TRIM, { flags: FUA }), EINVAL);
    for (const f of [NO_HOLE, DF, REQ_ONE, FAST_ZERO])
      assert.equal(verdict(full, TRIM, { flags: f }), EINVAL, `flag ${f}`);
  });

  it('WRITE_ZEROES takes NO_HOLE always, FUA and FAST_ZERO only when advertised', () => {
    assert.equal(verdict(full, WRITE_ZEROES, { flags: FUA | NO_HOLE | FAST_ZERO }), 'dispatch');
    const zeroOnly = { ...full, transmissionFlags: HAS_FLAGS | SEND_WRITE_ZEROES };
    assert.equal(verdict(zeroOnly, WRITE_ZEROES, { flags: NO_HOLE }), 'dispatch');
    assert.equal(verdict(zeroOnly, WRITE_ZEROES, { flags: FUA }), EINVAL);
    assert.equal(verdict(zeroOnly, WRITE_ZEROES, { flags: FAST_ZERO }), EINVAL);
    for (const f of [DF, REQ_ONE, 1 << 5])
      assert.equal(verdict(full, WRITE_ZEROES, { flags: f }), EINVAL, `flag ${f}`);
  });

  it('CACHE takes no flags', () => {
    for (const f of [FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO])
      assert.equal(verdict(full, CACHE, { flags: f }), EINVAL, `flag ${f}`);
  });

  it('BLOCK_STATUS takes REQ_ONE only', () => {
    assert.equal(verdict(full, BLOCK_STATUS, { flags: REQ_ONE }), 'dispatch');
    for (const f of [FUA, NO_HOLE, DF, FAST_ZERO])
      assert.equal(verdict(full, BLOCK_STATUS, { flags: f }), EINVAL, `flag ${f}`);
  });

  it('are checked before length and range', () => {
    assert.equal(verdict(full, READ, { flags: FUA, length: 0 }), EINVAL);
    // A bad flag on an oversized READ is EINVAL, not EOVERFLOW; past the end not ENOSPC.
    assert.equal(verdict(full, READ, { flags: FUA, length: MAX + 1 }), EINVAL);
    assert.equal(verdict(full, WRITE, { flags: DF, offset: SIZE }), EINVAL);
  });
});

describe('decide: FLUSH', () => {
  it('must carry no flags, offset or length', () => {
    assert.equal(verdict(full, FLUSH), 'dispatch');
    assert.equal(verdict(full, FLUSH, { flags: FUA }), EINVAL);
    assert.equal(verdict(full, FLUSH, { offset: 512 }), EINVAL);
    assert.equal(verdict(full, FLUSH, { length: 512 }), EINVAL);
    assert.equal(verdict(full, FLUSH, { offset: -1 }), EINVAL);
  });

  it('is not subject to the alignment or range rules', () => {
    assert.equal(verdict(aligned, FLUSH), 'dispatch');
    assert.equal(verdict({ ...full, size: 0 }, FLUSH), 'dispatch');
  });
});

describe('decide: length', () => {
  it('refuses zero-length requests with EINVAL', () => {
    for (const type of [READ, WRITE, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS])
      assert.equal(verdict(full, type, { length: 0 }), EINVAL, `command ${type}`);
  });

  it('caps READ and WRITE at the maximum block size with EOVERFLOW', () => {
    assert.equal(verdict(full, READ, { length: MAX }), 'dispatch');
    assert.equal(verdict(full, WRITE, { length: MAX }), 'dispatch');
    assert.equal(verdict(full, READ, { length: MAX + 1 }), EOVERFLOW);
    assert.equal(verdict(full, WRITE, { length: MAX + 1 }), EOVERFLOW);
    // EOVERFLOW wins over the range check (a 4 GiB - 1 READ at 0 of a small export).
    assert.equal(verdict(full, READ, { length: 0xffffffff }), EOVERFLOW);
    assert.equal(verdict(full, WRITE, { offset: SIZE, length: MAX + 1 }), EOVERFLOW);
  });

  it('lets TRIM, WRITE_ZEROES, CACHE and BLOCK_STATUS span more than the maximum', () => {
    for (const type of [TRIM, WRITE_ZEROES, CACHE, BLOCK_STATUS])
      assert.equal(verdict(full, type, { length: SIZE }), 'dispatch', `command ${type}`);
  });
});

describe('decide: range', () => {
  it('allows requests that end exactly at the end of the export', () => {
    for (const type of [READ, WRITE, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS])
      assert.equal(
        verdict(full, type, { offset: SIZE - 4096, length: 4096 }),
        'dispatch',
        `command ${type}`,
      );
  });

  it('answers ENOSPC for writes and EINVAL for the rest past the end', () => {
    const past = { offset: SIZE - 512, length: 4096 };
    assert.equal(verdict(full, WRITE, past), ENOSPC);
    assert.equal(verdict(full, WRITE_ZEROES, past), ENOSPC);
    assert.equal(verdict(full, READ, past), EINVAL);
    assert.equal(verdict(full, TRIM, past), EINVAL);
    assert.equal(verdict(full, CACHE, past), EINVAL);
    assert.equal(verdict(full, BLOCK_STATUS, past), EINVAL);
    assert.equal(verdict(full, READ, { offset: SIZE, length: 1 }), EINVAL);
    assert.equal(verdict(full, WRITE, { offset: SIZE, length: 1 }), ENOSPC);
  });

  it('treats an offset the parser flagged as beyond 2^53 (-1) as out of range', () => {
    assert.equal(verdict(full, READ, { offset: -1, length: 1 }), EINVAL);
    assert.equal(verdict(full, WRITE, { offset: -1, length: 1 }), ENOSPC);
    assert.equal(verdict(full, WRITE_ZEROES, { offset: -1, length: 1 }), ENOSPC);
    assert.equal(verdict(full, TRIM, { offset: -1, length: 1 }), EINVAL);
    // The largest safe offset is out of range too (and nothing overflows).
    const huge = { ...full, size: Number.MAX_SAFE_INTEGER };
    assert.equal(verdict(huge, READ, { offset: Number.MAX_SAFE_INTEGER, length: 1 }), EINVAL);
    assert.equal(
      verdict(huge, READ, { offset: Number.MAX_SAFE_INTEGER - 1, length: 1 }),
      'dispatch',
    );
  });

  it('refuses everything but DISC and FLUSH on an empty export', () => {
    const empty = { ...full, size: 0 };
    assert.equal(verdict(empty, READ, { length: 1 }), EINVAL);
    assert.equal(verdict(empty, WRITE, { length: 1 }), ENOSPC);
  });
});

describe('decide: minimum block size', () => {
  it('requires offset and length to be multiples of it', () => {
    assert.equal(verdict(aligned, READ, { offset: 512, length: 1024 }), 'dispatch');
    assert.equal(verdict(aligned, READ, { offset: 100, length: 512 }), EINVAL);
    assert.equal(verdict(aligned, READ, { offset: 512, length: 100 }), EINVAL);
    for (const type of [WRITE, TRIM, CACHE, WRITE_ZEROES, BLOCK_STATUS])
      assert.equal(verdict(aligned, type, { offset: 1, length: 512 }), EINVAL, `command ${type}`);
  });

  it('is checked last: range and length errors win', () => {
    assert.equal(verdict(aligned, WRITE, { offset: SIZE - 100, length: 4000 }), ENOSPC);
    assert.equal(verdict(aligned, READ, { offset: 100, length: MAX + 1 }), EOVERFLOW);
    assert.equal(verdict(aligned, READ, { offset: 100, length: 0 }), EINVAL);
  });

  it('allows any offset and length when it is 1', () => {
    assert.equal(verdict(full, READ, { offset: 1, length: 3 }), 'dispatch');
  });
});

describe('decide: cost', () => {
  it('returns shared decisions (nothing allocated per request)', () => {
    assert.equal(decide(full, request(READ)), decide(full, request(READ, { offset: 8192 })));
    assert.equal(
      decide(full, request(READ, { length: 0 })),
      decide(full, request(WRITE, { length: 0 })),
    );
    assert.equal(decide(full, request(DISC)), decide(bare, request(DISC)));
    assert.ok(Object.isFrozen(decide(full, request(WRITE))));
  });
});

describe('structuredError', () => {
  it('is used for READ and BLOCK_STATUS errors only, and only with structured replies', () => {
    assert.equal(structuredError(full, READ), true);
    assert.equal(structuredError(full, BLOCK_STATUS), true);
    for (const type of [WRITE, FLUSH, TRIM, CACHE, WRITE_ZEROES, DISC, 99])
      assert.equal(structuredError(full, type), false, `command ${type}`);
    assert.equal(structuredError(bare, READ), false);
    assert.equal(structuredError(bare, BLOCK_STATUS), false);
  });
});

describe('blockStatusDescriptors', () => {
  const HOLE = 1;
  const ZERO = 2;
  const run = (offset: number, length: number, kind: 'data' | 'zero' | 'hole'): DeviceExtent => ({
    offset,
    length,
    hole: kind === 'hole',
    zero: kind === 'zero',
  });
  const pairs = (d: { lengths: number[]; states: number[] } | undefined): number[][] => {
    assert.ok(d !== undefined);
    assert.equal(d.lengths.length, d.states.length);
    return d.lengths.map((l, i) => [l, d.states[i]!]);
  };

  it('maps data to 0, zero to ZERO and a hole to HOLE|ZERO', () => {
    const ext = [run(0, 100, 'data'), run(100, 100, 'zero'), run(200, 100, 'hole')];
    assert.deepEqual(pairs(blockStatusDescriptors(ext, 0, 300, 1, false)), [
      [100, 0],
      [100, ZERO],
      [100, HOLE | ZERO],
    ]);
  });

  it('merges neighbours in the same state', () => {
    const ext = [run(0, 100, 'hole'), run(100, 50, 'hole'), run(150, 50, 'data')];
    assert.deepEqual(pairs(blockStatusDescriptors(ext, 0, 200, 1, false)), [
      [150, HOLE | ZERO],
      [50, 0],
    ]);
  });

  it('clamps runs that go past the requested range', () => {
    const ext = [run(4096, 8192, 'data'), run(12288, 4096, 'hole')];
    assert.deepEqual(pairs(blockStatusDescriptors(ext, 4096, 4096, 1, false)), [[4096, 0]]);
    assert.deepEqual(pairs(blockStatusDescriptors(ext, 4096, 10000, 1, false)), [
      [8192, 0],
      [1808, HOLE | ZERO],
    ]);
  });

  it('stops at a gap, an empty run or the end of what the device reported', () => {
    assert.deepEqual(
      pairs(blockStatusDescriptors([run(0, 100, 'data'), run(200, 100, 'hole')], 0, 300, 1, false)),
      [[100, 0]],
    );
    assert.deepEqual(
      pairs(blockStatusDescriptors([run(0, 100, 'data'), run(100, 0, 'hole')], 0, 300, 1, false)),
      [[100, 0]],
    );
    assert.deepEqual(pairs(blockStatusDescriptors([run(0, 100, 'zero')], 0, 300, 1, false)), [
      [100, ZERO],
    ]);
  });

  it('keeps only the first descriptor with REQ_ONE', () => {
    const ext = [run(0, 100, 'data'), run(100, 100, 'hole')];
    assert.deepEqual(pairs(blockStatusDescriptors(ext, 0, 200, 1, true)), [[100, 0]]);
  });

  it('is undefined when nothing covers the first byte', () => {
    assert.equal(blockStatusDescriptors([], 0, 100, 1, false), undefined);
    assert.equal(blockStatusDescriptors([run(512, 100, 'data')], 0, 100, 1, false), undefined);
    assert.equal(blockStatusDescriptors([run(0, 0, 'data')], 0, 100, 1, false), undefined);
  });

  it(`sends at most ${MAX_EXTENTS} descriptors`, () => {
    const ext: DeviceExtent[] = [];
    for (let i = 0; i < MAX_EXTENTS + 100; i++) ext.push(run(i, 1, i % 2 ? 'hole' : 'data'));
    const d = blockStatusDescriptors(ext, 0, MAX_EXTENTS + 100, 1, false)!;
    assert.equal(d.lengths.length, MAX_EXTENTS);
    assert.equal(d.states.length, MAX_EXTENTS);
    assert.equal(d.states[MAX_EXTENTS - 1], HOLE | ZERO);
  });
});
