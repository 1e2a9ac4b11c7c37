/**
 * Compaction: apply a retention policy to the checkpoint history, copy live blocks out of
 * mostly-dead segments, and delete segments that no retained checkpoint reaches.
 *
 * Safety (FORMAT.md "Compaction"): every change to the volume is an ordinary commit (a
 * rewrite of live blocks, then a head recording the new history floor), and deletions come
 * last and only touch segments that no retained checkpoint reaches. Readers that opened a
 * checkpoint before it was dropped are protected by a grace period: a run deletes only what
 * was unreachable under the history as it stood at least `graceMs` ago. Interrupted at any
 * point, the volume stays valid; a rerun finishes the job.
 */
import { HyperError, dataError, isHyperError, toHyperError } from '../../errors.js';
import { DecodeError } from '../codec/binary.js';
import { isRetainedCheckpoint, type HeadRecord } from '../codec/head.js';
import { NodeLoader } from '../index/loader.js';
import { PIN_PREFIX, SEGMENT_PREFIX, parseSegmentKey, segmentKey } from '../keys.js';
import type { ObjectStore } from '../store/types.js';
import { listSnapshots } from './history.js';
import { decodeSnapshot } from '../codec/snapshot.js';
import type { Logger } from './types.js';
import {
  droppedWhileRead,
  headAt,
  readHead,
  takenOverWhileRead,
  unfinishedFlatten,
} from './heads.js';
import { DEFAULT_GRACE_MS, DEFAULT_MIN_LIVE } from './types.js';
import { Volume } from './volume.js';
import { newReach, rewriteBlocks, walk } from './walk.js';
import { SegmentSource, type OpenStoreFn } from './segments.js';

export { DEFAULT_GRACE_MS, DEFAULT_MIN_LIVE };

export interface CompactOptions {
  /** Keep the newest N checkpoints (the new checkpoint compaction makes counts). */
  keepLast?: number;
  /** Keep checkpoints made within this many ms. */
  keepWithinMs?: number;
  /** Rewrite segments whose live fraction is below this (0 disables; default 0.9). */
  minLive?: number;
  /** Delete only what has been unreachable for this long (default 10 min). */
  graceMs?: number;
  dryRun?: boolean;
  holder?: string;
  force?: boolean;
  logger?: Logger;
  signal?: AbortSignal;
  onProgress?: (phase: 'scan' | 'rewrite' | 'delete', done: number, total?: number) => void;
  openStore?: OpenStoreFn;
  /**
   * Online compaction: the volume as its live writer holds it open (`store` is that
   * volume's), which this run uses instead of taking the lease, beside the writer's clients.
   * Blocks they change while it runs keep their changes (Volume.rewrite); segments the
   * writer has not committed yet are never deleted. Deduplicating volumes are refused
   * (INVALID_ARGUMENT): they are compacted offline.
   */
  volume?: Volume;
  /**
   * Checkpoints kept as if a snapshot named them: those the caller's own readers serve (a
   * daemon's `--at` exports of this volume). Asked when the policy is decided and again after
   * the history commit, like the snapshot records: a reader that registers before that second
   * look keeps its checkpoint, and one registering after it sees the drop when it confirms
   * its checkpoint (confirmKept).
   */
  keepCheckpoints?: () => Iterable<number>;
}

export interface CompactResult {
  dryRun: boolean;
  checkpointsBefore: number;
  checkpointsAfter: number;
  checkpointsDropped: number;
  segmentsBefore: number;
  segmentsDeleted: number;
  /** Unreachable segments left for a later run because of the grace period. */
  segmentsDeferred: number;
  bytesReclaimed: number;
  segmentsRewritten: number;
  blocksRewritten: number;
  bytesRewritten: number;
  storedBytesBefore: number;
  storedBytesAfter: number;
  /** Bytes the current checkpoint references (data and index nodes). */
  liveBytes: number;
  /** The checkpoint after compaction. */
  checkpoint: number;
  /**
   * The store had no room for the blocks to move: this run only dropped checkpoints and
   * deleted what nothing reads (none of which needs more than a few KiB), and made too little
   * room to move them after that. A later run, once more is deleted, moves them.
   */
  rewriteSkipped: boolean;
}

