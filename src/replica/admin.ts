/**
 * The replication commands' library: format a primary (and create its replica volume),
 * open one for serving, restore it from a replica checkpoint (fully, or set up for a lazy
 * restore while serving), and compare a primary with its replica region by region.
 */
import { createHash } from 'node:crypto';
import { unlink } from 'node:fs/promises';
import { HyperError, isHyperError } from '../errors.js';
import {
  MAX_REGIONS,
  PRIMARY_DATA_OFFSET,
  bitCount,
  bitGet,
  bitSet,
  bitmapBytes,
  fullBitmap,
  newPrimaryHeader,
  regionCount,
  type PrimaryHeader,
  type ReplicaMode,
} from '../format/codec/primary.js';
import { replicaVolumePrefix } from '../format/keys.js';
import type { ObjectStore } from '../format/store/index.js';
import { holderIsDeadLocal, displayHolder } from '../format/volume/lease.js';
import { readHead, resolveCheckpoint } from '../format/volume/heads.js';
import type { CheckpointRef, CreateOptions } from '../format/volume/types.js';
import { Volume } from '../format/volume/volume.js';
import {
  consistentAtOrBefore,
  isInconsistent,
  readManifest,
  createManifest,
  type ReplicaManifest,
} from './manifest.js';
import { PrimaryFile } from './primary.js';
import { describeSignature } from './signatures.js';
import { writeUnlessZeroAlready, type ReplicaStatus } from './replicator.js';

export type StoreOpener = (url: string, options?: { mkdir?: boolean }) => Promise<ObjectStore>;

export const DEFAULT_REGION_SIZE = 8 * 1024 * 1024;

/** The URL of primary `uuid`'s replica volume below the replica prefix. */
export function replicaVolumeUrl(prefix: string, uuid: string): string {
  return `${prefix.endsWith('/') ? prefix : `${prefix}/`}${replicaVolumePrefix(uuid)}`;
}

/** What a primary's header says, for `replica status` without a running replicator. */
export function offlineStatus(header: PrimaryHeader): ReplicaStatus {
  const regions = regionCount(header.deviceSize, header.regionSize);
  const unrestored = header.unrestored.length > 0 ? bitCount(header.unrestored, regions) : 0;
  const dirty = bitCount(header.dirty, regions);
  return {
    uuid: header.uuid,
    mode: header.mode,
    deviceSize: header.deviceSize,
    regionSize: header.regionSize,
    replicaUrl: header.replicaUrl,
    live: false,
    replica: {
      connected: false,
      error: null,
      checkpoint: header.replicaCheckpoint,
      lastConsistentCheckpoint: header.lastConsistent,
      lastConsistentTime: null,
      commitSeconds: null,
    },
    lag: { bytes: 0, ios: 0, seconds: 0, p50Seconds: 0, p99Seconds: 0 },
    pool: { bytes: 0, limit: 0, overflows: 0 },
    dirtyRegions: dirty,
    regions,
    resync:
      header.mode === 'forward-full'
        ? { pending: regions, copied: 0, total: regions }
        : dirty > 0
          ? { pending: dirty, copied: 0, total: dirty }
          : null,
    restore:
      header.mode === 'reverse-full'
        ? {
            from: header.restoreFrom,
            restored: regions - unrestored,
            total: regions,
            lazy: header.lazy,
          }
        : null,
    shipped: { bytes: 0, ios: 0, checkpoints: 0, bytesPerSecond: 0 },
  };
}

/**
 * Ask the next `replica serve` to resync: the dirty regions again (they are resynced anyway),
 * or with `full` every region.
 */
export async function markResync(
  file: string,
  uuid: string | undefined,
  full: boolean,
): Promise<{ regions: number }> {
  const { primary, header } = await openPrimary(file, uuid);
  try {
    const regions = regionCount(header.deviceSize, header.regionSize);
    if (full && header.mode !== 'reverse-full') {
      await primary.writeHeader({
        ...header,
        seq: header.seq + 1,
        mode: 'forward-full',
        clean: false,
        dirty: fullBitmap(regions),
      });
      return { regions };
    }
    return { regions: bitCount(header.dirty, regions) };
  } finally {
    await primary.close();
  }
}

export interface ProgressSink {
  (done: number, total: number): void;
}

