/**
 * Pipelined flushes: several segment PUTs in flight while the next segment fills. Checked
 * against a byte model, with PUTs held, reordered, failed (before or after they land) and
 * the writer killed; on every head write, the head must name only segments that exist.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { describe, it } from 'node:test';
import { HyperError, isHyperError } from '../../../../src/errors.js';
import { decodeHead, type HeadRecord } from '../../../../src/format/codec/head.js';
import { decodeEmbeddedHead } from '../../../../src/format/codec/segment.js';
import {
  HEAD_KEY,
  SEGMENT_PREFIX,
  parseSegmentKey,
  segmentKey,
} from '../../../../src/format/keys.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import { checkVolume } from '../../../../src/format/volume/check.js';
import type {
  GetOptions,
  GetResult,
  PutBody,
  PutOptions,
} from '../../../../src/format/store/types.js';
import { KiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { rng } from '../../../helpers/rng.js';
import { joinBody } from '../../../../src/format/store/common.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex').slice(0, 16);
const tick = (ms = 0): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Fault = 'before' | 'after' | undefined;

/**
 * A mem store whose segment PUTs can be held (released by the test, in any order), failed,
 * or delayed; it checks invariant (g) on every head PUT that lands: the head's checkpoint
 * and its chain back to the previous head all exist.
 */
class PipeStore extends MemStore {
  held = false;
  private readonly gates = new Map<number, () => void>();
  inFlight = 0;
  maxInFlight = 0;
  /** Segment PUTs whose body came in pieces (blocks gathered from the write buffer). */
  gathered = 0;
  violations: string[] = [];
  /** Decide the fault of one request (default: none). */
  fault: (what: string) => Fault = () => undefined;
  /** Extra latency of a segment PUT, in ms. */
  delay: () => number = () => 0;
  /** Requests of a killed writer fail (its PUTs in flight may still land). */
  dead = false;
  private lastHead: number | undefined;
  /** The objects, shared with the MemStore underneath (for the checks). */
  readonly objects: Map<string, { body: Buffer }>;

  constructor() {
    const map = new Map();
    super('mem://pipeline/', map);
    this.objects = map;
  }

  /** Let the held PUT of segment `id` go on. */
  release(id: number): void {
    const g = this.gates.get(id);
    assert.ok(g, `segment ${id} is not held`);
    this.gates.delete(id);
    g();
  }

  heldIds(): number[] {
    return [...this.gates.keys()].sort((a, b) => a - b);
  }

  private check(what: string): void {
    if (this.dead) throw new HyperError('unavailable', 'STORE_UNAVAILABLE', `dead: ${what}`);
  }

  override async get(key: string, options?: GetOptions): Promise<GetResult> {
    this.check(`get ${key}`);
    if (this.fault(`get ${key}`) === 'before')
      throw new HyperError('unavailable', 'STORE_UNAVAILABLE', `injected: get ${key}`);
    return super.get(key, options);
  }

  override async put(key: string, body: PutBody, options?: PutOptions): Promise<{ etag: string }> {
    this.check(`put ${key}`);
    const seg = parseSegmentKey(key);
    if (seg !== undefined) {
      if (!Buffer.isBuffer(body) && body.length > 1) this.gathered++;
      this.inFlight++;
      this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
      try {
        if (this.held) await new Promise<void>((r) => this.gates.set(seg, r));
        const d = this.delay();
        if (d > 0) await tick(d);
      } finally {
        this.inFlight--;
      }
    }
    const f = this.fault(`put ${key}`);
    if (f === 'before')
      throw new HyperError('unavailable', 'STORE_UNAVAILABLE', `injected: put ${key}`);
    if (key === HEAD_KEY) this.headLanding(joinBody(body));
    const r = await super.put(key, body, options);
    if (f === 'after')
      throw new HyperError('unavailable', 'STORE_UNAVAILABLE', `injected after: put ${key}`);
    return r;
  }