interface SegInfo {
  size: number;
  lastModified: Date;
}

export async function compactVolume(
  store: ObjectStore,
  options: CompactOptions = {},
): Promise<CompactResult> {
  try {
    return await compactOnce(store, options);
  } catch (e) {
    if (!noRoomToRewrite.has(e as object)) throw e;
    options.logger?.warn(
      'compaction: the store has no room for the blocks it moves; dropping checkpoints and deleting what nothing reads first',
      { error: toHyperError(e).message },
    );
  }
  // A full store: what needs only a few KiB first (the history commit, the deletes), then the
  // rewrite, if that made room. (The failed attempt committed nothing but copies of blocks.)
  // (The failed attempt may not have given its lease back: take it again, being its holder.)
  const first = await compactOnce(store, { ...options, minLive: 0 }, true);
  if (first.bytesReclaimed === 0) return { ...first, rewriteSkipped: true };
  let second: CompactResult;
  try {
    second = await compactOnce(store, options, true);
  } catch (e) {
    if (!noRoomToRewrite.has(e as object)) throw e;
    return { ...first, rewriteSkipped: true };
  }
  return {
    ...second,
    checkpointsBefore: first.checkpointsBefore,
    checkpointsDropped: first.checkpointsDropped + second.checkpointsDropped,
    segmentsBefore: first.segmentsBefore,
    segmentsDeleted: first.segmentsDeleted + second.segmentsDeleted,
    bytesReclaimed: first.bytesReclaimed + second.bytesReclaimed,
    storedBytesBefore: first.storedBytesBefore,
  };
}

/** Errors of a rewrite that failed for lack of room in the store (compactVolume retries). */
const noRoomToRewrite = new WeakSet<object>();

