/**
 * Authenticated encryption of data blocks and index nodes (FORMAT.md "Encryption").
 *
 * Ciphers: XChaCha20-Poly1305 (libsodium through sodium-native: about 4 µs per 4 KiB block
 * here, 192-bit nonces) and AES-256-GCM (node:crypto, for sites that require AES; about four
 * times the CPU per block through Node's cipher objects). The volume key is never used
 * directly: the sealing key is HKDF-SHA256(volume key, salt = the volume's 16-byte seal salt,
 * info = "hyper seal v1"). Clones keep their parent's salt (they read its sealed segments);
 * volumes created apart have different salts, so a segment copied from another volume fails
 * even under the same key.
 *
 * A sealed object is   nonce | ciphertext | tag (16 bytes),
 * with the nonce       session | segment id u40 | counter u24   (little-endian),
 * where `session` is random for each writer session (4 bytes for AES-GCM's 12-byte nonce, 16
 * for XChaCha's 24), `segment id` is the segment being built and `counter` numbers the sealed
 * objects in it (data blocks first, then index nodes). A writer session never builds two
 * segments under one id (a failed segment's id is skipped, never reused), so within a session
 * every nonce is new; two sessions share nonces only if they draw the same random session and
 * build the same segment id. A writer taking over from a zombie: the losing segment's
 * create-only PUT fails, so at most one of them is ever stored. A clone and its parent: both
 * are stored, under the same key and salt; XChaCha's 16 random session bytes make a
 * collision out of reach, AES-GCM's 4 leave 2^-32 per pair of sessions (FORMAT.md).
 *
 * Associated data binds each object to its place:
 *   data block: "HYBK" | salt | lba u64 | codec u16   — a block moved to another address,
 *               or relabelled with another codec, fails; in deduplicating volumes (one
 *               stored block, many lbas) "HYBL" | salt | segment id u64 | offset u64 |
 *               codec u16 — a block moved anywhere fails;
 *   index node: "HYND" | salt | segment id u64 | offset u64 — a node moved anywhere fails.
 * The plaintext of a data block is its stored form without encryption (raw, or the
 * compressed envelope: compress, then encrypt).
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import sodium from 'sodium-native';
import { DecodeError } from './binary.js';
import { CODEC_COMPRESSION, decodeBlock, decodeBlockNow, decodesNow } from './block.js';

export const CIPHER_AES_256_GCM = 1;
export const CIPHER_XCHACHA20_POLY1305 = 2;
export type Cipher = 'xchacha20-poly1305' | 'aes-256-gcm';
/** The ciphers a volume can be created with, the recommended one first. */
export const CIPHERS: readonly Cipher[] = ['xchacha20-poly1305', 'aes-256-gcm'];

export const cipherId = (c: Cipher): number =>
  c === 'aes-256-gcm' ? CIPHER_AES_256_GCM : CIPHER_XCHACHA20_POLY1305;

export function cipherName(id: number): Cipher {
  if (id === CIPHER_AES_256_GCM) return 'aes-256-gcm';
  if (id === CIPHER_XCHACHA20_POLY1305) return 'xchacha20-poly1305';
  throw new DecodeError(`unknown cipher ${id}`);
}

export const TAG_BYTES = 16;
/** Nonce bytes of a cipher. */
export const nonceBytes = (cipher: number): number => (cipher === CIPHER_AES_256_GCM ? 12 : 24);
/** Bytes a sealed object adds to its plaintext. */
export const sealOverhead = (cipher: number): number => nonceBytes(cipher) + TAG_BYTES;
export const KEY_BYTES = 32;
export const SALT_BYTES = 16;
/** Codec bit of a leaf entry whose block is sealed (the low byte is its compression). */
export const CODEC_SEALED = 0x100;

const MAX_SEGMENT = 2 ** 40;
const MAX_COUNTER = 2 ** 24;

export function keyIdOf(key: Buffer): string {
  return createHmac('sha256', key)
    .update('hyper key id v1')
    .digest()
    .subarray(0, 8)
    .toString('hex');
}

