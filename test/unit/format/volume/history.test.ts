import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { HyperError, isHyperError } from '../../../../src/errors.js';
import { CountingStore } from '../../../../src/format/store/counting.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { cloneVolume, flattenVolume } from '../../../../src/format/volume/clone.js';
import {
  compactVolume,
  type CompactOptions,
  type CompactResult,
} from '../../../../src/format/volume/compact.js';
import {
  createSnapshot,
  deleteSnapshot,
  diffCheckpoints,
  listCheckpoints,
  listSnapshots,
  restoreVolume,
} from '../../../../src/format/volume/history.js';
import { deleteVolume, statVolume } from '../../../../src/format/volume/admin.js';
import { checkVolume } from '../../../../src/format/volume/check.js';
import { encodeSnapshot } from '../../../../src/format/codec/snapshot.js';
import {
  SEGMENT_PREFIX,
  parseSegmentKey,
  pinKey,
  segmentKey,
} from '../../../../src/format/keys.js';
import { KiB, MiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { rng } from '../../../helpers/rng.js';
import { overwrittenThrice, whileHeldAt } from '../../../helpers/checkpoint.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const SIZE = 4 * MiB;

async function contentAt(store: MemStore | CountingStore, checkpoint: number): Promise<Buffer> {
  const v = await Volume.open(store, { at: { checkpoint } });
  try {
    return await v.read(0, v.info.size);
  } finally {
    await v.close();
  }
}

/** A volume with `rounds` checkpoints of random 64 KiB overwrites; returns each checkpoint's content. */
async function history(
  store: MemStore | CountingStore,
  rounds: number,
  seed = 1,
): Promise<Map<number, Buffer>> {
  await Volume.create(store, { size: SIZE, segmentSize: 1 * MiB });
  const v = await Volume.open(store, { flushIntervalMs: 0 });
  const ref = Buffer.alloc(SIZE);
  const refs = new Map<number, Buffer>([[1, Buffer.alloc(SIZE)]]);
  const rand = rng(seed);
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < 8; k++) {
      const off = Math.floor(rand() * (SIZE / (64 * KiB))) * 64 * KiB;
      const data = Buffer.alloc(64 * KiB, 1 + Math.floor(rand() * 250));
      await v.write(off, data);
      data.copy(ref, off);
    }
    const { checkpoint } = await v.flush();
    refs.set(checkpoint, Buffer.from(ref));
  }
  await v.close();
  return refs;
}

/** Clone pins naming `checkpoints`, as clones that failed after their pin landed leave them. */
async function leavePins(store: MemStore, checkpoints: number[]): Promise<void> {
  for (const [k, id] of checkpoints.entries())
    await store.put(
      pinKey(k.toString(16).padStart(32, '0')),
      encodeSnapshot({ checkpoint: id, createdMs: Date.now(), kind: 'clone-pin', note: '' }),
    );
}

/** A logger that keeps the warnings. */
function warnings(): { warned: string[]; logger: CompactOptions['logger'] } {
  const warned: string[] = [];
  const logger = {
    debug: () => undefined,
    info: () => undefined,
    warn: (m: string) => void warned.push(m),
    error: () => undefined,
  };
  return { warned, logger };
}