async function compactOnce(
  store: ObjectStore,
  options: CompactOptions,
  again = false,
): Promise<CompactResult> {
  const graceMs = options.graceMs ?? DEFAULT_GRACE_MS;
  const minLive = options.minLive ?? DEFAULT_MIN_LIVE;
  const signal = options.signal;
  const progress = options.onProgress ?? (() => undefined);

  let failed = false;
  const live = options.dryRun ? undefined : options.volume;
  const release = live?.claimExclusive('compaction');
  const vol = options.dryRun
    ? undefined
    : (live ??
      (await Volume.open(store, {
        flushIntervalMs: 0,
        ...(options.holder ? { holder: options.holder } : {}),
        ...(options.force ? { force: options.force } : {}),
        ...(again ? { reclaim: true } : {}),
        ...(options.logger ? { logger: options.logger } : {}),
        ...(options.openStore ? { openStore: options.openStore } : {}),
      })));
  try {
    /** Beside a deduplicating writer: no segment above this one is deleted (step 4). */
    let keepAbove: number | undefined;
    if (live) {
      // Beside a live writer: still that writer (a takeover since its last commit fences it).
      await live.confirmWriter();
      // A deduplicating writer points new blocks at stored ones through its content index,
      // whose newest entries it keeps in memory: a segment only such an entry names is in
      // use though no committed checkpoint reaches it (chaos seed 52345 deleted one). They
      // are committed first, at checkpoint P: every head from P on (this run starts from
      // one) names all the writer may dedup onto in segments up to P, and an entry added
      // later names a block above P, in a segment this run keeps (the next run, starting
      // from a later P, reclaims what is dead there). (Volume.commitContentIndex.)
      if (live.headRecord.dedup) keepAbove = await live.commitContentIndex();
    }
    const oldHead = vol ? vol.headRecord : (await readHead(store)).head;
    if (vol) await refuseUnfinishedFlatten(store, oldHead);
    const nodeSize = 2 ** oldHead.metaBlockShift;
    const source = await SegmentSource.forHead(store, oldHead, options.openStore);
    // Segments a newer run or writer deleted after taking the volume from this one: fenced.
    // (A dry run reads as any reader: its checkpoints dropped under it.)
    source.explain = (_seg, key) =>
      vol
        ? takenOverWhileRead(store, oldHead.epoch, key)
        : droppedWhileRead(store, oldHead.checkpoint, key);
    const loader = new NodeLoader(source, nodeSize, 64 * 1024 * 1024);
    const segs = await listSegments(store);
    const storedBytesBefore = [...segs.values()].reduce((s, x) => s + x.size, 0);
    const retainedBefore = retained(oldHead, segs);

    // 1. Walk the current checkpoint: live bytes per segment; and what older retained checkpoints reach.
    progress('scan', 0);
    const cur = newReach();
    await walk(loader, oldHead, cur, { live: true, signal });
    const policy = await applyPolicy(store, oldHead, segs, options);
    const others = newReach();
    const othersVisited = new Set<string>();
    for (const id of policy.keep) {
      if (id === oldHead.checkpoint) continue;
      others.segments.add(id);
      await walk(loader, await headAt(store, oldHead, id), others, {
        visited: othersVisited,
        signal,
      });
    }
    progress('scan', 1, 1);

    // 2. Rewrite live blocks of mostly-dead segments that only the current checkpoint needs.
    const candidates = [...cur.segments].filter((s) => {
      const info = segs.get(s);
      if (!info || others.segments.has(s) || policy.keep.has(s) || s === oldHead.checkpoint)
        return false;
      return (cur.live.get(s) ?? 0) / info.size < minLive;
    });
    let blocksRewritten = 0;
    let bytesRewritten = 0;
    if (vol && candidates.length > 0) {
      const lbas: number[] = [];
      for (const s of candidates)
        lbas.push(...(cur.blocks.get(s) ?? []), ...(cur.nodeLbas.get(s) ?? []));
      // Deduplicating volumes: the content index lets go of these segments first (blocks
      // written back get entries at their new places; blocks no lba reads any more are
      // forgotten with them), and its nodes stored there are written anew.
      vol.patchDedup({
        forget: candidates.flatMap((s) => cur.dedupKeys.get(s) ?? []),
        touch: candidates.flatMap((s) => cur.dedupNodeKeys.get(s) ?? []),
      });
      let r: { blocks: number; bytes: number };
      try {
        r = await rewriteBlocks(vol, lbas, signal, (d, t) => progress('rewrite', d, t));
      } catch (e) {
        if (isHyperError(e, 'NO_SPACE')) noRoomToRewrite.add(e);
        throw e;
      }
      blocksRewritten = r.blocks;
      bytesRewritten = r.bytes;
    }

    // 3. Record the new history (dropped checkpoints) in a new checkpoint.
    let head = vol ? vol.headRecord : oldHead;
    let historyCommitted = false;
    // Segments as listed once this run holds the lease: checkpoints the writer it fenced
    // made after the first listing are among them (a pin may name one).
    let segsMid = segs;
    if (vol) {
      segsMid = await listSegments(store);
      const after = await applyPolicy(store, head, segsMid, options);
      // Commit a new history only if it drops something: rerunning with the same policy is a no-op.
      const drops = [...segsMid.keys()].some(
        (id) => isRetainedCheckpoint(head, id) && !after.keep.has(id),
      );
      if (after.policyGiven && drops) {
        await vol.setHistory(
          after.floorAfterNext === 'self' ? 'self' : after.floorAfterNext,
          after.kept,
        );
        historyCommitted = true;
        head = vol.headRecord;
      }
    }

    // Named snapshots and clone pins as they are now, after the history commit. One made
    // while this run (or an earlier run that died right after its commit) decided its policy
    // may name a checkpoint the commit dropped: keep it after all, in one more commit (its
    // creator checks the head after writing its record, so either it saw the drop and gave
    // up, or its record is here). This run deletes nothing before this point, but a record
    // may also name a checkpoint an earlier run dropped (a clone whose pin landed although
    // its PUT failed): its own segment may remain for a later checkpoint while what only it
    // reached is gone. Only a checkpoint that is still whole comes back.
    let referenced = new Set<number>();
    /** Checkpoints named by a record that are no longer whole (warned about once). */
    const broken = new Set<number>();
    try {
      referenced = await pinned(store);
      for (const id of options.keepCheckpoints?.() ?? []) referenced.add(id);
      if (vol && head.history) {
        const lost: number[] = [];
        // Beside a live writer, checkpoints it committed after segsMid was listed may be
        // pinned by now, and the history commit dropped them too (chaos seed 54108: a clone
        // of one, its pin read here, skipped as unlisted): list again to see them.
        const h = head;
        const segsPinned = [...referenced].some(
          (id) => !segsMid.has(id) && id <= h.lastSegment && !isRetainedCheckpoint(h, id),
        )
          ? await listSegments(store)
          : segsMid;
        for (const id of referenced) {
          if (
            !segsPinned.has(id) ||
            id > head.lastSegment ||
            head.skipped.includes(id) ||
            isRetainedCheckpoint(head, id)
          )
            continue;
          if (await wholeCheckpoint(store, loader, source, head, id, segsPinned, signal))
            lost.push(id);
          else {
            broken.add(id);
            options.logger?.warn(notWhole(id));
          }
        }
        if (lost.length > 0) {
          const kept = [...new Set([...head.history.kept, ...lost])].sort((a, b) => a - b);
          await vol.setHistory(head.history.floor, kept);
          head = vol.headRecord;
        }
      }
    } catch (e) {
      if (!historyCommitted) throw e;
      // The new history is committed but the records made meanwhile could not be read (or
      // kept): one of them may name a checkpoint it dropped. Its segment stays (this run
      // deletes nothing now) and the next run keeps it again before deleting anything.
      const he = toHyperError(e);
      throw new HyperError(
        he.kind,
        he.code,
        `${he.message}. The new history (checkpoint ${head.checkpoint}) is committed; a snapshot or clone made during this run may name a checkpoint it dropped until compaction runs again`,
        {
          ...(he.key ? { key: he.key } : {}),
          suggestion:
            'Run hyper compact on the volume again once the store answers: it keeps such checkpoints before deleting anything.',
          cause: e,
        },
      );
    }

    // 4. Delete what no retained checkpoint, named snapshot or clone pin reaches (respecting
    // the grace period), decided from a listing made after the history commits.
    const segsNow = vol ? await listSegments(store) : segs;
    const now = Date.now();
    // What the run ends with: the committed head, or for a dry run the head it would commit
    // (the rewrite counted as one checkpoint, then the history commit).
    const plan = vol
      ? { head, virtual: [] as number[] }
      : await plannedHead(store, head, segsNow, options, candidates.length > 0);
    const base = plan.head;
    const protectBy: HeadRecord | undefined =
      graceMs === 0
        ? base
        : oldHead.history && oldHead.history.floorMs + graceMs <= now
          ? oldHead
          : !oldHead.history && policyIsNoop(options)
            ? base
            : undefined;
    // Reachability under the protecting history; without one (grace period not over), under
    // the new history, only to count what is deferred.
    const view = protectBy ?? base;
    const reachAll = newReach();
    const keepIds = [...segsNow.keys()].filter(
      (id) =>
        id <= base.checkpoint &&
        isRetainedCheckpoint({ ...base, history: view.history } as HeadRecord, id),
    );
    if (segsNow.has(base.checkpoint) && !keepIds.includes(base.checkpoint))
      keepIds.push(base.checkpoint);
    // A record naming a checkpoint the head does not retain keeps what that checkpoint reaches
    // while it is whole; one that is not can be read no more (its record is dangling, and
    // `file check` says so): walking it would stop every compaction at what is missing.
    for (const id of referenced) {
      if (!segsNow.has(id) || keepIds.includes(id) || broken.has(id)) continue;
      if (
        isRetainedCheckpoint(base, id) ||
        (await wholeCheckpoint(store, loader, source, head, id, segsNow, signal))
      )
        keepIds.push(id);
      else options.logger?.warn(notWhole(id));
    }
    const visited = new Set<string>();
    for (const id of keepIds) {
      reachAll.segments.add(id);
      const h = await headAt(store, head, id);
      await walk(loader, h, reachAll, { visited, signal });
    }
    if (!segsNow.has(base.checkpoint)) {
      // Dry run: the checkpoint to be committed reads what the current one reads, except the
      // blocks the rewrite moves out of the candidates.
      const next = newReach();
      await walk(loader, head, next, { signal });
      const moved = new Set(candidates);
      for (const id of next.segments) if (!moved.has(id)) reachAll.segments.add(id);
    }
    const deletable: number[] = [];
    let deferred = 0;
    // Takeovers' fences (and the leftovers each skipped right before it) stay whatever the
    // history says: a writer that was taken over may still retry a PUT at one of those ids,
    // and must find it taken (FORMAT.md "Lease and epochs").
    const fences = new Set([...(oldHead.fences ?? []), ...(head.fences ?? [])]);
    for (const [id, info] of segsNow) {
      if (fences.has(id)) continue;
      const uncommitted = id > head.lastSegment || head.skipped.includes(id);
      // A segment above everything this run has seen may be a new writer's: off-limits. So
      // is any above the head beside a live writer: it may be that writer's, landed and
      // waiting for its commit (however long the store refuses that commit).
      if (id > head.lastSegment && (live || !segs.has(id))) continue;
      // Beside a deduplicating writer, any above P: its content index may name their blocks
      // in memory only.
      if (keepAbove !== undefined && id > keepAbove) continue;
      if (uncommitted) {
        if (now - info.lastModified.getTime() >= graceMs) deletable.push(id);
        else deferred++;
        continue;
      }
      if (id === base.checkpoint || reachAll.segments.has(id)) continue;
      if (protectBy) deletable.push(id);
      else deferred++;
    }
    let bytesReclaimed = 0;
    options.logger?.debug('compaction decided', {
      checkpoint: base.checkpoint,
      reachedFrom: keepIds.sort((a, b) => a - b).join(','),
      deletable: deletable.join(','),
      deferred,
    });
    if (vol) {
      for (let k = 0; k < deletable.length; k += 1000) {
        signal?.throwIfAborted();
        // Still the writer, still under our epoch, right before each batch: a takeover since
        // the listing fences this run (FENCED) and nothing more is deleted.
        await vol.confirmWriter();
        const batch = deletable.slice(k, k + 1000);
        // Beside a live writer, a read of its that found a block before it was moved may ask
        // for the old segment after this: it is done again (Volume.deletingSegments).
        live?.deletingSegments(batch.map((id) => segmentKey(id)));
        await store.delete(
          batch.map((id) => segmentKey(id)),
          signal ? { signal } : {},
        );
        for (const id of batch) bytesReclaimed += segsNow.get(id)?.size ?? 0;
        progress('delete', Math.min(k + 1000, deletable.length), deletable.length);
      }
    } else {
      for (const id of deletable) bytesReclaimed += segsNow.get(id)?.size ?? 0;
    }
    const segsAfter = vol ? await listSegments(store) : segsNow;
    const storedAfter = vol
      ? [...segsAfter.values()].reduce((s, x) => s + x.size, 0)
      : storedBytesBefore - bytesReclaimed;
    const afterHead = vol ? head : base;
    const deleted = new Set(deletable);
    const stillRetained = (id: number): boolean =>
      isRetainedCheckpoint(afterHead, id) && !deleted.has(id);
    const retainedAfter = [...segsAfter.keys(), ...plan.virtual].filter(stillRetained).length;
    const dropped = [...segs.keys()].filter(
      (id) => isRetainedCheckpoint(oldHead, id) && !stillRetained(id),
    ).length;
    return {
      dryRun: !!options.dryRun,
      checkpointsBefore: retainedBefore,
      checkpointsAfter: retainedAfter,
      checkpointsDropped: dropped,
      segmentsBefore: segs.size,
      segmentsDeleted: deletable.length,
      segmentsDeferred: deferred,
      bytesReclaimed,
      segmentsRewritten: candidates.length,
      blocksRewritten,
      bytesRewritten: vol
        ? bytesRewritten
        : candidates.reduce((s, c) => s + (cur.live.get(c) ?? 0), 0),
      storedBytesBefore,
      storedBytesAfter: storedAfter,
      liveBytes: [...cur.live.values()].reduce((a, b) => a + b, 0),
      checkpoint: head.checkpoint,
      rewriteSkipped: false,
    };
  } catch (e) {
    failed = true;
    throw e;
  } finally {
    // After a failure, closing may fail the same way (a full store: its flush of the copies
    // the rewrite made); the first error is the one to report.
    release?.();
    if (!live)
      await vol?.close().catch((e: unknown) => {
        if (!failed) throw e;
      });
  }
}

