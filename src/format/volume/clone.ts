/**
 * Clones: a new writable volume that starts from a checkpoint of another volume and shares
 * its segments copy-on-write (FORMAT.md "Clones"). Nothing is copied at clone time: the
 * clone's first checkpoint uses the parent checkpoint's index root, and segment ids at or
 * below the parent's base are read from the parent. The parent keeps the checkpoint pinned
 * (`pin/<clone uuid>`) so its compaction never removes what the clone reads.
 */
import { randomBytes } from 'node:crypto';
import { HyperError, dataError, isHyperError, toHyperError } from '../../errors.js';
import { encodeHead, type HeadRecord } from '../codec/head.js';
import { encodeSnapshot } from '../codec/snapshot.js';
import { NodeLoader } from '../index/loader.js';
import { FLATTEN_KEY, HEAD_KEY, PIN_PREFIX, SNAPSHOT_PREFIX, pinKey, segmentKey } from '../keys.js';
import { probeConditionalWrites } from '../store/probe.js';
import type { ObjectStore } from '../store/types.js';
import { SegmentSource, type OpenStoreFn } from './segments.js';
import type { CheckpointRef, OpenOptions, VolumeInfo } from './types.js';
import {
  headAt,
  infoOf,
  readCheckpointHead,
  readHead,
  readStoredHead,
  parentOf,
  resolveCheckpoint,
  unfinishedFlatten,
} from './heads.js';
import { buildEmptySegment } from './segment-builder.js';
import { Volume } from './volume.js';
import { confirmPinned, listPins, listSnapshots, type PinEntry } from './history.js';
import { newReach, rewriteBlocks, walk } from './walk.js';

export interface CloneResult {
  parent: string;
  checkpoint: number;
  clone: VolumeInfo;
  flattened?: FlattenResult;
}

/** Create a clone of `parent` at checkpoint `from` under `child` (which must be empty). */
export async function cloneVolume(
  parent: ObjectStore,
  from: CheckpointRef,
  child: ObjectStore,
  options: { flatten?: boolean; openStore?: OpenStoreFn; signal?: AbortSignal } = {},
): Promise<CloneResult> {
  const { head: ph } = await readHead(parent);
  const checkpoint = await resolveCheckpoint(parent, ph, from);
  const at = await headAt(parent, ph, checkpoint);
  if (await child.head(HEAD_KEY)) {
    throw new HyperError('conflict', 'VOLUME_EXISTS', `A volume already exists at ${child.url}`);
  }
  await probeConditionalWrites(child, options.signal ? { signal: options.signal } : {});
  const uuid = randomBytes(16).toString('hex');
  const base = ph.lastSegment;
  const now = Date.now();
  const id = base + 1;
  const head: HeadRecord = {
    uuid,
    createdMs: now,
    size: at.size,
    dataBlockShift: at.dataBlockShift,
    metaBlockShift: at.metaBlockShift,
    // Blocks are read from the parents' segments as stored there: the clone keeps their codecs.
    flags: at.flags,
    ...(at.compression === undefined ? {} : { compression: at.compression }),
    // …and their seal: the same key and salt open the parent's blocks.
    ...(at.seal ? { seal: at.seal } : {}),
    // …and their content index: equal blocks written to the clone share the parent's.
    ...(at.dedup ? { dedup: at.dedup } : {}),
    segmentSize: at.segmentSize,
    checkpoint: id,
    checkpointMs: now,
    prevCheckpoint: 0,
    lastSegment: id,
    epoch: 0,
    rootLevel: at.rootLevel,
    root: at.root,
    skipped: [],
    clone: {
      checkpoint,
      chain: [{ url: parent.url, base }, ...(at.clone?.chain ?? ph.clone?.chain ?? [])],
    },
  };
  const headBytes = encodeHead(head);
  // The clone's first segment goes before its pin: while the pin exists, the clone's URL is
  // never empty, so an unpin that looks there meanwhile cannot tell the clone is gone (it
  // finds objects but no head) and keeps the pin. (Nothing reads through the segment alone.)
  try {
    await child.put(segmentKey(id), buildEmptySegment(id, now, headBytes), { ifNoneMatch: true });
  } catch (e) {
    if (isHyperError(e, 'OBJECT_EXISTS'))
      throw new HyperError(
        'conflict',
        'VOLUME_EXISTS',
        `${child.url} already holds volume segments`,
        {
          suggestion: `Another clone or create may be running there, or an interrupted one left objects behind: use another URL, or remove them with \`hyper file delete ${child.url}\`.`,
        },
      );
    // A PUT that failed may have landed all the same.
    await dropOurSegment(child, id, uuid);
    throw e;
  }
  // The pin (best effort: one left behind is dangling, which file check lists), then the
  // segment after it.
  const takeBack = async (): Promise<void> => {
    await parent.delete([pinKey(uuid)]).catch(() => undefined);
    await dropOurSegment(child, id, uuid);
  };
  // The pin: from here on the parent's compaction keeps the checkpoint (or, if one was
  // dropping it at this very moment, confirmPinned finds out and removes the pin).
  try {
    await parent.put(
      pinKey(uuid),
      encodeSnapshot({ checkpoint, createdMs: Date.now(), kind: 'clone-pin', note: child.url }),
      { ifNoneMatch: true },
    );
    await confirmPinned(parent, checkpoint, pinKey(uuid));
  } catch (e) {
    // A PUT that failed may have landed all the same: nothing reads through the pin yet.
    await takeBack();
    throw e;
  }
  try {
    await child.put(HEAD_KEY, headBytes, { ifNoneMatch: true });
  } catch (e) {
    // Before the clone's head exists nothing reads through the pin: take it back, then the
    // segment. A head that landed all the same reads from the parent: the pin must stay.
    if (!(await cloneHeadIsOurs(child, uuid))) await takeBack();
    throw e;
  }
  const result: CloneResult = {
    parent: parent.url,
    checkpoint,
    clone: infoOf(child.url, head, false),
  };
  if (!options.flatten) return result;
  try {
    result.flattened = await flattenVolume(child, {
      ...(options.openStore ? { openStore: options.openStore } : {}),
    });
    result.clone = infoOf(child.url, (await readHead(child)).head, false);
    return result;
  } catch (e) {
    // The clone exists and reads from the parent: the pin stays.
    const he = toHyperError(e);
    throw new HyperError(
      he.kind,
      he.code,
      `The clone ${child.url} was created, but flattening it failed: ${he.message}`,
      {
        suggestion: `The clone is usable and still reads from its parent; run \`hyper snapshot flatten ${child.url}\` to finish.`,
        cause: e,
      },
    );
  }
}

