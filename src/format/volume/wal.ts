/**
 * The write-ahead log: every acknowledged write is durable in a WAL object before its reply,
 * so acknowledging a write (or an NBD FLUSH) costs one small PUT instead of a segment and a
 * head CAS. Concurrent writes share one object (group commit): while a batch is in flight,
 * new entries gather for the next one. Objects are `<volume uuid>/<seq 16 hex>` in the WAL
 * store, written create-only with a gap-free sequence, which also fences: a writer that takes
 * the volume over claims the next sequence number, so an older writer's next batch fails.
 */
import { HyperError, dataError, isHyperError } from '../../errors.js';
import { DecodeError } from '../codec/binary.js';
import { decodeWal, encodeWal, type WalEntry, type WalRecord } from '../codec/wal.js';
import type { ObjectStore } from '../store/types.js';

const SEQ_DIGITS = 16;

export const walKeyFor = (uuid: string, seq: number): string =>
  `${uuid}/${seq.toString(16).padStart(SEQ_DIGITS, '0')}`;

function parseWalKey(uuid: string, key: string): number | undefined {
  const prefix = `${uuid}/`;
  if (!key.startsWith(prefix)) return undefined;
  const rest = key.slice(prefix.length);
  if (rest.length !== SEQ_DIGITS || !/^[0-9a-f]+$/.test(rest)) return undefined;
  return Number.parseInt(rest, 16);
}

/** WAL sequence numbers present for a volume, ascending. */
export async function listWal(store: ObjectStore, uuid: string): Promise<number[]> {
  const seqs: number[] = [];
  for await (const page of store.list(`${uuid}/`)) {
    for (const o of page.objects) {
      const s = parseWalKey(uuid, o.key);
      if (s !== undefined) seqs.push(s);
    }
  }
  return seqs.sort((a, b) => a - b);
}

export async function readWal(store: ObjectStore, uuid: string, seq: number): Promise<WalRecord> {
  const key = walKeyFor(uuid, seq);
  const { body } = await store.get(key);
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
      );
    throw e;
  }
}

interface Pending {
  entries: WalEntry[];
  bytes: number;
  waiters: { resolve: () => void; reject: (e: unknown) => void }[];
}

/**
 * Appends batches with a gap-free sequence: one batch in flight at a time; a failed PUT is
 * retried under the same number by the next batch, and a number that turns out to be taken
 * is ours only if the object there carries our epoch (an earlier attempt that did land).
 */
export class WalWriter {
  /** The highest sequence known durable. */
  lastDurable: number;
  private pending: Pending | undefined;
  private inFlight: Promise<void> | undefined;
  /** Set when another writer claimed a sequence: nothing more is accepted. */
  fenced: HyperError | undefined;
  puts = 0;

  constructor(
    readonly store: ObjectStore,
    readonly uuid: string,
    private readonly epoch: number,
    lastSeq: number,
  ) {
    this.lastDurable = lastSeq;
  }

  /** Resolves once the entry is durable in the WAL. */
  append(entry: WalEntry): Promise<void> {
    if (this.fenced) return Promise.reject(this.fenced);
    return new Promise((resolve, reject) => {
      const p = (this.pending ??= { entries: [], bytes: 0, waiters: [] });
      p.entries.push(entry);
      p.bytes += entry.data?.length ?? 0;
      p.waiters.push({ resolve, reject });
      if (!this.inFlight) this.send();
    });
  }

  /** Wait until everything appended so far is durable (or failed). */
  async sync(): Promise<void> {
    while (this.inFlight || this.pending) {
      if (!this.inFlight) this.send();
      await this.inFlight;
    }
  }

  private send(): void {
    const batch = this.pending;
    if (!batch) return;
    this.pending = undefined;
    this.inFlight = this.put(batch)
      .then(
        () => {
          for (const w of batch.waiters) w.resolve();
        },
        (e: unknown) => {
          for (const w of batch.waiters) w.reject(this.fenced ?? e);
        },
      )
      .finally(() => {
        this.inFlight = undefined;
        if (this.pending) this.send();
      });
  }

  private async put(batch: Pending): Promise<void> {
    if (this.fenced) throw this.fenced;
    for (let attempt = 0; ; attempt++) {
      const seq = this.lastDurable + 1;
      const key = walKeyFor(this.uuid, seq);
      try {
        await this.store.put(
          key,
          encodeWal({ uuid: this.uuid, epoch: this.epoch, seq, entries: batch.entries }),
          {
            ifNoneMatch: true,
          },
        );
        this.puts++;
        this.lastDurable = seq;
        return;
      } catch (e) {
        if (!isHyperError(e, 'OBJECT_EXISTS') || attempt > 3) throw e;
        const there = await readWal(this.store, this.uuid, seq).catch(() => undefined);
        if (there && there.epoch === this.epoch) {
          // Our own earlier batch landed although its PUT reported failure: move past it.
          this.lastDurable = seq;
          continue;
        }
        this.fenced ??= new HyperError(
          'conflict',
          'FENCED',
          'Another writer took over the volume (its WAL claimed the next sequence); this writer accepts no more writes',
          { suggestion: 'Re-open the volume once the other writer is done.' },
        );
        throw this.fenced;
      }
    }
  }
}
