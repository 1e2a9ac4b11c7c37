import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  ENTRY_SIZE,
  entryKey,
  entryWords,
  nodeCapacity,
  setEntryKey,
  wordsKey,
  type BlockPtr,
} from '../../../../src/format/codec/node.js';
import { BTree, Miss, Node } from '../../../../src/format/index/btree.js';
import { NodeLoader } from '../../../../src/format/index/loader.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { segmentKey } from '../../../../src/format/keys.js';
import { buildCheckpoint } from '../../../../src/format/volume/segment-builder.js';
import { adoptNodes } from '../../../../src/format/volume/flush.js';
import { SegmentSource } from '../../../../src/format/volume/segments.js';
import { rng } from '../../../helpers/rng.js';
import { headFor } from '../../../helpers/checkpoint.js';

const NODE = 4096;
const CAP = nodeCapacity(NODE);
const noNodes = { cached: (): Node | undefined => undefined };

const ptr = (lba: number, salt: number): BlockPtr => ({
  seg: 7 + (salt % 3),
  off: ((lba * 8 + salt) % 65536) * 512,
  len: 4096,
  crc: (lba * 2654435761 + salt) >>> 0,
  codec: 0,
});

/** Every structural rule of the tree, checked over a fully in-memory (dirty) tree. */
function checkShape(t: BTree): number {
  const rec = (
    nd: Node,
    lower: number,
    upper: number,
    depth: number,
    leafDepth: number[],
  ): number => {
    for (let i = 1; i < nd.length; i++) assert.ok(nd.key(i - 1) < nd.key(i), 'keys ascend');
    for (let i = 0; i < nd.length; i++) {
      assert.ok(nd.key(i) >= lower && nd.key(i) < upper, 'keys inside the parent range');
    }
    assert.ok(nd.length <= CAP, 'no node over capacity');
    if (nd.level === 0) {
      leafDepth.push(depth);
      return nd.length;
    }
    let total = 0;
    for (let i = 0; i < nd.length; i++) {
      const child = t.child(nd, i);
      assert.ok(!(child instanceof Miss), 'dirty tree is all in memory');
      assert.equal(child.level, nd.level - 1);
      const hi = i + 1 < nd.length ? nd.key(i + 1) : upper;
      const n = rec(child, nd.key(i), hi, depth + 1, leafDepth);
      assert.equal(nd.blocksBelow(i), n, 'child counts equal subtree sizes');
      if (child.length > 0) assert.ok(child.key(0) >= nd.key(i), 'separator ≤ first key of child');
      total += n;
    }
    return total;
  };
  const depths: number[] = [];
  const n = rec(t.root, 0, Number.MAX_SAFE_INTEGER, 0, depths);
  assert.equal(new Set(depths).size <= 1, true, 'all leaves at one depth');
  return n;
}

/** The keys mappedRuns() names in [lo, hi), checking its runs are merged, clipped and ascending. */
function runKeys(t: BTree, lo: number, hi: number): number[] {
  const runs = t.mappedRuns(lo, hi);
  assert.ok(!(runs instanceof Miss));
  const keys: number[] = [];
  for (let i = 0; i < runs.length; i += 2) {
    const a = runs[i] as number;
    const b = runs[i + 1] as number;
    assert.ok(lo <= a && a < b && b <= hi, `run [${a}, ${b}) inside [${lo}, ${hi})`);
    if (i > 0) assert.ok((runs[i - 1] as number) < a, 'runs ascend, touching ones merged');
    for (let k = a; k < b; k++) keys.push(k);
  }
  return keys;
}

