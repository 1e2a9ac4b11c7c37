/**
 * The frame around every small record (head, lease, snapshot, segment header):
 *
 *   0  magic    4 bytes ASCII
 *   4  version  u16
 *   6  flags    u16 (must be 0 in version 1)
 *   8  length   u32 total bytes of the record, header and trailing checksum included
 *   12 body     length - 16 bytes
 *   .. crc32c   u32 over bytes [0, length - 4)
 */
import { DecodeError, Reader, Writer, crc32c } from './binary.js';

export const ENVELOPE_OVERHEAD = 16;

export function encodeEnvelope(magic: string, version: number, body: Uint8Array): Buffer {
  const length = ENVELOPE_OVERHEAD + body.length;
  const w = new Writer(length);
  w.bytes(Buffer.from(magic, 'ascii')).u16(version).u16(0).u32(length).bytes(body);
  const out = Buffer.alloc(length);
  w.finish().copy(out);
  out.writeUInt32LE(crc32c(out.subarray(0, length - 4)), length - 4);
  return out;
}

/** Total length of an envelope from its first 12 bytes (to know how much more to fetch). */
export function envelopeLength(buf: Buffer, magic: string): number {
  if (buf.length < 12) throw new DecodeError('truncated record header');
  if (buf.toString('ascii', 0, 4) !== magic) {
    throw new DecodeError(
      `bad magic ${JSON.stringify(buf.toString('latin1', 0, 4))}, expected ${magic}`,
    );
  }
  return buf.readUInt32LE(8);
}

export interface Envelope {
  version: number;
  /** A Reader over the body only. */
  body: Reader;
  /** Bytes of the whole record. */
  length: number;
}

/**
 * Verify magic, supported version, length and checksum of the record at `buf[start…]`.
 * Bytes after the record are ignored (a ranged GET may have fetched more).
 */
export function decodeEnvelope(
  buf: Buffer,
  magic: string,
  maxVersion: number,
  start = 0,
): Envelope {
  const view = buf.subarray(start);
  const length = envelopeLength(view, magic);
  const version = view.readUInt16LE(4);
  if (version < 1 || version > maxVersion) {
    throw new DecodeError(
      `unsupported ${magic} version ${version} (this hyper reads up to ${maxVersion})`,
    );
  }
  if (view.readUInt16LE(6) !== 0) throw new DecodeError(`unknown ${magic} flags`);
  if (length < ENVELOPE_OVERHEAD || length > view.length) {
    throw new DecodeError(`${magic} record length ${length} does not fit in ${view.length} bytes`);
  }
  const want = view.readUInt32LE(length - 4);
  const got = crc32c(view.subarray(0, length - 4));
  if (want !== got)
    throw new DecodeError(`${magic} checksum mismatch (stored ${want}, computed ${got})`);
  return { version, body: new Reader(view, 12, length - 4), length };
}
