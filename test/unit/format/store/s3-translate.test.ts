// S3 error translation without a server: synthetic SDK-shaped errors.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  translateS3Error,
  unquote,
  type TranslateContext,
} from '../../../../src/format/store/s3.js';
import { correctClock } from '../../../../src/format/store/s3-get.js';
import type { S3Client } from '@aws-sdk/client-s3';

const ctx: TranslateContext = {
  op: 'put',
  endpoint: 'http://127.0.0.1:9',
  bucket: 'b',
  url: 's3://b/p/',
  key: 'k',
};
const sdk = (name: string, status?: number) =>
  Object.assign(new Error(name), { name, $metadata: { httpStatusCode: status } });

describe('S3 error translation', () => {
  const cases: Array<[string, unknown, Partial<TranslateContext>, string]> = [
    ['NoSuchKey', sdk('NoSuchKey', 404), { op: 'get' }, 'OBJECT_NOT_FOUND'],
    ['HEAD 404', sdk('NotFound', 404), { op: 'head' }, 'OBJECT_NOT_FOUND'],
    ['NoSuchBucket', sdk('NoSuchBucket', 404), {}, 'BUCKET_NOT_FOUND'],
    ['412 create-only', sdk('PreconditionFailed', 412), { createOnly: true }, 'OBJECT_EXISTS'],
    ['412 If-Match', sdk('PreconditionFailed', 412), { ifMatch: true }, 'PRECONDITION_FAILED'],
    ['404 If-Match (AWS)', sdk('NoSuchKey', 404), { ifMatch: true }, 'PRECONDITION_FAILED'],
    [
      '409 conflict',
      sdk('ConditionalRequestConflict', 409),
      { ifMatch: true },
      'PRECONDITION_FAILED',
    ],
    ['403', sdk('AccessDenied', 403), {}, 'ACCESS_DENIED'],
    ['InvalidAccessKeyId', sdk('InvalidAccessKeyId', 403), {}, 'ACCESS_DENIED'],
    ['SignatureDoesNotMatch', sdk('SignatureDoesNotMatch', 403), {}, 'ACCESS_DENIED'],
    ['RGW quota', sdk('QuotaExceeded', 403), { op: 'put' }, 'NO_SPACE'],
    ['507 full', sdk('InsufficientStorage', 507), { op: 'put' }, 'NO_SPACE'],
    ['MinIO full', sdk('XMinioStorageFull', 507), { op: 'put' }, 'NO_SPACE'],
    ['503 SlowDown', sdk('SlowDown', 503), {}, 'STORE_UNAVAILABLE'],
    ['500', sdk('InternalError', 500), {}, 'STORE_UNAVAILABLE'],
    [
      'refused',
      Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }),
      {},
      'STORE_UNAVAILABLE',
    ],
    [
      'DNS',
      Object.assign(new Error('getaddrinfo ENOTFOUND'), { code: 'ENOTFOUND' }),
      {},
      'STORE_UNAVAILABLE',
    ],
    ['timeout', sdk('TimeoutError'), {}, 'STORE_UNAVAILABLE'],
    [
      '400 RequestTimeout (a body that stopped arriving)',
      sdk('RequestTimeout', 400),
      {},
      'STORE_UNAVAILABLE',
    ],
    [
      'connect timeout',
      Object.assign(
        new Error(
          '@smithy/node-http-handler - the request socket did not establish a connection with the server within the configured timeout of 5000 ms.',
        ),
        { name: 'TimeoutError' },
      ),
      {},
      'STORE_UNAVAILABLE',
    ],
    [
      'no credentials',
      Object.assign(sdk('CredentialsProviderError'), { cause: { code: 'ECONNREFUSED' } }),
      {},
      'ACCESS_DENIED',
    ],
    ['wrong region', sdk('PermanentRedirect', 301), {}, 'INVALID_ARGUMENT'],
    [
      '501 conditional',
      sdk('NotImplemented', 501),
      { createOnly: true },
      'CONDITIONAL_WRITES_UNSUPPORTED',
    ],
  ];
  for (const [name, err, extra, code] of cases) {
    it(`${name} -> ${code}`, () => {
      const e = translateS3Error(err, { ...ctx, ...extra });
      assert.equal(e.code, code);
      if (
        code === 'STORE_UNAVAILABLE' &&
        name !== '500' &&
        name !== '503 SlowDown' &&
        name !== 'timeout'
      ) {
        assert.ok(e.message.includes(ctx.endpoint), e.message);
      }
      if (['OBJECT_NOT_FOUND', 'OBJECT_EXISTS', 'PRECONDITION_FAILED'].includes(code))
        assert.equal(e.key, 'k');
    });
  }

  it('tells a connection that never opened from one that went silent', () => {
    const timeout = (message: string) =>
      Object.assign(new Error(message), { name: 'TimeoutError' });
    const connect = translateS3Error(
      timeout(
        '@smithy/node-http-handler - the request socket did not establish a connection with the server within the configured timeout of 5000 ms.',
      ),
      ctx,
    );
    assert.match(
      connect.message,
      /Cannot reach the S3 endpoint .*no connection within the timeout/,
    );
    assert.match(connect.suggestion ?? '', /endpoint URL/);
    const silent = translateS3Error(
      timeout(
        '@smithy/node-http-handler - the request socket timed out after 60000 ms of inactivity (configured by client requestHandler).',
      ),
      ctx,
    );
    assert.match(
      silent.message,
      /timed out \(s3:\/\/b\/p\/k\): the connection was silent too long/,
    );
    assert.match(silent.suggestion ?? '', /ceph health/);
    // The plain-HTTP GETs' own idle timeout says the same.
    const wire = translateS3Error(
      Object.assign(new Error('request timed out'), { code: 'ETIMEDOUT' }),
      { ...ctx, op: 'get' },
    );
    assert.match(wire.message, /the connection was silent too long/);
    const wireConnect = translateS3Error(
      Object.assign(new Error('connection timed out'), { code: 'ETIMEDOUT' }),
      { ...ctx, op: 'get' },
    );
    assert.match(wireConnect.message, /Cannot reach the S3 endpoint/);
  });

  it('a clock too far off, and expired temporary credentials, say so instead of blaming the keys', () => {
    const skew = translateS3Error(sdk('RequestTimeTooSkewed', 403), ctx);
    assert.equal(skew.code, 'ACCESS_DENIED');
    assert.match(skew.message, /this machine's clock is too far from the store's/);
    assert.match(skew.suggestion ?? '', /timedatectl/);
    const expired = translateS3Error(sdk('ExpiredToken', 400), ctx);
    assert.equal(expired.code, 'ACCESS_DENIED');
    assert.match(expired.message, /temporary credentials .* expired/);
    assert.match(expired.suggestion ?? '', /aws sso login/);
  });

  it('a refusal for the clock sets the client offset from the store time it carries', () => {
    const client = { config: { systemClockOffset: 0 } } as unknown as S3Client;
    const now = Date.now();
    const refused = (name: string, serverMs: number) =>
      Object.assign(sdk(name, 403), { ServerTime: new Date(serverMs).toUTCString() });
    // 20 minutes ahead of this machine: corrected (within the second the header carries).
    assert.equal(correctClock(client, refused('RequestTimeTooSkewed', now + 20 * 60_000)), true);
    assert.ok(Math.abs(client.config.systemClockOffset! - 20 * 60_000) < 2000);
    // A signature mismatch with the clocks close is the keys' fault: nothing to correct.
    assert.equal(correctClock(client, refused('SignatureDoesNotMatch', now)), false);
    // Other refusals, or none carrying a time, are left alone.
    assert.equal(correctClock(client, refused('AccessDenied', now - 3_600_000)), false);
    assert.equal(correctClock(client, sdk('RequestTimeTooSkewed', 403)), false);
  });

  it('etags are unquoted', () => {
    assert.equal(unquote('"abc"'), 'abc');
    assert.equal(unquote('abc'), 'abc');
    assert.equal(unquote('W/"abc"'), 'abc');
    assert.equal(unquote(undefined), '');
  });
});
