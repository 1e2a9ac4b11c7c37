import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HyperError, isHyperError } from '../../../../src/errors.js';
import type { HeadRecord } from '../../../../src/format/codec/head.js';
import { HEAD_KEY, segmentKey } from '../../../../src/format/keys.js';
import { CountingStore } from '../../../../src/format/store/counting.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type { PutBody, PutOptions } from '../../../../src/format/store/types.js';
import { Committer, SerialQueue } from '../../../../src/format/volume/commit.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import { createVolume } from '../../../../src/format/volume/create.js';
import { nextHead } from '../../../../src/format/volume/flush.js';
import {
  readCheckpointHead,
  readHead,
  readStoredHead,
  rootOf,
} from '../../../../src/format/volume/heads.js';
import { readLease } from '../../../../src/format/volume/lease.js';
import { silentLogger } from '../../../../src/format/volume/types.js';
import { buildCheckpoint } from '../../../../src/format/volume/segment-builder.js';
import { putLeftover } from '../../../helpers/checkpoint.js';

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

/** An empty checkpoint built on the committer's tip, at the next id (not yet written). */
const emptyCheckpoint = (c: Committer) => {
  const id = c.nextId();
  const nowMs = Date.now();
  const built = buildCheckpoint({
    id,
    nowMs,
    head: nextHead(c.tip, { id, nowMs, size: c.tip.size, patch: {}, walSeq: undefined }),
    root: rootOf(c.tip),
    nodes: [],
    nodeSize: 4096,
    blockSize: 4096,
    lbas: [],
    blocks: [],
    crcs: [],
  });
  c.built(built);
  return built;
};

/** Write an empty checkpoint: its segment lands (committed), the head CAS waits. */
async function land(c: Committer): Promise<HeadRecord> {
  const built = emptyCheckpoint(c);
  await c.putSegment(built);
  c.landed(built.head);
  return built.head;
}

/** A segment at `id` that continues nothing (a leftover of some writer of this volume). */
async function leftover(store: MemStore, id: number, epoch?: number): Promise<void> {
  await putLeftover(store, (await readHead(store)).head, id, epoch);
}

async function volume(store = MemStore.isolated()) {
  await createVolume(store, { size: 1 << 20 });
  return store;
}