const policyIsNoop = (o: CompactOptions): boolean =>
  o.keepLast === undefined && o.keepWithinMs === undefined;

/**
 * For a dry run: the head the real run would end with, and the ids of the checkpoints it
 * would commit. A rewrite counts as one checkpoint (it may take several segments), then the
 * history is committed if the policy drops anything, as the real run decides it.
 */
async function plannedHead(
  store: ObjectStore,
  head: HeadRecord,
  segs: Map<number, SegInfo>,
  o: CompactOptions,
  rewrites: boolean,
): Promise<{ head: HeadRecord; virtual: number[] }> {
  let h = head;
  let s = segs;
  const virtual: number[] = [];
  const commit = (history?: HeadRecord['history']): void => {
    const id = h.lastSegment + 1;
    h = { ...h, checkpoint: id, lastSegment: id, ...(history ? { history } : {}) };
    s = new Map(s).set(id, { size: 0, lastModified: new Date() });
    virtual.push(id);
  };
  if (rewrites) commit();
  const p = await applyPolicy(store, h, s, o);
  const drops = [...s.keys()].some((id) => isRetainedCheckpoint(h, id) && !p.keep.has(id));
  if (p.policyGiven && drops) {
    const next = h.lastSegment + 1;
    const floor = p.floorAfterNext === 'self' ? next : p.floorAfterNext;
    commit({ floor, floorMs: Date.now(), kept: p.kept });
  }
  return { head: h, virtual };
}

