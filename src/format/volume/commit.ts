/**
 * The one committer of a writable volume: every change of the head goes through here.
 *
 * It owns the writer's lease (renewal and loss), the epoch it writes under, the create-only
 * PUT of each checkpoint segment (with the next free id), the compare-and-swap of the head,
 * fencing, bounded retries, and the "did my write land?" recovery:
 *   - a segment id that turns out to be taken holds our own segment (its reply was lost:
 *     same bytes), a newer writer's (fenced) or an older writer's leftover (this segment is
 *     written again under another id) — decided by reading it, never by assumption; a
 *     segment PUT that failed otherwise is retried with the same bytes, never replaced;
 *   - a head CAS that fails its precondition is compared with the stored bytes: ours landed,
 *     or another epoch owns the volume (fenced), or it is an older head of our own epoch
 *     whose reply was lost (ours supersedes it).
 * A checkpoint is committed once its segment and every one before it have landed (the chain,
 * FORMAT.md "Commit protocol"); the head CAS that names it may come later.
 * Taking a volume over (open for write) also commits here, and the head's epoch only ever
 * increases. See FORMAT.md "Commit protocol" and "Lease".
 */
import { HyperError, isHyperError, toHyperError } from '../../errors.js';
import { encodeHead, type HeadRecord } from '../codec/head.js';
import { HEAD_KEY, segmentKey } from '../keys.js';
import type { ObjectStore } from '../store/types.js';
import { sliceBody } from '../store/common.js';
import {
  continuesChain,
  readCheckpointHead,
  readStoredHead,
  rollForward,
  takenOverWhileRead,
} from './heads.js';
import { buildEmptySegment } from './segment-builder.js';
import { decodeEmbeddedHead } from '../codec/segment.js';
import { Lease, type LeaseOptions } from './lease.js';
import type { BuiltCheckpoint } from './segment-builder.js';
import { CONFLICT_RETRIES, type EngineStats, type Logger } from './types.js';

/** Renew the lease before a commit when less than this is left of it. */
const LEASE_MARGIN_MS = 2000;

/** Ids a takeover's fence tries past the chain before giving up (each one another writer's). */
const FENCE_ATTEMPTS = 1000;

export class Committer {
  /**
   * The newest checkpoint this writer wrote whose segment, and every segment before it, is
   * durable (committed: the chain continues there, FORMAT.md "Commit protocol"), its head
   * CAS possibly pending. Only this head is ever CASed.
   */
  head: HeadRecord;
  /**
   * The newest checkpoint built, its segment possibly still in flight (pipelined flushes):
   * the next segment id and the previous checkpoint of the next build come from here.
   */
  tip: HeadRecord;
  /** The head object does not name `head` yet (its CAS waits, or runs in the background). */
  headPending = false;
  /** Set once this writer may commit nothing more; every later operation fails with it. */
  private fenced: HyperError | undefined;
  /** Head CASes run one at a time, in order (see publishPending). */
  private publishing: Promise<unknown> = Promise.resolve();

  private constructor(
    private readonly store: ObjectStore,
    head: HeadRecord,
    private etag: string,
    private readonly lease: Lease,
    private readonly log: Logger,
  ) {
    this.head = head;
    this.tip = head;
    lease.startRenewal(
      (e) => this.fence(e),
      (why) => {
        if (why)
          this.log.warn(
            'lease lapsed: the store refused or did not answer its renewal; nothing is committed until a renewal gets through (one fails for good if another writer took the volume over meanwhile)',
            { error: why.message, code: why.code },
          );
        else this.log.info('lease renewed after a lapse: committing again');
      },
    );
  }

  /**
   * Take the lease, then the volume over under the new epoch: roll forward along the chain
   * of checkpoints committed past the head; unless the previous holder gave the lease back,
   * fence it (an empty checkpoint, create-only, at the next id: a segment it still has in
   * flight lands before the fence, and is adopted, or can never continue the chain); then
   * CAS the head. `adjust` may change the head on the way (e.g. its WAL URL).
   */
  static async takeOver(
    store: ObjectStore,
    lease: LeaseOptions,
    log: Logger,
    adjust: (head: HeadRecord) => HeadRecord = (h) => h,
  ): Promise<Committer> {
    const held = await Lease.acquire(store, lease);
    try {
      return await Committer.takeHead(store, held, log, adjust);
    } catch (e) {
      // Given back as it was found: if the previous holder may still have PUTs in flight
      // (this takeover may not have fenced it), the next one must fence it.
      await held.release(held.previousDone).catch(() => undefined);
      throw e;
    }
  }

