/**
 * Reading a volume's metadata without opening it: the head, the head embedded in any
 * checkpoint's segment, named snapshots, and which checkpoint a reference names. Every
 * admin operation, the engine and the commands read heads through this file.
 */
import {
  HyperError,
  dataError,
  isHyperError,
  rethrowUnavailable,
  unlessUnavailable,
} from '../../errors.js';
import { DecodeError } from '../codec/binary.js';
import { compressionOf } from '../codec/block.js';
import {
  FEATURE_CODECS,
  decodeHead,
  isRetainedCheckpoint,
  type HeadRecord,
} from '../codec/head.js';
import { contentsIndexed } from '../codec/dedup.js';
import { decodeNode, nodeCapacity } from '../codec/node.js';
import { cipherName, sealOverhead } from '../codec/seal.js';
import { decodeEmbeddedHead, embeddedHeadEnd } from '../codec/segment.js';
import { decodeSnapshot, type SnapshotRecord } from '../codec/snapshot.js';
import { Node } from '../index/btree.js';
import {
  FLATTEN_KEY,
  HEAD_KEY,
  SEGMENT_PREFIX,
  parseSegmentKey,
  segmentKey,
  snapshotKey,
} from '../keys.js';
import type { ObjectStore } from '../store/types.js';
import { MiB, type CheckpointRef, type VolumeInfo } from './types.js';

/** The newest format version this hyper writes (FORMAT.md). */
export const FORMAT_VERSION = 2;

/** Bytes fetched to read a checkpoint's embedded head (enough for almost every head). */
const EMBEDDED_HEAD_PREFIX = 16 * 1024;

export interface HeadObject {
  head: HeadRecord;
  /** The ETag to compare-and-swap against. */
  etag: string;
  /** The encoded record as stored (a retried CAS compares bytes to learn whether it landed). */
  bytes: Buffer;
}

/** Where a damaged or missing head leads. */
export const REPAIR_SUGGESTION =
  'Run `hyper file repair` on this volume: it rebuilds the head from the newest intact checkpoint (a dry run unless --apply).';

/**
 * The volume's current state: the head object, rolled forward along the chain of segments
 * committed past it (FORMAT.md "Commit protocol"). Every reader of the current checkpoint
 * goes through here; only the committer compares-and-swaps, on `stored`.
 */
export async function readHead(
  store: ObjectStore,
): Promise<{ head: HeadRecord; stored: HeadObject }> {
  const stored = await readStoredHead(store);
  return { head: (await rollForward(store, stored.head)).tip, stored };
}

/**
 * The head as it is now, for a second look: undefined when it cannot be read as a head
 * (damaged or gone); a store that fails the look is its error.
 */
export async function currentHead(store: ObjectStore): Promise<HeadRecord | undefined> {
  try {
    return (await readHead(store)).head;
  } catch (e) {
    return rethrowUnavailable(e);
  }
}

/**
 * Segment ids a roll-forward looks at past a head. A writer leaves a few (a chain not yet
 * published, its pipelined PUTs); more means a stray object under `seg/`.
 */
export const MAX_PAST_HEAD = 65_536;

/** Embedded heads read at once while rolling forward. */
const ROLL_FORWARD_GETS = 8;

/** Whether checkpoint `next` continues the chain at `tip` (FORMAT.md "Commit protocol"). */
export function continuesChain(tip: HeadRecord, next: HeadRecord): boolean {
  return (
    next.uuid === tip.uuid &&
    next.prevCheckpoint === tip.checkpoint &&
    next.checkpoint > tip.lastSegment &&
    next.epoch >= tip.epoch
  );
}

/** What a roll-forward found past the head. */
export interface RolledForward {
  /** The newest checkpoint of the chain (the head itself when nothing continues it). */
  tip: HeadRecord;
  /** The highest segment id listed past the head that can be one of this volume's. */
  highest: number;
  /**
   * Objects under `seg/` past the head that cannot be told apart from a chain segment: a
   * header that does not decode, or an id too far past the head for any writer to have
   * left. Readers go on without them; a writer refuses to take the volume over.
   */
  strays: HyperError[];
}

