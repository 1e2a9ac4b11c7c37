/**
 * The one committer of a writable volume: every change of the head goes through here.
 *
 * It owns the writer's lease (renewal and loss), the epoch it writes under, the create-only
 * PUT of each checkpoint segment (with the next free id), the compare-and-swap of the head,
 * fencing, bounded retries, and the "did my write land?" recovery:
 *   - a segment id that turns out to be taken is either our own commit whose head CAS
 *     landed although it reported failure (adopt it), or a flush that never committed
 *     (skip the id) — decided by re-reading the head, never by assumption;
 *   - a head CAS that fails its precondition is compared with the stored bytes: ours landed,
 *     or another epoch owns the volume (fenced), or it is an older head of our own epoch
 *     whose reply was lost (ours supersedes it).
 * Taking a volume over (open for write) also commits here, and the head's epoch only ever
 * increases. See FORMAT.md "Commit protocol" and "Lease".
 */
import { HyperError, dataError, isHyperError, toHyperError } from '../../errors.js';
import { encodeHead, type HeadRecord } from '../codec/head.js';
import { HEAD_KEY, SEGMENT_PREFIX, parseSegmentKey, segmentKey } from '../keys.js';
import type { ObjectStore } from '../store/types.js';
import { sliceBody } from '../store/common.js';
import { readHead } from './heads.js';
import { Lease, type LeaseOptions } from './lease.js';
import type { BuiltCheckpoint } from './segment-builder.js';
import { CONFLICT_RETRIES, type Logger } from './types.js';

/**
 * Segment ids a takeover may find past the head (all recorded as skipped). Pipelined writers
 * leave a few; more means a stray object under `seg/`.
 */
const MAX_SKIPPED_AT_TAKEOVER = 65_536;

/** Renew the lease before a commit when less than this is left of it. */
const LEASE_MARGIN_MS = 2000;

export class Committer {
  /**
   * The newest checkpoint this writer wrote whose segment, and every segment before it, is
   * durable (committed, or written with its CAS pending). Only this head is ever CASed.
   */
  head: HeadRecord;
  /**
   * The newest checkpoint built, its segment possibly still in flight (pipelined flushes):
   * the next segment id and the previous checkpoint of the next build come from here.
   */
  tip: HeadRecord;
  /** A segment was written for room (no durability asked); its head CAS waits. */
  headPending = false;
  /** Set once this writer may commit nothing more; every later operation fails with it. */
  private fenced: HyperError | undefined;

  private constructor(
    private readonly store: ObjectStore,
    head: HeadRecord,
    private etag: string,
    private readonly lease: Lease,
    private readonly log: Logger,
  ) {
    this.head = head;
    this.tip = head;
    lease.startRenewal((e) => this.fence(e));
  }

  /**
   * Take the lease, then take the head over under the new epoch: a fenced writer's next CAS
   * fails. Segments past the head's lastSegment are flushes that never committed: every id
   * up to the highest one listed is recorded as skipped. `adjust` may change the head on the way (e.g. its WAL URL).
   */
  static async takeOver(
    store: ObjectStore,
    lease: LeaseOptions,
    log: Logger,
    adjust: (head: HeadRecord) => HeadRecord = (h) => h,
  ): Promise<Committer> {
    const held = await Lease.acquire(store, lease);
    // A writer that lost the lease may still land a head CAS it had in flight (after a
    // kill, a crash or a takeover): take the head over from that one too, a few times.
    for (let attempt = 1; ; attempt++) {
      try {
        return await Committer.takeHead(store, held, log, adjust);
      } catch (e) {
        if (isHyperError(e, 'PRECONDITION_FAILED') && attempt < 4) continue;
        await held.release().catch(() => undefined);
        if (isHyperError(e, 'PRECONDITION_FAILED')) {
          throw new HyperError(
            'conflict',
            'LEASE_HELD',
            'The volume head changed while taking the lease; another writer is active',
            { cause: e },
          );
        }
        throw e;
      }
    }
  }