  private static async takeHead(
    store: ObjectStore,
    held: Lease,
    log: Logger,
    adjust: (head: HeadRecord) => HeadRecord,
  ): Promise<Committer> {
    let stored = await readStoredHead(store);
    const rolled = await rollForward(store, stored.head);
    // Something under seg/ this writer cannot place: it might be a commit it would overwrite.
    if (rolled.strays[0]) throw rolled.strays[0];
    let tip = rolled.tip;
    if (tip.epoch >= held.epoch) throw takenMeanwhile(tip.epoch, held.epoch);
    let next: HeadRecord;
    if (held.previousDone) {
      // Nobody has a PUT in flight: every id past the chain is a leftover, listed or not.
      const skipped = [...tip.skipped];
      for (let id = tip.lastSegment + 1; id <= rolled.highest; id++) skipped.push(id);
      next = {
        ...adjust(tip),
        epoch: held.epoch,
        lastSegment: Math.max(tip.lastSegment, rolled.highest),
        skipped,
      };
    } else {
      next = await Committer.placeFence(store, tip, held.epoch, adjust);
      tip = next;
    }
    // The head object: an older writer's CAS may land first (it names a checkpoint of the
    // chain we continue), so take it over from there too.
    const bytes = encodeHead(next);
    for (let attempt = 0; ; attempt++) {
      try {
        const put = await store.put(HEAD_KEY, bytes, { ifMatch: stored.etag });
        return new Committer(store, next, put.etag, held, log);
      } catch (e) {
        if (!isHyperError(e, 'PRECONDITION_FAILED') || attempt >= CONFLICT_RETRIES) throw e;
      }
      stored = await readStoredHead(store);
      // Our own CAS, whose reply was lost and whose retry found it there.
      if (stored.bytes.equals(bytes)) return new Committer(store, next, stored.etag, held, log);
      if (stored.head.epoch >= held.epoch) throw takenMeanwhile(stored.head.epoch, held.epoch);
    }
  }

  /**
   * Commit an empty checkpoint under `epoch` at the first free id past `tip`: the fence. An
   * id found taken holds either a segment that continues the chain (a previous writer's,
   * landed late: adopted, the fence goes after it) or one that never can (skipped).
   */
  private static async placeFence(
    store: ObjectStore,
    chain: HeadRecord,
    epoch: number,
    adjust: (head: HeadRecord) => HeadRecord,
  ): Promise<HeadRecord> {
    let tip = chain;
    let skipped: number[] = [];
    for (let attempt = 0; attempt < FENCE_ATTEMPTS; attempt++) {
      const id = tip.lastSegment + skipped.length + 1;
      const now = Date.now();
      const { restoredFrom: _restore, ...base } = adjust(tip);
      const fence: HeadRecord = {
        ...base,
        epoch,
        checkpoint: id,
        checkpointMs: now,
        prevCheckpoint: tip.checkpoint,
        lastSegment: id,
        skipped: [...tip.skipped, ...skipped],
        // Compaction never deletes these: the old writer's next PUT goes to the first of
        // them, and at any later time; an id it finds taken by an older writer's leftover
        // (skipped here) sends it to the next one, until it meets the fence.
        fences: [...(tip.fences ?? []), ...skipped, id],
      };
      try {
        await store.put(segmentKey(id), buildEmptySegment(id, now, encodeHead(fence)), {
          ifNoneMatch: true,
        });
        return fence;
      } catch (e) {
        if (!isHyperError(e, 'OBJECT_EXISTS')) throw e;
      }
      const occupant = await readCheckpointHead(store, id).catch((e: unknown) =>
        goneMeanwhile(store, id, epoch, e),
      );
      if (occupant.epoch >= epoch) throw takenMeanwhile(occupant.epoch, epoch);
      if (continuesChain(tip, occupant)) {
        // (It lists the ids it skipped itself.)
        tip = occupant;
        skipped = [];
      } else skipped.push(id);
    }
    throw new HyperError(
      'conflict',
      'LEASE_HELD',
      `The previous writer kept committing while this one took the volume over (${FENCE_ATTEMPTS} segment ids past checkpoint ${chain.checkpoint})`,
      { suggestion: 'Stop the other writer, then retry.' },
    );
  }

  /** Throws when this writer can commit nothing more (fenced, or its lease was lost). */
  check(): void {
    if (this.fenced) throw this.fenced;
    if (this.lease.lost) throw this.fence(this.lease.lost);
  }

  /** The lease as last renewed (for metrics and status). */
  get leaseState(): NonNullable<EngineStats['lease']> {
    const f = this.fenced;
    return {
      epoch: this.lease.epoch,
      expiresMs: this.lease.record.expiresMs,
      lost: this.isFenced,
      lapsed: this.lease.lapsed !== undefined,
      ...(f && f.code !== 'FENCED' ? { stopped: f.message } : {}),
    };
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
    const cur = await readStoredHead(this.store);
    if (cur.head.epoch !== this.head.epoch) throw this.fencedBy(cur.head.epoch);
  }