/**
 * Follow the chain of checkpoints committed past `head`: every segment past its last
 * segment, in id order, whose embedded head continues the newest one found so far. A writer
 * acknowledges a flush once its segment has landed, before the head names it, so these are
 * committed.
 */
export async function rollForward(store: ObjectStore, head: HeadRecord): Promise<RolledForward> {
  const ids: number[] = [];
  const strays: HyperError[] = [];
  for await (const page of store.list(SEGMENT_PREFIX, {
    startAfter: segmentKey(head.lastSegment),
  })) {
    for (const o of page.objects) {
      const id = parseSegmentKey(o.key);
      if (id === undefined || id <= head.lastSegment) continue;
      if (id - head.lastSegment > MAX_PAST_HEAD) {
        // No writer leaves that many segments past the head: an object that only looks like one.
        strays.push(
          dataError(
            'CORRUPT_OBJECT',
            o.key,
            `${o.key} is ${id - head.lastSegment} ids past the volume's last segment (${head.lastSegment}); it is not a segment this volume wrote`,
            STRAY_SUGGESTION,
          ),
        );
      } else ids.push(id);
    }
  }
  ids.sort((a, b) => a - b);
  const highest = ids.at(-1) ?? head.lastSegment;
  const heads: (HeadRecord | undefined)[] = [];
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let k = next++; k < ids.length; k = next++) {
      heads[k] = await readCheckpointHead(store, ids[k] as number).catch((e: unknown) => {
        // Deleted since the listing: an orphan compaction removed (a chain is never deleted).
        if (isHyperError(e, 'MISSING_OBJECT')) return undefined;
        if (isHyperError(e) && e.kind === 'data') {
          strays.push(
            new HyperError('data', e.code, e.message, {
              key: segmentKey(ids[k] as number),
              suggestion: STRAY_SUGGESTION,
            }),
          );
          return undefined;
        }
        throw e;
      });
    }
  };
  await Promise.all(Array.from({ length: Math.min(ROLL_FORWARD_GETS, ids.length) }, worker));
  let tip = head;
  for (const h of heads) if (h && continuesChain(tip, h)) tip = h;
  return { tip, highest, strays };
}

const STRAY_SUGGESTION =
  'Run `hyper file check` on the volume. An object under seg/ that is not one of its segments must be moved away before a writer opens the volume; if it was one, the writes it held are lost.';

/** Read and decode the head object as stored; absence and damage become domain errors. */
export async function readStoredHead(store: ObjectStore): Promise<HeadObject> {
  let got;
  try {
    got = await store.get(HEAD_KEY);
  } catch (e) {
    if (isHyperError(e, 'OBJECT_NOT_FOUND')) throw await noHeadError(store);
    throw e;
  }
  try {
    return { head: decodeHead(got.body).head, etag: got.etag, bytes: got.body };
  } catch (e) {
    if (e instanceof DecodeError)
      throw dataError(
        'CORRUPT_OBJECT',
        HEAD_KEY,
        `Volume head is damaged: ${e.message}`,
        REPAIR_SUGGESTION,
      );
    throw e;
  }
}

/**
 * The head a flatten recorded before its detach commit (FLATTEN_KEY), as stored: undefined
 * if there is none; CORRUPT_OBJECT if it is damaged. See unfinishedFlatten for whether it
 * still matters.
 */
export async function readFlattenRecord(store: ObjectStore): Promise<HeadRecord | undefined> {
  let body: Buffer;
  try {
    body = (await store.get(FLATTEN_KEY)).body;
  } catch (e) {
    if (isHyperError(e, 'OBJECT_NOT_FOUND')) return undefined;
    throw e;
  }
  try {
    return decodeHead(body).head;
  } catch (e) {
    if (!(e instanceof DecodeError)) throw e;
    throw dataError(
      'CORRUPT_OBJECT',
      FLATTEN_KEY,
      `The record of an unfinished flatten of ${store.url} is damaged: ${e.message}`,
      `Run \`hyper file check ${store.url}\`: if it lists no dangling snapshot or clone pin, nothing reads through the checkpoints the flatten dropped; then delete the object ${FLATTEN_KEY} under the volume and release the parent's pin with \`hyper snapshot unpin\`.`,
    );
  }
}