/** The volume's seal parameters as recorded in its head (FORMAT.md, extension 0x8007). */
export interface SealParams {
  cipher: number;
  keyId: string;
  salt: Buffer;
}

export function newSealParams(key: Buffer, cipher: Cipher): SealParams {
  return { cipher: cipherId(cipher), keyId: keyIdOf(key), salt: randomBytes(SALT_BYTES) };
}

/** Where a stored block is: the lba it is read for, and its place in a segment. */
export interface BlockPlace {
  lba: number;
  seg: number;
  /** Byte offset in the segment. */
  off: number;
}

/**
 * The plain block of stored bytes that passed their CRC: opened if sealed (bound to its
 * place), then decompressed and checked; in `into` when given and the codec allows (sealed
 * raw blocks, lz4 blocks), else in a buffer of its own. DecodeError when the codec
 * is unknown, a sealed block comes without a sealer, or any check fails.
 */
export async function openStoredBlock(
  stored: Buffer,
  codec: number,
  at: BlockPlace,
  blockSize: number,
  sealer: Sealer | undefined,
  into?: Buffer,
): Promise<Buffer> {
  return opened(decodeBlock, stored, codec, at, blockSize, sealer, into);
}

/**
 * openStoredBlock() on this thread, when its codec runs here (decodeBlockNow): undefined
 * otherwise, before anything is opened.
 */
export function openStoredBlockNow(
  stored: Buffer,
  codec: number,
  at: BlockPlace,
  blockSize: number,
  sealer: Sealer | undefined,
  into?: Buffer,
): Buffer | undefined {
  if (!decodesNow(codec & CODEC_COMPRESSION)) return undefined;
  return opened(decodeBlockNow, stored, codec, at, blockSize, sealer, into);
}

/** The block with its seal opened (a sealed raw block opens into `into`), then `decode`d. */
function opened<T>(
  decode: (inner: Buffer, compression: number, blockSize: number, into?: Buffer) => T,
  stored: Buffer,
  codec: number,
  at: BlockPlace,
  blockSize: number,
  sealer: Sealer | undefined,
  into?: Buffer,
): T {
  if (codec & ~(CODEC_SEALED | CODEC_COMPRESSION))
    throw new DecodeError(`unknown block codec 0x${codec.toString(16)}`);
  const compression = codec & CODEC_COMPRESSION;
  if (!(codec & CODEC_SEALED)) return decode(stored, compression, blockSize, into);
  if (!sealer) throw new DecodeError('sealed block in a volume without a key');
  // A sealed compressed block opens to its shorter stored form: not into the plain block's place.
  const inner = sealer.open(stored, sealer.blockAd(at, codec), compression ? undefined : into);
  return decode(inner, compression, blockSize);
}

/** Seals and opens the blocks and nodes of one volume (and its clones). */
export class Sealer {
  private readonly key: Buffer;
  private readonly salt: Buffer;
  private readonly cipher: number;
  private readonly nonceLen: number;
  /** Bytes a sealed object adds. */
  readonly overhead: number;
  /** This writer session's nonce prefix. */
  private readonly session: Buffer;

  /** Deduplicating volumes: the key of the keyed content hash (codec/dedup.ts). */
  readonly dedupKey: Buffer | undefined;

  constructor(
    volumeKey: Buffer,
    params: SealParams,
    /** Blocks are bound to their place in a segment, not to an lba (deduplicating volumes). */
    private readonly byLocation = false,
  ) {
    if (volumeKey.length !== KEY_BYTES) throw new RangeError('volume keys are 32 bytes');
    cipherName(params.cipher);
    this.cipher = params.cipher;
    this.nonceLen = nonceBytes(params.cipher);
    this.overhead = this.nonceLen + TAG_BYTES;
    this.session = randomBytes(this.nonceLen - 8);
    this.salt = params.salt;
    this.key = Buffer.from(hkdfSync('sha256', volumeKey, params.salt, 'hyper seal v1', KEY_BYTES));
    // (Only deduplicating volumes hash contents: others skip the derivation.)
    this.dedupKey = byLocation
      ? Buffer.from(hkdfSync('sha256', volumeKey, params.salt, 'hyper dedup v1', KEY_BYTES))
      : undefined;
  }

