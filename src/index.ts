/**
 * hyper as a library: the volume engine, the object stores and the NBD server, for programs
 * that embed them instead of running the `hyper` CLI. README "Using hyper as a library" shows
 * an example. Everything else under dist/ is internal and may change between versions.
 */
export { HyperError, isHyperError, type ErrorCode, type ErrorKind } from './errors.js';

// Object stores: `openStore('s3://bucket/prefix/' | 'file:///dir/' | 'mem://name/')`.
export {
  openStore,
  parseStoreUrl,
  storeStats,
  type ObjectStore,
  type OpenStoreOptions,
  type StoreOptions,
  type StoreStats,
} from './format/store/index.js';

// Volumes: create, open (read/write with the lease, or read-only at a checkpoint), and the
// operations that do not need an open volume.
export { Volume, type WriteOptions, type ZeroOptions } from './format/volume/volume.js';
export { readHead, resolveCheckpoint, infoOf } from './format/volume/heads.js';
export { statVolume, listVolumes, deleteVolume, type VolumeStat } from './format/volume/admin.js';
export {
  createSnapshot,
  deleteSnapshot,
  listSnapshots,
  listCheckpoints,
  restoreVolume,
  diffCheckpoints,
} from './format/volume/history.js';
export { cloneVolume, flattenVolume } from './format/volume/clone.js';
export { compactVolume, type CompactOptions, type CompactResult } from './format/volume/compact.js';
export { checkVolume, type CheckOptions, type CheckResult } from './format/volume/check.js';
export type {
  CheckpointInfo,
  CheckpointRef,
  CreateOptions,
  Extent,
  Logger,
  OpenOptions,
  VolumeInfo,
} from './format/volume/types.js';

// NBD: a server over any BlockDevice, and the adapter that serves a Volume.
export { NbdServer, type NbdExport, type NbdServerOptions } from './nbd/server.js';
export type { BlockDevice } from './nbd/device.js';
export { VolumeDevice } from './serve/volume-device.js';