describe('B+tree', () => {
  it('matches a map model over random inserts and range deletes, keeping its shape', () => {
    const t = BTree.empty(CAP, noNodes);
    const model = new Map<number, BlockPtr>();
    const rand = rng(11);
    for (let step = 0; step < 30_000; step++) {
      const r = rand();
      if (r < 0.8) {
        // Clustered and scattered keys: both sequential appends and random splits.
        const lba = rand() < 0.5 ? Math.floor(rand() * 200_000) : step * 3;
        const p = ptr(lba, step);
        const added = t.insert(lba, p);
        assert.equal(added, model.has(lba) ? 0 : 1);
        model.set(lba, p);
      } else {
        const lo = Math.floor(rand() * 200_000);
        const hi = lo + 1 + Math.floor(rand() * (rand() < 0.1 ? 20_000 : 50));
        let expect = 0;
        for (const k of [...model.keys()]) if (k >= lo && k < hi && model.delete(k)) expect++;
        assert.equal(t.deleteRange(lo, hi), expect);
      }
      if (step % 5000 === 0) assert.equal(checkShape(t), model.size);
    }
    assert.equal(checkShape(t), model.size);
    assert.equal(t.mapped, model.size);
    const keys = [...model.keys()].sort((a, b) => a - b);
    assert.deepEqual(runKeys(t, 0, Number.MAX_SAFE_INTEGER), keys);
    for (let i = 0; i < 300; i++) {
      const lo = Math.floor(rand() * 200_000);
      const hi = lo + 1 + Math.floor(rand() * 30_000);
      assert.deepEqual(
        runKeys(t, lo, hi),
        keys.filter((k) => k >= lo && k < hi),
      );
    }
    for (let i = 0; i < 2000; i++) {
      const lba = Math.floor(rand() * 200_000);
      assert.deepEqual(t.lookup(lba), model.get(lba));
    }
    const lo = 50_000;
    const hi = 90_000;
    const scan = t.scan(lo, hi);
    assert.ok(!(scan instanceof Miss));
    assert.deepEqual(
      scan.map((e) => e.lba),
      keys.filter((k) => k >= lo && k < hi),
    );
    assert.equal(t.countRange(lo, hi), keys.filter((k) => k >= lo && k < hi).length);
  });

  it('answers Miss (changing nothing) for a node not in memory, and loads it from its segment', async () => {
    // Build a multi-level tree, write it as a segment, then reopen it from the root alone.
    const store = MemStore.isolated();
    const t = BTree.empty(CAP, noNodes);
    const model = new Map<number, BlockPtr>();
    for (let lba = 0; lba < 3 * CAP * CAP; lba += 2) {
      const p = { seg: 1, off: 0, len: 4096, crc: lba, codec: 0 };
      t.insert(lba, p);
      model.set(lba, p);
    }
    assert.ok(t.root.level >= 2, 'three levels');
    const nodes = t.dirtyNodes();
    const built = buildCheckpoint({
      id: 2,
      nowMs: 1,
      head: headFor(2),
      root: t.root,
      nodes,
      nodeSize: NODE,
      blockSize: 4096,
      lbas: [],
      blocks: [],
      crcs: [],
    });
    await store.put(segmentKey(2), built.parts);
    const loader = new NodeLoader(SegmentSource.single(store), NODE, 256 * NODE);
    adoptNodes({ ...built, nodes: [] }, t, loader);
    const { rootOf } = await import('../../../../src/format/volume/heads.js');
    const reopened = new BTree(rootOf(built.head), CAP, loader);
    const miss = reopened.lookup(CAP * 10);
    assert.ok(miss instanceof Miss, 'a node not in memory is a Miss');
    assert.equal(reopened.mapped, model.size, 'counts come from the root alone');
    for (const lba of [0, 2, 1270, 16_130, 3 * CAP * CAP - 1]) {
      assert.deepEqual(await loader.run(() => reopened.lookup(lba)), model.get(lba));
      assert.equal(await loader.run(() => reopened.lookup(lba + 1)), undefined);
    }
    // A copy-on-write insert leaves the loaded (clean, shared) nodes untouched.
    const before = loader.cached(reopened.root.seg(0), reopened.root.off(0));
    const snapshot = before ? Buffer.from(before.entries) : undefined;
    await loader.run(() => reopened.insert(1, { seg: 3, off: 512, len: 4096, crc: 1, codec: 0 }));
    if (before && snapshot) assert.deepEqual(before.entries, snapshot, 'clean node unchanged');
    assert.equal(reopened.mapped, model.size + 1);
    assert.ok(loader.gets > 0 && loader.gets < 20, `few ranged GETs: ${loader.gets}`);
  });

  it('names a densely mapped range from the counts above its leaves, loading none of them', async () => {
    // Three levels, every lba in [0, n) mapped but a 10-block gap; written as a segment and
    // reopened from the root alone, so every node visited is a counted GET.
    const store = MemStore.isolated();
    const t = BTree.empty(CAP, noNodes);
    const n = 3 * CAP * CAP;
    const gap = [CAP * 40 + 5, CAP * 40 + 15];
    for (let lba = 0; lba < n; lba++) {
      if (lba >= (gap[0] as number) && lba < (gap[1] as number)) continue;
      t.insert(lba, { seg: 1, off: 0, len: 4096, crc: lba, codec: 0 });
    }
    assert.ok(t.root.level >= 2, 'three levels');
    const built = buildCheckpoint({
      id: 2,
      nowMs: 1,
      head: headFor(2),
      root: t.root,
      nodes: t.dirtyNodes(),
      nodeSize: NODE,
      blockSize: 4096,
      lbas: [],
      blocks: [],
      crcs: [],
    });
    await store.put(segmentKey(2), built.parts);
    const loader = new NodeLoader(SegmentSource.single(store), NODE, 1024 * NODE);
    const { rootOf } = await import('../../../../src/format/volume/heads.js');
    const reopened = new BTree(rootOf(built.head), CAP, loader);
    const runs = await loader.run(() => reopened.mappedRuns(0, n + 100));
    assert.deepEqual(runs, [0, gap[0], gap[1], n]);
    // Only the path to the gap's leaf is loaded (one node per level below the root), and the
    // node holding the last child of each level (its upper bound is the parent's).
    assert.ok(loader.gets <= 2 * t.root.level, `GETs: ${loader.gets}`);
    const inside = await loader.run(() => reopened.mappedRuns(100, 200));
    assert.deepEqual(inside, [100, 200]);
  });
});

