/**
 * A volume's history: checkpoints, named snapshots, restore and diff.
 * Every request count here is independent of the volume's size.
 */
import { HyperError, isHyperError } from '../../errors.js';
import { DecodeError } from '../codec/binary.js';
import { isRetainedCheckpoint } from '../codec/head.js';
import { decodeSnapshot, encodeSnapshot } from '../codec/snapshot.js';
import { Miss, type Node, type ScanEntry } from '../index/btree.js';
import { NodeLoader } from '../index/loader.js';
import { SegmentSource, type OpenStoreFn } from './segments.js';
import {
  PIN_PREFIX,
  SEGMENT_PREFIX,
  SNAPSHOT_PREFIX,
  parsePinKey,
  parseSegmentKey,
  parseSnapshotKey,
  snapshotKey,
} from '../keys.js';
import type { ObjectStore } from '../store/types.js';
import type { CheckpointRef, OpenOptions } from './types.js';
import {
  confirmKept,
  droppedWhileRead,
  headAt,
  readHead,
  readSnapshot,
  readStoredHead,
  resolveCheckpoint,
  rootOf,
} from './heads.js';
import { Volume } from './volume.js';
import { liveWriter } from './lease.js';

export interface SnapshotInfo {
  name: string;
  checkpoint: number;
  createdAt: Date;
  /**
   * With `lookForWriter` and without `at`: who was writing the volume (a live lease, as people
   * read it), and when the pinned checkpoint was committed. What that writer acknowledged
   * since is not in the snapshot.
   */
  writer?: { holder: string; checkpointAt: Date };
}

export interface CheckpointEntry {
  checkpoint: number;
  time: Date;
  /** Bytes of the checkpoint's segment object (data and index written by that flush). */
  bytes: number;
  names: string[];
  current: boolean;
  /** Set when this checkpoint was made by a restore. */
  restoredFrom?: number;
  /** The clones that start from it (the URLs their pins record). */
  clones: string[];
}

export async function listSnapshots(store: ObjectStore): Promise<SnapshotInfo[]> {
  const names: string[] = [];
  for await (const page of store.list(SNAPSHOT_PREFIX)) {
    for (const o of page.objects) {
      const n = parseSnapshotKey(o.key);
      if (n !== undefined) names.push(n);
    }
  }
  const out = await Promise.all(
    names.map(async (name) => {
      const r = await readSnapshot(store, name);
      return { name, checkpoint: r.checkpoint, createdAt: new Date(r.createdMs) };
    }),
  );
  return out.sort((a, b) => b.checkpoint - a.checkpoint || a.name.localeCompare(b.name));
}

/** A clone's pin on this volume: its key, the checkpoint it holds, the clone URL it records. */
export interface PinEntry {
  key: string;
  /** The clone's UUID. */
  uuid: string;
  checkpoint: number;
  cloneUrl: string;
}

/**
 * The clone pins on a volume (one GET each), and the keys of those whose record is damaged
 * (`file check` reports them). A pin released meanwhile is left out; a store failure throws.
 */
export async function listPins(
  store: ObjectStore,
): Promise<{ pins: PinEntry[]; damaged: string[] }> {
  const keys: { key: string; uuid: string }[] = [];
  for await (const page of store.list(PIN_PREFIX)) {
    for (const o of page.objects) {
      const uuid = parsePinKey(o.key);
      if (uuid !== undefined) keys.push({ key: o.key, uuid });
    }
  }
  const pins: PinEntry[] = [];
  const damaged: string[] = [];
  await Promise.all(
    keys.map(async ({ key, uuid }) => {
      let body: Buffer;
      try {
        body = (await store.get(key)).body;
      } catch (e) {
        if (isHyperError(e, 'OBJECT_NOT_FOUND')) return; // released meanwhile
        throw e;
      }
      try {
        const r = decodeSnapshot(body);
        pins.push({ key, uuid, checkpoint: r.checkpoint, cloneUrl: r.note });
      } catch (e) {
        if (!(e instanceof DecodeError)) throw e;
        damaged.push(key);
      }
    }),
  );
  return { pins: pins.sort((a, b) => a.key.localeCompare(b.key)), damaged: damaged.sort() };
}

