/**
 * Snapshot and pin records (magic "HYSN"): a name for a checkpoint that compaction keeps.
 *   checkpoint u64 | created ms u64 | kind u8 (0 = named snapshot, 1 = clone pin) |
 *   3 reserved | note length u16 | note UTF-8 (for a clone pin: the clone's URL)
 */
import { Writer } from './binary.js';
import { decodeEnvelope, encodeEnvelope } from './envelope.js';

export const SNAPSHOT_MAGIC = 'HYSN';
export const SNAPSHOT_VERSION = 1;

export interface SnapshotRecord {
  checkpoint: number;
  createdMs: number;
  kind: 'snapshot' | 'clone-pin';
  note: string;
}

export function encodeSnapshot(s: SnapshotRecord): Buffer {
  const note = Buffer.from(s.note.slice(0, 4096), 'utf8');
  const w = new Writer(32 + note.length);
  w.u64(s.checkpoint)
    .u64(s.createdMs)
    .u8(s.kind === 'clone-pin' ? 1 : 0)
    .zeros(3)
    .u16(note.length)
    .bytes(note);
  return encodeEnvelope(SNAPSHOT_MAGIC, SNAPSHOT_VERSION, w.finish());
}

export function decodeSnapshot(buf: Buffer): SnapshotRecord {
  const r = decodeEnvelope(buf, SNAPSHOT_MAGIC, SNAPSHOT_VERSION).body;
  const checkpoint = r.u64();
  const createdMs = r.u64();
  const kind = r.u8() === 1 ? 'clone-pin' : 'snapshot';
  r.skip(3);
  const note = r.bytes(r.u16()).toString('utf8');
  return { checkpoint, createdMs, kind, note };
}
