/**
 * RecurringWarning: a failure that repeats every few seconds (a store down or full) is said
 * at once, then at most once a minute with its count, and its end is said once.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RecurringWarning } from '../../../src/format/recurring.js';
import type { Logger } from '../../../src/format/volume/types.js';

function recorder(): { log: Logger; lines: [string, string, Record<string, unknown>][] } {
  const lines: [string, string, Record<string, unknown>][] = [];
  const at =
    (level: string) =>
    (msg: string, fields: Record<string, unknown> = {}): void => {
      lines.push([level, msg, fields]);
    };
  return {
    lines,
    log: { debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') },
  };
}

describe('RecurringWarning', () => {
  it('says a failure at once, then once a minute with its count, and its end once', () => {
    let now = 1_000_000;
    const { log, lines } = recorder();
    const w = new RecurringWarning(log, 60_000, () => now);
    w.ok('fine'); // nothing failed: nothing said
    assert.equal(lines.length, 0);
    w.warn('timed flush failed', { error: 'ENOSPC' });
    assert.deepEqual(lines, [['warn', 'timed flush failed', { error: 'ENOSPC' }]]);
    for (let i = 0; i < 11; i++) {
      now += 5_000;
      w.warn('timed flush failed', { error: 'ENOSPC' });
    }
    assert.equal(lines.length, 1, 'nothing more within the minute');
    now += 5_000;
    w.warn('segment write failed; writing it again', { error: 'ENOSPC' });
    assert.deepEqual(lines[1], [
      'warn',
      'segment write failed; writing it again',
      { error: 'ENOSPC', failures: 13, failingSeconds: 60 },
    ]);
    now += 1_000;
    w.ok('flushes reach the store again');
    assert.deepEqual(lines[2], [
      'info',
      'flushes reach the store again',
      { failures: 13, failingSeconds: 61 },
    ]);
    w.ok('flushes reach the store again');
    assert.equal(lines.length, 3, 'the end is said once');
    // A new failure starts over: said at once, without counts.
    w.warn('timed flush failed', { error: 'EIO' });
    assert.deepEqual(lines[3], ['warn', 'timed flush failed', { error: 'EIO' }]);
  });
});
