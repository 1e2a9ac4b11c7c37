/**
 * The write-ahead log: every acknowledged write is durable in a WAL object before its reply,
 * so acknowledging a write (or an NBD FLUSH) costs one small PUT instead of a segment and a
 * head CAS. Concurrent writes share one object (group commit): while a batch is in flight,
 * new entries gather for the next one. Records are written create-only with a gap-free
 * sequence (keys.ts `walKey`), which also fences: a writer that takes the volume over claims
 * the next sequence number, so an older writer's next batch fails.
 *
 * A `WalSession` is one writer's use of the log: replay what the head does not cover (in
 * order, refusing gaps), claim the fence, append, and delete records once a committed
 * checkpoint covers them.
 */
import {
  HyperError,
  dataError,
  isHyperError,
  toHyperError,
  rethrowUnavailable,
  unlessUnavailable,
} from '../../errors.js';
import { DecodeError } from '../codec/binary.js';
import type { HeadRecord } from '../codec/head.js';
import { decodeWal, encodeWal, type WalEntry, type WalRecord } from '../codec/wal.js';
import { parseWalKey, walKey, walPrefix } from '../keys.js';
import type { ObjectStore } from '../store/types.js';
import { copyData, copyDataInto, type Data } from './write-buffer.js';
import { CONFLICT_RETRIES, type Logger } from './types.js';

/**
 * The head a writer opening with `requested` (its --wal-url, if any) commits: a volume that
 * logs somewhere keeps logging there; it cannot be opened with another log, which would skip
 * the writes still waiting in its own.
 */
export function withWalUrl(head: HeadRecord, requested: string | undefined): HeadRecord {
  if (requested && head.walUrl && requested !== head.walUrl) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `The volume logs to ${head.walUrl}, not ${requested}`,
      {
        suggestion:
          'Open it with its own WAL URL (or none): it may hold writes that must be replayed first.',
      },
    );
  }
  const walUrl = requested ?? head.walUrl;
  if (walUrl && head.seal) {
    // WAL records carry written data as it is: they would hold an encrypted volume's data
    // in the clear.
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      'Encrypted volumes cannot log to a WAL yet',
      {
        suggestion: 'Serve the volume without --wal-url (client FLUSH then commits a checkpoint).',
      },
    );
  }
  return walUrl ? { ...head, walUrl } : head;
}

/** Keys per DeleteObjects request when trimming. */
const DELETE_BATCH = 1000;

/** WAL sequence numbers present for a volume, ascending. */
export async function listWal(store: ObjectStore, uuid: string): Promise<number[]> {
  const seqs: number[] = [];
  for await (const page of store.list(walPrefix(uuid))) {
    for (const o of page.objects) {
      const s = parseWalKey(uuid, o.key);
      if (s !== undefined) seqs.push(s);
    }
  }
  return seqs.sort((a, b) => a - b);
}

/**
 * Where a damaged or missing WAL record leads: a writer cannot replay past it, so until the
 * log is cut there, the volume does not open for writing.
 */
export const WAL_REPAIR_SUGGESTION =
  'Run `hyper file repair` on the volume: it names the records of its write-ahead log that cannot be replayed, and with --apply drops them and every record after them (their acknowledged writes are lost), so that the volume opens again with the writes logged before them.';

export async function readWal(store: ObjectStore, uuid: string, seq: number): Promise<WalRecord> {
  const key = walKey(uuid, seq);
  let body: Buffer;
  try {
    body = (await store.get(key)).body;
  } catch (e) {
    if (isHyperError(e, 'OBJECT_NOT_FOUND'))
      throw dataError(
        'MISSING_OBJECT',
        `${store.url}${key}`,
        `WAL record ${seq} is missing`,
        WAL_REPAIR_SUGGESTION,
      );
    throw e;
  }
  try {
    const r = decodeWal(body);
    if (r.uuid !== uuid || r.seq !== seq)
      throw new DecodeError('record belongs to another volume or sequence');
    return r;
  } catch (e) {
    if (e instanceof DecodeError)
      throw dataError(
        'CORRUPT_OBJECT',
        `${store.url}${key}`,
        `WAL record is damaged: ${e.message}`,
        WAL_REPAIR_SUGGESTION,
      );
    throw e;
  }
}