  /** Take the head over under `held`'s epoch (one try: a head that moved is PRECONDITION_FAILED). */
  private static async takeHead(
    store: ObjectStore,
    held: Lease,
    log: Logger,
    adjust: (head: HeadRecord) => HeadRecord,
  ): Promise<Committer> {
    const { head, etag } = await readHead(store);
    if (head.epoch >= held.epoch) {
      // Someone took the volume over between our reads: our epoch would not be newer.
      throw new HyperError(
        'conflict',
        'LEASE_HELD',
        `Another writer took the volume over meanwhile (head epoch ${head.epoch}, ours ${held.epoch})`,
        { suggestion: 'Retry once the other writer is done.' },
      );
    }
    let last = head.lastSegment;
    for await (const page of store.list(SEGMENT_PREFIX, {
      startAfter: segmentKey(head.lastSegment),
    })) {
      for (const o of page.objects) {
        const id = parseSegmentKey(o.key);
        if (id !== undefined && id > head.lastSegment) last = Math.max(last, id);
      }
    }
    // Every id past the head's lastSegment is uncommitted, listed or not: an old writer's
    // pipelined PUT below the highest listed id may still land after this listing, and
    // it must never pass for a checkpoint. Ids above `last` are claimed by create-only PUTs.
    if (last - head.lastSegment > MAX_SKIPPED_AT_TAKEOVER) {
      // No writer leaves that many segments past the head: an object that only looks like one.
      throw dataError(
        'CORRUPT_OBJECT',
        segmentKey(last),
        `${segmentKey(last)} is ${last - head.lastSegment} ids past the volume's last segment (${head.lastSegment}); it is not a segment this volume wrote`,
      );
    }
    const skipped = [...head.skipped];
    for (let id = head.lastSegment + 1; id <= last; id++) skipped.push(id);
    const next = { ...adjust(head), epoch: held.epoch, lastSegment: last, skipped };
    const put = await store.put(HEAD_KEY, encodeHead(next), { ifMatch: etag });
    return new Committer(store, next, put.etag, held, log);
  }

  /** Throws when this writer can commit nothing more (fenced, or its lease was lost). */
  check(): void {
    if (this.fenced) throw this.fenced;
    if (this.lease.lost) throw this.fence(this.lease.lost);
  }

  /** The lease as last renewed (for metrics and status). */
  get leaseState(): { epoch: number; expiresMs: number; lost: boolean } {
    return { epoch: this.lease.epoch, expiresMs: this.lease.record.expiresMs, lost: this.isFenced };
  }

  get isFenced(): boolean {
    return this.fenced !== undefined || this.lease.lost !== undefined;
  }

  /**
   * Prove that this writer still owns the volume right now: renew the lease (a CAS: it fails
   * if anyone took the lease since) and check that the head is still under our epoch. For
   * work that must not outlive its ownership, such as compaction's deletes.
   */
  async confirm(): Promise<void> {
    this.check();
    try {
      await this.lease.renew();
    } catch (e) {
      // Lost: fenced for good. Anything else (the store failing): this attempt fails.
      if (this.lease.lost) throw this.fence(this.lease.lost);
      throw toHyperError(e);
    }
    const cur = await readHead(this.store);
    if (cur.head.epoch !== this.head.epoch) throw this.fencedBy(cur.head.epoch);
  }

  /** Record a fence found elsewhere (the WAL's sequence claimed by another writer). */
  fence(e: HyperError): HyperError {
    if (!this.fenced) {
      this.fenced = e;
      // Once: from here on the volume is read-only for this writer.
      this.log.error('lease lost: another writer took the volume over; writes now fail', {
        error: e.message,
      });
    }
    this.lease.stop();
    return this.fenced;
  }

  /**
   * PUT the segment `build(id)` create-only under the next free id and return it. Nothing
   * in memory changes unless the PUT lands (the builder is pure).
   */
  async writeSegment(build: (id: number) => BuiltCheckpoint): Promise<BuiltCheckpoint> {
    for (let attempt = 0; ; attempt++) {
      this.check();
      if (!this.lease.validFor(LEASE_MARGIN_MS)) await this.lease.renew();
      const id = this.head.lastSegment + 1;
      const built = build(id);
      try {
        await this.store.put(segmentKey(id), built.parts, { ifNoneMatch: true });
        return built;
      } catch (e) {
        if (!isHyperError(e, 'OBJECT_EXISTS') || attempt >= CONFLICT_RETRIES) throw e;
        await this.idTaken(id);
      }
    }
  }

  /** Segment `id` exists already: learn from the head whose it is. */
  private async idTaken(id: number): Promise<void> {
    const cur = await readHead(this.store);
    if (cur.head.epoch !== this.head.epoch) throw this.fencedBy(cur.head.epoch);
    if (cur.head.checkpoint >= id) {
      // Our own commit of `id` landed though its CAS reported failure: it is committed.
      this.head = cur.head;
      this.tip = cur.head;
      this.etag = cur.etag;
      this.headPending = false;
      return;
    }
    // A flush that never committed (ours after a lost reply): skip its id.
    this.head = { ...this.head, lastSegment: id, skipped: [...this.head.skipped, id] };
    this.tip = this.head;
  }

  /** The segment of `built` is written; CAS the head to it: the commit point. */
  async publish(built: BuiltCheckpoint): Promise<void> {
    await this.cas(built.headBytes);
    this.head = built.head;
    this.tip = built.head;
    this.headPending = false;
  }

  /** The segment of `built` is written; its head waits for the next publish. */
  written(built: BuiltCheckpoint): void {
    this.landed(built.head);
    this.tip = built.head;
  }

  // ---------------------------------------------------------------- pipelined segments
  //
  // Several segments may be in flight at once. Each is built on top of the previous one
  // (`tip`), PUT create-only in the background, and becomes `head` only once it and every
  // segment before it are durable (`landed`, in id order). A failed PUT abandons it and every
  // later one (`abandon`): their ids are skipped, whatever landed of them is an orphan.

