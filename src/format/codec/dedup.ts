/**
 * The deduplication index's entries (FORMAT.md "Deduplication").
 *
 * A block's content hash is BLAKE2b-256 of its plain bytes, keyed on encrypted volumes (key
 * HKDF-SHA256(volume key, seal salt, "hyper dedup v1")), so equal blocks in volumes with
 * different keys hash apart and the index reveals nothing without the key. The index is a
 * copy-on-write B+tree of the same nodes as the block index; each content hash owns two
 * consecutive keys, from its first 52 bits p:
 *
 *   key 2p     a leaf entry exactly like the block index's: where the block is stored;
 *   key 2p + 1 the hash's bytes 8..31 (24 bytes) in place of the pointer fields,
 *
 * so a lookup checks 244 of the hash's 256 bits before it trusts the match. Two contents
 * whose 52-bit prefixes meet (about one pair in 2^52) simply do not share: the second is
 * stored as it is.
 */
import sodium from 'sodium-native';
import { writeU64 } from './binary.js';

/** The hash recorded in the head's dedup extension. */
export const DEDUP_HASH_BLAKE2B_256 = 1;
export const HASH_BYTES = 32;

const TAIL_AT = 8;

/** The 52-bit prefix of a content hash (bytes 0..5 and the low half of byte 6). */
export const hashPrefix = (hash: Buffer): number =>
  hash.readUIntLE(0, 6) + ((hash[6] as number) & 0x0f) * 2 ** 48;

/** The index key of the pointer entry of prefix `p` (the hash entry is the next one). */
export const pointerKey = (p: number): number => 2 * p;

/** The hash entry for `hash` under prefix `p`. */
export function hashEntry(hash: Buffer, p = hashPrefix(hash)): Buffer {
  const e = Buffer.alloc(32);
  writeU64(e, 0, 2 * p + 1);
  hash.copy(e, TAIL_AT, TAIL_AT, HASH_BYTES);
  return e;
}

/** Whether a hash entry records `hash` (its key is checked by the lookup). */
export const hashMatches = (entry: Buffer, hash: Buffer): boolean =>
  entry.compare(hash, TAIL_AT, HASH_BYTES, TAIL_AT, HASH_BYTES) === 0;

/** Whether an index key is a hash entry's (odd: it points nowhere) rather than a pointer's. */
export const isHashKey = (key: number): boolean => key % 2 === 1;

/** The hash prefix an index key (pointer or hash entry) belongs to. */
export const prefixOfKey = (key: number): number => Math.floor(key / 2);

/** Distinct contents indexed by a content index of `entries` entries (two per content). */
export const contentsIndexed = (entries: number): number => entries / 2;

/** Content hashes of plain blocks, keyed on encrypted volumes. */
export class ContentHasher {
  constructor(private readonly key?: Buffer) {}

  hash(block: Buffer): Buffer {
    const out = Buffer.allocUnsafe(HASH_BYTES);
    if (this.key) sodium.crypto_generichash(out, block, this.key);
    else sodium.crypto_generichash(out, block);
    return out;
  }
}
