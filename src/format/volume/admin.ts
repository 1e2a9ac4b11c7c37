// STUB — signatures are the contract; implementations land with the engine.
import { HyperError } from '../../errors.js';
import type { ObjectStore } from '../store/types.js';
import type { LeaseInfo, VolumeInfo } from './types.js';

const todo = (): never => {
  throw new HyperError('internal', 'INTERNAL', 'not implemented yet');
};

export interface VolumeStat extends VolumeInfo {
  /** Segment objects under seg/. */
  segments: number;
  /** Bytes of all objects of the volume (segments, head, lease, snapshots). */
  storedBytes: number;
  /** size rounded up to blocks × data block size. */
  provisionedBytes: number;
  /** mappedBlocks × data block size. */
  usedBytes: number;
  lease?: LeaseInfo;
  /** Named snapshots. */
  snapshots: number;
}

export interface ProgressEvent {
  done: number;
  total?: number;
  unit: 'objects' | 'bytes';
}

/** Stat a volume without opening it for write (reads head, lease, lists objects). */
export function statVolume(_store: ObjectStore, _options: { signal?: AbortSignal } = {}): Promise<VolumeStat> {
  return todo();
}

export interface VolumeListing {
  /** Path of the volume relative to the listed prefix, ending with `/`. */
  name: string;
  url: string;
  size: number;
  checkpoint: number;
  checkpointTime: Date;
}

/** Volumes directly or deeper under a prefix (a volume is a prefix that holds a head). */
export function listVolumes(_store: ObjectStore, _options: { signal?: AbortSignal } = {}): Promise<VolumeListing[]> {
  return todo();
}

export interface DeleteOptions {
  /** Delete even if a live lease is held. */
  force?: boolean;
  onProgress?: (e: ProgressEvent) => void;
  signal?: AbortSignal;
  /** Also delete the WAL objects at this store (when the volume has a WAL elsewhere). */
  walStore?: ObjectStore;
}

/** Delete every object of the volume. Throws VOLUME_NOT_FOUND if there is no head. */
export function deleteVolume(_store: ObjectStore, _options: DeleteOptions = {}): Promise<{ objectsDeleted: number }> {
  return todo();
}