/**
 * Put the pin of the clone `uuid` back on `parent` if it is missing: an unpin released it
 * while the clone looked gone (a flatten between its detach and putting its link back; see
 * flattenVolume and unpinClone, each of which looks again after its own step). Throws
 * CHECKPOINT_NOT_FOUND (pin taken back) if a compaction dropped the checkpoint meanwhile.
 */
async function repin(
  parent: ObjectStore,
  uuid: string,
  checkpoint: number,
  cloneUrl: string,
): Promise<void> {
  const key = pinKey(uuid);
  if (await parent.head(key)) return;
  try {
    await parent.put(
      key,
      encodeSnapshot({ checkpoint, createdMs: Date.now(), kind: 'clone-pin', note: cloneUrl }),
      { ifNoneMatch: true },
    );
  } catch (e) {
    // Put back by the other side at the same moment: it is there.
    if (!isHyperError(e, 'PRECONDITION_FAILED')) throw e;
  }
  await confirmPinned(parent, checkpoint, key);
}

/** Delete the clone's first segment if it is ours (a failed PUT may have landed, or not). */
async function dropOurSegment(child: ObjectStore, id: number, uuid: string): Promise<void> {
  try {
    if ((await readCheckpointHead(child, id)).uuid === uuid) await child.delete([segmentKey(id)]);
  } catch {
    // Not there, not ours, or unreadable: left for `file check` to list.
  }
}

/**
 * Whether the clone's head that a failed step may or may not have written exists and is
 * ours. Unknown (the store cannot tell us) counts as yes: a pin kept in doubt costs space,
 * a pin dropped in error costs the clone its data.
 */
async function cloneHeadIsOurs(child: ObjectStore, uuid: string): Promise<boolean> {
  try {
    return (await readHead(child)).head.uuid === uuid;
  } catch (e) {
    return !(isHyperError(e, 'VOLUME_NOT_FOUND') || isHyperError(e, 'NOT_A_VOLUME'));
  }
}