describe('snapshots, restore, diff', () => {
  it('creates, lists and deletes named snapshots in O(1) requests', async () => {
    const store = new CountingStore(MemStore.isolated());
    const refs = await history(store, 5);
    const cps = [...refs.keys()];
    store.resetStats();
    const s = await createSnapshot(store, 'before-upgrade', { checkpoint: cps[2] as number });
    const st = store.stats();
    // (Each read of the head lists the segments past it: FORMAT.md "Commit protocol".)
    assert.ok(st.get + st.put + st.head + st.list <= 6, `requests: ${JSON.stringify(st)}`);
    assert.equal(s.checkpoint, cps[2]);
    await createSnapshot(store, 'now');
    await assert.rejects(createSnapshot(store, 'now'), (e) => isHyperError(e, 'SNAPSHOT_EXISTS'));
    await assert.rejects(createSnapshot(store, 'bad/name'), (e) =>
      isHyperError(e, 'INVALID_ARGUMENT'),
    );
    assert.deepEqual((await listSnapshots(store)).map((x) => x.name).sort(), [
      'before-upgrade',
      'now',
    ]);
    const list = await listCheckpoints(store);
    assert.equal(list.length, 6);
    assert.ok(list[0]?.current);
    assert.deepEqual(list[0]?.names, ['now']);
    assert.deepEqual(
      list.map((c) => c.checkpoint),
      [...cps].sort((a, b) => b - a),
    );
    assert.deepEqual(
      (await listCheckpoints(store, { named: true })).map((c) => c.checkpoint).length,
      2,
    );
    assert.equal((await listCheckpoints(store, { limit: 2 })).length, 2);
    await deleteSnapshot(store, 'now');
    await assert.rejects(deleteSnapshot(store, 'now'), (e) =>
      isHyperError(e, 'SNAPSHOT_NOT_FOUND'),
    );
  });

  it('restore makes a new checkpoint with the old content, and can be undone', async () => {
    // The same requests whatever the history length and amount of data.
    const small = new CountingStore(MemStore.isolated());
    await history(small, 2);
    small.resetStats();
    await restoreVolume(small, { checkpoint: 2 });
    const store = new CountingStore(MemStore.isolated());
    const refs = await history(store, 24);
    const cps = [...refs.keys()];
    const target = cps[2] as number;
    const latest = cps.at(-1) as number;
    const dry = await restoreVolume(store, { checkpoint: target }, { dryRun: true });
    assert.equal(dry.checkpoint, undefined);
    assert.equal((await Volume.open(store, { readOnly: true })).info.checkpoint, latest);
    store.resetStats();
    const r = await restoreVolume(store, { checkpoint: target });
    const st = store.stats();
    const ss = small.stats();
    assert.deepEqual(
      [st.get, st.put, st.list, st.head],
      [ss.get, ss.put, ss.list, ss.head],
      `restore requests: ${JSON.stringify(st)}`,
    );
    assert.ok(st.get + st.put + st.list + st.head <= 16);
    assert.ok((r.checkpoint as number) > latest);
    assert.equal(
      sha(await contentAt(store, r.checkpoint as number)),
      sha(refs.get(target) as Buffer),
    );
    // Undo: restore the checkpoint that was current before.
    const undo = await restoreVolume(store, { checkpoint: latest });
    assert.equal(
      sha(await contentAt(store, undo.checkpoint as number)),
      sha(refs.get(latest) as Buffer),
    );
    const list = await listCheckpoints(store, { limit: 2 });
    assert.equal(list[0]?.restoredFrom, latest);
    await assert.rejects(restoreVolume(store, { checkpoint: 999 }), (e) =>
      isHyperError(e, 'CHECKPOINT_NOT_FOUND'),
    );
  });

  it('restore by time picks the last checkpoint at or before it', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: SIZE });
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    const times: { cp: number; t: number }[] = [];
    for (let i = 0; i < 4; i++) {
      await v.write(0, Buffer.alloc(4096, i + 1));
      const c = await v.flush();
      times.push({ cp: c.checkpoint, t: c.time.getTime() });
      await new Promise((r) => setTimeout(r, 15));
    }
    await v.close();
    const second = times[1] as { cp: number; t: number };
    const exact = await restoreVolume(store, { time: new Date(second.t) }, { dryRun: true });
    assert.equal(exact.target, second.cp);
    const between = await restoreVolume(store, { time: new Date(second.t + 5) }, { dryRun: true });
    assert.equal(between.target, second.cp);
    await assert.rejects(restoreVolume(store, { time: new Date(0) }), (e) =>
      isHyperError(e, 'CHECKPOINT_NOT_FOUND'),
    );
  });

  it('diff lists exactly the blocks whose content differs', async () => {
    const store = MemStore.isolated();
    const refs = await history(store, 6, 3);
    const cps = [...refs.keys()];
    for (const [a, b] of [
      [cps[1], cps[4]],
      [cps[0], cps.at(-1)],
      [cps[3], cps[4]],
    ] as [number, number][]) {
      const got = await diffCheckpoints(store, { checkpoint: a }, { checkpoint: b });
      const ra = refs.get(a) as Buffer;
      const rb = refs.get(b) as Buffer;
      const changed = new Set<number>();
      for (const e of got)
        for (let o = e.offset; o < e.offset + e.length; o += 4096) changed.add(o);
      for (let o = 0; o < SIZE; o += 4096) {
        const differs = !ra.subarray(o, o + 4096).equals(rb.subarray(o, o + 4096));
        if (differs)
          assert.ok(
            changed.has(o),
            `block at ${o} differs between ${a} and ${b} but is not in the diff`,
          );
      }
      // Nothing outside the blocks that were written between the two.
      assert.ok(changed.size <= ((b - a) * 8 * 64 * KiB) / 4096);
    }
  });
});

