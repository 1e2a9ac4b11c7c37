/** Fixtures for building checkpoint segments directly (segment builder and index tests), and volumes with a given history. */
import { encodeHead, type HeadRecord } from '../../src/format/codec/head.js';
import { segmentKey } from '../../src/format/keys.js';
import type { ObjectStore } from '../../src/format/store/types.js';
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
