import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../src/errors.js';
import { CountingStore, storeStats } from '../../../src/format/store/counting.js';
import { openStore, parseStoreUrl } from '../../../src/format/store/index.js';
import { MemStore } from '../../../src/format/store/mem.js';
import { collect } from '../../helpers/store-conformance.js';

describe('counting store', () => {
  it('counts requests by verb and bytes in and out, shared with sub()', async () => {
    const inner = MemStore.isolated();
    inner.pageSize = 2;
    const s = new CountingStore(inner);
    await s.put('a', Buffer.alloc(10));
    await s.sub('d/').put('b', Buffer.alloc(5), { ifNoneMatch: true });
    await s.get('a', { range: { offset: 2, length: 4 } });
    await s.head('a');
    await s.put('c', Buffer.alloc(1));
    await collect(s, ''); // 3 keys at 2 per page: 2 pages
    await s.delete(['a', 'c']);
    await s.get('zz').catch(() => undefined);
    assert.deepEqual(s.stats(), {
      get: 2,
      put: 3,
      list: 2,
      head: 1,
      delete: 1,
      bytesIn: 4,
      bytesOut: 16,
    });
    assert.deepEqual(storeStats(s), s.stats());
    s.resetStats();
    assert.equal(s.stats().put, 0);
    assert.equal(storeStats(inner), undefined);
  });

  it('openStore wraps every store with counting', async () => {
    const s = await openStore('mem://counted/');
    await s.put('x', Buffer.from('1'));
    assert.equal(storeStats(s)?.put, 1);
  });
});

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
