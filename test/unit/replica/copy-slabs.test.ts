/**
 * The replicator's slabs for copies of small writes: a slab is carved again only once it is
 * full and every copy cut from it was given back; a copy not given back keeps its bytes.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CopySlabs } from '../../../src/replica/replicator.js';
import { rng } from '../../helpers/rng.js';

describe('replicator copy slabs', () => {
  for (const seed of [1, 2, 3]) {
    it(`reuses a slab only once every copy in it was given back (seed ${seed})`, () => {
      const r = rng(seed);
      const slabs = new CopySlabs();
      const out: { copy: Buffer; fill: number }[] = [];
      const seen = new Set<ArrayBufferLike>();
      let reused = 0;
      for (let i = 0; i < 20_000; i++) {
        const len = (1 + Math.floor(r() * 32)) * 512;
        const copy = slabs.take(len);
        if (seen.has(copy.buffer) && copy.byteOffset === 0) reused++;
        seen.add(copy.buffer);
        const fill = 1 + (i % 251);
        copy.fill(fill);
        out.push({ copy, fill });
        // Give back copies now and then, in any order (shipping out of order never happens,
        // but a dropped entry is never given back at all).
        while (out.length > 0 && r() < 0.45) {
          const [o] = out.splice(Math.floor(r() * Math.min(out.length, 400)), 1);
          assert.ok(
            o!.copy.every((b) => b === o!.fill),
            `seed ${seed}: a copy changed before it was given back`,
          );
          if (r() < 0.97) slabs.give(o!.copy);
        }
      }
      for (const o of out)
        assert.ok(
          o.copy.every((b) => b === o.fill),
          `seed ${seed}: kept copy`,
        );
      assert.ok(reused > 0, `seed ${seed}: no slab was reused`);
    });
  }
});
