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

describe('ordinary system errors', () => {
  it('are usage or unavailable errors with a suggestion, never "a bug"', async () => {
    const { toHyperError } = await import('../../../src/errors.js');
    const { createServer } = await import('node:net');
    const { writeFile } = await import('node:fs/promises');
    // A real EADDRINUSE from two listeners on one port.
    const a = createServer();
    await new Promise<void>((r) => a.listen(0, '127.0.0.1', r));
    const port = (a.address() as { port: number }).port;
    const b = createServer();
    const inUse = await new Promise<Error>((r) => {
      b.once('error', r);
      b.listen(port, '127.0.0.1');
    });
    a.close();
    const e1 = toHyperError(inUse);
    assert.equal(e1.code, 'ADDRESS_IN_USE');
    assert.equal(exitCodeFor(e1), 2);
    assert.match(e1.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
    assert.match(e1.suggestion ?? '', /--port 0/);
    // A real ENOENT.
    const missing = await writeFile('/nonexistent-dir-for-hyper/x', 'x').catch((e: Error) => e);
    const e2 = toHyperError(missing);
    assert.equal(e2.code, 'PATH_NOT_FOUND');
    assert.equal(exitCodeFor(e2), 2);
    assert.match(e2.message, /nonexistent-dir-for-hyper/);
    // ENOSPC is the store or disk being unavailable.
    const full = Object.assign(new Error('no space'), { code: 'ENOSPC', path: '/mnt/full/x' });
    assert.equal(exitCodeFor(toHyperError(full)), 5);
    // Anything else is still reported as a bug.
    assert.equal(toHyperError(new Error('boom')).code, 'INTERNAL');
  });
});