export interface FlattenResult {
  /** The parent the clone no longer reads from, and the checkpoint its pin kept there. */
  parent: { url: string; checkpoint: number };
  blocksCopied: number;
  bytesCopied: number;
  checkpoint: number;
  /** This run finished a flatten that had stopped after its detach commit. */
  resumed: boolean;
}

/**
 * Copy everything the clone still reads from its parents into its own segments, then commit
 * a checkpoint without the parent link and release the parent's pin. The clone's older
 * checkpoints (which may read parent segments) are dropped. On a volume whose flatten stopped
 * right after that commit (FLATTEN_KEY), only the steps after it run (`resumed`).
 */
export async function flattenVolume(
  store: ObjectStore,
  options: Pick<OpenOptions, 'holder' | 'force' | 'logger' | 'openStore'> & {
    signal?: AbortSignal;
    onProgress?: (done: number, total: number) => void;
  } = {},
): Promise<FlattenResult> {
  // Before taking the lease: a volume that is no clone is refused as such, even while served.
  await flattenable(store, (await readHead(store)).head);
  const vol = await Volume.open(store, { ...options, flushIntervalMs: 0 });
  try {
    // The head as this run holds it (another flatten may have committed meanwhile).
    const cur = vol.headRecord;
    const before = await flattenable(store, cur);
    if (before) {
      // A flatten that stopped after its detach commit: only the steps after it are left.
      // The commit set the history floor; compaction waits for this, so it has not moved.
      const parent = await afterDetach(
        store,
        vol,
        before,
        cur.history?.floor ?? cur.checkpoint,
        options,
      );
      return {
        parent,
        blocksCopied: 0,
        bytesCopied: 0,
        checkpoint: vol.headRecord.checkpoint,
        resumed: true,
      };
    }
    await refuseOwnRecords(store);
    const source = await SegmentSource.forHead(store, cur, options.openStore);
    const nodeSize = 2 ** cur.metaBlockShift;
    const loader = new NodeLoader(source, nodeSize, 64 * 1024 * 1024);
    const reach = newReach();
    await walk(loader, cur, reach, { live: true, signal: options.signal });
    const lbas: number[] = [];
    const inherited = [...reach.segments].filter((seg) => vol.inherited(seg));
    for (const seg of inherited)
      lbas.push(...(reach.blocks.get(seg) ?? []), ...(reach.nodeLbas.get(seg) ?? []));
    // Deduplicating volumes: the content index lets go of the parents' blocks (those copied
    // get entries at their new places) and its nodes stored there are written anew.
    vol.patchDedup({
      forget: inherited.flatMap((seg) => reach.dedupKeys.get(seg) ?? []),
      touch: inherited.flatMap((seg) => reach.dedupNodeKeys.get(seg) ?? []),
    });
    await source.close();
    const copied = await rewriteBlocks(vol, lbas, options.signal, options.onProgress);
    // Still the writer right before the record goes down: a flatten fenced meanwhile (by a
    // forced one, which may have finished and released the pin) must leave no record that
    // would claim a pin that is gone (chaos seed 36651).
    await vol.confirmWriter();
    // What to put back, and the sign of a flatten stopped after the commit below: an unpin
    // of our pin and compaction of this volume wait for it to go (see afterDetach).
    await putFlattenRecord(store, vol, cur);
    const { checkpoint } = await vol.detachFromParent();
    const parent = await afterDetach(store, vol, cur, checkpoint, options);
    return {
      parent,
      blocksCopied: copied.blocks,
      bytesCopied: copied.bytes,
      checkpoint,
      resumed: false,
    };
  } finally {
    await vol.close();
  }
}

/**
 * Record `head` as the one a flatten detaches from, by conditional PUTs only. The PUT of a
 * flatten fenced right after its last check can arrive late (chaos seed 50858): it must
 * never replace the record of the flatten that took over, which may have stopped after its
 * detach commit with that record as the only sign of it. So the record is created; one found
 * there (a late PUT landed while the volume was still a clone, or the leftover of a flatten
 * that undid its detach) is replaced only by its version, after this run proved once more
 * that it holds the lease. (A late PUT that lands where no record is, after the flatten that
 * took over finished, is told from a real one by its epoch: heads.ts unfinishedFlatten.)
 */
