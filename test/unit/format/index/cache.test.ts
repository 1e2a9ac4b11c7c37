/**
 * The memory caches: the LRU stays within its byte budget; the data cache keeps speculative
 * blocks (read-around neighbours) in probation, where they cannot evict blocks reads asked
 * for, and promotes one when a read asks for it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DataCache, LruCache } from '../../../../src/format/index/cache.js';

const blk = (n: number): Buffer => Buffer.alloc(1024, n);

describe('memory caches', () => {
  it('LRU: evicts the least recently used within its byte budget', () => {
    const c = new LruCache<number, Buffer>(3 * 1024);
    for (let i = 0; i < 3; i++) c.set(i, blk(i), 1024);
    assert.ok(c.get(0));
    c.set(3, blk(3), 1024);
    assert.equal(c.peek(1), undefined, 'the least recently used went');
    assert.ok(c.peek(0) && c.peek(2) && c.peek(3));
    assert.equal(c.bytes, 3 * 1024);
  });

  it('data cache: speculation never evicts what reads asked for; a hit promotes', () => {
    const c = new DataCache<number>(8 * 1024); // main 6 KiB, probation 2 KiB
    for (let i = 0; i < 6; i++) c.set(i, blk(i), 1024);
    // A flood of neighbours fetched on speculation.
    for (let i = 100; i < 200; i++) c.set(i, blk(i), 1024, true);
    for (let i = 0; i < 6; i++) assert.ok(c.peek(i), `block ${i} asked for by a read stays`);
    assert.ok(c.bytes <= 8 * 1024);
    // The newest neighbours are in probation; a read of one moves it to the main part.
    assert.ok(c.get(199));
    for (let i = 150; i < 160; i++) c.set(i, blk(i), 1024, true);
    assert.ok(c.peek(199), 'promoted: no longer evicted by speculation');
    assert.equal(c.get(100), undefined);
    assert.equal(c.misses, 1);
    assert.ok(c.hits >= 1);
  });
});
