/**
 * The replicator: a local primary served at local-disk speed, every change shipped in order
 * and asynchronously to a replica volume (README "Replication").
 *
 * One ordered stream carries what the replica must apply: writes, zeroes, region copies and
 * flush points, each with a sequence number. The shipper applies the stream to the replica
 * volume in order and commits a checkpoint at every flush point it reaches (flush points that
 * queue up behind one another are committed once, at the last), and at least every
 * `commitIntervalMs`. So each replica checkpoint holds a prefix of the stream.
 *
 * The dirty bitmap in the primary header is a superset of the regions where the primary may
 * differ from the replica's newest checkpoint: a region's bit is durable before its first
 * write reaches the primary, and is cleared only once every change to it is in a committed
 * checkpoint. After a crash of the replicator the set bits are resynced; nothing else is.
 *
 * Resync: regions whose changes are not in the stream (the pool overflowed, the replica
 * failed, or after a crash) are `needCopy`. A resync pass switches the stream on again and
 * appends a copy of each such region, read while no write to it is in flight, so writes after
 * the copy follow it in the stream. Checkpoints committed before the pass's last copy mix
 * regions of different times: the manifest records them as inconsistent before the first one
 * is committed, and the last consistent checkpoint stays restorable and named in status.
 *
 * Reverse (restore --lazy): regions whose unrestored bit is set are copied from the replica
 * checkpoint `restoreFrom` on first use (a read, or before a write) and by a background pass;
 * an unrestored bit is cleared durably before any write to its region is accepted.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { HyperError, isHyperError, toHyperError } from '../errors.js';
import { isZero } from '../format/codec/binary.js';
import {
  bitCount,
  bitGet,
  bitSet,
  regionCount,
  type PrimaryHeader,
  type ReplicaMode,
} from '../format/codec/primary.js';
import type { ObjectStore } from '../format/store/index.js';
import { readCheckpointHead } from '../format/volume/heads.js';
import { REPLICA_KEY } from '../format/keys.js';
import { diffCheckpoints, type ChangedExtent } from '../format/volume/history.js';
import { silentLogger, type CheckpointInfo, type Logger } from '../format/volume/types.js';
import type { Volume } from '../format/volume/volume.js';
import {
  readTagged,
  updateManifest,
  type ReplicaManifest,
  type TaggedManifest,
} from './manifest.js';
import { RecycledBuffers } from '../nbd/input.js';
import type { PrimaryFile } from './primary.js';
import type { ReplicaTarget } from './shipper.js';

export const DEFAULT_POOL_BYTES = 512 * 1024 * 1024;
/**
 * How long close() waits, after its drain, for the last commit before giving the replica up
 * (a 32 MiB segment takes well under this on any store that answers).
 */
export const STOP_GRACE_MS = 10_000;
export const DEFAULT_RECOVER_CONCURRENCY = 4;
const ZERO_CHUNK = 1024 * 1024;

type Entry =
  /** `recycle`: `data` came from the replicator's RecycledBuffers and goes back once shipped. */
  | { kind: 'write'; seq: number; at: number; offset: number; data: Buffer; recycle?: true }
  | { kind: 'zero'; seq: number; at: number; offset: number; length: number; trim: boolean }
  | { kind: 'copy'; seq: number; at: number; region: number; data: Buffer }
  | { kind: 'flush'; seq: number; at: number };

/** The shipping rate in status: over this window, sampled at most this often. */
const RATE_WINDOW_MS = 10_000;
const RATE_SAMPLE_MS = 100;
/** Writes the ship loop hands to the replica target at once before it lets others run. */
const SHIP_TURN = 1024;

const entryBytes = (e: Entry): number =>
  e.kind === 'write' || e.kind === 'copy' ? e.data.length + 64 : 64;

export interface ReplicatorOptions {
  primary: PrimaryFile;
  header: PrimaryHeader;
  /** The replica volume's store (for the manifest). */
  replicaStore: ObjectStore;
  /** Open the replica volume for writing (takes its lease): in this thread or a worker's. */
  openReplica: () => Promise<ReplicaTarget>;
  /** Open the replica read-only at a checkpoint (lazy restore's source). */
  openReplicaAt: (checkpoint: number) => Promise<Volume>;
  /** Name recorded as the primary's owner while served. */
  owner: string;
  poolBytes?: number;
  recoverConcurrency?: number;
  /** Commit a replica checkpoint at least this often while changes wait (default 1 s). */
  commitIntervalMs?: number;
  /** A region stays dirty this long after its last write before its bit is cleared (2 s). */
  clearDelayMs?: number;
  /** First wait before reopening a failed replica (doubles up to 30 s; default 500 ms). */
  retryMs?: number;
  /**
   * Started to take the replica over (`--force`, a failover): at the first connect,
   * checkpoints another replicator shipped after this primary's last commit are overwritten
   * (the regions they changed are copied again) instead of refused as a split brain.
   */
  takeOver?: boolean;
  /**
   * Aborted when close() stops waiting for the replica (its drain and then `STOP_GRACE_MS`
   * have passed): the owner makes the opening of the replica and every request to its store
   * end with it (`AbortableStore`), so that a replica that stopped answering cannot hold the
   * stop. The replica target in use is killed then too.
   */
  giveUp?: AbortController;
  logger?: Logger;
}

export interface ReplicaStatus {
  uuid: string;
  mode: ReplicaMode;
  deviceSize: number;
  regionSize: number;
  replicaUrl: string;
  live: boolean;
  replica: {
    connected: boolean;
    error: string | null;
    checkpoint: number;
    lastConsistentCheckpoint: number;
    lastConsistentTime: string | null;
    /**
     * How long the replica commit in flight has been running, or null: a replica that
     * stopped answering shows here (growing, while `connected` stays true).
     */
    commitSeconds: number | null;
  };
  lag: { bytes: number; ios: number; seconds: number; p50Seconds: number; p99Seconds: number };
  pool: { bytes: number; limit: number; overflows: number };
  dirtyRegions: number;
  regions: number;
  resync: { pending: number; copied: number; total: number } | null;
  restore: { from: number; restored: number; total: number; lazy: boolean } | null;
  shipped: { bytes: number; ios: number; checkpoints: number; bytesPerSecond: number };
}

/**
 * Copies of small writes for the stream, carved from 1 MiB slabs: one allocation per slab
 * instead of one per write (a 4 KiB Buffer each is external memory for the GC to track; at
 * 20k writes/s that garbage cost the serving thread a sixth of its time). A full slab whose
 * copies were all shipped is carved again; one holding copies that were dropped unshipped
 * (an overflow) is left to the GC.
 */
export class CopySlabs {
  private static readonly SLAB = 1024 * 1024;
  /** Slabs kept for reuse once every copy in them was shipped. */
  private static readonly KEEP = 16;
  private slab: Buffer | undefined;
  private used = 0;
  /** Copies of each slab not given back yet; `carving` while take() still cuts from it. */
  private readonly live = new WeakMap<
    ArrayBufferLike,
    { slab: Buffer; copies: number; carving: boolean }
  >();
  private readonly free: Buffer[] = [];

  /** Memory for a copy of `length` bytes, to be filled by the caller. */
  take(length: number): Buffer {
    if (length > CopySlabs.SLAB / 8) return Buffer.allocUnsafeSlow(length);
    if (this.slab === undefined || this.used + length > this.slab.length) {
      if (this.slab !== undefined) this.done(this.slab, true);
      this.slab = this.free.pop() ?? Buffer.allocUnsafeSlow(CopySlabs.SLAB);
      this.live.set(this.slab.buffer, { slab: this.slab, copies: 0, carving: true });
      this.used = 0;
    }
    const out = this.slab.subarray(this.used, this.used + length);
    (this.live.get(this.slab.buffer) as { copies: number }).copies++;
    // Keep copies 8-byte aligned.
    this.used += (length + 7) & ~7;
    return out;
  }