/** Pin a checkpoint under a name: one GET of the head (plus one to check an older checkpoint) and one create-only PUT. */
export async function createSnapshot(
  store: ObjectStore,
  name: string,
  at?: CheckpointRef,
  options: { lookForWriter?: boolean } = {},
): Promise<SnapshotInfo> {
  const key = snapshotKey(name);
  const { head } = await readHead(store);
  const checkpoint = at ? await resolveCheckpoint(store, head, at) : head.checkpoint;
  const createdMs = Date.now();
  try {
    await store.put(key, encodeSnapshot({ checkpoint, createdMs, kind: 'snapshot', note: '' }), {
      ifNoneMatch: true,
    });
  } catch (e) {
    if (isHyperError(e, 'OBJECT_EXISTS')) {
      throw new HyperError(
        'conflict',
        'SNAPSHOT_EXISTS',
        `A snapshot named "${name}" already exists`,
        {
          suggestion: 'Pick another name, or delete the old snapshot first.',
        },
      );
    }
    throw e;
  }
  await confirmPinned(store, checkpoint, key);
  const info: SnapshotInfo = { name, checkpoint, createdAt: new Date(createdMs) };
  if (!at && options.lookForWriter) {
    // (One more GET, for the person at the command line only.)
    const holder = await liveWriter(store);
    if (holder !== undefined) info.writer = { holder, checkpointAt: new Date(head.checkpointMs) };
  }
  return info;
}

/**
 * After writing a record that pins `checkpoint` (a snapshot or a clone pin): check that a
 * compaction running meanwhile did not drop the checkpoint before it could see the record.
 * Compaction reads pins after its history commit, so if the head still retains the
 * checkpoint now, the record is seen; if not, the record is removed and the caller fails.
 */
export async function confirmPinned(
  store: ObjectStore,
  checkpoint: number,
  recordKey: string,
): Promise<void> {
  // A retained checkpoint's segment is never deleted: compaction commits a history that
  // drops a checkpoint before it deletes anything of it.
  const { head } = await readHead(store);
  if (isRetainedCheckpoint(head, checkpoint)) return;
  await store.delete([recordKey]).catch(() => undefined);
  throw new HyperError(
    'not-found',
    'CHECKPOINT_NOT_FOUND',
    `Checkpoint ${checkpoint} was dropped by a compaction that ran at the same time`,
    { suggestion: 'Pick a checkpoint that `hyper snapshot list` still shows.' },
  );
}

/** Unpin a snapshot (its data goes at the next compaction). */
export async function deleteSnapshot(store: ObjectStore, name: string): Promise<SnapshotInfo> {
  let r;
  try {
    r = await readSnapshot(store, name);
  } catch (e) {
    // No such snapshot because there is no volume at all: say that (VOLUME_NOT_FOUND).
    if (isHyperError(e, 'SNAPSHOT_NOT_FOUND')) await readStoredHead(store);
    throw e;
  }
  await store.delete([snapshotKey(name)]);
  return { name, checkpoint: r.checkpoint, createdAt: new Date(r.createdMs) };
}

export interface ListCheckpointsOptions {
  since?: Date;
  until?: Date;
  limit?: number;
  /** Only checkpoints that have a name. */
  named?: boolean;
}

/**
 * Retained checkpoints, newest first. One LIST of seg/ and snap/, then one short GET per
 * checkpoint shown (for its exact time), so use `limit` on long histories.
 */