describe('committer', () => {
  it('takes over under a higher epoch and records leftover segments as skipped', async () => {
    const store = await volume();
    await leftover(store, 2);
    const c = await Committer.takeOver(store, lease('a', 0), silentLogger);
    assert.equal(c.head.epoch, 1);
    assert.deepEqual(c.head.skipped, [2]);
    assert.equal(c.head.lastSegment, 2);
    assert.equal(c.head.checkpoint, 1, 'no previous holder: no fence');
    const stored = (await readStoredHead(store)).head;
    assert.equal(stored.epoch, 1, 'the head is rewritten under the new epoch');
    const h = await land(c);
    assert.equal(h.checkpoint, 3, 'the next free id');
    assert.equal((await c.publishPending())?.checkpoint, 3);
    assert.equal((await readStoredHead(store)).head.checkpoint, 3);
    await c.release();
  });

  it('skips every id up to the highest leftover after a clean release, and refuses an object far past the head', async () => {
    const store = await volume();
    for (const id of [3, 5]) await leftover(store, id);
    const c = await Committer.takeOver(store, lease('a', 0), silentLogger);
    assert.deepEqual(c.head.skipped, [2, 3, 4, 5]);
    await c.release();
    await store.put(segmentKey(2 ** 40), Buffer.from('not ours'));
    await assert.rejects(
      Committer.takeOver(store, lease('b', 0), silentLogger),
      (e) => isHyperError(e, 'CORRUPT_OBJECT') && e.key === segmentKey(2 ** 40),
    );
    const head = (await readStoredHead(store)).head;
    assert.equal(head.skipped.length, 4, 'the head is unchanged');
  });

  it('an object under seg/ past the head that does not decode: readers go on without it, a writer refuses to take over', async () => {
    const store = await volume();
    await store.put(segmentKey(2), Buffer.from('not a segment'));
    assert.equal((await readHead(store)).head.checkpoint, 1);
    await assert.rejects(
      Committer.takeOver(store, lease('a', 0), silentLogger),
      (e) => isHyperError(e) && e.kind === 'data' && e.key === segmentKey(2),
    );
    assert.equal((await readLease(store))?.lease.expiresMs, 0, 'the lease is given back');
  });

  it('a checkpoint is committed once its segment lands: readers and the next writer roll forward to it', async () => {
    const store = await volume();
    const a = await Committer.takeOver(store, lease('a', 0), silentLogger);
    const two = await land(a);
    const three = await land(a);
    assert.equal((await readStoredHead(store)).head.checkpoint, 1, 'the head object waits');
    assert.equal((await readHead(store)).head.checkpoint, three.checkpoint, 'readers roll forward');
    // a dies without a word; b takes over by force and continues the chain after a fence.
    a.fence(new HyperError('conflict', 'FENCED', 'test: a is gone'));
    const b = await Committer.takeOver(store, lease('b', a.head.epoch, true), silentLogger);
    assert.equal(b.head.prevCheckpoint, three.checkpoint);
    assert.equal(b.head.checkpoint, 4, 'the fence: an empty checkpoint at the next id');
    assert.deepEqual(b.head.skipped, []);
    const stored = (await readStoredHead(store)).head;
    assert.equal(stored.checkpoint, 4);
    assert.equal(stored.epoch, b.head.epoch);
    assert.equal((await readCheckpointHead(store, 3)).prevCheckpoint, two.checkpoint);
    await b.release();
  });

  it('a takeover fences the old writer: its next segment meets the fence and it commits nothing more', async () => {
    const store = await volume();
    const a = await Committer.takeOver(store, lease('a', 0), silentLogger);
    const b = await Committer.takeOver(store, lease('b', a.head.epoch, true), silentLogger);
    assert.ok(b.head.epoch > a.head.epoch);
    assert.equal(b.head.checkpoint, 2, 'the fence');
    const built = emptyCheckpoint(a);
    assert.equal(built.head.checkpoint, 2, 'a writes where the fence is');
    await assert.rejects(a.putSegment(built), (e) => isHyperError(e, 'FENCED'));
    assert.throws(
      () => a.check(),
      (e) => isHyperError(e, 'FENCED'),
    );
    assert.equal((await readHead(store)).head.checkpoint, 2);
    assert.equal((await readHead(store)).head.epoch, b.head.epoch);
    await b.release();
    await a.release();
  });

  it('a pipelined old writer: its segment past the fence never continues the chain, and the new writer skips its id', async () => {
    const store = await volume();
    const a = await Committer.takeOver(store, lease('a', 0), silentLogger);
    // a builds 2 and 3; only 3 lands before b takes over.
    const two = emptyCheckpoint(a);
    const three = emptyCheckpoint(a);
    await a.putSegment(three);
    const b = await Committer.takeOver(store, lease('b', a.head.epoch, true), silentLogger);
    assert.equal(b.head.checkpoint, 2, 'the fence takes the id a has in flight');
    await assert.rejects(a.putSegment(two), (e) => isHyperError(e, 'FENCED'));
    assert.equal((await readHead(store)).head.checkpoint, 2, '3 names 2 but under an older epoch');
    // b's next segment finds 3 taken by a's leftover: that id is skipped, not adopted.
    const mine = emptyCheckpoint(b);
    assert.equal(mine.head.checkpoint, 3);
    await assert.rejects(b.putSegment(mine), (e) => isHyperError(e, 'OBJECT_EXISTS'));
    b.abandon([3]);
    const h = await land(b);
    assert.equal(h.checkpoint, 4);
    assert.equal(h.prevCheckpoint, 2);
    assert.deepEqual(h.skipped, [3]);
    assert.equal((await readHead(store)).head.checkpoint, 4);
    await b.release();
  });

  it("the leftovers a fence skipped stay with it: compaction never frees an id the old writer's PUT may still reach", async () => {
    const store = await volume();
    const a = await Committer.takeOver(store, lease('a', 0), silentLogger);
    await land(a);
    // a's next segment is in flight; an older writer's leftover lands at its id first.
    const mine = emptyCheckpoint(a);
    const id = mine.head.checkpoint;
    await leftover(store, id, a.head.epoch - 1);
    const b = await Committer.takeOver(store, lease('b', a.head.epoch, true), silentLogger);
    assert.equal(b.head.checkpoint, id + 1, 'the fence goes past the leftover');
    assert.deepEqual(b.head.fences, [id, id + 1]);
    await b.release(true);
    // Compaction with no grace period keeps both (the leftover is skipped: uncommitted).
    await compactVolume(store, { keepLast: 1, graceMs: 0 });
    assert.ok(await store.head(segmentKey(id)), 'the leftover stays');
    assert.ok(await store.head(segmentKey(id + 1)), 'the fence stays');
    // So a's PUT meets the leftover (its changes would go to the next id: the fence).
    await assert.rejects(a.putSegment(mine), (e) => isHyperError(e, 'OBJECT_EXISTS'));
    await a.release().catch(() => undefined);
  });

  it('a segment that lands just before the fence is adopted, and the fence goes after it', async () => {
    const store = await volume();
    const a = await Committer.takeOver(store, lease('a', 0), silentLogger);
    const two = emptyCheckpoint(a);
    // a's PUT lands while b is between its listing and its fence.
    const racing = new RaceStore(store, segmentKey(2), () => a.putSegment(two));
    const b = await Committer.takeOver(racing, lease('b', a.head.epoch, true), silentLogger);
    assert.equal(b.head.prevCheckpoint, 2, 'a landed 2 first: it is committed');
    assert.equal(b.head.checkpoint, 3);
    await b.release();
  });

  it('a takeover that fails before its fence gives the lease back expired, not released: the next one fences', async () => {
    const mem = await volume();
    const a = await Committer.takeOver(mem, lease('a', 0), silentLogger);
    const failing = new FailingStore(mem, (key) => key.startsWith('seg/'));
    await assert.rejects(
      Committer.takeOver(failing, lease('b', a.head.epoch, true), silentLogger),
      /injected/,
    );
    const l = (await readLease(mem))?.lease;
    assert.ok(l && l.expiresMs > 0 && l.expiresMs <= Date.now(), `lease ${JSON.stringify(l)}`);
    // Free to take without --force; a is still writing, so c fences it.
    const c = await Committer.takeOver(mem, lease('c', a.head.epoch), silentLogger);
    assert.equal(c.head.checkpoint, 2, 'the fence');
    await assert.rejects(a.putSegment(emptyCheckpoint(a)), (e) => isHyperError(e, 'FENCED'));
    await c.release();
    assert.equal((await readLease(mem))?.lease.expiresMs, 0, 'c was done: released');
  });

  it('a takeover whose head CAS landed but was retried (and met its own write) takes the volume', async () => {
    const mem = await volume();
    const store = new RetriedCasStore(mem);
    const c = await Committer.takeOver(store, lease('a', 0), silentLogger);
    assert.equal(store.retried, 1);
    assert.equal((await readStoredHead(mem)).head.epoch, c.head.epoch);
    await land(c);
    await c.publishPending();
    await c.release();
  });

  it('a head CAS that landed but reported failure is adopted by the next one', async () => {
    const store = new LostReplyStore(MemStore.isolated());
    await volume(store as unknown as MemStore);
    const c = await Committer.takeOver(store, lease('a', 0), silentLogger);
    const first = await land(c);
    const n = first.checkpoint;
    store.loseNextHeadReply = true;
    await assert.rejects(c.publishPending(), /connection reset/);
    assert.equal((await readStoredHead(store)).head.checkpoint, n, 'but the head did land');
    const next = await land(c);
    assert.equal(next.checkpoint, n + 1);
    assert.equal(next.prevCheckpoint, n);
    await c.publishPending();
    const h = (await readStoredHead(store)).head;
    assert.equal(h.checkpoint, n + 1);
    assert.ok(!h.skipped.includes(n), `checkpoint ${n} stays committed (skipped: ${h.skipped})`);
    await c.release();
  });

  it('a segment PUT whose reply was lost is found landed when PUT again with the same bytes', async () => {
    const store = await volume();
    const c = await Committer.takeOver(store, lease('a', 0), silentLogger);
    const built = emptyCheckpoint(c);
    await store.put(segmentKey(built.head.checkpoint), Buffer.concat(built.parts));
    await c.putSegment(built);
    c.landed(built.head);
    await c.publishPending();
    assert.equal((await readStoredHead(store)).head.checkpoint, built.head.checkpoint);
    await c.release();
  });
});