  /**
   * A copy take() gave is referred to no more (shipped): once a slab has none left and is
   * full, it is used again instead of fresh memory, whose pages fault on the first copy
   * (costly in a VM). Call once per copy; a copy never given back keeps its slab from reuse.
   */
  give(copy: Buffer): void {
    const rec = this.live.get(copy.buffer);
    if (rec !== undefined && --rec.copies === 0 && !rec.carving) this.done(rec.slab, false);
  }

  private done(slab: Buffer, full: boolean): void {
    const rec = this.live.get(slab.buffer);
    if (rec === undefined) return;
    if (full) rec.carving = false;
    if (rec.copies > 0 || rec.carving) return;
    this.live.delete(slab.buffer);
    if (this.free.length < CopySlabs.KEEP) this.free.push(slab);
  }
}

/**
 * Buffers for large writes, handed back once the replica target has copied them: a fresh
 * 256 KiB Buffer per NBD write costs page faults and GC (Buffer.concat took a sixth of the
 * serving thread in a sequential write), a reused one only the copy.
 */
const RECYCLED_MIN = 64 * 1024;
const RECYCLED_BYTES = 64 * 1024 * 1024;
/** Whole-region buffers kept for reuse (regionBuffers). */
const REGION_BUFFERS = 2;

/** A latch that resolves waiters when `wake()` is called (or their timeout passes). */
class Signal {
  private waiters = new Set<() => void>();
  wait(ms?: number): Promise<void> {
    return new Promise((resolve) => {
      let t: NodeJS.Timeout | undefined;
      const done = (): void => {
        if (t !== undefined) clearTimeout(t);
        this.waiters.delete(done);
        resolve();
      };
      if (ms !== undefined) t = setTimeout(done, ms);
      this.waiters.add(done);
    });
  }
  wake(): void {
    if (this.waiters.size === 0) return;
    const w = [...this.waiters];
    this.waiters.clear();
    for (const f of w) f();
  }
}

export class Replicator {
  readonly regions: number;
  readonly regionSize: number;
  readonly size: number;
  private readonly primary: PrimaryFile;
  private header: PrimaryHeader;
  private readonly log: Logger;
  private readonly poolLimit: number;
  private readonly recoverConcurrency: number;
  private readonly commitIntervalMs: number;
  private readonly clearDelayMs: number;
  private readonly retryMs: number;

  // Dirty bitmap (in memory; `header.dirty` is the persisted copy) and its bookkeeping.
  private readonly dirty: Buffer;
  private readonly unrestored: Buffer;
  private readonly busy: Int32Array;
  private readonly lastSeq: Float64Array;
  private readonly lastWriteMs: Float64Array;
  private readonly setVersion: Float64Array;
  private readonly idle = new Map<number, () => void>();
  private readonly gates = new Map<number, Promise<void>>();

  // Header persistence: `wanted` versions of the bitmaps, `durable` written and synced.
  private wanted = 0;
  private durable = 0;
  private persisting: Promise<void> | undefined;
  private persistError: HyperError | undefined;

  // The stream.
  private queue: Entry[] = [];
  private queueHead = 0;
  private queueBytes = 0;
  private nextSeq = 1;
  private queueing = false;
  private appliedSeq = 0;
  private committedSeq = 0;
  private lastCommitMs = Date.now();
  private committing: Promise<unknown> | undefined;
  /** When the commit in flight (`committing`) started. */
  private commitStartedMs: number | undefined;
  private commitAgain = false;
  /** When the oldest change applied to the replica but not yet committed was made. */
  private pendingSince: number | undefined;
  private readonly needCopy = new Set<number>();
  private readonly passPending = new Set<number>();
  private passTotal = 0;
  private passCopied = 0;
  private passAbort = false;
  private fullPass = false;
  private consistentAfter = Infinity;
  private manifestOpen = false;
  private manifest: TaggedManifest | undefined;
  /** A connect (or its retry loop) is running. */
  private connecting = false;
  /**
   * A resync asked for the replica while an attempt to open it was under way: the next
   * failure retries at once instead of backing off (a wake before the backoff's wait would
   * be lost, and the retry come up to 30 s later).
   */
  private retryNow = false;
  private connectRun: Promise<void> = Promise.resolve();
  private crashed = false;
  /**
   * The next connect overwrites checkpoints another replicator shipped after this primary's
   * last commit instead of refusing them (the operator chose this primary): set by
   * ReplicatorOptions.takeOver, or by a full resync asked for once the two primaries were
   * reported diverged; cleared once a connect succeeds.
   */
  private overwriteOthers: boolean;
  /** The last connect was refused because another primary's replicator shipped meanwhile. */
  private diverged = false;
  private manifestChain: Promise<void> = Promise.resolve();

  // The replica.
  private volume: ReplicaTarget | undefined;
  private replicaError: string | null = null;
  private replicaCheckpoint: number;
  /** The replica lease epoch this primary's replicator last connected under (header field). */
  private replicaEpoch: number;
  private lastConsistent: number;
  private lastConsistentTime: Date | undefined;
  private overflows = 0;
  private shippedBytes = 0;
  private shippedIos = 0;
  private commits = 0;
  private readonly lagSamples: number[] = [];
  /**
   * Shipped bytes so far (`bytes`, before the entry that took the sample) at most every
   * RATE_SAMPLE_MS over the last RATE_WINDOW_MS: the shipping rate in status. (An object
   * per shipped write lived long enough to be promoted, and made most of the old-space
   * garbage at tens of thousands of writes a second.)
   */
  private readonly rate: { t: number; bytes: number }[] = [];

  // Reverse.
  private view: Volume | undefined;
  private readonly restoring = new Map<number, Promise<void>>();
  private restoreSlots: number;
  private readonly restoreSlotFree = new Signal();
  private restoredCount = 0;

  private readonly copies = new CopySlabs();
  /**
   * Region buffers of copies that were shipped or found to be zeros, for the next region
   * read: a first sync reads every region, and into fresh memory each 8 MiB read paid a page
   * fault per 4 KiB on the serving thread (262,000 for an existing 1 GiB device).
   */
  private readonly regionBuffers: RecycledBuffers;
  private readonly recycled = new RecycledBuffers(RECYCLED_MIN, RECYCLED_BYTES);
  /** Wakes the ship loop (wakeWork). */
  private readonly work = new Signal();
  /**
   * Wakes the resync loop: only when it has regions to copy or is to stop (wakeWork), not for
   * every queued write, each of which cost a promise and a timer there.
   */
  private readonly resyncWork = new Signal();
  private readonly drained = new Signal();
  /** Ends backoff waits: when closing, and when a resync asks for the replica now. */
  private readonly backoff = new Signal();
  private closing = false;
  private closed = false;
  private loops: Promise<void>[] = [];
  /** Header fields this process owns (the header's copy follows them on each write). */
  private owner = '';
  private clean = false;

