/**
 * Volume-level operations that do not need an open engine: stat, list, delete.
 */
import { HyperError, isHyperError, rethrowUnavailable, toHyperError } from '../../errors.js';
import {
  FLATTEN_KEY,
  HEAD_KEY,
  PIN_PREFIX,
  LEASE_KEY,
  SNAPSHOT_PREFIX,
  WAL_PREFIX,
  parseSegmentKey,
  parseSnapshotKey,
  pinKey,
} from '../keys.js';
import type { ObjectStore } from '../store/types.js';
import { leaseHeldError, leaseInfo, readLease } from './lease.js';
import type { LeaseInfo, VolumeInfo } from './types.js';
import {
  droppedWhileRead,
  headAt,
  infoOf,
  readCheckpointHead,
  readHead,
  parentOf,
  readFlattenRecord,
  readStoredHead,
  unfinishedFlatten,
} from './heads.js';
import { isRetainedCheckpoint, type HeadRecord } from '../codec/head.js';
import { NodeLoader } from '../index/loader.js';
import { SegmentSource, defaultOpenStore, type OpenStoreFn } from './segments.js';
import { newReach, walk } from './walk.js';
import { listPins } from './history.js';

export interface VolumeStat extends VolumeInfo {
  /** Segment objects under seg/. */
  segments: number;
  /** Bytes of all objects of the volume (segments, head, lease, snapshots). */
  storedBytes: number;
  /** size rounded up to whole data blocks. */
  provisionedBytes: number;
  /** mappedBlocks × data block size: bytes that hold data in the current checkpoint. */
  usedBytes: number;
  lease?: LeaseInfo;
  /** Named snapshots. */
  snapshots: number;
  /** Segment ids that hold flushes which never committed (cleaned by compaction). */
  uncommittedSegments: number;
  /** Checkpoints that can be opened, restored or cloned (compaction keeps them). */
  checkpoints: number;
  /** The oldest of them. */
  oldestCheckpoint?: number;
  /** Checkpoints of this volume that clones start from (pinned). */
  clonePins: number;
  /**
   * A flatten that stopped right after dropping the parent link (heads.ts unfinishedFlatten):
   * the parent whose checkpoint it still pins. `hyper snapshot flatten` finishes it.
   */
  unfinishedFlatten?: { url: string; checkpoint: number };
  /** With `space`: where the stored bytes go (needs a walk of the retained indexes). */
  space?: SpaceUsage;
}

export interface SpaceUsage {
  /** Bytes the current checkpoint references: its data blocks and index nodes. */
  liveBytes: number;
  /**
   * Bytes of the segments the current checkpoint reads from that it does not read: blocks
   * and index nodes it replaced (older checkpoints may still read them), and each segment's
   * header. Compaction rewrites a segment once its live share falls below `minLive`.
   */
  deadBytes: number;
  /** Bytes of segments only older retained checkpoints need (history), whole. */
  historyBytes: number;
  /** Bytes of segments no retained checkpoint reaches (compaction reclaims them). */
  garbageBytes: number;
  /** Bytes of live data read from parent volumes (clones). */
  inheritedBytes: number;
}

export interface ProgressEvent {
  done: number;
  total?: number;
  unit: 'objects' | 'bytes';
}

