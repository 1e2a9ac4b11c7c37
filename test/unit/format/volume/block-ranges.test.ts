import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BlockRanges } from '../../../../src/format/volume/block-ranges.js';
import { rng } from '../../../helpers/rng.js';

describe('BlockRanges', () => {
  it('answers like the set of blocks it was given, kept as sorted disjoint ranges (seeded)', () => {
    for (let seed = 1; seed <= 40; seed++) {
      const r = rng(seed);
      const universe = 200 + Math.floor(r() * 300);
      const ranges = new BlockRanges();
      const model = new Set<number>();
      for (let step = 0; step < 60; step++) {
        const lo = Math.floor(r() * universe);
        // Mostly short ranges, some empty, some long (merging many).
        const len = r() < 0.1 ? 0 : r() < 0.8 ? 1 + Math.floor(r() * 8) : Math.floor(r() * 80);
        const hi = Math.min(universe, lo + len);
        ranges.add(lo, hi);
        for (let b = lo; b < hi; b++) model.add(b);
        for (let b = 0; b < universe; b++)
          assert.equal(ranges.has(b), model.has(b), `seed ${seed} step ${step}: block ${b}`);
        const qlo = Math.floor(r() * universe);
        const qhi = qlo + Math.floor(r() * 20);
        let any = false;
        for (let b = qlo; b < qhi; b++) any ||= model.has(b);
        assert.equal(ranges.overlaps(qlo, qhi), any, `seed ${seed}: [${qlo}, ${qhi})`);
        // Sorted, disjoint and not touching: each run of the model is exactly one range.
        const list = [...ranges];
        for (let k = 0; k < list.length; k++) {
          const [a, b] = list[k] as [number, number];
          assert.ok(a < b);
          if (k > 0) assert.ok((list[k - 1] as [number, number])[1] < a, 'disjoint, apart');
        }
        let runs = 0;
        for (let b = 0; b < universe; b++) if (model.has(b) && !model.has(b - 1)) runs++;
        assert.equal(ranges.size, runs);
      }
    }
  });
});