  constructor(private readonly o: ReplicatorOptions) {
    this.primary = o.primary;
    this.header = { ...o.header };
    this.size = o.header.deviceSize;
    this.regionSize = o.header.regionSize;
    this.regionBuffers = new RecycledBuffers(this.regionSize, REGION_BUFFERS * this.regionSize);
    this.regions = regionCount(this.size, this.regionSize);
    this.log = o.logger ?? silentLogger;
    this.poolLimit = Math.max(o.poolBytes ?? DEFAULT_POOL_BYTES, 2 * this.regionSize);
    this.recoverConcurrency = Math.max(1, o.recoverConcurrency ?? DEFAULT_RECOVER_CONCURRENCY);
    this.restoreSlots = this.recoverConcurrency;
    this.commitIntervalMs = o.commitIntervalMs ?? 1000;
    this.clearDelayMs = o.clearDelayMs ?? 2000;
    this.retryMs = o.retryMs ?? 500;
    this.overwriteOthers = o.takeOver === true;
    this.dirty = Buffer.from(o.header.dirty);
    this.unrestored =
      o.header.mode === 'reverse-full' && o.header.unrestored.length > 0
        ? Buffer.from(o.header.unrestored)
        : Buffer.alloc(this.dirty.length);
    this.restoredCount = this.regions - bitCount(this.unrestored, this.regions);
    this.busy = new Int32Array(this.regions);
    this.lastSeq = new Float64Array(this.regions);
    this.lastWriteMs = new Float64Array(this.regions);
    this.setVersion = new Float64Array(this.regions);
    this.replicaCheckpoint = o.header.replicaCheckpoint;
    this.replicaEpoch = o.header.replicaEpoch;
    this.lastConsistent = o.header.lastConsistent;
    if (o.header.mode === 'forward-full') {
      this.fullPass = true;
      for (let r = 0; r < this.regions; r++) this.needCopy.add(r);
    } else {
      for (let r = 0; r < this.regions; r++) if (bitGet(this.dirty, r)) this.needCopy.add(r);
    }
    this.queueing = this.needCopy.size === 0;
    this.consistentAfter = this.queueing ? 0 : Infinity;
  }

  // ------------------------------------------------------------------ lifecycle

  /** Claim the primary, connect to the replica and start shipping. */
  async start(): Promise<void> {
    this.owner = this.o.owner;
    await this.persist();
    await this.connect(true);
    if (this.unrestoredLeft() > 0) {
      this.view = await this.o.openReplicaAt(this.header.restoreFrom);
      this.loops.push(this.restoreLoop());
    }
    this.loops.push(this.shipLoop(), this.resyncLoop());
  }