async function putFlattenRecord(store: ObjectStore, vol: Volume, head: HeadRecord): Promise<void> {
  const body = encodeHead(head);
  for (let attempt = 1; ; attempt++) {
    try {
      await store.put(FLATTEN_KEY, body, { ifNoneMatch: true });
      return;
    } catch (e) {
      if (!isHyperError(e, 'OBJECT_EXISTS') || attempt >= 4) throw e;
    }
    const found = await store.head(FLATTEN_KEY);
    if (!found) continue;
    await vol.confirmWriter();
    try {
      await store.put(FLATTEN_KEY, body, { ifMatch: found.etag });
      return;
    } catch (e) {
      if (!isHyperError(e, 'PRECONDITION_FAILED') || attempt >= 4) throw e;
    }
  }
}

/** A clone with clones or named snapshots of its own is not flattened (they would break). */
async function refuseOwnRecords(store: ObjectStore): Promise<void> {
  const refusals = [
    {
      prefix: PIN_PREFIX,
      message: 'Clones of this volume still read from it through its parent',
      suggestion: 'Flatten or delete the clones of this clone first.',
    },
    {
      prefix: SNAPSHOT_PREFIX,
      message: 'Flattening drops the clone’s history, and it has named snapshots',
      suggestion: 'Delete the clone’s snapshots (`hyper snapshot delete`) first.',
    },
  ];
  for (const r of refusals)
    for await (const page of store.list(r.prefix))
      if (page.objects.length > 0)
        throw new HyperError('conflict', 'PRECONDITION_FAILED', r.message, {
          suggestion: r.suggestion,
        });
}

/**
 * Whether `head` can be flattened: undefined for a clone; for a volume whose last flatten
 * stopped after its detach commit, the head that flatten detached from. INVALID_ARGUMENT for
 * any other volume.
 */
async function flattenable(store: ObjectStore, head: HeadRecord): Promise<HeadRecord | undefined> {
  if (head.clone) return undefined;
  const before = await unfinishedFlatten(store, head);
  if (before) return before;
  throw new HyperError('invalid', 'INVALID_ARGUMENT', `${store.url} is not a clone`, {
    suggestion: 'Only volumes made by "hyper snapshot clone" have a parent to detach from.',
  });
}

/**
 * The steps after a flatten's detach commit (checkpoint `detached`; `before` is the head it
 * replaced, as FLATTEN_KEY holds it). A snapshot or a clone of this volume made while it was
 * being flattened (after the flatten's first check, and before the commit dropped the
 * checkpoint it names: its maker reads the head after writing its record) reads the parent
 * through that checkpoint. Then, or when that cannot be told, the detach is undone: the
 * volume stays a clone (every block it reads is its own by now) with the history it had, and
 * keeps its pin, and then FLATTEN_KEY goes. Otherwise FLATTEN_KEY goes, then the parent's pin.
 * Returns the parent (the clone link of `before`).
 */
async function afterDetach(
  store: ObjectStore,
  vol: Volume,
  before: HeadRecord,
  detached: number,
  options: Pick<OpenOptions, 'openStore'>,
): Promise<FlattenResult['parent']> {
  const link = before.clone as NonNullable<HeadRecord['clone']>;
  const parent = parentOf(before) as FlattenResult['parent'];
  const parentUrl = parent.url;
  const onParent = async (fn: (p: ObjectStore) => Promise<void>): Promise<void> => {
    const p = await (options.openStore ?? SegmentSource.defaultOpen)(parentUrl);
    try {
      await fn(p);
    } finally {
      await p.close();
    }
  };
  const late = await recordsBefore(store, detached).catch((e: unknown) => toHyperError(e));
  if (!Array.isArray(late) || late.length > 0) {
    await vol.reattachToParent(link, before.history);
    // An unpin (of an older hyper) that saw the volume detached may have released the pin.
    await onParent((p) => repin(p, before.uuid, link.checkpoint, store.url));
    await store.delete([FLATTEN_KEY]);
    if (!Array.isArray(late))
      throw new HyperError(
        late.kind,
        late.code,
        `Flattening ${store.url} could not list its snapshots and clones afterwards (${late.message}): it stays a clone of ${parentUrl} (every block it reads is its own by now)`,
        { suggestion: 'Run the flatten again once the store answers.', cause: late },
      );
    throw new HyperError(
      'conflict',
      late.every((r) => r.what.startsWith('snapshot')) ? 'PRECONDITION_FAILED' : 'HAS_CLONES',
      `${late.map((r) => r.what).join(', ')} of ${store.url}, made while it was being flattened, read${late.length === 1 ? 's' : ''} ${parentUrl} through an older checkpoint: it stays a clone of ${parentUrl} (every block it reads is its own by now)`,
      {
        suggestion: `Flatten or delete those clones and delete those snapshots, then run the flatten again.`,
      },
    );
  }
  // Nothing reads through the dropped checkpoints: the record has done its work (a pin left
  // behind after it is gone is stale, and `hyper snapshot unpin` releases it), and the parent
  // no longer needs to keep our checkpoint.
  await store.delete([FLATTEN_KEY]);
  await onParent((p) => p.delete([pinKey(before.uuid)]));
  return parent;
}