/**
 * Whether `rec` was appended right after `prev` (the record numbered one below it, as read
 * in this replay): an error naming `prev` when it was not. Each record says which epoch its
 * predecessor had when it was written (`prevEpoch`); for records without it, writers append
 * in epoch order (a newer one claims a number before it logs, an older one cannot append past
 * the claim), so an older epoch after a newer one tells the same. Either way `prev` is not
 * the record that was there: that one was lost and its number taken since (a takeover's
 * claim, or an older writer's append, that landed late in the hole), and the writes logged
 * from `prev` on cannot be replayed in order. `prev` is where to cut the log.
 */
function linkBroken(
  store: ObjectStore,
  uuid: string,
  prev: WalRecord,
  rec: WalRecord,
): HyperError | undefined {
  const said = rec.prevEpoch;
  if (said === undefined ? rec.epoch >= prev.epoch : said === prev.epoch) return undefined;
  const why =
    said === undefined
      ? `is followed by record ${rec.seq} of an older writer (epoch ${rec.epoch})`
      : `is not the record that record ${rec.seq} (epoch ${rec.epoch}) was appended after (one of epoch ${said})`;
  return dataError(
    'CORRUPT_OBJECT',
    `${store.url}${walKey(uuid, prev.seq)}`,
    `WAL record ${prev.seq} (epoch ${prev.epoch}) ${why}: the record logged at ${prev.seq} was lost and its number taken since, so the writes logged from ${prev.seq} on cannot be replayed`,
    WAL_REPAIR_SUGGESTION,
  );
}

/** The log beyond a head, as the next writer would replay it. */
export interface WalTail {
  /** Records past the head's, in order, that read whole up to the first bad one. */
  replayable: number[];
  /**
   * The first record a writer cannot replay: damaged, or missing from the sequence (the log
   * jumps over it). Undefined when the whole tail replays.
   */
  bad?: { seq: number; key: string; kind: 'corrupt' | 'missing'; message: string };
  /** The records from the bad one on, in order: what cutting the log there drops. */
  dropped: number[];
}

/**
 * Read every record past `covered` (the head's WAL sequence) as a replay would, and say where
 * the first one that cannot be replayed is. Only the store failing is an error; damage is
 * the answer.
 */
export async function inspectWal(
  store: ObjectStore,
  uuid: string,
  covered: number,
  signal?: AbortSignal,
): Promise<WalTail> {
  const all = (await listWal(store, uuid)).filter((q) => q > covered);
  const replayable: number[] = [];
  let prev: WalRecord | undefined;
  for (let i = 0; i < all.length; i++) {
    signal?.throwIfAborted();
    const q = all[i] as number;
    const want = covered + 1 + i;
    if (q !== want) {
      return {
        replayable,
        bad: {
          seq: want,
          key: `${store.url}${walKey(uuid, want)}`,
          kind: 'missing',
          message: `WAL record ${want} is missing (the log jumps from ${want - 1} to ${q}): the writes logged from there on cannot be replayed`,
        },
        dropped: all.slice(i),
      };
    }
    let rec: WalRecord;
    try {
      rec = await readWal(store, uuid, q);
    } catch (e) {
      if (!(isHyperError(e) && e.kind === 'data')) throw e;
      return {
        replayable,
        bad: {
          seq: q,
          key: e.key ?? `${store.url}${walKey(uuid, q)}`,
          kind: isHyperError(e, 'MISSING_OBJECT') ? 'missing' : 'corrupt',
          message: e.message,
        },
        dropped: all.slice(i),
      };
    }
    const e = prev && linkBroken(store, uuid, prev, rec);
    if (e) {
      replayable.pop();
      return {
        replayable,
        bad: {
          seq: all[i - 1] as number,
          key: e.key as string,
          kind: 'corrupt',
          message: e.message,
        },
        dropped: all.slice(i - 1),
      };
    }
    prev = rec;
    replayable.push(q);
  }
  return { replayable, dropped: [] };
}