  /**
   * Stop: ship what is queued (for at most `drainMs`), commit it, clear what is clean and
   * release the primary and the replica's lease. A replica still not done `graceMs` after the
   * drain is given up (see `ReplicatorOptions.giveUp`); the stop then ends without waiting
   * for it, and the regions it did not commit stay dirty.
   */
  async close(drainMs = 30_000, graceMs = STOP_GRACE_MS): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    this.backoff.wake();
    const deadline = Date.now() + drainMs;
    // Past the drain and a grace for the last commit, the replica is given up: what was not
    // committed stays dirty in the bitmap written below, and the next start copies it.
    const giveUp = setTimeout(() => this.abandonReplica(drainMs + graceMs), drainMs + graceMs);
    try {
      await this.finishClose(deadline);
    } finally {
      clearTimeout(giveUp);
    }
  }

  private abandonReplica(afterMs: number): void {
    this.log.warn('the replica did not answer in time: stopping without its last commit', {
      afterMs,
      note: 'regions not committed stay dirty; the next start copies them',
    });
    this.o.giveUp?.abort(
      new HyperError('unavailable', 'ABORTED', `The replica did not answer within ${afterMs} ms`),
    );
    void this.volume?.kill?.().catch(() => undefined);
  }

  private async finishClose(deadline: number): Promise<void> {
    while (
      this.volume !== undefined &&
      (this.queueBytes > 0 || this.queueHead < this.queue.length || this.passPending.size > 0) &&
      Date.now() < deadline
    ) {
      this.wakeWork();
      await sleep(25);
    }
    this.closed = true;
    this.wakeWork();
    this.restoreSlotFree.wake();
    await Promise.allSettled(this.loops);
    // A replica being opened is closed by the connect itself once it sees `closed`.
    await this.connectRun;
    while (this.committing !== undefined) await this.committing;
    // (A commit that failed meanwhile gave the volume up: there is nothing left to commit.)
    const v = this.volume;
    if (v !== undefined) {
      try {
        if (this.queueHead >= this.queue.length && this.appliedSeq > this.committedSeq)
          await this.commit();
      } catch (e) {
        this.log.warn('final replica commit failed', { error: (e as Error).message });
      }
      await v.close().catch(() => undefined);
      this.volume = undefined;
    }
    await this.view?.close().catch(() => undefined);
    this.clearBits(true);
    this.owner = '';
    this.clean = this.needCopy.size === 0 && this.passPending.size === 0;
    await this.persist().catch((e: unknown) =>
      this.log.error('could not write the primary header', { error: (e as Error).message }),
    );
    await this.primary.close();
  }

  /**
   * Stop at once, as a killed process would: no header write, no replica commit, nothing
   * drained (fault injection in tests). Requests to the replica's store end through
   * `giveUp`; an owner without one must cut the store off itself.
   */
  async crash(): Promise<void> {
    this.closed = true;
    this.crashed = true;
    this.backoff.wake();
    // Every request to the replica dies with the process: one that never answers (a hung
    // store) would otherwise hold the open in flight, and this crash, for good.
    this.o.giveUp?.abort(new HyperError('unavailable', 'ABORTED', 'The replicator was killed'));
    // An open in flight dies with the process too (it kills what it opened).
    await this.connectRun;
    await this.volume?.kill?.();
    this.persistError = new HyperError('unavailable', 'ABORTED', 'The replicator was stopped');
    this.backoff.wake();
    this.wakeWork();
    this.drained.wake();
    this.restoreSlotFree.wake();
    await this.primary.close();
  }

  // ------------------------------------------------------------------ device I/O

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkOpen();
    if (this.restorePending()) await this.ensureRestored(offset, length);
    return this.primary.read(offset, length);
  }

  /** A write; the stream keeps a copy of `data`. */
  write(offset: number, data: Buffer, fua = false): Promise<void> {
    const copy = this.payloadBuffer(data.length);
    data.copy(copy);
    return this.writeOwned(offset, copy, fua);
  }

  /**
   * Memory for the data of a write that will be handed over by writeOwned(): a recycled
   * buffer when large, a piece of a slab when small.
   */
  payloadBuffer(length: number): Buffer {
    return length >= RECYCLED_MIN ? this.recycled.take(length) : this.copies.take(length);
  }

  /** A write of `data` from payloadBuffer(), which the stream keeps without a copy. */
  async writeOwned(offset: number, data: Buffer, fua = false): Promise<void> {
    const recycle = data.length >= RECYCLED_MIN;
    const queued = await this.change(
      offset,
      data.length,
      () => this.primary.write(offset, data),
      (seq, at) =>
        recycle
          ? { kind: 'write', seq, at, offset, data, recycle: true }
          : { kind: 'write', seq, at, offset, data },
    );
    // Resyncing by region: the stream did not take it, and the primary has it.
    if (!queued) {
      if (recycle) this.recycled.give(data);
      else this.copies.give(data);
    }
    if (fua) await this.primary.sync();
  }

  /** A gathered write (`parts` are consecutive), copied once into the stream's memory. */
  writeParts(offset: number, parts: Buffer[], fua = false): Promise<void> {
    let length = 0;
    for (const p of parts) length += p.length;
    const data = this.payloadBuffer(length);
    let at = 0;
    for (const p of parts) at += p.copy(data, at);
    return this.writeOwned(offset, data, fua);
  }

  async zero(offset: number, length: number, trim: boolean, fua = false): Promise<void> {
    await this.change(
      offset,
      length,
      async () => {
        const chunk = Buffer.alloc(Math.min(ZERO_CHUNK, length));
        for (let done = 0; done < length; done += chunk.length) {
          await this.primary.write(
            offset + done,
            chunk.subarray(0, Math.min(chunk.length, length - done)),
          );
        }
      },
      (seq, at) => ({ kind: 'zero', seq, at, offset, length, trim }),
    );
    if (fua) await this.primary.sync();
  }

  /** A client FLUSH: durable on the primary, then a flush point in the stream. */
  async flush(): Promise<void> {
    this.checkOpen();
    await this.primary.sync();
    if (this.queueing) this.enqueue({ kind: 'flush', seq: this.nextSeq++, at: Date.now() });
  }

  private async change(
    offset: number,
    length: number,
    apply: () => Promise<void>,
    entry: (seq: number, at: number) => Entry,
  ): Promise<boolean> {
    this.checkOpen();
    const first = Math.floor(offset / this.regionSize);
    const last = Math.floor((offset + length - 1) / this.regionSize);
    if (this.restorePending()) await this.ensureRestored(offset, length);
    for (let r = first; r <= last; r++) {
      for (let g = this.gates.get(r); g !== undefined; g = this.gates.get(r)) await g;
      this.busy[r]!++;
    }
    try {
      const header = this.markDirty(first, last);
      if (header !== undefined) await header;
      await apply();
    } catch (e) {
      this.release(first, last);
      throw e;
    }
    const now = Date.now();
    const queued = this.queueing;
    if (queued) {
      const e = entry(this.nextSeq++, now);
      for (let r = first; r <= last; r++) this.lastSeq[r] = e.seq;
      this.enqueue(e);
    } else {
      for (let r = first; r <= last; r++) this.needCopy.add(r);
      this.wakeWork();
    }
    for (let r = first; r <= last; r++) this.lastWriteMs[r] = now;
    this.release(first, last);
    return queued;
  }

  private release(first: number, last: number): void {
    for (let r = first; r <= last; r++) {
      if (--this.busy[r]! === 0) {
        const w = this.idle.get(r);
        if (w !== undefined) {
          this.idle.delete(r);
          w();
        }
      }
    }
  }

  private checkOpen(): void {
    if (this.closed) {
      throw new HyperError('unavailable', 'ABORTED', 'The replicated device is closing');
    }
    if (this.persistError) throw this.persistError;
  }

  // ------------------------------------------------------------------ the dirty bitmap

  /**
   * Set the bits of regions first..last; what to wait for until they are durable in the
   * primary header. Undefined when they already are (a write to a region it dirtied before):
   * the write then goes on to the primary without yielding.
   */
  private markDirty(first: number, last: number): Promise<void> | undefined {
    const version = this.wanted + 1;
    let set = false;
    let need = 0;
    for (let r = first; r <= last; r++) {
      if (this.setBit(r, version)) set = true;
      need = Math.max(need, this.setVersion[r]!);
    }
    if (set) this.wanted = version;
    return need > this.durable ? this.persist(need) : undefined;
  }

  /**
   * Set the regions' bits in memory, each with the header version that will carry it: a
   * write to a region whose bit is set but not yet durable waits for that version
   * (markDirty), whoever set the bit. (A bit set without its version let a write reach the
   * primary while the header still said clean; a crash then lost the region from the next
   * resync.)
   */
  private setBits(regions: Iterable<number>): void {
    const version = this.wanted + 1;
    let set = false;
    for (const r of regions) if (this.setBit(r, version)) set = true;
    if (set) this.wanted = version;
  }

  /** Set region `r`'s bit unless it is set, for header `version`; whether it was unset. */
  private setBit(r: number, version: number): boolean {
    if (bitGet(this.dirty, r)) return false;
    bitSet(this.dirty, r, true);
    this.setVersion[r] = version;
    return true;
  }

  /**
   * Write the header with the current bitmaps and state, coalescing concurrent callers; resolves
   * once version `need` (default: everything so far) is durable.
   */
  private async persist(need?: number): Promise<void> {
    if (need === undefined) need = ++this.wanted;
    while (this.durable < need) {
      if (this.persistError) throw this.persistError;
      if (this.persisting) {
        await this.persisting.catch(() => undefined);
        continue;
      }
      const version = this.wanted;
      const next: PrimaryHeader = {
        ...this.header,
        seq: this.header.seq + 1,
        owner: this.owner,
        clean: this.clean,
        mode: this.mode,
        lastConsistent: this.lastConsistent,
        replicaCheckpoint: this.replicaCheckpoint,
        replicaEpoch: this.replicaEpoch,
        dirty: Buffer.from(this.dirty),
        unrestored: this.unrestoredLeft() > 0 ? Buffer.from(this.unrestored) : Buffer.alloc(0),
        ...(this.unrestoredLeft() > 0 ? {} : { lazy: false, restoreFrom: 0 }),
      };
      this.persisting = this.primary.writeHeader(next).then(
        () => {
          this.header = next;
          this.durable = Math.max(this.durable, version);
        },
        (e: unknown) => {
          this.persistError = toHyperError(e);
          this.log.error('could not write the primary header', {
            error: this.persistError.message,
          });
          throw this.persistError;
        },
      );
      try {
        await this.persisting;
      } finally {
        this.persisting = undefined;
      }
    }
  }

  /**
   * Clear the bits of regions whose every change is committed on the replica (and, unless
   * `now`, that were not written for clearDelayMs), then persist in the background.
   */
  private clearBits(now = false): void {
    const t = Date.now();
    let cleared = 0;
    for (let r = 0; r < this.regions; r++) {
      if (!bitGet(this.dirty, r)) continue;
      if (this.needCopy.has(r) || this.passPending.has(r) || this.busy[r]! > 0 || this.gates.has(r))
        continue;
      if (this.lastSeq[r]! > this.committedSeq) continue;
      if (!now && t - this.lastWriteMs[r]! < this.clearDelayMs) continue;
      if (this.volume === undefined && !now) continue;
      bitSet(this.dirty, r, false);
      cleared++;
    }
    if (cleared > 0 && !this.closed) void this.persist().catch(() => undefined);
  }

  // ------------------------------------------------------------------ the stream

  /** Changes held in memory for the replica: the queue, and what its shipper still holds. */
  private get poolBytes(): number {
    return this.queueBytes + (this.volume?.heldBytes ?? 0);
  }

  /** Wake the ship loop, and the resync loop when there are regions to copy or it is stopping. */
  private wakeWork(): void {
    this.work.wake();
    if (this.needCopy.size > 0 || this.closing || this.closed) this.resyncWork.wake();
  }

  private enqueue(e: Entry): void {
    this.queue.push(e);
    this.queueBytes += entryBytes(e);
    if (this.poolBytes > this.poolLimit && e.kind !== 'copy') {
      this.overflows++;
      this.log.warn('replication pool overflowed: resyncing by region', {
        poolBytes: this.poolLimit,
      });
      this.dropStream();
    }
    this.wakeWork();
  }

  /**
   * The pool is full (or the replica failed): forget the queued changes and resync their
   * regions instead. Their bits are set, so a crash before the resync loses nothing either.
   */
  private dropStream(): void {
    for (let i = this.queueHead; i < this.queue.length; i++) {
      const e = this.queue[i]!;
      for (const r of this.regionsOf(e)) this.needCopy.add(r);
    }
    for (const r of this.passPending) this.needCopy.add(r);
    this.passPending.clear();
    this.passAbort = true;
    this.queue = [];
    this.queueHead = 0;
    this.queueBytes = 0;
    this.queueing = false;
    this.consistentAfter = Infinity;
    this.wakeWork();
  }

  private regionsOf(e: Entry): number[] {
    if (e.kind === 'flush') return [];
    if (e.kind === 'copy') return [e.region];
    return this.regionsIn(e.offset, e.kind === 'write' ? e.data.length : e.length);
  }

  /** The regions bytes [offset, offset + length) touch. */
  private regionsIn(offset: number, length: number): number[] {
    const out: number[] = [];
    const last = Math.floor((offset + length - 1) / this.regionSize);
    for (let r = Math.floor(offset / this.regionSize); r <= last; r++) out.push(r);
    return out;
  }

  /** Apply the stream to the replica, in order. */
  private async shipLoop(): Promise<void> {
    let shippedAtOnce = 0;
    while (!this.closed) {
      if (this.volume === undefined) {
        await this.work.wait(1000);
        continue;
      }
      if (this.queueHead >= this.queue.length) {
        this.drained.wake();
        const wait = this.appliedSeq > this.committedSeq ? this.commitIntervalMs : 1000;
        await this.work.wait(wait);
        if (
          this.volume !== undefined &&
          this.appliedSeq > this.committedSeq &&
          Date.now() - this.lastCommitMs >= this.commitIntervalMs
        ) {
          this.requestCommit();
        }
        if (!this.closed) this.clearBits();
        continue;
      }
      const e = this.queue[this.queueHead]!;
      // A target that copies what it is given frees a recycled buffer once write() resolves.
      const copies = this.volume.copiesData === true;
      if (this.shipNow(e)) {
        // Taken at once: let the serving thread in now and then through a long backlog.
        if (++shippedAtOnce % SHIP_TURN === 0) await new Promise<void>((r) => setImmediate(r));
      } else {
        // (guard() inlined: a closure and a promise less per shipped change.)
        const v = this.volume;
        try {
          await this.apply(e);
        } catch (err) {
          await this.failedOp(err, v);
          continue;
        }
      }
      if (copies && e.kind === 'write') {
        if (e.recycle) this.recycled.give(e.data);
        else this.copies.give(e.data);
      } else if (copies && e.kind === 'copy') this.regionBuffers.give(e.data);
      // The entry may have been dropped meanwhile (an overflow empties the queue).
      if (this.queue[this.queueHead] === e) {
        this.queueHead++;
        this.queueBytes -= entryBytes(e);
        if (this.queueHead > 4096 && this.queueHead * 2 > this.queue.length) {
          this.queue = this.queue.slice(this.queueHead);
          this.queueHead = 0;
        }
      }
      if (
        Date.now() - this.lastCommitMs >= this.commitIntervalMs &&
        this.appliedSeq > this.committedSeq
      ) {
        this.requestCommit();
      }
    }
  }

  /**
   * Commit in the background while the stream goes on being applied (a commit waits for the
   * segment uploads in flight: shipping must not stop for it). One commit at a time; a request
   * during one starts another when it ends.
   */
  private requestCommit(): void {
    if (this.committing !== undefined) {
      this.commitAgain = true;
      return;
    }
    const v = this.volume;
    if (v === undefined) return;
    this.lastCommitMs = Date.now();
    this.commitStartedMs = this.lastCommitMs;
    this.committing = this.guard(() => this.commit(), v).then(() => {
      this.committing = undefined;
      this.commitStartedMs = undefined;
      if (this.commitAgain) {
        this.commitAgain = false;
        if (this.volume !== undefined && this.appliedSeq > this.committedSeq) this.requestCommit();
      }
    });
  }

  /** Wait for the commit in flight, then commit what is applied (settle, close). */
  private async commitNow(): Promise<void> {
    while (this.committing !== undefined) await this.committing;
    if (this.volume !== undefined && this.appliedSeq > this.committedSeq) {
      this.requestCommit();
      await this.committing;
    }
  }

  private async apply(e: Entry): Promise<void> {
    const v = this.volume!;
    this.pendingSince ??= e.at;
    // After a drop, the replica mixes times until the resync's last copy: record that first.
    if (this.consistentAfter === Infinity && !this.manifestOpen) await this.openInconsistentRange();
    switch (e.kind) {
      case 'write':
        await v.write(e.offset, e.data);
        this.shippedBytes += e.data.length;
        break;
      case 'zero':
        // The primary reads zeros after a trim as well, so the replica must too (a volume's
        // trim may leave partial blocks as they were).
        await v.writeZeroes(e.offset, e.length);
        break;
      case 'copy':
        await v.write(e.region * this.regionSize, e.data);
        this.shippedBytes += e.data.length;
        break;
      case 'flush': {
        this.appliedSeq = e.seq;
        // Flush points queued behind this one are committed together, at the last.
        let later = false;
        for (let i = this.queueHead + 1; i < this.queue.length && !later; i++)
          later = this.queue[i]!.kind === 'flush';
        if (!later) this.requestCommit();
        break;
      }
    }
    this.applied(e);
  }

  /**
   * Ship a queued write at once when the replica target takes it without waiting (the
   * worker's ring has room): what apply() does for it, without a promise. False when it must
   * go through apply().
   */
  private shipNow(e: Entry): boolean {
    const v = this.volume!;
    if (e.kind !== 'write' || v.tryWrite === undefined) return false;
    if (this.consistentAfter === Infinity && !this.manifestOpen) return false;
    this.pendingSince ??= e.at;
    if (!v.tryWrite(e.offset, e.data)) return false;
    this.shippedBytes += e.data.length;
    this.applied(e);
    return true;
  }

  /** Entry `e` is with the replica volume (not yet committed). */
  private applied(e: Entry): void {
    this.shippedIos++;
    this.appliedSeq = e.seq;
    const now = Date.now();
    const last = this.rate.at(-1);
    if (last === undefined || now - last.t >= RATE_SAMPLE_MS) {
      const bytes = e.kind === 'write' || e.kind === 'copy' ? e.data.length : 0;
      this.rate.push({ t: now, bytes: this.shippedBytes - bytes });
      while (now - this.rate[0]!.t > RATE_WINDOW_MS) this.rate.shift();
    }
  }

  /** Commit what the replica volume holds; everything applied so far is then durable there. */
  private async commit(): Promise<void> {
    const v = this.volume!;
    const covered = this.appliedSeq;
    const oldest = this.pendingSince;
    this.pendingSince = undefined;
    const info: CheckpointInfo = await v.flush();
    this.lastCommitMs = Date.now();
    if (covered > this.committedSeq) this.commits++;
    this.committedSeq = Math.max(this.committedSeq, covered);
    if (oldest !== undefined) this.lagSample((this.lastCommitMs - oldest) / 1000);
    this.replicaCheckpoint = info.checkpoint;
    if (covered >= this.consistentAfter) {
      this.lastConsistent = info.checkpoint;
      this.lastConsistentTime = info.time;
      if (this.manifestOpen) await this.closeInconsistentRange(info.checkpoint);
      if (this.fullPass) this.fullPass = false;
    }
    this.clearBits();
    void this.persist().catch(() => undefined);
  }

  private lagSample(s: number): void {
    this.lagSamples.push(s);
    if (this.lagSamples.length > 4096) this.lagSamples.splice(0, 2048);
  }

  /** Run a replica operation; on failure drop the replica and resync once it is back. */
  private async guard(op: () => Promise<void>, v = this.volume): Promise<boolean> {
    try {
      await op();
      return true;
    } catch (e) {
      await this.failedOp(e, v);
      return false;
    }
  }

  /** An operation on replica `v` failed with `e`: give the replica up (once). */
  private async failedOp(e: unknown, v: ReplicaTarget | undefined): Promise<void> {
    // A failure of a replica already given up (or of none) was handled then.
    if (v === undefined || this.volume !== v) return;
    await this.fail(toHyperError(e));
  }

  private async fail(err: HyperError): Promise<void> {
    this.replicaError = `${err.code}: ${err.message}`;
    this.log.warn('replica failed: primary continues, changed regions will be resynced', {
      error: err.message,
      code: err.code,
    });
    const v = this.volume;
    this.volume = undefined;
    // Whatever the replica may not have committed is resynced.
    this.dropStream();
    for (let r = 0; r < this.regions; r++) {
      if (bitGet(this.dirty, r) && (this.lastSeq[r]! > this.committedSeq || this.busy[r]! > 0))
        this.needCopy.add(r);
    }
    this.appliedSeq = this.committedSeq;
    this.pendingSince = undefined;
    this.manifestOpen = false;
    void this.persist().catch(() => undefined);
    await v?.close().catch(() => undefined);
    // (After a crash, nothing may reopen the replica: a new writer may be taking it over.)
    if (!this.closing && !this.closed) void this.connect(false);
  }

  /** Open the replica, retrying with backoff unless `once` (start-up reports its error). */
  private connect(once: boolean): Promise<void> {
    // One loop at a time: two would each open the replica, the later one fencing the
    // earlier one's handle with changes applied to it but never committed.
    if (this.connecting) {
      this.retryNow = true;
      this.backoff.wake();
      return this.connectRun;
    }
    this.connecting = true;
    const run = this.connectLoop(once);
    this.connectRun = run.catch(() => undefined);
    return run;
  }

  private async connectLoop(once: boolean): Promise<void> {
    // (`connecting` is cleared as the loop returns, in the same turn as it sets `volume`: a
    // failure of the replica just opened may start the next loop at once. Cleared a turn
    // later, as it once was, it let two loops run.)
    try {
      let wait = this.retryMs;
      for (;;) {
        if (this.closed) return;
        this.retryNow = false;
        try {
          const v = await this.o.openReplica();
          try {
            // A baseline moved past checkpoints whose regions are to be copied again is
            // durable (with their bits) before anything commits (the epoch already is).
            if (await this.checkReplica(v)) await this.persist();
          } catch (e) {
            await v.close().catch(() => undefined);
            throw e;
          }
          if (this.closed) {
            // Stopped while opening: a crash leaves the replica as a killed process would.
            await (this.crashed && v.kill ? v.kill() : v.close()).catch(() => undefined);
            return;
          }
          this.volume = v;
          this.overwriteOthers = false;
          this.diverged = false;
          this.replicaError = null;
          this.lastCommitMs = Date.now();
          this.wakeWork();
          return;
        } catch (e) {
          const err = toHyperError(e);
          const fatal = err.kind === 'invalid' || err.kind === 'data' || err.code === 'FENCED';
          if (once) throw err;
          this.replicaError = `${err.code}: ${err.message}`;
          if (fatal) {
            // Retrying cannot help (another replicator owns the replica, or it is not this
            // primary's): the primary goes on alone, status shows why, resync tries again.
            this.log.error('replica given up: primary continues, changes are tracked by region', {
              error: err.message,
              code: err.code,
            });
            return;
          }
          if (this.closing || this.closed) return;
          this.log.warn('replica unavailable, retrying', { error: err.message, retryInMs: wait });
          if (!this.retryNow) await this.backoff.wait(wait);
          if (this.closing || this.closed) return;
          wait = Math.min(wait * 2, 30_000);
        }
      }
    } finally {
      this.connecting = false;
    }
  }

  /**
   * The replica is this primary's, the size agrees, and nobody else moved it. True when the
   * baseline (the replica checkpoint this primary's state is known against) moved to the
   * replica's head: the regions changed since are marked to be copied again.
   */
  private async checkReplica(v: ReplicaTarget): Promise<boolean> {
    const tagged = await readTagged(this.o.replicaStore);
    const m = tagged?.manifest;
    if (m === undefined || m.uuid !== this.header.uuid) {
      throw new HyperError(
        'conflict',
        'REPLICA_MISMATCH',
        m === undefined
          ? `${v.info.url} has no replica manifest: it is not the replica of primary ${this.header.uuid}`
          : `${v.info.url} holds the replica of device ${m.uuid}, not of this primary (${this.header.uuid})`,
        {
          suggestion:
            'Check --replica and --uuid; format the primary again to start a new replica.',
        },
      );
    }
    if (v.info.size !== this.size) {
      throw new HyperError(
        'conflict',
        'REPLICA_MISMATCH',
        `The replica ${v.info.url} is ${v.info.size} bytes, the primary ${this.size}`,
        {
          suggestion: 'The replica was resized by hand: resize it back with "hyper file set-len".',
        },
      );
    }
    // Another replicator stamped the manifest since this primary last did (a failover took
    // the replica over): this one is fenced, even when the other has committed nothing yet
    // and its lease lapsed, which is how this one could open the replica again (its new
    // lease epoch is above the stamp, so the stamp alone would not stop it). Unless the
    // operator chose this primary (a takeover, a full resync after this refusal).
    const stamped = m.writerEpoch ?? 0;
    if (stamped > this.replicaEpoch && !this.overwriteOthers) {
      this.diverged = true;
      throw new HyperError(
        'conflict',
        'FENCED',
        `Another replicator (lease epoch ${stamped}) took the replica ${v.info.url} over after this primary last shipped to it (epoch ${this.replicaEpoch}): the two primaries diverged`,
        { key: REPLICA_KEY, suggestion: DIVERGED_SUGGESTION },
      );
    }
    // What the replica holds beyond this primary's last commit is judged first: a replicator
    // refused as diverged must not stamp the manifest either. (A full pass that overwrites
    // the others copies every region: nothing to judge, but the baseline moves all the same,
    // so that a reconnect before its first commit does not find the others' checkpoints.)
    const head = v.info.checkpoint;
    const known = this.replicaCheckpoint;
    let recopy: Set<number> | 'full' | undefined;
    if (known > 0 && head !== known) {
      recopy =
        this.fullPass && this.overwriteOthers ? new Set() : await this.reconcile(known, head);
    }
    // The epoch is durable on the primary before the manifest carries it: after a crash
    // between the two, the stamp is still one this primary recorded (not taken for another
    // replicator's), and the checkpoints committed under it are known for its own.
    const epoch = v.info.writerEpoch ?? 0;
    if (epoch !== this.replicaEpoch) {
      this.replicaEpoch = epoch;
      await this.persist();
    }
    // Stamp the manifest with this lease's epoch: a replicator it took over from can no
    // longer change it (its next write is FENCED).
    this.manifest = await updateManifest(
      this.o.replicaStore,
      v.info.writerEpoch ?? 0,
      (x) => x,
      tagged,
    );
    this.manifestOpen = m.inconsistent.some((r) => r.to === null);
    let moved = false;
    if (recopy === 'full') this.resync(true);
    else if (recopy !== undefined) {
      // From now on the checkpoints up to the head are accounted for: the next reconnect
      // judges only what comes after (under this replicator's epochs, or another's).
      this.setBits(recopy);
      for (const r of recopy) this.needCopy.add(r);
      if (recopy.size > 0) this.consistentAfter = Infinity;
      this.replicaCheckpoint = head;
      moved = true;
      this.wakeWork();
    }
    if (this.lastConsistent === 0 && !this.manifestOpen && this.needCopy.size === 0) {
      this.lastConsistent = head;
    }
    if (this.lastConsistent > 0) this.lastConsistentTime ??= v.info.checkpointTime;
    return moved;
  }

  /**
   * The replica's head is not checkpoint `known`, the last one this primary's replicator
   * committed. Checkpoints after it under the same lease epoch were its own (a commit in flight
   * at a crash or an outage) or, on a primary copied during a failover, those of the replicator
   * it was copied from: the regions they changed are copied again, so the replica becomes this
   * primary's image and never a mix of two. So are those under the epoch the header records
   * (the replicator writes it before its first commit under it: one killed during that commit).
   * A checkpoint under any other epoch that changed content was shipped by another replicator
   * from another primary (split brain): refused (FENCED, fatal; a full pass asked for earlier
   * does not change that), unless the operator chose this primary (`overwriteOthers`: a
   * takeover at start, or a full resync asked for after this refusal), and then its regions
   * are copied again like the others. One that changed nothing (a compaction run while the
   * replicator was away) is fine.
   * A replica older than `known`, a history that does not lead back to it or cannot be read
   * (damaged; a store that fails a read throws instead, and the connect is tried again): a
   * full resync. Returns the regions to copy again, or 'full'; the caller acts on it once
   * the manifest carries this replicator's epoch.
   */
  private async reconcile(known: number, head: number): Promise<Set<number> | 'full'> {
    const store = this.o.replicaStore;
    let changed: ChangedExtent[];
    let foreign = 0;
    try {
      if (head < known) throw new Error(`the replica is at checkpoint ${head}, before ${known}`);
      const ours = await readCheckpointHead(store, known);
      for (let c = head; c > known;) {
        const h = await readCheckpointHead(store, c);
        const others = h.epoch !== ours.epoch && h.epoch !== this.replicaEpoch;
        if (others && this.overwriteOthers) foreign++;
        else if (others) {
          const moved = await diffCheckpoints(
            store,
            { checkpoint: h.prevCheckpoint },
            { checkpoint: c },
          );
          if (moved.length > 0) {
            this.diverged = true;
            throw diverged(store.url, known, ours.epoch, c, h.epoch);
          }
        }
        if (h.prevCheckpoint >= c) throw new Error(`checkpoint ${c} has no earlier one`);
        c = h.prevCheckpoint;
        if (c < known) throw new Error(`the history from ${head} does not pass ${known}`);
      }
      // (A full pass copies every region anyway.)
      changed = this.fullPass
        ? []
        : await diffCheckpoints(store, { checkpoint: known }, { checkpoint: head });
    } catch (e) {
      // (A store that failed a read says nothing about the history: the connect is retried.)
      if (isHyperError(e, 'FENCED') || (isHyperError(e) && e.kind === 'unavailable')) throw e;
      this.log.warn('the replica changed behind the replicator: full resync', {
        recorded: known,
        found: head,
        error: e instanceof Error ? e.message : String(e),
      });
      return 'full';
    }
    const regions = new Set(changed.flatMap((x) => this.regionsIn(x.offset, x.length)));
    if (regions.size === 0) return regions;
    this.log.info('the replica has commits after the last one recorded: copying their regions', {
      recorded: known,
      found: head,
      regions: regions.size,
      // Checkpoints of another replicator, overwritten because this one took the replica over.
      ...(foreign > 0 ? { takenOver: foreign } : {}),
    });
    return regions;
  }

  /**
   * Open an inconsistent range at the checkpoint after the volume's current one (a commit in
   * flight lands in it: conservative). Manifest updates run one at a time, each on the latest.
   */
  private async openInconsistentRange(): Promise<void> {
    const from = this.volume!.info.checkpoint + 1;
    this.manifestOpen = true;
    await this.updateManifest((m) => ({
      ...m,
      inconsistent: [...m.inconsistent, { from, to: null }],
    }));
  }

  /** Checkpoint `consistent` is a consistent image: close the open ranges that start at or before it. */
  private async closeInconsistentRange(consistent: number): Promise<void> {
    await this.updateManifest((m) => ({
      ...m,
      inconsistent: m.inconsistent.map((r) =>
        r.to === null && r.from <= consistent ? { from: r.from, to: consistent } : r,
      ),
    }));
  }

  private updateManifest(change: (m: ReplicaManifest) => ReplicaManifest): Promise<void> {
    const epoch = this.volume?.info.writerEpoch ?? 0;
    const run = this.manifestChain.then(async () => {
      this.manifestOpen = change(this.manifest!.manifest).inconsistent.some((r) => r.to === null);
      this.manifest = await updateManifest(this.o.replicaStore, epoch, change, this.manifest);
      this.manifestOpen = this.manifest.manifest.inconsistent.some((r) => r.to === null);
    });
    this.manifestChain = run.catch(() => undefined);
    return run;
  }

  // ------------------------------------------------------------------ resync

  /** Resync the dirty regions (or, with `full`, every region) by copying them. */
  resync(full = false): { regions: number } {
    this.checkOpen();
    for (let r = 0; r < this.regions; r++) if (full || bitGet(this.dirty, r)) this.needCopy.add(r);
    if (full) this.fullPass = true;
    // The operator keeps this primary's data over the other's (see the diverged error).
    if (full && this.diverged) this.overwriteOthers = true;
    // Regions to copy make the replica inconsistent until their pass commits. With none (no
    // dirty region), the stream stays in order: marking it inconsistent would leave the mode
    // at forward-part for good, since no pass would ever end to make it consistent again.
    if (this.needCopy.size > 0) this.consistentAfter = Infinity;
    // A replica given up for good (FENCED, say) is tried again when asked to, and one being
    // retried is tried now rather than after its backoff (up to 30 s).
    if (this.volume === undefined && !this.connecting && !this.closing) void this.connect(false);
    else if (this.volume === undefined) {
      this.retryNow = true;
      this.backoff.wake();
    }
    this.wakeWork();
    return { regions: this.needCopy.size };
  }

  private async resyncLoop(): Promise<void> {
    while (!this.closed) {
      if (this.needCopy.size === 0 || this.volume === undefined || this.closing) {
        await this.resyncWork.wait(1000);
        continue;
      }
      // A pass: switch the stream on, then append a copy of each region.
      const pass = [...this.needCopy].sort((a, b) => a - b);
      this.needCopy.clear();
      this.setBits(pass);
      for (const r of pass) this.passPending.add(r);
      this.passAbort = false;
      this.passTotal = pass.length;
      this.passCopied = 0;
      this.queueing = true;
      this.consistentAfter = Infinity;
      this.log.info('resync pass', { regions: pass.length, full: this.fullPass });
      // Bits of regions to copy are durable before their copy can be committed.
      await this.persist().catch(() => undefined);
      let lastSeq = 0;
      for (const r of pass) {
        if (this.passAbort || this.closed) break;
        while (
          // Copies leave half of the pool to client writes, which would overflow it otherwise.
          this.poolBytes + this.regionSize > this.poolLimit / 2 &&
          !this.passAbort &&
          !this.closed
        ) {
          await this.drained.wait(100);
        }
        if (this.passAbort || this.closed) break;
        if (this.restorePending()) await this.ensureRestored(r * this.regionSize, 1);
        lastSeq = await this.copyRegion(r);
        this.passCopied++;
      }
      if (!this.passAbort && !this.closed) {
        this.consistentAfter = lastSeq === 0 ? this.nextSeq - 1 : lastSeq;
        if (this.passPending.size > 0)
          this.log.warn('resync pass left regions', { regions: this.passPending.size });
        this.log.info('resync pass queued', { regions: pass.length });
      }
      this.wakeWork();
    }
  }

  /** Read region r while no write to it is in flight and append its copy to the stream. */
  private async copyRegion(r: number): Promise<number> {
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    for (let g = this.gates.get(r); g !== undefined; g = this.gates.get(r)) await g;
    this.gates.set(r, gate);
    try {
      if (this.busy[r]! > 0) await new Promise<void>((resolve) => this.idle.set(r, resolve));
      const start = r * this.regionSize;
      const length = Math.min(this.regionSize, this.size - start);
      const data = await this.primary.readInto(this.regionBuffers.take(length), start);
      if (!this.passPending.has(r)) {
        this.regionBuffers.give(data);
        return 0; // an overflow handed it back to needCopy
      }
      const seq = this.nextSeq++;
      this.lastSeq[r] = seq;
      this.passPending.delete(r);
      if (isZero(data)) {
        this.regionBuffers.give(data);
        this.enqueue({
          kind: 'zero',
          seq,
          at: Date.now(),
          offset: start,
          length: data.length,
          trim: false,
        });
      } else {
        this.enqueue({ kind: 'copy', seq, at: Date.now(), region: r, data });
      }
      return seq;
    } finally {
      this.gates.delete(r);
      open();
    }
  }

  // ------------------------------------------------------------------ reverse

  private unrestoredLeft(): number {
    return this.regions - this.restoredCount;
  }

  /** Regions left to restore, or restores whose header is not yet durable. */
  private restorePending(): boolean {
    return this.unrestoredLeft() > 0 || this.restoring.size > 0;
  }

  private async ensureRestored(offset: number, length: number): Promise<void> {
    const first = Math.floor(offset / this.regionSize);
    const last = Math.floor((offset + length - 1) / this.regionSize);
    const waits: Promise<void>[] = [];
    // Also while a restore of the region is finishing: its bit is clear in memory before the
    // header saying so is durable, and a change must not reach the primary before that (a
    // crash would restore the region again over it).
    for (let r = first; r <= last; r++)
      if (bitGet(this.unrestored, r) || this.restoring.has(r))
        waits.push(this.restoreRegion(r, true));
    await Promise.all(waits);
  }

  private restoreRegion(r: number, urgent: boolean): Promise<void> {
    let p = this.restoring.get(r);
    if (p === undefined) {
      p = this.restoreRegionOnce(r, urgent).finally(() => this.restoring.delete(r));
      this.restoring.set(r, p);
    }
    return p;
  }

  private async restoreRegionOnce(r: number, urgent: boolean): Promise<void> {
    // Foreground requests may borrow a slot beyond the limit; the background pass may not.
    while (!urgent && this.restoreSlots <= 0 && !this.closed) await this.restoreSlotFree.wait(500);
    this.restoreSlots--;
    try {
      if (!bitGet(this.unrestored, r)) return;
      const start = r * this.regionSize;
      const data = await this.view!.read(start, Math.min(this.regionSize, this.size - start));
      await writeUnlessZeroAlready(this.primary, start, data);
      await this.primary.sync();
      bitSet(this.unrestored, r, false);
      this.restoredCount++;
      await this.persist();
    } finally {
      this.restoreSlots++;
      this.restoreSlotFree.wake();
    }
  }

  private async restoreLoop(): Promise<void> {
    // Passes until every region is restored: a region that failed (the replica unreachable)
    // is retried by the next pass, after a backoff, instead of waiting for a client to read it.
    const from = this.header.restoreFrom; // the header's is reset once the last region is in
    let wait = this.retryMs;
    for (let pass = 0; this.unrestoredLeft() > 0 && !this.closed; pass++) {
      if (pass > 0) {
        this.log.warn('lazy restore: retrying the regions that failed', {
          regions: this.unrestoredLeft(),
          retryInMs: wait,
        });
        await this.backoff.wait(wait);
        if (this.closed) break;
        wait = Math.min(wait * 2, 30_000);
      }
      const inflight = new Set<Promise<void>>();
      for (let r = 0; r < this.regions && !this.closed; r++) {
        if (!bitGet(this.unrestored, r)) continue;
        while (inflight.size >= this.recoverConcurrency && !this.closed)
          await Promise.race(inflight);
        const p: Promise<void> = this.restoreRegion(r, false)
          .catch((e: unknown) =>
            this.log.error('lazy restore of a region failed', {
              region: r,
              error: (e as Error).message,
            }),
          )
          .finally(() => inflight.delete(p));
        inflight.add(p);
      }
      await Promise.allSettled(inflight);
    }
    if (this.unrestoredLeft() === 0 && !this.closed) {
      this.log.info('restore complete', { from });
      await this.persist().catch(() => undefined);
      await this.view?.close().catch(() => undefined);
      this.view = undefined;
    }
  }

  // ------------------------------------------------------------------ status

  get mode(): ReplicaMode {
    if (this.unrestoredLeft() > 0) return 'reverse-full';
    if (this.fullPass) return 'forward-full';
    if (
      this.needCopy.size > 0 ||
      this.passPending.size > 0 ||
      this.committedSeq < this.consistentAfter
    )
      return 'forward-part';
    return 'logging';
  }

  status(): ReplicaStatus {
    const now = Date.now();
    let lagBytes = 0;
    let lagIos = 0;
    let oldest: number | undefined;
    for (let i = this.queueHead; i < this.queue.length; i++) {
      const e = this.queue[i]!;
      lagBytes += e.kind === 'write' || e.kind === 'copy' ? e.data.length : 0;
      lagIos++;
      oldest ??= e.at;
    }
    if (this.pendingSince !== undefined) oldest = Math.min(oldest ?? now, this.pendingSince);
    const sorted = [...this.lagSamples].sort((a, b) => a - b);
    const pct = (p: number): number =>
      sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
    const since = this.rate.find((x) => now - x.t <= RATE_WINDOW_MS);
    const bytesPerSecond =
      since === undefined
        ? 0
        : (this.shippedBytes - since.bytes) / (Math.max(1, now - since.t) / 1000);
    const pendingCopy = this.needCopy.size + this.passPending.size;
    return {
      uuid: this.header.uuid,
      mode: this.mode,
      deviceSize: this.size,
      regionSize: this.regionSize,
      replicaUrl: this.header.replicaUrl,
      live: true,
      replica: {
        connected: this.volume !== undefined,
        error: this.replicaError,
        checkpoint: this.replicaCheckpoint,
        lastConsistentCheckpoint: this.lastConsistent,
        lastConsistentTime: this.lastConsistentTime?.toISOString() ?? null,
        commitSeconds:
          this.commitStartedMs === undefined ? null : (now - this.commitStartedMs) / 1000,
      },
      lag: {
        bytes: lagBytes,
        ios: lagIos,
        seconds: oldest === undefined ? 0 : (now - oldest) / 1000,
        p50Seconds: pct(0.5),
        p99Seconds: pct(0.99),
      },
      pool: { bytes: this.poolBytes, limit: this.poolLimit, overflows: this.overflows },
      dirtyRegions: bitCount(this.dirty, this.regions),
      regions: this.regions,
      resync:
        pendingCopy > 0 || this.mode !== 'logging'
          ? { pending: pendingCopy, copied: this.passCopied, total: this.passTotal }
          : null,
      restore:
        this.unrestoredLeft() > 0
          ? {
              from: this.header.restoreFrom,
              restored: this.restoredCount,
              total: this.regions,
              lazy: this.header.lazy,
            }
          : null,
      shipped: {
        bytes: this.shippedBytes,
        ios: this.shippedIos,
        checkpoints: this.commits,
        bytesPerSecond,
      },
    };
  }

  /** Wait until everything queued so far is committed on the replica (tests, `status --wait`). */
  async settle(timeoutMs = 60_000): Promise<boolean> {
    const target = this.nextSeq - 1;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.mode === 'logging' && this.committedSeq >= target && this.needCopy.size === 0)
        return true;
      this.wakeWork();
      // A timer, not the drained signal: two loops waking each other would starve I/O.
      await sleep(25);
      if (this.volume !== undefined && this.queueHead >= this.queue.length) await this.commitNow();
    }
    return false;
  }
}

