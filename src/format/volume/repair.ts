/**
 * `file repair`: rebuild a damaged or missing `head` object from the head embedded in the
 * newest intact checkpoint segment. Every segment carries the head it committed (see
 * codec/segment.ts), so the newest segment that verifies — its header checksum, every index
 * node its checkpoint reaches, the data blocks it holds, and the presence of every segment
 * its index uses — is the last state known to be whole. Newer segments that fail are
 * skipped (and named); a flush that never committed is also a candidate: its data was
 * written completely, so adopting it loses nothing a reader ever saw.
 *
 * Every segment id past the one adopted is recorded as skipped in the rebuilt head, so that
 * readers rolling forward from it (FORMAT.md "Commit protocol") never reach the newer
 * segments that failed.
 *
 * The head is written by a create-only PUT when it is missing and by a compare-and-swap on
 * the damaged object's ETag when it is there: a writer that commits meanwhile wins, and the
 * repair fails rather than overwrite it. A live lease refuses the repair unless forced.
 *
 * A volume with a write-ahead log: the records past the head (intact or rebuilt) must replay
 * in order for a writer to open. Where one is damaged or missing, the repair cuts the log
 * there, dropping it and every record after it (see repairWal).
 */
import { HyperError, isHyperError } from '../../errors.js';
import { DecodeError, crc32c } from '../codec/binary.js';
import { decodeHead, encodeHead, type HeadRecord } from '../codec/head.js';
import { readLeaf } from '../codec/node.js';
import { decodeSegmentHeader } from '../codec/segment.js';
import { Miss, type Node } from '../index/btree.js';
import { NodeLoader } from '../index/loader.js';
import { HEAD_KEY, SEGMENT_PREFIX, parseSegmentKey, segmentKey } from '../keys.js';
import type { ObjectStore } from '../store/types.js';
import { holderIsDeadLocal, leaseHeldError, readLease } from './lease.js';
import { isHashKey } from '../codec/dedup.js';
import { MAX_PAST_HEAD, currentHead, dedupRootOf, rootOf } from './heads.js';
import { SegmentSource, defaultOpenStore, type OpenStoreFn } from './segments.js';
import { dropWalTail, settledWalTail, type WalTail } from './wal.js';

export type HeadState = 'intact' | 'damaged' | 'missing';

export interface RepairResult {
  url: string;
  /** The head as found. */
  head: HeadState;
  /** The head was written (only with `apply`, and only when it was damaged or missing). */
  applied: boolean;
  /** The checkpoint the rebuilt head commits (the current one when the head is intact). */
  checkpoint: number | null;
  checkpointTime: Date | null;
  /** The segment whose embedded head was used. */
  segmentKey: string | null;
  /** Newer segments that did not verify, newest first, and why. */
  skipped: { key: string; message: string }[];
  /** The write-ahead log past the head (volumes with a WAL), else null. */
  wal: WalRepair | null;
}

export interface WalRepair {
  url: string;
  /** Records the next writer replays, before the first one it cannot. */
  replayable: number;
  /** The first record no writer can replay (damaged, or missing from the sequence). */
  bad: NonNullable<WalTail['bad']> | null;
  /** The records from that one on, in order: what `apply` drops (their writes are lost). */
  dropped: number[];
  /** They were dropped. */
  applied: boolean;
}

export interface RepairOptions {
  apply?: boolean;
  /** Write even though a live lease is held. */
  force?: boolean;
  openStore?: OpenStoreFn;
  signal?: AbortSignal;
}