/**
 * The snapshots and clone pins of `store` that name a checkpoint before `checkpoint` (a
 * damaged pin counts; its checkpoint is unknown).
 */
async function recordsBefore(
  store: ObjectStore,
  checkpoint: number,
): Promise<{ what: string; checkpoint?: number }[]> {
  const out: { what: string; checkpoint?: number }[] = [];
  for (const s of await listSnapshots(store))
    if (s.checkpoint < checkpoint)
      out.push({ what: `snapshot "${s.name}"`, checkpoint: s.checkpoint });
  const { pins, damaged } = await listPins(store);
  for (const p of pins)
    if (p.checkpoint < checkpoint)
      out.push({ what: `clone ${p.cloneUrl}`, checkpoint: p.checkpoint });
  for (const key of damaged) out.push({ what: `damaged clone pin ${key}` });
  return out;
}

export interface UnpinResult {
  parent: string;
  released: PinEntry[];
  /** Pins that matched and stay, and why: their clone exists, or that could not be told. */
  kept: (PinEntry & { cloneExists: boolean; reason: string })[];
}

/**
 * Release the pins that a clone which no longer exists left on `parent` (`hyper snapshot
 * unpin`): a clone deleted by a hyper that did not release pins yet, or one deleted with
 * --force while its parent could not be reached. `clone` is the clone's URL as its pins
 * record it, or its UUID. A pin stays while a volume with its UUID is at the URL it records (flatten or delete
 * that clone instead), and while that URL cannot be read, unless `force`. A clone being
 * created at that URL keeps its pin: it writes its first segment before its pin, so the URL
 * is not empty (cannot tell: kept unless `force`). A clone being flattened keeps its pin
 * until the flatten releases it: the flatten records the head it detaches from (FLATTEN_KEY)
 * before its detach commit, and deletes that record only once it found nothing that reads
 * through the checkpoints it dropped, or put its link back. (A flatten that records nothing,
 * an older hyper's, may put its link back after this looked: this looks again after the
 * delete, and that flatten checks the pin after putting its link back.)
 */