  nonce(segment: number, counter: number): Buffer {
    if (segment >= MAX_SEGMENT || counter >= MAX_COUNTER)
      throw new RangeError(`nonce space exhausted (segment ${segment}, object ${counter})`);
    const n = Buffer.allocUnsafe(this.nonceLen);
    const s = this.session.length;
    this.session.copy(n, 0);
    n.writeUIntLE(segment, s, 5);
    n.writeUIntLE(counter, s + 5, 3);
    return n;
  }

  /**
   * Associated data of a data block: "HYBK" | salt | lba u64 | codec u16; in deduplicating
   * volumes, where one stored block serves many addresses, "HYBL" | salt | segment id u64 |
   * byte offset u64 | codec u16 (its place in the segment).
   */
  blockAd(at: BlockPlace, codec: number): Buffer {
    if (!this.byLocation) return this.ad('HYBK', [at.lba, 8], [codec, 2]);
    return this.ad('HYBL', [at.seg, 8], [at.off, 8], [codec, 2]);
  }

  /** Associated data of an index node: "HYND" | salt | segment id u64 | offset u64. */
  nodeAd(segment: number, offset: number): Buffer {
    return this.ad('HYND', [segment, 8], [offset, 8]);
  }

  private ad(magic: string, ...fields: [number, 2 | 8][]): Buffer {
    let at = 4 + SALT_BYTES;
    const ad = Buffer.alloc(at + fields.reduce((n, [, w]) => n + w, 0));
    ad.write(magic, 0, 'ascii');
    this.salt.copy(ad, 4);
    for (const [v, w] of fields) {
      ad.writeUIntLE(v, at, Math.min(w, 6));
      at += w;
    }
    return ad;
  }

  /** nonce | ciphertext | tag of `plain`, into `out` at `at` when given (else a new buffer). */
  seal(plain: Buffer, nonce: Buffer, ad: Buffer, out?: Buffer, at = 0): Buffer {
    const len = plain.length + this.overhead;
    const dst = out ? out.subarray(at, at + len) : Buffer.allocUnsafe(len);
    nonce.copy(dst, 0);
    const body = dst.subarray(this.nonceLen);
    if (this.cipher === CIPHER_XCHACHA20_POLY1305) {
      sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(body, plain, ad, null, nonce, this.key);
      return dst;
    }
    const c = createCipheriv('aes-256-gcm', this.key, nonce);
    c.setAAD(ad);
    let n = c.update(plain).copy(body, 0);
    n += c.final().copy(body, n);
    c.getAuthTag().copy(body, n);
    return dst;
  }

  /**
   * The plaintext of a sealed object (in `into` when given and the cipher can write there);
   * DecodeError if it was not sealed here, for this place.
   */
  open(sealed: Buffer, ad: Buffer, into?: Buffer): Buffer {
    if (sealed.length < this.overhead) throw new DecodeError('sealed object too short');
    const nonce = sealed.subarray(0, this.nonceLen);
    const fail = (): DecodeError =>
      new DecodeError('authentication tag mismatch (damaged, moved or from another volume)');
    if (this.cipher === CIPHER_XCHACHA20_POLY1305) {
      const len = sealed.length - this.overhead;
      const plain = into && into.length >= len ? into.subarray(0, len) : Buffer.allocUnsafe(len);
      try {
        sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
          plain,
          null,
          sealed.subarray(this.nonceLen),
          ad,
          nonce,
          this.key,
        );
      } catch {
        throw fail();
      }
      return plain;
    }
    const d = createDecipheriv('aes-256-gcm', this.key, nonce);
    d.setAAD(ad);
    d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    const body = d.update(sealed.subarray(this.nonceLen, sealed.length - TAG_BYTES));
    try {
      d.final();
    } catch {
      throw fail();
    }
    return body;
  }
}