describe('compaction', () => {
  it('keep-last 1 drops history, keeps named snapshots exact, and brings stored bytes near live bytes', async () => {
    const store = MemStore.isolated();
    const refs = await history(store, 12, 5);
    const cps = [...refs.keys()];
    const pinnedCp = cps[4] as number;
    await createSnapshot(store, 'keep-me', { checkpoint: pinnedCp });
    const before = await statVolume(store);
    const r = await compactVolume(store, { keepLast: 1, graceMs: 0 });
    const after = await statVolume(store);
    assert.ok(r.segmentsDeleted > 0);
    assert.ok(r.checkpointsDropped >= 10, `dropped ${r.checkpointsDropped}`);
    assert.ok(after.storedBytes < before.storedBytes);
    const latest = cps.at(-1) as number;
    // The current content and the named snapshot read back exactly.
    const cur = await Volume.open(store, { readOnly: true });
    assert.equal(sha(await cur.read(0, SIZE)), sha(refs.get(latest) as Buffer));
    assert.equal(sha(await contentAt(store, pinnedCp)), sha(refs.get(pinnedCp) as Buffer));
    // Dropped checkpoints are gone, not silently wrong.
    await assert.rejects(Volume.open(store, { at: { checkpoint: cps[6] as number } }), (e) =>
      isHyperError(e, 'CHECKPOINT_NOT_FOUND'),
    );
    const list = await listCheckpoints(store);
    assert.ok(list.length <= 3, `left: ${list.map((c) => c.checkpoint).join(',')}`);
    // A second run has nothing left to do.
    const again = await compactVolume(store, { keepLast: 1, graceMs: 0 });
    assert.equal(again.segmentsDeleted, 0);
    // Unpin and compact: stored bytes come close to live bytes.
    await deleteSnapshot(store, 'keep-me');
    const fin = await compactVolume(store, { keepLast: 1, graceMs: 0 });
    const s = await statVolume(store);
    assert.ok(
      s.storedBytes <= 1.15 * fin.liveBytes + 64 * KiB,
      `stored ${s.storedBytes} live ${fin.liveBytes}`,
    );
    const v = await Volume.open(store, { readOnly: true });
    assert.equal(sha(await v.read(0, SIZE)), sha(refs.get(latest) as Buffer));
  });

  it('keep-last N never brings back checkpoints an earlier run dropped (the floor only rises)', async () => {
    const store = MemStore.isolated();
    const refs = await history(store, 10, 7);
    const cps = [...refs.keys()];
    // Named snapshots low in the history; keep-last 2 drops everything between them and the top
    // (segments that later checkpoints still read stay).
    await createSnapshot(store, 'old', { checkpoint: cps[3] as number });
    await createSnapshot(store, 'older', { checkpoint: cps[1] as number });
    await compactVolume(store, { keepLast: 2, graceMs: 0 });
    const kept = (await listCheckpoints(store)).map((c) => c.checkpoint);
    const floor = Math.min(...kept.filter((c) => c > (cps[3] as number)));
    // One snapshot goes, so the next run commits; keep-last 4 counts the other among the
    // newest four. The floor must not follow it down: the checkpoints it dropped (whose
    // segments may be deleted, or kept only for newer checkpoints' blocks) stay dropped.
    await deleteSnapshot(store, 'older');
    const r = await compactVolume(store, { keepLast: 4, graceMs: 0 });
    assert.equal(r.checkpointsDropped, 1, JSON.stringify(r));
    const after = (await listCheckpoints(store)).map((c) => c.checkpoint);
    for (const id of after)
      assert.ok(
        id === cps[3] || id >= floor,
        `checkpoint ${id} came back (before ${kept.join(',')}, now ${after.join(',')})`,
      );
    for (const id of after)
      if (refs.has(id)) assert.equal(sha(await contentAt(store, id)), sha(refs.get(id) as Buffer));
  });

  it('a pin left naming a checkpoint an earlier run dropped does not bring it back once it is not whole', async () => {
    // A clone whose pin PUT landed although it failed leaves a record naming its checkpoint;
    // a compaction may drop that checkpoint and delete what only it reached, keeping its own
    // segment for later checkpoints. The next compaction used to put it back into the history
    // (a retained checkpoint that no longer reads) and then fail on what was missing.
    const store = MemStore.isolated();
    const refs = await history(store, 12, 9);
    await compactVolume(store, { keepLast: 2, graceMs: 0, minLive: 0 });
    const retained = new Set((await listCheckpoints(store)).map((c) => c.checkpoint));
    const present: number[] = [];
    for await (const page of store.list(SEGMENT_PREFIX))
      for (const o of page.objects) present.push(parseSegmentKey(o.key) as number);
    const dropped = present.filter((id) => refs.has(id) && !retained.has(id));
    assert.ok(dropped.length > 0, 'dropped checkpoints whose segments later ones still read');
    await leavePins(store, dropped);
    const { warned, logger } = warnings();
    // A write, so that the run commits (and reads the pins after its commit).
    const v = await Volume.open(store, { flushIntervalMs: 0 });
    await v.write(0, Buffer.alloc(4096, 7));
    await v.close();
    await compactVolume(store, { keepLast: 2, graceMs: 0, minLive: 0, logger });
    assert.ok(
      warned.some((m) => /no longer whole/.test(m)),
      `some dropped checkpoint was missing pieces: ${warned.join(' | ')}`,
    );
    // Nothing missing or corrupt; every checkpoint the history names reads its content.
    const chk = await checkVolume(store, { deep: true });
    assert.deepEqual(
      chk.problems.filter((p) => p.kind === 'missing' || p.kind === 'corrupt'),
      [],
    );
    for (const c of await listCheckpoints(store)) {
      const got = await contentAt(store, c.checkpoint);
      const want = refs.get(c.checkpoint);
      if (want) assert.equal(sha(got), sha(want), `checkpoint ${c.checkpoint}`);
    }
  });

  it("a clone's pinned checkpoint that is whole comes back, blocks read from its parent included", async () => {
    // With a long grace period a run drops checkpoints but deletes nothing: each stays whole.
    // Those of a clone read most blocks from the parent's segments, which are not the
    // clone's own objects and must not count as missing.
    const root = MemStore.isolated('mem://whole/');
    const parent = root.sub('parent/') as MemStore;
    const child = root.sub('child/') as MemStore;
    const byUrl = new Map([
      [parent.url, parent],
      [child.url, child],
    ]);
    const openStore = (url: string): Promise<MemStore> =>
      Promise.resolve(byUrl.get(url) as MemStore);
    const refs = await history(parent, 3, 11);
    await cloneVolume(parent, { checkpoint: Math.max(...refs.keys()) }, child, { openStore });
    const cv = await Volume.open(child, { flushIntervalMs: 0, openStore });
    const made: number[] = [];
    for (let r = 0; r < 6; r++) {
      await cv.write(r * 64 * KiB, Buffer.alloc(64 * KiB, 1 + r));
      made.push((await cv.flush()).checkpoint);
    }
    await cv.close();
    const hour = 3_600_000;
    await compactVolume(child, { keepLast: 1, graceMs: hour, minLive: 0, openStore });
    const retained = new Set((await listCheckpoints(child)).map((c) => c.checkpoint));
    const dropped = made.filter((id) => !retained.has(id));
    assert.ok(dropped.length >= 4, `dropped ${dropped.join(',')}`);
    await leavePins(child, dropped);
    const { warned, logger } = warnings();
    await compactVolume(child, { keepLast: 1, graceMs: hour, minLive: 0, openStore, logger });
    assert.deepEqual(warned, []);
    const back = new Set((await listCheckpoints(child)).map((c) => c.checkpoint));
    for (const id of dropped) assert.ok(back.has(id), `checkpoint ${id} is kept again`);
  });

  it('respects the grace period and dry runs change nothing', async () => {
    const store = new CountingStore(MemStore.isolated());
    await history(store, 6);
    const dry = await compactVolume(store, { keepLast: 1, dryRun: true, graceMs: 0 });
    assert.equal(dry.dryRun, true);
    assert.ok(dry.segmentsDeleted > 0 && dry.bytesReclaimed > 0);
    store.resetStats();
    await compactVolume(store, { keepLast: 1, dryRun: true });
    assert.equal(store.stats().put + store.stats().delete, 0, 'a dry run writes nothing');
    // Default grace: the first run records the new history but deletes nothing reachable before it.
    const first = await compactVolume(store, { keepLast: 1 });
    assert.equal(first.segmentsDeleted, 0);
    assert.ok(first.segmentsDeferred > 0);
    // Once the grace period has passed (0 here), a rerun deletes them.
    const second = await compactVolume(store, { keepLast: 1, graceMs: 0 });
    assert.ok(second.segmentsDeleted > 0);
  });

  it('a dry run reports what the real run then does, grace period and rewrites included', async () => {
    const pick = (r: CompactResult) => ({
      checkpointsAfter: r.checkpointsAfter,
      checkpointsDropped: r.checkpointsDropped,
      segmentsDeleted: r.segmentsDeleted,
      segmentsDeferred: r.segmentsDeferred,
      bytesReclaimed: r.bytesReclaimed,
      segmentsRewritten: r.segmentsRewritten,
    });
    const cases: CompactOptions[] = [
      { keepLast: 1 }, // default grace: the new history deletes nothing yet
      { keepLast: 1 }, // again: still inside the grace period of the first run's history
      { keepLast: 2, graceMs: 0, minLive: 0 },
      { keepLast: 1, graceMs: 0 },
      { keepLast: 3, graceMs: 0, minLive: 0.95 },
      { graceMs: 0 },
    ];
    // Rewrites under grace 0: the current checkpoint dropped (keep-last 1) or kept (2).
    const rewriting: CompactOptions[] = [{ keepLast: 1, graceMs: 0 }, ...cases];
    for (const [seed, rounds, list] of [
      [3, 6, cases],
      [4, 9, cases],
      [5, 7, rewriting],
      [6, 8, [{ keepLast: 2, graceMs: 0 }, ...cases]],
    ] as const) {
      const store = MemStore.isolated();
      await history(store, rounds, seed);
      for (const o of list) {
        const v = await Volume.open(store, { flushIntervalMs: 0 });
        await v.write(0, Buffer.alloc(64 * KiB, seed));
        await v.flush();
        await v.close();
        const dry = await compactVolume(store, { ...o, dryRun: true });
        const real = await compactVolume(store, o);
        assert.deepEqual(pick(dry), pick(real), `seed ${seed}, ${JSON.stringify(o)}`);
      }
    }
  });

  it('randomized history: every retained checkpoint reads back its reference after each step', async () => {
    const store = MemStore.isolated();
    await Volume.create(store, { size: 2 * MiB, segmentSize: 1 * MiB });
    const rand = rng(11);
    const refs = new Map<number, string>();
    let ref: Buffer = Buffer.alloc(2 * MiB);
    let vol = await Volume.open(store, { flushIntervalMs: 0 });
    refs.set(vol.info.checkpoint, sha(ref));
    let names = 0;
    const verifyRetained = async (): Promise<void> => {
      const list = await listCheckpoints(store);
      for (const c of list) {
        const want = refs.get(c.checkpoint);
        assert.ok(want, `checkpoint ${c.checkpoint} has no reference`);
        assert.equal(sha(await contentAt(store, c.checkpoint)), want, `checkpoint ${c.checkpoint}`);
      }
    };
    for (let step = 0; step < 150; step++) {
      const r = rand();
      if (r < 0.55) {
        const off = Math.floor(rand() * 2 * MiB - 1);
        const len = Math.min(2 * MiB - off, 1 + Math.floor(rand() * 40 * KiB));
        const data = Buffer.alloc(len, 1 + Math.floor(rand() * 250));
        await vol.write(off, data);
        data.copy(ref, off);
      } else if (r < 0.65) {
        const off = Math.floor(rand() * 2 * MiB);
        const len = Math.min(2 * MiB - off, Math.floor(rand() * 100 * KiB));
        await vol.writeZeroes(off, len);
        ref.fill(0, off, off + len);
      } else if (r < 0.8) {
        const c = await vol.flush();
        refs.set(c.checkpoint, sha(ref));
      } else if (r < 0.85) {
        const c = await vol.flush();
        refs.set(c.checkpoint, sha(ref));
        await createSnapshot(store, `s${names++}`);
      } else if (r < 0.92) {
        // restore a random retained checkpoint
        const c = await vol.flush();
        refs.set(c.checkpoint, sha(ref));
        await vol.close();
        const list = await listCheckpoints(store);
        const pick = list[Math.floor(rand() * list.length)] as { checkpoint: number };
        const res = await restoreVolume(store, { checkpoint: pick.checkpoint });
        // Restoring the current checkpoint commits nothing (res.checkpoint is absent).
        const now = res.checkpoint ?? res.from;
        ref = await contentAt(store, now);
        assert.equal(sha(ref), refs.get(pick.checkpoint));
        refs.set(now, sha(ref));
        vol = await Volume.open(store, { flushIntervalMs: 0 });
      } else {
        const c = await vol.flush();
        refs.set(c.checkpoint, sha(ref));
        await vol.close();
        const res = await compactVolume(store, {
          keepLast: 1 + Math.floor(rand() * 4),
          graceMs: 0,
          minLive: rand(),
        });
        const v2 = await Volume.open(store, { readOnly: true });
        assert.equal(sha(await v2.read(0, 2 * MiB)), sha(ref), 'compaction changed the content');
        // Checkpoints compaction itself made (rewrite, history) have the current content.
        for (let id = c.checkpoint + 1; id <= res.checkpoint; id++) refs.set(id, sha(ref));
        await verifyRetained();
        vol = await Volume.open(store, { flushIntervalMs: 0 });
      }
    }
    const last = await vol.flush();
    refs.set(last.checkpoint, sha(ref));
    await vol.close();
    await verifyRetained();
  });
});