  private headLanding(body: Buffer): void {
    const h = decodeHead(body).head;
    const since = this.lastHead;
    this.lastHead = h.checkpoint;
    for (let id = h.checkpoint; since === undefined || id > since;) {
      const e = this.objects.get(segmentKey(id));
      if (!e) {
        this.violations.push(`head (checkpoint ${h.checkpoint}) names missing segment ${id}`);
        return;
      }
      if (since === undefined) return;
      const prev = decodeEmbeddedHead(e.body).prevCheckpoint;
      if (prev >= id) return;
      id = prev;
    }
  }

  segmentIds(): number[] {
    return [...this.objects.keys()]
      .filter((k) => k.startsWith(SEGMENT_PREFIX))
      .map((k) => parseSegmentKey(k) as number)
      .sort((a, b) => a - b);
  }

  /** The stored head (bypassing faults). */
  storedHead(): HeadRecord {
    return decodeHead((this.objects.get(HEAD_KEY) as { body: Buffer }).body).head;
  }
}

const SEG = 64 * KiB;

async function setup(size = 4096 * KiB): Promise<PipeStore> {
  const store = new PipeStore();
  await Volume.create(store, { size });
  return store;
}

function open(store: PipeStore, extra: Parameters<typeof Volume.open>[1] = {}): Promise<Volume> {
  return Volume.open(store, {
    flushIntervalMs: 0,
    flushBytes: SEG,
    flushPipeline: 3,
    maxDirtyBytes: 5 * SEG, // three segments in flight and the next one filling
    nodeCacheBytes: 0, // index nodes of segments in flight must come from memory
    dataCacheBytes: 0,
    leaseTtlMs: 60_000,
    ...extra,
  });
}

const fill = (n: number, seed: number): Buffer => {
  const b = Buffer.alloc(n);
  const r = rng(seed);
  for (let i = 0; i < n; i += 4) b.writeUInt32LE(Math.floor(r() * 2 ** 32), i);
  return b;
};

/**
 * A writer that committed one segment, then wrote three more whose PUTs are all held in
 * flight (fill seeds `seed + 1..3`).
 */
async function committedThenHeld(seed: number): Promise<{
  store: PipeStore;
  vol: Volume;
  committed: { checkpoint: number };
  held: number[];
}> {
  const store = await setup();
  const vol = await open(store);
  await vol.write(0, fill(SEG, 1));
  const committed = await vol.flush();
  store.held = true;
  for (let k = 1; k < 4; k++) {
    await vol.write(k * SEG, fill(SEG, seed + k));
    await tick();
  }
  await tick(5);
  return { store, vol, committed, held: store.heldIds() };
}

