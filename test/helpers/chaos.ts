/**
 * A seeded, model-based concurrency ("chaos") harness for the volume engine.
 *
 * One run ("seed") drives a live writer (an engine Volume open for write) with random writes,
 * write-zeroes, trims and flushes, and starts admin operations concurrently with it
 * (snapshots, clones of the volume and of its clones, with and without flatten, unpins,
 * restores, compactions, copies to other volumes, checks, forced takeovers, kills, clone
 * deletes, ...). Every store request of every actor goes through a `ChaosStore`: a wrapper
 * that waits for its turn in a
 * discrete-event scheduler (`Sim`: each request takes a random virtual latency, heavy-tailed,
 * so one actor may stall while others make many requests), then may fail before it is
 * applied or after it was applied (the request lands but the caller gets an error), on any
 * key, at seeded rates. In half of the seeds the store also fills up now and then for a few
 * steps (every PUT, or every PUT over 4 KiB, fails with NO_SPACE; deletes and reads work),
 * and an operator's compaction often starts right then; writers' leases are drawn from
 * 30 min down to 3 s and renewed by virtual-time intervals, so they lapse when renewals
 * stall or the store is full, and may then be taken without --force. In about a fifth of the
 * seeds the writer logs to a WAL beside the volume (every write, or at each sync), which every
 * later opener, admin operations included, replays before its fence. In those seeds the harness
 * also damages the log now and then (a record past the head corrupted, or deleted below a
 * later one) and runs `file repair --apply` (with --force beside a live writer).
 *
 * A reference model tracks what must hold, and after every step that changed the store the
 * harness checks, with the scheduler paused and through fault-free stores:
 *   (a) the head reads a content that some commit may legitimately have produced (the last
 *       acknowledged flush, or an operation still in flight / whose outcome is unknown);
 *   (b) every acknowledged snapshot and every pin of an existing clone names a retained
 *       checkpoint that reads exactly its reference content (a record made while a compaction
 *       runs may name a checkpoint its new history dropped until that run keeps it again, or,
 *       if the run failed in between, until the next compaction succeeds: meanwhile the
 *       segment must still be there);
 *   (c) every clone that exists reads exactly the parent checkpoint it was made from (clones
 *       are not written by the harness) and still has its pin while it reads from the parent,
 *       or while a flatten of it is unfinished (stopped right after dropping the link);
 *   (d) `checkVolume(deep)` finds nothing missing or corrupt in the volume and each clone
 *       (dangling records only count when the record is one the model requires);
 *   (e) the head epoch never decreases (checked on every head PUT and every observation);
 *   (f) at most one actor writes heads under any one epoch (a head put back byte for byte
 *       commits nothing);
 *   (g) every head that lands names only segments that exist: its checkpoint and every
 *       checkpoint since the volume's previous head (pipelined segment PUTs);
 *   (h) at the end, with faults stopped and room in the store, a writer that still holds the
 *       volume commits what it holds (a full store or a lapsed lease costs it nothing);
 *   (i) with a WAL, a writer that takes the volume over directly from the previous one (the
 *       next epoch) starts from a content at or past the newest that one acknowledged as
 *       durable (a write logged before its reply, a sync, a flush);
 *   (k) every copy's target (`file copy` of a retained checkpoint of the volume or of a
 *       clone, sometimes with its snapshots, stopped part way now and then, and run again to
 *       finish, now and then while its first attempt still runs) is a valid volume whatever
 *       happened to the copy; an acknowledged one reads exactly the checkpoint it copied,
 *       and each snapshot it copied what that snapshot reads in the source; a copy brought
 *       forward by diffs (`file export-diff` between two retained checkpoints of the volume,
 *       `file import-diff` into the copy) reads exactly the checkpoint its last applied diff
 *       ended at (or, after an import that failed, that one or the one it was going to);
 *   (l) `file check`, run beside everything else (often right beside a compaction), never
 *       reports damage that is not there: a store error fails it, and whatever it reports
 *       missing or corrupt must be damage the harness did on purpose;
 *   (m) nor does any operation fail as if the store were damaged (MISSING_OBJECT,
 *       CORRUPT_OBJECT, CHECKSUM_MISMATCH) unless it met what the harness damaged: a
 *       checkpoint a compaction drops under a reader is CHECKPOINT_NOT_FOUND, a log a newer
 *       writer trimmed under an opener is FENCED.
 *   (n) a writer told FENCED was taken over: the lease or the head holds a newer epoch than
 *       its own (a store that failed a look is its error, never a fence).
 *   (o) a damaged WAL record stops every opener that would replay it, naming its key ((m),
 *       and (i) for the opens that pass); `file repair --apply` cuts the log only where the
 *       harness damaged it, never at a record a live writer trimmed or appended meanwhile,
 *       and at the end of the run, with the store answering, it leaves a log that replays and
 *       a volume that opens for writing again.
 * Operations that fail are fine; unexpected errors (not a HyperError, or kind 'internal')
 * are violations.
 *
 * Determinism: with the in-memory store and virtual time, a run is a pure function of its
 * seed. During a run Date.now, Math.random and crypto.randomBytes are replaced by seeded
 * versions, block codecs answer on this thread instead of the thread pool, and intervals
 * (lease renewals) fire in virtual time, from the scheduler (all restored afterwards); every
 * actor only advances through the scheduler.
 * With a real S3 backend (`virtualTime: false`) the harness still works, but timing is real
 * and a seed does not replay exactly.
 */