export async function unpinClone(
  parent: ObjectStore,
  clone: string,
  options: { openStore?: OpenStoreFn; force?: boolean } = {},
): Promise<UnpinResult> {
  await readHead(parent);
  const open = options.openStore ?? SegmentSource.defaultOpen;
  const byUuid = /^[0-9a-f]{32}$/.test(clone);
  const wanted = byUuid ? clone : await canonicalUrl(clone, open);
  const { pins, damaged } = await listPins(parent);
  if (damaged[0] !== undefined)
    throw dataError('CORRUPT_OBJECT', damaged[0], `Clone pin record ${damaged[0]} is damaged`);
  const matches = pins.filter((p) => (byUuid ? p.uuid === wanted : p.cloneUrl === wanted));
  if (matches.length === 0) {
    throw new HyperError(
      'not-found',
      'SNAPSHOT_NOT_FOUND',
      `No clone pin on ${parent.url} names ${byUuid ? `the clone ${clone}` : clone}`,
      {
        suggestion: `\`hyper snapshot list ${parent.url}\` names the clones that pin its checkpoints ("pinned by clone URL"): give one of those URLs exactly, or the clone's UUID.`,
      },
    );
  }
  const released: PinEntry[] = [];
  const kept: UnpinResult['kept'] = [];
  for (const pin of matches) {
    const why = await cloneHolds(pin.cloneUrl, pin.uuid, open);
    if (why === undefined || (options.force && !why.live)) released.push(pin);
    else kept.push({ ...pin, cloneExists: why.live, reason: why.reason });
  }
  if (released.length > 0) {
    await parent.delete(released.map((p) => p.key));
    // A flatten of the clone (an older hyper's, see above) that put its link back after we
    // looked (a clone of it was made meanwhile): look again, and put its pin back (the
    // flatten checks the pin after putting its link back, so one of the two sees the other).
    for (const pin of [...released]) {
      const why = await cloneHolds(pin.cloneUrl, pin.uuid, open);
      if (why === undefined || (options.force && !why.live)) continue;
      try {
        await repin(parent, pin.uuid, pin.checkpoint, pin.cloneUrl);
      } catch (e) {
        const he = toHyperError(e);
        throw new HyperError(
          he.kind,
          he.code,
          `The volume at ${pin.cloneUrl} became a clone again while its pin ${pin.key} was being released (a flatten found a clone of it made meanwhile), and putting the pin back failed: ${he.message}`,
          {
            suggestion: `Run \`hyper snapshot list ${parent.url}\`: if no clone pin names ${pin.cloneUrl}, check the clones of ${pin.cloneUrl} with \`hyper file check --deep\` before relying on them.`,
            cause: e,
          },
        );
      }
      released.splice(released.indexOf(pin), 1);
      kept.push({ ...pin, cloneExists: why.live, reason: why.reason });
    }
  }
  if (released.length === 0) {
    const k = kept[0] as UnpinResult['kept'][number];
    const live = kept.some((p) => p.cloneExists);
    throw new HyperError(
      'conflict',
      'HAS_CLONES',
      `The pin ${k.key} on ${parent.url} stays: ${k.reason}`,
      {
        suggestion: live
          ? `Flatten the clone (\`hyper snapshot flatten ${k.cloneUrl}\`) or delete it (\`hyper file delete ${k.cloneUrl}\`): either releases the pin.`
          : "Check the clone's URL and credentials and run the unpin again; --force releases the pin anyway, breaking the clone if it still exists.",
      },
    );
  }
  return { parent: parent.url, released, kept };
}

/** The URL as a store names it (how pins record it); the input itself if it does not open. */
async function canonicalUrl(url: string, open: OpenStoreFn): Promise<string> {
  let store: ObjectStore;
  try {
    store = await open(url);
  } catch (e) {
    if (isHyperError(e) && e.kind !== 'internal') return url;
    throw e;
  }
  try {
    return store.url;
  } finally {
    await store.close();
  }
}

/**
 * Why a pin must stay: its clone (a volume with `uuid` at `url`) exists (`live`), or `url`
 * cannot be read to tell. Undefined when the clone is gone.
 */
export async function cloneHolds(
  url: string,
  uuid: string,
  open: OpenStoreFn,
): Promise<{ live: boolean; reason: string } | undefined> {
  let store: ObjectStore | undefined;
  try {
    store = await open(url);
    const { head } = await readStoredHead(store);
    // Another volume took the URL over: it reads nothing here.
    if (head.uuid !== uuid) return undefined;
    if (head.clone)
      return { live: true, reason: `the clone exists at ${url} and reads from this volume` };
    // Flattened. A flatten that stopped after its detach commit has not yet made sure that
    // nothing reads this volume through it (a clone of the clone made meanwhile); one that
    // stopped after that (before or after its pin delete) leaves nothing to wait for.
    return (await unfinishedFlatten(store, head))
      ? {
          live: true,
          reason: `a flatten of the clone at ${url} stopped before it made sure nothing reads this volume through the clone (\`hyper snapshot flatten ${url}\` finishes it and releases the pin)`,
        }
      : undefined;
  } catch (e) {
    const he = toHyperError(e);
    if (he.kind === 'not-found') return undefined;
    // No head but objects (an interrupted delete, whose rerun releases the pin itself, or a
    // lost head that `file repair` brings back), a damaged head, a store that fails: unknown.
    return { live: false, reason: `cannot tell whether the clone at ${url} exists: ${he.message}` };
  } finally {
    await store?.close();
  }
}