export async function repairHead(
  store: ObjectStore,
  options: RepairOptions = {},
): Promise<RepairResult> {
  if (options.apply && !options.force) {
    let lease;
    try {
      lease = await readLease(store);
    } catch (e) {
      // A damaged lease holds nothing.
      if (!(isHyperError(e) && e.kind === 'data')) throw e;
    }
    if (lease?.live && !holderIsDeadLocal(lease.lease.holder)) throw leaseHeldError(lease);
  }

  // The head as it is.
  let state: HeadState;
  let etag: string | undefined;
  try {
    const got = await store.get(HEAD_KEY);
    etag = got.etag;
    try {
      const { head } = decodeHead(got.body);
      return {
        url: store.url,
        head: 'intact',
        applied: false,
        checkpoint: head.checkpoint,
        checkpointTime: new Date(head.checkpointMs),
        segmentKey: null,
        skipped: [],
        wal: await repairWal(store, head, options),
      };
    } catch (e) {
      if (!(e instanceof DecodeError)) throw e;
      state = 'damaged';
    }
  } catch (e) {
    if (!isHyperError(e, 'OBJECT_NOT_FOUND')) throw e;
    state = 'missing';
  }

  // Segments, newest first.
  const ids: number[] = [];
  const sizes = new Map<number, number>();
  for await (const page of store.list(SEGMENT_PREFIX)) {
    for (const o of page.objects) {
      const id = parseSegmentKey(o.key);
      if (id !== undefined) {
        ids.push(id);
        sizes.set(id, o.size);
      }
    }
  }
  if (ids.length === 0) {
    if (state === 'missing')
      throw new HyperError('not-found', 'VOLUME_NOT_FOUND', `No volume at ${store.url}`, {
        suggestion: 'Check the URL: a volume URL ends at the prefix that holds `head` and `seg/`.',
      });
    throw noIntactSegment(store.url);
  }
  ids.sort((a, b) => b - a);
  const skipped: { key: string; message: string }[] = [];
  for (const id of ids) {
    options.signal?.throwIfAborted();
    const key = segmentKey(id);
    let found;
    try {
      found = await verifySegment(store, id, sizes, options.openStore);
    } catch (e) {
      const damage =
        e instanceof DecodeError
          ? e.message
          : isHyperError(e) && e.kind === 'data'
            ? e.message
            : undefined;
      if (damage === undefined) throw e;
      skipped.push({ key, message: damage });
      continue;
    }
    const result: RepairResult = {
      url: store.url,
      head: state,
      applied: false,
      checkpoint: found.head.checkpoint,
      checkpointTime: new Date(found.head.checkpointMs),
      segmentKey: key,
      skipped,
      wal: null,
    };
    if (!options.apply) return { ...result, wal: await repairWal(store, found.head, options) };
    // The newer segments that did not verify are skipped: readers roll forward from the head
    // along segments past its last one, and must not come back to them.
    // (An id too far past it is no segment of this volume: readers ignore it anyway.)
    const newest = Math.max(...ids.filter((x) => x - id <= MAX_PAST_HEAD));
    const bytes =
      newest === id
        ? found.bytes
        : encodeHead({
            ...found.head,
            lastSegment: newest,
            skipped: [
              ...found.head.skipped,
              ...Array.from({ length: newest - id }, (_, k) => id + 1 + k),
            ],
          });
    try {
      if (state === 'missing') await store.put(HEAD_KEY, bytes, { ifNoneMatch: true });
      else await store.put(HEAD_KEY, bytes, { ifMatch: etag as string });
    } catch (e) {
      if (isHyperError(e, 'OBJECT_EXISTS') || isHyperError(e, 'PRECONDITION_FAILED')) {
        throw new HyperError(
          'conflict',
          'PRECONDITION_FAILED',
          'The head changed while it was being repaired (another writer committed)',
          {
            suggestion:
              'Run `hyper file check` on the volume, then repair again if it is still damaged.',
          },
        );
      }
      throw e;
    }
    return { ...result, applied: true, wal: await repairWal(store, found.head, options) };
  }
  throw noIntactSegment(store.url, skipped.length);
}

/**
 * The log past `head`, as the next writer would replay it; with `apply`, cut where it breaks
 * (the records from the first damaged or missing one on are dropped): a writer replays the
 * rest and opens. A log that cannot be replayed whole keeps every writer out, and the writes
 * past the break cannot be applied in order without the ones it lost.
 */
