/**
 * Authenticated encryption of data blocks and index nodes (FORMAT.md "Encryption").
 *
 * Cipher: AES-256-GCM (node:crypto; AES-NI makes it the cheapest AEAD here). The volume key
 * is never used directly: the sealing key is HKDF-SHA256(volume key, salt = the volume's
 * 16-byte seal salt, info = "hyper seal v1"). Clones keep their parent's salt (they read its
 * sealed segments); volumes created apart have different salts, so a segment copied from
 * another volume fails even under the same key.
 *
 * A sealed object is   nonce (12 bytes) | ciphertext | tag (16 bytes),
 * with the nonce       session u32 | segment id u40 | counter u24   (little-endian),
 * where `session` is random for each writer session (each open for writing), `segment id` is
 * the segment being built and `counter` numbers the sealed objects in it (data blocks first,
 * then index nodes). A writer session never builds two segments under one id (a failed
 * segment's id is skipped, never reused), so within a session every nonce is new; two
 * sessions share nonces only if they draw the same 32-bit session and build the same
 * segment id (a writer taking over from a zombie, a clone and its parent), and even then
 * the losing segment's create-only PUT fails, so at most one of them is ever stored.
 *
 * Associated data binds each object to its place:
 *   data block: "HYBK" | salt | lba u64 | codec u16   — a block moved to another address,
 *               or relabelled with another codec, fails;
 *   index node: "HYND" | salt | segment id u64 | offset u64 — a node moved anywhere fails.
 * The plaintext of a data block is its stored form without encryption (raw, or the
 * compressed envelope: compress, then encrypt).
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { DecodeError } from './binary.js';

export const CIPHER_AES_256_GCM = 1;
export type Cipher = 'aes-256-gcm';
export const CIPHERS: readonly Cipher[] = ['aes-256-gcm'];

export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
/** Bytes a sealed object adds to its plaintext. */
export const SEAL_OVERHEAD = NONCE_BYTES + TAG_BYTES;
export const KEY_BYTES = 32;
export const SALT_BYTES = 16;
/** Codec bit of a leaf entry whose block is sealed (the low byte is its compression). */
export const CODEC_SEALED = 0x100;

const MAX_SEGMENT = 2 ** 40;
const MAX_COUNTER = 2 ** 24;

/** The public name of a key: 8 bytes of HMAC-SHA256(key, "hyper key id v1"), in hex. */
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

export function newSealParams(key: Buffer): SealParams {
  return { cipher: CIPHER_AES_256_GCM, keyId: keyIdOf(key), salt: randomBytes(SALT_BYTES) };
}

/** Seals and opens the blocks and nodes of one volume (and its clones). */
export class Sealer {
  private readonly key: Buffer;
  private readonly salt: Buffer;
  /** This writer session's nonce prefix. */
  private readonly session = randomBytes(4);

  constructor(volumeKey: Buffer, params: SealParams) {
    if (volumeKey.length !== KEY_BYTES) throw new RangeError('volume keys are 32 bytes');
    if (params.cipher !== CIPHER_AES_256_GCM)
      throw new DecodeError(`unknown cipher ${params.cipher}`);
    this.salt = params.salt;
    this.key = Buffer.from(hkdfSync('sha256', volumeKey, params.salt, 'hyper seal v1', KEY_BYTES));
  }

  nonce(segment: number, counter: number): Buffer {
    if (segment >= MAX_SEGMENT || counter >= MAX_COUNTER)
      throw new RangeError(`nonce space exhausted (segment ${segment}, object ${counter})`);
    const n = Buffer.allocUnsafe(NONCE_BYTES);
    this.session.copy(n, 0);
    n.writeUIntLE(segment, 4, 5);
    n.writeUIntLE(counter, 9, 3);
    return n;
  }

  blockAd(lba: number, codec: number): Buffer {
    const ad = Buffer.alloc(4 + SALT_BYTES + 10);
    ad.write('HYBK', 0, 'ascii');
    this.salt.copy(ad, 4);
    ad.writeUIntLE(lba, 4 + SALT_BYTES, 6);
    ad.writeUInt16LE(codec, 4 + SALT_BYTES + 8);
    return ad;
  }

  nodeAd(segment: number, offset: number): Buffer {
    const ad = Buffer.alloc(4 + SALT_BYTES + 16);
    ad.write('HYND', 0, 'ascii');
    this.salt.copy(ad, 4);
    ad.writeUIntLE(segment, 4 + SALT_BYTES, 6);
    ad.writeUIntLE(offset, 4 + SALT_BYTES + 8, 6);
    return ad;
  }

  /** nonce | AES-256-GCM(plain) | tag, into `out` at `at` when given (else a new buffer). */
  seal(plain: Buffer, nonce: Buffer, ad: Buffer, out?: Buffer, at = 0): Buffer {
    const dst = out ?? Buffer.allocUnsafe(plain.length + SEAL_OVERHEAD);
    const c = createCipheriv('aes-256-gcm', this.key, nonce);
    c.setAAD(ad);
    nonce.copy(dst, at);
    let n = c.update(plain).copy(dst, at + NONCE_BYTES);
    n += c.final().copy(dst, at + NONCE_BYTES + n);
    c.getAuthTag().copy(dst, at + NONCE_BYTES + n);
    return out ? dst.subarray(at, at + plain.length + SEAL_OVERHEAD) : dst;
  }

  /** The plaintext of a sealed object; DecodeError if it was not sealed here, for this place. */
  open(sealed: Buffer, ad: Buffer): Buffer {
    if (sealed.length < SEAL_OVERHEAD) throw new DecodeError('sealed object too short');
    const d = createDecipheriv('aes-256-gcm', this.key, sealed.subarray(0, NONCE_BYTES));
    d.setAAD(ad);
    d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    const body = d.update(sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES));
    try {
      d.final();
    } catch {
      throw new DecodeError('authentication tag mismatch (damaged, moved or from another volume)');
    }
    return body;
  }
}
