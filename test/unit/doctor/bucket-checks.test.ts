/**
 * The bucket checks of `hyper doctor`, judged from fixed settings: what each verdict is, and
 * that a setting that could not be read is skipped or warned about, never taken as fine.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { bucketChecks } from '../../../src/doctor/doctor.js';
import { HyperError } from '../../../src/errors.js';
import type { BucketSettings, Probe } from '../../../src/format/store/s3-bucket.js';

const ok = <T>(value: T): Probe<T> => ({ state: 'ok', value });
const allOn = {
  blockPublicAcls: true,
  ignorePublicAcls: true,
  blockPublicPolicy: true,
  restrictPublicBuckets: true,
};

const safe: BucketSettings = {
  location: ok('eu-west-3'),
  versioning: ok('off'),
  lifecycle: ok([]),
  objectLock: ok(null),
  bucketPublicAccessBlock: ok(allOn),
  policyStatus: ok(null),
};

const verdicts = (b: BucketSettings, accountId?: string): Record<string, string> =>
  Object.fromEntries(
    bucketChecks(b, 'vols/', { region: 'eu-west-3', custom: false }, accountId).map((c) => [
      c.id,
      c.status,
    ]),
  );

describe('doctor bucket checks', () => {
  it('passes a bucket set up as recommended (the account check needs --account-id)', () => {
    assert.deepEqual(verdicts(safe), {
      region: 'ok',
      versioning: 'ok',
      lifecycle: 'ok',
      'object-lock': 'ok',
      'bucket-public-access-block': 'ok',
      'bucket-policy-public': 'ok',
      'account-public-access-block': 'skip',
    });
  });

  it('warns or fails on each risky setting, with a suggestion', () => {
    const risky: BucketSettings = {
      location: ok('us-east-2'),
      versioning: ok('enabled'),
      lifecycle: ok([
        {
          id: 'old',
          enabled: true,
          prefix: '',
          tagFilter: false,
          expirationDays: 30,
          transitions: [],
          noncurrentTransitions: [],
        },
      ]),
      objectLock: ok({ enabled: true, defaultRetention: { mode: 'COMPLIANCE', days: 7 } }),
      bucketPublicAccessBlock: ok({ ...allOn, blockPublicPolicy: false }),
      policyStatus: ok({ isPublic: true }),
      accountPublicAccessBlock: ok(null),
    };
    const checks = bucketChecks(risky, 'vols/', { region: 'eu-west-3', custom: false }, '1234');
    assert.deepEqual(Object.fromEntries(checks.map((c) => [c.id, c.status])), {
      region: 'warn',
      versioning: 'warn',
      lifecycle: 'fail',
      'object-lock': 'warn',
      'bucket-public-access-block': 'warn',
      'bucket-policy-public': 'fail',
      'account-public-access-block': 'warn',
    });
    for (const c of checks) assert.ok(c.suggestion, `${c.id} has a suggestion`);
    assert.match(checks[0]?.suggestion ?? '', /--region us-east-2/);
  });

  it('never takes a setting it could not read for a good one', () => {
    const denied: Probe<never> = {
      state: 'error',
      error: new HyperError('unavailable', 'ACCESS_DENIED', 'Access denied'),
    };
    const b: BucketSettings = {
      ...safe,
      versioning: denied,
      policyStatus: { state: 'unsupported', reason: 'NotImplemented' },
    };
    const v = verdicts(b);
    assert.equal(v.versioning, 'warn');
    assert.equal(v['bucket-policy-public'], 'skip');
    assert.equal(v.region, 'ok');
  });
});
