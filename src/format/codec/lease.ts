/**
 * The lease record (magic "HYLS"): who may write the volume, until when, under which epoch.
 *   holder length u16 | holder utf-8 | epoch u64 | acquired ms u64 | expires ms u64
 * A released lease has expires ms = 0.
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
}

export function encodeLease(l: LeaseRecord): Buffer {
  const holder = Buffer.from(l.holder.slice(0, 1024), 'utf8');
  const w = new Writer(64 + holder.length);
  w.u16(holder.length).bytes(holder).u64(l.epoch).u64(l.acquiredMs).u64(l.expiresMs);
  return encodeEnvelope(LEASE_MAGIC, LEASE_VERSION, w.finish());
}

export function decodeLease(buf: Buffer): LeaseRecord {
  const r = decodeEnvelope(buf, LEASE_MAGIC, LEASE_VERSION).body;
  const holder = r.bytes(r.u16()).toString('utf8');
  return { holder, epoch: r.u64(), acquiredMs: r.u64(), expiresMs: r.u64() };
}
