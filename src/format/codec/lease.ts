/**
 * The lease record (magic "HYLS"): who may write the volume, until when, under which epoch.
 *   holder length u16 | holder utf-8 | epoch u64 | acquired ms u64 | expires ms u64 | [ttl ms u32]
 * A released lease has expires ms = 0. The times are the holder's clock. `ttl` (optional: a
 * reader that does not know it stops before it) is how long the record holds from when the
 * store wrote it, by the store's clock; records without it are judged by `expires`.
 */
import { Writer } from './binary.js';
import { decodeEnvelope, encodeEnvelope } from './envelope.js';

export const LEASE_MAGIC = 'HYLS';
export const LEASE_VERSION = 1;

export interface LeaseRecord {
  holder: string;
  epoch: number;
  acquiredMs: number;
  expiresMs: number;
  /** Valid this long after the store wrote the record (its modification time). */
  ttlMs?: number;
}

export function encodeLease(l: LeaseRecord): Buffer {
  const holder = Buffer.from(l.holder.slice(0, 1024), 'utf8');
  const w = new Writer(64 + holder.length);
  w.u16(holder.length).bytes(holder).u64(l.epoch).u64(l.acquiredMs).u64(l.expiresMs);
  if (l.ttlMs !== undefined) w.u32(Math.min(l.ttlMs, 0xffffffff));
  return encodeEnvelope(LEASE_MAGIC, LEASE_VERSION, w.finish());
}

export function decodeLease(buf: Buffer): LeaseRecord {
  const r = decodeEnvelope(buf, LEASE_MAGIC, LEASE_VERSION).body;
  const holder = r.bytes(r.u16()).toString('utf8');
  const l: LeaseRecord = { holder, epoch: r.u64(), acquiredMs: r.u64(), expiresMs: r.u64() };
  if (r.remaining >= 4) l.ttlMs = r.u32();
  return l;
}