/**
 * The head a flatten recorded before its detach commit, when `head` is that flatten's result
 * and the flatten stopped before it made sure nothing reads the parent through the
 * checkpoints it dropped (`hyper snapshot flatten` run again finishes it). Undefined when
 * there is no such record, or it belongs to another state of the volume (the volume is a
 * clone, or another volume holds the URL now).
 */
export async function unfinishedFlatten(
  store: ObjectStore,
  head: HeadRecord,
): Promise<HeadRecord | undefined> {
  if (head.clone) return undefined;
  const before = await readFlattenRecord(store);
  if (!before?.clone || before.uuid !== head.uuid) return undefined;
  return (await madeTheDetach(store, head, before)) ? before : undefined;
}

/**
 * Whether the writer that recorded `before` made the detach commit: the record's PUT of a
 * flatten fenced right after its last check can land late, after the flatten that took over
 * finished and deleted its own record (chaos seed 50858); it names a pin that is gone. The
 * detach commit puts the history floor at itself, nothing moves that floor while a record
 * stands (compaction waits), and the commit carries its writer's epoch, the one the record's
 * head has. When that cannot be told (the floor's segment unreadable), it did: a record kept
 * in doubt holds a pin and a compaction back, one dropped in error could cost a clone its
 * parent's blocks.
 */
async function madeTheDetach(
  store: ObjectStore,
  head: HeadRecord,
  before: HeadRecord,
): Promise<boolean> {
  const floor = head.history?.floor;
  if (floor === undefined || floor > head.checkpoint) return true;
  try {
    return (await readCheckpointHead(store, floor)).epoch === before.epoch;
  } catch {
    return true;
  }
}

/** A clone's parent (the first of its chain) and the checkpoint it started from. */
export function parentOf(head: HeadRecord): { url: string; checkpoint: number } | undefined {
  const first = head.clone?.chain[0];
  return first && head.clone ? { url: first.url, checkpoint: head.clone.checkpoint } : undefined;
}

/** No head: either nothing is there (VOLUME_NOT_FOUND) or something else is (NOT_A_VOLUME). */
async function noHeadError(store: ObjectStore): Promise<HyperError> {
  let other = false;
  for await (const page of store.list('')) {
    other = page.objects.length > 0 || page.prefixes.length > 0;
    break;
  }
  return other
    ? new HyperError(
        'invalid',
        'NOT_A_VOLUME',
        `${store.url} holds objects but no hyper volume (no ${HEAD_KEY} object)`,
        {
          suggestion:
            'Check the URL: a volume URL ends at the prefix that holds `head` and `seg/`.',
        },
      )
    : new HyperError('not-found', 'VOLUME_NOT_FOUND', `No volume at ${store.url}`, {
        suggestion: 'Create it with `hyper file create URL --size SIZE`, or check the URL.',
      });
}

/** The head embedded in segment `id` (a checkpoint), from a short ranged GET. */
export async function readCheckpointHead(store: ObjectStore, id: number): Promise<HeadRecord> {
  const key = segmentKey(id);
  let prefix: Buffer;
  try {
    prefix = (await store.get(key, { range: { offset: 0, length: EMBEDDED_HEAD_PREFIX } })).body;
  } catch (e) {
    if (isHyperError(e, 'OBJECT_NOT_FOUND'))
      throw dataError('MISSING_OBJECT', key, `Segment of checkpoint ${id} is missing`);
    throw e;
  }
  try {
    return decodeEmbeddedHead(prefix);
  } catch (e) {
    if (!(e instanceof DecodeError)) throw e;
    // The embedded head may be longer than the prefix: fetch exactly what it says.
    if (prefix.length === EMBEDDED_HEAD_PREFIX) {
      const need = embeddedHeadEnd(prefix);
      if (need > prefix.length && need < 64 * MiB) {
        const full = (await store.get(key, { range: { offset: 0, length: need } })).body;
        try {
          return decodeEmbeddedHead(full);
        } catch (e2) {
          if (!(e2 instanceof DecodeError)) throw e2;
        }
      }
    }
    throw dataError(
      'CHECKSUM_MISMATCH',
      key,
      `Segment header of checkpoint ${id} is damaged: ${e.message}`,
    );
  }
}

