import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CountingStore, storeStats } from '../../../../src/format/store/counting.js';
import { openStore } from '../../../../src/format/store/index.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { collect } from '../../../helpers/store-conformance.js';

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