/**
 * inspectWal from `head`, confirmed. A live writer trims records once a checkpoint covers
 * them, so a record found damaged or gone counts only if the head, read again (`reread`:
 * undefined when it cannot be read as a head), is the one the log was read from; if it moved,
 * the log is read again from the new one, up to `attempts` times. A head that moved every
 * time is a writer committing (and covering the log) as it is read: nothing is reported then.
 */
export async function settledWalTail(
  walStore: ObjectStore,
  head: HeadRecord,
  reread: () => Promise<HeadRecord | undefined>,
  attempts: number,
  signal?: AbortSignal,
): Promise<WalTail> {
  let h = head;
  for (let attempt = 1; attempt <= attempts; attempt++) {
    const tail = await inspectWal(walStore, h.uuid, h.walSeq ?? 0, signal);
    if (tail.bad === undefined) return tail;
    const now = await reread();
    if (now === undefined || (now.epoch === h.epoch && (now.walSeq ?? 0) === (h.walSeq ?? 0)))
      return tail;
    h = now;
  }
  return { replayable: [], dropped: [] };
}

/**
 * Cut the log where `tail` says it breaks: delete the records it drops, newest first, so that
 * an interrupted cut never leaves a gap below a record still there (run again, it goes on).
 */
export async function dropWalTail(store: ObjectStore, uuid: string, tail: WalTail): Promise<void> {
  for (const q of [...tail.dropped].reverse()) await store.delete([walKey(uuid, q)]);
}

const walFenced = (): HyperError =>
  new HyperError(
    'conflict',
    'FENCED',
    'Another writer took over the volume (its WAL claimed the next sequence); this writer accepts no more writes',
    { suggestion: 'Re-open the volume once the other writer is done.' },
  );

interface Batch {
  entries: WalEntry[];
  waiters: { resolve: () => void; reject: (e: unknown) => void; durable?: () => void }[];
  /** Bytes of written data the entries carry. */
  bytes: number;
  /** Slabs the entries' data was copied into (recorded entries): reused once it landed. */
  slabs: Buffer[];
}

/** Recorded entries' data is copied into slabs of this size (larger writes get their own). */
const WAL_SLAB = 1024 * 1024;
/** Slabs of landed batches kept for reuse. */
const WAL_SLABS_KEPT = 8;

/**
 * When writes are logged at FLUSH (`record`): data waiting for the next batch that starts a
 * batch in the background, and the amount at which writers wait for a batch to land.
 */
export const WAL_DEFER_BYTES = 4 * 1024 * 1024;
export const WAL_DEFER_MAX = 64 * 1024 * 1024;

/**
 * Appends batches with a gap-free sequence: one batch in flight at a time; a failed PUT is
 * retried under the same number by the next batch, and a number that turns out to be taken
 * is ours only if the object there carries our epoch (an earlier attempt that did land).
 */
export class WalWriter {
  /** The highest sequence known durable. */
  lastDurable: number;
  private pending: Batch | undefined;
  /** The batch being stored; settles with its error, or undefined once it landed. */
  private inFlight: Promise<unknown> | undefined;
  /** Bytes of data in the pending batch and the one in flight (recorded entries). */
  private heldBytes = 0;
  /**
   * The slab the pending batch's data is being copied into, and how far. Memory used before
   * (a landed batch's) takes a copy without the page faults of fresh memory: a fresh 4 KiB
   * buffer per write cost more than the copy.
   */
  private slab: Buffer | undefined;
  private slabAt = 0;
  private readonly freeSlabs: Buffer[] = [];
  /** Set when another writer claimed a sequence: nothing more is accepted. */
  fenced: HyperError | undefined;

  constructor(
    readonly store: ObjectStore,
    readonly uuid: string,
    private readonly epoch: number,
    lastSeq: number,
    /**
     * Entries are recorded (`record`) and made durable by `sync` (NBD FLUSH), not each before
     * its write's reply: a batch that fails keeps its entries for the next one.
     */
    readonly deferred = false,
  ) {
    this.lastDurable = lastSeq;
  }