function retained(head: HeadRecord, segs: Map<number, SegInfo>): number {
  let n = 0;
  for (const id of segs.keys()) if (isRetainedCheckpoint(head, id)) n++;
  return n;
}

async function listSegments(store: ObjectStore): Promise<Map<number, SegInfo>> {
  const out = new Map<number, SegInfo>();
  for await (const page of store.list(SEGMENT_PREFIX)) {
    for (const o of page.objects) {
      const id = parseSegmentKey(o.key);
      if (id !== undefined) out.set(id, { size: o.size, lastModified: o.lastModified });
    }
  }
  return out;
}

/**
 * Whether every object of this volume that checkpoint `id`'s index reaches is in `segs`
 * (nodes and blocks; a clone's parents' segments are their own volumes'): an earlier
 * compaction that dropped it may have deleted what only it reached.
 */
async function wholeCheckpoint(
  store: ObjectStore,
  loader: NodeLoader,
  source: SegmentSource,
  head: HeadRecord,
  id: number,
  segs: Map<number, SegInfo>,
  signal: AbortSignal | undefined,
): Promise<boolean> {
  const r = newReach();
  try {
    await walk(loader, await headAt(store, head, id), r, { signal });
  } catch (e) {
    if (isHyperError(e, 'MISSING_OBJECT') || isHyperError(e, 'OBJECT_NOT_FOUND')) return false;
    throw e;
  }
  for (const s of r.segments) if (!segs.has(s) && !source.inherited(s)) return false;
  return true;
}