/**
 * The head of checkpoint `id`: `current` itself when it is that checkpoint, else its
 * segment's. A segment gone because a compaction or restore dropped the checkpoint since
 * `current` was read is CHECKPOINT_NOT_FOUND, not damage.
 */
export async function headAt(
  store: ObjectStore,
  current: HeadRecord,
  id: number,
): Promise<HeadRecord> {
  if (id === current.checkpoint) return current;
  try {
    return await readCheckpointHead(store, id);
  } catch (e) {
    if (!isHyperError(e, 'MISSING_OBJECT')) throw e;
    throw (
      (await droppedWhileRead(store, id, e.key ?? segmentKey(id)).catch(unlessUnavailable)) ?? e
    );
  }
}

/**
 * After reading the heads of checkpoints `ids` with headAt, for a reader that goes on to use
 * what they name: CHECKPOINT_NOT_FOUND if one was dropped since `current` was read (one more
 * look at the head). Its segment may have been deleted and its id taken by a stale
 * takeover's fence, whose head headAt would have returned.
 */
export async function confirmKept(
  store: ObjectStore,
  current: HeadRecord,
  ids: readonly number[],
): Promise<void> {
  const older = ids.filter((id) => id !== current.checkpoint);
  if (older.length === 0) return;
  const dropped = await droppedWhileRead(store, older);
  if (dropped) throw dropped;
}

/** headAt, then confirmKept. */
export async function keptHeadAt(
  store: ObjectStore,
  current: HeadRecord,
  id: number,
): Promise<HeadRecord> {
  const head = await headAt(store, current, id);
  await confirmKept(store, current, [id]);
  return head;
}

/** Entries per index node of this volume (a sealed node gives room to its nonce and tag). */
export const nodeCapacityOf = (head: HeadRecord): number =>
  nodeCapacity(2 ** head.metaBlockShift - (head.seal ? sealOverhead(head.seal.cipher) : 0));

/** The index root stored inline in a head, verified. */
export function rootOf(head: HeadRecord): Node {
  return inlineRoot(head, head.root, head.rootLevel, 'Index root', false);
}

/** The content-hash index's root of a deduplicating volume (codec/dedup.ts), verified. */
export function dedupRootOf(head: HeadRecord): Node | undefined {
  const d = head.dedup;
  return d ? inlineRoot(head, d.root, d.rootLevel, 'Dedup index root', true) : undefined;
}

function inlineRoot(
  head: HeadRecord,
  bytes: Buffer,
  level: number,
  what: string,
  content: boolean,
): Node {
  try {
    const d = decodeNode(bytes, 0, nodeCapacityOf(head), undefined, content);
    if (d.level !== level) throw new DecodeError('root level does not match head');
    return new Node(d.level, d.count, d.entries, false, content);
  } catch (e) {
    if (e instanceof DecodeError)
      throw dataError('CORRUPT_OBJECT', HEAD_KEY, `${what} is damaged: ${e.message}`);
    throw e;
  }
}

/** A named snapshot record. */
export async function readSnapshot(store: ObjectStore, name: string): Promise<SnapshotRecord> {
  const key = snapshotKey(name);
  let body: Buffer;
  try {
    body = (await store.get(key)).body;
  } catch (e) {
    if (isHyperError(e, 'OBJECT_NOT_FOUND')) {
      throw new HyperError('not-found', 'SNAPSHOT_NOT_FOUND', `No snapshot named "${name}"`, {
        suggestion: 'List snapshots with `hyper snapshot list --named`.',
      });
    }
    throw e;
  }
  try {
    return decodeSnapshot(body);
  } catch (e) {
    if (e instanceof DecodeError)
      throw dataError('CORRUPT_OBJECT', key, `Snapshot record is damaged: ${e.message}`);
    throw e;
  }
}