describe('readers of a checkpoint a compaction drops', () => {
  it('fail with CHECKPOINT_NOT_FOUND, not as damage; a segment lost from a kept one still is', async () => {
    const mem = MemStore.isolated();
    const [first, , third] = await overwrittenThrice(mem);
    // Opened before the compaction (its head read): the segments go while it reads.
    const old = await Volume.open(mem, {
      readOnly: true,
      at: { checkpoint: first },
      dataCacheBytes: 0,
      nodeCacheBytes: 0,
    });
    const current = await Volume.open(mem, { readOnly: true, dataCacheBytes: 0 });
    const c = await compactVolume(mem, { keepLast: 1, graceMs: 0 });
    assert.ok(c.segmentsDeleted >= 2);
    await assert.rejects(
      old.read(0, 4 * MiB),
      (e) =>
        isHyperError(e, 'CHECKPOINT_NOT_FOUND') &&
        e.kind === 'not-found' &&
        /dropped while it was being read/.test(e.message) &&
        /--grace/.test(e.suggestion ?? ''),
    );
    // The current checkpoint is kept: it reads on.
    assert.equal((await current.read(0, 4096))[0], 3);
    await old.close();
    await current.close();

    // A segment gone from a checkpoint the volume still keeps is damage, named by key.
    await mem.delete([segmentKey(third)]);
    await assert.rejects(
      (async () => {
        const x = await Volume.open(mem, { readOnly: true, dataCacheBytes: 0 });
        try {
          await x.read(0, 4 * MiB);
        } finally {
          await x.close();
        }
      })(),
      (e) => isHyperError(e, 'MISSING_OBJECT') && /seg\/0+4/.test(e.message),
    );
  });
});

