/**
 * Forced schedules of known data-loss races between compaction, clones, snapshots, takeovers
 * and deletes (the chaos harness, test/helpers/chaos.ts, finds them at random; these replay
 * each one exactly). A `ScriptedStore` runs another operation, or fails, at a chosen request
 * of the operation under test, e.g. "when compaction lists seg/ after committing its history,
 * let a forced writer take over and commit first".
 *
 * Each test asserts the outcome a user is promised, whatever the fix: the operations may fail,
 * but nothing acknowledged is lost and the volumes check clean afterwards.
 *
 *   1  compaction deletes a segment committed by a writer that took over while it ran
 *   2  an unreadable clone pin (store error, damaged record) counts as absent
 *   3  a failed clone (--flatten) removes the pin of a clone that still reads from its parent
 *   4  a pin or snapshot created while compaction runs is ignored by it
 *   8  deleting a volume destroys the clones that read from it (also one made while it runs)
 *   9  an unpin releases the pin of a clone being created (no head yet when it looks), or of
 *      one a flatten detached for a moment
 *  10  flatten releases the pin that a clone of the clone, made while it runs, reads through
 *  11  a flatten killed right after its detach commit leaves a pin that unpin releases and a
 *      volume that compacts, though a clone of it made meanwhile reads through both; a second
 *      flatten takes the lease over a volume the first one detached
 *  12  a writer reads a segment a forced compaction deleted: FENCED, or the store's error
 *      while the store fails the look at the head (never damage)
 *  13  a reader of a volume deleted under it: VOLUME_NOT_FOUND (never damage)
 *  14  a takeover finds its fence's id taken, and a newer takeover deletes that segment before
 *      it looks at it: FENCED (never damage)
 *  15  a segment a forced compaction deleted holds other bytes later (a stale takeover's fence
 *      landed at its free id): a writer reading it is FENCED, a reader of a checkpoint the
 *      compaction dropped gets CHECKPOINT_NOT_FOUND (never damage), also when it opens that
 *      checkpoint and finds the fence's head at its id (never the wrong tree)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HyperError, isHyperError } from '../../../../src/errors.js';
import { decodeHead, encodeHead } from '../../../../src/format/codec/head.js';
import {
  FLATTEN_KEY,
  HEAD_KEY,
  LEASE_KEY,
  PIN_PREFIX,
  SEGMENT_PREFIX,
  pinKey,
  segmentKey,
} from '../../../../src/format/keys.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type {
  GetOptions,
  GetResult,
  ListOptions,
  ListPage,
  ObjectMeta,
  ObjectStore,
  PutBody,
  PutOptions,
} from '../../../../src/format/store/types.js';
import { deleteVolume } from '../../../../src/format/volume/admin.js';
import { checkVolume } from '../../../../src/format/volume/check.js';
import {
  cloneVolume,
  flattenVolume,
  unpinClone,
  type FlattenResult,
} from '../../../../src/format/volume/clone.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import { readCheckpointHead, readHead } from '../../../../src/format/volume/heads.js';
import { buildEmptySegment } from '../../../../src/format/volume/segment-builder.js';
import { createSnapshot } from '../../../../src/format/volume/history.js';
import { KiB, MiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { joinBody } from '../../../../src/format/store/common.js';

// ------------------------------------------------------------------ the scripted store

type Op = 'get' | 'head' | 'put' | 'list' | 'delete';

interface Req {
  op: Op;
  /** The key (the prefix for a list, the first key for a delete). */
  key: string;
  body?: Buffer;
  options?: PutOptions;
}

interface Step {
  when: (r: Req) => boolean;
  /** Run this before the request is applied (another operation, "meanwhile"). */
  run?: () => Promise<void>;
  /** Fail the request before it is applied, or after (it lands, the caller gets an error). */
  fail?: 'before' | 'after';
  /** How many matching requests this step acts on (default 1). */
  times?: number;
  hits: number;
}

interface Script {
  steps: Step[];
  /** Called after every applied request (to follow the operation's progress). */
  seen?: (r: Req) => void;
}

const step = (s: Omit<Step, 'hits'>): Step => ({ ...s, hits: 0 });

const unavailable = (r: Req): HyperError =>
  new HyperError('unavailable', 'STORE_UNAVAILABLE', `scripted failure: ${r.op} ${r.key}`);

class ScriptedStore implements ObjectStore {
  readonly url: string;

  constructor(
    private readonly inner: ObjectStore,
    private readonly script: Script,
  ) {
    this.url = inner.url;
  }

  private async at(r: Req): Promise<'before' | 'after' | undefined> {
    for (const s of this.script.steps) {
      if (s.hits >= (s.times ?? 1) || !s.when(r)) continue;
      s.hits++;
      if (s.run) await s.run();
      if (s.fail) return s.fail;
    }
    return undefined;
  }

  private async do<T>(r: Req, fn: () => Promise<T>): Promise<T> {
    const f = await this.at(r);
    if (f === 'before') throw unavailable(r);
    const out = await fn();
    this.script.seen?.(r);
    if (f === 'after') throw unavailable(r);
    return out;
  }