/**
 * The checkpoint a reference names. Committed checkpoints are segment ids ≤ head.checkpoint,
 * not skipped, not dropped by compaction (see isRetainedCheckpoint).
 */
export async function resolveCheckpoint(
  store: ObjectStore,
  head: HeadRecord,
  ref: CheckpointRef,
): Promise<number> {
  if ('snapshot' in ref) {
    const snap = await readSnapshot(store, ref.snapshot);
    return resolveCheckpoint(store, head, { checkpoint: snap.checkpoint });
  }
  if ('checkpoint' in ref) {
    const id = ref.checkpoint;
    if (id > head.checkpoint) {
      throw new HyperError(
        'not-found',
        'CHECKPOINT_NOT_FOUND',
        `Checkpoint ${id} does not exist yet (the current checkpoint is ${head.checkpoint})`,
        { suggestion: 'List checkpoints with `hyper snapshot list`.' },
      );
    }
    const gone =
      !isRetainedCheckpoint(head, id) ||
      (id !== head.checkpoint && !(await store.head(segmentKey(id))));
    if (gone) {
      const never = head.skipped.includes(id);
      const kept = await keptRange(store, head);
      throw new HyperError(
        'not-found',
        'CHECKPOINT_NOT_FOUND',
        never
          ? `Checkpoint ${id} was never committed (its flush did not complete); ${kept}`
          : `Checkpoint ${id} was compacted away; ${kept}`,
        { suggestion: 'List the kept checkpoints with `hyper snapshot list`.' },
      );
    }
    return id;
  }
  const want = ref.time.getTime();
  const ids = await retainedCheckpoints(store, head);
  // Binary search on the checkpoint times embedded in the segments (ascending with id).
  let lo = 0;
  let hi = ids.length - 1;
  let best: number | undefined;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const id = ids[mid] as number;
    const t = (await headAt(store, head, id)).checkpointMs;
    if (t <= want) {
      best = id;
      lo = mid + 1;
    } else hi = mid - 1;
  }
  if (best === undefined) {
    throw new HyperError(
      'not-found',
      'CHECKPOINT_NOT_FOUND',
      `No checkpoint at or before ${ref.time.toISOString()}; ${await keptRange(store, head)}`,
      { suggestion: 'List the kept checkpoints and their times with `hyper snapshot list`.' },
    );
  }
  return best;
}

/**
 * For a reader of checkpoint `id` (opened read-only; or of several) that found a segment
 * `key` missing or not what the index says (or that asks before it reads, no key): the error
 * to report when the volume no longer retains that checkpoint (a compaction or restore
 * dropped it and deleted its segments while it was being read), undefined when it still does
 * (the object is missing or damaged for another reason: damage).
 */
export async function droppedWhileRead(
  store: ObjectStore,
  ids: number | readonly number[],
  key?: string,
): Promise<HyperError | undefined> {
  const head = await headOrDeleted(store, key);
  if (head instanceof HyperError) return head;
  const id = (typeof ids === 'number' ? [ids] : ids).find((c) => !isRetainedCheckpoint(head, c));
  if (id === undefined) return undefined;
  return new HyperError(
    'not-found',
    'CHECKPOINT_NOT_FOUND',
    `Checkpoint ${id} was dropped while it was being read (by a compaction or restore${key ? `; ${key} is gone` : ''}); ${await keptRange(store, head)}`,
    {
      suggestion:
        'Read a kept checkpoint (`hyper snapshot list`). To keep one while it is read, name it with `hyper snapshot create`, or compact with a longer --grace (10 minutes by default).',
    },
  );
}

/**
 * For a writer (epoch `epoch`) that found a segment missing: FENCED when another writer, a
 * forced compaction or restore, has taken the volume over since (and may have deleted what
 * this one still read); undefined when not (the object is missing for another reason).
 */
