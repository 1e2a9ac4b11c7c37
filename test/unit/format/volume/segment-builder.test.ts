// The segment builder's gather layout: long runs of blocks stay in the caller's memory as
// parts of the segment, short ones are copied after the header, and index nodes are sent
// from the nodes' own memory. Seeded layouts of blocks in
// slabs (runs of every length, scattered blocks); the parts stored back to back must be the
// segment an all-copied build makes, byte for byte, and every block must be found through
// the index at the offset, length and CRC it names.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { crc32c } from '../../../../src/format/codec/binary.js';
import { nodeCapacity, PENDING_SEG } from '../../../../src/format/codec/node.js';
import { BTree, type Node } from '../../../../src/format/index/btree.js';
import { NodeLoader } from '../../../../src/format/index/loader.js';
import { segmentKey } from '../../../../src/format/keys.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { rootOf } from '../../../../src/format/volume/heads.js';
import {
  buildCheckpoint,
  GATHER_MIN,
  LAY_PIECE,
  layAhead,
  type CheckpointInput,
} from '../../../../src/format/volume/segment-builder.js';
import { ascending } from '../../../../src/format/volume/flush.js';
import { SegmentSource } from '../../../../src/format/volume/segments.js';
import { rng } from '../../../helpers/rng.js';
import { headFor } from '../../../helpers/checkpoint.js';

const NODE = 4096;
const BS = 4096;
const CAP = nodeCapacity(NODE);
const SLAB = 1024 * 1024;
const noNodes = { cached: (): Node | undefined => undefined };

/** The bytes of block `lba` (a pattern no other block shares). */
function content(lba: number): Buffer {
  const b = Buffer.alloc(BS);
  for (let i = 0; i < BS; i += 4) b.writeUInt32LE(((lba + 1) * 2654435761 + i) >>> 0, i);
  return b;
}

/**
 * `count` blocks at ascending lbas, placed in slabs the way a write buffer may hold them:
 * runs in order within a slab (sequential writes), single blocks anywhere (random ones).
 */
function layout(seed: number, count: number): { lbas: number[]; blocks: Buffer[] } {
  const r = rng(seed);
  const slabs: Buffer[] = [];
  let slab = Buffer.alloc(SLAB);
  slabs.push(slab);
  let used = 0;
  const take = (): Buffer => {
    if (used + BS > SLAB) {
      slab = Buffer.alloc(SLAB);
      slabs.push(slab);
      used = 0;
    }
    used += BS;
    return slab.subarray(used - BS, used);
  };
  const lbas: number[] = [];
  const blocks: Buffer[] = [];
  let lba = Math.floor(r() * 1000);
  while (lbas.length < count) {
    // A run of 1 to 48 blocks (some past GATHER_MIN), then a gap or not.
    const n = Math.min(count - lbas.length, 1 + Math.floor(r() ** 2 * 48));
    const scattered = r() < 0.3;
    for (let k = 0; k < n; k++) {
      // A scattered block skips a slot: it touches no neighbour in memory.
      if (scattered) take();
      const b = take();
      content(lba).copy(b);
      lbas.push(lba);
      blocks.push(b);
      lba++;
    }
    lba += r() < 0.5 ? 0 : 1 + Math.floor(r() * 300);
  }
  return { lbas, blocks };
}

/** Segment memory that hands out buffers with bytes past their end (so overruns show), named in `taken`. */
function recordingMemory(largest: number): {
  memory: { largest: number; take(n: number): Buffer };
  taken: Buffer[];
} {
  const taken: Buffer[] = [];
  const memory = {
    largest,
    take(n: number): Buffer {
      const b = Buffer.alloc(n + 4096, 0xee).subarray(0, n);
      taken.push(b);
      return b;
    },
  };
  return { memory, taken };
}

function input(lbas: number[], blocks: Buffer[]): CheckpointInput {
  const t = BTree.empty(CAP, noNodes);
  for (const lba of lbas) t.insert(lba, { seg: PENDING_SEG, off: 0, len: 0, crc: 0, codec: 0 });
  return {
    id: 7,
    nowMs: 1_700_000_000_000,
    head: headFor(7),
    root: t.root,
    nodes: t.dirtyNodes(),
    nodeSize: NODE,
    blockSize: BS,
    lbas,
    blocks,
    crcs: blocks.map((b) => crc32c(b)),
  };
}