/** Stat a volume without opening it for write: reads head and lease, lists objects. */
export async function statVolume(
  store: ObjectStore,
  options: { signal?: AbortSignal; space?: boolean; openStore?: OpenStoreFn } = {},
): Promise<VolumeStat> {
  const { head } = await readHead(store);
  const lease = await readLease(store);
  let segments = 0;
  let storedBytes = 0;
  let snapshots = 0;
  let uncommitted = 0;
  let clonePins = 0;
  let flattenRecord = false;
  const retained: number[] = [];
  const segSizes = new Map<number, number>();
  const skipped = new Set(head.skipped);
  for await (const page of store.list('', options.signal ? { signal: options.signal } : {})) {
    for (const o of page.objects) {
      storedBytes += o.size;
      const id = parseSegmentKey(o.key);
      if (id !== undefined) {
        segments++;
        segSizes.set(id, o.size);
        if (skipped.has(id) || id > head.lastSegment) uncommitted++;
        else if (isRetainedCheckpoint(head, id)) retained.push(id);
      } else if (parseSnapshotKey(o.key) !== undefined) snapshots++;
      else if (o.key.startsWith(PIN_PREFIX)) clonePins++;
      else if (o.key === FLATTEN_KEY) flattenRecord = true;
    }
  }
  // A damaged record is for `file check` to report; stat shows what it can read.
  const before = flattenRecord
    ? await unfinishedFlatten(store, head).catch(undefinedIfDamaged)
    : undefined;
  const unfinished = before && parentOf(before);
  const info = infoOf(store.url, head, true);
  const bs = info.dataBlockSize;
  return {
    ...info,
    segments,
    storedBytes,
    provisionedBytes: Math.ceil(info.size / bs) * bs,
    usedBytes: info.mappedBlocks * bs,
    ...(lease ? { lease: leaseInfo(lease) } : {}),
    snapshots,
    uncommittedSegments: uncommitted,
    checkpoints: retained.length,
    ...(retained.length > 0 ? { oldestCheckpoint: Math.min(...retained) } : {}),
    clonePins,
    ...(unfinished ? { unfinishedFlatten: unfinished } : {}),
    ...(options.space ? { space: await spaceUsage(store, head, retained, segSizes, options) } : {}),
  };
}

/** Walk the retained indexes: what is live now, what only history needs, what is garbage. */
async function spaceUsage(
  store: ObjectStore,
  head: HeadRecord,
  retained: number[],
  segSizes: Map<number, number>,
  options: { signal?: AbortSignal; openStore?: OpenStoreFn },
): Promise<SpaceUsage> {
  const source = await SegmentSource.forHead(store, head, options.openStore);
  // A checkpoint a compaction drops while this walks it: said so, not reported as damage.
  source.explain = (_seg, key) => droppedWhileRead(store, [head.checkpoint, ...retained], key);
  const nodeSize = 2 ** head.metaBlockShift;
  const loader = new NodeLoader(source, nodeSize, 32 * 1024 * 1024);
  try {
    const cur = newReach();
    await walk(loader, head, cur, { live: true, signal: options.signal });
    const all = newReach();
    const visited = new Set<string>();
    for (const id of retained) {
      all.segments.add(id);
      const h = await headAt(store, head, id);
      await walk(loader, h, all, { visited, signal: options.signal });
    }
    let liveBytes = 0;
    let inheritedBytes = 0;
    for (const [seg, bytes] of cur.live) {
      if (source.inherited(seg)) inheritedBytes += bytes;
      else liveBytes += bytes;
    }
    // Whole segments: those the current checkpoint reads from, those only older retained
    // checkpoints reach, and the rest.
    let current = 0;
    let reachable = 0;
    let stored = 0;
    for (const [id, size] of segSizes) {
      stored += size;
      if (cur.segments.has(id) || id === head.checkpoint) current += size;
      if (all.segments.has(id) || id === head.checkpoint) reachable += size;
    }
    return {
      liveBytes,
      deadBytes: Math.max(0, current - liveBytes),
      historyBytes: Math.max(0, reachable - current),
      garbageBytes: stored - reachable,
      inheritedBytes,
    };
  } finally {
    await source.close();
  }
}

export interface VolumeListing {
  /** Path of the volume relative to the listed prefix, ending with `/` ('' for the prefix itself). */
  name: string;
  url: string;
  size: number;
  checkpoint: number;
  checkpointTime: Date;
  dataBlockSize: number;
  /** Set when the head could not be read (damaged); the volume is still listed. */
  error?: string;
}

/**
 * Volumes at or below a prefix: every prefix that holds a `head` object. Walks the prefix
 * tree with delimiter listings, without descending into a volume's own seg/ and snap/.
 */
