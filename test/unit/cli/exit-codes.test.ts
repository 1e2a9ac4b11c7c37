import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { exitCodeFor } from '../../../src/base-command.js';
import { HyperError, type ErrorKind } from '../../../src/errors.js';

describe('exitCodeFor', () => {
  it('maps each kind to its documented exit code', () => {
    const table: [ErrorKind, number][] = [
      ['internal', 1],
      ['invalid', 2],
      ['not-found', 3],
      ['conflict', 4],
      ['unavailable', 5],
      ['data', 6],
    ];
    for (const [kind, code] of table) {
      assert.equal(exitCodeFor(new HyperError(kind, 'INTERNAL', 'x')), code, kind);
    }
  });

  it('gives 130 for an interrupted operation', () => {
    assert.equal(exitCodeFor(new HyperError('unavailable', 'ABORTED', 'x')), 130);
  });
});
