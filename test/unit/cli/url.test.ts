import assert from 'node:assert/strict';
import { resolve } from 'node:path';
import { describe, it } from 'node:test';
import { normalizeVolumeUrl } from '../../../src/cli/url.js';
import { HyperError } from '../../../src/errors.js';

describe('normalizeVolumeUrl', () => {
  it('accepts file and s3 URLs and adds the trailing slash', () => {
    const cases: [string, string][] = [
      ['file:///srv/vols/a/', 'file:///srv/vols/a/'],
      ['file:///srv/vols/a', 'file:///srv/vols/a/'],
      ['file://./vols/demo', `file://${resolve('vols/demo')}/`],
      ['file://../up/', `file://${resolve('../up')}/`],
      ['s3://bucket/prefix/vol', 's3://bucket/prefix/vol/'],
      ['s3://bucket', 's3://bucket/'],
      ['s3://my.bucket-1/', 's3://my.bucket-1/'],
    ];
    for (const [input, want] of cases) assert.equal(normalizeVolumeUrl(input), want, input);
  });

  it('rejects other forms, listing the accepted ones', () => {
    for (const input of [
      'http://x/y',
      'mem://x/',
      'file://host/dir',
      's3://Bad_Bucket/x',
      'nonsense:',
      '',
    ]) {
      assert.throws(
        () => normalizeVolumeUrl(input),
        (e: unknown) =>
          e instanceof HyperError &&
          e.kind === 'invalid' &&
          (e.code === 'INVALID_URL' || e.code === 'UNSUPPORTED_STORE') &&
          (e.suggestion ?? '').includes('file:///absolute/dir/') &&
          (e.suggestion ?? '').includes('s3://bucket/prefix/'),
        input,
      );
    }
  });

  it('suggests the file URL for a bare path', () => {
    assert.throws(
      () => normalizeVolumeUrl('./vols/demo'),
      (e: unknown) =>
        e instanceof HyperError && (e.suggestion ?? '').startsWith('Use file://./vols/demo/'),
    );
    assert.throws(
      () => normalizeVolumeUrl('/abs/dir/'),
      (e: unknown) =>
        e instanceof HyperError && (e.suggestion ?? '').startsWith('Use file:///abs/dir/'),
    );
  });
});
