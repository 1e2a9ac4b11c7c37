import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ProgressReporter, formatProgress } from '../../../src/cli/progress.js';

const MiB = 1024 * 1024;

describe('progress', () => {
  it('formats bytes, rate and time left, and counts of other units', () => {
    assert.equal(
      formatProgress({ done: 1024 * MiB, total: 4096 * MiB, unit: 'bytes' }, 100 * MiB),
      '1 GiB of 4 GiB (25%), 100 MiB/s, 31s left',
    );
    assert.equal(
      formatProgress({ done: 30, total: 120, unit: 'blocks' }, 2.5),
      '30 of 120 blocks (25%), 2.5 blocks/s, 36s left',
    );
    assert.equal(formatProgress({ done: 3 * MiB, unit: 'bytes' }, undefined), '3 MiB');
  });

  it('prints a line at most every interval, and the last state at the end', () => {
    let now = 0;
    const lines: string[] = [];
    const texts: string[] = [];
    const p = new ProgressReporter({
      line: (l) => lines.push(l),
      spinnerText: (t) => texts.push(t),
      intervalMs: 1000,
      now: () => now,
    });
    for (let i = 1; i <= 10; i++) {
      now = i * 300;
      p.update('Copying', { done: i * MiB, total: 10 * MiB, unit: 'bytes' });
    }
    assert.equal(texts.length, 10);
    // t=300 first, then every >= 1000 ms: 1500, 2700; the end adds the 100% line.
    assert.equal(lines.length, 3, lines.join('\n'));
    p.finish();
    assert.equal(lines.length, 4);
    assert.match(lines.at(-1)!, /^Copying: 10 MiB of 10 MiB \(100%\), 3\.33 MiB\/s/);
  });
});
