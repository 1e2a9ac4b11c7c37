/** Fixtures for building checkpoint segments directly (segment builder and index tests). */
import type { CheckpointInput } from '../../src/format/volume/segment-builder.js';

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
