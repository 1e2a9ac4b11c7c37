import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { NbdError, describeError, toErrno } from '../../../src/nbd/errno.js';
import { EINVAL, EIO, ENOSPC, EPERM } from '../../../src/nbd/protocol.js';

const coded = (kind: string, code: string, message = 'm', key?: string): Error =>
  Object.assign(new Error(message), { kind, code, ...(key === undefined ? {} : { key }) });

describe('toErrno', () => {
  it('maps codes first, then kinds, then EIO', () => {
    assert.equal(toErrno(coded('invalid', 'READ_ONLY')), EPERM);
    assert.equal(toErrno(coded('invalid', 'OUT_OF_RANGE')), EINVAL);
    assert.equal(toErrno(coded('invalid', 'OUT_OF_RANGE'), true), ENOSPC);
    assert.equal(toErrno(coded('conflict', 'FENCED')), EPERM);
    assert.equal(toErrno(coded('invalid', 'SOMETHING_NEW')), EINVAL);
    assert.equal(toErrno(coded('data', 'CHECKSUM_MISMATCH')), EIO);
    assert.equal(toErrno(coded('unavailable', 'STORE_UNAVAILABLE')), EIO);
    assert.equal(toErrno(new Error('plain')), EIO);
    assert.equal(toErrno('a string'), EIO);
    assert.equal(toErrno(null), EIO);
    assert.equal(toErrno(new NbdError(EINVAL, 'x')), EINVAL);
  });
  it('describes an error with its object key', () => {
    assert.deepEqual(describeError(coded('data', 'MISSING_OBJECT', 'gone', 'vol/seg/0001')), {
      error: 'gone',
      code: 'MISSING_OBJECT',
      kind: 'data',
      key: 'vol/seg/0001',
    });
  });
});
