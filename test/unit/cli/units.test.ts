import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  formatBytes,
  formatDuration,
  isPowerOfTwo,
  parseDuration,
  parseSize,
  parseTime,
} from '../../../src/cli/units.js';
import { HyperError } from '../../../src/errors.js';

const invalid = (fn: () => unknown, ...parts: (string | RegExp)[]): void => {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof HyperError, 'a HyperError');
    assert.equal(e.kind, 'invalid');
    assert.equal(e.code, 'INVALID_ARGUMENT');
    const text = `${e.message}\n${e.suggestion ?? ''}`;
    for (const p of parts) {
      if (typeof p === 'string')
        assert.ok(text.includes(p), `${JSON.stringify(text)} includes ${p}`);
      else assert.match(text, p);
    }
    return true;
  });
};

describe('parseSize', () => {
  it('accepts bytes and binary units in every spelling', () => {
    const cases: [string, number][] = [
      ['0', 0],
      ['4096', 4096],
      ['4K', 4096],
      ['4k', 4096],
      ['4KiB', 4096],
      ['4KB', 4096],
      ['512KiB', 512 * 1024],
      ['10G', 10 * 1024 ** 3],
      ['1TiB', 1024 ** 4],
      ['1.5G', 1.5 * 1024 ** 3],
      ['0.5K', 512],
      ['2P', 2 * 1024 ** 5],
      ['100B', 100],
      [' 8M ', 8 * 1024 ** 2],
    ];
    for (const [input, want] of cases) assert.equal(parseSize(input), want, input);
  });

  it('rejects malformed values, naming the flag and the accepted forms', () => {
    for (const input of ['12Q', '', 'K', '-1', '1e3', '1.G', '4 K B', '0x10', '1,5G', 'ten']) {
      invalid(
        () => parseSize(input, { name: '--size' }),
        '--size',
        '4KiB',
        '10G',
        JSON.stringify(input),
      );
    }
  });

  it('rejects fractions that are not whole bytes', () => {
    invalid(() => parseSize('1.1'), 'whole number of bytes');
    invalid(() => parseSize('0.3K'), 'whole number of bytes');
  });

  it('rejects values beyond 2^53 - 1 bytes exactly', () => {
    assert.equal(parseSize(String(Number.MAX_SAFE_INTEGER)), Number.MAX_SAFE_INTEGER);
    invalid(() => parseSize('9007199254740992'), 'larger than');
    invalid(() => parseSize('8192P'), 'larger than');
  });

  it('applies bounds, multiples and powers of two per flag', () => {
    const b = { name: '--data-block-size', min: 4096, max: 4 * 1024 * 1024, powerOfTwo: true };
    assert.equal(parseSize('512K', b), 512 * 1024);
    invalid(() => parseSize('2K', b), '--data-block-size', 'at least 4 KiB');
    invalid(() => parseSize('8M', b), 'at most 4 MiB');
    invalid(() => parseSize('12K', b), 'power of two');
    invalid(() => parseSize('1000', { name: '--size', multipleOf: 512 }), 'multiple of 512 B');
    assert.equal(parseSize('1536', { multipleOf: 512 }), 1536);
  });
});

describe('isPowerOfTwo', () => {
  it('works beyond 32 bits', () => {
    assert.ok(isPowerOfTwo(1));
    assert.ok(isPowerOfTwo(2 ** 40));
    assert.ok(!isPowerOfTwo(0));
    assert.ok(!isPowerOfTwo(3 * 2 ** 33));
    assert.ok(!isPowerOfTwo(-4));
  });
});

describe('parseDuration', () => {
  it('accepts single and combined units', () => {
    const cases: [string, number][] = [
      ['0', 0],
      ['500ms', 500],
      ['30s', 30_000],
      ['5m', 300_000],
      ['2h', 7_200_000],
      ['7d', 604_800_000],
      ['1w', 604_800_000],
      ['1h30m', 5_400_000],
      ['1.5h', 5_400_000],
      ['2H', 7_200_000],
    ];
    for (const [input, want] of cases) assert.equal(parseDuration(input), want, input);
  });

  it('rejects malformed values with the accepted forms', () => {
    for (const input of ['30', '5 minutes', 'h', '-5m', '', '1y', 'm5']) {
      invalid(() => parseDuration(input, { name: '--keep-within' }), '--keep-within', '30s', '7d');
    }
  });

  it('applies bounds', () => {
    invalid(() => parseDuration('1s', { name: '--ttl', minMs: 5000 }), 'at least 5s');
    invalid(() => parseDuration('2h', { name: '--ttl', maxMs: 3_600_000 }), 'at most 1h');
  });
});

describe('parseTime', () => {
  const now = new Date('2026-03-10T12:00:00Z');

  it('accepts ISO-8601 dates and times', () => {
    assert.equal(parseTime('2026-01-31T12:00:00Z').toISOString(), '2026-01-31T12:00:00.000Z');
    assert.equal(
      parseTime('2026-01-31T12:00:00.250+02:00').toISOString(),
      '2026-01-31T10:00:00.250Z',
    );
    assert.equal(parseTime('2026-01-31').toISOString(), '2026-01-31T00:00:00.000Z');
    assert.equal(parseTime('2026-01-31T12:00Z').toISOString(), '2026-01-31T12:00:00.000Z');
  });

  it('reads a duration as that long ago', () => {
    assert.equal(parseTime('2h', { now }).toISOString(), '2026-03-10T10:00:00.000Z');
    assert.equal(parseTime('7d ago', { now }).toISOString(), '2026-03-03T12:00:00.000Z');
    assert.equal(parseTime('90s', { now }).toISOString(), '2026-03-10T11:58:30.000Z');
  });

  it('rejects anything else, naming the flag and the forms', () => {
    for (const input of ['yesterday', '2026-02-31', '2026-13-01', '31/01/2026', '', '2h later']) {
      invalid(() => parseTime(input, { name: '--time', now }), '--time', 'ISO-8601', '2h');
    }
  });
});

describe('formatting', () => {
  it('formats bytes with binary units', () => {
    assert.equal(formatBytes(0), '0 B');
    assert.equal(formatBytes(512), '512 B');
    assert.equal(formatBytes(4096), '4 KiB');
    assert.equal(formatBytes(1.5 * 1024 ** 3), '1.5 GiB');
    assert.equal(formatBytes(10 * 1024 ** 4), '10 TiB');
    assert.equal(formatBytes(1000), '1000 B');
    assert.equal(formatBytes(1025), '1 KiB');
  });

  it('formats durations compactly', () => {
    assert.equal(formatDuration(0), '0s');
    assert.equal(formatDuration(5_400_000), '1h30m');
    assert.equal(formatDuration(250), '250ms');
  });
});
