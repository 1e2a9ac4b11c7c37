/**
 * The replicator against a model, with seeded random workloads on a file primary and a
 * mem:// replica: after it settles the replica equals the primary and the model; every
 * replica checkpoint outside the manifest's inconsistent ranges equals the model at some
 * point of the write order (a prefix); a replica outage, a pool overflow and a crash of the
 * replicator each end in an equal replica without a full resync when the bitmap is valid.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFile as copyFile_, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, describe, it } from 'node:test';
import { HyperError, isHyperError } from '../../../src/errors.js';
import { PRIMARY_DATA_OFFSET } from '../../../src/format/codec/primary.js';
import { SEGMENT_PREFIX } from '../../../src/format/keys.js';
import { AbortableStore } from '../../../src/format/store/abortable.js';
import { MemStore } from '../../../src/format/store/mem.js';
import type { ObjectStore } from '../../../src/format/store/index.js';
import { compactVolume } from '../../../src/format/volume/compact.js';
import { readHead } from '../../../src/format/volume/heads.js';
import { Volume } from '../../../src/format/volume/volume.js';
import {
  checkPrimary,
  formatPrimary,
  openPrimary,
  openReplicaStore,
  restorePrimary,
} from '../../../src/replica/admin.js';
import { readManifest, isInconsistent } from '../../../src/replica/manifest.js';
import { PrimaryFile } from '../../../src/replica/primary.js';
import { Replicator } from '../../../src/replica/replicator.js';
import type { ReplicaTarget } from '../../../src/replica/shipper.js';
import type { CheckpointInfo } from '../../../src/format/volume/types.js';
import { rng } from '../../helpers/rng.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const DEVICE = 2 * MiB;
const REGION = 64 * KiB;

/** A store that can be cut off: every request fails while `down`. */
class OutageStore implements ObjectStore {
  down = false;
  constructor(private readonly inner: ObjectStore) {}
  get url(): string {
    return this.inner.url;
  }
  private check(): void {
    if (this.down) throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'outage (test)');
  }
  /** Segment GETs to fail, as a store failing for a moment would (one at a time). */
  failSegmentGets = 0;
  /** While set, every get waits for it, then fails (a request the outage answers late). */
  holdGets: Promise<void> | undefined;
  heldGets = 0;
  async get(...a: Parameters<ObjectStore['get']>) {
    if (this.holdGets) {
      this.heldGets++;
      await this.holdGets;
      throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'outage (test, late)');
    }
    this.check();
    if (this.failSegmentGets > 0 && a[0].startsWith(SEGMENT_PREFIX)) {
      this.failSegmentGets--;
      throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'segment GET failed (test)');
    }
    return this.inner.get(...a);
  }
  async head(...a: Parameters<ObjectStore['head']>) {
    this.check();
    return this.inner.head(...a);
  }
  /** While set, every put waits for it first (then fails if `down` by then). */
  hold: Promise<void> | undefined;
  heldPuts = 0;
  /** While set, segment PUTs fail (no commit can land; the lease, head and manifest can). */
  failSegments = false;
  async put(...a: Parameters<ObjectStore['put']>) {
    if (this.hold) {
      this.heldPuts++;
      await this.hold;
    }
    this.check();
    if (this.failSegments && a[0].startsWith(SEGMENT_PREFIX))
      throw new HyperError('unavailable', 'STORE_UNAVAILABLE', 'segment PUT refused (test)');
    return this.inner.put(...a);
  }
  async *list(...a: Parameters<ObjectStore['list']>) {
    this.check();
    yield* this.inner.list(...a);
  }
  async delete(...a: Parameters<ObjectStore['delete']>) {
    this.check();
    return this.inner.delete(...a);
  }
  sub(prefix: string): ObjectStore {
    return new OutageStore(this.inner.sub(prefix));
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/**
 * The replica volume behind a ring, as the shipper worker holds it (WorkerTarget): write()
 * and writeZeroes() resolve once the change is copied and queued, tryWrite() takes a write
 * at once unless a seeded coin says the ring is full or a change waits for room, and the
 * changes reach the volume later, in order. A failure is kept: it refuses every tryWrite()
 * and fails the next call. A kill drops what was queued. It copies what it is given
 * (copiesData), so the replicator recycles its buffers as it does with the worker.
 */
class RingTarget implements ReplicaTarget {
  readonly copiesData = true;
  heldBytes = 0;
  /** Writes tryWrite() took. */
  taken = 0;
  private tail: Promise<void> = Promise.resolve();
  private waiting = 0;
  private error: unknown;
  constructor(
    private readonly v: Volume,
    private readonly r: () => number,
  ) {}
  get info(): ReplicaTarget['info'] {
    return this.v.info;
  }
  /** Run `op` after everything queued before it; a failure sticks. */
  private after<T>(op: () => Promise<T>): Promise<T> {
    const p = this.tail.then(async () => {
      if (this.error !== undefined) throw this.error;
      if (this.r() < 0.2) await new Promise((res) => setImmediate(res));
      if (this.error !== undefined) throw this.error;
      return op();
    });
    this.tail = p.then(
      () => undefined,
      (e: unknown) => void (this.error ??= e),
    );
    return p;
  }
  private queue(op: () => Promise<void>, bytes: number): void {
    this.heldBytes += bytes;
    void this.after(op)
      .finally(() => (this.heldBytes -= bytes))
      .catch(() => undefined);
  }
  tryWrite(offset: number, data: Buffer): boolean {
    if (this.error !== undefined || this.waiting > 0 || this.r() < 0.3) return false;
    const copy = Buffer.from(data);
    this.queue(() => this.v.write(offset, copy), copy.length);
    this.taken++;
    return true;
  }
  private async room(): Promise<void> {
    if (this.error !== undefined) throw this.error;
    this.waiting++;
    try {
      while (this.r() < 0.3) await new Promise((res) => setImmediate(res));
    } finally {
      this.waiting--;
    }
    if (this.error !== undefined) throw this.error;
  }
  async write(offset: number, data: Buffer): Promise<void> {
    const copy = Buffer.from(data);
    await this.room();
    this.queue(() => this.v.write(offset, copy), copy.length);
  }
  async writeZeroes(offset: number, length: number): Promise<void> {
    await this.room();
    this.queue(() => this.v.writeZeroes(offset, length), 0);
  }
  flush(): Promise<CheckpointInfo> {
    return this.after(() => this.v.flush());
  }
  async close(): Promise<void> {
    await this.tail;
    await this.v.close();
  }
  kill(): Promise<void> {
    this.error ??= new HyperError('unavailable', 'ABORTED', 'killed');
    return Promise.resolve();
  }
}

const dir = await mkdtemp(join(tmpdir(), 'hyper-replica-'));
after(() => rm(dir, { recursive: true, force: true }));

let n = 0;
async function setup(): Promise<{ file: string; uuid: string; prefix: string }> {
  const file = join(dir, `p${++n}.img`);
  const prefix = `mem://replica-test-${n}/r/`;
  const r = await formatPrimary({
    file,
    deviceSize: DEVICE,
    replicaPrefix: prefix,
    regionSize: REGION,
    openStore: (u) => Promise.resolve(new MemStore(u)),
  });
  return { file, uuid: r.uuid, prefix };
}

const open = (u: string): Promise<ObjectStore> => Promise.resolve(new MemStore(u));

/**
 * Every replicator a test started is stopped after it, as a killed process would be: one left
 * running by a failed assertion would keep the file's event loop alive until its timeout.
 */
const started: Replicator[] = [];
afterEach(async () => {
  for (const rep of started.splice(0)) await rep.crash();
});

async function start(
  s: { file: string; uuid: string; prefix: string },
  o: {
    poolBytes?: number;
    holder?: string;
    force?: boolean;
    takeReplica?: 'always' | 'once';
    retryMs?: number;
    /** OutageStore.failSegmentGets from the start. */
    failSegmentGets?: number;
    /**
     * A seeded coin: each replica opened is behind a RingTarget three times in four (the
     * shipper worker's way: tryWrite, writes applied later, buffers recycled).
     */
    ring?: () => number;
  } = {},
): Promise<{
  rep: Replicator;
  store: OutageStore;
  opens: () => number;
  primary: PrimaryFile;
  /** The RingTargets opened so far. */
  rings: RingTarget[];
}> {
  const { primary, header } = await openPrimary(s.file, s.uuid, { force: o.force === true });
  const inner = (await openReplicaStore(header.replicaUrl, s.uuid, open)).store;
  const store = new OutageStore(inner);
  store.failSegmentGets = o.failSegmentGets ?? 0;
  // What `replica serve` does: every request to the replica ends once a stop gives it up.
  const giveUp = new AbortController();
  const reach = new AbortableStore(store, giveUp.signal);
  const holder = o.holder ?? 'test-a';
  // 'once': the replica's lease is taken by force at start only, later reconnects wait for it
  // unless it is this replicator's own (what `replica serve` does).
  let forceAtStart = true;
  let opens = 0;
  const rings: RingTarget[] = [];
  const rep = new Replicator({
    primary,
    header,
    replicaStore: reach,
    owner: holder,
    openReplica: async () => {
      opens++;
      const force = o.takeReplica !== 'once' || forceAtStart;
      forceAtStart = false;
      const v = await Volume.open(reach, { holder, force, reclaim: true, flushIntervalMs: 0 });
      if (o.ring === undefined || o.ring() >= 0.75) return v;
      const t = new RingTarget(v, o.ring);
      rings.push(t);
      return t;
    },
    openReplicaAt: (checkpoint) => Volume.open(reach, { at: { checkpoint } }),
    takeOver: o.force === true,
    giveUp,
    ...(TRACING ? { logger: traceLogger(holder) } : {}),
    poolBytes: o.poolBytes ?? 64 * MiB,
    commitIntervalMs: 20,
    clearDelayMs: 0,
    retryMs: o.retryMs ?? 20,
  });
  started.push(rep);
  await rep.start();
  return { rep, store, opens: () => opens, primary, rings };
}

/** A failover: a copy of the primary (taken now, while its replicator may run) served by force. */
async function failover(
  s: { file: string; uuid: string; prefix: string },
  holder: string,
): ReturnType<typeof start> {
  const file = `${s.file}.b`;
  await copyFile_(s.file, file);
  return start({ ...s, file }, { holder, force: true, takeReplica: 'once' });
}

const T0 = Date.now();
/**
 * HYPER_REPLICA_TRACE=1: the mixed-faults model records its operations, faults and the
 * replicators' log lines, and prints them when the replica does not settle, or with the
 * differing sectors when it ends unlike the model (the sectors carry the operation's tag
 * and fill byte).
 */
const TRACING = process.env.HYPER_REPLICA_TRACE === '1';
const TRACE: string[] = [];
function traceLogger(h: string) {
  const f = (lvl: string) => (msg: string, fields?: Record<string, unknown>) =>
    TRACE.push(`${Date.now() - T0} ${h} ${lvl} ${msg} ${JSON.stringify(fields ?? {})}`);
  return { debug: f('debug'), info: f('info'), warn: f('warn'), error: f('error') };
}
function diffReport(got: Buffer, want: Buffer): string {
  const out: string[] = [];
  for (let b = 0; b < DEVICE; b += 512) {
    const g = got.subarray(b, b + 512);
    const w = want.subarray(b, b + 512);
    if (!g.equals(w))
      out.push(
        `sector ${b / 512} (region ${Math.floor(b / REGION)}): got tag ${g.readUInt32LE(0)} fill ${g[4]} want tag ${w.readUInt32LE(0)} fill ${w[4]}`,
      );
  }
  return out.slice(0, 40).join('\n') + `\n(${out.length} sectors)`;
}
const sleep = (ms: number): Promise<void> => new Promise((res) => setTimeout(res, ms));

/** Wait (at most `ms`) until the replicator reports an error matching `re`. */
async function untilError(rep: Replicator, re: RegExp, ms = 20_000): Promise<void> {
  const until = Date.now() + ms;
  while (!re.test(rep.status().replica.error ?? '') && Date.now() < until) await sleep(20);
}

/** Flush (at most `ms`) until the replicator is back in logging mode. */
async function untilLogging(rep: Replicator, ms = 20_000): Promise<void> {
  const until = Date.now() + ms;
  while (rep.status().mode !== 'logging' && Date.now() < until) await rep.flush();
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function replicaContent(prefix: string, uuid: string, checkpoint?: number): Promise<Buffer> {
  const { store } = await openReplicaStore(prefix, uuid, open);
  const v = await Volume.open(
    store,
    checkpoint === undefined ? { readOnly: true } : { at: { checkpoint } },
  );
  try {
    return await v.read(0, DEVICE);
  } finally {
    await v.close();
  }
}

async function primaryContent(file: string): Promise<Buffer> {
  const p = await PrimaryFile.open(file, { readOnly: true });
  try {
    return await p.read(0, DEVICE);
  } finally {
    await p.close();
  }
}

/** The model: device bytes, with a fingerprint after every operation. */
class Model {
  readonly bytes = Buffer.alloc(DEVICE);
  readonly seen = new Set<string>([sha(Buffer.alloc(DEVICE))]);
  apply(offset: number, data: Buffer | null, length: number): void {
    if (data) data.copy(this.bytes, offset);
    else this.bytes.fill(0, offset, offset + length);
    this.seen.add(sha(this.bytes));
  }
}

async function randomOps(
  target: Replicator | (() => Replicator),
  model: Model,
  seed: number,
  count: number,
  during?: (i: number) => Promise<void> | void,
): Promise<void> {
  const r = rng(seed);
  for (let i = 0; i < count; i++) {
    await during?.(i);
    const rep = typeof target === 'function' ? target() : target;
    const x = r();
    const offset = Math.floor((r() * DEVICE) / 512) * 512;
    const length = Math.min(DEVICE - offset, (1 + Math.floor(r() * 128)) * 512);
    if (TRACING)
      TRACE.push(
        `${Date.now() - T0} op ${i} ${x < 0.7 ? 'write' : x < 0.8 ? 'zero' : 'flush'} sectors ${offset / 512}+${length / 512} regions ${Math.floor(offset / REGION)}-${Math.floor((offset + length - 1) / REGION)} tag ${seed + i} mode ${rep.mode}`,
      );
    if (x < 0.7) {
      const data = Buffer.alloc(length, (i % 251) + 1);
      data.writeUInt32LE(seed + i, 0);
      await rep.write(offset, data);
      model.apply(offset, data, length);
    } else if (x < 0.8) {
      await rep.zero(offset, length, r() < 0.5);
      model.apply(offset, null, length);
    } else {
      await rep.flush();
    }
  }
}

/** A replicator ships `count` random operations, settles and stops cleanly: the model. */
async function shipAndStop(
  s: { file: string; uuid: string; prefix: string },
  holder: string,
  seed: number,
  count: number,
): Promise<Model> {
  const { rep } = await start(s, { holder });
  const model = new Model();
  await randomOps(rep, model, seed, count);
  assert.ok(await rep.settle(10_000));
  await rep.close();
  return model;
}

/** Every checkpoint the manifest calls consistent equals the model at some point. */
async function assertPrefixes(s: { prefix: string; uuid: string }, model: Model): Promise<number> {
  const { store } = await openReplicaStore(s.prefix, s.uuid, open);
  const manifest = (await readManifest(store))!;
  const { head } = await readHead(store);
  let checked = 0;
  for (let c = 1; c <= head.checkpoint; c++) {
    if (isInconsistent(manifest, c)) continue;
    let content: Buffer;
    try {
      content = await replicaContent(s.prefix, s.uuid, c);
    } catch {
      continue; // not retained
    }
    assert.ok(model.seen.has(sha(content)), `checkpoint ${c} is not a prefix of the write order`);
    checked++;
  }
  return checked;
}

/**
 * Seeds of the model tests: 1–3 and the seeds that once found a fault, or
 * HYPER_REPLICA_SEEDS=N runs N of them (a longer sweep) from HYPER_REPLICA_FIRST_SEED
 * (default 1) on. Found: 902 (split brain: a resync's wake-up lost during a connect attempt)
 * and 919 (mixed faults, about one run in three: two connect loops, the second fencing the
 * replica handle the first had just opened, with copies applied to it lost).
 */
const FIRST_SEED = Number(process.env.HYPER_REPLICA_FIRST_SEED ?? 1);
const SWEEP = process.env.HYPER_REPLICA_SEEDS ?? process.env.HYPER_REPLICA_FIRST_SEED;
const SEEDS =
  SWEEP === undefined
    ? [1, 2, 3, 902, 919]
    : Array.from(
        { length: Number(process.env.HYPER_REPLICA_SEEDS ?? 3) },
        (_, i) => FIRST_SEED + i,
      );

describe('replicator', () => {
  for (const seed of SEEDS) {
    it(`logging: the replica follows the write order and settles equal (seed ${seed})`, async () => {
      const s = await setup();
      const { rep, rings } = await start(s, { ring: rng(seed * 17) });
      assert.equal(rep.mode, 'logging');
      const model = new Model();
      await randomOps(rep, model, seed, 200);
      assert.ok(await rep.settle(10_000));
      assert.equal(rep.status().mode, 'logging');
      // Behind a ring, writes were handed over at once as well as waited for.
      for (const t of rings) assert.ok(t.taken > 0, 'no write went through tryWrite()');
      await rep.close();
      assert.equal(sha(await primaryContent(s.file)), sha(model.bytes));
      assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
      const checked = await assertPrefixes(s, model);
      assert.ok(checked > 3, `only ${checked} checkpoints`);
      // A clean stop leaves nothing dirty and the next start has nothing to copy.
      const again = await start(s);
      assert.equal(again.rep.mode, 'logging');
      assert.equal(again.rep.status().dirtyRegions, 0);
      await again.rep.close();
    });
  }

  for (const seed of SEEDS) {
    it(`mixed faults: outages, hangs, overflows, resyncs, crashes and given-up stops, against the model (seed ${seed})`, async () => {
      const s = await setup();
      const r = rng(seed * 7919);
      // Some header writes are slow, as on a busy disk: a kill can come while the bitmap that
      // a change depends on is still on its way.
      const rh = rng(seed * 31);
      const slowHeaders = (c: Awaited<ReturnType<typeof start>>): typeof c => {
        const write = c.primary.writeHeader.bind(c.primary);
        c.primary.writeHeader = async (h) => {
          if (rh() < 0.3) await sleep(rh() * 15);
          return write(h);
        };
        return c;
      };
      const ring = rng(seed * 17);
      let cur = slowHeaders(
        await start(s, { poolBytes: 256 * KiB, holder: `mixed-${seed}-0`, ring }),
      );
      const model = new Model();
      let restarts = 0;
      let fullAsked = false;
      // A hang the replica recovers from: PUTs wait (no answer, no error) for a few ops.
      let hangLeft = 0;
      let endHang: (() => void) | undefined;
      const unhang = (): void => {
        endHang?.();
        endHang = undefined;
        cur.store.hold = undefined;
      };
      await randomOps(
        () => cur.rep,
        model,
        seed + 100,
        120,
        async () => {
          if (endHang && --hangLeft <= 0) {
            unhang();
            if (TRACING) TRACE.push(`${Date.now() - T0} EV unhang`);
          }
          const x = r();
          if (TRACING && x < 0.105)
            TRACE.push(
              `${Date.now() - T0} EV ${x < 0.05 ? `down=${!cur.store.down}` : x < 0.07 ? 'resync' : x < 0.085 ? 'hang?' : x < 0.095 ? 'giveup-restart?' : 'crash?'}`,
            );
          if (x < 0.05) cur.store.down = !cur.store.down;
          else if (x < 0.07) {
            const full = r() < 0.3;
            fullAsked ||= full;
            cur.rep.resync(full);
          } else if (x < 0.085 && !endHang && !cur.store.hold) {
            cur.store.hold = new Promise((res) => (endHang = res));
            hangLeft = 1 + Math.floor(r() * 15);
          } else if (x < 0.095 && restarts < 3) {
            // The replica stops answering for good and the replicator is stopped: the stop
            // gives it up in bounded time; a new one starts from the header it wrote.
            endHang = undefined;
            cur.store.hold = new Promise(() => undefined);
            await cur.rep.flush(); // (a commit point: the replica is asked to commit)
            const t0 = Date.now();
            await cur.rep.close(50, 100);
            assert.ok(Date.now() - t0 < 5000, `the stop took ${Date.now() - t0} ms`);
            restarts++;
            cur = slowHeaders(
              await start(s, {
                poolBytes: 256 * KiB,
                holder: `mixed-${seed}-${restarts}`,
                force: true,
                ring,
              }),
            );
            if (!fullAsked) assert.notEqual(cur.rep.mode, 'forward-full');
          } else if (x < 0.105 && restarts < 3) {
            // kill -9 of the replicator, then a new one from the header on disk (a PUT the
            // dead one left hanging never answers).
            endHang = undefined;
            cur.store.down = true;
            await cur.rep.crash();
            restarts++;
            cur = slowHeaders(
              await start(s, {
                poolBytes: 256 * KiB,
                holder: `mixed-${seed}-${restarts}`,
                force: true,
                ring,
              }),
            );
            // Only an asked-for full resync survives a crash as one.
            if (!fullAsked) assert.notEqual(cur.rep.mode, 'forward-full');
          }
        },
      );
      cur.store.down = false;
      unhang();
      const settled = await cur.rep.settle(30_000);
      if (!settled && TRACING) console.error(TRACE.join('\n'));
      assert.ok(settled, JSON.stringify(cur.rep.status()));
      assert.equal(cur.rep.status().mode, 'logging');
      await cur.rep.close();
      assert.equal(sha(await primaryContent(s.file)), sha(model.bytes));
      const rc = await replicaContent(s.prefix, s.uuid);
      if (!rc.equals(model.bytes) && TRACING) {
        console.error(diffReport(rc, model.bytes));
        console.error(TRACE.join('\n'));
      }
      assert.equal(sha(rc), sha(model.bytes));
      await assertPrefixes(s, model);
    });
  }

  it('pool overflow: forward-part, then resynced by region and logging again', async () => {
    const s = await setup();
    const { rep, store } = await start(s, { poolBytes: 256 * KiB });
    const model = new Model();
    // Hold the shipper back so that the pool fills.
    store.down = true;
    await randomOps(rep, model, 7, 150);
    assert.ok(rep.status().pool.overflows + (rep.status().replica.connected ? 0 : 1) > 0);
    assert.equal(rep.mode, 'forward-part');
    store.down = false;
    assert.ok(await rep.settle(20_000), JSON.stringify(rep.status()));
    await randomOps(rep, model, 8, 50);
    assert.ok(await rep.settle(20_000));
    const st = rep.status();
    assert.equal(st.mode, 'logging');
    assert.ok(st.replica.lastConsistentCheckpoint > 0);
    await rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
    await assertPrefixes(s, model);
    const { store: st2 } = await openReplicaStore(s.prefix, s.uuid, open);
    const m = (await readManifest(st2))!;
    assert.ok(m.inconsistent.length > 0 && m.inconsistent.every((x) => x.to !== null));
  });

  it('replica outage: writes continue at local speed, then catch up', async () => {
    const s = await setup();
    const { rep, store } = await start(s, { poolBytes: 1 * MiB });
    const model = new Model();
    await randomOps(rep, model, 11, 60, (i) => {
      if (i === 20) store.down = true;
    });
    assert.notEqual(rep.status().mode, 'logging');
    store.down = false;
    assert.ok(await rep.settle(20_000), JSON.stringify(rep.status()));
    await rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
    await assertPrefixes(s, model);
  });

  it('a write during a resync pass waits until the pass has made its bits durable (kill -9 in between)', async () => {
    const s = await setup();
    const first = await start(s, { holder: 'test-pass-1' });
    const model = new Model();
    await randomOps(first.rep, model, 31, 60);
    assert.ok(await first.rep.settle(10_000));
    const until = Date.now() + 5000;
    while (first.rep.status().dirtyRegions > 0 && Date.now() < until) await sleep(10);
    assert.equal(first.rep.status().dirtyRegions, 0);
    await sleep(50); // (the clean bitmap's header write)
    // The next header write hangs, as a slow disk would, and never lands: the process dies.
    let reached!: () => void;
    const atHeader = new Promise<void>((res) => (reached = res));
    const write = first.primary.writeHeader.bind(first.primary);
    first.primary.writeHeader = async (h) => {
      reached();
      await new Promise<void>(() => undefined);
      return write(h);
    };
    first.rep.resync(true);
    await atHeader; // the pass set every bit in memory and is writing them
    const data = Buffer.alloc(8192, 0x5a);
    let applied = false;
    const w = first.rep.write(7 * REGION + 4096, data).then(
      () => (applied = true),
      () => undefined,
    );
    await sleep(100);
    // The header never said region 7 was dirty: the write must not have reached the primary.
    assert.equal(applied, false, 'a write reached the primary before its bit was durable');
    await first.rep.crash();
    await Promise.race([w, sleep(1000)]);
    if (applied) model.apply(7 * REGION + 4096, data, data.length);
    const primaryNow = await primaryContent(s.file);
    assert.equal(sha(primaryNow), sha(model.bytes), 'the primary holds a write that failed');
    const second = await start(s, { holder: 'test-pass-2', force: true });
    assert.ok(await second.rep.settle(10_000));
    await second.rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
  });

  it('a resync with nothing dirty leaves the replica consistent and logging', async () => {
    const s = await setup();
    const { rep } = await start(s);
    const model = new Model();
    await randomOps(rep, model, 47, 40);
    await rep.flush();
    assert.ok(await rep.settle(10_000), JSON.stringify(rep.status()));
    assert.equal(rep.status().dirtyRegions, 0);
    assert.deepEqual(rep.resync(), { regions: 0 });
    assert.equal(rep.mode, 'logging');
    // Later flushes are consistent checkpoints, as before the resync.
    await randomOps(rep, model, 48, 20);
    await rep.flush();
    assert.ok(await rep.settle(10_000), JSON.stringify(rep.status()));
    const st = rep.status();
    assert.equal(st.mode, 'logging');
    assert.equal(st.replica.lastConsistentCheckpoint, st.replica.checkpoint);
    await rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
  });

  it('resync asks for the replica now: a retry waiting out its backoff goes at once', async () => {
    const s = await setup();
    const { rep, store } = await start(s, { retryMs: 10_000 });
    const model = new Model();
    store.down = true;
    await randomOps(rep, model, 41, 20);
    await untilError(rep, /outage/);
    assert.equal(rep.status().replica.connected, false);
    await sleep(100); // (the first retry failed too: the next one is 10 s away)
    store.down = false;
    const t0 = Date.now();
    rep.resync();
    while (!rep.status().replica.connected && Date.now() - t0 < 5000) await sleep(10);
    assert.ok(rep.status().replica.connected, 'still waiting for the backoff');
    assert.ok(await rep.settle(10_000), JSON.stringify(rep.status()));
    await rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
  });

  it('resync asks for the replica now also while an attempt is under way: its failure retries at once', async () => {
    const s = await setup();
    const { rep, store } = await start(s, { retryMs: 10_000 });
    const model = new Model();
    store.down = true;
    await randomOps(rep, model, 43, 20);
    await untilError(rep, /outage/);
    await sleep(100); // (the first retry failed too: the next one is 10 s away)
    // The store is back, but the attempt a resync starts now hangs and then fails.
    store.down = false;
    let release!: () => void;
    store.holdGets = new Promise<void>((r) => (release = r));
    rep.resync();
    const t0 = Date.now();
    while (store.heldGets === 0 && Date.now() - t0 < 5000) await sleep(5);
    assert.ok(store.heldGets > 0, 'the resync started no attempt');
    // Asked again while that attempt is under way (no backoff is waiting to be woken).
    store.holdGets = undefined;
    rep.resync();
    release();
    const t1 = Date.now();
    while (!rep.status().replica.connected && Date.now() - t1 < 3000) await sleep(10);
    assert.ok(rep.status().replica.connected, `still waiting: ${rep.status().replica.error}`);
    assert.ok(await rep.settle(10_000), JSON.stringify(rep.status()));
    await rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
  });

  it('crash of the replicator: the bitmap resyncs what changed, not everything', async () => {
    const s = await setup();
    const first = await start(s, { holder: 'test-crash-1' });
    const model = new Model();
    await randomOps(first.rep, model, 21, 100);
    assert.ok(await first.rep.settle(10_000));
    // A few more writes into two regions, then kill -9 before they are shipped.
    first.store.down = true;
    const a = Buffer.alloc(8192, 0xaa);
    await first.rep.write(5 * REGION + 4096, a);
    model.apply(5 * REGION + 4096, a, a.length);
    await first.rep.write(20 * REGION, a);
    model.apply(20 * REGION, a, a.length);
    await first.rep.crash();
    // A killed replicator reopens nothing (its failing writes must not start a reconnect that
    // would take the replica back from the next one).
    const opened = first.opens();
    first.store.down = false;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(first.opens(), opened, 'the crashed replicator reopened the replica');
    const second = await start(s, { holder: 'test-crash-2', force: true });
    const st = second.rep.status();
    assert.notEqual(st.mode, 'forward-full');
    assert.ok(
      st.dirtyRegions >= 2 && st.dirtyRegions < DEVICE / REGION,
      `dirty ${st.dirtyRegions}`,
    );
    assert.ok(await second.rep.settle(10_000));
    assert.ok(second.rep.status().resync === null);
    await second.rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
    assert.equal(sha(await primaryContent(s.file)), sha(model.bytes));
    const check = await checkPrimary({ file: s.file, uuid: s.uuid, openStore: open });
    assert.equal(check.differing.length, 0);
  });

  it('a stop while the replica hangs ends in bounded time, and the next start copies only what was not committed', async () => {
    const s = await setup();
    const first = await start(s, { holder: 'test-hang-1' });
    const model = new Model();
    await randomOps(first.rep, model, 31, 80);
    assert.ok(await first.rep.settle(10_000));
    for (const until = Date.now() + 2000; Date.now() < until;) {
      if (first.rep.status().replica.commitSeconds === null) break;
      await sleep(10);
    }
    assert.equal(
      first.rep.status().replica.commitSeconds,
      null,
      'no commit in flight once settled',
    );
    // The replica stops answering: every PUT hangs (no error, no answer, ever).
    first.store.hold = new Promise(() => undefined);
    const a = Buffer.alloc(8192, 0xbb);
    for (const offset of [3 * REGION + 4096, 17 * REGION]) {
      await first.rep.write(offset, a);
      model.apply(offset, a, a.length);
    }
    await first.rep.flush();
    // Status tells: the commit in flight grows older while the replica still looks connected.
    const until = Date.now() + 5000;
    while ((first.rep.status().replica.commitSeconds ?? 0) < 0.3 && Date.now() < until)
      await sleep(20);
    const hung = first.rep.status().replica;
    assert.ok(hung.connected && (hung.commitSeconds ?? 0) >= 0.3, JSON.stringify(hung));
    const t0 = Date.now();
    await first.rep.close(200, 300);
    const took = Date.now() - t0;
    assert.ok(took < 5000, `the stop took ${took} ms`);
    assert.ok(first.store.heldPuts > 0, 'the replica was asked to commit and hung');
    assert.equal(sha(await primaryContent(s.file)), sha(model.bytes));
    // The header the stop wrote names the regions not committed, and only those (roughly).
    const second = await start(s, { holder: 'test-hang-2', force: true });
    const st = second.rep.status();
    assert.notEqual(st.mode, 'forward-full');
    assert.ok(
      st.dirtyRegions >= 2 && st.dirtyRegions < DEVICE / REGION / 2,
      `dirty ${st.dirtyRegions}`,
    );
    assert.ok(await second.rep.settle(10_000), JSON.stringify(second.rep.status()));
    await second.rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
    const check = await checkPrimary({ file: s.file, uuid: s.uuid, openStore: open });
    assert.equal(check.differing.length, 0);
  });

  it('a replicator taken over is fenced: it changes neither the replica nor its manifest', async () => {
    const s = await setup();
    const a = await start(s, { holder: 'takeover-a', takeReplica: 'once' });
    const model = new Model();
    await randomOps(a.rep, model, 31, 60);
    assert.ok(await a.rep.settle(10_000));
    const { store } = await openReplicaStore(s.prefix, s.uuid, open);
    const epochA = (await readManifest(store))!.writerEpoch!;
    assert.equal(epochA, (await readHead(store)).head.epoch);

    // Host B takes over with a copy of the primary (a failover), by force.
    const b = await failover(s, 'takeover-b');
    const epochB = (await readManifest(store))!.writerEpoch!;
    assert.ok(epochB > epochA, `B stamped epoch ${epochB}, A had ${epochA}`);
    const modelB = new Model();
    model.bytes.copy(modelB.bytes);

    // A does not know yet: a full resync opens an inconsistent range in the manifest first
    // (refused: B stamped it), then A goes on writing and asks for resyncs; B writes too.
    a.rep.resync(true);
    const deadline = Date.now() + 10_000;
    while (a.rep.status().replica.connected && Date.now() < deadline) await a.rep.flush();
    const lost = new Model();
    model.bytes.copy(lost.bytes);
    await randomOps(a.rep, lost, 32, 60, (i) => {
      if (i % 20 === 10) a.rep.resync(i === 30);
    });
    await randomOps(b.rep, modelB, 33, 60);
    assert.ok(await b.rep.settle(10_000), JSON.stringify(b.rep.status()));
    const st = a.rep.status();
    assert.equal(st.replica.connected, false);
    assert.match(st.replica.error ?? '', /FENCED|LEASE_HELD/);
    // A is still a working primary on its own.
    assert.equal(sha(await primaryContent(s.file)), sha(lost.bytes));

    // The manifest still carries B's epoch, and the replica is B's data only.
    assert.equal((await readManifest(store))!.writerEpoch, epochB);
    await b.rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(modelB.bytes));
    // B's lease is free: A (its full resync asked for before it knew) finds that the primaries
    // diverged and changes nothing, not even the manifest.
    a.rep.resync(false);
    await untilError(a.rep, /diverged/);
    assert.match(a.rep.status().replica.error ?? '', /FENCED.*diverged/);
    assert.equal((await readManifest(store))!.writerEpoch, epochB);
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(modelB.bytes));
    await a.rep.close();
    assert.equal((await readManifest(store))!.writerEpoch, epochB);
  });

  it('a primary failed over from stays fenced when its successor shipped nothing and let the replica go', async () => {
    const s = await setup();
    const a = await start(s, { holder: 'quiet-a', takeReplica: 'once' });
    const model = new Model();
    await randomOps(a.rep, model, 41, 40);
    assert.ok(await a.rep.settle(10_000));
    const { store } = await openReplicaStore(s.prefix, s.uuid, open);
    const epochA = (await readManifest(store))!.writerEpoch!;
    // B takes over from a copy of A's primary, stamps the manifest, ships nothing, and stops:
    // the replica's lease is free again, and the replica still holds A's last commit.
    const b = await failover(s, 'quiet-b');
    const epochB = (await readManifest(store))!.writerEpoch!;
    assert.ok(epochB > epochA, `B stamped epoch ${epochB}, A had ${epochA}`);
    await b.rep.close();
    const replicaBefore = sha(await replicaContent(s.prefix, s.uuid));
    assert.equal(replicaBefore, sha(model.bytes));
    // A goes on writing and reconnects (a normal open: its new lease epoch is above B's
    // stamp). It must find the stamp and refuse, not ship its writes over B's takeover.
    const lost = new Model();
    model.bytes.copy(lost.bytes);
    await randomOps(a.rep, lost, 42, 20);
    a.rep.resync(false);
    await untilError(a.rep, /diverged/);
    const st = a.rep.status();
    assert.equal(st.replica.connected, false, JSON.stringify(st));
    assert.match(st.replica.error ?? '', /FENCED.*took the replica .* over.*diverged/);
    assert.equal((await readManifest(store))!.writerEpoch, epochB, 'A stamped the manifest');
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), replicaBefore, 'A shipped');
    assert.equal(sha(await primaryContent(s.file)), sha(lost.bytes));
    // The operator keeps A: a full resync makes the replica A's image.
    a.rep.resync(true);
    assert.ok(await a.rep.settle(20_000), JSON.stringify(a.rep.status()));
    await a.rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(lost.bytes));
  });

  for (const seed of SEEDS) {
    it(`failover and split brain under faults: the replica is always one primary's image (seed ${seed})`, async () => {
      const s = await setup();
      const r = rng(seed * 104_729);
      const a = await start(s, { holder: `split-a-${seed}`, takeReplica: 'once' });
      const modelA = new Model();
      await randomOps(a.rep, modelA, seed + 500, 30 + Math.floor(r() * 40), () => {
        if (r() < 0.05) a.store.down = !a.store.down;
      });
      a.store.down = false;
      // Failover: B starts by force from a copy of A's primary taken while A runs (not
      // settled: the replica may hold commits of A the copy's bitmap no longer names).
      const b = await failover(s, `split-b-${seed}`);
      const modelB = new Model();
      modelA.bytes.copy(modelB.bytes);
      // A goes on as a primary of its own (split brain): none of its writes may reach the
      // replica, even once B stops and frees the replica's lease.
      const lost = new Model();
      modelA.bytes.copy(lost.bytes);
      const { store: plain } = await openReplicaStore(s.prefix, s.uuid, open);
      let epoch = (await readManifest(plain))!.writerEpoch ?? 0;
      let bRunning = true;
      for (let i = 0; i < 90; i++) {
        const x = r();
        if (x < 0.05) a.store.down = !a.store.down;
        else if (x < 0.1 && bRunning) b.store.down = !b.store.down;
        else if (x < 0.12 && bRunning && i > 45) {
          b.store.down = false;
          assert.ok(await b.rep.settle(10_000), JSON.stringify(b.rep.status()));
          await b.rep.close();
          bRunning = false;
        } else if (x < 0.16) a.rep.resync(false);
        else if (x < 0.55) await randomOps(a.rep, lost, 20_000 + seed * 1000 + i, 1);
        else if (bRunning) await randomOps(b.rep, modelB, 40_000 + seed * 1000 + i, 1);
        if (i % 10 === 9) {
          const now = (await readManifest(plain))!.writerEpoch ?? 0;
          assert.ok(now >= epoch, `manifest epoch went back from ${epoch} to ${now}`);
          epoch = now;
        }
      }
      a.store.down = false;
      if (bRunning) {
        b.store.down = false;
        assert.ok(await b.rep.settle(10_000), JSON.stringify(b.rep.status()));
        await b.rep.close();
      }
      // B is gone and its lease free: A asked for an incremental resync finds that another
      // replicator shipped after its last commit, and refuses.
      a.rep.resync(false);
      await untilError(a.rep, /diverged/);
      const st = a.rep.status();
      assert.equal(st.replica.connected, false, JSON.stringify(st));
      assert.match(st.replica.error ?? '', /FENCED.*diverged/);
      assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(modelB.bytes));
      assert.equal(sha(await primaryContent(s.file)), sha(lost.bytes));
      // The operator keeps A's data: a full resync makes the replica A's image.
      a.rep.resync(true);
      assert.ok(await a.rep.settle(20_000), JSON.stringify(a.rep.status()));
      await untilLogging(a.rep);
      assert.equal(a.rep.status().mode, 'logging');
      await a.rep.close();
      assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(lost.bytes));
      // Every checkpoint called consistent is one primary's state, never a mix of the two.
      const all = new Model();
      for (const m of [modelA, modelB, lost]) for (const h of m.seen) all.seen.add(h);
      const checked = await assertPrefixes(s, all);
      assert.ok(checked > 0, `only ${checked} checkpoints checked`);
    });
  }

  it('a failover copy taken before the old replicator reconnected under a new epoch: the forced start overwrites its later commits', async () => {
    const s = await setup();
    const a = await start(s, { holder: 'late-a', takeReplica: 'once' });
    const modelA = new Model();
    await randomOps(a.rep, modelA, 71, 40);
    assert.ok(await a.rep.settle(10_000));
    const { store: plain } = await openReplicaStore(s.prefix, s.uuid, open);
    const epochAtCopy = (await readHead(plain)).head.epoch;
    const fileB = `${s.file}.b`;
    await copyFile_(s.file, fileB);
    const modelB = new Model();
    modelA.bytes.copy(modelB.bytes);
    // A loses the replica, takes its own lease back under a new epoch and commits more: the
    // copy's header names neither that epoch nor those checkpoints.
    a.store.down = true;
    await randomOps(a.rep, modelA, 72, 10);
    const until = Date.now() + 10_000;
    while (a.rep.status().replica.connected && Date.now() < until) await a.rep.flush();
    a.store.down = false;
    await randomOps(a.rep, modelA, 73, 20);
    assert.ok(await a.rep.settle(10_000), JSON.stringify(a.rep.status()));
    assert.ok((await readHead(plain)).head.epoch > epochAtCopy, 'A reconnected under a new epoch');

    // B, started by force from the copy, takes the replica over and makes it its own image.
    const b = await start(
      { ...s, file: fileB },
      { holder: 'late-b', force: true, takeReplica: 'once' },
    );
    assert.equal(b.rep.status().replica.error, null, JSON.stringify(b.rep.status()));
    await randomOps(b.rep, modelB, 74, 30);
    assert.ok(await b.rep.settle(10_000), JSON.stringify(b.rep.status()));
    await untilLogging(b.rep, 10_000);
    assert.equal(b.rep.status().mode, 'logging');
    await b.rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(modelB.bytes));
    // A stays fenced: its reconnect (no force) is refused, the primaries diverged.
    await randomOps(a.rep, modelA, 75, 5);
    a.rep.resync(false);
    await untilError(a.rep, /FENCED/, 10_000);
    assert.match(a.rep.status().replica.error ?? '', /FENCED/);
    await a.rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(modelB.bytes));
    assert.equal(sha(await primaryContent(s.file)), sha(modelA.bytes));
  });

  it('the full resync that keeps a diverged primary survives an outage before its first commit', async () => {
    const s = await setup();
    const a = await start(s, { holder: 'keep-a', takeReplica: 'once' });
    const modelA = new Model();
    await randomOps(a.rep, modelA, 81, 30);
    assert.ok(await a.rep.settle(10_000));
    const b = await failover(s, 'keep-b');
    const modelB = new Model();
    modelA.bytes.copy(modelB.bytes);
    await randomOps(b.rep, modelB, 82, 30);
    assert.ok(await b.rep.settle(10_000), JSON.stringify(b.rep.status()));
    await b.rep.close();
    await randomOps(a.rep, modelA, 83, 10);
    a.rep.resync(false);
    await untilError(a.rep, /diverged/);
    assert.match(a.rep.status().replica.error ?? '', /FENCED.*diverged/);
    // The operator keeps A: the full resync connects, then its first commit fails (segment
    // PUTs refused) and the replicator reconnects, which must not find B's checkpoints anew.
    a.store.failSegments = true;
    a.rep.resync(true);
    await untilError(a.rep, /segment PUT refused/);
    assert.match(a.rep.status().replica.error ?? '', /segment PUT refused/);
    a.store.failSegments = false;
    assert.ok(await a.rep.settle(20_000), JSON.stringify(a.rep.status()));
    await untilLogging(a.rep);
    assert.equal(a.rep.status().mode, 'logging', JSON.stringify(a.rep.status()));
    await a.rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(modelA.bytes));
  });

  it('a compaction of the replica while the replicator was stopped changes nothing it ships', async () => {
    const s = await setup();
    const model = await shipAndStop(s, 'compact-1', 51, 80);
    const { store } = await openReplicaStore(s.prefix, s.uuid, open);
    const before = (await readHead(store)).head;
    // Compaction commits a checkpoint of its own (another lease epoch, same content).
    await compactVolume(store, { graceMs: 0, minLive: 1, keepLast: 3, holder: 'compactor' });
    const after = (await readHead(store)).head;
    assert.ok(
      after.checkpoint > before.checkpoint && after.epoch > before.epoch,
      JSON.stringify([before.checkpoint, before.epoch, after.checkpoint, after.epoch]),
    );
    const again = await start(s, { holder: 'compact-2', takeReplica: 'once' });
    const st = again.rep.status();
    assert.equal(st.mode, 'logging', JSON.stringify(st));
    assert.equal(st.replica.error, null);
    assert.equal(st.dirtyRegions, 0);
    await randomOps(again.rep, model, 52, 40);
    assert.ok(await again.rep.settle(10_000));
    assert.equal(again.rep.status().replica.error, null);
    await again.rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
  });

  it('a crash that loses the record of its own commits: their regions are copied again, no split brain', async () => {
    const s = await setup();
    const model = await shipAndStop(s, 'own-1', 61, 60);
    // The next replicator connects under a new lease epoch (recorded in the header before its
    // first commit); then its header writes after that are lost, as if it died right after
    // its replica commits landed.
    const second = await start(s, { holder: 'own-2', force: true });
    const headerAtConnect = (await readFile(s.file)).subarray(0, PRIMARY_DATA_OFFSET);
    await randomOps(second.rep, model, 62, 60);
    assert.ok(await second.rep.settle(10_000));
    await second.rep.crash();
    const file = await readFile(s.file);
    headerAtConnect.copy(file, 0);
    await writeFile(s.file, file);
    // The store fails a read of the replica's checkpoints as the next one starts: a store
    // that failed a read says nothing of the history, so that start fails with the store's
    // error (a reconnect later on would be tried again), not with a full resync.
    await assert.rejects(start(s, { holder: 'own-3', force: true, failSegmentGets: 1 }), (e) =>
      isHyperError(e, 'STORE_UNAVAILABLE'),
    );
    const third = await start(s, { holder: 'own-3', force: true });
    const st = third.rep.status();
    assert.equal(st.replica.error, null, JSON.stringify(st));
    assert.notEqual(st.mode, 'forward-full');
    assert.ok(await third.rep.settle(10_000), JSON.stringify(third.rep.status()));
    await untilLogging(third.rep, 10_000);
    await third.rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
    await assertPrefixes(s, model);
  });

  it('a replica commit failing after a crash reopens nothing', async () => {
    const s = await setup();
    const { rep, store, opens } = await start(s, { holder: 'crash-commit' });
    const model = new Model();
    await randomOps(rep, model, 41, 40);
    assert.ok(await rep.settle(10_000));
    // A commit in flight at the moment of the crash (its segment PUT held back)...
    let release!: () => void;
    store.hold = new Promise<void>((r) => (release = r));
    await rep.write(3 * REGION, Buffer.alloc(8192, 0x5a));
    await rep.flush();
    const deadline = Date.now() + 5000;
    while (store.heldPuts === 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 5));
    assert.ok(store.heldPuts > 0, 'no replica write was held');
    await rep.crash();
    const opened = opens();
    // ...then fails: the dead replicator must not reconnect (and take the replica back).
    store.down = true;
    release();
    await new Promise((r) => setTimeout(r, 300));
    store.down = false;
    store.hold = undefined;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(opens(), opened, 'the crashed replicator reopened the replica');
  });

  it('concurrent writes to one region and a resync never lose a write', async () => {
    const s = await setup();
    const { rep } = await start(s, { poolBytes: 128 * KiB });
    const model = new Model();
    const r = rng(99);
    for (let round = 0; round < 20; round++) {
      const ops: Promise<void>[] = [];
      const writes: [number, Buffer][] = [];
      for (let k = 0; k < 8; k++) {
        // Disjoint 4 KiB slots so that the model does not depend on the interleaving.
        const offset = (round * 8 + k) * 4096 + Math.floor(r() * 2) * REGION * 8;
        const data = Buffer.alloc(4096, (round * 8 + k) % 255 || 1);
        writes.push([offset % DEVICE, data]);
        ops.push(rep.write(offset % DEVICE, data));
      }
      if (round % 5 === 0) rep.resync(round === 10);
      await Promise.all(ops);
      for (const [o, d] of writes) model.apply(o, d, d.length);
    }
    assert.ok(await rep.settle(20_000), JSON.stringify(rep.status()));
    await rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
  });

  it('restore: full and lazy, to a fresh primary, by checkpoint', async () => {
    const s = await setup();
    const { rep } = await start(s);
    const model = new Model();
    await randomOps(rep, model, 31, 80);
    assert.ok(await rep.settle(10_000));
    const wanted = Buffer.from(model.bytes);
    const cp = rep.status().replica.checkpoint;
    await randomOps(rep, model, 32, 40);
    assert.ok(await rep.settle(10_000));
    await rep.close();

    // Full restore onto a new file.
    const fresh = join(dir, `fresh-${n}.img`);
    const res = await restorePrimary({
      file: fresh,
      uuid: s.uuid,
      to: { checkpoint: cp },
      replicaPrefix: s.prefix,
      openStore: open,
    });
    assert.equal(res.checkpoint, cp);
    assert.equal(sha(await primaryContent(fresh)), sha(wanted));
    // The replica was rolled back with it: the restored primary serves in logging mode.
    const again = await start({ ...s, file: fresh });
    assert.equal(again.rep.mode, 'logging');
    await again.rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(wanted));

    // Lazy restore of the original primary to the same checkpoint; reads before the background pass.
    const lazy = await restorePrimary({
      file: s.file,
      uuid: s.uuid,
      to: { checkpoint: cp },
      lazy: true,
      openStore: open,
    });
    assert.equal(lazy.lazy, true);
    const served = await start(s);
    assert.equal(served.rep.mode, 'reverse-full');
    const got = await served.rep.read(7 * REGION, REGION);
    assert.ok(got.equals(wanted.subarray(7 * REGION, 8 * REGION)));
    const w = Buffer.alloc(4096, 0x5c);
    await served.rep.write(9 * REGION + 512, w);
    w.copy(wanted, 9 * REGION + 512);
    assert.ok(await served.rep.settle(20_000), JSON.stringify(served.rep.status()));
    await served.rep.close();
    assert.equal(sha(await primaryContent(s.file)), sha(wanted));
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(wanted));
  });

  it('restore keeps a fresh primary sparse inside regions that hold data', async () => {
    const s = await setup();
    const { rep } = await start(s);
    const wanted = Buffer.alloc(DEVICE);
    // 4 KiB of data in each of 8 regions; the other 60 KiB of each region are zeros.
    for (let r = 0; r < 8; r++) {
      const data = Buffer.alloc(4096, r + 1);
      await rep.write(r * 3 * REGION + 8192, data);
      data.copy(wanted, r * 3 * REGION + 8192);
    }
    assert.ok(await rep.settle(10_000));
    const checkpoint = rep.status().replica.checkpoint;
    await rep.close();
    for (const lazy of [false, true]) {
      const fresh = join(dir, `sparse-${n}-${lazy}.img`);
      await restorePrimary({
        file: fresh,
        uuid: s.uuid,
        to: { checkpoint },
        lazy,
        replicaPrefix: s.prefix,
        openStore: open,
      });
      if (lazy) {
        const served = await start({ ...s, file: fresh });
        assert.ok(await served.rep.settle(20_000), JSON.stringify(served.rep.status()));
        await served.rep.close();
      }
      assert.equal(sha(await primaryContent(fresh)), sha(wanted));
      // Allocated: the header area and the 8 data blocks (8 whole regions would be 512 KiB).
      const data = (await stat(fresh)).blocks * 512 - PRIMARY_DATA_OFFSET;
      assert.ok(data <= 8 * 8192, `${data} bytes allocated past the header`);
    }
  });

  it('--assume-zeroed: an existing zeroed file starts logging with nothing to copy; check finds a device that was not zero', async () => {
    const format = (
      file: string,
      prefix: string,
      o: { assumeZeroed?: boolean; force?: boolean } = {},
    ) =>
      formatPrimary({
        file,
        deviceSize: DEVICE,
        replicaPrefix: prefix,
        regionSize: REGION,
        openStore: open,
        ...o,
      });
    const existing = async (name: string, fill?: Buffer): Promise<string> => {
      const file = join(dir, name);
      const p = await PrimaryFile.open(file, { createSize: PRIMARY_DATA_OFFSET + DEVICE });
      if (fill) await p.write(3 * REGION, fill);
      await p.close();
      return file;
    };
    // Without the flag an existing file is copied first.
    const plain = await format(await existing(`z${++n}.img`), `mem://replica-test-${n}/r/`);
    assert.equal(plain.mode, 'forward-full');

    const zeroed = { file: await existing(`z${++n}.img`), prefix: `mem://replica-test-${n}/r/` };
    const f = await format(zeroed.file, zeroed.prefix, { assumeZeroed: true });
    assert.equal(f.mode, 'logging');
    const s = { ...zeroed, uuid: f.uuid };
    const { rep } = await start(s);
    const st = rep.status();
    assert.equal(st.mode, 'logging');
    assert.equal(st.resync, null, 'no first copy');
    const model = new Model();
    await randomOps(rep, model, 71, 40);
    assert.ok(await rep.settle(10_000));
    await rep.close();
    assert.equal(sha(await replicaContent(s.prefix, s.uuid)), sha(model.bytes));
    assert.equal((await checkPrimary({ file: s.file, uuid: s.uuid, openStore: open })).diverged, 0);

    // Taken on the operator's word: a device that held data differs where it was not written,
    // and check names the region.
    const wrongFill = Buffer.alloc(4096, 0x5a);
    const wrong = {
      file: await existing(`z${++n}.img`, wrongFill),
      prefix: `mem://replica-test-${n}/r/`,
    };
    const w = await format(wrong.file, wrong.prefix, { assumeZeroed: true });
    const check = await checkPrimary({ file: wrong.file, uuid: w.uuid, openStore: open });
    assert.deepEqual(
      check.differing.map((d) => d.region),
      [3],
    );
    assert.equal(check.diverged, 1);

    // A primary that already has a header holds data: refused, nothing written.
    const before = await readFile(s.file);
    await assert.rejects(
      format(s.file, s.prefix, { force: true, assumeZeroed: true }),
      (e: HyperError) => e.code === 'INVALID_ARGUMENT' && /blkdiscard/.test(e.suggestion ?? ''),
    );
    assert.ok((await readFile(s.file)).equals(before));
  });

  it('refuses bad input and loses nothing', async () => {
    const s = await setup();
    await assert.rejects(
      formatPrimary({
        file: s.file,
        deviceSize: DEVICE,
        replicaPrefix: s.prefix,
        regionSize: REGION,
        openStore: open,
      }),
      (e: HyperError) => e.code === 'PRIMARY_EXISTS',
    );
    await assert.rejects(
      openPrimary(s.file, '00000000-0000-4000-8000-000000000000'),
      (e: HyperError) => e.code === 'INVALID_ARGUMENT',
    );
    const small = join(dir, 'small.img');
    const p = await PrimaryFile.open(small, { createSize: PRIMARY_DATA_OFFSET + 4096 });
    await p.close();
    await assert.rejects(
      formatPrimary({
        file: small,
        deviceSize: DEVICE,
        replicaPrefix: s.prefix,
        regionSize: REGION,
        openStore: open,
      }),
      (e: HyperError) => e.code === 'OUT_OF_RANGE',
    );
    // A file that holds somebody's file system where the metadata goes: refused, unchanged,
    // unless --force (and never "assumed zeroed").
    const ext4 = join(dir, 'ext4.img');
    const image = Buffer.alloc(PRIMARY_DATA_OFFSET + DEVICE);
    image.writeUInt16LE(0xef53, 1080);
    image.fill(0x7e, 4096, 8192);
    await writeFile(ext4, image);
    const formatExt4 = (o: { force?: boolean; assumeZeroed?: boolean } = {}) =>
      formatPrimary({
        file: ext4,
        deviceSize: DEVICE,
        replicaPrefix: `mem://replica-test-${++n}/r/`,
        regionSize: REGION,
        openStore: open,
        ...o,
      });
    await assert.rejects(
      formatExt4(),
      (e: HyperError) =>
        e.code === 'DEVICE_HAS_DATA' &&
        /ext2\/ext3\/ext4 file system in its first MiB/.test(e.message) &&
        /wipefs -a/.test(e.suggestion ?? ''),
    );
    await assert.rejects(
      formatExt4({ force: true, assumeZeroed: true }),
      (e: HyperError) =>
        e.code === 'INVALID_ARGUMENT' && /cannot be assumed zeroed/.test(e.message),
    );
    assert.ok((await readFile(ext4)).equals(image), 'the refusals wrote nothing');
    assert.equal((await formatExt4({ force: true })).mode, 'forward-full');

    const { rep } = await start(s);
    await assert.rejects(
      openPrimary(s.file, s.uuid),
      (e: HyperError) => e.code === 'PRIMARY_IN_USE',
    );
    await assert.rejects(
      restorePrimary({ file: s.file, uuid: s.uuid, to: { checkpoint: 1 }, openStore: open }),
      (e: HyperError) => e.code === 'PRIMARY_IN_USE',
    );
    await rep.close();
    const other = await setup();
    await assert.rejects(
      restorePrimary({
        file: join(dir, 'x.img'),
        uuid: s.uuid,
        to: { checkpoint: 1 },
        replicaPrefix: other.prefix,
        openStore: open,
      }),
      (e: HyperError) => e.code === 'VOLUME_NOT_FOUND',
    );
  });

  it('a format that fails leaves no file behind, and the retry needs no first copy', async () => {
    const file = join(dir, 'unreachable.img');
    const unreachable = (): Promise<ObjectStore> =>
      Promise.reject(new HyperError('unavailable', 'STORE_UNAVAILABLE', 'refused (test)'));
    await assert.rejects(
      formatPrimary({
        file,
        deviceSize: DEVICE,
        replicaPrefix: 'mem://unreachable/r/',
        openStore: unreachable,
      }),
      (e: HyperError) => e.code === 'STORE_UNAVAILABLE',
    );
    await assert.rejects(stat(file), { code: 'ENOENT' });
    const r = await formatPrimary({
      file,
      deviceSize: DEVICE,
      replicaPrefix: 'mem://unreachable/r/',
      openStore: open,
    });
    assert.equal(r.mode, 'logging');
    // A file that was there before is kept, whatever the failure.
    const kept = join(dir, 'kept.img');
    await writeFile(kept, Buffer.alloc(DEVICE * 2, 7));
    await assert.rejects(
      formatPrimary({
        file: kept,
        deviceSize: DEVICE,
        replicaPrefix: 'mem://x/',
        openStore: unreachable,
      }),
      (e: HyperError) => e.code === 'STORE_UNAVAILABLE',
    );
    assert.equal((await stat(kept)).size, DEVICE * 2);
  });
});