describe('listing checkpoints while a compaction drops some', () => {
  it('leaves out those dropped meanwhile instead of failing', async () => {
    const mem = MemStore.isolated();
    const [, second, third] = await overwrittenThrice(mem);
    // The listing (newest first) stops at its read of the second checkpoint's head, after
    // its LIST of seg/; the compaction deletes that segment meanwhile.
    const listing = await whileHeldAt(mem, segmentKey(second), listCheckpoints, () =>
      compactVolume(mem, { keepLast: 1, graceMs: 0 }),
    );
    const ids = listing.map((c) => c.checkpoint);
    assert.ok(!ids.includes(second), ids.join(','));
    assert.ok(ids.includes(third), ids.join(','));
  });

  it('file stat --space says a checkpoint was dropped under it, not that the volume is damaged', async () => {
    const mem = MemStore.isolated();
    const [first] = await overwrittenThrice(mem);
    const stat = whileHeldAt(
      mem,
      segmentKey(first),
      (view) => statVolume(view, { space: true }),
      () => compactVolume(mem, { keepLast: 1, graceMs: 0 }),
    );
    await assert.rejects(stat, (e) => isHyperError(e, 'CHECKPOINT_NOT_FOUND'));
    // Run again, it sees the volume as it is now.
    assert.ok((await statVolume(mem, { space: true })).space);
  });
});