function inUse(path: string, owner: string): HyperError {
  return new HyperError(
    'conflict',
    'PRIMARY_IN_USE',
    `The primary ${path} is being served by ${displayHolder(owner)}`,
    {
      suggestion:
        'Stop that "hyper replica serve" first. If it is gone for good (another machine that died), run the command again with --force.',
    },
  );
}

/** Refuse a primary another live replicator holds (a dead local one is no obstacle). */
function checkOwner(path: string, header: PrimaryHeader, force: boolean): void {
  if (header.owner !== '' && !force && !holderIsDeadLocal(header.owner)) {
    throw inUse(path, header.owner);
  }
}

function hasData(path: string, held: string, assumeZeroed: boolean): HyperError {
  return assumeZeroed
    ? new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `${path} holds ${held} in its first MiB: it cannot be assumed zeroed`,
        {
          suggestion: `Format it without --assume-zeroed (its data is copied to the new replica), or clear it first (a device: blkdiscard -z ${path}; a file: delete it, and format creates a new one).`,
        },
      )
    : new HyperError(
        'conflict',
        'DEVICE_HAS_DATA',
        `${path} holds ${held} in its first MiB, which format overwrites with the primary's metadata`,
        {
          suggestion: `If it is not needed, erase the signatures first (wipefs -a ${path}) or pass --force; the rest of it is then copied to the replica as the device's content, starting 1 MiB in.`,
        },
      );
}

function tooSmall(path: string, capacity: number, deviceSize: number): HyperError {
  return new HyperError(
    'invalid',
    'OUT_OF_RANGE',
    `The primary ${path} holds ${capacity} bytes; a ${deviceSize}-byte device needs ${deviceSize + PRIMARY_DATA_OFFSET} (1 MiB of metadata first)`,
    { suggestion: 'Pick a larger file or device, or a smaller --device-size.' },
  );
}

// ------------------------------------------------------------------ format

export interface FormatOptions {
  file: string;
  deviceSize: number;
  /** The replica prefix URL: the replica volume is created at <prefix>/<uuid>/. */
  replicaPrefix: string;
  regionSize?: number;
  dataBlockSize?: number;
  /** Settings of the replica volume (compression, encryption…). */
  create?: Omit<CreateOptions, 'size' | 'dataBlockSize'>;
  /** Format a primary that already has a header (its replica is left as it is). */
  force?: boolean;
  /**
   * The existing file or device reads as zeros (a new disk, or one cleared with `blkdiscard
   * -z`): no first copy, as for a file this command creates. Taken on the operator's word.
   */
  assumeZeroed?: boolean;
  openStore: StoreOpener;
}

export interface FormatResult {
  uuid: string;
  file: string;
  deviceSize: number;
  regionSize: number;
  replicaUrl: string;
  /**
   * logging: a new file, or one assumed zeroed, needs no first sync; forward-full: it will
   * be copied.
   */
  mode: 'logging' | 'forward-full';
}