/**
 * A store whose first head CAS lands, then reports a precondition failure: what a retrying
 * store answers when the reply of a CAS that landed was lost and its retry met it.
 */
class RetriedCasStore extends CountingStore {
  retried = 0;
  override async put(key: string, body: PutBody, o?: PutOptions): Promise<{ etag: string }> {
    const r = await super.put(key, body, o);
    if (key === HEAD_KEY && o?.ifMatch && this.retried === 0) {
      this.retried++;
      throw new HyperError('conflict', 'PRECONDITION_FAILED', 'injected: the retry met the CAS');
    }
    return r;
  }
}

/** A store whose PUTs of the keys `fails` picks fail before they land. */
class FailingStore extends CountingStore {
  constructor(
    inner: MemStore,
    private readonly fails: (key: string) => boolean,
  ) {
    super(inner);
  }
  override async put(key: string, body: PutBody, o?: PutOptions): Promise<{ etag: string }> {
    if (this.fails(key)) throw new Error(`injected failure on ${key}`);
    return super.put(key, body, o);
  }
}

/** A store that runs `race` once, right before the first create-only PUT of `key`. */
class RaceStore extends CountingStore {
  private raced = false;
  constructor(
    inner: MemStore,
    private readonly key: string,
    private readonly race: () => Promise<void>,
  ) {
    super(inner);
  }
  override async put(key: string, body: PutBody, o?: PutOptions): Promise<{ etag: string }> {
    if (key === this.key && !this.raced) {
      this.raced = true;
      await this.race();
    }
    return super.put(key, body, o);
  }
}

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
    const s1 = q.runShared('x', job('s1', 2));
    const s2 = q.runShared('x', job('s2', 3)); // joins s1: queued, not started
    const other = q.runShared('y', job('o', 5)); // another kind is queued on its own
    assert.equal(s1, s2);
    assert.notEqual(s1, other);
    assert.ok(q.busy);
    assert.deepEqual(await Promise.all([a, s1, s2, other]), [1, 2, 2, 5]);
    const s3 = q.runShared('x', job('s3', 4)); // s1 is done: a new one
    assert.equal(await s3, 4);
    assert.deepEqual(log, [
      'start a',
      'end a',
      'start s1',
      'end s1',
      'start o',
      'end o',
      'start s3',
      'end s3',
    ]);
    assert.equal(settled, 4);
    assert.equal(q.busy, false);
  });
});