describe('segment builder: gather layout', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    it(`seed ${seed}: the parts are the all-copied segment, and every block is where its entry says`, async () => {
      const { lbas, blocks } = layout(seed, 200 + seed * 150);
      const built = buildCheckpoint(input(lbas, blocks));
      // The same blocks, each in memory of its own: nothing to gather, all copied.
      const copied = buildCheckpoint(
        input(
          lbas,
          blocks.map((b) => Buffer.from(b)),
        ),
      );
      assert.equal(copied.gathered, false);
      const joined = Buffer.concat(built.parts);
      assert.equal(joined.length, built.length);
      assert.ok(joined.equals(Buffer.concat(copied.parts)), 'same segment bytes');
      // All copied: the buffer holds the header and the blocks, the nodes are sent from theirs.
      assert.equal(copied.buffer.length, copied.length - copied.nodeBytes);
      assert.ok(copied.nodeBytes > 0);

      // Parts are the segment buffer's, runs of the caller's blocks long enough, or pieces of
      // the nodes (a header, entries from the node's own memory, padding).
      const callers = new Set(blocks.map((b) => b.buffer));
      let kept = 0;
      let nodePieces = 0;
      for (const p of built.parts) {
        if (p.buffer === built.buffer.buffer) continue;
        if (callers.has(p.buffer)) {
          assert.ok(p.length >= GATHER_MIN, `kept run of ${p.length} bytes`);
          kept += p.length;
        } else {
          assert.ok(p.length <= NODE, `a node piece of ${p.length} bytes`);
          nodePieces += p.length;
        }
      }
      assert.equal(nodePieces, built.nodeBytes);
      assert.equal(built.gathered, kept > 0);
      assert.ok(kept > 0, 'the layout has runs to gather');
      assert.equal(built.buffer.length, built.length - kept - built.nodeBytes);
      // Each block as stored (what the write buffer serves until the segment lands).
      built.stored.forEach((b, k) => assert.ok(b.equals(content(lbas[k] as number)), `block ${k}`));

      // Read back through the index, from the store: offsets, lengths and CRCs.
      const store = MemStore.isolated();
      await store.put(segmentKey(7), built.parts);
      const loader = new NodeLoader(SegmentSource.single(store), NODE, 1024 * NODE);
      const tree = new BTree(rootOf(built.head), CAP, loader);
      const body = (await store.get(segmentKey(7))).body;
      for (const [k, lba] of lbas.entries()) {
        const p = await loader.run(() => tree.lookup(lba));
        assert.ok(p && p.seg === 7, `lba ${lba} mapped into the segment`);
        const bytes = body.subarray(p.off, p.off + p.len);
        assert.ok(bytes.equals(content(lba)), `lba ${lba} bytes`);
        assert.equal(p.crc, crc32c(bytes));
        assert.equal(p.off, built.blockOffsets[k]);
      }
    });
  }

  it('a segment of one long run: the header part, then the run itself', () => {
    const slab = Buffer.alloc(SLAB);
    const lbas = Array.from({ length: 64 }, (_, k) => 100 + k);
    const blocks = lbas.map((lba, k) => {
      const b = slab.subarray(k * BS, (k + 1) * BS);
      content(lba).copy(b);
      return b;
    });
    const built = buildCheckpoint(input(lbas, blocks));
    const last = built.parts[built.parts.length - 1];
    // The header, the nodes' pieces, the run.
    assert.equal(built.parts[0]?.length, built.dataOffset - built.nodeBytes);
    assert.equal(last?.buffer, slab.buffer);
    assert.equal(last?.length, 64 * BS);
    assert.equal(built.buffer.length, built.dataOffset - built.nodeBytes);
    assert.equal(built.stored[5], blocks[5], 'blocks stay where they were');
  });
});

describe('segment builder: memory past the largest buffer', () => {
  for (const seed of [21, 22, 23, 24, 25, 26]) {
    it(`seed ${seed}: copies past \`largest\` go on in further buffers, and the parts are the same segment`, () => {
      const { lbas, blocks } = layout(seed, 300 + seed * 40);
      const r = rng(seed);
      // From a few blocks to less than the nodes: the first buffer holds at least those.
      const largest = BS * (1 + Math.floor(r() * 24)) + (r() < 0.5 ? 0 : 1000);
      const { memory, taken } = recordingMemory(largest);
      const built = buildCheckpoint({ ...input(lbas, blocks), memory });
      const plain = buildCheckpoint(input(lbas, blocks));
      assert.ok(
        Buffer.concat(built.parts).equals(Buffer.concat(plain.parts)),
        'same segment bytes',
      );
      assert.deepEqual(built.blockOffsets, plain.blockOffsets);
      assert.equal(built.ownBytes, plain.ownBytes);
      assert.equal(plain.buffers.length, 1, 'without a bound, one buffer');
      assert.deepEqual(built.buffers, taken, 'every buffer taken is named, in order');
      assert.equal(built.buffer, taken[0]);
      assert.ok(
        built.buffer.length >= built.dataOffset - built.nodeBytes,
        'the header in the first',
      );
      for (const b of taken.slice(1)) assert.ok(b.length <= largest, `${b.length} > ${largest}`);
      assert.ok(taken.length > 1, `the layout spilled (${taken.length} buffers)`);
      // Every part is a buffer's or a kept run of the caller's; the buffers' parts add up.
      const mine = new Set(taken.map((b) => b.buffer));
      let own = 0;
      for (const p of built.parts) if (mine.has(p.buffer)) own += p.length;
      assert.equal(own, built.ownBytes);
      built.stored.forEach((b, k) => {
        assert.ok(b.equals(content(lbas[k] as number)), `block ${k}`);
        if (mine.has(b.buffer)) assert.ok(b.length === BS, 'a copied block in one piece');
      });
    });
  }
});