  /**
   * Keep `entry` (its data the caller's to keep unchanged) for the next batch, which `sync`
   * sends. A batch starts in the background once WAL_DEFER_BYTES wait; past WAL_DEFER_MAX
   * held, the returned promise (to wait for) settles when the batch in flight does.
   */
  record(entry: WalEntry, data?: Data): Promise<void> | undefined {
    if (this.fenced) return Promise.reject(this.fenced);
    const p = (this.pending ??= newBatch());
    const bytes = data === undefined ? 0 : entry.length;
    if (data !== undefined) entry.data = this.copyIn(p, data, bytes);
    p.entries.push(entry);
    p.bytes += bytes;
    this.heldBytes += bytes;
    if (!this.inFlight && p.bytes >= WAL_DEFER_BYTES) this.send();
    if (this.heldBytes < WAL_DEFER_MAX || !this.inFlight) return undefined;
    return this.inFlight.then(() => undefined);
  }

  /** A copy of `data` for the pending batch `p`, in its slab where it fits. */
  private copyIn(p: Batch, data: Data, length: number): Buffer {
    if (length > WAL_SLAB / 4) return copyData(data, length);
    if (!this.slab || this.slabAt + length > this.slab.length) {
      this.slab = this.freeSlabs.pop() ?? Buffer.allocUnsafeSlow(WAL_SLAB);
      this.slabAt = 0;
      p.slabs.push(this.slab);
    }
    const out = this.slab.subarray(this.slabAt, this.slabAt + length);
    copyDataInto(data, out);
    this.slabAt += length;
    return out;
  }

  /** The entries recorded and not yet durable (deferred): see `dropCovered`. */
  waiting(): ReadonlySet<WalEntry> {
    return new Set(this.pending?.entries ?? []);
  }

  /**
   * `covered` (entries `waiting` returned) are in a committed checkpoint now: the WAL's store
   * was full and the volume took them. Those still at the front of the pending batch (in
   * order; one that a batch stored meanwhile is gone from it already) need no record any
   * more, and their memory goes with them: while the log stays full, it no longer holds
   * every write since it filled.
   */
  dropCovered(covered: ReadonlySet<WalEntry>): void {
    const p = this.pending;
    if (!p) return;
    let n = 0;
    let bytes = 0;
    for (; n < p.entries.length && covered.has(p.entries[n] as WalEntry); n++) {
      const e = p.entries[n] as WalEntry;
      if (e.data !== undefined) bytes += e.length;
    }
    if (n === 0) return;
    p.entries.splice(0, n);
    p.bytes -= bytes;
    this.heldBytes -= bytes;
    if (p.entries.length === 0 && p.waiters.length === 0) {
      // Nothing left to send (an empty record would only take a sequence number).
      this.pending = undefined;
      this.slab = undefined;
      return;
    }
    // Slabs are carved in order: those before the one the first kept entry uses are free.
    const slabOf = (e: WalEntry): number =>
      e.data === undefined ? -1 : p.slabs.findIndex((s) => s.buffer === e.data?.buffer);
    let keepFrom = p.slabs.length;
    for (const e of p.entries) {
      const i = slabOf(e);
      if (i >= 0) {
        keepFrom = i;
        break;
      }
    }
    // (The slab being carved stays: the next entries go there.)
    if (keepFrom === p.slabs.length && this.slab !== undefined && p.slabs.at(-1) === this.slab)
      keepFrom--;
    if (keepFrom > 0) p.slabs.splice(0, keepFrom);
  }

  /**
   * Resolves once the entry is durable in the WAL. `durable` (synchronous, not throwing) runs
   * in the step that raises `lastDurable` past the entry's record: a change applied there is
   * in every checkpoint whose `walSeq` covers its record, and in none that does not.
   */
  append(entry: WalEntry, durable?: () => void): Promise<void> {
    if (this.fenced) return Promise.reject(this.fenced);
    return new Promise((resolve, reject) => {
      const p = (this.pending ??= newBatch());
      p.entries.push(entry);
      p.waiters.push(durable ? { resolve, reject, durable } : { resolve, reject });
      if (!this.inFlight) this.send();
    });
  }

  /**
   * Wait until everything appended so far is durable (or failed). Deferred entries must all
   * be durable: a batch that fails is the error of this call (its entries wait for the next).
   */
  async sync(): Promise<void> {
    while (this.inFlight || this.pending) {
      if (!this.inFlight) this.send();
      const failed = await this.inFlight;
      if (failed !== undefined && this.deferred) throw this.fenced ?? failed;
    }
  }

