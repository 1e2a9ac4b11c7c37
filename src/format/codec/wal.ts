/**
 * Write-ahead log records (magic "HYWL"): one object per group commit.
 *   volume uuid 16 | epoch u64 | sequence u64 | entry count u32 |
 *   entries: op u8 (1 write, 2 write-zeroes, 3 trim, 4 resize) | change u48 | 1 reserved |
 *            offset u64 | length u64 | data (length bytes, writes only)
 * `change` numbers the volume's changes in the order they were applied (0: not numbered, a
 * record of a hyper before 2026-12); a head's WAL change number says which it holds.
 * A record with no entries is a fence: the writer that takes a volume over claims the next
 * sequence number with it, so an older writer's next WAL write fails.
 * After the entries, since 2026-12-07: prev epoch u64, the epoch of the record numbered one
 * below as this record's writer knew it (absent when it did not know it; older hypers ignore
 * it, readers take a record without it as before). A record whose predecessor has another
 * epoch than it says is not the one it was appended after: see volume/wal.ts linkBroken.
 */
import { DecodeError, Writer } from './binary.js';
import { decodeEnvelope, encodeEnvelope } from './envelope.js';

export const WAL_MAGIC = 'HYWL';
export const WAL_VERSION = 1;

export type WalOp = 'write' | 'zero' | 'trim' | 'resize';
const OPS: WalOp[] = ['write', 'zero', 'trim', 'resize'];

export interface WalEntry {
  op: WalOp;
  offset: number;
  /** Bytes affected (for resize: the new size; offset unused). */
  length: number;
  data?: Buffer;
  /** The change's number (see the header; 0 or absent: not numbered). */
  change?: number;
}

export interface WalRecord {
  uuid: string;
  epoch: number;
  seq: number;
  entries: WalEntry[];
  /**
   * The epoch of record `seq - 1` as this record's writer knew it: its own record (a writer
   * appends after its fence and its earlier records), or the one an opener replayed last
   * before claiming `seq` as its fence. Undefined when unknown: a fence right after the record
   * the head covers (not read), or a record written before hyper kept this.
   */
  prevEpoch?: number;
}

export function encodeWal(r: WalRecord): Buffer {
  const dataBytes = r.entries.reduce((s, e) => s + (e.data?.length ?? 0), 0);
  const w = new Writer(64 + r.entries.length * 24 + dataBytes);
  w.bytes(Buffer.from(r.uuid, 'hex')).u64(r.epoch).u64(r.seq).u32(r.entries.length);
  for (const e of r.entries) {
    const change = e.change ?? 0;
    w.u8(OPS.indexOf(e.op) + 1)
      .u32(change % 2 ** 32)
      .u16(Math.floor(change / 2 ** 32))
      .zeros(1)
      .u64(e.offset)
      .u64(e.length);
    if (e.op === 'write') w.bytes(e.data as Buffer);
  }
  if (r.prevEpoch !== undefined) w.u64(r.prevEpoch);
  return encodeEnvelope(WAL_MAGIC, WAL_VERSION, w.finish());
}

export function decodeWal(buf: Buffer): WalRecord {
  const r = decodeEnvelope(buf, WAL_MAGIC, WAL_VERSION).body;
  const uuid = r.bytes(16).toString('hex');
  const epoch = r.u64();
  const seq = r.u64();
  const n = r.u32();
  const entries: WalEntry[] = [];
  for (let i = 0; i < n; i++) {
    const op = OPS[r.u8() - 1];
    if (!op) throw new DecodeError('unknown WAL operation');
    const change = r.u32() + r.u16() * 2 ** 32;
    r.skip(1);
    const offset = r.u64();
    const length = r.u64();
    const e: WalEntry =
      op === 'write'
        ? { op, offset, length, data: Buffer.from(r.bytes(length)) }
        : { op, offset, length };
    if (change > 0) e.change = change;
    entries.push(e);
  }
  // (Bytes past the trailer are left for fields to come, as older hypers leave the trailer.)
  if (r.remaining === 0) return { uuid, epoch, seq, entries };
  return { uuid, epoch, seq, entries, prevEpoch: r.u64() };
}