const notWhole = (id: number): string =>
  `a snapshot or clone pin names checkpoint ${id}, which an earlier compaction dropped and which is no longer whole: not kept (its record is dangling; "hyper file check" lists it)`;

/**
 * A flatten that stopped after its detach commit has not yet made sure that nothing (a clone
 * or snapshot of this volume made meanwhile) reads through the checkpoints it dropped:
 * compaction would delete what those read. The flatten run again finishes or undoes it.
 */
async function refuseUnfinishedFlatten(store: ObjectStore, head: HeadRecord): Promise<void> {
  const before = await unfinishedFlatten(store, head);
  if (!before) return;
  throw new HyperError(
    'conflict',
    'PRECONDITION_FAILED',
    `A flatten of ${store.url} stopped before it made sure that nothing reads through the checkpoints it dropped; compaction stopped, nothing was deleted`,
    { suggestion: `Run \`hyper snapshot flatten ${store.url}\` to finish it, then compact again.` },
  );
}

/**
 * Checkpoints pinned by name or by a clone. A record that cannot be read (damaged, access
 * denied, store down) aborts the compaction naming its key: a pin in doubt is never taken
 * for absent. One that vanished between the listing and the read was deleted: not a pin.
 */
async function pinned(store: ObjectStore): Promise<Set<number>> {
  const ids = new Set<number>();
  for (const s of await listSnapshots(store)) ids.add(s.checkpoint);
  for await (const page of store.list(PIN_PREFIX)) {
    for (const o of page.objects) {
      let body: Buffer;
      try {
        body = (await store.get(o.key)).body;
      } catch (e) {
        if (isHyperError(e, 'OBJECT_NOT_FOUND')) continue;
        const he = toHyperError(e);
        throw new HyperError(
          he.kind,
          he.code,
          `Cannot read clone pin ${o.key}: ${he.message}; compaction stopped, nothing was deleted`,
          { key: o.key, suggestion: 'Fix access to the store and run compaction again.', cause: e },
        );
      }
      try {
        ids.add(decodeSnapshot(body).checkpoint);
      } catch (e) {
        if (!(e instanceof DecodeError)) throw e;
        throw dataError(
          'CORRUPT_OBJECT',
          o.key,
          `Clone pin is damaged (${e.message}); compaction stopped, nothing was deleted`,
        );
      }
    }
  }
  return ids;
}

