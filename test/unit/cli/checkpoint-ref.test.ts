/**
 * How `--to/--at/--from` values are read (src/cli/checkpoint-ref.ts): numbers are
 * checkpoints, ISO-8601 times and durations ago are times, anything else a snapshot name;
 * explicit prefixes settle the ambiguous cases; bad values are `invalid` errors naming the flag.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  checkpointRefJson,
  describeCheckpointRef,
  parseCheckpointRef,
} from '../../../src/cli/checkpoint-ref.js';
import { HyperError } from '../../../src/errors.js';

const now = new Date('2026-06-01T12:00:00Z');
const parse = (s: string): ReturnType<typeof parseCheckpointRef> =>
  parseCheckpointRef(s, { name: '--to', now });

describe('checkpoint references', () => {
  it('reads numbers, times, durations and names', () => {
    assert.deepEqual(parse('42'), { checkpoint: 42 });
    assert.deepEqual(parse(' 7 '), { checkpoint: 7 });
    assert.deepEqual(parse('2h'), { time: new Date('2026-06-01T10:00:00Z') });
    assert.deepEqual(parse('1h30m'), { time: new Date('2026-06-01T10:30:00Z') });
    assert.deepEqual(parse('7d ago'), { time: new Date('2026-05-25T12:00:00Z') });
    assert.deepEqual(parse('2026-01-31T12:00:00Z'), { time: new Date('2026-01-31T12:00:00Z') });
    assert.deepEqual(parse('2026-01-31'), { time: new Date('2026-01-31T00:00:00Z') });
    assert.deepEqual(parse('before-upgrade'), { snapshot: 'before-upgrade' });
    assert.deepEqual(parse('v1.2_rc'), { snapshot: 'v1.2_rc' });
    // Names that start with a digit but are neither a number nor a time.
    assert.deepEqual(parse('3rd-try'), { snapshot: '3rd-try' });
  });

  it('explicit prefixes override the guess', () => {
    assert.deepEqual(parse('snapshot:42'), { snapshot: '42' });
    assert.deepEqual(parse('snap:2h'), { snapshot: '2h' });
    assert.deepEqual(parse('checkpoint:9'), { checkpoint: 9 });
    assert.deepEqual(parse('time:30m'), { time: new Date('2026-06-01T11:30:00Z') });
    assert.deepEqual(parse('TIME:2026-01-31T00:00:00Z'), {
      time: new Date('2026-01-31T00:00:00Z'),
    });
  });

  it('refuses bad values with the flag, the value and the accepted forms', () => {
    for (const bad of [
      '',
      '0',
      '-3',
      'has space',
      'checkpoint:abc',
      'checkpoint:',
      'snapshot:',
      'snapshot:bad/name',
      'time:soon',
      '2026-02-31',
      '99999999999999999999',
    ]) {
      assert.throws(
        () => parse(bad),
        (e: unknown) =>
          e instanceof HyperError &&
          e.kind === 'invalid' &&
          e.message.startsWith(`Invalid value ${JSON.stringify(bad)} for --to`) &&
          (e.suggestion ?? '').length > 0,
        `refuses ${JSON.stringify(bad)}`,
      );
    }
  });

  it('describes and serialises references', () => {
    assert.equal(describeCheckpointRef({ checkpoint: 3 }), 'checkpoint 3');
    assert.equal(describeCheckpointRef({ snapshot: 'x' }), 'snapshot "x"');
    assert.match(describeCheckpointRef({ time: now }), /2026-06-01T12:00:00.000Z/);
    assert.deepEqual(checkpointRefJson({ time: now }), { time: '2026-06-01T12:00:00.000Z' });
    assert.deepEqual(checkpointRefJson({ snapshot: 'x' }), { snapshot: 'x' });
  });
});