export async function formatPrimary(o: FormatOptions): Promise<FormatResult> {
  const regionSize = o.regionSize ?? DEFAULT_REGION_SIZE;
  const dataBlockSize = o.dataBlockSize ?? 4096;
  if (
    regionSize < 64 * 1024 ||
    (regionSize & (regionSize - 1)) !== 0 ||
    regionSize % dataBlockSize !== 0
  ) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `--region-size ${regionSize} must be a power of two of at least 64K and a multiple of --data-block-size`,
      { suggestion: 'Use the default 8M, or a power of two such as 1M, 4M, 16M.' },
    );
  }
  if (o.deviceSize % 512 !== 0 || o.deviceSize <= 0) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      '--device-size must be a positive multiple of 512 bytes',
    );
  }
  if (regionCount(o.deviceSize, regionSize) > MAX_REGIONS) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `${o.deviceSize} bytes in ${regionSize}-byte regions are more regions than the header holds (${MAX_REGIONS})`,
      {
        suggestion: 'Pick a larger --region-size.',
      },
    );
  }
  const existed = await PrimaryFile.open(o.file, { readOnly: true }).then(
    async (p) => {
      await p.close();
      return true;
    },
    (e: unknown) => {
      if (isHyperError(e) && e.code === 'PATH_NOT_FOUND') return false;
      throw e;
    },
  );
  const primary = await PrimaryFile.open(o.file, {
    createSize: PRIMARY_DATA_OFFSET + o.deviceSize,
  });
  try {
    if (primary.dataCapacity < o.deviceSize) throw tooSmall(o.file, primary.capacity, o.deviceSize);
    const { header: old } = await primary.readHeader();
    if (old !== undefined && o.assumeZeroed) {
      // A device cleared since would have lost its header too: this one holds data.
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `${o.file} is already a primary (uuid ${old.uuid}): it holds data, it cannot be assumed zeroed`,
        {
          suggestion: `Format it with --force and without --assume-zeroed (its data is copied to the new replica); to start empty, clear it first (a device: blkdiscard -z ${o.file}; a file: delete it, and format creates a new one).`,
        },
      );
    }
    if (old === undefined && existed) {
      // What format overwrites (the first MiB) must not be somebody's file system, partition
      // table or RAID/LVM label (by their signatures, as mkfs asks), unless the operator says so.
      const held = describeSignature(await primary.readRaw(0, PRIMARY_DATA_OFFSET));
      if (held !== undefined && (!o.force || o.assumeZeroed))
        throw hasData(o.file, held, o.assumeZeroed === true);
    }
    if (old !== undefined) {
      checkOwner(o.file, old, false);
      if (!o.force) {
        throw new HyperError(
          'conflict',
          'PRIMARY_EXISTS',
          `${o.file} is already a primary (uuid ${old.uuid}, replica ${old.replicaUrl})`,
          {
            suggestion: `Serve it with "hyper replica serve --file ${o.file} --uuid ${old.uuid}", or pass --force to format it anew (its data is kept, copied to a new replica).`,
          },
        );
      }
    }
    const header = newPrimaryHeader({
      deviceSize: o.deviceSize,
      regionSize,
      dataBlockSize,
      replicaUrl: o.replicaPrefix,
    });
    const url = replicaVolumeUrl(o.replicaPrefix, header.uuid);
    const store = await o.openStore(url, { mkdir: true });
    const info = await Volume.create(store, { ...o.create, size: o.deviceSize, dataBlockSize });
    const manifest: ReplicaManifest = {
      version: 1,
      uuid: header.uuid,
      deviceSize: o.deviceSize,
      regionSize,
      dataBlockSize,
      createdAt: new Date().toISOString(),
      inconsistent: [],
    };
    await createManifest(store, manifest);
    // A file this command created reads as zeros, like the new replica: nothing to copy
    // (nor for a device the operator says reads as zeros).
    const fresh = !existed || o.assumeZeroed === true;
    const first: PrimaryHeader = fresh
      ? {
          ...header,
          seq: 1,
          mode: 'logging',
          clean: true,
          dirty: Buffer.alloc(bitmapBytes(regionCount(o.deviceSize, regionSize))),
          lastConsistent: info.checkpoint,
          replicaCheckpoint: info.checkpoint,
        }
      : { ...header, seq: 1 };
    await primary.wipeHeader();
    await primary.writeHeader(first);
    return {
      uuid: header.uuid,
      file: o.file,
      deviceSize: o.deviceSize,
      regionSize,
      replicaUrl: url,
      mode: fresh ? 'logging' : 'forward-full',
    };
  } catch (e) {
    // A file this command created holds nothing yet: a failed format (store unreachable,
    // say) leaves no half-made primary behind, so a retry also starts from a new file.
    if (!existed) {
      await primary.close().catch(() => undefined);
      await unlink(o.file).catch(() => undefined);
    }
    throw e;
  } finally {
    await primary.close().catch(() => undefined);
  }
}

// ------------------------------------------------------------------ open

/** Open a formatted primary, checking its uuid, size and that nobody serves it. */
export async function openPrimary(
  file: string,
  uuid: string | undefined,
  options: { force?: boolean; readOnly?: boolean } = {},
): Promise<{ primary: PrimaryFile; header: PrimaryHeader }> {
  const primary = await PrimaryFile.open(file, { readOnly: options.readOnly === true });
  try {
    const header = await readPrimaryHeader(primary);
    if (uuid !== undefined && header.uuid !== uuid) {
      throw new HyperError(
        'invalid',
        'INVALID_ARGUMENT',
        `${file} is the primary ${header.uuid}, not ${uuid}`,
        {
          suggestion: `Check --uuid (this primary's is ${header.uuid}).`,
        },
      );
    }
    if (primary.dataCapacity < header.deviceSize)
      throw tooSmall(file, primary.capacity, header.deviceSize);
    if (!options.readOnly) checkOwner(file, header, options.force === true);
    return { primary, header };
  } catch (e) {
    await primary.close();
    throw e;
  }
}