async function repairWal(
  store: ObjectStore,
  head: HeadRecord,
  options: RepairOptions,
): Promise<WalRepair | null> {
  if (head.walUrl === undefined) return null;
  const walStore = await (options.openStore ?? defaultOpenStore)(head.walUrl);
  try {
    const tail = await settledWalTail(walStore, head, () => currentHead(store), 3, options.signal);
    const found: WalRepair = {
      url: walStore.url,
      replayable: tail.replayable.length,
      bad: tail.bad ?? null,
      dropped: tail.dropped,
      applied: false,
    };
    if (!options.apply || tail.bad === undefined) return found;
    await dropWalTail(walStore, head.uuid, tail);
    return { ...found, applied: true };
  } finally {
    await walStore.close().catch(() => undefined);
  }
}

function noIntactSegment(url: string, tried = 0): HyperError {
  return new HyperError(
    'data',
    'CORRUPT_OBJECT',
    `The head of ${url} cannot be rebuilt: no intact checkpoint segment${tried ? ` (${tried} tried)` : ''}`,
    {
      key: HEAD_KEY,
      suggestion: 'Restore the volume from a backup (`hyper file import`) into a new volume.',
    },
  );
}

/**
 * Segment `id` read whole and verified: its header, the index its embedded head reaches
 * (every node's checksum, every segment it uses present) and the data blocks it stores.
 */
async function verifySegment(
  store: ObjectStore,
  id: number,
  sizes: Map<number, number>,
  openStore?: OpenStoreFn,
): Promise<{ head: HeadRecord; bytes: Buffer }> {
  const body = (await store.get(segmentKey(id))).body;
  const h = decodeSegmentHeader(body);
  if (h.segmentId !== id) throw new DecodeError(`header names segment ${h.segmentId}`);
  if (h.head.checkpoint !== id)
    throw new DecodeError(`it embeds the head of checkpoint ${h.head.checkpoint}`);
  if (h.totalLength !== body.length)
    throw new DecodeError(`object is ${body.length} bytes, header says ${h.totalLength}`);
  const head = h.head;
  const root = rootOf(head);
  const source = await SegmentSource.forHead(store, head, openStore);
  try {
    const loader = new NodeLoader(source, 2 ** head.metaBlockShift, 16 * 1024 * 1024);
    const reached = new Set<number>();
    const visited = new Set<string>();
    /** `content`: the content index, whose hash entries (odd keys) point nowhere. */
    const rec = async (nd: Node, content: boolean): Promise<void> => {
      if (nd.level === 0) {
        for (let i = 0; i < nd.length; i++) {
          if (content && isHashKey(nd.key(i))) continue;
          const p = readLeaf(nd.entries, i);
          reached.add(p.seg);
          if (p.seg !== id) continue;
          const blk = body.subarray(p.off, p.off + p.len);
          if (blk.length !== p.len || crc32c(blk) !== p.crc)
            throw new DecodeError(`the data block at segment offset ${p.off} fails its checksum`);
        }
        return;
      }
      for (let i = 0; i < nd.length; i++) {
        const seg = nd.seg(i);
        const off = nd.off(i);
        if (visited.has(`${seg}:${off}`)) continue;
        visited.add(`${seg}:${off}`);
        reached.add(seg);
        let child = loader.cached(seg, off);
        while (!child) {
          await loader.load(new Miss(nd, i));
          child = loader.cached(seg, off);
        }
        await rec(child, content);
      }
    };
    await rec(root, false);
    const content = dedupRootOf(head);
    if (content) await rec(content, true);
    for (const seg of reached) {
      const present = source.inherited(seg) ? await source.exists(seg) : sizes.has(seg);
      if (!present)
        throw new DecodeError(
          `its checkpoint uses segment ${source.keyFor(seg)}, which is missing`,
        );
    }
  } finally {
    await source.close(); // the parents' stores only
  }
  return { head, bytes: h.headBytes };
}