/** The granularity at which a restore tells zeros from data (one page, one data block). */
export const RESTORE_BLOCK = 4096;

/**
 * Restore `data` to the primary at `offset`, block by block: runs holding data are written;
 * all-zero runs are written only where the primary does not already read as zeros, so a
 * fresh sparse file stays sparse inside regions that hold data too, and a resumed restore
 * does not rewrite the zeros it already has.
 */
export async function writeUnlessZeroAlready(
  primary: PrimaryFile,
  offset: number,
  data: Buffer,
): Promise<void> {
  for (let i = 0; i < data.length;) {
    const zero = isZero(data.subarray(i, i + RESTORE_BLOCK));
    let j = i + RESTORE_BLOCK;
    while (j < data.length && isZero(data.subarray(j, j + RESTORE_BLOCK)) === zero)
      j += RESTORE_BLOCK;
    j = Math.min(j, data.length);
    const run = data.subarray(i, j);
    if (!zero || !isZero(await primary.read(offset + i, run.length)))
      await primary.write(offset + i, run);
    i = j;
  }
}

/** Another replicator changed the replica after this primary's last commit (split brain). */
function diverged(url: string, known: number, ours: number, c: number, theirs: number): HyperError {
  return new HyperError(
    'conflict',
    'FENCED',
    `Another replicator shipped to the replica ${url} after this primary's last commit (checkpoint ${known}, lease epoch ${ours}; checkpoint ${c}, epoch ${theirs}): the two primaries diverged`,
    { suggestion: DIVERGED_SUGGESTION },
  );
}

const DIVERGED_SUGGESTION =
  'Keep the primary whose data is wanted. To make this one the source again, run "hyper replica resync --full" against its running replicator, or start it with "hyper replica serve --force" (the other\'s changes are copied over); otherwise stop this replicator.';
