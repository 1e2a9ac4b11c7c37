/**
 * The replica manifest's fencing, under seeded random interleavings: replicators of rising
 * lease epochs update the manifest concurrently (each from a copy it read earlier or a fresh
 * read, the store delaying every request by a random number of turns), and takeovers happen
 * at random points. Every update records a marker (its id and epoch); at the end the markers
 * in the manifest are exactly the updates that succeeded, in an order whose epochs never go
 * down (once a newer replicator stamped it, an older one changed nothing), and every refused
 * update is FENCED by a newer epoch.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../src/errors.js';
import { MemStore } from '../../../src/format/store/mem.js';
import type { ObjectStore } from '../../../src/format/store/index.js';
import {
  createManifest,
  readTagged,
  updateManifest,
  type ReplicaManifest,
  type TaggedManifest,
} from '../../../src/replica/manifest.js';
import { rng } from '../../helpers/rng.js';

/** Every request waits 0–3 turns of the event loop first, so concurrent requests interleave. */
function delaying(inner: ObjectStore, r: () => number): ObjectStore {
  const turns = async (): Promise<void> => {
    for (let i = Math.floor(r() * 4); i > 0; i--) await new Promise((res) => setImmediate(res));
  };
  return {
    get url() {
      return inner.url;
    },
    get: async (...a) => (await turns(), inner.get(...a)),
    head: async (...a) => (await turns(), inner.head(...a)),
    put: async (...a) => (await turns(), inner.put(...a)),
    list: (...a) => inner.list(...a),
    delete: async (...a) => (await turns(), inner.delete(...a)),
    sub: (p) => inner.sub(p),
    close: () => inner.close(),
  };
}

const base: ReplicaManifest = {
  version: 1,
  uuid: '6f1c3d2e-8a4b-4c5d-9e6f-7a8b9c0d1e2f',
  deviceSize: 1 << 20,
  regionSize: 1 << 16,
  dataBlockSize: 4096,
  createdAt: new Date(0).toISOString(),
  inconsistent: [],
};

describe('replica manifest', () => {
  it('a new manifest is create-only', async () => {
    const store = new MemStore('mem://manifest-create/');
    await createManifest(store, base);
    await assert.rejects(createManifest(store, base), { code: 'OBJECT_EXISTS' });
  });

  for (const seed of [1, 2, 3, 4, 5]) {
    it(`updates are fenced by lease epoch under random interleavings (seed ${seed})`, async () => {
      const r = rng(seed);
      const store = delaying(new MemStore(`mem://manifest-${seed}/`), r);
      await createManifest(store, base);
      let epoch = 1;
      /** Each replicator's epoch and the copy it last read or wrote. */
      const replicators: { epoch: number; known: TaggedManifest | undefined }[] = [
        { epoch, known: await readTagged(store) },
      ];
      const succeeded = new Map<number, number>(); // marker id -> epoch
      let refused = 0;
      let id = 0;
      for (let round = 0; round < 40; round++) {
        if (r() < 0.25) {
          // A takeover: a new replicator with the next epoch (it stamps on connect, or not yet).
          replicators.push({
            epoch: ++epoch,
            known: r() < 0.5 ? await readTagged(store) : undefined,
          });
        }
        const batch = Array.from({ length: 1 + Math.floor(r() * 3) }, () => {
          const w = replicators[Math.floor(r() * replicators.length)]!;
          const mine = ++id;
          const fresh = r() < 0.3;
          return updateManifest(
            store,
            w.epoch,
            (m) => ({ ...m, inconsistent: [...m.inconsistent, { from: mine, to: w.epoch }] }),
            fresh ? undefined : w.known,
          ).then(
            (t) => {
              w.known = t;
              succeeded.set(mine, w.epoch);
            },
            (e: unknown) => {
              assert.ok(isHyperError(e), String(e));
              assert.equal(e.code, 'FENCED', e.message);
              assert.ok(replicators.some((x) => x.epoch > w.epoch));
              refused++;
            },
          );
        });
        await Promise.all(batch);
      }
      const final = (await readTagged(store))!.manifest;
      const markers = final.inconsistent.map((x) => x.from);
      assert.deepEqual(
        [...markers].sort((a, b) => a - b),
        [...succeeded.keys()].sort((a, b) => a - b),
      );
      const epochs = final.inconsistent.map((x) => x.to!);
      for (let i = 1; i < epochs.length; i++)
        assert.ok(epochs[i]! >= epochs[i - 1]!, `epoch went down at ${i}: ${epochs.join(',')}`);
      assert.equal(final.writerEpoch, epochs.at(-1));
      assert.ok(
        refused > 0 && succeeded.size > 0,
        `${refused} refused, ${succeeded.size} succeeded`,
      );
    });
  }
});