export async function listCheckpoints(
  store: ObjectStore,
  options: ListCheckpointsOptions = {},
): Promise<CheckpointEntry[]> {
  const { head } = await readHead(store);
  const sizes = new Map<number, number>();
  for await (const page of store.list(SEGMENT_PREFIX)) {
    for (const o of page.objects) {
      const id = parseSegmentKey(o.key);
      if (id !== undefined && isRetainedCheckpoint(head, id)) sizes.set(id, o.size);
    }
  }
  const names = new Map<number, string[]>();
  for (const s of await listSnapshots(store))
    names.set(s.checkpoint, [...(names.get(s.checkpoint) ?? []), s.name]);
  const clones = new Map<number, string[]>();
  for (const p of (await listPins(store)).pins)
    clones.set(p.checkpoint, [...(clones.get(p.checkpoint) ?? []), p.cloneUrl].sort());
  let ids = [...sizes.keys()].sort((a, b) => b - a);
  if (options.named) ids = ids.filter((id) => names.has(id));
  const limit = options.limit ?? Number.MAX_SAFE_INTEGER;
  const out: CheckpointEntry[] = [];
  // Walk newest → oldest in small parallel batches until the limit or the `since` bound.
  for (let i = 0; i < ids.length && out.length < limit; i += 16) {
    const batch = ids.slice(i, i + 16);
    // A checkpoint a compaction drops while this lists is not listed (it is no longer kept).
    const heads = await Promise.all(
      batch.map((id) =>
        headAt(store, head, id).catch((e: unknown) => {
          if (isHyperError(e, 'CHECKPOINT_NOT_FOUND')) return undefined;
          throw e;
        }),
      ),
    );
    let older = false;
    for (const h of heads) {
      if (h === undefined) continue;
      const time = new Date(h.checkpointMs);
      if (options.until && time > options.until) continue;
      if (options.since && time < options.since) {
        older = true;
        break;
      }
      out.push({
        checkpoint: h.checkpoint,
        time,
        bytes: sizes.get(h.checkpoint) ?? 0,
        names: names.get(h.checkpoint) ?? [],
        current: h.checkpoint === head.checkpoint,
        clones: clones.get(h.checkpoint) ?? [],
        ...(h.restoredFrom === undefined ? {} : { restoredFrom: h.restoredFrom }),
      });
      if (out.length >= limit) break;
    }
    if (older) break;
  }
  return out;
}

export interface RestorePlan {
  /** The checkpoint whose content is restored. */
  target: number;
  targetTime: Date;
  /** The current checkpoint before the restore. */
  from: number;
  /** The new checkpoint (absent on a dry run, and when nothing changed). */
  checkpoint?: number;
  dryRun: boolean;
  /** True when the target is the current checkpoint: nothing is (or would be) committed. */
  unchanged: boolean;
}

/** Make a new checkpoint with the content of `to`; takes the lease (refuses a live writer). */
export async function restoreVolume(
  store: ObjectStore,
  to: CheckpointRef,
  options: Pick<OpenOptions, 'holder' | 'force' | 'logger' | 'openStore'> & {
    dryRun?: boolean;
  } = {},
): Promise<RestorePlan> {
  const { head } = await readHead(store);
  const target = await resolveCheckpoint(store, head, to);
  const th = await headAt(store, head, target);
  const plan: RestorePlan = {
    target,
    targetTime: new Date(th.checkpointMs),
    from: head.checkpoint,
    dryRun: !!options.dryRun,
    unchanged: target === head.checkpoint,
  };
  // Restoring the current state (a time at or after the latest checkpoint, its number)
  // commits nothing.
  if (options.dryRun || plan.unchanged) return plan;
  const vol = await Volume.open(store, { ...options, flushIntervalMs: 0 });
  try {
    plan.from = vol.info.checkpoint;
    plan.unchanged = plan.from === target;
    if (!plan.unchanged) plan.checkpoint = (await vol.restore(target)).checkpoint;
  } finally {
    await vol.close();
  }
  return plan;
}

export interface ChangedExtent {
  offset: number;
  length: number;
  /** True when the range reads as zeros in `to` (trimmed or zeroed). */
  zero: boolean;
}

/**
 * The byte ranges whose content differs between two checkpoints (like `rbd diff`). Subtrees
 * the two indexes share (same node location) are skipped without being read, so the cost
 * follows the size of the change, not of the volume. `from` null: from an empty volume (every
 * mapped block of `to`). A clone's parents are opened with `openStore` (as Volume.open does).
 */
