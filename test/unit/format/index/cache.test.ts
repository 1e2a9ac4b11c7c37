/**
 * The memory caches: the LRU stays within its byte budget; the data cache keeps speculative
 * blocks (read-around neighbours) in probation, where they cannot evict blocks reads asked
 * for, and promotes one when a read asks for it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DataCache, LruCache } from '../../../../src/format/index/cache.js';
import { rng } from '../../../helpers/rng.js';

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

  it('data cache: probation uses what the main part leaves free, and gives it back', () => {
    const c = new DataCache<number>(8 * 1024); // main 6 KiB, probation 2 KiB of its own
    c.set(0, blk(0), 1024);
    for (let i = 100; i < 200; i++) c.set(i, blk(i), 1024, true);
    assert.equal(c.bytes, 8 * 1024, 'neighbours fill what the main part does not use');
    for (let i = 193; i < 200; i++) assert.ok(c.peek(i), `the newest neighbours (${i}) stay`);
    assert.ok(c.peek(0));
    for (let i = 1; i < 6; i++) c.set(i, blk(i), 1024);
    assert.equal(c.bytes, 8 * 1024, 'never over budget');
    for (let i = 0; i < 6; i++) assert.ok(c.peek(i), `block ${i} asked for by a read stays`);
    assert.ok(c.peek(199) && c.peek(198) && !c.peek(197), 'probation is back to its share');
  });

  it('data cache: seeded model, within budget, asked-for blocks evicted only by others', () => {
    for (const seed of [1, 2, 3]) {
      const r = rng(seed);
      const budget = 16 * 1024;
      const mainShare = 12; // blocks of 1 KiB in the main part
      const c = new DataCache<number>(budget);
      // The model of the main part: keys asked for, least recently used first.
      let main: number[] = [];
      for (let op = 0; op < 5000; op++) {
        const k = Math.floor(r() * 64);
        const roll = r();
        if (roll < 0.3) {
          c.set(k, blk(k), 1024);
          main = main.filter((x) => x !== k);
          main.push(k);
        } else if (roll < 0.8) {
          if (!main.includes(k)) c.set(k, blk(k), 1024, true);
        } else if (c.get(k) !== undefined) {
          main = main.filter((x) => x !== k);
          main.push(k);
        }
        if (main.length > mainShare) main = main.slice(main.length - mainShare);
        assert.ok(c.bytes <= budget, `seed ${seed} op ${op}: ${c.bytes} bytes`);
        for (const m of main) assert.ok(c.peek(m), `seed ${seed} op ${op}: block ${m} stays`);
      }
    }
  });
});