import { createHash } from 'node:crypto';
import type * as nodeCrypto from 'node:crypto';
import { createRequire, syncBuiltinESMExports } from 'node:module';
import { appendFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { HyperError, isHyperError } from '../../src/errors.js';
import { CODEC_LZ4, CODEC_ZSTD, encodeBlock } from '../../src/format/codec/block.js';
import { decodeHead, isRetainedCheckpoint, type HeadRecord } from '../../src/format/codec/head.js';
import { decodeEmbeddedHead } from '../../src/format/codec/segment.js';
import { decodeSnapshot } from '../../src/format/codec/snapshot.js';
import {
  HEAD_KEY,
  PIN_PREFIX,
  SEGMENT_PREFIX,
  SNAPSHOT_PREFIX,
  parseSegmentKey,
  pinKey,
  segmentKey,
  snapshotKey,
  parseSnapshotKey,
  walKey,
} from '../../src/format/keys.js';
import { RetryingStore } from '../../src/format/store/retry.js';
import type {
  GetOptions,
  GetResult,
  ListOptions,
  ListPage,
  ObjectMeta,
  ObjectStore,
  PutBody,
  PutOptions,
} from '../../src/format/store/types.js';
import { deleteVolume } from '../../src/format/volume/admin.js';
import { checkVolume } from '../../src/format/volume/check.js';
import { cloneVolume, flattenVolume, unpinClone } from '../../src/format/volume/clone.js';
import { compactVolume, type CompactOptions } from '../../src/format/volume/compact.js';
import { readCheckpointHead, readHead, unfinishedFlatten } from '../../src/format/volume/heads.js';
import { readLease } from '../../src/format/volume/lease.js';
import { createSnapshot, deleteSnapshot, restoreVolume } from '../../src/format/volume/history.js';
import { KiB, MiB, type Logger } from '../../src/format/volume/types.js';
import { repairHead } from '../../src/format/volume/repair.js';
import { listWal } from '../../src/format/volume/wal.js';
import { Volume } from '../../src/format/volume/volume.js';
import { rng } from './rng.js';
import { SyncZstd } from './sync-zstd.js';
import { joinBody } from '../../src/format/store/common.js';
import { copyVolume, type CopyCreateOptions } from '../../src/cli/copy.js';
import { exportDiff, importDiff } from '../../src/format/volume/diff-stream.js';

// ------------------------------------------------------------------ small utilities

export const digest = (b: Buffer): string =>
  createHash('sha256').update(b).digest('hex').slice(0, 16);

const errText = (e: unknown): string =>
  isHyperError(e)
    ? `${e.code}${e.key ? ` ${e.key}` : ''}`
    : e instanceof Error
      ? `${e.name}: ${e.message}`
      : String(e);

/** An error the engine should never produce, whatever the store does. */
const unexpected = (e: unknown): boolean => !isHyperError(e) || e.kind === 'internal';

const injected = (what: string): HyperError =>
  new HyperError('unavailable', 'STORE_UNAVAILABLE', `injected fault: ${what}`);

/** What a full or over-quota store answers a PUT (the S3 and file stores map theirs to it). */
const noSpace = (what: string): HyperError =>
  new HyperError('unavailable', 'NO_SPACE', `injected: the store is full (${what})`);

// ------------------------------------------------------------------ actors and the scheduler

/** Anything that issues store requests: a writer, one admin operation, the setup. */
export interface Actor {
  name: string;
  /** Requests of this actor get faults injected. */
  faults: boolean;
  /** Killed: its further requests fail; requests already queued may or may not land. */
  dead: boolean;
  /** Requests queued in the scheduler and not yet released. */
  pending: number;
}

interface Waiter {
  ready: number;
  seq: number;
  release: () => void;
}

/** A setInterval of the engine (lease renewals) in virtual time. */
interface VirtualInterval {
  fn: () => void;
  every: number;
  next: number;
  cleared: boolean;
}

/**
 * The scheduler. Virtual mode: a discrete-event simulation; every request (and every "think
 * time" of the driver) is an event at now + latency, and events are released one at a time,
 * earliest first, only once every actor is blocked (from a setImmediate callback: the
 * in-memory store resolves through microtasks only), so the interleaving is a function of
 * the seed. Real mode (S3): requests wait real (scaled) latencies; `pause` also waits for
 * requests already in flight.
 */
export class Sim {
  now: number;
  private queue: Waiter[] = [];
  private seq = 0;
  private pumpQueued = false;
  private paused = false;
  private inflight = 0;
  private drained: (() => void)[] = [];
  private resumed: (() => void)[] = [];
  private intervals: VirtualInterval[] = [];

  constructor(
    readonly virtual: boolean,
    start: number,
  ) {
    this.now = start;
  }

  wait(actor: Actor, ms: number): Promise<void> {
    if (!this.virtual) return this.realWait(actor, ms);
    actor.pending++;
    return new Promise((resolve) => {
      this.queue.push({
        ready: this.now + ms,
        seq: this.seq++,
        release: () => {
          actor.pending--;
          resolve();
        },
      });
      this.schedule();
    });
  }

  private async realWait(actor: Actor, ms: number): Promise<void> {
    actor.pending++;
    try {
      // Real latencies are scaled down: the backend adds its own.
      await new Promise((r) => setTimeout(r, Math.min(ms / 20, 250)));
      while (this.paused) await new Promise<void>((r) => this.resumed.push(r));
    } finally {
      actor.pending--;
    }
  }

  /** Virtual time passes (leases and grace periods expire). */
  advance(ms: number): void {
    if (this.virtual) this.now += ms;
  }

  /**
   * An interval timer in virtual time: it fires between requests, when virtual time reaches
   * it, and only while some request is queued (an idle run does not spin). After a jump in
   * time it fires once, not once per period missed (like a process that was suspended).
   */
  addInterval(fn: () => void, every: number): VirtualInterval {
    const t: VirtualInterval = {
      fn,
      every: Math.max(1, every),
      next: this.now + every,
      cleared: false,
    };
    this.intervals.push(t);
    return t;
  }

  clearInterval(t: VirtualInterval): void {
    t.cleared = true;
    this.intervals = this.intervals.filter((x) => x !== t);
  }

  /** The interval due first, if it is due no later than `by`. */
  private dueInterval(by: number): VirtualInterval | undefined {
    let due: VirtualInterval | undefined;
    for (const t of this.intervals) if (t.next <= by && (!due || t.next < due.next)) due = t;
    return due;
  }

  private schedule(): void {
    if (this.pumpQueued || this.paused) return;
    this.pumpQueued = true;
    setImmediate(() => this.pump());
  }

  private pump(): void {
    this.pumpQueued = false;
    if (this.paused || this.queue.length === 0) return;
    let best = 0;
    for (let i = 1; i < this.queue.length; i++) {
      const a = this.queue[i] as Waiter;
      const b = this.queue[best] as Waiter;
      if (a.ready < b.ready || (a.ready === b.ready && a.seq < b.seq)) best = i;
    }
    const due = this.dueInterval((this.queue[best] as Waiter).ready);
    if (due) {
      this.now = Math.max(this.now, due.next);
      due.next = this.now + due.every;
      due.fn();
      this.schedule();
      return;
    }
    const w = this.queue.splice(best, 1)[0] as Waiter;
    this.now = Math.max(this.now, w.ready);
    w.release();
    if (this.queue.length > 0) this.schedule();
  }

  /** A request passed its gate and is running against the backend (real mode bookkeeping). */
  begin(): void {
    this.inflight++;
  }

  end(): void {
    this.inflight--;
    if (this.inflight === 0) for (const d of this.drained.splice(0)) d();
  }

  /** Stop releasing requests (and wait for those in flight): the checks see a still store. */
  async pause(): Promise<void> {
    this.paused = true;
    while (this.inflight > 0) await new Promise<void>((r) => this.drained.push(r));
  }

  resume(): void {
    this.paused = false;
    for (const r of this.resumed.splice(0)) r();
    if (this.queue.length > 0) this.schedule();
  }

  /** Wait until nothing is queued any more (the end of a run). */
  async drain(): Promise<void> {
    while (this.queue.length > 0 || this.inflight > 0)
      await new Promise<void>((r) => setImmediate(r));
  }

  /** Nothing is queued: in virtual mode nothing can make progress any more. */
  get idle(): boolean {
    return this.queue.length === 0 && !this.paused;
  }

  /** Resolves `p`, or rejects if the run stalls (deadlock) while waiting for it. */
  watch<T>(p: Promise<T>, what: string): Promise<T> {
    let done = false;
    const settled = p.finally(() => {
      done = true;
    });
    const dog = new Promise<never>((_, reject) => {
      if (this.virtual) {
        let idleTicks = 0;
        let idleSince = 0;
        const tick = (): void => {
          if (done) return;
          if (!this.idle) idleTicks = 0;
          else if (idleTicks++ === 0) idleSince = performance.now();
          // A stall is also a real second without progress.
          if (idleTicks > 20 && performance.now() - idleSince > 1000) {
            reject(new Error(`stalled: ${what} never completes and nothing else can run`));
            return;
          }
          setImmediate(tick);
        };
        setImmediate(tick);
      } else {
        const t = setTimeout(
          () => reject(new Error(`stalled: ${what} did not complete in 180 s`)),
          180_000,
        );
        t.unref();
        void settled.finally(() => clearTimeout(t)).catch(() => undefined);
      }
    });
    return Promise.race([settled, dog]);
  }
}

// ------------------------------------------------------------------ the fault-injecting store

export interface FaultRates {
  /** Probability that a request fails before reaching the store. */
  before: number;
  /** Probability that a request is applied but the caller gets an error. */
  after: number;
}

export interface ChaosCounters {
  requests: number;
  faultsBefore: number;
  faultsAfter: number;
  killedRequests: number;
  /** Segment PUTs started while another of the same actor was in flight (pipelining). */
  overlappedSegmentPuts: number;
  /** PUTs refused with NO_SPACE while the store was full. */
  noSpace: number;
  /** Requests the store itself failed (RGW: resets, 5xx), not the harness. */
  storeErrors: number;
}

/**
 * State shared by every ChaosStore of one run: the scheduler, the fault RNG and rates, the
 * write observers behind invariants (e) and (f), virtual modification times.
 */
export class World {
  readonly counters: ChaosCounters = {
    requests: 0,
    faultsBefore: 0,
    faultsAfter: 0,
    killedRequests: 0,
    overlappedSegmentPuts: 0,
    noSpace: 0,
    storeErrors: 0,
  };
  /**
   * The store is full (an exhausted bucket quota, a full disk) until `untilMs` (Date.now: the
   * episode ends then even if the driver is stuck), or until the driver ends it: every PUT of
   * an actor under test larger than `bytes` (0: every PUT) fails with NO_SPACE, without being
   * applied; reads, lists and deletes still work. Undefined: there is room.
   */
  full: { bytes: number; untilMs: number } | undefined;

  /** A PUT of `bytes` by `actor` finds the store full. */
  isFull(actor: Actor, bytes: number): boolean {
    const f = this.full;
    if (f === undefined || !actor.faults || actor.dead || bytes <= f.bytes) return false;
    if (Date.now() < f.untilMs) return true;
    this.full = undefined;
    this.log('the store has room again (its time is up)');
    return false;
  }
  /** Segment PUTs in flight per actor. */
  readonly segmentPuts = new Map<Actor, number>();
  /** Applied mutations (puts and deletes): the checks skip when nothing changed. */
  mutations = 0;
  readonly violations: string[] = [];
  private readonly mtimes = new Map<string, number>();
  private readonly heads = new Map<
    string,
    { epoch: number; owners: Map<number, string>; checkpoint?: number; last?: Buffer }
  >();
  /**
   * Segment objects that exist (url + key), from the puts and deletes applied, with the
   * previous checkpoint their embedded head names.
   */
  private readonly segments = new Map<string, number>();
  /**
   * Segment objects (url + key) whose PUT the store failed and that were not there right
   * after: the store may still apply it. A head naming one is checked once the store is
   * asked again (`resolveDoubts`).
   */
  private readonly doubted = new Set<string>();
  /**
   * Segment PUTs sent and not yet answered (url + key → how many): a real store may show the
   * object to other clients before its PUT's answer arrives (RGW seed 20080: a writer's
   * create-only PUT of the same key got OBJECT_EXISTS, and it chained its head onto it). A
   * head naming one is checked like one in doubt.
   */
  private readonly putting = new Map<string, number>();
  private readonly existedOnce = new Set<string>();
  private readonly doubts: {
    actor: Actor;
    url: string;
    h: HeadRecord;
    since?: number;
    id: number;
  }[] = [];

  constructor(
    readonly sim: Sim,
    readonly rand: () => number,
    public rates: FaultRates,
    readonly log: (line: string) => void,
  ) {}

  violation(msg: string): void {
    this.violations.push(msg);
    this.log(`VIOLATION ${msg}`);
  }

  /** Request latency in virtual ms: mostly short, sometimes long, rarely a long stall. */
  latency(): number {
    const r = this.rand();
    const base = 1 + this.rand() * 12;
    if (r < 0.01) return 2000 + this.rand() * 20_000;
    if (r < 0.09) return base * (10 + this.rand() * 150);
    return base;
  }

  /** Requests starting with this ("get pin/", "put head", ...) fail `factor` times as often. */
  hot: { prefix: string; factor: number } | undefined;

  fault(actor: Actor, what: string): 'none' | 'before' | 'after' {
    this.counters.requests++;
    if (!actor.faults) return 'none';
    const k = this.hot && what.startsWith(this.hot.prefix) ? this.hot.factor : 1;
    const r = this.rand() / k;
    if (r < this.rates.before) {
      this.counters.faultsBefore++;
      this.log(`  ! ${actor.name} ${what}: fails before`);
      return 'before';
    }
    if (r < this.rates.before + this.rates.after) {
      this.counters.faultsAfter++;
      this.log(`  ! ${actor.name} ${what}: lands, then fails`);
      return 'after';
    }
    return 'none';
  }

  mtime(url: string, key: string): number | undefined {
    return this.mtimes.get(url + key);
  }

  /** A request changed the store. */
  applied(actor: Actor, op: 'put' | 'delete', url: string, key: string, body?: Buffer): void {
    this.mutations++;
    if (op === 'put') {
      this.doubted.delete(url + key);
      if (this.sim.virtual) this.mtimes.set(url + key, this.sim.now);
      if (key.startsWith(SEGMENT_PREFIX) && body) {
        let prev = -1;
        try {
          prev = decodeEmbeddedHead(body).prevCheckpoint;
        } catch {
          // Not a decodable segment: it names nothing (the checks report damage).
        }
        this.segments.set(url + key, prev);
      }
      if (key === HEAD_KEY && body) this.headWritten(actor, url, body);
    } else {
      this.mtimes.delete(url + key);
      this.segments.delete(url + key);
      // Deleted after it was listed: it was there (what it named is unknown).
      if (this.doubted.delete(url + key) || this.putting.has(url + key))
        this.existedOnce.add(url + key);
      const st = key === HEAD_KEY ? this.heads.get(url) : undefined;
      if (st) st.checkpoint = undefined;
    }
  }

  /**
   * Invariant (g): a head names only segments that exist: its checkpoint, and every
   * checkpoint between it and the volume's previous head along the chain of previous
   * checkpoints (segments written for room, possibly several in flight at once, are
   * committed by one later head CAS).
   */
  private namesOnlyDurable(
    actor: Actor,
    url: string,
    h: HeadRecord,
    since?: number,
    from = h.checkpoint,
  ): void {
    const base = h.clone?.chain[0]?.base ?? 0;
    for (let id = from; id > base && (since === undefined || id > since);) {
      const key = url + segmentKey(id);
      const prev = this.segments.get(key);
      if (prev === undefined && this.existedOnce.has(key)) return;
      if (prev === undefined && (this.doubted.has(key) || this.putting.has(key))) {
        this.doubts.push({ actor, url, h, ...(since === undefined ? {} : { since }), id });
        return;
      }
      if (prev === undefined) {
        this.violation(
          `(g) ${actor.name} wrote a head of ${url} (checkpoint ${h.checkpoint}, epoch ${h.epoch}) whose chain names segment ${id}, which does not exist`,
        );
        return;
      }
      if (since === undefined || prev < 0 || prev >= id) return;
      id = prev;
    }
  }

  /** A segment PUT the store failed, and whose object was not there right after. */
  inDoubt(url: string, key: string): void {
    this.doubted.add(url + key);
  }

  /** A segment PUT is sent (`sent`), or answered either way. */
  putInFlight(url: string, key: string, sent: boolean): void {
    const k = url + key;
    const n = (this.putting.get(k) ?? 0) + (sent ? 1 : -1);
    if (n > 0) this.putting.set(k, n);
    else this.putting.delete(k);
  }

  /**
   * Settle (g) for heads that named a segment in doubt: `read` gives what the store holds at
   * a key now (undefined: nothing). A segment there now was there when the head was written
   * (its PUT was answered before); one still missing is a violation.
   */
  async resolveDoubts(
    read: (url: string, key: string) => Promise<Buffer | undefined>,
  ): Promise<void> {
    for (const d of this.doubts.splice(0)) {
      const key = segmentKey(d.id);
      const unknown = this.doubted.has(d.url + key) || this.putting.has(d.url + key);
      const body = unknown ? await read(d.url, key) : undefined;
      if (body) {
        this.log(`  . ${key} of ${d.url}, in doubt, is in the store`);
        this.applied(d.actor, 'put', d.url, key, body);
      }
      this.namesOnlyDurable(d.actor, d.url, d.h, d.since, d.id);
    }
  }

  /** Invariants (e) and (f), on every head that lands. */
  private headWritten(actor: Actor, url: string, body: Buffer): void {
    let h: HeadRecord;
    try {
      h = decodeHead(body).head;
    } catch (e) {
      this.violation(`${actor.name} wrote an undecodable head to ${url}: ${errText(e)}`);
      return;
    }
    let st = this.heads.get(url);
    if (!st) this.heads.set(url, (st = { epoch: -1, owners: new Map() }));
    this.namesOnlyDurable(actor, url, h, st.checkpoint);
    st.checkpoint = h.checkpoint;
    if (h.epoch < st.epoch)
      this.violation(
        `(e) head of ${url} went back from epoch ${st.epoch} to ${h.epoch} (written by ${actor.name}, checkpoint ${h.checkpoint})`,
      );
    st.epoch = Math.max(st.epoch, h.epoch);
    const owner = st.owners.get(h.epoch);
    // A head put back byte for byte (a delete that a clone made meanwhile stopped) commits
    // nothing: it is the owner's own.
    const putBack = st.last !== undefined && st.last.equals(body);
    st.last = Buffer.from(body);
    if (owner === undefined) st.owners.set(h.epoch, actor.name);
    else if (owner !== actor.name && !putBack)
      this.violation(
        `(f) ${actor.name} wrote a head of ${url} under epoch ${h.epoch}, which belongs to ${owner}`,
      );
  }
}

/**
 * One actor's view of a store: every request waits for its turn, may fail before or after
 * it is applied, and is observed by the World. Lists are paginated into separate requests
 * (each page sees the store as it is then, like S3's continuation). `close` is a no-op: the
 * backend is shared by all views.
 */
export class ChaosStore implements ObjectStore {
  readonly url: string;

  constructor(
    private readonly world: World,
    private readonly inner: ObjectStore,
    readonly actor: Actor,
    private readonly pageSize: number,
  ) {
    this.url = inner.url;
  }

  private async turn(
    what: string,
    putBytes?: number,
  ): Promise<'none' | 'before' | 'after' | 'full'> {
    const w = this.world;
    if (this.actor.dead) {
      w.counters.killedRequests++;
      throw injected(`${this.actor.name} was killed`);
    }
    await w.sim.wait(this.actor, w.latency());
    if (this.actor.dead) {
      // The process died with this request on the wire: it may or may not land.
      w.counters.killedRequests++;
      return w.rand() < 0.5 ? 'before' : 'after';
    }
    if (putBytes !== undefined && w.isFull(this.actor, putBytes)) return 'full';
    return w.fault(this.actor, what);
  }

  private async run<T>(
    what: string,
    fn: () => Promise<T>,
    onApplied?: (r: T) => void,
    putBytes?: number,
    onStoreError?: () => Promise<void>,
  ): Promise<T> {
    const f = await this.turn(what, putBytes);
    if (f === 'before') throw injected(`${what} (not applied)`);
    if (f === 'full') {
      this.world.counters.noSpace++;
      this.world.log(`  ! ${this.actor.name} ${what}: no space`);
      throw noSpace(what);
    }
    this.world.sim.begin();
    let r: T;
    try {
      r = await fn();
    } catch (e) {
      // The store itself failed the request (on RGW: the proxy's reset or 5xx), as opposed
      // to answering it (OBJECT_EXISTS, PRECONDITION_FAILED...): it may have applied it.
      if (!isHyperError(e) || (e.kind === 'unavailable' && e.code !== 'NO_SPACE')) {
        this.world.counters.storeErrors++;
        this.world.log(`  ! ${this.actor.name} ${what}: the store failed it (${errText(e)})`);
        await onStoreError?.();
      }
      throw e;
    } finally {
      this.world.sim.end();
    }
    onApplied?.(r);
    if (f === 'after') throw injected(`${what} (applied)`);
    return r;
  }

  private fixMeta(m: ObjectMeta): ObjectMeta {
    const t = this.world.mtime(this.url, m.key);
    return t === undefined ? m : { ...m, lastModified: new Date(t) };
  }

  get(key: string, options?: GetOptions): Promise<GetResult> {
    return this.run(`get ${key}`, () => this.inner.get(key, options));
  }

  async head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectMeta | undefined> {
    const m = await this.run(`head ${key}`, () => this.inner.head(key, options));
    return m && this.fixMeta(m);
  }

  async put(key: string, body: PutBody, options?: PutOptions): Promise<{ etag: string }> {
    const w = this.world;
    const seg = key.startsWith(SEGMENT_PREFIX);
    const flying = w.segmentPuts.get(this.actor) ?? 0;
    if (seg) {
      if (flying > 0) w.counters.overlappedSegmentPuts++;
      w.segmentPuts.set(this.actor, flying + 1);
    }
    const bytes = joinBody(body);
    let sent = false;
    try {
      const r = await this.run(
        `put ${key}`,
        () => {
          // Sent: in flight until its outcome is known to the World (the finally below).
          if (seg) {
            sent = true;
            w.putInFlight(this.url, key, true);
          }
          return this.inner.put(key, body, options);
        },
        () => w.applied(this.actor, 'put', this.url, key, bytes),
        bytes.length,
        async () => {
          // Did it land after all? The World learns what the store holds now; a PUT the store
          // may still apply later leaves the key in doubt (the checks ask the store again).
          const got = await this.inner.get(key).catch(() => undefined);
          if (got?.body.equals(bytes)) {
            w.log(`  . ${this.actor.name} put ${key}: landed despite the store's error`);
            w.applied(this.actor, 'put', this.url, key, bytes);
          } else if (!got) w.inDoubt(this.url, key);
        },
      );
      // Each segment PUT's outcome as its writer saw it: on a real store a PUT may land while
      // its caller sees only errors (a reset after applying, retries used up), and the World
      // then does not know the object exists.
      if (seg) w.log(`  . ${this.actor.name} put ${key}: landed`);
      return r;
    } catch (e) {
      if (seg) w.log(`  . ${this.actor.name} put ${key}: failed (${errText(e)})`);
      throw e;
    } finally {
      if (seg) w.segmentPuts.set(this.actor, (w.segmentPuts.get(this.actor) ?? 1) - 1);
      if (sent) w.putInFlight(this.url, key, false);
    }
  }

  async *list(prefix: string, options: ListOptions = {}): AsyncIterable<ListPage> {
    if (options.delimiter) {
      // Not paginated here (only listVolumes uses delimiters): one request.
      const pages: ListPage[] = [];
      await this.run(`list ${prefix}`, async () => {
        for await (const p of this.inner.list(prefix, options)) pages.push(p);
      });
      yield* pages;
      return;
    }
    let after = options.startAfter;
    for (;;) {
      const page = await this.run(`list ${prefix}${after ? ` after ${after}` : ''}`, async () => {
        const objects: ObjectMeta[] = [];
        for await (const p of this.inner.list(prefix, {
          ...(after === undefined ? {} : { startAfter: after }),
          ...(options.signal ? { signal: options.signal } : {}),
        })) {
          for (const o of p.objects) {
            if (objects.length > this.pageSize) break;
            objects.push(o);
          }
          if (objects.length > this.pageSize) break;
        }
        return objects;
      });
      const more = page.length > this.pageSize;
      const objects = page.slice(0, this.pageSize).map((m) => this.fixMeta(m));
      yield { objects, prefixes: [] };
      if (!more) return;
      after = objects[objects.length - 1]?.key;
    }
  }

  async delete(keys: readonly string[], options?: { signal?: AbortSignal }): Promise<void> {
    const what = `delete ${keys.length === 1 ? keys[0] : `${keys.length} keys (${keys[0]}..)`}`;
    const f = await this.turn(what);
    if (f === 'before') throw injected(`${what} (not applied)`);
    // A failed batch delete may have removed any prefix of the batch.
    const n = f === 'after' ? Math.floor(this.world.rand() * (keys.length + 1)) : keys.length;
    const done = keys.slice(0, n);
    this.world.sim.begin();
    try {
      if (done.length > 0) await this.inner.delete(done, options);
    } finally {
      this.world.sim.end();
    }
    for (const k of done) this.world.applied(this.actor, 'delete', this.url, k);
    if (f === 'after') throw injected(`${what} (${n} applied)`);
  }

  sub(prefix: string): ObjectStore {
    return new ChaosStore(this.world, this.inner.sub(prefix), this.actor, this.pageSize);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

// ------------------------------------------------------------------ determinism patches

const cjsRequire = createRequire(import.meta.url);
const cjsCrypto = cjsRequire('node:crypto') as typeof nodeCrypto;

/**
 * zstd answers on the thread pool, in real time and in any order, so a run of a volume with
 * zstd would depend on timing instead of its seed. During a virtual run its calls are
 * answered on this thread instead (through SyncZstd), with the same bytes; outside one they go
 * straight through. (lz4 runs on this thread anyway.) Patched into the module's CommonJS
 * exports before the engine first imports it (codec/block.ts loads a codec on first use, and
 * an ES import of a CommonJS module takes the exports as they are at that moment).
 */
let codecsInline = false;

/**
 * `data` in memory the volume hands out for a write it may keep (each attempt gets its own:
 * what was handed over is the volume's).
 */
function ownedCopy(vol: Volume, data: Buffer): Buffer {
  const b = vol.payloadBuffer(data.length);
  data.copy(b);
  return b;
}

function inlineCodecs(): void {
  type Fn = (...a: unknown[]) => unknown;
  const gate = (mod: Record<string, Fn>, fn: string, inline: Fn): void => {
    const real = mod[fn] as Fn;
    mod[fn] = (...a: unknown[]) => {
      if (!codecsInline) return real(...a);
      try {
        return Promise.resolve(inline(...a));
      } catch (e) {
        return Promise.reject(e as Error);
      }
    };
  };
  const zstd = cjsRequire('@mongodb-js/zstd') as Record<string, Fn>;
  let sync: SyncZstd | undefined;
  // A call to the worker costs a few thread switches, and runs (checks reading every
  // checkpoint, deduplicated volumes) code the same few blocks over and over: answers are
  // remembered by their input (the same bytes each time).
  const memo = new Map<string, Buffer>();
  const remembered = (key: string, f: () => Buffer): Buffer => {
    let out = memo.get(key);
    if (out === undefined) {
      if (memo.size >= 16_384) memo.clear();
      memo.set(key, (out = f()));
    }
    return Buffer.from(out);
  };
  const digest = (b: Buffer): string => createHash('sha256').update(b).digest('base64');
  gate(zstd, 'compress', (b, level) =>
    remembered(`c${String(level)}:${digest(b as Buffer)}`, () =>
      (sync ??= new SyncZstd()).compress(b as Buffer, level as number),
    ),
  );
  gate(zstd, 'decompress', (b) =>
    remembered(`d:${digest(b as Buffer)}`, () => (sync ??= new SyncZstd()).decompress(b as Buffer)),
  );
}
inlineCodecs();

/**
 * The handle setInterval returns during a virtual run: an interval of the Sim (or, in the
 * classic schedule, one that never fires).
 */
const virtualIntervals = new WeakMap<object, VirtualInterval>();
const intervalHandle = (v?: VirtualInterval): NodeJS.Timeout => {
  const t = {
    ref: () => t,
    unref: () => t,
    hasRef: () => false,
    refresh: () => t,
    close: () => t,
    [Symbol.toPrimitive]: () => 0,
    [Symbol.dispose]: () => undefined,
  };
  if (v) virtualIntervals.set(t, v);
  return t as unknown as NodeJS.Timeout;
};

/**
 * Replace Date.now (virtual clock), Math.random and crypto.randomBytes (seeded) while `fn`
 * runs, so that a run replays from its seed; answer codec calls on this thread; and run the
 * engine's intervals (lease renewals: the only ones with `flushIntervalMs: 0`) in virtual
 * time, fired by the Sim between requests. (The classic schedule, `timers: false`, kept them
 * from firing at all: leases then lapsed in virtual time as those of a stalled holder do.)
 * Restored afterwards, even on failure.
 */
async function deterministic<T>(
  seed: number,
  sim: Sim,
  timers: boolean,
  fn: () => Promise<T>,
): Promise<T> {
  // Both codecs loaded before the run: their first import takes real time.
  await encodeBlock(Buffer.alloc(4 * KiB, 1), CODEC_ZSTD);
  await encodeBlock(Buffer.alloc(4 * KiB, 1), CODEC_LZ4);
  const realNow = Date.now;
  const realRandom = Math.random;
  const realBytes = cjsCrypto.randomBytes;
  const ids = rng(seed ^ 0x5bd1e995);
  const math = rng(seed ^ 0x27d4eb2f);
  Date.now = () => Math.floor(sim.now);
  Math.random = math;
  const fakeBytes = (n: number): Buffer => {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = Math.floor(ids() * 256);
    return b;
  };
  (cjsCrypto as { randomBytes: unknown }).randomBytes = fakeBytes;
  syncBuiltinESMExports();
  codecsInline = true;
  const realSetInterval = globalThis.setInterval;
  const realClearInterval = globalThis.clearInterval;
  globalThis.setInterval = ((cb: () => void, ms?: number) =>
    intervalHandle(timers ? sim.addInterval(cb, ms ?? 1) : undefined)) as typeof setInterval;
  globalThis.clearInterval = ((h: NodeJS.Timeout | string | number | undefined) => {
    const v = typeof h === 'object' ? virtualIntervals.get(h) : undefined;
    if (v) sim.clearInterval(v);
    else realClearInterval(h);
  }) as typeof clearInterval;
  try {
    return await fn();
  } finally {
    globalThis.setInterval = realSetInterval;
    globalThis.clearInterval = realClearInterval;
    codecsInline = false;
    Date.now = realNow;
    Math.random = realRandom;
    (cjsCrypto as { randomBytes: unknown }).randomBytes = realBytes;
    syncBuiltinESMExports();
  }
}

// ------------------------------------------------------------------ the run

export interface ChaosBackend {
  /** Root of the run: the volume and its clones live under it (actors' requests). */
  actorRoot: ObjectStore;
  /** The same key space without injected faults (the checks read through it). */
  checkRoot: ObjectStore;
  /** Virtual time and a deterministic scheduler (in-memory backends only). */
  virtualTime: boolean;
  /** Release the backend (delete what the run left, close clients). */
  dispose?: () => Promise<void>;
  /**
   * Stop (true) and restart faults injected below the actors' stores (a fault proxy): the
   * volume's creation, before the run, is setup and not under test.
   */
  pauseFaults?: (paused: boolean) => void;
}

export interface ChaosOptions {
  seed: number;
  /** Driver steps (default: 120 to 260, chosen by the seed). */
  steps?: number;
  /** Fault rates (default: chosen by the seed, 0 to 6% of requests). */
  rates?: FaultRates;
  /** Operation names to leave out (see OPS), e.g. ['deleteParent']. */
  exclude?: string[];
  /** Lines of the op log printed with a failure (the full log is written to a file). */
  tailLines?: number;
  /**
   * The schedule as it was before store-full episodes, short leases and virtual-time lease
   * renewals: seeds found then replay as they were found.
   */
  classic?: boolean;
}

export interface ChaosTotals {
  seeds: number;
  steps: number;
  operations: number;
  opsFailed: number;
  requests: number;
  faultsBefore: number;
  faultsAfter: number;
  takeovers: number;
  kills: number;
  checks: number;
  violations: number;
  /** Segment PUTs that overlapped another of the same writer (pipelined flushes). */
  overlappedSegmentPuts: number;
  /** PUTs refused with NO_SPACE during store-full episodes. */
  noSpace: number;
  /** Requests the store failed itself (on RGW: the fault proxy's resets and 5xx). */
  storeErrors: number;
  /** Leases that lapsed (renewals refused past expiry), and lapses a renewal ended. */
  lapses: number;
  lapsesEnded: number;
  /** Compactions that found no room to move blocks and deleted first. */
  compactNoRoom: number;
  /** Seeds whose writers log to a WAL, and opens that replayed one (a writer's or an admin's). */
  walSeeds: number;
  walReplays: number;
  /**
   * WAL records the harness damaged (deleted or corrupted past the head), opens that such
   * damage refused, and `file repair --apply` runs that cut the log.
   */
  walDamages: number;
  walRefusals: number;
  walCuts: number;
  /** Volume copies acknowledged (`file copy`), and those that resumed an interrupted one. */
  copies: number;
  copiesResumed: number;
  /** Attempts started while another attempt of the same copy ran, and those acknowledged. */
  copyTwins: number;
  copyTwinsAcked: number;
  /** Writers told FENCED (each checked against (n)). */
  fencedWriters: number;
  /** Diffs between two checkpoints exported and applied to a copy (`export-diff`/`import-diff`). */
  diffs: number;
  /** Of those, imports run again after one failed, and those that found part of it applied. */
  diffRetries: number;
  diffsResumed: number;
  /** Compactions the writer ran on its own volume, online (beside its writes), and the blocks they moved. */
  onlineCompactions: number;
  onlineBlocksMoved: number;
  /**
   * Resizes the writer asked for (grows, shrinks), those acknowledged, and those whose commit
   * failed after the size changed (the writer went on at the new size).
   */
  resizes: number;
  resizesAcked: number;
  resizesPending: number;
}

export interface ChaosResult {
  seed: number;
  totals: ChaosTotals;
  violations: string[];
  /** The op log (always kept; printed on failure). */
  log: string[];
  /** Where the full log was written, when the run failed. */
  logFile?: string;
}

/** Operations the driver draws from, with their weights. */
export const OPS: Record<string, number> = {
  write: 30,
  zero: 4,
  trim: 4,
  stream: 3,
  read: 5,
  flush: 12,
  writerRestore: 1,
  snapshot: 5,
  snapshotDelete: 2.5,
  clone: 4,
  cloneDelete: 0.6,
  flatten: 1.2,
  cloneCompact: 1,
  compact: 6,
  restore: 2,
  takeover: 1.5,
  kill: 1.5,
  killAdmin: 1,
  time: 1,
  settle: 3,
  deleteParent: 0.6,
  damagePin: 0.4,
  damageWal: 0.6,
  repairWal: 0.5,
  unpin: 0.8,
  copy: 1.5,
  check: 1,
  diff: 1.2,
  resize: 1.2,
};

/** Operations the classic schedule did not have (its seeds replay as they were found). */
const NOT_CLASSIC = ['copy', 'check', 'diff', 'damageWal', 'repairWal', 'resize'];
/** Operations added since the seeds of `replayedNow` (chaos.test.ts) were found. */
export const SINCE_REPLAYED = ['diff', 'damageWal', 'repairWal', 'resize'];

/** The main volume's size at creation, and the sizes the writer's resizes keep it between. */
const VOLUME_SIZE = 1 * MiB;
const MIN_SIZE = 256 * KiB;
const MAX_SIZE = 2 * MiB;
const SECTOR_BYTES = 512;
const BS = 4 * KiB;
/**
 * Writers' leases: long enough that a renewal is rarely needed (the classic schedule, and
 * real time); other virtual runs draw shorter ones, renewed by virtual-time intervals, that
 * lapse when a renewal stalls or the store is full.
 */
const WRITER_LEASE_MS = 30 * 60_000;
const SHORT_LEASES_MS = [WRITER_LEASE_MS, 30_000, 5_000, 3_000];

interface Writer {
  vol: Volume;
  actor: Actor;
  model: Buffer;
  epoch: number;
  /** The content of its newest commit (at open: the head it took over). */
  committed: string;
}

interface Contribution {
  sha: string;
  actor: Actor;
  active: boolean;
  what: string;
}

interface SnapModel {
  state: 'creating' | 'ack' | 'failed' | 'deleting' | 'deleted';
  checkpoint?: number;
}

interface CloneModel {
  prefix: string;
  url: string;
  /** The volume it was cloned from: the main volume, or another clone (a clone of a clone). */
  parentUrl: string;
  origin: number;
  sha: string;
  state: 'creating' | 'ack' | 'failed' | 'deleting' | 'deleted';
  busy: number;
  /** The harness overwrote its pin with garbage (bit rot): compaction must still keep it. */
  pinDamaged?: boolean;
  /** Its delete reported this pin on the parent released: it must be gone. */
  pinReleased?: string;
}

interface CopyModel {
  prefix: string;
  url: string;
  /** What it copies: the main volume, or a clone. */
  sourceUrl: string;
  /** The source's checkpoint copied, and what it reads. */
  origin: number;
  sha: string;
  /** With the named snapshots (an interrupted one is finished with them too). */
  snapshots: boolean;
  /** 'partial': a copy stopped or failed; the target may exist, holding part of it. */
  state: 'copying' | 'ack' | 'partial';
  /** Attempts running (two at once now and then: a twin, see copyOp). */
  running: number;
  /** The actors of its attempts (requests of a killed one may still land). */
  actors: Actor[];
  /** How its first attempt created the target (a twin may try the same). */
  create?: CopyCreateOptions;
  /** Checked since its last attempt settled, with nothing of it still queued. */
  checked: boolean;
  /** The source's checkpoint it holds since diffs were applied to it (see diffOp). */
  at?: number;
  /** A diff whose import failed may have landed all the same: it reads `sha` or this. */
  maybe?: string;
  /**
   * A diff's import began changing it and could not put it back (killed, or the store failed
   * the restore too; its error says the target may hold part of the diff): it may read any
   * mix of the two checkpoints until restored. Still checked for validity, not for content.
   */
  torn?: boolean;
  /** The diff whose import failed (`maybe`): the next diff op runs the same one again. */
  retry?: { to: number };
}

interface Inflight {
  id: number;
  name: string;
  actor: Actor;
  promise: Promise<void>;
  settled: boolean;
}

class Run {
  readonly sim: Sim;
  readonly world: World;
  readonly log: string[] = [];
  private readonly rand: () => number;
  private readonly totals: ChaosTotals;
  private step = 0;
  private actors = 0;
  private writer: Writer | undefined;
  private readonly contributions: Contribution[] = [];
  /** Contents the head may read now (collapsed at every observation). */
  private allowed = new Set<string>();
  /**
   * The writer's contents after each change since its last acknowledged flush, in order. A
   * segment written for room commits too once it lands (the chain, FORMAT.md "Commit
   * protocol"), so any of them may become the volume's content, each only after the ones
   * before it; a dead writer's PUTs in flight may still land, until the next writer's fence.
   */
  private chained: string[] = [];
  /**
   * The content the chain starts from (the writer's last acknowledged flush, or its open).
   * A change may bring a range back to what it held there (deduplicating seeds write one of
   * four fills): a head still reading the base then says nothing about the chain (seed 55601).
   */
  private chainBase: string | undefined;
  /** Every content the head could ever have had (learned checkpoints must be one of them). */
  private readonly everAllowed = new Set<string>();
  /** Checkpoint of the main volume → its content. */
  private readonly refs = new Map<number, string>();
  private readonly snaps = new Map<string, SnapModel>();
  private readonly clones = new Map<string, CloneModel>();
  private readonly copies = new Map<string, CopyModel>();
  private readonly inflight = new Map<number, Inflight>();
  /**
   * Records the harness damaged on purpose (check reports them; that is expected): keys
   * relative to the run's volume (pins) or to the run's root (`wal/…`).
   */
  private readonly damaged = new Set<string>();
  /** WAL records damaged on purpose: sequence → how. */
  private readonly walDamage = new Map<number, 'deleted' | 'corrupted'>();
  /** `file repair --apply` runs in flight: a takeover meanwhile may start from a cut log. */
  private walRepairs = 0;
  private maxEpoch = 0;
  /** Checkpoint → "time/root digest" of the head that committed it. */
  private readonly stamps = new Map<number, string>();
  private modelVersion = 0;
  /**
   * A compaction failed after committing its new history and before re-reading the records
   * made meanwhile: one may name a dropped checkpoint (segment still present) until the next
   * compaction succeeds, which must keep it first.
   */
  private recordsOwed = false;
  /** Compactions of the main volume in flight (each keeps such records before deleting). */
  private compactions = 0;
  private checkedAt = { mutations: -1, model: -1 };
  private nSnap = 0;
  private nClone = 0;
  private nCopy = 0;
  private nIds = 0;
  private stopped = false;
  private readonly pageSize: number;
  private readonly flushBytes: () => number;
  private readonly pipeline: number;
  private readonly maxDirty: number | undefined;
  private readonly weights: [string, number][];
  private readonly mainUrl: string;
  /**
   * Draws of what the classic schedule did not have (store-full episodes, lease lengths),
   * from their own stream: the classic draws stay as they were.
   */
  private readonly extra: () => number;
  private readonly leaseMs: number;
  /** Chance per step that the store fills up (for 1 to 12 steps). */
  private readonly fullRate: number;
  private fullUntil = 0;
  /**
   * In some seeds (unencrypted volumes: a WAL holds data in the clear) the writer logs to a
   * WAL beside the volume: every write before its reply ('write') or everything at each sync
   * ('flush'). Every later writer of the volume, admin operations included, replays it first.
   */
  private readonly walAck: 'write' | 'flush' | undefined;
  private readonly walUrl: string;
  /**
   * With a WAL: the current writer's contents in order since it opened (its start, then after
   * each change), numbered, never trimmed (unlike `chained`); and the first of them a writer
   * that takes over directly (the next epoch) must start from or past: the newest content the
   * writer acknowledged as durable (a write with 'write' acks, a sync, a flush).
   */
  private timeline: { seq: number; sha: string }[] = [];
  private nTimeline = 0;
  private walFloor: { epoch: number; seq: number } | undefined;

  constructor(
    readonly backend: ChaosBackend,
    readonly o: ChaosOptions,
  ) {
    const seed = o.seed;
    this.rand = rng(seed);
    this.sim = new Sim(backend.virtualTime, Date.UTC(2030, 0, 1));
    const pick = this.rand();
    const rates: FaultRates = o.rates ?? {
      before: pick < 0.15 ? 0 : pick < 0.5 ? 0.003 : pick < 0.8 ? 0.01 : 0.03,
      after: pick < 0.15 ? 0 : pick < 0.5 ? 0.002 : pick < 0.8 ? 0.006 : 0.02,
    };
    this.world = new World(this.sim, rng(seed ^ 0x9e3779b9), rates, (l) => this.note(l));
    if (this.rand() < 0.5) {
      const hotSpots = [
        `get ${PIN_PREFIX}`,
        `get ${PIN_PREFIX}`,
        `put ${PIN_PREFIX}`,
        `list `,
        `get ${SNAPSHOT_PREFIX}`,
        `put ${HEAD_KEY}`,
        `get ${HEAD_KEY}`,
        `put lease`,
        `put ${SEGMENT_PREFIX}`,
        `get ${SEGMENT_PREFIX}`,
        `delete `,
      ];
      const prefix = hotSpots[Math.floor(this.rand() * hotSpots.length)] as string;
      this.world.hot = { prefix, factor: this.rand() < 0.5 ? 8 : 20 };
    }
    this.pageSize = [2, 5, 17, 1000][Math.floor(this.rand() * 4)] as number;
    const fb = [32, 64, 128, 512][Math.floor(this.rand() * 4)] as number;
    this.flushBytes = () => fb * KiB;
    // Segment PUTs in flight at once, and how much the buffer may hold with them.
    this.pipeline = [1, 2, 4, 8][Math.floor(this.rand() * 4)] as number;
    this.maxDirty = this.rand() < 0.5 ? 2 * fb * KiB : undefined;
    this.mainUrl = `${backend.checkRoot.url}main/`;
    this.extra = rng(seed ^ 0x85ebca6b);
    const modern = !o.classic && backend.virtualTime;
    const x = this.extra();
    this.leaseMs = modern
      ? (SHORT_LEASES_MS[Math.floor(x * SHORT_LEASES_MS.length)] as number)
      : WRITER_LEASE_MS;
    this.fullRate = !o.classic && this.extra() < 0.5 ? 0.03 : 0;
    // (Its own stream: the draws above stay as they were.)
    const walDraw = rng(seed ^ 0x165667b1);
    this.walAck =
      !o.classic && seed % 4 !== 3 && walDraw() < 0.3
        ? walDraw() < 0.5
          ? 'write'
          : 'flush'
        : undefined;
    this.walUrl = `${backend.checkRoot.url}wal/`;
    const exclude = new Set([...(o.exclude ?? []), ...(o.classic ? NOT_CLASSIC : [])]);
    this.weights = Object.entries(OPS).filter(([n]) => !exclude.has(n));
    this.totals = { ...emptyTotals(), seeds: 1, walSeeds: this.walAck ? 1 : 0 };
    const hot = this.world.hot;
    this.note(
      `seed ${seed}: faults before ${rates.before} after ${rates.after}${hot ? ` (x${hot.factor} on '${hot.prefix}')` : ''}, list page ${this.pageSize}, flushBytes ${fb} KiB, pipeline ${this.pipeline}${this.maxDirty ? `, maxDirty ${this.maxDirty / KiB} KiB` : ''}, lease ${this.leaseMs / 1000} s, store full ${this.fullRate ? `${this.fullRate * 100}% of steps` : 'never'}${this.walAck ? `, WAL (acks at ${this.walAck})` : ''}${o.classic ? ' (classic schedule)' : ''}`,
    );
  }

  private note(line: string): void {
    const t = ((this.sim.now - Date.UTC(2030, 0, 1)) / 1000).toFixed(3);
    const l = `${String(this.step).padStart(4)} ${t.padStart(9)}s ${line}`;
    this.log.push(l);
    // HYPER_CHAOS_LIVE=1: the op log as it happens, on stderr (a seed that never ends).
    if (process.env.HYPER_CHAOS_LIVE === '1') process.stderr.write(`${l}\n`);
  }

  /** HYPER_CHAOS_DEBUG: print the stored head, the lease and every segment's embedded head. */
  private async dumpChain(): Promise<void> {
    if (!process.env.HYPER_CHAOS_DEBUG) return;
    const raw = this.raw(this.mainUrl);
    const { stored } = await readHead(raw);
    const h0 = stored.head;
    const lines = [
      `stored head ${h0.checkpoint} last ${h0.lastSegment} epoch ${h0.epoch} skipped ${h0.skipped.join(',')}`,
    ];
    const lease = await readLease(raw).catch((e: unknown) => errText(e));
    lines.push(`lease ${JSON.stringify(typeof lease === 'string' ? lease : lease?.lease)}`);
    for await (const p of raw.list(SEGMENT_PREFIX))
      for (const o of p.objects) {
        const id = parseSegmentKey(o.key) as number;
        try {
          const h = await readCheckpointHead(raw, id);
          lines.push(
            `seg ${id}: prev ${h.prevCheckpoint} epoch ${h.epoch} last ${h.lastSegment} skipped ${h.skipped.slice(-4).join(',')} ms ${h.checkpointMs}`,
          );
        } catch (e) {
          lines.push(`seg ${id}: ${errText(e)}`);
        }
      }
    console.log(lines.join('\n'));
  }

  private violation(msg: string): void {
    this.world.violation(msg);
  }

  // -------------------------------------------------------------- stores

  private actor(kind: string, faults = true): Actor {
    const a = { name: `${kind}${++this.actors}`, faults, dead: false, pending: 0 };
    this.allActors.push(a);
    return a;
  }

  private readonly allActors: Actor[] = [];

  /** An actor's engine log, into the op log; lapses and full-store compactions counted. */
  private logger(actor: Actor): Logger {
    const say =
      (level: string) =>
      (msg: string, fields?: Record<string, unknown>): void => {
        if (msg.startsWith('lease lapsed')) this.totals.lapses++;
        else if (msg.startsWith('lease renewed after a lapse')) this.totals.lapsesEnded++;
        else if (msg.startsWith('compaction: the store has no room')) this.totals.compactNoRoom++;
        else if (msg.startsWith('replayed WAL')) this.totals.walReplays++;
        this.note(`${actor.name} ${level} ${msg} ${fields ? JSON.stringify(fields) : ''}`);
      };
    return { debug: say('debug'), info: say('info'), warn: say('warn'), error: say('error') };
  }

  private rel(url: string): string {
    const root = this.backend.checkRoot.url;
    if (!url.startsWith(root)) throw new Error(`${url} is not under the run's root ${root}`);
    return url.slice(root.length);
  }

  /** `actor`'s view of the volume at `url` (prefixes under the run's root). */
  private view(actor: Actor, url: string): ObjectStore {
    const rel = this.rel(url);
    const base = rel === '' ? this.backend.actorRoot : this.backend.actorRoot.sub(rel);
    const chaos = new ChaosStore(this.world, base, actor, this.pageSize);
    if (this.retries === 0) return chaos;
    return new RetryingStore(chaos, {
      maxAttempts: this.retries,
      baseDelayMs: 20,
      maxDelayMs: 500,
      sleep: (ms) => this.sim.wait(actor, ms),
    });
  }
  /** Attempts per request (0: no retry layer; chosen per seed). */
  private retries = 0;
  /** The volume deduplicates (and writes repeat a few contents). */
  private dedup = false;

  private opener(actor: Actor): (url: string) => Promise<ObjectStore> {
    return (url) => Promise.resolve(this.view(actor, url));
  }

  private raw(url: string): ObjectStore {
    const rel = this.rel(url);
    return rel === '' ? this.backend.checkRoot : this.backend.checkRoot.sub(rel);
  }

  private readonly rawOpen = (url: string): Promise<ObjectStore> => Promise.resolve(this.raw(url));

  // -------------------------------------------------------------- model helpers

  /** Whether the volume may read `sha` now: a commit's content, or a change's on the chain. */
  private possible(sha: string): boolean {
    return this.allowed.has(sha) || this.chained.includes(sha);
  }

  /** The volume was seen reading `sha`: the chain has moved past every change before it. */
  private seen(sha: string): void {
    if (sha === this.chainBase) return;
    const k = this.chained.indexOf(sha);
    if (k > 0) this.chained.splice(0, k);
  }

  private allow(sha: string): void {
    this.allowed.add(sha);
    this.everAllowed.add(sha);
  }

  private contribute(sha: string, actor: Actor, what: string): Contribution {
    const c = { sha, actor, active: true, what };
    this.contributions.push(c);
    this.allow(sha);
    this.modelVersion++;
    return c;
  }

  /** Checkpoint `c` of the main volume reads `sha`: the first time, it must be a possible content. */
  private learn(c: number, sha: string, how: string): void {
    const known = this.refs.get(c);
    if (known !== undefined) {
      if (known !== sha)
        this.violation(`checkpoint ${c} reads ${sha} (${how}), but it held ${known} before`);
      return;
    }
    if (!this.everAllowed.has(sha))
      this.violation(
        `checkpoint ${c} reads ${sha} (${how}), a content no commit could have produced`,
      );
    this.refs.set(c, sha);
  }

  private pickFrom<T>(xs: readonly T[]): T | undefined {
    return xs.length === 0 ? undefined : xs[Math.floor(this.rand() * xs.length)];
  }

  /** Retained checkpoints of the main volume whose content the model knows (read without faults). */
  private async knownRetained(): Promise<number[]> {
    const raw = this.raw(this.mainUrl);
    const { head } = await readHead(raw);
    const out: number[] = [];
    for await (const p of raw.list(SEGMENT_PREFIX))
      for (const o of p.objects) {
        const id = parseSegmentKey(o.key);
        if (id !== undefined && isRetainedCheckpoint(head, id) && this.refs.has(id)) out.push(id);
      }
    return out;
  }

  private async atomically<T>(fn: () => Promise<T>): Promise<T> {
    await this.sim.pause();
    try {
      return await fn();
    } finally {
      this.sim.resume();
    }
  }

  /** Read a whole volume (or one checkpoint of it) through fault-free stores. */
  private async content(
    url: string,
    at?: number,
  ): Promise<{ ok: true; buf: Buffer; sha: string } | { ok: false; error: string }> {
    let v: Volume | undefined;
    try {
      v = await Volume.open(this.raw(url), {
        ...(at === undefined ? { readOnly: true } : { at: { checkpoint: at } }),
        openStore: this.rawOpen,
      });
      const buf = await v.read(0, v.info.size);
      return { ok: true, buf, sha: digest(buf) };
    } catch (e) {
      return { ok: false, error: errText(e) };
    } finally {
      await v?.close().catch(() => undefined);
    }
  }

  // -------------------------------------------------------------- operations

  /** Classify an operation's failure: clean, or a violation (an unexpected error). */
  private failed(name: string, e: unknown): void {
    this.totals.opsFailed++;
    this.note(`${name} -> failed ${errText(e)}`);
    if (unexpected(e)) {
      const stack = e instanceof Error ? (e.stack ?? '').split('\n').slice(0, 6).join(' | ') : '';
      this.violation(`${name} failed with an unexpected error: ${errText(e)} ${stack}`);
    } else if (isHyperError(e) && e.kind === 'data') {
      // (m) Damage is reported only where the harness did some.
      if (!this.isDamaged(e.key ?? ''))
        this.violation(`(m) ${name} failed as if the store were damaged: ${errText(e)}`);
      else if (this.walDamage.size > 0 && /\/wal\//.test(e.key ?? '')) this.totals.walRefusals++;
    }
  }

  /** Whether `key` (as an error or `file check` names it: often a URL) is damage done on purpose. */
  private isDamaged(key: string): boolean {
    return [...this.damaged].some((k) => key === k || key.endsWith(`/${k}`));
  }

  /** Start an admin operation concurrently with the writer. */
  private launch(
    name: string,
    actor: Actor,
    body: () => Promise<string>,
    after?: () => void,
  ): void {
    const id = ++this.nIds;
    this.totals.operations++;
    this.note(`${actor.name} ${name} started`);
    const entry: Inflight = {
      id,
      name: `${actor.name} ${name}`,
      actor,
      promise: Promise.resolve(),
      settled: false,
    };
    entry.promise = (async () => {
      try {
        const r = await body();
        this.note(`${actor.name} ${name} -> ok ${r}`);
      } catch (e) {
        this.failed(`${actor.name} ${name}`, e);
      } finally {
        entry.settled = true;
        this.inflight.delete(id);
        this.modelVersion++;
        after?.();
      }
    })();
    this.inflight.set(id, entry);
  }

  private async openWriter(force: boolean): Promise<void> {
    const actor = this.actor('W');
    this.totals.operations++;
    if (force) this.totals.takeovers++;
    const store = this.view(actor, this.mainUrl);
    let vol: Volume;
    try {
      vol = await this.sim.watch(
        Volume.open(store, {
          holder: actor.name,
          force,
          flushIntervalMs: 0,
          // No real-time timer: the background head update runs after 8 syncs, at a point
          // the seed decides (a timer would fire in real time, and a seed would not replay).
          headUpdateDelayMs: 0,
          leaseTtlMs: this.leaseMs,
          logger: this.logger(actor),
          flushBytes: this.flushBytes(),
          flushPipeline: this.pipeline,
          ...(this.maxDirty === undefined ? {} : { maxDirtyBytes: this.maxDirty }),
          nodeCacheBytes: 64 * KiB,
          dataCacheBytes: this.rand() < 0.5 ? 0 : 256 * KiB,
          openStore: this.opener(actor),
          ...(this.walAck ? { walUrl: this.walUrl, walAck: this.walAck } : {}),
        }),
        `${actor.name} open`,
      );
    } catch (e) {
      this.failed(`${actor.name} open${force ? ' --force' : ''}`, e);
      return;
    }
    // Atomically (nothing else runs): what the new writer starts from.
    const accepted = await this.atomically(async () => {
      const epoch = vol.headRecord.epoch;
      const { head } = await readHead(this.raw(this.mainUrl));
      if (head.epoch !== epoch) {
        // A newer epoch: another takeover's fence landed while this open finished (its last
        // steps run beside other actors). An older one would mean this takeover was lost.
        if (head.epoch < epoch)
          this.violation(
            `${actor.name} opened under epoch ${epoch} but the head is at epoch ${head.epoch}`,
          );
        this.note(`${actor.name} open -> taken over at once (epoch ${head.epoch})`);
        return false;
      }
      const c = await this.content(this.mainUrl);
      if (!c.ok) {
        this.violation(
          `the head of the volume ${actor.name} just took over is unreadable: ${c.error}`,
        );
        return false;
      }
      if (!this.possible(c.sha))
        this.violation(
          `${actor.name} took over a head (checkpoint ${head.checkpoint}) reading ${c.sha}, not a content any commit produced (allowed ${[...this.allowed, ...this.chained].join(',')})`,
        );
      // (i) With a WAL, a writer that takes over from the previous one directly (nobody
      // else held the lease in between) starts from everything that one acknowledged as
      // durable: the WAL records past the head are replayed before the fence is claimed.
      // (A repair in flight may have cut the log: what it dropped is lost by the operator's
      // choice, and the floor is dropped when it ends.)
      const floor = this.walFloor;
      if (floor && epoch === floor.epoch + 1 && this.walRepairs === 0) {
        if (!this.timeline.some((e) => e.seq >= floor.seq && e.sha === c.sha))
          this.violation(
            `${actor.name} took over from epoch ${floor.epoch} (WAL acks at ${this.walAck}) reading ${c.sha}, without what that writer acknowledged as durable (${this.timeline
              .filter((e) => e.seq >= floor.seq)
              .map((e) => e.sha)
              .join(',')})`,
          );
      }
      this.walFloor = undefined;
      this.timeline = [{ seq: ++this.nTimeline, sha: c.sha }];
      // Past its fence, nothing of an earlier writer can land on the chain any more.
      this.allow(c.sha);
      this.chained = [];
      this.chainBase = c.sha;
      this.learn(head.checkpoint, c.sha, `head taken over by ${actor.name}`);
      this.writer = { vol, actor, model: c.buf, epoch, committed: c.sha };
      this.note(
        `${actor.name} open${force ? ' --force' : ''} -> ok epoch ${epoch} checkpoint ${head.checkpoint} content ${c.sha}`,
      );
      return true;
    });
    // (Nothing is buffered: closing commits nothing.)
    if (!accepted) await this.sim.watch(vol.close(), `${actor.name} close`).catch(() => undefined);
  }

  /** Drop the writer after a failure: close it (it flushes nothing if fenced). */
  private async dropWriter(why: string): Promise<void> {
    const w = this.writer;
    if (!w) return;
    this.writer = undefined;
    if (why === 'fenced') {
      this.totals.fencedWriters++;
      await this.checkFenced(w);
    }
    // If it is not fenced, close() commits its writes: allow that content.
    const c = this.contribute(digest(w.model), w.actor, `${w.actor.name} close`);
    try {
      await this.sim.watch(w.vol.close(), `${w.actor.name} close`);
      this.note(`${w.actor.name} closed (${why})`);
    } catch (e) {
      this.note(`${w.actor.name} close (${why}) -> failed ${errText(e)}`);
      if (unexpected(e)) this.violation(`${w.actor.name} close failed unexpectedly: ${errText(e)}`);
    } finally {
      c.active = false;
    }
  }

  /** (n) A writer told FENCED was taken over: something holds a newer epoch than its own. */
  private async checkFenced(w: Writer): Promise<void> {
    const raw = this.raw(this.mainUrl);
    let lease: number | undefined;
    let head: number | undefined;
    try {
      lease = (await readLease(raw))?.lease.epoch;
    } catch {
      lease = undefined;
    }
    try {
      head = (await readHead(raw)).head.epoch;
    } catch {
      head = undefined;
    }
    // (Unreadable records tell nothing either way.)
    if (lease === undefined && head === undefined) return;
    if ((lease ?? 0) > w.epoch || (head ?? 0) > w.epoch) return;
    this.violation(
      `(n) ${w.actor.name} was told FENCED, but nothing holds a newer epoch than its ${w.epoch} (lease ${lease ?? 'unreadable'}, head ${head ?? 'unreadable'})`,
    );
  }

  /** Kill the writer: no flush, no release; its requests stop (some in flight may land). */
  private kill(w: Writer): void {
    this.totals.kills++;
    w.actor.dead = true;
    this.note(`${w.actor.name} killed`);
    // Stops its timers; every request fails at once (the actor is dead).
    void w.vol.close().catch(() => undefined);
  }

  /** The range the last streamOp wrote (online compaction on RGW writes half of it again). */
  private lastStream: { off: number; end: number } | undefined;

  /**
   * A sequential stream: several segments' worth of consecutive writes, one after another
   * without a flush, so that segment PUTs pile up in the pipeline (and writers wait for room).
   */
  private async streamOp(): Promise<void> {
    const chunk = 64 * KiB;
    const size = (this.writer as Writer).model.length;
    const total = Math.min(size, (2 + Math.floor(this.rand() * 5)) * this.flushBytes());
    let off = Math.floor((this.rand() * (size - total)) / BS) * BS;
    const end = off + total;
    this.lastStream = { off, end };
    for (; off < end && this.writer; off += chunk)
      await this.writerOp('write', { off, len: Math.min(chunk, end - off) });
  }

  private async writerOp(
    kind: 'write' | 'zero' | 'trim',
    at?: { off: number; len: number },
  ): Promise<void> {
    const w = this.writer as Writer;
    const r = this.rand();
    const aligned = this.rand() < 0.5;
    const size = w.model.length;
    let off = Math.floor(this.rand() * size);
    let len =
      r < 0.7 ? 1 + Math.floor(this.rand() * 16 * KiB) : 1 + Math.floor(this.rand() * 160 * KiB);
    if (aligned) {
      off = Math.floor(off / BS) * BS;
      len = Math.max(BS, Math.ceil(len / BS) * BS);
    }
    if (at) ({ off, len } = at);
    len = Math.min(len, size - off);
    if (len <= 0) return;
    let data: Buffer | undefined;
    if (kind === 'write') {
      // (Deduplicating volumes: mostly one of four fills, so that blocks repeat.)
      const fill = this.dedup ? 1 + Math.floor(this.rand() * 4) : 1 + Math.floor(this.rand() * 255);
      data = Buffer.alloc(len, fill);
      if (!this.dedup || this.rand() < 0.25)
        for (let i = 0; i + 4 <= len; i += 509) data.writeUInt32LE((this.step * 7919 + i) >>> 0, i);
    }
    // Half the writes hand their data over as the NBD server does (payloadBuffer, then
    // writeOwned): large block-aligned ones become blocks without a copy, and their memory
    // is recycled for later writes once flushed; a block still pointing into recycled memory
    // would read back another write's bytes.
    const owned = kind === 'write' && this.rand() < 0.5;
    // (Mostly of a few lengths at a block boundary, as clients send: memory recycled too early
    // would be handed out again for a later write of the same length.)
    if (owned && !at && this.rand() < 0.5) {
      len = [64, 128][Math.floor(this.rand() * 2)]! * KiB;
      off = Math.min(Math.floor(off / BS) * BS, size - len);
      data = Buffer.alloc(len, 1 + Math.floor(this.rand() * 255));
      for (let i = 0; i + 4 <= len; i += 509) data.writeUInt32LE((this.step * 7919 + i) >>> 0, i);
    }
    const what = `${w.actor.name} ${kind}${owned ? ' (owned)' : ''} ${off}+${len}`;
    this.totals.operations++;
    // The content once this change is applied (a segment for room may commit it any time).
    const next = Buffer.from(w.model);
    if (kind === 'write') (data as Buffer).copy(next, off);
    else if (kind === 'zero') next.fill(0, off, off + len);
    else {
      // A trim zeroes whole blocks only; partial edges keep their content.
      const a = Math.ceil(off / BS) * BS;
      const b = Math.floor((off + len) / BS) * BS;
      if (b > a) next.fill(0, a, b);
    }
    const nextSha = digest(next);
    this.chained.push(nextSha);
    this.allow(nextSha);
    // (Before it is sent: a change that fails may still be in the log, whole.)
    const seq = ++this.nTimeline;
    this.timeline.push({ seq, sha: nextSha });
    // A failed change may be partly applied (NBD semantics): repeat it until it succeeds,
    // or give the writer up.
    for (let attempt = 1; ; attempt++) {
      try {
        const p =
          kind === 'write'
            ? owned
              ? w.vol.writeOwned(off, ownedCopy(w.vol, data as Buffer))
              : w.vol.write(off, data as Buffer)
            : kind === 'zero'
              ? w.vol.writeZeroes(off, len)
              : w.vol.trim(off, len);
        await this.sim.watch(p, what);
        break;
      } catch (e) {
        this.failed(what, e);
        if (isHyperError(e, 'FENCED') || attempt >= 4) {
          // Its content in that range is unknown now: the writer goes.
          this.kill(w);
          this.writer = undefined;
          return;
        }
      }
    }
    next.copy(w.model);
    if (this.walAck === 'write') this.walFloor = { epoch: w.epoch, seq };
    this.note(`${what} ok`);
  }

  private async readOp(at?: { off: number; len: number }): Promise<void> {
    const w = this.writer as Writer;
    const size = w.model.length;
    let off = Math.floor(this.rand() * size);
    let len = Math.min(size - off, 1 + Math.floor(this.rand() * 128 * KiB));
    if (at) ({ off, len } = at);
    const what = `${w.actor.name} read ${off}+${len}`;
    this.totals.operations++;
    try {
      const got = await this.sim.watch(w.vol.read(off, len), what);
      if (!got.equals(w.model.subarray(off, off + len))) {
        let i = 0;
        while (i < len && got[i] === w.model[off + i]) i++;
        this.violation(
          `${what} returned data that differs from the writer's own writes (first at ${off + i})`,
        );
      }
    } catch (e) {
      this.failed(what, e);
      if (isHyperError(e) && e.kind === 'data') {
        // Only a writer that was taken over may lose what it reads (grace 0 compactions).
        const { head } = await readHead(this.raw(this.mainUrl));
        if (head.epoch === w.epoch)
          this.violation(`${what}: data error while this writer still owns the volume`);
      }
    }
  }

  /**
   * A commit of the writer's content `sha` (a flush, a sync without a WAL, a resize)
   * succeeded as checkpoint `checkpoint`; `epochBefore` is the head's epoch before it began.
   */
  private async committed(
    w: Writer,
    sha: string,
    what: string,
    epochBefore: number,
    checkpoint: number,
  ): Promise<void> {
    // (With nothing new to commit a flush succeeds without writing: that is fine.) One
    // that started after another writer began taking over succeeds only if every segment
    // it waited for landed before the new writer's fence, which then adopted them: its
    // checkpoint must be on the volume's chain and read what it acknowledged.
    if (epochBefore > w.epoch && sha !== w.committed) {
      const wrong = await this.atomically(async () => {
        const raw = this.raw(this.mainUrl);
        const { head } = await readHead(raw);
        const id = checkpoint;
        // Ids at or below the head's last segment are its chain's checkpoints, except the
        // skipped ones; a fence (never deleted) holds the id, so a segment of this writer's
        // cannot be there.
        if (id > head.lastSegment || head.skipped.includes(id) || head.fences?.includes(id))
          return `its checkpoint ${id} is not on the chain (head ${head.checkpoint})`;
        if (!isRetainedCheckpoint(head, id)) {
          // Adopted, then dropped by a compaction since (seed 3002): its content is gone
          // from the history. The segment, if still there, must be this writer's.
          const occupant = await readCheckpointHead(raw, id).catch((e: unknown) => {
            if (isHyperError(e, 'MISSING_OBJECT')) return undefined;
            throw e;
          });
          return occupant === undefined || occupant.epoch === w.epoch
            ? undefined
            : `checkpoint ${id} is epoch ${occupant.epoch}'s, not this writer's`;
        }
        const c = await this.content(this.mainUrl, id);
        if (!c.ok) return `its checkpoint ${id} is unreadable: ${c.error}`;
        return c.sha === sha ? undefined : `its checkpoint ${id} reads ${c.sha}`;
      });
      if (wrong) {
        await this.dumpChain();
        this.violation(
          `${what} succeeded although the volume was being taken over (head epoch ${epochBefore}, writer ${w.epoch}), and ${wrong}`,
        );
      }
    }
    this.learn(checkpoint, sha, what);
    w.committed = sha;
    // Every segment landed: the chain is at this content, past every change before it.
    this.chained = [];
    this.chainBase = sha;
    if (this.walAck) this.walFloor = { epoch: w.epoch, seq: this.nTimeline };
  }

  /** Returns whether the flush succeeded. */
  private async flushOp(): Promise<boolean> {
    const w = this.writer as Writer;
    const sha = digest(w.model);
    // Half of them as NBD FLUSH does it: sync() returns once the segments landed, and the
    // head object is updated later, in the background, racing whatever else runs.
    const durable = this.rand() < 0.5;
    const what = `${w.actor.name} ${durable ? 'sync' : 'flush'}`;
    this.totals.operations++;
    const c = this.contribute(sha, w.actor, what);
    try {
      if (durable && this.walAck) {
        // With a WAL, a sync commits nothing (unless the log is full): what was acknowledged
        // is durable in the log, and the next writer replays it.
        const upTo = this.nTimeline;
        await this.sim.watch(w.vol.sync(), what);
        this.note(`${what} -> ok (WAL) content ${sha}`);
        this.walFloor = { epoch: w.epoch, seq: upTo };
        return true;
      }
      const { head: before } = await readHead(this.raw(this.mainUrl));
      const r = durable
        ? await this.sim
            .watch(w.vol.sync(), what)
            .then(() => ({ checkpoint: w.vol.headRecord.checkpoint }))
        : await this.sim.watch(w.vol.flush(), what);
      this.note(`${what} -> ok checkpoint ${r.checkpoint} content ${sha}`);
      await this.committed(w, sha, what, before.epoch, r.checkpoint);
      return true;
    } catch (e) {
      this.failed(what, e);
      if (isHyperError(e, 'FENCED')) await this.dropWriter('fenced');
      return false;
    } finally {
      c.active = false;
    }
  }

  /**
   * The writer changes the volume's size, as `hyper file set-len` does through the server that
   * holds a volume (a grow, beside its clients) or on a volume held alone (a shrink with
   * --allow-shrink): mostly grows, now and then a shrink, by any number of sectors, so that the
   * end falls inside a block as often as not. Volume.resize commits like a flush. One that
   * fails after changing the size leaves its commit pending, and the writer goes on at the new
   * size; one that fails before may still have logged it (a WAL append that landed but
   * failed): it is asked again until it succeeds, as set-len run again would, or the writer
   * is given up. What a shrink cut off must read zeros when a grow brings the range back.
   */
  private async resizeOp(): Promise<void> {
    const from = (this.writer as Writer).model.length;
    await this.resize();
    // Half the time a client of the grown volume writes past the old end at once (whether
    // the grow's commit landed or is pending), else reads there: zeros, also where a shrink
    // cut blocks the writer had read or written before (they must not come back from a
    // cache or the buffer).
    const w = this.writer;
    if (!w || w.model.length <= from) return;
    const range = { off: from, len: Math.min(w.model.length - from, 16 * KiB) };
    if (this.rand() < 0.5) await this.writerOp('write', range);
    else await this.readOp(range);
  }

  private async resize(): Promise<void> {
    const w = this.writer as Writer;
    const from = w.model.length;
    const shrink = from > MIN_SIZE && (from >= MAX_SIZE || this.rand() < 0.3);
    const by = SECTOR_BYTES * (1 + Math.floor(this.rand() * (this.rand() < 0.5 ? 16 : 512)));
    const to = shrink ? Math.max(MIN_SIZE, from - by) : Math.min(MAX_SIZE, from + by);
    if (to === from) return;
    const next = Buffer.alloc(to);
    w.model.copy(next, 0, 0, Math.min(from, to));
    const sha = digest(next);
    const what = `${w.actor.name} resize ${from} -> ${to}`;
    this.totals.operations++;
    this.totals.resizes++;
    this.chained.push(sha);
    this.allow(sha);
    this.timeline.push({ seq: ++this.nTimeline, sha });
    const c = this.contribute(sha, w.actor, what);
    try {
      for (let attempt = 1; ; attempt++) {
        try {
          const { head: before } = await readHead(this.raw(this.mainUrl));
          const r = await this.sim.watch(w.vol.resize(to, { allowShrink: true }), what);
          w.model = next;
          this.totals.resizesAcked++;
          this.note(`${what} -> ok checkpoint ${r.checkpoint} content ${sha}`);
          await this.committed(w, sha, what, before.epoch, r.checkpoint);
          return;
        } catch (e) {
          this.failed(what, e);
          if (isHyperError(e, 'FENCED')) {
            await this.dropWriter('fenced');
            return;
          }
          if (w.vol.info.size === to) {
            // The size changed, its commit failed (it is pending, like a failed flush's
            // changes): the writer goes on at the new size, as a server grown online does,
            // whose clients may write past the old end at once.
            w.model = next;
            this.totals.resizesPending++;
            this.note(`${what}: the size changed, its commit is pending`);
            return;
          }
          if (attempt >= 4) {
            this.kill(w);
            this.writer = undefined;
            return;
          }
        }
      }
    } finally {
      c.active = false;
    }
  }

  private async writerRestoreOp(): Promise<void> {
    const w = this.writer as Writer;
    const target = this.pickFrom(await this.knownRetained());
    if (target === undefined) return;
    const t = await this.atomically(() => this.content(this.mainUrl, target));
    if (!t.ok) return;
    const what = `${w.actor.name} restore ${target}`;
    this.totals.operations++;
    const cur = this.contribute(digest(w.model), w.actor, what);
    const tc = this.contribute(t.sha, w.actor, what);
    try {
      const r = await this.sim.watch(w.vol.restore(target), what);
      this.note(`${what} -> ok checkpoint ${r.checkpoint} content ${t.sha}`);
      w.model = t.buf;
      w.committed = t.sha;
      this.learn(r.checkpoint, t.sha, what);
      this.timeline.push({ seq: ++this.nTimeline, sha: t.sha });
      if (this.walAck) this.walFloor = { epoch: w.epoch, seq: this.nTimeline };
    } catch (e) {
      this.failed(what, e);
      // Which content is durable is unknown.
      this.walFloor = undefined;
      // Whether the writer's index was switched is unknown: give it up.
      if (isHyperError(e, 'FENCED')) await this.dropWriter('fenced');
      else {
        this.kill(w);
        this.writer = undefined;
      }
    } finally {
      cur.active = false;
      tc.active = false;
    }
  }

  private async snapshotOp(): Promise<void> {
    const name = `s${++this.nSnap}`;
    const actor = this.actor('snap');
    const atPast = this.rand() < 0.5;
    const at = atPast ? this.pickFrom(await this.knownRetained()) : undefined;
    const m: SnapModel = { state: 'creating' };
    this.snaps.set(name, m);
    this.launch(
      `snapshot create ${name}${at === undefined ? '' : ` at ${at}`}`,
      actor,
      async () => {
        try {
          const r = await createSnapshot(
            this.view(actor, this.mainUrl),
            name,
            at === undefined ? undefined : { checkpoint: at },
          );
          m.state = 'ack';
          m.checkpoint = r.checkpoint;
          return `checkpoint ${r.checkpoint}`;
        } catch (e) {
          m.state = 'failed';
          throw e;
        }
      },
    );
  }

  private snapshotDeleteOp(): void {
    const acked = [...this.snaps].filter(([, s]) => s.state === 'ack');
    const pick = this.pickFrom(acked);
    if (!pick) return;
    const [name, m] = pick;
    m.state = 'deleting';
    const actor = this.actor('unsnap');
    this.launch(`snapshot delete ${name}`, actor, async () => {
      try {
        await deleteSnapshot(this.view(actor, this.mainUrl), name);
        m.state = 'deleted';
        return '';
      } catch (e) {
        m.state = 'failed';
        throw e;
      }
    });
  }

  private async cloneOp(): Promise<void> {
    // Now and then a clone of a clone, from its current checkpoint (clones are never written:
    // every checkpoint of one reads what it was made from).
    const of = this.rand() < 0.25 ? await this.existingClone() : undefined;
    const from = of ? of.head.checkpoint : this.pickFrom(await this.knownRetained());
    if (from === undefined) return;
    const sha = of ? of.m.sha : (this.refs.get(from) as string);
    const parentUrl = of ? of.m.url : this.mainUrl;
    const prefix = `c${++this.nClone}/`;
    const url = `${this.backend.checkRoot.url}${prefix}`;
    const flatten = this.rand() < 0.35;
    const m: CloneModel = {
      prefix,
      url,
      parentUrl,
      origin: from,
      sha,
      state: 'creating',
      busy: 1,
    };
    this.clones.set(url, m);
    const actor = this.actor('clone');
    this.launch(
      `clone ${prefix} from ${of ? `clone ${of.m.prefix} at ` : ''}${from}${flatten ? ' --flatten' : ''}`,
      actor,
      async () => {
        try {
          const r = await cloneVolume(
            this.view(actor, parentUrl),
            { checkpoint: from },
            this.view(actor, url),
            { flatten, openStore: this.opener(actor) },
          );
          m.state = 'ack';
          return `checkpoint ${r.checkpoint}`;
        } catch (e) {
          m.state = 'failed';
          throw e;
        }
      },
      () => {
        m.busy--;
      },
    );
  }

  /** A clone that exists now (its head is readable without faults). */
  private async existingClone(): Promise<{ m: CloneModel; head: HeadRecord } | undefined> {
    const live: { m: CloneModel; head: HeadRecord }[] = [];
    for (const m of this.clones.values()) {
      if (m.state === 'creating' || m.state === 'deleted' || m.state === 'deleting') continue;
      try {
        live.push({ m, head: (await readHead(this.raw(m.url))).head });
      } catch {
        // not a volume (any more)
      }
    }
    return this.pickFrom(live);
  }

  /**
   * `file copy`: a retained checkpoint of the volume (or a clone's) into a new volume,
   * sometimes with its snapshots, stopped part way now and then; or an interrupted copy run
   * again to finish it. The source stays as it is; an acknowledged copy reads exactly what
   * its checkpoint reads (invariant k).
   */
  private async copyOp(): Promise<void> {
    // Now and then a second attempt of a copy that is running: the same copy started twice
    // by mistake, or run again to finish it while the first is still at it (with --force,
    // fencing it). The target's lease decides; whichever attempt is acknowledged, the
    // target reads what the source's checkpoint read.
    const running = [...this.copies.values()].filter((m) => m.running > 0 && m.state !== 'ack');
    const twin = this.rand() < 0.2 ? this.pickFrom(running) : undefined;
    if (twin) {
      this.twinCopy(twin);
      return;
    }
    const stopped = [...this.copies.values()].filter((m) => m.state === 'partial' && !m.running);
    const again = this.rand() < 0.4 ? this.pickFrom(stopped) : undefined;
    if (again) {
      this.runCopy(again, { resume: true, force: this.rand() < 0.5 });
      if (this.rand() < 0.2) this.twinCopy(again);
      return;
    }
    const of = this.rand() < 0.2 ? await this.existingClone() : undefined;
    const from = of ? of.head.checkpoint : this.pickFrom(await this.knownRetained());
    if (from === undefined) return;
    const prefix = `k${++this.nCopy}/`;
    const layout = this.rand();
    const create: CopyCreateOptions =
      layout < 0.15 ? { compression: 'none' } : layout < 0.3 ? { dedup: !this.dedup } : {};
    const m: CopyModel = {
      prefix,
      url: `${this.backend.checkRoot.url}${prefix}`,
      sourceUrl: of ? of.m.url : this.mainUrl,
      origin: from,
      sha: of ? of.m.sha : (this.refs.get(from) as string),
      snapshots: this.rand() < 0.3,
      state: 'copying',
      running: 0,
      actors: [],
      create,
      checked: false,
    };
    this.copies.set(m.url, m);
    this.runCopy(m, { create });
    if (this.rand() < 0.2) this.twinCopy(m);
  }

  /**
   * A second attempt of copy `m` while one runs, started a moment later: `--create` again,
   * or a resume (maybe forced).
   */
  private twinCopy(m: CopyModel): void {
    const r = this.rand();
    const delayMs = Math.floor(this.rand() * 400);
    if (m.create && r < 0.25) this.runCopy(m, { create: m.create, twin: true, delayMs });
    else this.runCopy(m, { resume: true, force: r < 0.7, twin: true, delayMs });
  }

  private runCopy(
    m: CopyModel,
    how: {
      create?: CopyCreateOptions;
      resume?: boolean;
      force?: boolean;
      twin?: boolean;
      delayMs?: number;
    },
  ): void {
    const actor = this.actor('copy');
    m.running++;
    m.actors = [...m.actors.filter((a) => a.pending > 0), actor];
    m.checked = false;
    if (how.twin) this.totals.copyTwins++;
    const chunkSize = [4, 16, 64][Math.floor(this.rand() * 3)]! * KiB;
    const concurrency = 1 + Math.floor(this.rand() * 4);
    // Ctrl-C part way: at this fraction of the source.
    const stopAt = this.rand() < 0.25 ? this.rand() : undefined;
    const ac = new AbortController();
    const source = m.sourceUrl === this.mainUrl ? '' : `clone ${this.rel(m.sourceUrl)} `;
    const what = `${how.twin ? `twin (+${how.delayMs ?? 0} ms) ` : how.resume ? 'again ' : ''}${source}at ${m.origin} to ${m.prefix}${how.create ? ' --create' : ''}${m.snapshots ? ' --snapshots' : ''}${how.force ? ' --force' : ''} (${chunkSize / KiB} KiB x${concurrency}${stopAt === undefined ? '' : `, stop at ${Math.round(stopAt * 100)}%`})`;
    this.launch(
      `copy ${what}`,
      actor,
      async () => {
        try {
          if (how.delayMs) await this.sim.wait(actor, how.delayMs);
          const r = await copyVolume(this.view(actor, m.sourceUrl), this.view(actor, m.url), {
            at: { checkpoint: m.origin },
            ...(how.create ? { create: how.create } : {}),
            ...(m.snapshots ? { snapshots: true } : {}),
            ...(how.force ? { force: true } : {}),
            chunkSize,
            concurrency,
            ...(stopAt === undefined
              ? {}
              : {
                  signal: ac.signal,
                  onProgress: (done: number, total: number) => {
                    if (done >= stopAt * total) ac.abort();
                  },
                }),
            open: {
              openStore: this.opener(actor),
              holder: actor.name,
              logger: this.logger(actor),
              leaseTtlMs: this.leaseMs,
              flushIntervalMs: 0,
              headUpdateDelayMs: 0,
            },
          });
          m.state = 'ack';
          this.totals.copies++;
          if (how.resume) this.totals.copiesResumed++;
          if (how.twin) this.totals.copyTwinsAcked++;
          return `checkpoint ${r.checkpoint.checkpoint}${m.snapshots ? `, snapshots ${r.snapshots.map((x) => x.name).join(',') || 'none'}` : ''}`;
        } catch (e) {
          // (An attempt of a copy another one finished leaves it acknowledged: what it may
          // still have written is the same data, which (k) checks.)
          if (m.state !== 'ack') m.state = 'partial';
          throw e;
        }
      },
      () => {
        m.running--;
      },
    );
  }

  /**
   * `file export-diff` of the volume between a copy's checkpoint and a later retained one,
   * applied with `file import-diff` to that copy (the first diff of its chain with
   * --assume-base), while the writer, compactions and restores go on. The export may fail
   * (a checkpoint dropped meanwhile) but never as damage; an applied diff leaves the copy
   * reading exactly the later checkpoint, a failed import either checkpoint (invariant k).
   * After a failed import the next diff op on that copy runs the same diff again, which must
   * finish it whatever part of it landed (k).
   */
  private async diffOp(): Promise<void> {
    const ready = [...this.copies.values()].filter(
      (m) =>
        m.state === 'ack' &&
        m.running === 0 &&
        m.sourceUrl === this.mainUrl &&
        (m.maybe === undefined || m.retry !== undefined),
    );
    // Mostly the rerun of a failed import, when there is one (no draw when there is none, so
    // that seeds without one replay as before).
    const again = ready.filter((c) => c.retry !== undefined);
    const m = this.pickFrom(again.length > 0 && this.rand() < 0.7 ? again : ready);
    if (!m) return;
    const from = m.at ?? m.origin;
    const picked = this.pickFrom((await this.knownRetained()).filter((c) => c > from));
    const retry = m.retry;
    const to = retry?.to ?? picked;
    if (to === undefined) return;
    const want = this.refs.get(to) as string;
    const actor = this.actor('diff');
    m.running++;
    m.actors = [...m.actors.filter((a) => a.pending > 0), actor];
    m.checked = false;
    const first = m.at === undefined;
    const landed = (): void => {
      m.at = to;
      m.sha = want;
      delete m.maybe;
      delete m.torn;
      delete m.retry;
    };
    this.launch(
      `export-diff ${from}..${to} | import-diff ${m.prefix}${first ? ' --assume-base' : ''}${retry ? ' (again)' : ''}`,
      actor,
      async () => {
        const chunks: Buffer[] = [];
        await exportDiff(
          this.view(actor, this.mainUrl),
          { from: { checkpoint: from }, to: { checkpoint: to } },
          (c) => {
            chunks.push(Buffer.from(c));
            return Promise.resolve();
          },
        );
        try {
          const r = await importDiff(
            // In memory, not spooled: a temporary file's real I/O would finish at real
            // moments, and the run would no longer replay from its seed.
            { bytes: Buffer.concat(chunks), name: 'chaos diff' },
            this.view(actor, m.url),
            {
              ...(first ? { assumeBase: true } : {}),
              holder: actor.name,
              logger: this.logger(actor),
              openStore: this.opener(actor),
              leaseTtlMs: this.leaseMs,
            },
          );
          landed();
          this.totals.diffs++;
          if (retry) this.totals.diffRetries++;
          if (r.base.kind === 'resumed') this.totals.diffsResumed++;
          return `checkpoint ${r.checkpoint} (${r.base.kind})`;
        } catch (e) {
          if (retry && isHyperError(e, 'PRECONDITION_FAILED')) {
            // The failed import had landed whole, its marker too.
            if (/already holds checkpoint \d+ .*where this diff ends/.test(e.message)) {
              landed();
              this.totals.diffRetries++;
              return 'applied before';
            }
            this.violation(
              `(k) import-diff ${from}..${to} into ${m.prefix}, run again after a failed import, was refused: ${e.message}`,
            );
          }
          // Its commit may have landed before the failure: the copy reads one or the other.
          m.maybe = want;
          m.retry = { to };
          if (e instanceof Error && /may hold part of the diff/.test(e.message)) m.torn = true;
          throw e;
        }
      },
      () => {
        m.running--;
      },
    );
  }

  /**
   * `file check` beside everything else: whatever the writer, compactions and restores do
   * meanwhile, it may fail (a store error) but never report damage that is not there (l).
   */
  private checkOp(): void {
    const actor = this.actor('check');
    const deep = this.rand() < 0.5;
    this.launch(`file check${deep ? ' --deep' : ''}`, actor, async () => {
      const r = await checkVolume(this.view(actor, this.mainUrl), {
        deep,
        openStore: this.opener(actor),
      });
      const damage = r.problems.filter(
        (p) => (p.kind === 'missing' || p.kind === 'corrupt') && !this.isDamaged(p.key),
      );
      if (damage.length > 0)
        this.violation(
          `(l) file check${deep ? ' --deep' : ''} (checkpoint ${r.checkpoint}) reported damage that is not there: ${damage
            .slice(0, 3)
            .map((p) => `${p.kind} ${p.key}: ${p.message}`)
            .join(' | ')}`,
        );
      return `checkpoint ${r.checkpoint}, ${r.checkpointsChecked} checkpoints, ${r.problems.length} problem(s)`;
    });
  }

  /**
   * (k) A copy's target, once its attempt settled: a valid volume whatever happened (every
   * object it names present and intact); an acknowledged one reads what the source's
   * checkpoint read, and each snapshot it copied reads what that snapshot reads in the source.
   */
  private async checkCopy(m: CopyModel): Promise<void> {
    if (m.running > 0 || m.checked) return;
    const settled = m.actors.every((a) => a.pending === 0);
    const craw = this.raw(m.url);
    try {
      await readHead(craw);
    } catch (e) {
      // (A copy that failed before its target was created.)
      if (m.state === 'ack')
        this.violation(`(k) copy ${m.prefix} (acknowledged) is gone: ${errText(e)}`);
      m.checked = settled;
      return;
    }
    const cc = await this.content(m.url);
    if (!cc.ok) this.violation(`(k) copy ${m.prefix} (${m.state}) is unreadable: ${cc.error}`);
    else if (m.state === 'ack' && !m.torn && cc.sha !== m.sha && cc.sha !== m.maybe)
      this.violation(
        `(k) copy ${m.prefix} reads ${cc.sha}, but checkpoint ${m.at ?? m.origin} of ${this.rel(m.sourceUrl) || 'the volume'} it ${m.at === undefined ? 'copied' : 'was brought to by diffs'} reads ${m.sha}${m.maybe ? ` (or ${m.maybe}, a diff in doubt)` : ''}`,
      );
    if (m.state === 'ack' && m.snapshots) {
      for (const [key, rec] of await this.recordsOf(m.url)) {
        const name = parseSnapshotKey(key);
        if (name === undefined) continue;
        if (typeof rec !== 'number') {
          this.violation(`(k) copy ${m.prefix}: copied snapshot ${name} is unreadable: ${rec}`);
          continue;
        }
        const source = this.snaps.get(name)?.checkpoint;
        const want = source === undefined ? undefined : this.refs.get(source);
        if (want === undefined) continue;
        const got = await this.content(m.url, rec);
        if (!got.ok)
          this.violation(`(k) copy ${m.prefix}: snapshot ${name} is unreadable: ${got.error}`);
        else if (got.sha !== want)
          this.violation(
            `(k) copy ${m.prefix}: snapshot ${name} (checkpoint ${rec}) reads ${got.sha}, in the source (checkpoint ${source}) ${want}`,
          );
      }
    }
    const chk = await checkVolume(craw, { deep: true, openStore: this.rawOpen });
    for (const p of chk.problems)
      if (p.kind === 'missing' || p.kind === 'corrupt')
        this.violation(`(k) copy ${m.prefix} (${m.state}): ${p.kind} ${p.key}: ${p.message}`);
    m.checked = settled;
  }

  private async cloneAdminOp(kind: 'cloneDelete' | 'flatten' | 'cloneCompact'): Promise<void> {
    const c = await this.existingClone();
    if (!c) return;
    const { m } = c;
    // A flattened clone: flatten again only to finish one that stopped after its commit.
    if (kind === 'flatten' && !c.head.clone && !(await unfinishedFlatten(this.raw(m.url), c.head)))
      return;
    const actor = this.actor(kind);
    const store = this.view(actor, m.url);
    const force = this.rand() < 0.5;
    m.busy++;
    const done = (): void => {
      m.busy--;
    };
    if (kind === 'cloneDelete') {
      if (m.busy > 1) {
        m.busy--;
        return;
      }
      const prev = m.state;
      m.state = 'deleting';
      // --force (past the lease of a flatten or compaction running on it) only while no clone
      // of it may exist: a forced delete breaks those by design. Without it, a clone of it
      // (even one being made right now) must stop the delete.
      const children = [...this.clones.values()].some(
        (c) => c.parentUrl === m.url && c.state !== 'deleted',
      );
      this.launch(
        `delete clone ${m.prefix}${children ? '' : ' --force'}`,
        actor,
        async () => {
          try {
            const r = await deleteVolume(store, {
              force: !children,
              openStore: this.opener(actor),
            });
            m.state = 'deleted';
            if (r.pin?.released) m.pinReleased = r.pin.key;
            return r.pin ? `pin ${r.pin.released ? 'released' : 'left'}` : '';
          } catch (e) {
            m.state = prev === 'ack' ? 'failed' : prev;
            throw e;
          }
        },
        done,
      );
    } else if (kind === 'flatten') {
      this.launch(
        `flatten ${m.prefix}${force ? ' --force' : ''}`,
        actor,
        async () => {
          const r = await flattenVolume(store, {
            holder: actor.name,
            force,
            openStore: this.opener(actor),
          });
          return `checkpoint ${r.checkpoint}, ${r.blocksCopied} blocks copied${r.resumed ? ', resumed an unfinished flatten' : ''}`;
        },
        done,
      );
    } else {
      const graceMs = this.rand() < 0.6 ? 0 : undefined;
      this.launch(
        `compact clone ${m.prefix} keep-last 1 grace ${graceMs ?? 'default'}${force ? ' --force' : ''}`,
        actor,
        async () => {
          const r = await compactVolume(store, {
            keepLast: 1,
            ...(graceMs === undefined ? {} : { graceMs }),
            force,
            holder: actor.name,
            openStore: this.opener(actor),
            logger: this.logger(actor),
          });
          return `checkpoint ${r.checkpoint}, ${r.segmentsDeleted} segments deleted`;
        },
        done,
      );
    }
  }

  /** `makeRoom`: one that moves blocks (min-live above 0) and takes the lease if it must. */
  private compactOp(makeRoom = false): void {
    const actor = this.actor('compact');
    const o: CompactOptions = {
      holder: actor.name,
      openStore: this.opener(actor),
      logger: this.logger(actor),
    };
    drawCompaction(o, this.rand, !this.backend.virtualTime);
    o.force = this.rand() < 0.7;
    if (makeRoom) {
      o.minLive = Math.max(o.minLive ?? 0, 0.5);
      o.force = true;
    }
    if (o.force) this.totals.takeovers++;
    this.launchCompaction(`compact ${describeCompaction(o)}`, actor, o);
  }

  /**
   * The writer compacts its own volume while it goes on writing (CompactOptions.volume): no
   * lease changes hands, and a block it copies must never land over a newer write of its own.
   */
  private onlineCompactOp(): Promise<void> | undefined {
    const o: CompactOptions = {};
    drawCompaction(o, this.extra, !this.backend.virtualTime);
    if (!this.backend.virtualTime && this.extra() < 0.7) {
      // On a real store a seed's 40 steps leave little history to drop and few blocks written
      // twice: now and then every other chunk of the last stream is written again and only
      // the newest checkpoint kept, so the stream's segments fall under min-live and their
      // blocks are copied beside the writer's own writes, under RGW's faults.
      o.keepLast = 1;
      delete o.keepWithinMs;
      o.graceMs = 0;
      o.minLive = Math.max(o.minLive ?? 0, 0.6);
      const s = this.lastStream;
      if (s) return this.writeHalf(s).then(() => this.launchOnline(o));
    }
    // (In virtual time it starts in this step, as it always did: seeds replay as found.)
    this.launchOnline(o);
    return undefined;
  }

  /** Every other 64 KiB chunk of [s.off, s.end) written again, while there is a writer. */
  private async writeHalf(s: { off: number; end: number }): Promise<void> {
    const chunk = 64 * KiB;
    for (let off = s.off; off < s.end && this.writer; off += 2 * chunk)
      await this.writerOp('write', { off, len: Math.min(chunk, s.end - off) });
  }

  private launchOnline(o: CompactOptions): void {
    const w = this.writer;
    if (!w) return;
    o.volume = w.vol;
    o.openStore = this.opener(w.actor);
    o.logger = this.logger(w.actor);
    this.totals.onlineCompactions++;
    this.launchCompaction(`compact online ${describeCompaction(o)}`, w.actor, o);
  }

  private launchCompaction(what: string, actor: Actor, o: CompactOptions): void {
    this.launch(what, actor, async () => {
      let r: Awaited<ReturnType<typeof compactVolume>>;
      this.compactions++;
      try {
        r = await compactVolume(this.view(actor, this.mainUrl), o);
      } catch (e) {
        // Failed or killed, perhaps after its history commit.
        this.recordsOwed = true;
        throw e;
      } finally {
        this.compactions--;
      }
      this.recordsOwed = false;
      if (o.volume) this.totals.onlineBlocksMoved += r.blocksRewritten;
      return `checkpoint ${r.checkpoint}, ${r.checkpointsDropped} dropped, ${r.segmentsDeleted} deleted, ${r.segmentsRewritten} rewritten${o.volume ? ` (${r.blocksRewritten} blocks)` : ''}${r.rewriteSkipped ? ' (no room to move blocks)' : ''}`;
    });
  }

  private async restoreOp(): Promise<void> {
    const target = this.pickFrom(await this.knownRetained());
    if (target === undefined) return;
    const sha = this.refs.get(target) as string;
    const actor = this.actor('restore');
    this.totals.takeovers++;
    const c = this.contribute(sha, actor, `restore ${target}`);
    this.launch(
      `restore ${target} --force`,
      actor,
      async () => {
        const r = await restoreVolume(
          this.view(actor, this.mainUrl),
          { checkpoint: target },
          // (Its store opener: the open replays the writer's WAL, which it must find.)
          {
            force: true,
            holder: actor.name,
            openStore: this.opener(actor),
            logger: this.logger(actor),
          },
        );
        if (r.checkpoint !== undefined) this.learn(r.checkpoint, sha, `restore ${target}`);
        return `checkpoint ${r.checkpoint} content ${sha}`;
      },
      () => {
        c.active = false;
      },
    );
  }

  /** A second writer forces its way in; the old one must then be unable to commit. */
  private async takeoverOp(): Promise<void> {
    const old = this.writer as Writer;
    this.writer = undefined;
    // A lease that lapsed (a renewal stalled, the store was full) is free to take without
    // --force, like any expired lease: the old writer must then find itself fenced.
    const lease = this.o.classic
      ? undefined
      : await readLease(this.raw(this.mainUrl)).catch(() => undefined);
    const lapsed = lease !== undefined && !lease.live;
    if (lapsed) this.note(`${old.actor.name}'s lease has lapsed`);
    await this.openWriter(!lapsed || this.extra() < 0.3);
    const fresh = this.writer as Writer | undefined;
    // Probe the old writer: a change and a flush.
    const { head } = await readHead(this.raw(this.mainUrl));
    const takenOver = head.epoch > old.epoch;
    const c = this.contribute(digest(old.model), old.actor, `${old.actor.name} probe`);
    let c2: Contribution | undefined;
    // The probe: a write then a flush, or (now and then) a grow, which commits at once: a
    // server asked to grow its export just as another host took the volume over.
    const size = old.model.length;
    const grow =
      this.weights.some(([n]) => n === 'resize') && size < MAX_SIZE && this.extra() < 0.3;
    const probed = Buffer.alloc(grow ? Math.min(MAX_SIZE, size + 64 * KiB) : size);
    old.model.copy(probed);
    if (!grow) probed.fill(0xee, 0, BS);
    if (this.walAck && !fresh) {
      // With a WAL the takeover is final once the taker claims the log's next record (a
      // writer that opened has): until then a change the old writer logs is replayed by
      // whoever takes the volume over (an admin operation), like any other of its changes.
      const sha = digest(probed);
      this.chained.push(sha);
      this.allow(sha);
      // (If the takeover failed, the probe is this writer's newest change, and it closes.)
      this.timeline.push({ seq: ++this.nTimeline, sha });
    }
    try {
      if (grow) {
        // (The size changes in memory before the commit is tried: the content is allowed first.)
        c2 = this.contribute(digest(probed), old.actor, `${old.actor.name} probe`);
        await this.sim.watch(old.vol.resize(probed.length), `${old.actor.name} probe grow`);
        old.model = probed;
        this.note(`${old.actor.name} probe grow to ${probed.length} -> ok`);
      } else {
        await this.sim.watch(old.vol.write(0, Buffer.alloc(BS, 0xee)), `${old.actor.name} probe`);
        Buffer.alloc(BS, 0xee).copy(old.model, 0);
        c2 = this.contribute(digest(old.model), old.actor, `${old.actor.name} probe`);
        await this.sim.watch(old.vol.flush(), `${old.actor.name} probe flush`);
        this.note(`${old.actor.name} probe flush -> ok`);
      }
      if (takenOver && digest(old.model) !== old.committed)
        this.violation(
          `${old.actor.name} committed after ${fresh?.actor.name ?? 'a new writer'} took the volume over (head epoch ${head.epoch} > ${old.epoch})`,
        );
    } catch (e) {
      this.note(`${old.actor.name} probe -> failed ${errText(e)}`);
      if (unexpected(e)) this.violation(`${old.actor.name} probe: unexpected ${errText(e)}`);
    }
    // (If the takeover did not land, closing the old writer commits its probe.)
    await this.sim.watch(old.vol.close(), `${old.actor.name} close`).catch(() => undefined);
    c.active = false;
    if (c2) c2.active = false;
    if (!fresh) return;
    this.writer = fresh;
  }

  private killAdminOp(): void {
    const pick = this.pickFrom([...this.inflight.values()].filter((i) => !i.actor.dead));
    if (!pick) return;
    this.totals.kills++;
    pick.actor.dead = true;
    this.note(`${pick.name} killed`);
  }

  /** Scenario 8: deleting a volume that clones read from must be refused. */
  private async deleteParentOp(): Promise<void> {
    if ([...this.clones.values()].some((m) => m.busy > 0)) return;
    const c = await this.existingClone();
    if (!c || !c.head.clone) return;
    if (!(await this.raw(this.mainUrl).head(pinKey(c.head.uuid)))) return;
    // The writer steps aside (a clean close releases the lease).
    await this.dropWriter('making way for delete');
    const actor = this.actor('delete');
    this.totals.operations++;
    this.note(`${actor.name} delete volume (clone ${c.m.prefix} reads from it)`);
    try {
      await this.sim.watch(deleteVolume(this.view(actor, this.mainUrl)), 'delete volume');
      this.violation(
        `deleteVolume deleted the volume although clone ${c.m.prefix} reads from it (pin ${pinKey(c.head.uuid)})`,
      );
      this.stopped = true;
    } catch (e) {
      this.failed(`${actor.name} delete volume`, e);
    }
  }

  /** Bit rot: a clone's pin record becomes unreadable. Compaction must not take it as absent. */
  private async damagePinOp(): Promise<void> {
    const c = await this.existingClone();
    if (!c || !c.head.clone || c.m.pinDamaged) return;
    const key = pinKey(c.head.uuid);
    const raw = this.raw(this.mainUrl);
    if (!(await raw.head(key))) return;
    await raw.put(key, Buffer.from('rotten pin record'));
    c.m.pinDamaged = true;
    this.damaged.add(key);
    this.world.mutations++;
    this.note(`damaged ${key} (pin of clone ${c.m.prefix} at checkpoint ${c.m.origin})`);
  }

  /**
   * Bit rot or a lost object in the write-ahead log: a record past the head is corrupted (a
   * byte flipped, cut short, or replaced), or deleted when a later record exists (a gap; the
   * newest record deleted would leave no trace, and is not done). Until `file repair --apply`
   * cuts the log there, every opener that would replay it must refuse, naming that record,
   * and never start from a content without the writes logged in it (i); the live writer,
   * which never reads its log back, goes on, and its next commit covers the record.
   */
  private async damageWalOp(): Promise<void> {
    if (!this.walAck) return;
    await this.atomically(async () => {
      const { head } = await readHead(this.raw(this.mainUrl));
      const wal = this.raw(this.walUrl);
      const past = (await listWal(wal, head.uuid)).filter((q) => q > (head.walSeq ?? 0));
      const seq = this.pickFrom(past);
      if (seq === undefined) return;
      const key = walKey(head.uuid, seq);
      const how = seq < (past.at(-1) as number) && this.rand() < 0.4 ? 'deleted' : 'corrupted';
      let what: string;
      if (how === 'deleted') {
        await wal.delete([key]);
        what = 'deleted';
      } else {
        const body = Buffer.from((await wal.get(key)).body);
        const kind = Math.floor(this.rand() * 3);
        const at = Math.floor(this.rand() * body.length);
        if (kind === 0) {
          body[at] = (body[at] as number) ^ 0x20;
          what = `byte ${at} of ${body.length} flipped`;
        } else if (kind === 1) {
          what = `cut to ${at} of ${body.length} bytes`;
        } else {
          what = 'replaced';
        }
        await wal.put(
          key,
          kind === 1 ? body.subarray(0, at) : kind === 2 ? Buffer.from('not a WAL record') : body,
        );
      }
      this.damaged.add(`wal/${key}`);
      this.walDamage.set(seq, how);
      this.totals.walDamages++;
      this.world.mutations++;
      this.note(
        `damaged WAL record ${seq} (${what}; head covers up to ${head.walSeq ?? 0}, log holds ${past[0]}..${past.at(-1)})`,
      );
    });
  }

  /**
   * `file repair --apply` (with --force beside a live writer, as an operator would, or when
   * the lease is held): it cuts the log at the first record that cannot be replayed. Where
   * nothing past the head was damaged it must find nothing to cut (a record a live writer
   * trimmed meanwhile is no damage); where it cut, the writes in the records it dropped are
   * lost by the operator's choice, so no floor (i) holds across it.
   */
  private repairWalOp(): void {
    if (!this.walAck) return;
    const actor = this.actor('repair');
    const force = this.writer !== undefined || this.rand() < 0.5;
    const damagesBefore = this.totals.walDamages;
    this.walRepairs++;
    this.walFloor = undefined;
    this.launch(
      `file repair --apply${force ? ' --force' : ''}`,
      actor,
      async () => {
        // (The head only moves forward: records it covers now it covers at the repair's look.)
        const { head } = await readHead(this.raw(this.mainUrl));
        const clean = [...this.walDamage.keys()].every((q) => q <= (head.walSeq ?? 0));
        const r = await repairHead(this.view(actor, this.mainUrl), {
          apply: true,
          force,
          openStore: this.opener(actor),
        });
        const w = r.wal;
        if (w?.bad && w.applied) this.totals.walCuts++;
        if (w?.bad && clean && this.totals.walDamages === damagesBefore)
          this.violation(
            `(o) file repair cut the log at ${w.bad.key} (${w.bad.message}), though no record past the head (${head.walSeq ?? 0}) was damaged`,
          );
        if (w?.bad && !this.isDamaged(w.bad.key))
          this.violation(
            `(o) file repair found ${w.bad.key} bad (${w.bad.message}), which the harness did not damage`,
          );
        return w === null
          ? 'no WAL'
          : w.bad
            ? `cut at ${w.bad.seq} (${w.bad.kind}): ${w.dropped.length} record(s) dropped, ${w.replayable} replayable`
            : `nothing to cut (${w.replayable} replayable)`;
      },
      () => {
        this.walRepairs--;
        this.walFloor = undefined;
      },
    );
  }

  /**
   * `snapshot unpin` naming a clone by URL: often one being created right now (it has no head
   * yet), else any. It may release only the pins of clones that do not exist; check (c)
   * finds a clone that exists without its pin.
   */
  private async unpinOp(): Promise<void> {
    const all = [...this.clones.values()];
    const creating = all.filter((m) => m.state === 'creating');
    const m = this.pickFrom(creating.length > 0 && this.rand() < 0.7 ? creating : all);
    if (!m) return;
    const actor = this.actor('unpin');
    const before = m.state === 'creating' ? await this.pinKeys(m.parentUrl) : undefined;
    this.launch(`unpin ${m.prefix}`, actor, async () => {
      // A clone being created: start once its pin is there (and its head likely is not).
      for (let i = 0; before && m.state === 'creating' && i < 50; i++) {
        if ((await this.pinKeys(m.parentUrl)).some((k) => !before.includes(k))) break;
        await this.sim.wait(actor, 1);
      }
      const r = await unpinClone(this.view(actor, m.parentUrl), m.url, {
        openStore: this.opener(actor),
      });
      return `${r.released.length} released, ${r.kept.length} kept`;
    });
  }

  /** The snapshot and pin records of a volume: key → checkpoint, or why it is unreadable. */
  private async recordsOf(url: string): Promise<Map<string, number | string>> {
    const raw = this.raw(url);
    const records = new Map<string, number | string>();
    for (const prefix of [SNAPSHOT_PREFIX, PIN_PREFIX])
      for await (const p of raw.list(prefix))
        for (const o of p.objects) {
          try {
            records.set(o.key, decodeSnapshot((await raw.get(o.key)).body).checkpoint);
          } catch (e) {
            records.set(o.key, errText(e));
          }
        }
    return records;
  }

  private async pinKeys(url: string): Promise<string[]> {
    const keys: string[] = [];
    for await (const p of this.raw(url).list(PIN_PREFIX)) keys.push(...p.objects.map((o) => o.key));
    return keys;
  }

  private async settle(): Promise<void> {
    const all = [...this.inflight.values()].map((i) => i.promise);
    if (all.length === 0) return;
    this.note(`settle ${all.length} operation(s)`);
    await this.sim.watch(Promise.all(all), 'settle');
  }

  private draw(): string {
    const total = this.weights.reduce((s, [, w]) => s + w, 0);
    let r = this.rand() * total;
    for (const [n, w] of this.weights) {
      r -= w;
      if (r < 0) return n;
    }
    return 'write';
  }

  /** The store fills up now and then, for a few steps (an exhausted quota, a full disk). */
  private storeFullStep(): void {
    if (this.world.full !== undefined) {
      if (this.step < this.fullUntil) return;
      this.world.full = undefined;
      this.note('the store has room again');
    } else if (this.fullRate > 0 && this.extra() < this.fullRate) {
      const n = 1 + Math.floor(this.extra() * 12);
      this.fullUntil = this.step + n;
      // Full, or nearly: room for records and small segments, not for moving blocks. At most
      // ten minutes (virtual, or real on S3), even if a step never ends meanwhile.
      const bytes = this.extra() < 0.5 ? 0 : 4 * KiB;
      this.world.full = { bytes, untilMs: Date.now() + 10 * 60_000 };
      this.note(
        `the store is full for ${n} step(s): every PUT${bytes ? ` over ${bytes / KiB} KiB` : ''} fails with NO_SPACE`,
      );
      // What an operator does about a full bucket: compact (it must make room, or fail
      // cleanly, beside the writer that keeps what it was acknowledged).
      if (this.extra() < 0.5 && this.inflight.size < 4) this.compactOp(true);
    }
  }

  private async doStep(): Promise<void> {
    this.storeFullStep();
    // Think time: other actors progress meanwhile.
    await this.sim.wait(this.driver, this.rand() * 30);
    const op = this.draw();
    const writerOps = [
      'write',
      'zero',
      'trim',
      'stream',
      'read',
      'flush',
      'writerRestore',
      'takeover',
      'kill',
      'resize',
    ];
    if (!this.writer && writerOps.includes(op)) {
      await this.openWriter(this.rand() < 0.4);
      return;
    }
    const admin = this.inflight.size;
    switch (op) {
      case 'write':
      case 'zero':
      case 'trim':
        return this.writerOp(op);
      case 'stream':
        return this.streamOp();
      case 'read':
        return this.readOp();
      case 'flush':
        await this.flushOp();
        return;
      case 'writerRestore':
        return this.writerRestoreOp();
      case 'resize':
        return this.resizeOp();
      case 'takeover':
        return this.takeoverOp();
      case 'kill': {
        const w = this.writer as Writer;
        this.writer = undefined;
        this.kill(w);
        return;
      }
      case 'killAdmin':
        return this.killAdminOp();
      case 'time':
        if (this.sim.virtual) {
          const ms = this.rand() < 0.5 ? 40 * 60_000 : 11 * 60_000;
          this.sim.advance(ms);
          this.note(`time passes: ${ms / 60_000} min`);
        }
        return;
      case 'settle':
        return this.settle();
      case 'deleteParent':
        return this.deleteParentOp();
      case 'damagePin':
        return this.damagePinOp();
      case 'damageWal':
        return this.damageWalOp();
      case 'repairWal':
        return this.repairWalOp();
      case 'unpin':
        return this.unpinOp();
    }
    if (admin >= 4) return;
    switch (op) {
      case 'snapshot':
        return this.snapshotOp();
      case 'snapshotDelete':
        return this.snapshotDeleteOp();
      case 'clone':
        return this.cloneOp();
      case 'cloneDelete':
      case 'flatten':
      case 'cloneCompact':
        return this.cloneAdminOp(op);
      case 'compact':
        // Now and then by the writer itself, online, beside its own writes.
        if (!this.o.classic && this.writer && this.extra() < 0.35) {
          const rewriting = this.onlineCompactOp();
          if (rewriting) await rewriting;
          return;
        }
        this.compactOp();
        // Now and then a `file check` or a copy right beside it (what it deletes, they may be
        // reading).
        if (!this.o.classic) {
          const beside = this.extra();
          if (beside < 0.3) this.checkOp();
          else if (beside < 0.5 && admin < 3) await this.copyOp();
        }
        return;
      case 'restore':
        return this.restoreOp();
      case 'copy':
        return this.copyOp();
      case 'check':
        return this.checkOp();
      case 'diff':
        return this.diffOp();
    }
  }

  private readonly driver: Actor = { name: 'driver', faults: false, dead: false, pending: 0 };

  // -------------------------------------------------------------- invariants

  private async check(force = false): Promise<void> {
    if (
      !force &&
      this.checkedAt.mutations === this.world.mutations &&
      this.checkedAt.model === this.modelVersion
    )
      return;
    await this.atomically(async () => {
      this.totals.checks++;
      await this.checkNow();
      this.checkedAt = { mutations: this.world.mutations, model: this.modelVersion };
    });
  }

  private async checkNow(): Promise<void> {
    await this.world.resolveDoubts(async (url, key) => {
      try {
        return (await this.raw(url).get(key)).body;
      } catch (e) {
        if (isHyperError(e, 'OBJECT_NOT_FOUND')) return undefined;
        throw e;
      }
    });
    const raw = this.raw(this.mainUrl);
    let head: HeadRecord;
    try {
      head = (await readHead(raw)).head;
    } catch (e) {
      this.violation(`the volume's head is unreadable: ${errText(e)}`);
      this.stopped = true;
      return;
    }
    // (e)
    if (head.epoch < this.maxEpoch)
      this.violation(`(e) head epoch went back from ${this.maxEpoch} to ${head.epoch}`);
    this.maxEpoch = Math.max(this.maxEpoch, head.epoch);

    // (a) the head reads a possible content.
    const cur = await this.content(this.mainUrl);
    if (!cur.ok)
      this.violation(`(a) the head (checkpoint ${head.checkpoint}) is unreadable: ${cur.error}`);
    else {
      if (!this.possible(cur.sha)) await this.dumpChain();
      if (!this.possible(cur.sha))
        this.violation(
          `(a) the head (checkpoint ${head.checkpoint}) reads ${cur.sha}; possible contents: ${[...this.allowed, ...this.chained].join(', ')}`,
        );
      this.seen(cur.sha);
      this.learn(head.checkpoint, cur.sha, 'head');
      const live = this.contributions.filter(
        (c) => c.active || (c.actor.dead && c.actor.pending > 0),
      );
      this.contributions.splice(0, this.contributions.length, ...live);
      this.allowed = new Set([cur.sha, ...live.map((c) => c.sha)]);
    }

    // Records in the volume: snapshots and pins.
    const records = await this.recordsOf(this.mainUrl);
    const segs = new Set<number>();
    for await (const p of raw.list(SEGMENT_PREFIX))
      for (const o of p.objects) {
        const id = parseSegmentKey(o.key);
        if (id !== undefined) segs.add(id);
      }
    // A committed checkpoint's segment never changes: its embedded head must stay the one
    // first seen in the head object (a deleted id written again by a stale writer would not).
    const stamp = (h: HeadRecord): string => `${h.checkpointMs}/${digest(h.root)}`;
    if (!this.stamps.has(head.checkpoint)) this.stamps.set(head.checkpoint, stamp(head));
    for (const [c, want] of this.stamps) {
      if (!segs.has(c) || !isRetainedCheckpoint(head, c)) continue;
      try {
        const got = stamp(await readCheckpointHead(raw, c));
        if (got !== want)
          this.violation(
            `(d) seg/${c} no longer holds checkpoint ${c} as committed (embedded head ${got}, committed ${want}): the id was written again`,
          );
      } catch (e) {
        this.violation(`(d) the segment of retained checkpoint ${c} is unreadable: ${errText(e)}`);
      }
    }
    /** key → checkpoint the model requires to stay retained and exact. */
    const required = new Map<string, { checkpoint: number; sha?: string; why: string }>();
    for (const [name, s] of this.snaps) {
      if (s.state !== 'ack') continue;
      const key = snapshotKey(name);
      const rec = records.get(key);
      if (rec === undefined) this.violation(`(b) acknowledged snapshot ${name} disappeared`);
      else if (typeof rec === 'string')
        this.violation(`(b) snapshot ${name} is unreadable: ${rec}`);
      else if (rec !== s.checkpoint)
        this.violation(`(b) snapshot ${name} names ${rec}, created at ${s.checkpoint}`);
      else required.set(key, { checkpoint: rec, why: `snapshot ${name}` });
    }

    // (c) clones.
    for (const m of this.clones.values()) {
      // A clone of a clone: its pin is on that clone (whose compaction must keep what it
      // names; the content check below reads it).
      const ofMain = m.parentUrl === this.mainUrl;
      const precords = ofMain ? records : await this.recordsOf(m.parentUrl);
      if (m.pinReleased !== undefined && precords.has(m.pinReleased))
        this.violation(
          `(c) the delete of clone ${m.prefix} released its pin ${m.pinReleased}, which is still there`,
        );
      const craw = this.raw(m.url);
      let ch: HeadRecord;
      try {
        ch = (await readHead(craw)).head;
      } catch (e) {
        if (m.state === 'ack')
          this.violation(`(c) clone ${m.prefix} (acknowledged) is gone: ${errText(e)}`);
        continue;
      }
      if (ch.clone) {
        const pin = pinKey(ch.uuid);
        const rec = precords.get(pin);
        if (ch.clone.chain[0]?.url !== m.parentUrl || ch.clone.checkpoint !== m.origin)
          this.violation(
            `(c) clone ${m.prefix} names parent ${ch.clone.chain[0]?.url} at ${ch.clone.checkpoint}`,
          );
        if (rec === undefined)
          this.violation(
            `(c) clone ${m.prefix} (${m.state}) reads from checkpoint ${m.origin} of its parent but its pin ${pin} is gone`,
          );
        else if (typeof rec === 'string') {
          if (m.pinDamaged && ofMain)
            required.set(pin, {
              checkpoint: m.origin,
              sha: m.sha,
              why: `damaged pin of clone ${m.prefix}`,
            });
          else this.violation(`(c) pin ${pin} is unreadable: ${rec}`);
        } else if (rec !== m.origin)
          this.violation(
            `(c) pin ${pin} names checkpoint ${rec}, the clone starts from ${m.origin}`,
          );
        else if (ofMain)
          required.set(pin, { checkpoint: rec, sha: m.sha, why: `pin of clone ${m.prefix}` });
      }
      // A flatten stopped right after dropping the link: until it is finished, its pin stays
      // (a clone of it made meanwhile may read the parent through it).
      else if ((await unfinishedFlatten(craw, ch)) && !precords.has(pinKey(ch.uuid)))
        this.violation(
          `(c) clone ${m.prefix} has an unfinished flatten, but its pin ${pinKey(ch.uuid)} is gone`,
        );
      const cc = await this.content(m.url);
      if (!cc.ok) this.violation(`(c) clone ${m.prefix} (${m.state}) is unreadable: ${cc.error}`);
      else if (cc.sha !== m.sha)
        this.violation(
          `(c) clone ${m.prefix} (${m.state}) reads ${cc.sha}, but checkpoint ${m.origin} it was made from reads ${m.sha}`,
        );
      const chk = await checkVolume(craw, { deep: true, openStore: this.rawOpen });
      for (const p of chk.problems)
        if (p.kind === 'missing' || p.kind === 'corrupt')
          this.violation(`(d) clone ${m.prefix} (${m.state}): ${p.kind} ${p.key}: ${p.message}`);
    }

    // (k) copies.
    for (const m of this.copies.values()) await this.checkCopy(m);

    // (b) required checkpoints are retained and exact.
    const verified = new Map<number, string>();
    for (const [key, r] of required) {
      const c = r.checkpoint;
      if (!isRetainedCheckpoint(head, c) || !segs.has(c)) {
        if ((this.recordsOwed || this.compactions > 0) && segs.has(c)) {
          this.note(`checkpoint ${c} named by ${r.why} waits for the next compaction to keep it`);
          continue;
        }
        this.violation(
          `(b) checkpoint ${c} named by ${r.why} (${key}) is no longer retained (floor ${head.history?.floor}, kept ${head.history?.kept.join(',')}, segment ${segs.has(c) ? 'present' : 'gone'})`,
        );
        continue;
      }
      let sha = verified.get(c);
      if (sha === undefined) {
        const got = await this.content(this.mainUrl, c);
        if (!got.ok) {
          this.violation(`(b) checkpoint ${c} named by ${r.why} is unreadable: ${got.error}`);
          continue;
        }
        sha = got.sha;
        verified.set(c, sha);
        this.learn(c, sha, r.why);
      }
      if (r.sha !== undefined && r.sha !== sha)
        this.violation(`(b) checkpoint ${c} named by ${r.why} reads ${sha}, expected ${r.sha}`);
    }

    // (d) the volume itself.
    const chk = await checkVolume(raw, { deep: true, openStore: this.rawOpen });
    for (const p of chk.problems) {
      if (p.kind === 'corrupt' && this.isDamaged(p.key)) continue;
      // A WAL record the harness deleted is a gap: missing.
      if (p.kind === 'missing' && /\/wal\//.test(p.key) && this.isDamaged(p.key)) continue;
      if (p.kind === 'missing' || p.kind === 'corrupt')
        this.violation(`(d) ${p.kind} ${p.key}: ${p.message}`);
      else if (
        p.kind === 'dangling' &&
        required.has(p.key) &&
        !this.recordsOwed &&
        this.compactions === 0
      )
        this.violation(`(d) dangling ${p.key}: ${p.message}`);
    }
  }

  /**
   * Invariant (h): once the store answers again (no faults, room), a writer that nobody took
   * the volume from commits what it holds: a full store, a lapsed lease or failed segment
   * PUTs before cost it nothing for good.
   */
  private async stillOwner(w: Writer): Promise<void> {
    const raw = this.raw(this.mainUrl);
    const { head } = await readHead(raw);
    const lease = await readLease(raw).catch(() => undefined);
    if (head.epoch === w.epoch && lease?.lease.holder === w.actor.name && !w.actor.dead)
      this.violation(
        `(h) ${w.actor.name} could not commit once the store answered again, although it still holds the volume (epoch ${w.epoch})`,
      );
  }

  /**
   * Invariant (o), at the end of a run that damaged its WAL: `file repair --apply` (the store
   * answering) leaves a log the next writer replays, and the volume opens for writing again
   * (--force: a killed writer's lease may still be live), reading a content some commit or
   * logged change produced.
   */
  private async cutAndReopen(): Promise<void> {
    const actor = this.actor('repair', false);
    this.walFloor = undefined;
    try {
      const r = await this.sim.watch(
        repairHead(this.view(actor, this.mainUrl), {
          apply: true,
          force: true,
          openStore: this.opener(actor),
        }),
        'final repair',
      );
      const w = r.wal;
      if (w?.bad) this.totals.walCuts++;
      this.note(
        `${actor.name} final file repair --apply --force -> ${w?.bad ? `cut at ${w.bad.seq} (${w.bad.kind}), ${w.dropped.length} dropped` : 'nothing to cut'}`,
      );
      const again = await repairHead(this.raw(this.mainUrl), { openStore: this.rawOpen });
      if (again.wal?.bad)
        this.violation(
          `(o) after file repair --apply the log still breaks at ${again.wal.bad.key}`,
        );
    } catch (e) {
      this.violation(`(o) the final file repair failed with the store answering: ${errText(e)}`);
      return;
    }
    await this.openWriter(true);
    const w = this.writer as Writer | undefined;
    if (!w) {
      this.violation('(o) after file repair --apply the volume does not open for writing');
      return;
    }
    await this.dropWriter('end of run, after the repair');
    await this.settle();
  }

  // -------------------------------------------------------------- the run

  async run(): Promise<ChaosResult> {
    const steps = this.o.steps ?? 120 + Math.floor(this.rand() * 140);
    this.retries = this.rand() < 0.5 ? 2 + Math.floor(this.rand() * 3) : 0;
    this.note(
      `${steps} steps, ${this.retries ? `${this.retries} attempts per request` : 'no retries'}`,
    );
    const setup = this.actor('setup', false);
    // Every fourth seed runs on a compressed, encrypted volume (packed, sealed blocks and
    // sealed index nodes under the same concurrency), every other one of those deduplicating
    // too; and another fourth on a deduplicating lz4 volume, written with few distinct
    // contents so that blocks repeat (the content index under takeovers, failed PUTs and
    // compaction).
    const codecs = this.o.seed % 4 === 3;
    this.dedup = this.o.seed % 4 === 1 || this.o.seed % 8 === 7;
    if (codecs) this.note('zstd + xchacha20-poly1305 volume');
    if (this.dedup) this.note('deduplicating volume');
    this.backend.pauseFaults?.(true);
    try {
      await Volume.create(this.view(setup, this.mainUrl), {
        size: VOLUME_SIZE,
        dataBlockSize: BS,
        segmentSize: 1 * MiB,
        ...(codecs
          ? { compression: 'zstd', encryption: 'xchacha20-poly1305', key: Buffer.alloc(32, 0x6b) }
          : {}),
        ...(this.dedup ? { dedup: true, ...(codecs ? {} : { compression: 'lz4' }) } : {}),
      });
    } finally {
      this.backend.pauseFaults?.(false);
    }
    const zero = digest(Buffer.alloc(VOLUME_SIZE));
    this.allow(zero);
    this.refs.set(1, zero);
    await this.openWriter(false);
    try {
      for (this.step = 1; this.step <= steps && !this.stopped; this.step++) {
        this.totals.steps++;
        await this.doStep();
        await this.check();
        if (this.world.violations.length > 0) break;
      }
      if (this.world.violations.length === 0 && !this.stopped) {
        // Wind down: every operation ends, faults stop, the writer closes, a last full check.
        this.note('wind down');
        await this.settle();
        this.world.rates = { before: 0, after: 0 };
        this.world.full = undefined;
        if (this.writer) {
          const w = this.writer;
          if (!(await this.flushOp())) await this.stillOwner(w);
          if (this.writer === w) await this.dropWriter('end of run');
        }
        await this.settle();
        if (this.totals.walDamages > 0) await this.cutAndReopen();
        await this.check(true);
      }
    } catch (e) {
      this.violation(`harness: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    } finally {
      // Stop everything still running (timers included).
      if (this.writer) this.kill(this.writer);
      for (const a of this.allActors) a.dead = true;
      this.sim.resume();
      // Nothing of this run may still run during the next one (it would consume that run's
      // random numbers): dead actors fail fast, so this ends.
      await this.sim
        .watch(Promise.allSettled([...this.inflight.values()].map((i) => i.promise)), 'shutdown')
        .catch(() => undefined);
      await this.sim.drain();
    }
    const c = this.world.counters;
    this.totals.requests = c.requests;
    this.totals.faultsBefore = c.faultsBefore;
    this.totals.faultsAfter = c.faultsAfter;
    this.totals.overlappedSegmentPuts = c.overlappedSegmentPuts;
    this.totals.noSpace = c.noSpace;
    this.totals.storeErrors = c.storeErrors;
    this.totals.violations = this.world.violations.length;
    this.note(`end: ${JSON.stringify(this.totals)}`);
    return {
      seed: this.o.seed,
      totals: this.totals,
      violations: [...this.world.violations],
      log: this.log,
    };
  }
}

/** One seeded run against `backend`. */
export async function runChaos(backend: ChaosBackend, o: ChaosOptions): Promise<ChaosResult> {
  const run = new Run(backend, o);
  const result = backend.virtualTime
    ? await deterministic(o.seed, run.sim, !o.classic, () => run.run())
    : await run.run();
  if (result.violations.length > 0 || process.env.HYPER_CHAOS_LOG === '1') {
    const file = join(tmpdir(), `hyper-chaos-seed-${o.seed}.log`);
    try {
      writeFileSync(file, `${result.log.join('\n')}\n`);
      result.logFile = file;
    } catch {
      // the tail printed with the failure still helps
    }
  }
  return result;
}

/**
 * A compaction's retention policy, grace period and min-live, drawn from `r` in this order.
 * On real time (RGW) a seed lasts seconds, not the minutes virtual time covers, so a window
 * to keep is drawn within seconds there.
 */
function drawCompaction(o: CompactOptions, r: () => number, realTime = false): void {
  const p = r();
  if (p < 0.6) o.keepLast = 1 + Math.floor(r() * 4);
  else if (p < 0.85) o.keepWithinMs = Math.floor(r() * (realTime ? 5_000 : 120_000));
  if (r() < 0.6) o.graceMs = 0;
  o.minLive = r() < 0.3 ? 0 : r();
}

function describeCompaction(o: CompactOptions): string {
  return [
    o.keepLast !== undefined ? `keep-last ${o.keepLast}` : '',
    o.keepWithinMs !== undefined ? `keep-within ${o.keepWithinMs}ms` : '',
    `grace ${o.graceMs ?? 'default'}`,
    `min-live ${(o.minLive ?? 0).toFixed(2)}`,
    o.force ? '--force' : '',
  ]
    .filter(Boolean)
    .join(' ');
}

export function addTotals(a: ChaosTotals, b: ChaosTotals): ChaosTotals {
  const out = { ...a };
  for (const k of Object.keys(b) as (keyof ChaosTotals)[]) out[k] += b[k];
  return out;
}

export const emptyTotals = (): ChaosTotals => ({
  seeds: 0,
  steps: 0,
  operations: 0,
  opsFailed: 0,
  requests: 0,
  faultsBefore: 0,
  faultsAfter: 0,
  takeovers: 0,
  kills: 0,
  checks: 0,
  violations: 0,
  overlappedSegmentPuts: 0,
  noSpace: 0,
  storeErrors: 0,
  lapses: 0,
  lapsesEnded: 0,
  compactNoRoom: 0,
  walSeeds: 0,
  walReplays: 0,
  walDamages: 0,
  walRefusals: 0,
  walCuts: 0,
  copies: 0,
  copiesResumed: 0,
  copyTwins: 0,
  copyTwinsAcked: 0,
  fencedWriters: 0,
  diffs: 0,
  diffRetries: 0,
  diffsResumed: 0,
  onlineCompactions: 0,
  onlineBlocksMoved: 0,
  resizes: 0,
  resizesAcked: 0,
  resizesPending: 0,
});

/** The report of a failed run: seed, how to replay, the violations and the op log's tail. */
export function describeFailure(r: ChaosResult, replay: string, tail = 150): string {
  return [
    `chaos seed ${r.seed} found ${r.violations.length} violation(s); replay with ${replay}`,
    ...r.violations.map((v) => `  - ${v}`),
    `op log (last ${Math.min(tail, r.log.length)} of ${r.log.length} lines${r.logFile ? `; full log: ${r.logFile}` : ''}):`,
    ...r.log.slice(-tail),
  ].join('\n');
}

export interface BudgetOptions {
  /** Seconds to spend (real time); at least one seed runs. */
  seconds: number;
  /** Run only this seed. */
  seed?: number;
  firstSeed?: number;
  /** Keep running seeds after a failure (to survey which seeds fail). */
  keepGoing?: boolean;
  exclude?: string[];
  steps?: number;
  rates?: FaultRates;
  /** The classic schedule (ChaosOptions.classic). */
  classic?: boolean;
  makeBackend: (seed: number) => Promise<ChaosBackend>;
  onResult?: (r: ChaosResult) => void;
}

/** Run seeds one after another within a time budget; returns totals and the failed runs. */
export async function runChaosBudget(
  o: BudgetOptions,
): Promise<{ totals: ChaosTotals; failures: ChaosResult[]; seeds: number[] }> {
  let totals = emptyTotals();
  const failures: ChaosResult[] = [];
  const seeds: number[] = [];
  const t0 = performance.now();
  for (let seed = o.seed ?? o.firstSeed ?? 1; ; seed++) {
    const t1 = performance.now();
    const backend = await o.makeBackend(seed);
    let r: ChaosResult;
    try {
      r = await runChaos(backend, {
        seed,
        ...(o.exclude ? { exclude: o.exclude } : {}),
        ...(o.steps ? { steps: o.steps } : {}),
        ...(o.rates ? { rates: o.rates } : {}),
        ...(o.classic ? { classic: true } : {}),
      });
    } finally {
      await backend.dispose?.();
    }
    seeds.push(seed);
    // HYPER_CHAOS_PROGRESS=FILE: a line per seed as it ends (long sweeps in the background).
    const progress = process.env.HYPER_CHAOS_PROGRESS;
    if (progress)
      appendFileSync(
        progress,
        `${seed} ${((performance.now() - t1) / 1000).toFixed(1)}s ${r.totals.steps} steps ${r.violations.length} violations\n`,
      );
    totals = addTotals(totals, r.totals);
    o.onResult?.(r);
    if (r.violations.length > 0) {
      failures.push(r);
      if (!o.keepGoing) break;
    }
    if (o.seed !== undefined || performance.now() - t0 >= o.seconds * 1000) break;
  }
  return { totals, failures, seeds };
}

/** HYPER_CHAOS_* settings from the environment. */
export function chaosEnv(defaultSeconds: number): {
  seconds: number;
  seed?: number;
  firstSeed?: number;
  keepGoing: boolean;
  exclude: string[];
  steps?: number;
} {
  const env = process.env;
  const num = (v: string | undefined): number | undefined =>
    v === undefined || v === '' ? undefined : Number(v);
  const seed = num(env.HYPER_CHAOS_SEED);
  const firstSeed = num(env.HYPER_CHAOS_FIRST_SEED);
  const steps = num(env.HYPER_CHAOS_STEPS);
  return {
    seconds: num(env.HYPER_CHAOS_SECONDS) ?? defaultSeconds,
    ...(seed === undefined ? {} : { seed }),
    ...(firstSeed === undefined ? {} : { firstSeed }),
    keepGoing: env.HYPER_CHAOS_KEEP_GOING === '1',
    exclude: (env.HYPER_CHAOS_EXCLUDE ?? '').split(',').filter(Boolean),
    ...(steps === undefined ? {} : { steps }),
  };
}