export async function diffCheckpoints(
  store: ObjectStore,
  from: CheckpointRef | null,
  to?: CheckpointRef,
  options: { openStore?: OpenStoreFn } = {},
): Promise<ChangedExtent[]> {
  const { head } = await readHead(store);
  const b = to ? await resolveCheckpoint(store, head, to) : head.checkpoint;
  const ha =
    from === null ? null : await headAt(store, head, await resolveCheckpoint(store, head, from));
  const hb = await headAt(store, head, b);
  await confirmKept(store, head, ha ? [ha.checkpoint, b] : [b]);
  const nodeSize = 2 ** head.metaBlockShift;
  const source = await SegmentSource.forHead(store, hb, options.openStore);
  // Either checkpoint dropped by a compaction while its nodes are read: not damage.
  source.explain = (_seg, key) =>
    droppedWhileRead(store, ha ? [ha.checkpoint, hb.checkpoint] : hb.checkpoint, key);
  const loader = new NodeLoader(source, nodeSize, 32 * 1024 * 1024);
  // lba → location in `from` (ex) and in `to` (ey), for blocks under subtrees that differ.
  const ex = new Map<number, string>();
  const ey = new Map<number, string>();
  const cmp = async (x: Node, y: Node): Promise<void> => {
    if (x.level > 0 && x.level === y.level) {
      const sameKeys =
        x.length === y.length &&
        Array.from({ length: x.length }, (_, i) => x.key(i) === y.key(i)).every(Boolean);
      if (sameKeys) {
        // Same ranges: recurse pairwise into children whose location differs.
        for (let i = 0; i < x.length; i++) {
          if (x.seg(i) === y.seg(i) && x.off(i) === y.off(i) && x.seg(i) !== 0) continue;
          await cmp(await childOf(loader, x, i), await childOf(loader, y, i));
        }
        return;
      }
      // Ranges moved (splits, removals): skip children shared by location, collect the rest.
      const loc = (nd: Node, i: number): string => `${nd.key(i)}|${nd.seg(i)}:${nd.off(i)}`;
      const lx = new Set(Array.from({ length: x.length }, (_, i) => loc(x, i)));
      const ly = new Set(Array.from({ length: y.length }, (_, i) => loc(y, i)));
      for (let i = 0; i < x.length; i++)
        if (!ly.has(loc(x, i)))
          await collect(loader, await childOf(loader, x, i), (e) =>
            ex.set(e.lba, `${e.seg}:${e.off}`),
          );
      for (let i = 0; i < y.length; i++)
        if (!lx.has(loc(y, i)))
          await collect(loader, await childOf(loader, y, i), (e) =>
            ey.set(e.lba, `${e.seg}:${e.off}`),
          );
      return;
    }
    await collect(loader, x, (e) => ex.set(e.lba, `${e.seg}:${e.off}`));
    await collect(loader, y, (e) => ey.set(e.lba, `${e.seg}:${e.off}`));
  };
  // From nothing (null): every mapped block of `to` is a change.
  if (ha === null) await collect(loader, rootOf(hb), (e) => ey.set(e.lba, `${e.seg}:${e.off}`));
  else await cmp(rootOf(ha), rootOf(hb));
  const changed = new Set<number>();
  diffMaps(ex, ey, changed);
  const bs = 2 ** head.dataBlockShift;
  const out: ChangedExtent[] = [];
  const size = hb.size;
  for (const lba of [...changed].sort((p, q) => p - q)) {
    const zero = !ey.has(lba);
    const offset = lba * bs;
    if (offset >= size) continue;
    const length = Math.min(bs, size - offset);
    const prev = out[out.length - 1];
    if (prev && prev.offset + prev.length === offset && prev.zero === zero) prev.length += length;
    else out.push({ offset, length, zero });
  }
  return out;
}

function diffMaps(x: Map<number, string>, y: Map<number, string>, changed: Set<number>): void {
  for (const [lba, p] of x) if (y.get(lba) !== p) changed.add(lba);
  for (const [lba, p] of y) if (x.get(lba) !== p) changed.add(lba);
}

async function childOf(loader: NodeLoader, parent: Node, i: number): Promise<Node> {
  for (;;) {
    const c = loader.cached(parent.seg(i), parent.off(i));
    if (c) return c;
    await loader.load(new Miss(parent, i));
  }
}

/** Visit every leaf entry below `nd`. */
export async function collect(
  loader: NodeLoader,
  nd: Node,
  fn: (e: ScanEntry) => void,
): Promise<void> {
  if (nd.level === 0) {
    for (let i = 0; i < nd.length; i++) {
      fn({ lba: nd.key(i), seg: nd.seg(i), off: nd.off(i), len: 0, crc: 0, codec: 0 });
    }
    return;
  }
  for (let i = 0; i < nd.length; i++) await collect(loader, await childOf(loader, nd, i), fn);
}