  private send(): void {
    const batch = this.pending;
    if (!batch) return;
    this.pending = undefined;
    // The next batch copies into a slab of its own.
    this.slab = undefined;
    this.inFlight = this.put(batch)
      .then(
        () => {
          this.heldBytes -= batch.bytes;
          for (const w of batch.waiters) w.resolve();
          // Nothing refers to the batch's data any more (the record is stored).
          for (const b of batch.slabs)
            if (this.freeSlabs.length < WAL_SLABS_KEPT) this.freeSlabs.push(b);
          return undefined;
        },
        (e: unknown) => {
          for (const w of batch.waiters) w.reject(this.fenced ?? e);
          if (this.deferred && !this.fenced) {
            // Acknowledged writes: their entries go first in the next batch (order kept).
            const next = this.pending ?? newBatch();
            this.pending = {
              entries: [...batch.entries, ...next.entries],
              waiters: [],
              bytes: batch.bytes + next.bytes,
              slabs: [...batch.slabs, ...next.slabs],
            };
          } else this.heldBytes -= batch.bytes;
          return e;
        },
      )
      .then((failed) => {
        this.inFlight = undefined;
        // (Deferred entries of a failed batch wait for the next sync or record.)
        if (this.pending && !(failed !== undefined && this.deferred)) this.send();
        return failed;
      });
  }

  private async put(batch: Batch): Promise<void> {
    if (this.fenced) throw this.fenced;
    for (let attempt = 0; ; attempt++) {
      const seq = this.lastDurable + 1;
      // (The record before it is this writer's own: its fence or an earlier batch.)
      const record = {
        uuid: this.uuid,
        epoch: this.epoch,
        seq,
        entries: batch.entries,
        prevEpoch: this.epoch,
      };
      try {
        await this.store.put(walKey(this.uuid, seq), encodeWal(record), { ifNoneMatch: true });
      } catch (e) {
        if (!isHyperError(e, 'OBJECT_EXISTS') || attempt >= CONFLICT_RETRIES) throw e;
        // (A store that fails the read says nothing either way: its error, not a fence, which
        // would stop this writer for good.)
        const there = await readWal(this.store, this.uuid, seq).catch(rethrowUnavailable);
        if (there && there.epoch === this.epoch) {
          // Our own earlier batch landed although its PUT reported failure: move past it.
          this.lastDurable = seq;
          continue;
        }
        // An older writer's record after ours: ours took the number of one of its records
        // that was lost (see linkBroken). No newer writer; the log is damaged from ours on.
        const prev = { uuid: this.uuid, epoch: this.epoch, seq: seq - 1, entries: [] };
        this.fenced ??=
          (there && there.epoch < this.epoch && linkBroken(this.store, this.uuid, prev, there)) ||
          walFenced();
        throw this.fenced;
      }
      // (Outside the try: the record landed, whatever a callback does.)
      this.lastDurable = seq;
      for (const w of batch.waiters) w.durable?.();
      return;
    }
  }
}

const newBatch = (): Batch => ({ entries: [], waiters: [], bytes: 0, slabs: [] });

/** Applies one replayed entry to the engine (without logging it again); false: it held it. */
export type ReplayFn = (entry: WalEntry) => Promise<boolean>;

export class WalSession {
  /** Records at or below this are deleted (or being deleted). */
  private trimmedTo: number;
  private trimming: Promise<void> = Promise.resolve();

  private constructor(
    readonly writer: WalWriter,
    covered: number,
    private readonly log: Logger,
  ) {
    this.trimmedTo = covered;
  }