async function readPrimaryHeader(primary: PrimaryFile): Promise<PrimaryHeader> {
  const { header, damaged } = await primary.readHeader();
  if (header === undefined) {
    if (damaged.length > 0) {
      throw new HyperError(
        'data',
        'CORRUPT_OBJECT',
        `The primary header of ${primary.path} is damaged (${damaged.join('; ')})`,
        {
          suggestion:
            'Restore the primary from its replica with "hyper replica restore --replica URL --uuid U --to CHECKPOINT".',
        },
      );
    }
    throw new HyperError(
      'invalid',
      'NOT_A_PRIMARY',
      `${primary.path} is not a replication primary (no header)`,
      {
        suggestion:
          'Format it with "hyper replica format --file PATH --device-size SIZE --replica URL".',
      },
    );
  }
  return header;
}

/** The replica volume's store and manifest, checked against the primary's uuid and size. */
export async function openReplicaStore(
  prefix: string,
  uuid: string,
  openStore: StoreOpener,
): Promise<{ store: ObjectStore; manifest: ReplicaManifest; url: string }> {
  const url = replicaVolumeUrl(prefix, uuid);
  const store = await openStore(url);
  const manifest = await readManifest(store);
  if (manifest === undefined) {
    throw new HyperError('not-found', 'VOLUME_NOT_FOUND', `No replica of ${uuid} at ${url}`, {
      suggestion: 'Check --replica and --uuid: the replica volume is <replica prefix>/<uuid>/.',
    });
  }
  if (manifest.uuid !== uuid) {
    throw new HyperError(
      'conflict',
      'REPLICA_MISMATCH',
      `${url} holds the replica of device ${manifest.uuid}, not of ${uuid}`,
      {
        suggestion: 'Check --replica and --uuid.',
      },
    );
  }
  return { store, manifest, url };
}

// ------------------------------------------------------------------ restore

export interface RestoreOptions {
  file: string;
  uuid: string;
  /** The replica checkpoint to restore (omitted: resume an interrupted restore). */
  to?: CheckpointRef;
  /** Set up the restore and return: `replica serve` restores regions on first use. */
  lazy?: boolean;
  /** The replica prefix, for a primary with no header (a fresh file or device). */
  replicaPrefix?: string;
  force?: boolean;
  concurrency?: number;
  openStore: StoreOpener;
  holder?: string;
  onProgress?: ProgressSink;
  signal?: AbortSignal;
}

export interface RestoreResult {
  uuid: string;
  file: string;
  /** The checkpoint asked for, and the replica checkpoint that now holds its content. */
  checkpoint: number;
  replicaCheckpoint: number;
  lazy: boolean;
  restoredRegions: number;
  regions: number;
  resumed: boolean;
}

