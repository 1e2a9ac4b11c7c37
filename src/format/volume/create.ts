/**
 * Creating a volume: validate the geometry, check that the store really enforces
 * conditional writes, then write segment 1 (an empty checkpoint) and the head, both
 * create-only, so two concurrent creates cannot both succeed.
 */
import { randomBytes } from 'node:crypto';
import { HyperError, isHyperError } from '../../errors.js';
import { CODEC_RAW, compressionCodec } from '../codec/block.js';
import {
  FEATURE_CODECS,
  FEATURE_DEDUP,
  FEATURE_SEALED,
  encodeHead,
  type HeadRecord,
} from '../codec/head.js';
import { DEDUP_HASH_BLAKE2B_256 } from '../codec/dedup.js';
import { CIPHERS, newSealParams, type SealParams } from '../codec/seal.js';
import { addKey } from '../keyring.js';
import { SECTOR, encodeNode, encodedNodeSize } from '../codec/node.js';
import { newEntries } from '../index/btree.js';
import { HEAD_KEY, segmentKey } from '../keys.js';
import { probeConditionalWrites } from '../store/probe.js';
import type { ObjectStore } from '../store/types.js';
import { infoOf } from './heads.js';
import { buildEmptySegment } from './segment-builder.js';
import {
  DEFAULT_BLOCK_SIZE,
  DEFAULT_SEGMENT_SIZE,
  MAX_DATA_BLOCK_SIZE,
  MAX_META_BLOCK_SIZE,
  MAX_SEGMENT_SIZE,
  MAX_VOLUME_SIZE,
  MIN_DATA_BLOCK_SIZE,
  MIN_META_BLOCK_SIZE,
  MIN_SEGMENT_SIZE,
  type CreateOptions,
  type VolumeInfo,
} from './types.js';

function checkPow2(name: string, v: number, min: number, max: number): void {
  if (!Number.isSafeInteger(v) || v < min || v > max || (v & (v - 1)) !== 0) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `${name} must be a power of two from ${min} to ${max} bytes (got ${v})`,
    );
  }
}

/** A volume size must be whole sectors and fit in a safe integer (FORMAT.md "Sizes"). */
export function checkVolumeSize(size: number): void {
  if (!Number.isSafeInteger(size) || size < 0 || size > MAX_VOLUME_SIZE || size % SECTOR !== 0) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Volume size must be a multiple of 512 bytes from 0 to ${MAX_VOLUME_SIZE} (got ${size})`,
    );
  }
}

const log2 = (v: number): number => Math.round(Math.log2(v));

/** Create a volume: segment 1 (an empty checkpoint) then the head, both create-only. */
export async function createVolume(
  store: ObjectStore,
  options: CreateOptions & { signal?: AbortSignal } = {},
): Promise<VolumeInfo> {
  const size = options.size ?? 0;
  const dataBlockSize = options.dataBlockSize ?? DEFAULT_BLOCK_SIZE;
  const metaBlockSize = options.metaBlockSize ?? DEFAULT_BLOCK_SIZE;
  const segmentSize = options.segmentSize ?? DEFAULT_SEGMENT_SIZE;
  checkVolumeSize(size);
  const compression = compressionCodec(options.compression ?? 'none');
  const seal = sealParams(options);
  checkPow2('Data block size', dataBlockSize, MIN_DATA_BLOCK_SIZE, MAX_DATA_BLOCK_SIZE);
  checkPow2('Meta block size', metaBlockSize, MIN_META_BLOCK_SIZE, MAX_META_BLOCK_SIZE);
  if (
    !Number.isSafeInteger(segmentSize) ||
    segmentSize < MIN_SEGMENT_SIZE ||
    segmentSize > MAX_SEGMENT_SIZE
  ) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Segment size must be from ${MIN_SEGMENT_SIZE} to ${MAX_SEGMENT_SIZE} bytes`,
    );
  }
  if (segmentSize < dataBlockSize) {
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      'Segment size must be at least the data block size',
    );
  }
  if (await store.head(HEAD_KEY)) throw volumeExists(store);
  // A store that ignores create-only / compare-and-swap writes cannot protect a volume.
  await probeConditionalWrites(store, options.signal ? { signal: options.signal } : {});
  const now = Date.now();
  const root = Buffer.alloc(encodedNodeSize(0));
  encodeNode(root, 0, 0, 0, 1, newEntries(0));
  const head: HeadRecord = {
    uuid: randomBytes(16).toString('hex'),
    createdMs: now,
    size,
    dataBlockShift: log2(dataBlockSize),
    metaBlockShift: log2(metaBlockSize),
    // Sealed blocks are longer than a data block: sealing needs the codecs' packed layout.
    ...(compression === CODEC_RAW && !seal && !options.dedup
      ? { flags: 0 }
      : {
          flags: FEATURE_CODECS | (seal ? FEATURE_SEALED : 0) | (options.dedup ? FEATURE_DEDUP : 0),
          compression,
        }),
    ...(seal ? { seal } : {}),
    ...(options.dedup
      ? { dedup: { hash: DEDUP_HASH_BLAKE2B_256, rootLevel: 0, root: Buffer.from(root) } }
      : {}),
    segmentSize,
    checkpoint: 1,
    checkpointMs: now,
    prevCheckpoint: 0,
    lastSegment: 1,
    epoch: 0,
    rootLevel: 0,
    root,
    skipped: [],
    ...(options.walUrl === undefined ? {} : { walUrl: options.walUrl }),
  };
  const headBytes = encodeHead(head);
  try {
    await store.put(segmentKey(1), buildEmptySegment(1, now, headBytes), {
      ifNoneMatch: true,
      ...(options.signal ? { signal: options.signal } : {}),
    });
  } catch (e) {
    if (isHyperError(e, 'OBJECT_EXISTS')) {
      throw new HyperError(
        'conflict',
        'VOLUME_EXISTS',
        `${store.url} already holds volume segments`,
        {
          suggestion:
            'Another create may be running, or a deleted volume left objects behind: use another URL or delete it.',
        },
      );
    }
    throw e;
  }
  try {
    await store.put(HEAD_KEY, headBytes, { ifNoneMatch: true });
  } catch (e) {
    if (isHyperError(e, 'OBJECT_EXISTS')) throw volumeExists(store, false);
    throw e;
  }
  return infoOf(store.url, head, true);
}

/** The seal parameters of a volume created with encryption (its key is held from now on). */
function sealParams(options: CreateOptions): SealParams | undefined {
  if (options.encryption === undefined) {
    if (options.key)
      throw new HyperError('invalid', 'INVALID_ARGUMENT', 'A key was given without encryption', {
        suggestion: 'Add --encryption aes-256-gcm, or leave the key out.',
      });
    return undefined;
  }
  if (!CIPHERS.includes(options.encryption))
    throw new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Unknown cipher ${String(options.encryption)}`,
      { suggestion: `Use one of ${CIPHERS.join(', ')}.` },
    );
  if (!options.key)
    throw new HyperError('invalid', 'KEY_REQUIRED', 'An encrypted volume needs a key', {
      suggestion:
        'Make one (head -c 32 /dev/urandom > volume.key) and pass --key-file volume.key or set HYPER_KEY_FILE.',
    });
  addKey(options.key);
  return newSealParams(options.key, options.encryption);
}

function volumeExists(store: ObjectStore, suggest = true): HyperError {
  return new HyperError('conflict', 'VOLUME_EXISTS', `A volume already exists at ${store.url}`, {
    ...(suggest
      ? {
          suggestion: 'Pick another URL, or delete the existing volume with `hyper file delete`.',
        }
      : {}),
  });
}