describe('clones', () => {
  it('a clone whose pin PUT lands but fails leaves no pin behind', async () => {
    const root = MemStore.isolated('mem://pinfail/');
    const parent = root.sub('parent/') as MemStore;
    const child = root.sub('child/') as MemStore;
    await history(parent, 2, 3);
    // The parent's store applies the pin, then reports a failure (a reply lost on the way).
    const put = parent.put.bind(parent);
    parent.put = async (key, body, options) => {
      const r = await put(key, body, options);
      if (key.startsWith('pin/'))
        throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'reply lost');
      return r;
    };
    await assert.rejects(
      cloneVolume(parent, { checkpoint: 2 }, child),
      (e: unknown) => isHyperError(e) && e.code === 'STORE_UNAVAILABLE',
    );
    const pins: string[] = [];
    for await (const page of parent.list('pin/')) pins.push(...page.objects.map((o) => o.key));
    assert.deepEqual(pins, []);
  });

  it('a clone into the remains of an interrupted one says so; file delete clears them', async () => {
    const root = MemStore.isolated('mem://remains/');
    const parent = root.sub('parent/') as MemStore;
    const child = root.sub('child/') as MemStore;
    const openStore = (url: string): Promise<MemStore> =>
      Promise.resolve(root.sub(url.slice(root.url.length)) as MemStore);
    await history(parent, 2, 3);
    // A clone that dies after its first segment and its pin: its head never lands, and it
    // cleans nothing up.
    const dead = new HyperError('unavailable', 'STORE_UNAVAILABLE', 'the process died');
    const { put, delete: del } = { put: child.put.bind(child), delete: child.delete.bind(child) };
    const parentDelete = parent.delete.bind(parent);
    let died = false;
    child.put = (key, body, options) => {
      if (key === 'head') died = true;
      return died ? Promise.reject(dead) : put(key, body, options);
    };
    child.delete = (keys) => (died ? Promise.reject(dead) : del(keys));
    parent.delete = (keys) => (died ? Promise.reject(dead) : parentDelete(keys));
    await assert.rejects(cloneVolume(parent, { checkpoint: 2 }, child, { openStore }));
    Object.assign(child, { put, delete: del });
    parent.delete = parentDelete;
    // Cloning there again names what is in the way and how to clear it.
    await assert.rejects(
      cloneVolume(parent, { checkpoint: 2 }, child, { openStore }),
      (e: unknown) =>
        isHyperError(e, 'VOLUME_EXISTS') &&
        /hyper file delete mem:\/\/remains\/child\//.test(e.suggestion ?? ''),
    );
    const d = await deleteVolume(child, { openStore });
    assert.equal(d.pin?.released, true, 'the delete did not release the dead clone’s pin');
    let pins = 0;
    for await (const page of parent.list('pin/')) pins += page.objects.length;
    assert.equal(pins, 0);
    const r = await cloneVolume(parent, { checkpoint: 2 }, child, { openStore });
    assert.equal(r.checkpoint, 2);
  });

  it('share the parent copy-on-write, survive parent compaction, and flatten', async () => {
    const root = MemStore.isolated('mem://clones/');
    const parent = root.sub('parent/') as MemStore;
    const child = root.sub('child/') as MemStore;
    const grandchild = root.sub('grandchild/') as MemStore;
    const byUrl = new Map<string, MemStore>([
      [parent.url, parent],
      [child.url, child],
    ]);
    const openStore = (url: string): Promise<MemStore> =>
      Promise.resolve(byUrl.get(url) as MemStore);
    const refs = await history(parent, 6, 9);
    const cps = [...refs.keys()];
    const from = cps[3] as number;
    const before = await statVolume(parent);
    const c = await cloneVolume(parent, { checkpoint: from }, child, { openStore });
    assert.equal(c.checkpoint, from);
    assert.equal(c.clone.parent?.url, parent.url);
    // No data was copied: the child holds one small segment and a head.
    const childStat = await statVolume(child);
    assert.equal(childStat.segments, 1);
    assert.ok(childStat.storedBytes < 64 * KiB);
    assert.equal((await statVolume(parent)).segments, before.segments);
    // The clone reads the parent's checkpoint; writes on either side stay on that side.
    let cv = await Volume.open(child, { flushIntervalMs: 0, openStore });
    assert.equal(sha(await cv.read(0, SIZE)), sha(refs.get(from) as Buffer));
    await cv.write(0, Buffer.alloc(64 * KiB, 0x77));
    await cv.close();
    const childRef = Buffer.from(refs.get(from) as Buffer);
    childRef.fill(0x77, 0, 64 * KiB);
    const pv = await Volume.open(parent, { flushIntervalMs: 0 });
    await pv.write(64 * KiB, Buffer.alloc(64 * KiB, 0x99));
    await pv.close();
    // Compaction of the parent keeps the pinned checkpoint's data.
    await compactVolume(parent, { keepLast: 1, graceMs: 0 });
    cv = await Volume.open(child, { readOnly: true, openStore });
    assert.equal(sha(await cv.read(0, SIZE)), sha(childRef));
    // A clone of the clone reads through two parents.
    byUrl.set(grandchild.url, grandchild);
    await cloneVolume(child, { checkpoint: (await statVolume(child)).checkpoint }, grandchild, {
      openStore,
    });
    const gv = await Volume.open(grandchild, { readOnly: true, openStore });
    assert.equal(sha(await gv.read(0, SIZE)), sha(childRef));
    // Flatten the grandchild, then the child: each reads the same and drops its link.
    const fg = await flattenVolume(grandchild, { openStore });
    assert.ok(fg.blocksCopied > 0);
    const f = await flattenVolume(child, { openStore });
    assert.ok(f.blocksCopied > 0);
    assert.equal((await statVolume(child)).parent, undefined);
    let pins = 0;
    for await (const p of parent.list('pin/')) pins += p.objects.length;
    assert.equal(pins, 0, 'flatten releases the pin');
    // The parent may now drop the checkpoint entirely; the flattened child does not care.
    await compactVolume(parent, { keepLast: 1, graceMs: 0 });
    await compactVolume(child, { keepLast: 1, graceMs: 0, openStore });
    byUrl.delete(parent.url);
    cv = await Volume.open(child, { readOnly: true, openStore });
    assert.equal(sha(await cv.read(0, SIZE)), sha(childRef));
    const g2 = await Volume.open(grandchild, { readOnly: true, openStore });
    assert.equal(sha(await g2.read(0, SIZE)), sha(childRef));
  });
});