export async function listVolumes(
  store: ObjectStore,
  options: { signal?: AbortSignal; maxDepth?: number } = {},
): Promise<VolumeListing[]> {
  const out: VolumeListing[] = [];
  const maxDepth = options.maxDepth ?? 8;
  const visit = async (prefix: string, depth: number): Promise<void> => {
    options.signal?.throwIfAborted();
    const sub = prefix === '' ? store : store.sub(prefix);
    const children: string[] = [];
    let isVolume = false;
    for await (const page of sub.list('', {
      delimiter: '/',
      ...(options.signal ? { signal: options.signal } : {}),
    })) {
      for (const o of page.objects) if (o.key === HEAD_KEY) isVolume = true;
      children.push(...page.prefixes);
    }
    if (isVolume) {
      try {
        const { head } = await readHead(sub);
        const info = infoOf(sub.url, head, true);
        out.push({
          name: prefix,
          url: sub.url,
          size: info.size,
          checkpoint: info.checkpoint,
          checkpointTime: info.checkpointTime,
          dataBlockSize: info.dataBlockSize,
        });
      } catch (e) {
        if (!(e instanceof HyperError)) throw e;
        out.push({
          name: prefix,
          url: sub.url,
          size: 0,
          checkpoint: 0,
          checkpointTime: new Date(0),
          dataBlockSize: 0,
          error: e.message,
        });
      }
      return;
    }
    if (depth >= maxDepth) return;
    for (const c of children) await visit(prefix + c, depth + 1);
  };
  await visit('', 0);
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

export interface DeleteOptions {
  /** Delete even if a live lease is held. */
  force?: boolean;
  onProgress?: (e: ProgressEvent) => void;
  signal?: AbortSignal;
  /** Also delete the WAL objects at this store (when the volume has a WAL elsewhere). */
  walStore?: ObjectStore;
  /** Opens a clone's parent, whose pin on the clone's behalf the delete releases. */
  openStore?: OpenStoreFn;
}

/** A clone's pin: its parent's URL and the pin's key there. */
interface PinLink {
  parent: string;
  key: string;
}

/** What became of a deleted clone's pin on its parent. */
export interface PinRelease extends PinLink {
  /** False only with `force`, when the parent could not be reached: the pin stays. */
  released: boolean;
  /** Why it stays. */
  message?: string;
}

export interface DeleteResult {
  objectsDeleted: number;
  /** For a clone: its pin on its parent. */
  pin?: PinRelease;
}

const DELETE_BATCH = 1000;

/**
 * Delete every object of the volume. The head goes first, so an interrupted delete leaves a
 * prefix that no longer opens as a volume (rerun with the same command to finish, it is
 * idempotent); then a clone's pin on its parent, then segments, snapshots, WAL and the lease.
 * Throws VOLUME_NOT_FOUND if there is neither a head nor any other object.
 */
export async function deleteVolume(
  store: ObjectStore,
  options: DeleteOptions = {},
): Promise<DeleteResult> {
  const signal = options.signal;
  const { headFound, head } = await checkDeletable(store, options);

  // Count first so progress has a total.
  const keys: string[] = [];
  for await (const page of store.list('', signal ? { signal } : {}))
    for (const o of page.objects) keys.push(o.key);
  if (!headFound && !keys.every(isVolumeKey)) {
    // Not the remains of a volume: never delete someone else's objects.
    throw new HyperError(
      'invalid',
      'NOT_A_VOLUME',
      `${store.url} holds objects that are not part of a hyper volume; nothing was deleted`,
      {
        suggestion: 'Check the URL: it must name the volume prefix itself.',
      },
    );
  }
  const walKeys: string[] = [];
  if (options.walStore) {
    for await (const page of options.walStore.list('', signal ? { signal } : {}))
      for (const o of page.objects) walKeys.push(o.key);
  }
  const total = keys.length + walKeys.length;
  let done = 0;
  options.onProgress?.({ done, total, unit: 'objects' });
  // A clone's pin on its parent: known from the head or, when an interrupted delete took the
  // head already, from the head its newest segment embeds.
  // A flatten that stopped after its detach commit leaves the pin, and its record names it.
  const link =
    (head ? pinLinkOf(head) : await pinLinkFromSegments(store, keys)) ??
    (keys.includes(FLATTEN_KEY) ? await pinLinkOfFlatten(store, head) : undefined);
  // After the head (an interrupted delete is then visibly "not a volume") and the pin: the
  // rest, lease last.
  const order = [
    ...keys.filter((k) => k.startsWith(SNAPSHOT_PREFIX)),
    ...keys.filter((k) => k !== HEAD_KEY && !k.startsWith(SNAPSHOT_PREFIX) && k !== LEASE_KEY),
    ...keys.filter((k) => k === LEASE_KEY),
  ];
  const run = async (s: ObjectStore, list: string[]): Promise<void> => {
    for (let i = 0; i < list.length; i += DELETE_BATCH) {
      signal?.throwIfAborted();
      const batch = list.slice(i, i + DELETE_BATCH);
      await s.delete(batch, signal ? { signal } : {});
      done += batch.length;
      options.onProgress?.({ done, total, unit: 'objects' });
    }
  };
  // The head as it is right before it goes: what a clone made meanwhile has the delete put
  // back (byte for byte: no new commit, no other epoch).
  let last: Buffer | undefined;
  if (headFound && !options.force) {
    try {
      last = (await store.get(HEAD_KEY, signal ? { signal } : {})).body;
    } catch (e) {
      if (!isHyperError(e, 'OBJECT_NOT_FOUND')) throw e;
    }
  }
  await run(
    store,
    keys.filter((k) => k === HEAD_KEY),
  );
  if (last) await refuseLateClones(store, last);
  // The pin goes once nothing can open the clone, and before the segments that would tell a
  // rerun which pin to release.
  const pin = link ? await releasePin(store.url, link, options) : undefined;
  await run(store, order);
  if (options.walStore) await run(options.walStore, walKeys);
  return { objectsDeleted: done, ...(pin ? { pin } : {}) };
}

/**
 * After the head's delete: a clone that pinned a checkpoint after `checkDeletable` looked,
 * and read the head before it went (a clone reads it after pinning), exists and reads from
 * this volume. Its pin is listed now: put the head back and stop, with nothing else deleted.
 * A listing that fails puts the head back too (the delete cannot tell).
 */
async function refuseLateClones(store: ObjectStore, headBytes: Buffer): Promise<void> {
  let late: string[];
  try {
    late = await listClones(store);
  } catch (e) {
    await putHeadBack(store, headBytes, e);
    throw e;
  }
  if (late.length === 0) return;
  const why = new HyperError(
    'conflict',
    'HAS_CLONES',
    `A clone of ${store.url} was made while it was being deleted (${late.join(', ')}); the delete stopped and nothing was deleted`,
    {
      suggestion: `Flatten the clone (\`hyper snapshot flatten CLONE_URL\`) or delete it, then delete ${store.url} again.`,
    },
  );
  await putHeadBack(store, headBytes, why);
  throw why;
}

async function putHeadBack(store: ObjectStore, headBytes: Buffer, why: unknown): Promise<void> {
  try {
    await store.put(HEAD_KEY, headBytes, { ifNoneMatch: true });
  } catch (e) {
    if (isHyperError(e, 'PRECONDITION_FAILED')) return;
    const he = toHyperError(why);
    throw new HyperError(
      he.kind,
      he.code,
      `${he.message}; putting the volume's head back failed too (${toHyperError(e).message}): ${store.url} has no head`,
      {
        suggestion: `Run \`hyper file repair ${store.url}\` to bring the head back from the newest segment, then decide again.`,
        cause: e,
      },
    );
  }
}

/** A clone's pin: its parent's URL and the key there (none for a volume that is no clone). */
function pinLinkOf(head: HeadRecord): PinLink | undefined {
  const parent = parentOf(head)?.url;
  return parent === undefined ? undefined : { parent, key: pinKey(head.uuid) };
}

/** pinLinkOf the head an unfinished flatten recorded (none if damaged, or not this volume's). */
async function pinLinkOfFlatten(
  store: ObjectStore,
  head: HeadRecord | undefined,
): Promise<PinLink | undefined> {
  // Without a head (an interrupted delete run again), the record as stored.
  const before = await (head ? unfinishedFlatten(store, head) : readFlattenRecord(store)).catch(
    undefinedIfDamaged,
  );
  return before ? pinLinkOf(before) : undefined;
}

const undefinedIfDamaged = (e: unknown): undefined => {
  if (isHyperError(e) && e.kind === 'data') return undefined;
  throw e;
};

/** pinLinkOf the head the newest readable segment embeds (a few are tried). */
async function pinLinkFromSegments(
  store: ObjectStore,
  keys: string[],
): Promise<PinLink | undefined> {
  const ids = keys
    .map(parseSegmentKey)
    .filter((id): id is number => id !== undefined)
    .sort((a, b) => b - a);
  for (const id of ids.slice(0, 4)) {
    try {
      return pinLinkOf(await readCheckpointHead(store, id));
    } catch (e) {
      if (!(isHyperError(e) && e.kind === 'data')) throw e;
    }
  }
  return undefined;
}

/**
 * Delete a deleted clone's pin on its parent. A parent that is gone took its pins with it.
 * Any other failure stops the delete (a rerun finishes it) unless `force`, which leaves the
 * pin and says so: a pin kept costs the parent space, never data.
 */
async function releasePin(url: string, link: PinLink, options: DeleteOptions): Promise<PinRelease> {
  const open = options.openStore ?? defaultOpenStore;
  try {
    const parent = await open(link.parent);
    try {
      await parent.delete([link.key], options.signal ? { signal: options.signal } : {});
    } finally {
      await parent.close();
    }
    return { ...link, released: true };
  } catch (e) {
    const he = toHyperError(e);
    if (he.kind === 'not-found') return { ...link, released: true };
    if (he.code === 'ABORTED') throw he;
    const message = `its pin ${link.key} on the parent ${link.parent} could not be released: ${he.message}`;
    if (options.force) return { ...link, released: false, message };
    throw new HyperError(
      he.kind,
      he.code,
      `The head of the clone ${url} is deleted, but ${message}`,
      {
        cause: e,
        suggestion: `Run the same delete again once ${link.parent} can be reached: it finishes the job. With --force the delete goes on and leaves the pin (release it later with \`hyper snapshot unpin ${link.parent} ${url}\`).`,
      },
    );
  }
}

/**
 * The clones that read from this volume: the URLs their pins record, and the keys of pins
 * whose record is damaged (a pin in doubt counts as a clone).
 */
export async function listClones(store: ObjectStore): Promise<string[]> {
  const { pins, damaged } = await listPins(store);
  return [...pins.map((p) => p.cloneUrl || p.key), ...damaged];
}

/**
 * The check `deleteVolume` makes before deleting anything: LEASE_HELD while another process
 * holds a live lease and HAS_CLONES while clones read from it, unless `force`; VOLUME_NOT_FOUND
 * when there is no volume. A caller that
 * asks for confirmation runs it before asking, too. `headFound` is false for a damaged or
 * half-deleted volume, which has no lease to respect and can still be deleted.
 */
export async function checkDeletable(
  store: ObjectStore,
  options: { force?: boolean } = {},
): Promise<{ headFound: boolean; head?: HeadRecord }> {
  let headFound = true;
  let head: HeadRecord | undefined;
  try {
    ({ head } = await readStoredHead(store));
  } catch (e) {
    if (isHyperError(e, 'VOLUME_NOT_FOUND')) throw e;
    // A damaged head, or a half-deleted volume (NOT_A_VOLUME): still deletable.
    if (!isHyperError(e, 'NOT_A_VOLUME') && !isHyperError(e, 'CORRUPT_OBJECT')) throw e;
    headFound = false;
  }
  // A damaged lease record holds nothing; a store that fails the read may hide a live one.
  const lease = await readLease(store).catch(rethrowUnavailable);
  if (headFound && lease?.live && !options.force) throw leaseHeldError(lease);
  if (!options.force) {
    const clones = await listClones(store);
    if (clones.length > 0) {
      throw new HyperError(
        'conflict',
        'HAS_CLONES',
        `${store.url} has ${clones.length} clone${clones.length === 1 ? '' : 's'} that read${clones.length === 1 ? 's' : ''} data from it: ${clones.join(', ')}`,
        {
          suggestion: `Flatten the clones (\`hyper snapshot flatten CLONE_URL\`) or delete them (\`hyper file delete CLONE_URL\` releases its pin) first. A clone that is already gone left its pin behind: release it with \`hyper snapshot unpin ${store.url} CLONE_URL\`. --force deletes anyway and breaks the clones.`,
        },
      );
    }
  }
  return { headFound, ...(head ? { head } : {}) };
}

const isVolumeKey = (k: string): boolean =>
  k === HEAD_KEY ||
  k === FLATTEN_KEY ||
  k === LEASE_KEY ||
  parseSegmentKey(k) !== undefined ||
  parseSnapshotKey(k) !== undefined ||
  k.startsWith(WAL_PREFIX);