  /**
   * Replay every record the head does not cover (`covered` = the head's WAL sequence), claim
   * the next sequence number (fencing any older writer), and return the session with the
   * number of entries replayed. Records must follow `covered` without a gap: a missing one
   * fails the open naming its sequence, never opens with acknowledged writes missing.
   */
  static async start(
    store: ObjectStore,
    uuid: string,
    epoch: number,
    covered: number,
    replay: ReplayFn,
    log: Logger,
    deferred = false,
    takenOver?: () => Promise<boolean>,
  ): Promise<{ session: WalSession; replayed: number }> {
    let applied = covered;
    let last: WalRecord | undefined;
    let replayed = 0;
    let stale: number[] = [];
    // A record gone from the log: a newer writer that took the volume over while this one
    // opened may have applied and trimmed it. That is this opener fenced, not a lost write.
    // (A store that fails the look is reported as it is: it may be that takeover.)
    const missing = async (e: HyperError): Promise<HyperError> => {
      const fenced = await (takenOver?.() ?? Promise.resolve(false)).catch(
        (err: unknown) => unlessUnavailable(err) ?? false,
      );
      if (fenced instanceof Error) return toHyperError(fenced);
      return fenced ? walFenced() : e;
    };
    const replayNew = async (): Promise<void> => {
      const all = await listWal(store, uuid);
      stale = all.filter((q) => q <= covered);
      for (const q of all.filter((s) => s > applied)) {
        if (q !== applied + 1) {
          throw await missing(
            dataError(
              'MISSING_OBJECT',
              `${store.url}${walKey(uuid, applied + 1)}`,
              `WAL record ${applied + 1} is missing (the log jumps from ${applied} to ${q}): acknowledged writes would be lost`,
              WAL_REPAIR_SUGGESTION,
            ),
          );
        }
        let rec: WalRecord;
        try {
          rec = await readWal(store, uuid, q);
        } catch (e) {
          throw isHyperError(e, 'MISSING_OBJECT') ? await missing(e) : e;
        }
        // A newer writer has the log already (its fence, or its writes): this opener was
        // taken over while it opened. Claiming a fence after that writer's would fence it.
        if (rec.epoch > epoch) throw walFenced();
        const broken = last && linkBroken(store, uuid, last, rec);
        if (broken) throw broken;
        for (const e of rec.entries) {
          if (await replay(e)) replayed++;
        }
        applied = q;
        last = rec;
      }
    };
    await replayNew();
    for (let attempt = 0; ; attempt++) {
      const fence = applied + 1;
      try {
        // (Its predecessor: the record replayed last, if any; the covered one is not read.)
        const claim = {
          uuid,
          epoch,
          seq: fence,
          entries: [],
          ...(last ? { prevEpoch: last.epoch } : {}),
        };
        await store.put(walKey(uuid, fence), encodeWal(claim), { ifNoneMatch: true });
        const session = new WalSession(
          new WalWriter(store, uuid, epoch, fence, deferred),
          covered,
          log,
        );
        // Records the head already covered are needed neither for replay nor as a fence now.
        session.delete(stale);
        return { session, replayed };
      } catch (e) {
        // A writer we are taking over from logged one more batch: replay it too.
        if (!isHyperError(e, 'OBJECT_EXISTS') || attempt >= CONFLICT_RETRIES) throw e;
        await replayNew();
      }
    }
  }

  get fenced(): HyperError | undefined {
    return this.writer.fenced;
  }

  /**
   * A committed checkpoint covers records up to `seq`: delete them in the background — all
   * but the newest durable one, which must stay: its sequence is what fences an older writer.
   */
  covered(seq: number): void {
    const upTo = Math.min(seq, this.writer.lastDurable - 1);
    if (upTo <= this.trimmedTo) return;
    const from = this.trimmedTo + 1;
    this.trimmedTo = upTo;
    const seqs: number[] = [];
    for (let q = from; q <= upTo; q++) seqs.push(q);
    this.delete(seqs);
  }

  private delete(seqs: number[]): void {
    if (seqs.length === 0) return;
    const { store, uuid } = this.writer;
    this.trimming = this.trimming.then(async () => {
      try {
        for (let i = 0; i < seqs.length; i += DELETE_BATCH)
          await store.delete(seqs.slice(i, i + DELETE_BATCH).map((q) => walKey(uuid, q)));
      } catch (e) {
        this.log.warn('WAL cleanup failed', { error: e instanceof Error ? e.message : String(e) });
      }
    });
  }

  /** Wait for background deletes. */
  close(): Promise<void> {
    return this.trimming;
  }
}
