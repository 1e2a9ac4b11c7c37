import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../../src/errors.js';
import { openStore, parseStoreUrl } from '../../../../src/format/store/index.js';

describe('store URLs', () => {
  it('parses the accepted forms', () => {
    assert.deepEqual(parseStoreUrl('file:///var/lib/vols'), {
      scheme: 'file',
      dir: '/var/lib/vols',
      url: 'file:///var/lib/vols/',
    });
    const rel = parseStoreUrl('file://./rel/dir/');
    assert.equal(rel.scheme === 'file' && rel.dir, `${process.cwd()}/rel/dir`);
    assert.deepEqual(parseStoreUrl('s3://my-bucket/a/b'), {
      scheme: 's3',
      bucket: 'my-bucket',
      prefix: 'a/b/',
      url: 's3://my-bucket/a/b/',
    });
    assert.deepEqual(parseStoreUrl('s3://my-bucket'), {
      scheme: 's3',
      bucket: 'my-bucket',
      prefix: '',
      url: 's3://my-bucket/',
    });
    assert.deepEqual(parseStoreUrl('mem://x'), { scheme: 'mem', name: 'x', url: 'mem://x/' });
  });

  it('rejects bad URLs with INVALID_URL naming the accepted forms', () => {
    for (const bad of [
      '/plain/path',
      'file://relative/dir',
      's3://Bad_Bucket/x',
      's3:///x',
      'mem://',
      's3://b/a//c',
    ]) {
      try {
        parseStoreUrl(bad);
        assert.fail(`accepted ${bad}`);
      } catch (e) {
        assert.ok(isHyperError(e, 'INVALID_URL'), `${bad}: ${String(e)}`);
        assert.match(e.suggestion ?? '', /file:\/\/\/abs\/dir\/.*s3:\/\/bucket\/prefix\//);
      }
    }
    try {
      parseStoreUrl('gs://bucket/x');
      assert.fail('accepted gs://');
    } catch (e) {
      assert.ok(isHyperError(e, 'UNSUPPORTED_STORE'));
    }
  });

  it('openStore rejects bad URLs', async () => {
    await assert.rejects(openStore('ftp://x/'), (e: unknown) =>
      isHyperError(e, 'UNSUPPORTED_STORE'),
    );
    await assert.rejects(openStore('file:relative'), (e: unknown) =>
      isHyperError(e, 'INVALID_URL'),
    );
  });
});
