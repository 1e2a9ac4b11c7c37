/**
 * Where a segment lives. A plain volume's segments are all its own; a clone's segments with
 * ids at or below its nearest parent's base belong to that parent (or, below the next base,
 * to the grandparent, and so on — FORMAT.md "Clones").
 */
import { dataError, isHyperError, unlessUnavailable } from '../../errors.js';
import type { HeadRecord } from '../codec/head.js';
import type { Sealer } from '../codec/seal.js';
import { sealerFor } from '../keyring.js';
import { segmentKey } from '../keys.js';
import { sliceBody } from '../store/common.js';
import { defaultStoreOptions, openStore } from '../store/index.js';
import type { ByteRange, ObjectStore } from '../store/types.js';

export type OpenStoreFn = (url: string) => Promise<ObjectStore>;

/**
 * How the stores a volume names (a clone's parent, a WAL) are opened when the caller gives no
 * opener: with the options the CLI set (store/index.ts `setDefaultStoreOptions`).
 */
export const defaultOpenStore: OpenStoreFn = (url) => openStore(url, defaultStoreOptions());

export class SegmentSource {
  /**
   * Segments of this writer whose PUT may still be in flight: reads of them (index nodes
   * evicted from the cache) are served from memory until the store has them.
   */
  private readonly inFlight = new Map<number, readonly Buffer[]>();
  /**
   * Asked when a segment is missing, or holds other bytes than the index says, before that
   * is reported as damage: the error to report instead (a reader's checkpoint dropped under
   * it, a writer taken over), or undefined. A segment a compaction deleted may be missing,
   * or hold what a stale takeover placed at its id later (a create-only PUT of a fence at an
   * id that was free again). When it cannot tell (the store failed the lookup), the store's
   * error is reported: an honest "try again", never damage that a takeover or compaction may
   * explain.
   */
  explain?: (seg: number, key: string) => Promise<Error | undefined>;

  private constructor(
    readonly own: ObjectStore,
    /** Nearest parent first, bases strictly decreasing. */
    private readonly chain: { base: number; store: ObjectStore }[],
    /** Encrypted volumes: seals and opens blocks and nodes (one writer session each). */
    readonly sealer?: Sealer,
  ) {}

  static readonly defaultOpen: OpenStoreFn = defaultOpenStore;

  static single(store: ObjectStore): SegmentSource {
    return new SegmentSource(store, []);
  }

  static async forHead(
    own: ObjectStore,
    head: HeadRecord,
    open: OpenStoreFn = defaultOpenStore,
  ): Promise<SegmentSource> {
    // Before any parent store is opened: a missing key fails first.
    const sealer = sealerFor(own.url, head);
    const chain = await Promise.all(
      (head.clone?.chain ?? []).map(async (l) => ({ base: l.base, store: await open(l.url) })),
    );
    return new SegmentSource(own, chain, sealer);
  }

  storeFor(seg: number): ObjectStore {
    let store = this.own;
    for (const l of this.chain) {
      if (seg > l.base) break;
      store = l.store;
    }
    return store;
  }

  /** Every store segments are read from: the volume's own first, then its parents, nearest first. */
  get stores(): ObjectStore[] {
    return [this.own, ...this.chain.map((l) => l.store)];
  }

  /** Index in `stores` of the store segment `seg` lives in. */
  storeIndex(seg: number): number {
    let i = 0;
    for (let k = 0; k < this.chain.length; k++) {
      if (seg > (this.chain[k] as { base: number }).base) break;
      i = k + 1;
    }
    return i;
  }

  /** Whether a segment id belongs to a parent volume. */
  inherited(seg: number): boolean {
    return this.chain.length > 0 && seg <= (this.chain[0] as { base: number }).base;
  }

  /** Serve segment `seg` from its `parts` (as PUT) until `landed(seg)`. */
  hold(seg: number, parts: readonly Buffer[]): void {
    this.inFlight.set(seg, parts);
  }

  /** Segments up to `seg` are durable (or abandoned and no longer referenced). */
  landed(seg: number): void {
    for (const id of this.inFlight.keys()) if (id <= seg) this.inFlight.delete(id);
  }

  /**
   * Segments `ids` will never be committed: let go of their parts (the write buffer reuses
   * the memory the parts lie in once their blocks are written again).
   */
  abandoned(ids: readonly number[]): void {
    for (const id of ids) this.inFlight.delete(id);
  }

  /**
   * A ranged read of a segment; a missing object is a data error naming it. `into` as in
   * GetOptions: the body may or may not be that memory.
   */
  async get(seg: number, range: ByteRange, what: string, into?: Buffer): Promise<Buffer> {
    const held = this.inFlight.get(seg);
    if (held) return sliceBody(held, range.offset, range.offset + range.length);
    const store = this.storeFor(seg);
    const key = segmentKey(seg);
    try {
      // Segments are write-once: a store may keep them open between reads.
      return (
        await store.get(key, into ? { range, immutable: true, into } : { range, immutable: true })
      ).body;
    } catch (e) {
      if (isHyperError(e, 'OBJECT_NOT_FOUND')) {
        const named = store === this.own ? key : `${store.url}${key}`;
        const why = await this.explain?.(seg, named).catch(unlessUnavailable);
        if (why) throw why;
        throw dataError('MISSING_OBJECT', named, `A segment holding ${what} is missing`);
      }
      throw e;
    }
  }

  /**
   * `e`, met reading segment `seg`: when it reports the segment damaged, the explanation
   * instead if there is one (see `explain`). A missing segment was explained by `get`.
   */
  async explainDamage(seg: number, e: unknown): Promise<unknown> {
    if (!this.explain || !(isHyperError(e) && e.kind === 'data') || e.code === 'MISSING_OBJECT')
      return e;
    return (await this.explain(seg, e.key ?? this.keyFor(seg)).catch(unlessUnavailable)) ?? e;
  }

  /** Whether the segment object exists (one HEAD request). */
  async exists(seg: number): Promise<boolean> {
    return (await this.storeFor(seg).head(segmentKey(seg))) !== undefined;
  }

  /** The key to name in errors about a segment. */
  keyFor(seg: number): string {
    const store = this.storeFor(seg);
    return store === this.own ? segmentKey(seg) : `${store.url}${segmentKey(seg)}`;
  }

  async close(): Promise<void> {
    await Promise.all(this.chain.map((l) => l.store.close()));
  }
}