describe('node loader cache keys', () => {
  it('keeps nodes apart on both sides of the numeric key range', () => {
    const loader = new NodeLoader(SegmentSource.single(MemStore.isolated()), NODE, 256 * NODE);
    const node = (tag: number): Node => {
      const t = BTree.empty(CAP, noNodes);
      t.insert(tag, ptr(tag, 0));
      return t.root;
    };
    // (segment, offset) pairs whose keys would meet if the key were seg * 2^32 + off unchecked,
    // and segments past 2^21 (keys as strings).
    const places: [number, number][] = [
      [1, 2 ** 32],
      [2, 0],
      [2, 2 ** 32 - NODE],
      [3, 0],
      [2 ** 21 - 1, 2 ** 32 - NODE],
      [2 ** 21, 0],
      [2 ** 21, NODE],
      [2 ** 40, 0],
    ];
    places.forEach(([seg, off], k) => loader.add(seg, off, node(k)));
    places.forEach(([seg, off], k) =>
      assert.equal(loader.cached(seg, off)?.key(0), k, `node at ${seg}:${off}`),
    );
    assert.equal(loader.cached(1, 0), undefined);
    assert.equal(loader.cached(2 ** 21 + 1, 0), undefined);
  });
});

describe('entry keys read as 32-bit words', () => {
  it('reads every key as entryKey does, up to 2^53, and falls back on unaligned memory', () => {
    const r = rng(91);
    const n = 64;
    const keys = Array.from({ length: n }, (_, i) =>
      i === n - 1 ? Number.MAX_SAFE_INTEGER : Math.floor(r() * 2 ** (i % 54)),
    ).sort((a, b) => a - b);
    const aligned = Buffer.alloc(n * ENTRY_SIZE);
    keys.forEach((k, i) => setEntryKey(aligned, i, k));
    const words = entryWords(aligned);
    assert.ok(words, 'a buffer of its own is read in place');
    keys.forEach((k, i) => {
      assert.equal(wordsKey(words, i), k);
      assert.equal(entryKey(aligned, i), k);
    });
    // The same entries one byte into a larger buffer: no view; a node reads them as before.
    const odd = Buffer.alloc(n * ENTRY_SIZE + 1).subarray(1);
    aligned.copy(odd);
    assert.equal(entryWords(odd), undefined);
    const nodes = [new Node(0, n, aligned, false), new Node(0, n, odd, false)];
    for (const nd of nodes) {
      keys.forEach((k, i) => assert.equal(nd.key(i), k));
      for (let t = 0; t < 200; t++) {
        const probe = Math.floor(r() * 2 ** 53);
        const le = keys.findLastIndex((k) => k <= probe);
        const lb = keys.findIndex((k) => k >= probe);
        assert.equal(nd.lastLE(probe), le);
        assert.equal(nd.lowerBound(probe), lb < 0 ? n : lb);
      }
    }
    // A key written after the view was made is read through it (the same memory).
    setEntryKey(aligned, 3, keys[3] as number);
    setEntryKey(aligned, 0, 0);
    assert.equal((nodes[0] as Node).key(0), 0);
  });
});
