import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../../src/errors.js';
import { HEAD_KEY, segmentKey } from '../../../../src/format/keys.js';
import { CountingStore } from '../../../../src/format/store/counting.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type { PutBody, PutOptions } from '../../../../src/format/store/types.js';
import { Committer, SerialQueue } from '../../../../src/format/volume/commit.js';
import { createVolume } from '../../../../src/format/volume/create.js';
import { nextHead } from '../../../../src/format/volume/flush.js';
import { readHead, rootOf } from '../../../../src/format/volume/heads.js';
import { silentLogger } from '../../../../src/format/volume/types.js';
import { buildCheckpoint } from '../../../../src/format/volume/segment-builder.js';

/** A store whose next head PUT lands and then reports failure (a lost reply). */
class LostReplyStore extends CountingStore {
  loseNextHeadReply = false;
  override async put(key: string, body: PutBody, o?: PutOptions): Promise<{ etag: string }> {
    const r = await super.put(key, body, o);
    if (key === HEAD_KEY && this.loseNextHeadReply) {
      this.loseNextHeadReply = false;
      throw new Error('connection reset after the head was written');
    }
    return r;
  }
}

const lease = (holder: string, minEpoch: number, force = false) => ({
  holder,
  ttlMs: 60_000,
  force,
  minEpoch,
});

/** An empty checkpoint on top of the committer's newest head. */
const emptyCheckpoint = (c: Committer) => (id: number) => {
  const nowMs = Date.now();
  return buildCheckpoint({
    id,
    nowMs,
    head: nextHead(c.head, { id, nowMs, size: c.head.size, patch: {}, walSeq: undefined }),
    root: rootOf(c.head),
    nodes: [],
    nodeSize: 4096,
    blockSize: 4096,
    lbas: [],
    blocks: [],
    crcs: [],
  });
};

async function volume(store = MemStore.isolated()) {
  await createVolume(store, { size: 1 << 20 });
  return store;
}

describe('committer', () => {
  it('takes over under a higher epoch and records stray segments as skipped', async () => {
    const store = await volume();
    await store.put(segmentKey(2), Buffer.from('a flush that never committed'));
    const c = await Committer.takeOver(store, lease('a', 0), silentLogger);
    assert.equal(c.head.epoch, 1);
    assert.deepEqual(c.head.skipped, [2]);
    assert.equal(c.head.lastSegment, 2);
    const stored = (await readHead(store)).head;
    assert.equal(stored.epoch, 1, 'the head is rewritten under the new epoch');
    const built = await c.writeSegment(emptyCheckpoint(c));
    assert.equal(built.head.checkpoint, 3, 'the next free id');
    await c.publish(built);
    assert.equal((await readHead(store)).head.checkpoint, 3);
    await c.release();
  });

  it('skips every id up to the highest stray one, and refuses an object far past the head', async () => {
    const store = await volume();
    // An old pipeline: ids 3 and 5 landed before the takeover listed, 2 and 4 may land later.
    for (const id of [3, 5]) await store.put(segmentKey(id), Buffer.from('never committed'));
    const c = await Committer.takeOver(store, lease('a', 0), silentLogger);
    assert.deepEqual(c.head.skipped, [2, 3, 4, 5]);
    await c.release();
    await store.put(segmentKey(2 ** 40), Buffer.from('not ours'));
    await assert.rejects(
      Committer.takeOver(store, lease('b', 0), silentLogger),
      (e) => isHyperError(e, 'CORRUPT_OBJECT') && e.key === segmentKey(2 ** 40),
    );
    const head = (await readHead(store)).head;
    assert.equal(head.skipped.length, 4, 'the head is unchanged');
  });

  it('a takeover fences the old writer: its next commit fails and the epoch never goes down', async () => {
    const store = await volume();
    const a = await Committer.takeOver(store, lease('a', 0), silentLogger);
    const b = await Committer.takeOver(store, lease('b', a.head.epoch, true), silentLogger);
    assert.ok(b.head.epoch > a.head.epoch);
    // a writes a segment (create-only: id free) but its head CAS meets b's epoch.
    const built = await a.writeSegment(emptyCheckpoint(a));
    await assert.rejects(a.publish(built), (e) => isHyperError(e, 'FENCED'));
    assert.throws(
      () => a.check(),
      (e) => isHyperError(e, 'FENCED'),
    );
    assert.equal((await readHead(store)).head.epoch, b.head.epoch);
    // b's next commit skips the id a used (never committed).
    const mine = await b.writeSegment(emptyCheckpoint(b));
    await b.publish(mine);
    const h = (await readHead(store)).head;
    assert.equal(h.epoch, b.head.epoch);
    assert.ok(h.skipped.includes(built.head.checkpoint));
    await b.release();
    await a.release();
  });

  it('a head CAS that landed but reported failure is adopted, not demoted to skipped', async () => {
    const store = new LostReplyStore(MemStore.isolated());
    await volume(store as unknown as MemStore);
    const c = await Committer.takeOver(store, lease('a', 0), silentLogger);
    const first = await c.writeSegment(emptyCheckpoint(c));
    const n = first.head.checkpoint;
    store.loseNextHeadReply = true;
    // The flush reports failure; in memory the committer still stands at n - 1.
    await assert.rejects(c.publish(first), /connection reset/);
    assert.equal((await readHead(store)).head.checkpoint, n, 'but the head did land');
    // The retried flush finds id n taken and reads the head: that is our own commit.
    const next = await c.writeSegment(emptyCheckpoint(c));
    assert.equal(next.head.checkpoint, n + 1);
    assert.equal(next.head.prevCheckpoint, n);
    await c.publish(next);
    const h = (await readHead(store)).head;
    assert.equal(h.checkpoint, n + 1);
    assert.ok(!h.skipped.includes(n), `checkpoint ${n} stays committed (skipped: ${h.skipped})`);
    await c.release();
  });
});

describe('serial queue', () => {
  it('runs jobs one at a time in order; a queued shared job is joined, a started one is not', async () => {
    let settled = 0;
    const q = new SerialQueue<number>(() => settled++);
    const log: string[] = [];
    let running = 0;
    const job = (name: string, v: number) => async () => {
      running++;
      assert.equal(running, 1, 'never two at once');
      log.push(`start ${name}`);
      await new Promise((r) => setTimeout(r, 5));
      log.push(`end ${name}`);
      running--;
      return v;
    };
    const a = q.run(job('a', 1));
    const s1 = q.runShared(job('s1', 2));
    const s2 = q.runShared(job('s2', 3)); // joins s1: queued, not started
    assert.equal(s1, s2);
    assert.ok(q.busy);
    assert.deepEqual(await Promise.all([a, s1, s2]), [1, 2, 2]);
    const s3 = q.runShared(job('s3', 4)); // s1 is done: a new one
    assert.equal(await s3, 4);
    assert.deepEqual(log, ['start a', 'end a', 'start s1', 'end s1', 'start s3', 'end s3']);
    assert.equal(settled, 3);
    assert.equal(q.busy, false);
  });
});