  /** Before building a segment: still the writer, and the lease outlives the PUT's start. */
  async prepare(): Promise<void> {
    this.check();
    if (!this.lease.validFor(LEASE_MARGIN_MS)) await this.lease.renew();
    this.check();
  }

  /** The id of the next segment to build. */
  nextId(): number {
    return this.tip.lastSegment + 1;
  }

  /** Segment `built` is built (its PUT about to start): the next one builds on it. */
  built(built: BuiltCheckpoint): void {
    this.tip = built.head;
  }

  /**
   * PUT a built segment create-only. The id was never used by this writer before; if it is
   * taken all the same, it is either our own request that landed though its reply was lost
   * (same bytes: done), or another writer's (fenced if the head moved to another epoch, else
   * an old writer's leftover: this segment fails and its id is skipped).
   */
  async putSegment(built: BuiltCheckpoint): Promise<void> {
    const id = built.head.checkpoint;
    try {
      await this.store.put(segmentKey(id), built.parts, { ifNoneMatch: true });
    } catch (e) {
      if (!isHyperError(e, 'OBJECT_EXISTS')) throw e;
      const cur = await readHead(this.store);
      if (cur.head.epoch !== this.head.epoch) throw this.fencedBy(cur.head.epoch);
      // (The first 64 KiB: the header, which names this checkpoint's head, and what follows.)
      const n = Math.min(built.length, 64 * 1024);
      const got = await this.store.get(segmentKey(id), { range: { offset: 0, length: n } });
      if (got.body.equals(sliceBody(built.parts, 0, n))) return;
      throw e;
    }
  }

  /** The segment of checkpoint `head` and every one before it are durable. */
  landed(head: HeadRecord): void {
    this.head = head;
    this.headPending = true;
  }

  /**
   * Segments `ids` (in flight, all settled) will never be committed: skip their ids and
   * build the next segment on `head` again.
   */
  abandon(ids: number[]): void {
    if (ids.length === 0) return;
    const last = Math.max(this.tip.lastSegment, ...ids);
    this.head = { ...this.head, lastSegment: last, skipped: [...this.head.skipped, ...ids] };
    this.tip = this.head;
  }

  /** CAS the head to the newest written checkpoint if that is still pending. */
  async publishPending(): Promise<void> {
    if (!this.headPending) return;
    this.check();
    await this.cas(encodeHead(this.head));
    this.headPending = false;
  }

  private async cas(bytes: Buffer): Promise<void> {
    try {
      this.etag = (await this.store.put(HEAD_KEY, bytes, { ifMatch: this.etag })).etag;
    } catch (e) {
      if (!isHyperError(e, 'PRECONDITION_FAILED')) throw e;
      // A retried CAS whose first attempt landed looks like a conflict: compare the bytes.
      const cur = await readHead(this.store);
      if (cur.bytes.equals(bytes)) {
        this.etag = cur.etag;
        return;
      }
      if (cur.head.epoch !== this.head.epoch) throw this.fencedBy(cur.head.epoch);
      // Same epoch: only this writer writes under it, so the head we see is one of our own
      // earlier commits whose reply was lost. Ours supersedes it.
      this.etag = (await this.store.put(HEAD_KEY, bytes, { ifMatch: cur.etag })).etag;
    }
  }

  private fencedBy(epoch: number): HyperError {
    return this.fence(
      new HyperError(
        'conflict',
        'FENCED',
        `Another writer took over the volume (epoch ${epoch}, ours ${this.head.epoch}); this writer commits nothing more`,
        { suggestion: 'Re-open the volume once the other writer is done.' },
      ),
    );
  }

  /** Stop renewing; give the lease back unless it was lost. */
  async release(): Promise<void> {
    if (this.isFenced) this.lease.stop();
    else await this.lease.release();
  }
}

/**
 * Runs jobs strictly one after another, in the order they were queued (flushes: never two
 * on one index). A shared job that is queued but not started is joined by later callers:
 * it will cover their writes too, since it freezes the buffer only when it starts.
 */
export class SerialQueue<T> {
  private tail: Promise<unknown> = Promise.resolve();
  private pending = 0;
  private queued: Promise<T> | undefined;

  /** `settled` runs after each job, before its caller resumes. */
  constructor(private readonly settled: () => void) {}

  /** True while a job is queued or running. */
  get busy(): boolean {
    return this.pending > 0;
  }

  run(job: () => Promise<T>): Promise<T> {
    this.pending++;
    const p = this.tail.then(async () => {
      try {
        return await job();
      } finally {
        this.pending--;
        this.settled();
      }
    });
    this.tail = p.catch(() => undefined);
    return p;
  }

  /** Queue `job`, or join the shared job already queued and not yet started. */
  runShared(job: () => Promise<T>): Promise<T> {
    if (this.queued) return this.queued;
    const p: Promise<T> = this.run(() => {
      if (this.queued === p) this.queued = undefined;
      return job();
    });
    this.queued = p;
    return p;
  }
}