describe('segment builder: blocks laid ahead', () => {
  for (const seed of [31, 32, 33, 34, 35, 36]) {
    it(`seed ${seed}: the copies are made ahead with pauses, the build copies nothing, and the segment is the same`, async () => {
      // Enough blocks that the copies take several pieces.
      const { lbas, blocks } = layout(seed, 4000 + seed * 20);
      const r = rng(seed);
      const largest = r() < 0.5 ? Infinity : BS * (200 + Math.floor(r() * 400)) + 1000;
      const { memory, taken } = recordingMemory(largest);
      const before = blocks.map((b) => Buffer.from(b));
      let pauses = 0;
      const ahead = await layAhead(blocks, memory, async () => {
        pauses++;
      });
      assert.ok(ahead, 'the layout has blocks to copy');
      assert.deepEqual(ahead.laid.buffers, taken, 'every buffer taken is laid, in order');
      // The blocks the plain build copies: runs shorter than GATHER_MIN.
      const plain = buildCheckpoint(input(lbas, blocks));
      const callers = new Set(blocks.map((b) => b.buffer));
      const copiedBytes = plain.stored.reduce(
        (n, b) => (callers.has(b.buffer) ? n : n + b.length),
        0,
      );
      // A pause after each LAY_PIECE bytes (a piece ends with a whole run: up to GATHER_MIN more).
      assert.ok(copiedBytes > 2 * LAY_PIECE, `${copiedBytes} bytes copied`);
      assert.ok(
        pauses >= Math.floor(copiedBytes / (LAY_PIECE + GATHER_MIN)) - 1,
        `${pauses} pauses`,
      );
      assert.ok(pauses <= Math.floor(copiedBytes / LAY_PIECE), `${pauses} pauses`);
      ahead.blocks.forEach((b, k) => {
        assert.ok(b.equals(before[k] as Buffer), `block ${k} unchanged`);
        const moved = !callers.has(b.buffer);
        assert.equal(moved, !callers.has((plain.stored[k] as Buffer).buffer), `block ${k} laid`);
      });

      const taking = taken.length;
      const built = buildCheckpoint({ ...input(lbas, ahead.blocks), memory, laid: ahead.laid });
      assert.equal(taken.length, taking, 'the build takes no memory');
      assert.ok(
        Buffer.concat(built.parts).equals(Buffer.concat(plain.parts)),
        'same segment bytes',
      );
      assert.deepEqual(built.blockOffsets, plain.blockOffsets);
      assert.equal(built.ownBytes, plain.ownBytes);
      assert.equal(built.gathered, plain.gathered);
      // The header alone in a buffer of its own, not recycled with the laid ones.
      assert.equal(built.buffer.length, built.dataOffset - built.nodeBytes);
      assert.ok(!built.buffers.includes(built.buffer));
      assert.deepEqual(built.buffers, taken);
      const laid = new Set(taken.map((b) => b.buffer));
      let own = built.buffer.length;
      for (const p of built.parts) {
        if (laid.has(p.buffer)) own += p.length;
        else if (callers.has(p.buffer)) assert.ok(p.length >= GATHER_MIN);
      }
      assert.equal(own, built.ownBytes, 'header and laid parts are the segment own bytes');
      built.stored.forEach((b, k) => {
        assert.equal(b, ahead.blocks[k], `block ${k} stored where it was laid`);
        assert.ok(b.equals(content(lbas[k] as number)));
      });
    });
  }

  it('lays nothing when every run is long enough to gather', async () => {
    const slab = Buffer.alloc(SLAB);
    const blocks = Array.from({ length: 64 }, (_, k) => slab.subarray(k * BS, (k + 1) * BS));
    assert.equal(await layAhead(blocks, undefined, () => Promise.resolve()), undefined);
  });
});

describe('ascending: the order blocks are laid out in', () => {
  it('sorts numerically (large lbas included) and returns ordered keys as they are', () => {
    const r = rng(11);
    for (let n = 0; n < 200; n++) {
      const keys = Array.from({ length: Math.floor(r() * 50) }, () =>
        Math.floor(r() * 2 ** (r() < 0.5 ? 12 : 50)),
      );
      const want = [...keys].sort((a, b) => a - b);
      assert.deepEqual(ascending(keys), want);
      const inOrder = [...want];
      assert.equal(ascending(inOrder), inOrder, 'no copy when already in order');
    }
  });
});
