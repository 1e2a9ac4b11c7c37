import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HyperError, isHyperError } from '../../../../src/errors.js';
import { HEAD_KEY, segmentKey } from '../../../../src/format/keys.js';
import { CountingStore } from '../../../../src/format/store/counting.js';
import type { GetOptions, GetResult } from '../../../../src/format/store/types.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import { overwrittenThrice, whileHeldAt } from '../../../helpers/checkpoint.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { checkVolume } from '../../../../src/format/volume/check.js';
import { createSnapshot } from '../../../../src/format/volume/history.js';
import { KiB, MiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';

/** A volume whose index has internal nodes: 4,000 scattered blocks over 3 checkpoints. */
async function build(mem: MemStore): Promise<number[]> {
  await Volume.create(mem, { size: 256 * MiB });
  const v = await Volume.open(mem, { flushIntervalMs: 0 });
  const cps: number[] = [];
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 1500; i++)
      await v.write(((i * 7919 + round * 13) % 65536) * 4096, Buffer.alloc(4096, 1 + round));
    cps.push((await v.flush()).checkpoint);
  }
  await v.close();
  return cps;
}

const kinds = (r: { problems: { kind: string; key: string }[] }): string[] =>
  r.problems.map((p) => `${p.kind} ${p.key}`).sort();

describe('file check', () => {
  it('a healthy volume is clean, and checking writes nothing', async () => {
    const mem = MemStore.isolated();
    await build(mem);
    const store = new CountingStore(mem);
    const r = await checkVolume(store, { deep: true });
    assert.equal(r.clean, true, JSON.stringify(r.problems));
    assert.deepEqual(r.problems, []);
    assert.ok(r.nodesChecked > 10);
    assert.ok(r.blocksChecked >= 4000);
    assert.equal(store.stats().put + store.stats().delete, 0);
  });

  it('reports a corrupt index node, a corrupt data block and a missing segment by key', async () => {
    const mem = MemStore.isolated();
    const cps = await build(mem);
    const [first, second, third] = cps as [number, number, number];
    // A node of the first flush: nodes start right after the header, at a 512-byte boundary.
    mem.corrupt(segmentKey(first), (b) => {
      const nodes = b.indexOf(Buffer.from('HYND'), 512);
      b.writeUInt8((b[nodes + 40] ?? 0) ^ 0xff, nodes + 40);
      return b;
    });
    const shallow = await checkVolume(mem);
    assert.equal(shallow.clean, false);
    assert.ok(kinds(shallow).includes(`corrupt ${segmentKey(first)}`), kinds(shallow).join('\n'));
    // Data damage only shows with --deep.
    mem.corrupt(segmentKey(third), (b) => {
      b.writeUInt8((b.at(-100) ?? 0) ^ 0xff, b.length - 100);
      return b;
    });
    assert.ok(!kinds(await checkVolume(mem)).includes(`corrupt ${segmentKey(third)}`));
    const deep = await checkVolume(mem, { deep: true });
    assert.ok(kinds(deep).includes(`corrupt ${segmentKey(third)}`), kinds(deep).join('\n'));
    await mem.delete([segmentKey(second)]);
    const gone = await checkVolume(mem);
    assert.ok(kinds(gone).includes(`missing ${segmentKey(second)}`), kinds(gone).join('\n'));
    // A check that found something missing reads the head again (a compaction may have moved
    // on); a store that fails that read cannot tell damage from a compaction: its error.
    let headReads = 0;
    class SecondHeadFails extends CountingStore {
      override async get(key: string, o?: GetOptions): Promise<GetResult> {
        if (key === HEAD_KEY && ++headReads === 2)
          throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'injected: get head');
        return super.get(key, o);
      }
    }
    await assert.rejects(checkVolume(new SecondHeadFails(mem)), (e) =>
      isHyperError(e, 'STORE_UNAVAILABLE'),
    );
    assert.equal(headReads, 2);
  });

  it('reports a damaged head, dangling snapshots and uncommitted segments', async () => {
    const mem = MemStore.isolated();
    const cps = await build(mem);
    await createSnapshot(mem, 'pinned', { checkpoint: cps[0] as number });
    await mem.delete([segmentKey(cps[0] as number)]);
    const r = await checkVolume(mem);
    assert.ok(kinds(r).includes('dangling snap/pinned'), kinds(r).join('\n'));
    // A flush that never committed is not damage.
    await mem.put(segmentKey(999), Buffer.alloc(4 * KiB));
    const u = await checkVolume(mem);
    assert.ok(kinds(u).includes(`uncommitted ${segmentKey(999)}`));
    mem.corrupt(HEAD_KEY, (b) => {
      b.writeUInt8((b[20] ?? 0) ^ 1, 20);
      return b;
    });
    const h = await checkVolume(mem);
    assert.equal(h.clean, false);
    assert.deepEqual(kinds(h), ['corrupt head']);
  });

  it('a compaction that deletes while the check reads is no damage: it checks again', async () => {
    for (const deep of [false, true]) {
      // Three checkpoints, each rewriting the same blocks: only the last one's are live.
      const mem = MemStore.isolated();
      const [first] = await overwrittenThrice(mem);
      // The check stops at its first read of the oldest segment, after it read the head and
      // listed the segments; a compaction keeping only the newest checkpoint runs meanwhile.
      const r = await whileHeldAt(
        mem,
        segmentKey(first),
        (view) => checkVolume(view, { deep }),
        async () => {
          const c = await compactVolume(mem, { keepLast: 1, graceMs: 0 });
          assert.ok(c.segmentsDeleted > 0, 'the compaction deleted segments');
          assert.equal(await mem.head(segmentKey(first)), undefined);
        },
      );
      assert.deepEqual(kinds(r), [], `deep ${deep}`);
      assert.equal(r.clean, true);
      assert.equal(r.checkpointsChecked, 1);
    }
    // Real damage is still reported (after the one check, the history being the same).
    const mem = MemStore.isolated();
    const [, second] = (await build(mem)) as [number, number];
    await mem.delete([segmentKey(second)]);
    let headReads = 0;
    class Counting extends CountingStore {
      override get(key: string, o?: GetOptions): Promise<GetResult> {
        if (key === HEAD_KEY) headReads++;
        return super.get(key, o);
      }
    }
    const gone = await checkVolume(new Counting(mem));
    assert.ok(kinds(gone).includes(`missing ${segmentKey(second)}`));
    // The head read by the check, and once more to see that the history did not change.
    assert.equal(headReads, 2, 'checked once');
  });
});