  get(key: string, options?: GetOptions): Promise<GetResult> {
    return this.do({ op: 'get', key }, () => this.inner.get(key, options));
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectMeta | undefined> {
    return this.do({ op: 'head', key }, () => this.inner.head(key, options));
  }

  put(key: string, body: PutBody, options?: PutOptions): Promise<{ etag: string }> {
    return this.do({ op: 'put', key, body: joinBody(body), ...(options ? { options } : {}) }, () =>
      this.inner.put(key, body, options),
    );
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ListPage> {
    const pages = await this.do({ op: 'list', key: prefix }, async () => {
      const out: ListPage[] = [];
      for await (const p of this.inner.list(prefix, options)) out.push(p);
      return out;
    });
    yield* pages;
  }

  delete(keys: readonly string[], options?: { signal?: AbortSignal }): Promise<void> {
    return this.do({ op: 'delete', key: keys[0] ?? '' }, () => this.inner.delete(keys, options));
  }

  sub(prefix: string): ObjectStore {
    return new ScriptedStore(this.inner.sub(prefix), this.script);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** A head PUT that records compaction history (compaction's "drop these checkpoints" commit). */
const historyCommit = (r: Req): boolean => {
  if (r.op !== 'put' || r.key !== HEAD_KEY || !r.body) return false;
  try {
    return decodeHead(r.body).head.history !== undefined;
  } catch {
    return false;
  }
};

// ------------------------------------------------------------------ volumes and content

const SIZE = 2 * MiB;
const CHUNK = 64 * KiB;

interface World {
  root: MemStore;
  parent: ObjectStore;
  openStore: (url: string) => Promise<ObjectStore>;
  /** Content of every checkpoint made by `history`. */
  refs: Map<number, Buffer>;
}

/** A parent volume with `rounds` checkpoints, each overwriting its own chunks. */
async function world(rounds = 6): Promise<World> {
  const root = MemStore.isolated('mem://concurrency/');
  const parent = root.sub('parent/');
  const openStore = (url: string): Promise<ObjectStore> =>
    Promise.resolve(root.sub(url.slice(root.url.length)));
  await Volume.create(parent, { size: SIZE, segmentSize: 1 * MiB });
  const v = await Volume.open(parent, { flushIntervalMs: 0 });
  const ref = Buffer.alloc(SIZE);
  const refs = new Map<number, Buffer>([[1, Buffer.alloc(SIZE)]]);
  for (let r = 0; r < rounds; r++) {
    // Each round rewrites chunk 0 (so older checkpoints need their own segments) and one more.
    for (const off of [0, (r + 1) * CHUNK]) {
      const data = Buffer.alloc(CHUNK, 1 + r * 13 + off / CHUNK);
      await v.write(off, data);
      data.copy(ref, off);
    }
    refs.set((await v.flush()).checkpoint, Buffer.from(ref));
  }
  await v.close();
  return { root, parent, openStore, refs };
}

/** A world whose parent has a clone at child/ made from checkpoint 3, and what it reads. */
async function withClone(): Promise<{ w: World; child: ObjectStore; want: Buffer }> {
  const w = await world();
  const child = w.root.sub('child/');
  await cloneVolume(w.parent, { checkpoint: 3 }, child, { openStore: w.openStore });
  return { w, child, want: await readAll(child, w) };
}

async function readAll(
  store: ObjectStore,
  w: World,
  at?: { checkpoint: number } | { snapshot: string },
): Promise<Buffer> {
  const v = await Volume.open(store, {
    ...(at ? { at } : { readOnly: true }),
    openStore: w.openStore,
  });
  try {
    return await v.read(0, v.info.size);
  } finally {
    await v.close();
  }
}

/** The store holds a volume (a readable head). */
async function exists(store: ObjectStore): Promise<boolean> {
  try {
    await readHead(store);
    return true;
  } catch {
    return false;
  }
}

/** No missing, corrupt or dangling objects (except the keys in `damaged`). */
async function assertClean(store: ObjectStore, w: World, damaged: string[] = []): Promise<void> {
  const r = await checkVolume(store, { deep: true, openStore: w.openStore });
  const bad = r.problems.filter(
    (p) =>
      (p.kind === 'missing' || p.kind === 'corrupt' || p.kind === 'dangling') &&
      !(p.kind === 'corrupt' && damaged.includes(p.key)),
  );
  assert.deepEqual(bad, [], `${store.url} is damaged: ${JSON.stringify(bad, null, 1)}`);
}

async function keysOf(store: ObjectStore): Promise<string[]> {
  const keys: string[] = [];
  for await (const p of store.list('')) for (const o of p.objects) keys.push(o.key);
  return keys;
}

async function pins(store: ObjectStore): Promise<string[]> {
  const keys: string[] = [];
  for await (const p of store.list(PIN_PREFIX)) for (const o of p.objects) keys.push(o.key);
  return keys;
}

/** Run `p` and keep its outcome (these races may make an operation fail: that is allowed). */
async function settle<T>(
  p: Promise<T>,
): Promise<{ ok: true; value: T } | { ok: false; error: unknown }> {
  try {
    return { ok: true, value: await p };
  } catch (error) {
    return { ok: false, error };
  }
}

type Outcome<T> = Awaited<ReturnType<typeof settle<T>>>;

/**
 * A step that runs `op` before the first request matching `when` ("meanwhile"), and how it
 * went (undefined: the schedule never reached it).
 */
function meanwhile<T>(
  when: (r: Req) => boolean,
  op: () => Promise<T>,
): { step: Step; outcome: () => Outcome<T> | undefined } {
  let out: Outcome<T> | undefined;
  return {
    step: step({
      when,
      run: async () => {
        out = await settle(op());
      },
    }),
    outcome: () => out,
  };
}

const same = (got: Buffer, want: Buffer, what: string): void =>
  assert.ok(got.equals(want), `${what}: content differs`);

// ------------------------------------------------------------------ the schedules

/** Another writer takes the volume over (--force) and commits one chunk of `fill` at chunk 10. */
async function takeOverAndWrite(store: ObjectStore, fill: number): Promise<Buffer> {
  const v = await Volume.open(store, { force: true, flushIntervalMs: 0 });
  const data = Buffer.alloc(CHUNK, fill);
  await v.write(10 * CHUNK, data);
  await v.flush();
  await v.close();
  return data;
}

describe('concurrency: compaction against a takeover (scenario 1)', () => {
  it('a writer that takes over while compaction runs keeps the checkpoint it commits', async () => {
    const w = await world();
    // Compaction commits its history, then (before it lists seg/ to decide what to delete)
    // a forced writer takes the volume over and commits a new checkpoint.
    let committed = false;
    let b: Buffer | undefined;
    const script: Script = {
      seen: (r) => {
        if (historyCommit(r)) committed = true;
      },
      steps: [
        step({
          when: (r) => committed && r.op === 'list' && r.key === SEGMENT_PREFIX,
          run: async () => {
            b = await takeOverAndWrite(w.parent, 0xb1);
          },
        }),
      ],
    };
    await settle(compactVolume(new ScriptedStore(w.parent, script), { keepLast: 1, graceMs: 0 }));
    assert.ok(b, 'the takeover did not run in the window (schedule not reproduced)');
    const want = Buffer.from(w.refs.get(Math.max(...w.refs.keys())) as Buffer);
    b.copy(want, 10 * CHUNK);
    same(await readAll(w.parent, w), want, 'the head after the takeover');
    await assertClean(w.parent, w);
  });

  it('a writer that takes over right before compaction deletes keeps its checkpoint', async () => {
    const w = await world();
    let b: Buffer | undefined;
    const script: Script = {
      steps: [
        step({
          when: (r) => r.op === 'delete' && r.key.startsWith(SEGMENT_PREFIX),
          run: async () => {
            b = await takeOverAndWrite(w.parent, 0xb2);
          },
        }),
      ],
    };
    await settle(compactVolume(new ScriptedStore(w.parent, script), { keepLast: 1, graceMs: 0 }));
    assert.ok(b, 'compaction deleted nothing (schedule not reproduced)');
    const want = Buffer.from(w.refs.get(Math.max(...w.refs.keys())) as Buffer);
    b.copy(want, 10 * CHUNK);
    same(await readAll(w.parent, w), want, 'the head after the takeover');
    await assertClean(w.parent, w);
  });
});

describe('concurrency: unreadable clone pins (scenario 2)', () => {
  const pinned = 2;

  it('a pin that cannot be read (store error) keeps its checkpoint', async () => {
    const w = await world();
    const child = w.root.sub('child/');
    await cloneVolume(w.parent, { checkpoint: pinned }, child, { openStore: w.openStore });
    const script: Script = {
      steps: [
        step({
          when: (r) => r.op === 'get' && r.key.startsWith(PIN_PREFIX),
          fail: 'before',
          times: Infinity,
        }),
      ],
    };
    await settle(compactVolume(new ScriptedStore(w.parent, script), { keepLast: 1, graceMs: 0 }));
    assert.ok((script.steps[0] as Step).hits > 0, 'compaction never read the pin');
    same(await readAll(child, w), w.refs.get(pinned) as Buffer, 'the clone');
    same(
      await readAll(w.parent, w, { checkpoint: pinned }),
      w.refs.get(pinned) as Buffer,
      `the parent's pinned checkpoint ${pinned}`,
    );
    await assertClean(child, w);
    await assertClean(w.parent, w);
  });

  it('a damaged pin record keeps its checkpoint', async () => {
    const w = await world();
    const child = w.root.sub('child/');
    await cloneVolume(w.parent, { checkpoint: pinned }, child, { openStore: w.openStore });
    const [pin] = await pins(w.parent);
    assert.ok(pin);
    await w.parent.put(pin, Buffer.from('this is not a pin record'));
    await settle(compactVolume(w.parent, { keepLast: 1, graceMs: 0 }));
    same(await readAll(child, w), w.refs.get(pinned) as Buffer, 'the clone');
    same(
      await readAll(w.parent, w, { checkpoint: pinned }),
      w.refs.get(pinned) as Buffer,
      `the parent's pinned checkpoint ${pinned}`,
    );
    await assertClean(child, w);
    await assertClean(w.parent, w, [pin]);
  });
});

describe('concurrency: failed clones keep their pins (scenario 3)', () => {
  const from = 2;

  /** After a failed clone: if the child exists and reads from the parent, it keeps working. */
  async function assertChildSafe(w: World, child: ObjectStore): Promise<void> {
    if (!(await exists(child))) return;
    const { head } = await readHead(child);
    if (head.clone)
      assert.deepEqual(
        await pins(w.parent),
        [pinKey(head.uuid)],
        'the child reads from the parent but the parent no longer pins it',
      );
    // The parent drops everything it can; the child must not notice.
    await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
    same(await readAll(child, w), w.refs.get(from) as Buffer, 'the child');
    await assertClean(child, w);
    await assertClean(w.parent, w);
  }

  it('clone --flatten that fails while copying leaves a working clone', async () => {
    const w = await world();
    // The clone's own first segment lands; flattening's copy then fails.
    let segPuts = 0;
    const child = new ScriptedStore(w.root.sub('child/'), {
      steps: [
        step({
          when: (r) => r.op === 'put' && r.key.startsWith(SEGMENT_PREFIX) && ++segPuts > 1,
          fail: 'before',
          times: Infinity,
        }),
      ],
    });
    const r = await settle(
      cloneVolume(w.parent, { checkpoint: from }, child, { flatten: true, openStore: w.openStore }),
    );
    assert.equal(r.ok, false, 'the scripted failure did not make the clone fail');
    assert.ok(await exists(child), 'the child volume was not created (schedule not reproduced)');
    await assertChildSafe(w, w.root.sub('child/'));
  });

  it('a clone whose head lands but reports failure keeps its pin', async () => {
    const w = await world();
    const child = new ScriptedStore(w.root.sub('child/'), {
      steps: [step({ when: (r) => r.op === 'put' && r.key === HEAD_KEY, fail: 'after' })],
    });
    const r = await settle(
      cloneVolume(w.parent, { checkpoint: from }, child, { openStore: w.openStore }),
    );
    assert.equal(r.ok, false, 'the scripted failure did not make the clone fail');
    await assertChildSafe(w, w.root.sub('child/'));
  });
});

describe('concurrency: pins and snapshots made while compaction runs (scenario 4)', () => {
  const at = 3;

  it('a snapshot created after compaction listed the pins keeps its checkpoint', async () => {
    const w = await world();
    let snap: Awaited<ReturnType<typeof settle>> | undefined;
    const script: Script = {
      steps: [
        step({
          when: historyCommit,
          run: async () => {
            snap = await settle(createSnapshot(w.parent, 'late', { checkpoint: at }));
          },
        }),
      ],
    };
    await settle(compactVolume(new ScriptedStore(w.parent, script), { keepLast: 1, graceMs: 0 }));
    assert.ok(snap, 'compaction committed no history (schedule not reproduced)');
    if (snap.ok)
      same(
        await readAll(w.parent, w, { snapshot: 'late' }),
        w.refs.get(at) as Buffer,
        'snapshot "late"',
      );
    await assertClean(w.parent, w);
  });

  it('a clone made after compaction listed the pins keeps reading its checkpoint', async () => {
    const w = await world();
    const child = w.root.sub('child/');
    const clone = meanwhile(historyCommit, () =>
      cloneVolume(w.parent, { checkpoint: at }, child, { openStore: w.openStore }),
    );
    const script: Script = { steps: [clone.step] };
    await settle(compactVolume(new ScriptedStore(w.parent, script), { keepLast: 1, graceMs: 0 }));
    const made = clone.outcome();
    assert.ok(made, 'compaction committed no history (schedule not reproduced)');
    if (made.ok || (await exists(child))) {
      same(await readAll(child, w), w.refs.get(at) as Buffer, 'the clone');
      await assertClean(child, w);
    }
    await assertClean(w.parent, w);
  });

  it('a snapshot made as compaction commits its history survives the compaction dying right after', async () => {
    const w = await world();
    // The snapshot is written (and confirmed against the head) just before the history
    // commit that drops its checkpoint lands; then every request of the compaction fails, so
    // it never gets to read the snapshots again. A later compaction must put it right.
    let committed = false;
    let snap: Awaited<ReturnType<typeof settle>> | undefined;
    const script: Script = {
      seen: (r) => {
        if (historyCommit(r)) committed = true;
      },
      steps: [
        step({
          when: historyCommit,
          run: async () => {
            snap = await settle(createSnapshot(w.parent, 'late', { checkpoint: at }));
          },
        }),
        step({ when: () => committed, fail: 'before', times: Infinity }),
      ],
    };
    const first = await settle(
      compactVolume(new ScriptedStore(w.parent, script), { keepLast: 1, graceMs: 0 }),
    );
    assert.ok(snap && committed, 'compaction committed no history (schedule not reproduced)');
    assert.equal(first.ok, false, 'the compaction did not die after its history commit');
    // The compaction is rerun (its lease was not released: take over).
    await compactVolume(w.parent, { keepLast: 1, graceMs: 0, force: true });
    if (snap.ok)
      same(
        await readAll(w.parent, w, { snapshot: 'late' }),
        w.refs.get(at) as Buffer,
        'snapshot "late"',
      );
    await assertClean(w.parent, w);
  });

  it('a snapshot whose record lands after a whole compaction ran keeps its checkpoint', async () => {
    const w = await world();
    // createSnapshot resolves the checkpoint, then (before its record is written) a
    // compaction runs from start to end and drops it. Found by the chaos harness.
    let compacted = false;
    const snapStore = new ScriptedStore(w.parent, {
      steps: [
        step({
          when: (r) => r.op === 'put' && r.key.startsWith('snap/'),
          run: async () => {
            await compactVolume(w.parent, { keepLast: 1 });
            compacted = true;
          },
        }),
      ],
    });
    const snap = await settle(createSnapshot(snapStore, 'slow', { checkpoint: at }));
    assert.ok(compacted, 'the compaction did not run (schedule not reproduced)');
    if (snap.ok)
      same(
        await readAll(w.parent, w, { snapshot: 'slow' }),
        w.refs.get(at) as Buffer,
        'snapshot "slow"',
      );
    await assertClean(w.parent, w);
  });

  it('a clone whose pin lands after a whole compaction ran keeps reading its checkpoint', async () => {
    const w = await world();
    const child = w.root.sub('child/');
    let compacted = false;
    const parentView = new ScriptedStore(w.parent, {
      steps: [
        step({
          when: (r) => r.op === 'put' && r.key.startsWith(PIN_PREFIX),
          run: async () => {
            await compactVolume(w.parent, { keepLast: 1 });
            compacted = true;
          },
        }),
      ],
    });
    const made = await settle(
      cloneVolume(parentView, { checkpoint: at }, child, { openStore: w.openStore }),
    );
    assert.ok(compacted, 'the compaction did not run (schedule not reproduced)');
    if (made.ok || (await exists(child))) {
      // Whatever compaction runs next must not take the clone's data away.
      await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
      same(await readAll(child, w), w.refs.get(at) as Buffer, 'the clone');
      await assertClean(child, w);
    }
    await assertClean(w.parent, w);
  });
});

describe('concurrency: deleting a volume that clones read from (scenario 8)', () => {
  it('is refused, and the clone keeps working', async () => {
    const w = await world();
    const child = w.root.sub('child/');
    await cloneVolume(w.parent, { checkpoint: 2 }, child, { openStore: w.openStore });
    const r = await settle(deleteVolume(w.parent));
    assert.equal(r.ok, false, 'deleteVolume deleted a volume that a clone reads from');
    assert.ok(await exists(w.parent), 'the parent is gone');
    same(await readAll(child, w), w.refs.get(2) as Buffer, 'the clone');
    await assertClean(child, w);
  });

  it('a clone made after the delete checked for clones stops the delete, and keeps working', async () => {
    const w = await world();
    const child = w.root.sub('child/');
    // The delete found no clone; before it deletes the head, a clone pins a checkpoint and
    // reads the head (still there): the clone is made.
    const clone = meanwhile(
      (r) => r.op === 'delete' && r.key === HEAD_KEY,
      () => cloneVolume(w.parent, { checkpoint: 2 }, child, { openStore: w.openStore }),
    );
    const r = await settle(deleteVolume(new ScriptedStore(w.parent, { steps: [clone.step] })));
    assert.ok(clone.outcome()?.ok, 'the clone was not made (schedule not reproduced)');
    assert.equal(r.ok, false, 'deleteVolume deleted a volume that a clone reads from');
    assert.match(String(r.error), /HAS_CLONES|while it was being deleted/);
    assert.ok(await exists(w.parent), 'the parent is gone');
    same(await readAll(child, w), w.refs.get(2) as Buffer, 'the clone');
    same(
      await readAll(w.parent, w),
      w.refs.get(Math.max(...w.refs.keys())) as Buffer,
      'the parent',
    );
    await assertClean(child, w);
    await assertClean(w.parent, w);
  });
});

describe('concurrency: unpin against a clone being created (scenario 9)', () => {
  const at = 3;

  /** The clone reads checkpoint `at` after the parent compacts everything else away. */
  async function cloneSurvives(w: World, child: ObjectStore): Promise<void> {
    assert.deepEqual(await pins(w.parent), [pinKey((await readHead(child)).head.uuid)]);
    await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
    same(await readAll(child, w), w.refs.get(at) as Buffer, 'the clone');
    await assertClean(child, w);
    await assertClean(w.parent, w);
  }

  it('an unpin before any request of a clone being created never takes its pin', async () => {
    let schedules = 0;
    for (let k = 1; ; k++) {
      const w = await world(3);
      const child = w.root.sub('child/');
      let n = 0;
      // Before the clone's k-th request (to either volume), an unpin names its URL.
      const unpin = meanwhile(
        () => ++n === k,
        () => unpinClone(w.parent, child.url, { openStore: w.openStore }),
      );
      const script: Script = { steps: [unpin.step] };
      await cloneVolume(
        new ScriptedStore(w.parent, script),
        { checkpoint: at },
        new ScriptedStore(child, script),
        { openStore: w.openStore },
      );
      const unpinned = unpin.outcome();
      if (!unpinned) break; // past the clone's last request
      schedules++;
      assert.ok(
        !unpinned.ok,
        `the unpin before request ${k} released ${JSON.stringify(unpinned.ok && unpinned.value.released)}`,
      );
      await cloneSurvives(w, child);
    }
    assert.ok(schedules >= 8, `only ${schedules} schedules`);
  });

  it('a flatten stopped before releasing its pin: unpin releases it', async () => {
    const w = await world();
    const child = w.root.sub('child/');
    await cloneVolume(w.parent, { checkpoint: at }, child, { openStore: w.openStore });
    const failPinDelete: Script = {
      steps: [
        step({ when: (r) => r.op === 'delete' && r.key.startsWith(PIN_PREFIX), fail: 'before' }),
      ],
    };
    const flattened = await settle(
      flattenVolume(child, {
        openStore: async (url) => new ScriptedStore(await w.openStore(url), failPinDelete),
      }),
    );
    assert.equal(flattened.ok, false, 'the pin delete did not fail (schedule not reproduced)');
    assert.equal((await readHead(child)).head.clone, undefined, 'the flatten did not commit');
    const r = await unpinClone(w.parent, child.url, { openStore: w.openStore });
    assert.equal(r.released.length, 1);
    assert.deepEqual(await pins(w.parent), []);
    await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
    same(await readAll(child, w), w.refs.get(at) as Buffer, 'the flattened clone');
    await assertClean(child, w);
  });
});

/**
 * After a flatten of `child` stopped by `grand` (a clone of it made meanwhile): the parent and
 * the child compact everything they may, and both clones still read `want`; once `grand` is
 * deleted, the flatten goes through and releases the parent's pin.
 */
async function stillReadsThenFlattens(
  w: World,
  child: ObjectStore,
  grand: ObjectStore,
  want: Buffer,
): Promise<void> {
  await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
  await compactVolume(child, { keepLast: 1, graceMs: 0, openStore: w.openStore });
  same(await readAll(grand, w), want, 'the clone of the clone');
  same(await readAll(child, w), want, 'the child');
  await assertClean(grand, w);
  await assertClean(child, w);
  await assertClean(w.parent, w);
  await deleteVolume(grand, { openStore: w.openStore });
  const f = await flattenVolume(child, { openStore: w.openStore });
  assert.equal(f.blocksCopied, 0);
  assert.deepEqual(await pins(w.parent), []);
  await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
  same(await readAll(child, w), want, 'the flattened child');
  await assertClean(child, w);
}

describe('concurrency: a clone of a clone made while that clone is flattened (scenario 10)', () => {
  it('the new clone keeps reading what it was made from', async () => {
    const w = await world();
    const child = w.root.sub('child/');
    const grand = w.root.sub('grand/');
    await cloneVolume(w.parent, { checkpoint: 3 }, child, { openStore: w.openStore });
    const v = await Volume.open(child, { flushIntervalMs: 0, openStore: w.openStore });
    await v.write(5 * CHUNK, Buffer.alloc(CHUNK, 0xc5));
    const from = (await v.flush()).checkpoint;
    await v.close();
    const want = await readAll(child, w);
    // Flatten found no clone of the child; while it copies the parent's blocks, a clone of
    // the child is made from the child's newest checkpoint.
    const clone = meanwhile(
      (r) => r.op === 'put' && r.key.startsWith(SEGMENT_PREFIX),
      () => cloneVolume(child, { checkpoint: from }, grand, { openStore: w.openStore }),
    );
    const flattened = await settle(
      flattenVolume(new ScriptedStore(child, { steps: [clone.step] }), {
        openStore: w.openStore,
      }),
    );
    assert.ok(clone.outcome()?.ok, 'the clone was not made (schedule not reproduced)');
    // The flatten says so, and the child stays a clone (its pin on the parent with it).
    assert.equal(flattened.ok, false, 'the flatten released what the new clone reads');
    assert.ok(isHyperError(flattened.error, 'HAS_CLONES'), String(flattened.error));
    assert.ok((await readHead(child)).head.clone, 'the child is no clone any more');
    await stillReadsThenFlattens(w, child, grand, want);
  });

  it('a snapshot of the clone made while it is flattened keeps reading what it names', async () => {
    const { w, child, want } = await withClone();
    const from = (await readHead(child)).head.checkpoint;
    const snap = meanwhile(
      (r) => r.op === 'put' && r.key.startsWith(SEGMENT_PREFIX),
      () => createSnapshot(child, 'during', { checkpoint: from }),
    );
    const flattened = await settle(
      flattenVolume(new ScriptedStore(child, { steps: [snap.step] }), { openStore: w.openStore }),
    );
    assert.ok(snap.outcome()?.ok, 'the snapshot was not made (schedule not reproduced)');
    assert.ok(!flattened.ok && isHyperError(flattened.error, 'PRECONDITION_FAILED'));
    assert.ok((await readHead(child)).head.clone, 'the child is no clone any more');
    await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
    await compactVolume(child, { keepLast: 1, graceMs: 0, openStore: w.openStore });
    same(await readAll(child, w, { snapshot: 'during' }), want, 'snapshot "during"');
    same(await readAll(child, w), want, 'the child');
    await assertClean(child, w);
    await assertClean(w.parent, w);
  });

  it('a flatten that cannot list the clone’s records after detaching undoes the detach', async () => {
    const { w, child, want } = await withClone();
    let lists = 0;
    const script: Script = {
      steps: [
        step({
          when: (r) => r.op === 'list' && r.key === PIN_PREFIX && ++lists === 2,
          fail: 'before',
        }),
      ],
    };
    const flattened = await settle(
      flattenVolume(new ScriptedStore(child, script), { openStore: w.openStore }),
    );
    assert.ok(lists >= 2, 'the flatten did not list the pins again (schedule not reproduced)');
    assert.ok(!flattened.ok && isHyperError(flattened.error, 'STORE_UNAVAILABLE'));
    assert.ok((await readHead(child)).head.clone, 'the child is no clone any more');
    assert.equal((await pins(w.parent)).length, 1, 'the child lost its pin on the parent');
    same(await readAll(child, w), want, 'the child');
    await assertClean(child, w);
    // Run again, it completes.
    await flattenVolume(child, { openStore: w.openStore });
    assert.deepEqual(await pins(w.parent), []);
    await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
    same(await readAll(child, w), want, 'the flattened child');
  });

  it('an unpin while the flatten is detached keeps the pin', async () => {
    const { w, child, want } = await withClone();
    const grand = w.root.sub('grand/');
    const from = (await readHead(child)).head.checkpoint;
    let lists = 0;
    // A clone of the child is made while the flatten copies...
    const clone = meanwhile(
      (r) => r.op === 'put' && r.key.startsWith(SEGMENT_PREFIX),
      () => cloneVolume(child, { checkpoint: from }, grand, { openStore: w.openStore }),
    );
    // ...and when the flatten, detached, lists the child's pins again, an unpin of the
    // child's pin on the parent finds the child no clone any more.
    const unpin = meanwhile(
      (r) => r.op === 'list' && r.key === PIN_PREFIX && ++lists === 2,
      () => unpinClone(w.parent, child.url, { openStore: w.openStore }),
    );
    const flattened = await settle(
      flattenVolume(new ScriptedStore(child, { steps: [clone.step, unpin.step] }), {
        openStore: w.openStore,
      }),
    );
    assert.ok(clone.outcome()?.ok, 'the clone was not made (schedule not reproduced)');
    const u = unpin.outcome();
    assert.ok(u && !u.ok, 'the unpin released the pin of a flatten in progress');
    assert.ok(isHyperError(u.error, 'HAS_CLONES'), String(u.error));
    assert.ok(isHyperError(flattened.ok ? undefined : flattened.error, 'HAS_CLONES'));
    assert.equal((await pins(w.parent)).length, 1, 'the child lost its pin on the parent');
    assert.equal(await w.root.head(`child/${FLATTEN_KEY}`), undefined);
    await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
    same(await readAll(grand, w), want, 'the clone of the child');
    await assertClean(grand, w);
    await assertClean(w.parent, w);
  });
});

/** Fails every request after the flatten's detach commit, except the lease's (it died, and its lease ran out). */
function killAfterDetach(): { script: Script; killed: () => boolean } {
  let killed = false;
  const script: Script = {
    steps: [
      step({
        when: (r) => r.key !== LEASE_KEY && killed,
        fail: 'before',
        times: Number.POSITIVE_INFINITY,
      }),
    ],
    seen: (r) => {
      if (r.op === 'put' && r.key === HEAD_KEY && r.body && !decodeHead(r.body).head.clone)
        killed = true;
    },
  };
  return { script, killed: () => killed };
}

/**
 * A clone of the parent at checkpoint 3 (`want`: what it reads), and a flatten of it that
 * runs "meanwhile", at the first request matching `when`: to the end, or until it is killed
 * right after its detach commit.
 */
async function cloneWithFlattenMeanwhile(
  killed: boolean,
  when: (r: Req) => boolean,
  force = false,
): Promise<{
  w: World;
  child: ObjectStore;
  want: Buffer;
  other: ReturnType<typeof meanwhile<FlattenResult>>;
}> {
  const w = await world();
  const child = w.root.sub('child/');
  await cloneVolume(w.parent, { checkpoint: 3 }, child, { openStore: w.openStore });
  const want = await readAll(child, w);
  const kill = killAfterDetach();
  const other = meanwhile(when, () =>
    flattenVolume(killed ? new ScriptedStore(child, kill.script) : child, {
      ...(force ? { force } : {}),
      openStore: w.openStore,
    }),
  );
  return { w, child, want, other };
}

describe('concurrency: a flatten killed right after its detach commit (scenario 11)', () => {
  it('with a clone of the clone made meanwhile: nothing releases what that clone reads, and the flatten run again undoes the detach', async () => {
    const { w, child, want } = await withClone();
    const grand = w.root.sub('grand/');
    const from = (await readHead(child)).head.checkpoint;
    const clone = meanwhile(
      (r) => r.op === 'put' && r.key.startsWith(SEGMENT_PREFIX),
      () => cloneVolume(child, { checkpoint: from }, grand, { openStore: w.openStore }),
    );
    const kill = killAfterDetach();
    kill.script.steps.push(clone.step);
    const flattened = await settle(
      flattenVolume(new ScriptedStore(child, kill.script), { openStore: w.openStore }),
    );
    assert.ok(clone.outcome()?.ok, 'the clone was not made (schedule not reproduced)');
    assert.ok(kill.killed() && !flattened.ok, 'the flatten was not killed after its commit');
    assert.equal((await readHead(child)).head.clone, undefined, 'the detach did not commit');
    // The pin stays, whoever asks; the child does not compact; check names what is left to do.
    const unpinned = await settle(unpinClone(w.parent, child.url, { openStore: w.openStore }));
    assert.ok(!unpinned.ok && isHyperError(unpinned.error, 'HAS_CLONES'), String(unpinned));
    assert.equal((await pins(w.parent)).length, 1, 'the child lost its pin on the parent');
    const compacted = await settle(compactVolume(child, { keepLast: 1, graceMs: 0 }));
    assert.ok(!compacted.ok && isHyperError(compacted.error, 'PRECONDITION_FAILED'));
    const r = await checkVolume(child, { openStore: w.openStore });
    assert.deepEqual(
      r.problems.filter((p) => p.kind === 'unfinished-flatten').map((p) => p.key),
      [FLATTEN_KEY],
    );
    await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
    same(await readAll(grand, w), want, 'the clone of the child');
    // Run again, the flatten finds the clone and undoes the detach.
    const again = await settle(flattenVolume(child, { openStore: w.openStore }));
    assert.ok(!again.ok && isHyperError(again.error, 'HAS_CLONES'), String(again));
    assert.ok((await readHead(child)).head.clone, 'the child is no clone any more');
    assert.equal(await w.root.head(`child/${FLATTEN_KEY}`), undefined);
    await stillReadsThenFlattens(w, child, grand, want);
  });

  it('with nothing made meanwhile: the flatten run again releases the pin', async () => {
    const { w, child, want } = await withClone();
    const kill = killAfterDetach();
    const flattened = await settle(
      flattenVolume(new ScriptedStore(child, kill.script), { openStore: w.openStore }),
    );
    assert.ok(kill.killed() && !flattened.ok, 'the flatten was not killed after its commit');
    // Written meanwhile by the volume's next writer: finishing keeps it.
    const v = await Volume.open(child, { flushIntervalMs: 0, openStore: w.openStore });
    await v.write(7 * CHUNK, Buffer.alloc(CHUNK, 0xd7));
    await v.flush();
    await v.close();
    Buffer.alloc(CHUNK, 0xd7).copy(want, 7 * CHUNK);
    const f = await flattenVolume(child, { openStore: w.openStore });
    assert.equal(f.blocksCopied, 0);
    assert.deepEqual(await pins(w.parent), []);
    assert.equal(await w.root.head(`child/${FLATTEN_KEY}`), undefined);
    await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
    await compactVolume(child, { keepLast: 1, graceMs: 0 });
    same(await readAll(child, w), want, 'the flattened child');
    await assertClean(child, w);
    // A second run: the volume is no clone.
    const third = await settle(flattenVolume(child, { openStore: w.openStore }));
    assert.ok(!third.ok && isHyperError(third.error, 'INVALID_ARGUMENT'));
  });

  it('a second flatten that opens the volume after the first one detached it', async () => {
    for (const killed of [false, true]) {
      // The second flatten saw a clone; before it takes the lease, the first one runs (to
      // the end, or until it is killed right after its detach commit).
      const {
        w,
        child,
        want,
        other: first,
      } = await cloneWithFlattenMeanwhile(killed, (r) => r.key === LEASE_KEY);
      const second = await settle(
        flattenVolume(new ScriptedStore(child, { steps: [first.step] }), {
          openStore: w.openStore,
        }),
      );
      assert.equal(first.outcome()?.ok, !killed, 'the first flatten did not run (schedule)');
      if (killed) {
        assert.ok(second.ok && second.value.resumed, String(!second.ok && second.error));
      } else {
        assert.ok(!second.ok && isHyperError(second.error, 'INVALID_ARGUMENT'), String(second));
      }
      assert.deepEqual(await pins(w.parent), []);
      assert.equal(await w.root.head(`child/${FLATTEN_KEY}`), undefined);
      await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
      same(await readAll(child, w), want, 'the flattened child');
      await assertClean(child, w);
    }
  });

  it('a flatten fenced by a forced one that finished leaves no record claiming the released pin (chaos seed 36651)', async () => {
    const w = await world();
    const child = w.root.sub('child/');
    // Nothing inherited: the first flatten writes nothing before its record.
    await cloneVolume(w.parent, { checkpoint: 1 }, child, { openStore: w.openStore });
    const forced = meanwhile(
      (r) => r.op === 'list' && r.key === PIN_PREFIX,
      () => flattenVolume(child, { force: true, openStore: w.openStore }),
    );
    const first = await settle(
      flattenVolume(new ScriptedStore(child, { steps: [forced.step] }), {
        openStore: w.openStore,
      }),
    );
    assert.ok(forced.outcome()?.ok, 'the forced flatten did not run (schedule)');
    assert.ok(!first.ok && isHyperError(first.error, 'FENCED'), String(first));
    assert.equal(await w.root.head(`child/${FLATTEN_KEY}`), undefined, 'a stale flatten record');
    assert.deepEqual(await pins(w.parent), []);
    const r = await checkVolume(child, { openStore: w.openStore });
    assert.deepEqual(
      r.problems.filter((p) => p.kind === 'unfinished-flatten'),
      [],
    );
    await compactVolume(child, { keepLast: 1, graceMs: 0 });
    await assertClean(child, w);
  });

  it('the record of a flatten fenced after its last check lands late: it never stands for the forced flatten that finished, nor replaces the record of one killed after its detach (chaos seed 50858)', async () => {
    for (const killed of [false, true]) {
      // The first flatten has checked it still holds the lease and sent its record; before the
      // record lands, a forced flatten runs (to the end, or until killed after its detach).
      const {
        w,
        child,
        want,
        other: forced,
      } = await cloneWithFlattenMeanwhile(
        killed,
        (r) => r.op === 'put' && r.key === FLATTEN_KEY,
        true,
      );
      const first = await settle(
        flattenVolume(new ScriptedStore(child, { steps: [forced.step] }), {
          openStore: w.openStore,
        }),
      );
      assert.equal(forced.outcome()?.ok, !killed, 'the forced flatten did not run (schedule)');
      assert.ok(!first.ok && isHyperError(first.error, 'FENCED'), String(first));
      const head = (await readHead(child)).head;
      assert.equal(head.clone, undefined, 'the forced flatten did not detach');
      const record = await child.get(FLATTEN_KEY);
      const recorded = decodeHead(record.body).head;
      const checked = await checkVolume(child, { openStore: w.openStore });
      const unfinished = checked.problems.filter((p) => p.kind === 'unfinished-flatten');
      if (!killed) {
        // The late record landed where the finished flatten had deleted its own: it names
        // the first flatten's epoch, not the detach commit's, and nothing takes it for one.
        assert.notEqual(recorded.epoch, head.epoch);
        assert.deepEqual(await pins(w.parent), []);
        assert.deepEqual(unfinished, []);
        await compactVolume(child, { keepLast: 1, graceMs: 0 });
      } else {
        // The killed flatten's record stands: the pin stays until a flatten finishes.
        assert.equal(
          recorded.epoch,
          (await readCheckpointHead(child, head.history?.floor ?? 0)).epoch,
          'the late record replaced the one of the flatten that detached',
        );
        assert.equal((await pins(w.parent)).length, 1);
        assert.deepEqual(
          unfinished.map((p) => p.key),
          [FLATTEN_KEY],
        );
        const again = await flattenVolume(child, { openStore: w.openStore });
        assert.ok(again.resumed);
        assert.deepEqual(await pins(w.parent), []);
      }
      await compactVolume(w.parent, { keepLast: 1, graceMs: 0 });
      same(await readAll(child, w), want, 'the flattened child');
      await assertClean(child, w);
    }
  });

  it('deleting the volume instead releases the pin the flatten left', async () => {
    const w = await world();
    const child = w.root.sub('child/');
    await cloneVolume(w.parent, { checkpoint: 3 }, child, { openStore: w.openStore });
    const kill = killAfterDetach();
    await settle(flattenVolume(new ScriptedStore(child, kill.script), { openStore: w.openStore }));
    assert.ok(kill.killed(), 'the flatten was not killed after its commit');
    const d = await deleteVolume(child, { openStore: w.openStore });
    assert.ok(d.pin, 'the delete did not name the pin');
    assert.deepEqual(await pins(w.parent), []);
    assert.equal(await exists(child), false);
    assert.deepEqual(await keysOf(child), []);
  });
});

describe('concurrency: a writer reading what a forced compaction deleted (scenario 12)', () => {
  it('is FENCED; while the store fails the look at the head, the store error (never damage) (chaos seed 16153, RGW)', async () => {
    const inner = MemStore.isolated('mem://fenced-read/');
    await Volume.create(inner, { size: SIZE, segmentSize: 1 * MiB });
    // Once `down`, every request but segment reads fails as a store that is down would.
    let down = false;
    const store = new Proxy(inner, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver) as unknown;
        if (
          typeof v !== 'function' ||
          !['get', 'head', 'list', 'put', 'delete'].includes(String(prop))
        )
          return v;
        return (key: string, ...rest: unknown[]) => {
          const segmentRead = prop === 'get' && key.startsWith(SEGMENT_PREFIX);
          if (down && !segmentRead)
            throw new HyperError(
              'unavailable',
              'STORE_UNAVAILABLE',
              `injected: ${String(prop)} ${key}`,
            );
          return (v as (...a: unknown[]) => unknown).call(target, key, ...rest);
        };
      },
    });
    const w = await Volume.open(store, { flushIntervalMs: 0, dataCacheBytes: 0 });
    await w.write(0, Buffer.alloc(2 * CHUNK, 7));
    await w.flush();
    // Half of that segment is overwritten: compaction will rewrite the other half and delete it.
    await w.write(0, Buffer.alloc(CHUNK, 9));
    await w.flush();
    const before = (await keysOf(inner)).filter((k) => k.startsWith(SEGMENT_PREFIX));
    await compactVolume(inner, { keepLast: 1, graceMs: 0, minLive: 0.9, force: true });
    const after = (await keysOf(inner)).filter((k) => k.startsWith(SEGMENT_PREFIX));
    assert.ok(
      before.some((k) => !after.includes(k)),
      `the compaction deleted no segment (schedule not reproduced): ${before} -> ${after}`,
    );
    down = true;
    await assert.rejects(w.read(CHUNK, CHUNK), (e) => {
      assert.ok(isHyperError(e, 'STORE_UNAVAILABLE'), String(e));
      return true;
    });
    down = false;
    await assert.rejects(w.read(CHUNK, CHUNK), (e) => {
      assert.ok(isHyperError(e, 'FENCED'), String(e));
      return true;
    });
    await w.close().catch(() => undefined);
    const c = await checkVolume(inner, { deep: true });
    assert.deepEqual(c.problems, []);
  });
});

describe('concurrency: a volume deleted while it is read (scenario 13)', () => {
  it('a reader of a volume deleted under it gets VOLUME_NOT_FOUND, not damage (chaos seed 46066)', async () => {
    const store = MemStore.isolated('mem://deleted-read/');
    await Volume.create(store, { size: SIZE, segmentSize: 1 * MiB });
    const w = await Volume.open(store, { flushIntervalMs: 0 });
    await w.write(0, Buffer.alloc(2 * CHUNK, 5));
    await w.flush();
    await w.close();
    const v = await Volume.open(store, { readOnly: true, dataCacheBytes: 0 });
    await deleteVolume(store, { force: true });
    await assert.rejects(v.read(0, CHUNK), (e) => {
      assert.ok(isHyperError(e, 'VOLUME_NOT_FOUND'), String(e));
      assert.match((e as Error).message, /deleted while it was being read/);
      return true;
    });
    await v.close();
  });
});

describe('concurrency: a takeover whose fence id is taken by a segment a newer takeover deletes (scenario 14)', () => {
  it('is FENCED, not a missing segment (chaos seed 48153)', async () => {
    const inner = MemStore.isolated('mem://fence-gone/');
    await Volume.create(inner, { size: SIZE, segmentSize: 1 * MiB });
    // A live writer (the takeover places a fence against it).
    const w = await Volume.open(inner, { flushIntervalMs: 0 });
    await w.write(0, Buffer.alloc(CHUNK, 3));
    const last = (await w.flush()).checkpoint;
    // An older writer's leftover where the takeover puts its fence.
    const next = segmentKey(last + 1);
    await inner.put(next, (await inner.get(segmentKey(last))).body);
    let fenceRefused = false;
    const store = new ScriptedStore(inner, {
      steps: [
        step({
          when: (r) => {
            if (r.op === 'put' && r.key === next) fenceRefused = true;
            return false;
          },
        }),
        step({
          // The takeover reads the occupant of its fence's id; before that, a newer forced
          // writer takes the volume over, and its compaction deletes the leftover.
          when: (r) => fenceRefused && r.op === 'get' && r.key === next,
          run: async () => {
            const b = await Volume.open(inner, {
              force: true,
              holder: 'newer',
              flushIntervalMs: 0,
            });
            await b.close();
            await inner.delete([next]);
          },
        }),
      ],
    });
    await assert.rejects(
      Volume.open(store, { force: true, holder: 'taker', flushIntervalMs: 0 }),
      (e) => {
        assert.ok(isHyperError(e, 'FENCED'), String(e));
        return true;
      },
    );
    assert.equal(fenceRefused, true, 'the schedule was reproduced');
    await w.close().catch(() => undefined);
    const c = await checkVolume(inner, { deep: true });
    assert.equal(c.clean, true, JSON.stringify(c.problems));
  });
});

describe('concurrency: a segment a forced compaction deleted holds other bytes later (scenario 15)', () => {
  it('a writer reading it is FENCED and a reader of a dropped checkpoint is told so, not of damage (chaos seed 48870)', async () => {
    // The reader meets it in a data block, or (a tree of 512 blocks) in an index node first.
    for (const occupant of ['short', 'same size', 'short, under index nodes'] as const) {
      const half = occupant.endsWith('nodes') ? SIZE / 2 : CHUNK;
      const inner = MemStore.isolated(`mem://id-reused-${occupant.replace(/\W+/g, '-')}/`);
      await Volume.create(inner, { size: SIZE, segmentSize: 4 * MiB });
      const w = await Volume.open(inner, { flushIntervalMs: 0, dataCacheBytes: 0 });
      await w.write(0, Buffer.alloc(2 * half, 7));
      const old = (await w.flush()).checkpoint;
      // Half of that segment is overwritten: compaction rewrites the other half and deletes it.
      await w.write(0, Buffer.alloc(half, 9));
      const newer = (await w.flush()).checkpoint;
      const r = await Volume.open(inner, { at: { checkpoint: old }, dataCacheBytes: 0 });
      await compactVolume(inner, { keepLast: 1, graceMs: 0, minLive: 0.9, force: true });
      assert.equal(await inner.head(segmentKey(old)), undefined, 'the compaction deleted it');
      // What lands at the free id: as short as an empty fence segment, or as long as the one
      // that was there.
      const other = (await inner.get(segmentKey(newer))).body;
      const body = occupant === 'same size' ? other : other.subarray(0, 4 * KiB);
      await inner.put(segmentKey(old), body, { ifNoneMatch: true });
      await assert.rejects(w.read(half, CHUNK), (e) => {
        assert.ok(isHyperError(e, 'FENCED'), `${occupant}: ${String(e)}`);
        return true;
      });
      await assert.rejects(r.read(half, CHUNK), (e) => {
        assert.ok(isHyperError(e, 'CHECKPOINT_NOT_FOUND'), `${occupant}: ${String(e)}`);
        return true;
      });
      await w.close().catch(() => undefined);
      await r.close();
      // The volume reads as written; the object at the free id is a leftover, not damage.
      const v = await Volume.open(inner, { readOnly: true });
      const want = Buffer.concat([Buffer.alloc(half, 9), Buffer.alloc(half, 7)]);
      assert.ok((await v.read(0, 2 * half)).equals(want), occupant);
      await v.close();
    }
  });

  it('a reader opening a checkpoint dropped meanwhile never takes a stale fence at its id for it', async () => {
    const inner = MemStore.isolated('mem://id-reused-open/');
    await Volume.create(inner, { size: SIZE, segmentSize: 4 * MiB });
    const w = await Volume.open(inner, { flushIntervalMs: 0 });
    await w.write(0, Buffer.alloc(2 * CHUNK, 7));
    const older = (await w.flush()).checkpoint;
    await w.write(0, Buffer.alloc(CHUNK, 9));
    const old = (await w.flush()).checkpoint;
    await w.write(0, Buffer.alloc(CHUNK, 5));
    await w.flush();
    await w.close();
    // A stale takeover's fence at id `old`: the head of `older`'s tree, as checkpoint `old`.
    const { head: cur } = await readHead(inner);
    const { root, rootLevel } = await readCheckpointHead(inner, older);
    const stale = {
      ...cur,
      root,
      rootLevel,
      checkpoint: old,
      prevCheckpoint: older,
      lastSegment: old,
    };
    const reader = new ScriptedStore(inner, {
      steps: [
        step({
          // The reader resolved `old` as kept and reads its head: meanwhile a compaction drops
          // it and deletes its segment, and the stale fence lands at the free id.
          when: (r) => r.op === 'get' && r.key === segmentKey(old),
          run: async () => {
            await compactVolume(inner, { keepLast: 1, graceMs: 0, minLive: 0, force: true });
            assert.equal(await inner.head(segmentKey(old)), undefined, 'compaction deleted it');
            await inner.put(
              segmentKey(old),
              buildEmptySegment(old, Date.now(), encodeHead(stale)),
              {
                ifNoneMatch: true,
              },
            );
          },
        }),
      ],
    });
    await assert.rejects(Volume.open(reader, { at: { checkpoint: old } }), (e) => {
      assert.ok(isHyperError(e, 'CHECKPOINT_NOT_FOUND'), String(e));
      return true;
    });
  });
});
