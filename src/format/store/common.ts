import { HyperError } from '../../errors.js';
import {
  PAYLOAD_SIGNING_VALUES,
  type ByteRange,
  type PayloadSigning,
  type PutBody,
} from './types.js';

/** Domain errors shared by every store implementation (the translation table lives in types.ts). */
export const notFound = (root: string, key: string): HyperError =>
  new HyperError('not-found', 'OBJECT_NOT_FOUND', `Object not found: ${root}${key}`, { key });

export const objectExists = (root: string, key: string): HyperError =>
  new HyperError('conflict', 'OBJECT_EXISTS', `Object already exists: ${root}${key}`, { key });

export const preconditionFailed = (root: string, key: string): HyperError =>
  new HyperError(
    'conflict',
    'PRECONDITION_FAILED',
    `Object ${root}${key} changed since it was read (conditional write refused)`,
    { key, suggestion: 'Another writer changed the volume; re-open it and retry.' },
  );

/** Apply an optional byte range to a whole object, clamped to its end. */
export function sliceRange(body: Buffer, range?: ByteRange): Buffer {
  if (!range) return body;
  const start = Math.min(range.offset, body.length);
  const end = Math.min(range.offset + range.length, body.length);
  return body.subarray(start, end);
}

/** The pieces of a PUT's body, in order. */
export function bodyParts(body: PutBody): readonly Buffer[] {
  return Buffer.isBuffer(body) ? [body] : body;
}

/** Bytes a PUT stores. */
export function bodyLength(body: PutBody): number {
  if (Buffer.isBuffer(body)) return body.length;
  let n = 0;
  for (const p of body) n += p.length;
  return n;
}

/** A PUT's body as one buffer (itself when it is one; a copy of the pieces otherwise). */
export function joinBody(body: PutBody): Buffer {
  if (Buffer.isBuffer(body)) return body;
  return body.length === 1 ? (body[0] as Buffer) : Buffer.concat(body);
}

/** A copy of bytes [start, end) of a PUT's body (clamped to its end). */
export function sliceBody(body: PutBody, start: number, end: number): Buffer {
  const out = Buffer.allocUnsafe(Math.max(0, Math.min(end, bodyLength(body)) - start));
  let at = 0; // offset of the current piece in the body
  let n = 0;
  for (const p of bodyParts(body)) {
    if (n === out.length) break;
    const from = Math.max(start + n - at, 0);
    if (from < p.length) n += p.copy(out, n, from, Math.min(p.length, from + out.length - n));
    at += p.length;
  }
  return out;
}

/** The environment variable that sets payload signing when no option does. */
export const PAYLOAD_SIGNING_ENV = 'HYPER_S3_PAYLOAD_SIGNING';

/** A payload-signing value (from an option, the environment or a file), checked. */
export function parsePayloadSigning(value: string, from: string): PayloadSigning {
  const v = value.toLowerCase();
  if ((PAYLOAD_SIGNING_VALUES as readonly string[]).includes(v)) return v as PayloadSigning;
  throw new HyperError(
    'invalid',
    'INVALID_ARGUMENT',
    `Invalid value ${JSON.stringify(value)} for ${from}: expected ${PAYLOAD_SIGNING_VALUES.join(', ')}`,
    {
      suggestion: `Set ${from} to auto (sign PUT bodies over http only), on or off.`,
    },
  );
}