describe('pipelined flushes', () => {
  it('keeps several segment PUTs in flight, reads them from memory, and commits only durable ones', async () => {
    const store = await setup();
    const vol = await open(store);
    const model = Buffer.alloc(4096 * KiB);
    store.held = true;
    const first = store.storedHead().lastSegment + 1;
    // Three segments' worth: three PUTs in flight at once; the fourth waits for room.
    for (let k = 0; k < 3; k++) {
      const d = fill(SEG, k + 1);
      d.copy(model, k * SEG);
      await vol.write(k * SEG, d);
      await tick();
    }
    const more = fill(SEG, 9);
    more.copy(model, 3 * SEG);
    await vol.write(3 * SEG, more);
    await tick(5);
    assert.deepEqual(store.heldIds(), [first, first + 1, first + 2]);
    assert.equal(store.maxInFlight, 3, 'three segment PUTs in flight at once');
    // Reads of blocks in flight come from the buffer; of the whole range, too.
    assert.equal(sha(await vol.read(0, 4 * SEG)), sha(model.subarray(0, 4 * SEG)));
    // The last lands first: nothing becomes the head (the earlier ones are not durable).
    store.release(first + 2);
    await tick(5);
    assert.equal(store.storedHead().checkpoint, first - 1);
    assert.equal(vol.headRecord.checkpoint, first - 1, 'the head waits for the durable prefix');
    store.release(first);
    await tick(5);
    assert.equal(vol.headRecord.checkpoint, first, 'the first landed: the head moves to it');
    assert.equal(store.storedHead().checkpoint, first - 1, 'no CAS without a flush');
    const flushing = vol.flush();
    await tick(5);
    store.release(first + 1);
    await tick(5);
    for (const id of store.heldIds()) store.release(id);
    const info = await flushing;
    assert.ok(info.checkpoint >= first + 2);
    assert.equal(store.storedHead().checkpoint, info.checkpoint);
    assert.equal(sha(await vol.read(0, 4 * SEG)), sha(model.subarray(0, 4 * SEG)));
    await vol.close();
    const ro = await Volume.open(store, { readOnly: true, nodeCacheBytes: 0 });
    assert.equal(sha(await ro.read(0, model.length)), sha(model));
    assert.deepEqual(store.violations, []);
  });

  it('writes a failed segment again with the same bytes; later ones that landed stay in the chain', async () => {
    const store = await setup();
    const vol = await open(store);
    const model = Buffer.alloc(4096 * KiB);
    store.held = true;
    const first = store.storedHead().lastSegment + 1;
    for (let k = 0; k < 3; k++) {
      const d = fill(SEG, 20 + k);
      d.copy(model, k * SEG);
      await vol.write(k * SEG, d);
      await tick();
    }
    await tick(5);
    assert.deepEqual(store.heldIds(), [first, first + 1, first + 2]);
    // The second lands, the first fails, the third lands.
    store.release(first + 1);
    await tick(5);
    store.fault = (w) => (w === `put ${segmentKey(first)}` ? 'before' : undefined);
    store.release(first);
    await tick(5);
    store.fault = () => undefined;
    store.release(first + 2);
    await tick(5);
    // Meanwhile reads still see every write.
    assert.equal(sha(await vol.read(0, 3 * SEG)), sha(model.subarray(0, 3 * SEG)));
    // Until the first lands, the chain ends before it: readers see the committed state.
    const before = await Volume.open(store, { readOnly: true, nodeCacheBytes: 0 });
    assert.equal(before.headRecord.checkpoint, first - 1);
    await before.close();
    store.held = false;
    const info = await vol.flush();
    const head = store.storedHead();
    assert.equal(head.checkpoint, info.checkpoint);
    assert.equal(info.checkpoint, first + 2, 'the same three segments, no new ids');
    for (const id of [first, first + 1, first + 2]) assert.ok(!head.skipped.includes(id));
    assert.equal(sha(await vol.read(0, model.length)), sha(model));
    await vol.close();
    const ro = await Volume.open(store, { readOnly: true, nodeCacheBytes: 0 });
    assert.equal(sha(await ro.read(0, model.length)), sha(model));
    assert.deepEqual(store.violations, []);
  });

  it('a fenced writer commits nothing of its pipeline; the new writer reads the last commit', async () => {
    const { store, vol, committed, held } = await committedThenHeld(40);
    assert.ok(held.length >= 2);
    // Another writer takes over while those PUTs are in flight; then they land.
    store.held = false;
    const other = await open(store, { force: true });
    for (const id of held) store.release(id);
    await assert.rejects(vol.flush(), (e) => isHyperError(e, 'FENCED'));
    assert.equal(store.storedHead().epoch, other.headRecord.epoch);
    // The new writer's fence took the first id the old one had in flight.
    assert.equal(store.storedHead().checkpoint, held[0]);
    assert.equal(store.storedHead().prevCheckpoint, committed.checkpoint);
    const got = await other.read(0, 4 * SEG);
    assert.equal(sha(got.subarray(0, SEG)), sha(fill(SEG, 1)));
    assert.equal(sha(got.subarray(SEG)), sha(Buffer.alloc(3 * SEG)));
    // The new writer's segments go past the orphans that landed after its takeover.
    await other.write(0, fill(SEG, 77));
    await other.flush();
    await other.close();
    await vol.close().catch(() => undefined);
    assert.deepEqual(store.violations, []);
  });

  it("an old writer's PUTs that land around a takeover, past the fence, are never checkpoints", async () => {
    const { store, vol, committed, held } = await committedThenHeld(60);
    assert.equal(held.length, 3);
    // Out of order: the last lands before the takeover lists, the first two only after.
    store.release(held[2] as number);
    await tick(5);
    store.held = false;
    const other = await open(store, { force: true });
    assert.equal(other.headRecord.checkpoint, held[0], 'the fence takes the first id in flight');
    assert.equal(other.headRecord.prevCheckpoint, committed.checkpoint);
    for (const id of held.slice(0, 2)) store.release(id);
    await tick(5);
    assert.deepEqual(
      store.segmentIds().filter((id) => id > committed.checkpoint),
      held,
      'the fence and the two PUTs of the old pipeline that landed',
    );
    await assert.rejects(vol.flush(), (e) => isHyperError(e, 'FENCED'));
    const reader = await Volume.open(store, { readOnly: true, nodeCacheBytes: 0 });
    assert.equal(
      reader.headRecord.checkpoint,
      held[0],
      'they name the fence id, under an older epoch',
    );
    await reader.close();
    await other.write(0, fill(SEG, 78));
    const info = await other.flush();
    assert.ok(info.checkpoint > (held[2] as number));
    for (const id of held.slice(1))
      assert.ok(store.storedHead().skipped.includes(id), `${id} is skipped`);
    await other.close();
    await vol.close().catch(() => undefined);
    const r = await checkVolume(store, { deep: true });
    assert.deepEqual(
      r.problems.map((p) => `${p.kind} ${p.key}`),
      held.slice(1).map((id) => `uncommitted ${segmentKey(id)}`),
      'the orphans are uncommitted, none passes for a retained checkpoint',
    );
    assert.deepEqual(store.violations, []);
  });

  for (const seed of [1, 2, 3, 4, 5, 6]) {
    it(`matches a byte model under random faults, reordering and kills (seed ${seed})`, async () => {
      const size = 1024 * KiB;
      const store = await setup(size);
      const rand = rng(seed);
      const pipeline = 1 + Math.floor(rand() * 4);
      const opts = {
        flushPipeline: pipeline,
        maxDirtyBytes: rand() < 0.5 ? 2 * SEG : 6 * SEG,
      };
      let vol = await open(store, opts);
      const model = Buffer.alloc(size);
      const BS = 4096;
      /**
       * Per 4 KiB block, what a reader of the volume (rolled forward to the last segment that
       * landed, FORMAT.md "Commit protocol") may find there: its content at the last
       * acknowledged flush, or any written since (a segment written for room commits too).
       */
      const flushed = (): Set<string>[] =>
        Array.from(
          { length: size / BS },
          (_, b) => new Set([sha(model.subarray(b * BS, (b + 1) * BS))]),
        );
      let may = flushed();
      const wrote = (o: number, d: Buffer): void => {
        for (let k = 0; k < d.length; k += BS) may[(o + k) / BS]?.add(sha(d.subarray(k, k + BS)));
      };
      const allowed = (content: Buffer): string | undefined => {
        for (let b = 0; b < size / BS; b++)
          if (!may[b]?.has(sha(content.subarray(b * BS, (b + 1) * BS))))
            return `block ${b} reads ${sha(content.subarray(b * BS, (b + 1) * BS))}`;
        return undefined;
      };
      store.delay = () => (rand() < 0.5 ? 0 : Math.floor(rand() * 4));
      const faultRate = 0.04 + rand() * 0.08;
      store.fault = (what) => {
        if (!what.startsWith('put ') && !what.startsWith('get ')) return undefined;
        const r = rand();
        return r < faultRate / 2 ? 'before' : r < faultRate ? 'after' : undefined;
      };
      const checkHead = async (): Promise<void> => {
        const ro = await Volume.open(store, { readOnly: true, nodeCacheBytes: 0 });
        const bad = allowed(await ro.read(0, size));
        await ro.close();
        assert.equal(bad, undefined, `seed ${seed}: the volume holds what was never written`);
      };
      for (let step = 0; step < 160; step++) {
        const r = rand();
        if (r < 0.6) {
          // A burst of writes (some sequential), concurrently like a queue depth.
          const n = 1 + Math.floor(rand() * 6);
          const writes: Promise<void>[] = [];
          let off = Math.floor((rand() * size) / 4096) * 4096;
          const applied: [number, Buffer][] = [];
          for (let k = 0; k < n; k++) {
            const len = Math.min(size - off, (1 + Math.floor(rand() * 16)) * 4096);
            if (len <= 0) break;
            const d = fill(len, seed * 1000 + step * 10 + k);
            applied.push([off, d]);
            wrote(off, d);
            writes.push(vol.write(off, d));
            off += len;
          }
          const res = await Promise.allSettled(writes);
          for (const [k, x] of res.entries()) {
            const [o, d] = applied[k] as [number, Buffer];
            if (x.status === 'fulfilled') d.copy(model, o);
            else {
              // A failed write may or may not be applied: write it again until it is.
              for (;;) {
                try {
                  await vol.write(o, d);
                  break;
                } catch (e) {
                  assert.ok(isHyperError(e), `seed ${seed}: unexpected ${String(e)}`);
                }
              }
              d.copy(model, o);
            }
          }
        } else if (r < 0.75) {
          const o = Math.floor(rand() * size);
          const len = Math.min(size - o, 1 + Math.floor(rand() * 96 * KiB));
          let got: Buffer | undefined;
          try {
            got = await vol.read(o, len);
          } catch (e) {
            assert.ok(isHyperError(e), `seed ${seed}: unexpected ${String(e)}`);
          }
          if (got) assert.equal(sha(got), sha(model.subarray(o, o + len)), `seed ${seed} read`);
        } else if (r < 0.93) {
          try {
            await (rand() < 0.5 ? vol.flush() : vol.sync());
            may = flushed();
          } catch (e) {
            assert.ok(isHyperError(e), `seed ${seed}: unexpected ${String(e)}`);
          }
          const saved = store.fault;
          store.fault = () => undefined;
          await checkHead();
          store.fault = saved;
        } else {
          // Kill: the process stops (requests in flight may still land), another opens.
          store.dead = true;
          await tick(6);
          await vol.close().catch(() => undefined);
          store.dead = false;
          const saved = store.fault;
          store.fault = () => undefined;
          await checkHead();
          vol = await open(store, { ...opts, force: true });
          const now = await vol.read(0, size);
          store.fault = saved;
          assert.equal(allowed(now), undefined, `seed ${seed}: after a kill`);
          // Whatever it reads is now the model (writes after the last flush may be lost).
          now.copy(model);
          may = flushed();
        }
      }
      store.fault = () => undefined;
      store.delay = () => 0;
      await vol.close();
      const ro = await Volume.open(store, { readOnly: true, nodeCacheBytes: 0 });
      assert.equal(sha(await ro.read(0, size)), sha(model), `seed ${seed}: final content`);
      assert.deepEqual(store.violations, []);
      // Sequential bursts make runs long enough for segments to gather blocks from the slabs.
      assert.ok(store.gathered > 0, `seed ${seed}: no segment was gathered`);
      // (With a bound of two segments, one in flight and one filling already fill it.)
      if (pipeline > 1 && opts.maxDirtyBytes > 2 * SEG)
        assert.ok(store.maxInFlight > 1, `seed ${seed}: nothing was pipelined`);
    });
  }
});