  /** Record a fence found elsewhere (the WAL's sequence claimed by another writer). */
  fence(e: HyperError): HyperError {
    if (!this.fenced) {
      this.fenced = e;
      // Once: from here on the volume is read-only for this writer. (Its WAL found damaged
      // under it stops it the same way: see WalWriter.)
      this.log.error(
        e.code === 'FENCED'
          ? 'lease lost: another writer took the volume over; writes now fail'
          : 'the write-ahead log is damaged; writes now fail',
        { error: e.message },
      );
    }
    this.lease.stop();
    return this.fenced;
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
   * taken all the same, the segment there is either ours (the request landed though its
   * reply was lost: same bytes, done), a newer writer's (fenced), or an older writer's
   * leftover: then this segment can never land, and fails with OBJECT_EXISTS (the caller
   * writes its changes again under another id). Any other failure leaves the outcome
   * unknown: the caller PUTs the same bytes again, never another segment in its place.
   */
  async putSegment(built: BuiltCheckpoint): Promise<void> {
    const id = built.head.checkpoint;
    try {
      await this.store.put(segmentKey(id), built.parts, { ifNoneMatch: true });
      return;
    } catch (e) {
      if (!isHyperError(e, 'OBJECT_EXISTS')) throw e;
    }
    // (The first 64 KiB: the header, which names this checkpoint's head, and what follows.)
    const n = Math.min(built.length, 64 * 1024);
    const epoch = this.head.epoch;
    const got = await this.store
      .get(segmentKey(id), { range: { offset: 0, length: n } })
      .catch((e: unknown) => goneMeanwhile(this.store, id, epoch, e));
    if (got.body.equals(sliceBody(built.parts, 0, n))) return;
    // Whose it is: the embedded head is in what was just read (rarely longer: read it then).
    let occupant: HeadRecord;
    try {
      occupant = decodeEmbeddedHead(got.body);
    } catch {
      occupant = await readCheckpointHead(this.store, id).catch((e: unknown) =>
        goneMeanwhile(this.store, id, epoch, e),
      );
    }
    if (occupant.epoch >= this.head.epoch) throw this.fencedBy(occupant.epoch);
    throw new HyperError(
      'conflict',
      'OBJECT_EXISTS',
      `${segmentKey(id)} holds an older writer's leftover (epoch ${occupant.epoch}); this segment is written again under another id`,
      { key: segmentKey(id) },
    );
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

  /**
   * CAS the head to the newest durable checkpoint if the head object does not name it yet;
   * resolves to the head it published (undefined: nothing was pending). One CAS at a time:
   * a call made while one runs waits for it, then publishes what is newest then.
   */
  publishPending(): Promise<HeadRecord | undefined> {
    const run = this.publishing.then(async () => {
      if (!this.headPending) return undefined;
      this.check();
      const head = this.head;
      await this.cas(encodeHead(head));
      if (this.head === head) this.headPending = false;
      return head;
    });
    this.publishing = run.catch(() => undefined);
    return run;
  }

  private async cas(bytes: Buffer): Promise<void> {
    try {
      this.etag = (await this.store.put(HEAD_KEY, bytes, { ifMatch: this.etag })).etag;
    } catch (e) {
      if (!isHyperError(e, 'PRECONDITION_FAILED')) throw e;
      // A retried CAS whose first attempt landed looks like a conflict: compare the bytes.
      const cur = await readStoredHead(this.store);
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

  /**
   * Stop renewing; give the lease back unless it was lost. `done` is false when a segment
   * PUT of this writer failed and was never resolved (it may still land): the lease is then
   * given back expired rather than released, and the next writer fences this one.
   */
  async release(done = true): Promise<void> {
    if (this.isFenced) this.lease.stop();
    else await this.lease.release(done);
  }
}

/**
 * Segment `id` was there when a create-only PUT found its id taken, and reading it now failed
 * (`e`). If it is gone, only a writer that took the volume over after this one deleted it (its
 * compaction), or the volume was deleted: that is the error, not a missing segment. Never
 * returns.
 */
async function goneMeanwhile(
  store: ObjectStore,
  id: number,
  epoch: number,
  e: unknown,
): Promise<never> {
  if (!isHyperError(e, 'MISSING_OBJECT') && !isHyperError(e, 'OBJECT_NOT_FOUND')) throw e;
  throw (await takenOverWhileRead(store, epoch, segmentKey(id))) ?? e;
}

/** Another writer took the volume over while this one was taking it. */
function takenMeanwhile(theirs: number, ours: number): HyperError {
  return new HyperError(
    'conflict',
    'LEASE_HELD',
    `Another writer took the volume over meanwhile (epoch ${theirs}, ours ${ours})`,
    { suggestion: 'Retry once the other writer is done.' },
  );
}

/**
 * Runs jobs strictly one after another, in the order they were queued (flushes: never two
 * on one index). A shared job that is queued but not started is joined by later callers
 * asking for the same kind of job: it will cover their writes too, since it freezes the
 * buffer only when it starts.
 */
export class SerialQueue<T> {
  private tail: Promise<unknown> = Promise.resolve();
  private pending = 0;
  private readonly queued = new Map<string, Promise<T>>();

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

  /** Queue `job`, or join the job of the same `kind` already queued and not yet started. */
  runShared(kind: string, job: () => Promise<T>): Promise<T> {
    const queued = this.queued.get(kind);
    if (queued) return queued;
    const p: Promise<T> = this.run(() => {
      if (this.queued.get(kind) === p) this.queued.delete(kind);
      return job();
    });
    this.queued.set(kind, p);
    return p;
  }
}