interface Policy {
  policyGiven: boolean;
  /** Checkpoints the policy keeps now (current included). */
  keep: Set<number>;
  /** The floor to record at the next commit ('self' = the new checkpoint itself). */
  floorAfterNext: number | 'self';
  /** Pinned checkpoints below that floor. */
  kept: number[];
}

/**
 * Which retained checkpoints the policy keeps. Both rules keep a suffix of the history
 * (the newest ones), so the result is a floor plus the pinned checkpoints below it.
 */
async function applyPolicy(
  store: ObjectStore,
  head: HeadRecord,
  segs: Map<number, SegInfo>,
  o: CompactOptions,
): Promise<Policy> {
  const ids = [...segs.keys()].filter((id) => isRetainedCheckpoint(head, id)).sort((a, b) => b - a);
  const pins = await pinned(store);
  for (const id of o.keepCheckpoints?.() ?? []) pins.add(id);
  if (policyIsNoop(o)) {
    return {
      policyGiven: false,
      keep: new Set(ids),
      floorAfterNext: head.history?.floor ?? 1,
      kept: head.history?.kept ?? [],
    };
  }
  const keep = new Set<number>([head.checkpoint]);
  // The commit that records the history is itself one of the kept checkpoints.
  const keepLast = o.keepLast === undefined ? 0 : Math.max(1, o.keepLast);
  const fromLast = ids.slice(0, Math.max(0, keepLast - 1));
  for (const id of fromLast) keep.add(id);
  if (o.keepWithinMs !== undefined) {
    const since = Date.now() - o.keepWithinMs;
    for (const id of ids) if ((segs.get(id)?.lastModified.getTime() ?? 0) >= since) keep.add(id);
  }
  const suffix = [...keep];
  let floorAfterNext: number | 'self' = 'self';
  if (keepLast !== 1 || o.keepWithinMs !== undefined) {
    const oldest = Math.min(...suffix.filter((id) => ids.includes(id)));
    // The floor never moves down: a checkpoint below it that only a pin kept may be among
    // the newest N, but those the floor dropped stay dropped (their segments may be gone).
    floorAfterNext = Number.isFinite(oldest) ? Math.max(oldest, head.history?.floor ?? 0) : 'self';
  }
  const floorNum = floorAfterNext === 'self' ? head.checkpoint + 1 : floorAfterNext;
  const kept = [...pins]
    .filter((id) => id < floorNum && isRetainedCheckpoint(head, id))
    .sort((a, b) => a - b);
  for (const id of kept) keep.add(id);
  for (const id of ids) if (id >= floorNum) keep.add(id);
  return { policyGiven: true, keep, floorAfterNext, kept };
}
