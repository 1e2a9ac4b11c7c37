/** Fixtures for building checkpoint segments directly (segment builder and index tests), and volumes with a given history. */
import { encodeHead, type HeadRecord } from '../../src/format/codec/head.js';
import { segmentKey } from '../../src/format/keys.js';
import { CountingStore } from '../../src/format/store/counting.js';
import type { GetOptions, GetResult, ObjectStore } from '../../src/format/store/types.js';
import {
  buildEmptySegment,
  type CheckpointInput,
} from '../../src/format/volume/segment-builder.js';
import { MiB } from '../../src/format/volume/types.js';
import { Volume } from '../../src/format/volume/volume.js';

/** The head of checkpoint `id` of a 1 GiB volume with 4 KiB blocks (its root filled in by the builder). */
export function headFor(id: number): CheckpointInput['head'] {
  return {
    uuid: '0'.repeat(32),
    createdMs: 1,
    size: 1 << 30,
    dataBlockShift: 12,
    metaBlockShift: 12,
    flags: 0,
    segmentSize: 1 << 25,
    checkpoint: id,
    checkpointMs: 1,
    prevCheckpoint: id - 1,
    lastSegment: id,
    epoch: 1,
    skipped: [],
  };
}

/**
 * Put a segment at `id` that continues nothing (a leftover of some writer of the volume whose
 * head is `head`), under `epoch` (default the head's).
 */
export async function putLeftover(
  store: ObjectStore,
  head: HeadRecord,
  id: number,
  epoch = head.epoch,
): Promise<void> {
  const h = { ...head, checkpoint: id, lastSegment: id, prevCheckpoint: id + 100, epoch };
  await store.put(segmentKey(id), buildEmptySegment(id, Date.now(), encodeHead(h)));
}

/**
 * A 64 MiB volume at `store` with three checkpoints, each rewriting the same 1,500 blocks
 * (filled with 1, 2, 3): a compaction that keeps only the last deletes the other two's
 * segments. Returns the three checkpoint ids.
 */
export async function overwrittenThrice(store: ObjectStore): Promise<[number, number, number]> {
  await Volume.create(store, { size: 64 * MiB });
  const v = await Volume.open(store, { flushIntervalMs: 0 });
  const cps: number[] = [];
  for (let round = 0; round < 3; round++) {
    for (let i = 0; i < 1500; i++)
      await v.write(((i * 7919) % 16384) * 4096, Buffer.alloc(4096, 1 + round));
    cps.push((await v.flush()).checkpoint);
  }
  await v.close();
  return cps as [number, number, number];
}

/**
 * Run `reader` on a view of `store` that holds its first GET of `key` until `meanwhile` (run
 * on the store itself) is done: a reader racing, say, a compaction that deletes what it is
 * about to read. Fails if the reader never asks for `key`. Resolves to the reader's result.
 */
export async function whileHeldAt<T>(
  store: ObjectStore,
  key: string,
  reader: (view: ObjectStore) => Promise<T>,
  meanwhile: () => Promise<unknown>,
): Promise<T> {
  let reached = (): void => undefined;
  const paused = new Promise<void>((r) => (reached = r));
  let release = (): void => undefined;
  const gate = new Promise<void>((r) => (release = r));
  let held = false;
  class Held extends CountingStore {
    override async get(k: string, o?: GetOptions): Promise<GetResult> {
      if (!held && k === key) {
        held = true;
        reached();
        await gate;
      }
      return super.get(k, o);
    }
  }
  const result = reader(new Held(store));
  const settled = result.then(
    () => undefined,
    () => undefined,
  );
  await Promise.race([paused, settled]);
  if (!held) throw new Error(`the reader finished without reading ${key}`);
  try {
    await meanwhile();
  } finally {
    release();
  }
  return result;
}