export async function restorePrimary(o: RestoreOptions): Promise<RestoreResult> {
  // The replica's identity first: a fresh primary learns its size from the manifest.
  let primary = await PrimaryFile.open(o.file, {}).catch((e: unknown) => {
    if (isHyperError(e) && e.code === 'PATH_NOT_FOUND' && o.replicaPrefix !== undefined)
      return undefined;
    throw e;
  });
  let header = primary ? (await primary.readHeader()).header : undefined;
  try {
    if (header !== undefined) {
      if (header.uuid !== o.uuid) {
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `${o.file} is the primary ${header.uuid}, not ${o.uuid}`,
          {
            suggestion: `Check --uuid (this primary's is ${header.uuid}); to restore another device's replica onto it, format it first with --force.`,
          },
        );
      }
      checkOwner(o.file, header, o.force === true);
      if (
        o.replicaPrefix !== undefined &&
        o.replicaPrefix.replace(/\/$/, '') !== header.replicaUrl.replace(/\/$/, '')
      ) {
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `${o.file} replicates to ${header.replicaUrl}, not ${o.replicaPrefix}`,
          {
            suggestion: 'Leave out --replica, or pass the one the primary was formatted with.',
          },
        );
      }
    } else if (o.replicaPrefix === undefined) {
      throw new HyperError(
        'invalid',
        'NOT_A_PRIMARY',
        `${o.file} is not a replication primary (no header)`,
        {
          suggestion: 'Pass --replica with the replica prefix URL to restore onto a new primary.',
        },
      );
    }
    const prefix = header?.replicaUrl ?? o.replicaPrefix!;
    const { store, manifest } = await openReplicaStore(prefix, o.uuid, o.openStore);
    if (primary === undefined) {
      primary = await PrimaryFile.open(o.file, {
        createSize: PRIMARY_DATA_OFFSET + manifest.deviceSize,
      });
    }
    if (primary.dataCapacity < manifest.deviceSize)
      throw tooSmall(o.file, primary.capacity, manifest.deviceSize);

    const regions = regionCount(manifest.deviceSize, manifest.regionSize);
    let resumed = false;
    let target: number;
    let source: number;
    if (o.to === undefined) {
      if (header?.mode !== 'reverse-full') {
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          'No restore to resume on this primary: pass --to',
          {
            suggestion: 'Name the checkpoint, snapshot or time to restore with --to.',
          },
        );
      }
      resumed = true;
      target = header.restoreFrom;
      source = header.restoreFrom;
    } else {
      const { head } = await readHead(store);
      target = await resolveCheckpoint(store, head, o.to);
      if (isInconsistent(manifest, target)) {
        const before = consistentAtOrBefore(manifest, target);
        throw new HyperError(
          'invalid',
          'INVALID_ARGUMENT',
          `Replica checkpoint ${target} is not crash-consistent (it was committed during a region resync)`,
          {
            suggestion:
              before > 0
                ? `Restore checkpoint ${before}, the last consistent one before it.`
                : 'Restore a later checkpoint.',
          },
        );
      }
      // The replica is rolled back too, so that it and the primary agree when serving starts.
      const v = await Volume.open(store, {
        ...(o.holder ? { holder: o.holder } : {}),
        ...(o.signal ? { signal: o.signal } : {}),
      });
      try {
        source = v.info.checkpoint === target ? target : (await v.restore(target)).checkpoint;
      } finally {
        await v.close();
      }
      const base =
        header ??
        newPrimaryHeader({
          deviceSize: manifest.deviceSize,
          regionSize: manifest.regionSize,
          dataBlockSize: manifest.dataBlockSize,
          replicaUrl: prefix,
          uuid: o.uuid,
        });
      header = {
        ...base,
        seq: header ? header.seq + 1 : 1,
        mode: 'reverse-full',
        lazy: o.lazy === true,
        clean: false,
        owner: '',
        restoreFrom: source,
        lastConsistent: source,
        replicaCheckpoint: source,
        // The replica as the last replicator to ship stamped it is this primary's now: its
        // replicator is not taken for one fenced by that stamp.
        replicaEpoch: manifest.writerEpoch ?? 0,
        dirty: Buffer.alloc(bitmapBytes(regions)),
        unrestored: fullBitmap(regions),
      };
      if (base.seq === 0) await primary.wipeHeader();
      await primary.writeHeader(header);
    }
    if (o.lazy) {
      if (!header.lazy) {
        header = { ...header, seq: header.seq + 1, lazy: true };
        await primary.writeHeader(header);
      }
      return {
        uuid: o.uuid,
        file: o.file,
        checkpoint: target,
        replicaCheckpoint: source,
        lazy: true,
        restoredRegions: regions - bitCount(header.unrestored, regions),
        regions,
        resumed,
      };
    }
    header = await copyBack(primary, header, store, manifest, source, o);
    return {
      uuid: o.uuid,
      file: o.file,
      checkpoint: target,
      replicaCheckpoint: source,
      lazy: false,
      restoredRegions: regions,
      regions,
      resumed,
    };
  } finally {
    await primary?.close();
  }
}