export async function takenOverWhileRead(
  store: ObjectStore,
  epoch: number,
  key: string,
): Promise<HyperError | undefined> {
  const head = await headOrDeleted(store, key);
  if (head instanceof HyperError) return head;
  if (head.epoch <= epoch) return undefined;
  return new HyperError(
    'conflict',
    'FENCED',
    `Another writer took the volume over (epoch ${head.epoch}, ours ${epoch}) while this one was reading it`,
    { suggestion: 'Re-open the volume once the other writer is done.' },
  );
}

/**
 * The head, for explaining an object found missing; a volume deleted meanwhile (no head, or
 * only what a delete in progress left) is that explanation: VOLUME_NOT_FOUND, not damage.
 */
async function headOrDeleted(store: ObjectStore, key?: string): Promise<HeadRecord | HyperError> {
  try {
    return (await readHead(store)).head;
  } catch (e) {
    if (!isHyperError(e, 'VOLUME_NOT_FOUND') && !isHyperError(e, 'NOT_A_VOLUME')) throw e;
    return new HyperError(
      'not-found',
      'VOLUME_NOT_FOUND',
      `The volume at ${store.url} was deleted while it was being read${key ? ` (${key} is gone)` : ''}`,
      { suggestion: 'Check with `hyper file list` whether it still exists.', cause: e },
    );
  }
}

/** `the kept checkpoints are 12-40 (7 of them, from 2026-…Z)`, for messages. */
async function keptRange(store: ObjectStore, head: HeadRecord): Promise<string> {
  const ids = await retainedCheckpoints(store, head).catch(() => [head.checkpoint]);
  if (!ids.includes(head.checkpoint)) ids.push(head.checkpoint);
  ids.sort((a, b) => a - b);
  const first = ids[0]!;
  const since = await headAt(store, head, first).then(
    (h) => ` since ${new Date(h.checkpointMs).toISOString()}`,
    () => '',
  );
  return ids.length === 1
    ? `only checkpoint ${first} is kept${since}`
    : `checkpoints ${first} to ${head.checkpoint} are kept (${ids.length} of them${since ? `,${since}` : ''})`;
}

/** Retained checkpoint ids, ascending (one LIST of seg/). */
export async function retainedCheckpoints(store: ObjectStore, head: HeadRecord): Promise<number[]> {
  const ids: number[] = [];
  for await (const page of store.list(SEGMENT_PREFIX)) {
    for (const o of page.objects) {
      const id = parseSegmentKey(o.key);
      if (id !== undefined && isRetainedCheckpoint(head, id)) ids.push(id);
    }
  }
  return ids;
}

/** What a head says about its volume, in the shape commands and `serve` show. */
export function infoOf(url: string, head: HeadRecord, readOnly: boolean): VolumeInfo {
  const parent = parentOf(head);
  let mapped = 0;
  let dedupBlocks = 0;
  try {
    mapped = rootOf(head).total();
    dedupBlocks = contentsIndexed(dedupRootOf(head)?.total() ?? 0);
  } catch {
    mapped = 0;
  }
  return {
    url,
    uuid: head.uuid,
    formatVersion: head.flags === 0 ? 1 : FORMAT_VERSION,
    size: head.size,
    dataBlockSize: 2 ** head.dataBlockShift,
    metaBlockSize: 2 ** head.metaBlockShift,
    segmentSize: head.segmentSize,
    createdAt: new Date(head.createdMs),
    checkpoint: head.checkpoint,
    checkpointTime: new Date(head.checkpointMs),
    mappedBlocks: mapped,
    readOnly,
    compression: compressionOf(head.flags & FEATURE_CODECS ? (head.compression ?? 0) : 0),
    encryption: head.seal ? cipherName(head.seal.cipher) : 'none',
    ...(head.seal ? { keyId: head.seal.keyId } : {}),
    dedup: !!head.dedup,
    ...(head.dedup ? { dedupBlocks } : {}),
    ...(head.walUrl === undefined ? {} : { walUrl: head.walUrl }),
    ...(parent ? { parent } : {}),
  };
}