/** Copy every unrestored region from replica checkpoint `source` to the primary. */
async function copyBack(
  primary: PrimaryFile,
  start: PrimaryHeader,
  store: ObjectStore,
  manifest: ReplicaManifest,
  source: number,
  o: RestoreOptions,
): Promise<PrimaryHeader> {
  let header = start;
  const regions = regionCount(manifest.deviceSize, manifest.regionSize);
  const unrestored = Buffer.from(header.unrestored);
  const todo: number[] = [];
  for (let r = 0; r < regions; r++) if (bitGet(unrestored, r)) todo.push(r);
  let done = regions - todo.length;
  const view = await Volume.open(store, { at: { checkpoint: source } });
  let lastSave = Date.now();
  const save = async (): Promise<void> => {
    // The bits as they were before the sync: every region they call restored was written
    // before it, so the header never names a region whose data could still be lost with
    // the page cache (a region finished during the sync waits for the next save).
    const restored = Buffer.from(unrestored);
    await primary.sync();
    header = { ...header, seq: header.seq + 1, unrestored: restored };
    await primary.writeHeader(header);
    lastSave = Date.now();
  };
  try {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < todo.length) {
        o.signal?.throwIfAborted();
        const r = todo[next++]!;
        const off = r * manifest.regionSize;
        const data = await view.read(off, Math.min(manifest.regionSize, manifest.deviceSize - off));
        await writeUnlessZeroAlready(primary, off, data);
        bitSet(unrestored, r, false);
        done++;
        o.onProgress?.(done, regions);
      }
    };
    const saver = setInterval(() => void save().catch(() => undefined), 2000);
    try {
      await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 4) }, () => worker()));
    } finally {
      clearInterval(saver);
      // Progress is kept for a resume (also when interrupted).
      if (Date.now() - lastSave >= 0) await save().catch(() => undefined);
    }
  } finally {
    await view.close();
  }
  header = {
    ...header,
    seq: header.seq + 1,
    mode: 'logging',
    lazy: false,
    clean: true,
    restoreFrom: 0,
    unrestored: Buffer.alloc(0),
  };
  await primary.sync();
  await primary.writeHeader(header);
  return header;
}

// ------------------------------------------------------------------ check

export interface CheckOptions {
  file: string;
  uuid: string | undefined;
  /** Compare with this replica checkpoint (default: the replica's newest). */
  at?: CheckpointRef;
  openStore: StoreOpener;
  concurrency?: number;
  onProgress?: ProgressSink;
  signal?: AbortSignal;
}

export interface RegionDifference {
  region: number;
  offset: number;
  length: number;
  /** The region is marked dirty: a difference is expected until it is shipped. */
  dirty: boolean;
}

export interface CheckResult {
  uuid: string;
  file: string;
  replicaUrl: string;
  checkpoint: number;
  consistent: boolean;
  mode: ReplicaMode;
  /** A replicator was serving the primary: differences may be lag, none is called divergence. */
  served: boolean;
  regions: number;
  matching: number;
  differing: RegionDifference[];
  /** Regions that differ although their dirty bit is clear: a divergent replica. */
  diverged: number;
}

export async function checkPrimary(o: CheckOptions): Promise<CheckResult> {
  const { primary, header } = await openPrimary(o.file, o.uuid, { readOnly: true });
  try {
    const { store, manifest, url } = await openReplicaStore(
      header.replicaUrl,
      header.uuid,
      o.openStore,
    );
    const { head } = await readHead(store);
    const checkpoint = o.at ? await resolveCheckpoint(store, head, o.at) : head.checkpoint;
    const view = await Volume.open(store, { at: { checkpoint } });
    const regions = regionCount(header.deviceSize, header.regionSize);
    const differing: RegionDifference[] = [];
    let matching = 0;
    let done = 0;
    try {
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < regions) {
          o.signal?.throwIfAborted();
          const r = next++;
          const off = r * header.regionSize;
          const len = Math.min(header.regionSize, header.deviceSize - off);
          const [a, b] = await Promise.all([primary.read(off, len), view.read(off, len)]);
          const ha = createHash('sha256').update(a).digest('hex');
          const hb = createHash('sha256').update(b).digest('hex');
          if (ha === hb) matching++;
          else
            differing.push({
              region: r,
              offset: off,
              length: len,
              dirty: bitGet(header.dirty, r) || header.mode !== 'logging',
            });
          o.onProgress?.(++done, regions);
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, o.concurrency ?? 4) }, () => worker()));
    } finally {
      await view.close();
    }
    differing.sort((x, y) => x.region - y.region);
    const latest = o.at === undefined;
    const served = header.owner !== '' && !holderIsDeadLocal(header.owner);
    return {
      uuid: header.uuid,
      file: o.file,
      replicaUrl: url,
      checkpoint,
      consistent: !isInconsistent(manifest, checkpoint),
      mode: header.mode,
      served,
      regions,
      matching,
      differing,
      // Only a quiet primary compared with the newest checkpoint can tell divergence from lag.
      diverged: latest && !served ? differing.filter((d) => !d.dirty).length : 0,
    };
  } finally {
    await primary.close();
  }
}
