/**
 * The replication primary's metadata (FORMAT.md "Replication primary"): the first
 * PRIMARY_DATA_OFFSET bytes of the primary file or device, holding two slots of
 * PRIMARY_SLOT_BYTES. Each update writes the slot the previous one did not (alternating by
 * `seq`), so a torn write leaves the other slot whole; a reader takes the valid slot with
 * the higher `seq`. The exported device starts at PRIMARY_DATA_OFFSET.
 *
 * A slot is one envelope (magic HYPP, version 1):
 *
 *   seq u64 · uuid 16 bytes · device size u64 · region size u32 · data block size u32 ·
 *   mode u8 · flags u8 · reserved u16 · last consistent checkpoint u64 · replica checkpoint u64 ·
 *   restore source u64 · created ms u64 · replica URL (u16 length, UTF-8) · owner (u16 length, UTF-8) ·
 *   dirty bitmap (u32 length, bytes) · unrestored bitmap (u32 length, bytes)
 *
 * Bitmaps have one bit per region, least significant bit first; region r is bit r % 8 of byte
 * r / 8. The dirty bitmap is a superset of the regions where the primary may differ from the
 * replica's newest checkpoint; the unrestored bitmap (reverse-full only) names the regions
 * not yet copied back from the replica.
 */
import { randomUUID } from 'node:crypto';
import { DecodeError, Writer } from './binary.js';
import { decodeEnvelope, encodeEnvelope, ENVELOPE_OVERHEAD } from './envelope.js';

export const PRIMARY_MAGIC = 'HYPP';
export const PRIMARY_VERSION = 1;
/** Where the exported device starts on the primary. */
export const PRIMARY_DATA_OFFSET = 1024 * 1024;
export const PRIMARY_SLOT_BYTES = PRIMARY_DATA_OFFSET / 2;

export type ReplicaMode = 'logging' | 'forward-part' | 'forward-full' | 'reverse-full';
const MODES: readonly ReplicaMode[] = ['logging', 'forward-part', 'forward-full', 'reverse-full'];

export interface PrimaryHeader {
  seq: number;
  uuid: string;
  deviceSize: number;
  regionSize: number;
  dataBlockSize: number;
  mode: ReplicaMode;
  /** The replicator stopped cleanly: the dirty bitmap is exact. */
  clean: boolean;
  /** reverse-full: regions are restored on first use while serving (`restore --lazy`). */
  lazy: boolean;
  /** The newest replica checkpoint known to be a crash-consistent image (0: none yet). */
  lastConsistent: number;
  /** The newest replica checkpoint this primary's replicator committed (0: none yet). */
  replicaCheckpoint: number;
  /** reverse-full: the replica checkpoint the primary is being restored from. */
  restoreFrom: number;
  createdMs: number;
  replicaUrl: string;
  /** The process serving the primary (lease-style holder name), empty when none. */
  owner: string;
  dirty: Buffer;
  unrestored: Buffer;
  /**
   * The replica volume's lease epoch this primary's replicator last connected under, written
   * before its first commit under it (0: none recorded): its checkpoints are told apart from
   * another replicator's by it.
   */
  replicaEpoch: number;
}

export function regionCount(deviceSize: number, regionSize: number): number {
  return Math.ceil(deviceSize / regionSize);
}

export const bitmapBytes = (regions: number): number => Math.ceil(regions / 8);

/** Regions a slot can describe (two bitmaps, a URL and an owner of at most 4 KiB each). */
export const MAX_REGIONS = (PRIMARY_SLOT_BYTES - ENVELOPE_OVERHEAD - 8192 - 128) * 4;

export function newPrimaryHeader(o: {
  deviceSize: number;
  regionSize: number;
  dataBlockSize: number;
  replicaUrl: string;
  uuid?: string;
}): PrimaryHeader {
  const regions = regionCount(o.deviceSize, o.regionSize);
  if (regions > MAX_REGIONS) {
    throw new RangeError(
      `${regions} regions do not fit the primary header (at most ${MAX_REGIONS})`,
    );
  }
  return {
    seq: 0,
    uuid: o.uuid ?? randomUUID(),
    deviceSize: o.deviceSize,
    regionSize: o.regionSize,
    dataBlockSize: o.dataBlockSize,
    mode: 'forward-full',
    clean: false,
    lazy: false,
    lastConsistent: 0,
    replicaCheckpoint: 0,
    restoreFrom: 0,
    createdMs: Date.now(),
    replicaUrl: o.replicaUrl,
    owner: '',
    dirty: fullBitmap(regions),
    unrestored: Buffer.alloc(0),
    replicaEpoch: 0,
  };
}

const uuidBytes = (uuid: string): Buffer => Buffer.from(uuid.replace(/-/g, ''), 'hex');
const uuidText = (b: Buffer): string => {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
};

function text(w: Writer, s: string, what: string): void {
  const b = Buffer.from(s, 'utf8');
  if (b.length > 4096) throw new RangeError(`${what} is over 4096 bytes`);
  w.u16(b.length).bytes(b);
}

/** One slot's bytes (zero-padded to PRIMARY_SLOT_BYTES). */
export function encodePrimaryHeader(h: PrimaryHeader): Buffer {
  const w = new Writer(1024 + h.dirty.length + h.unrestored.length);
  const id = uuidBytes(h.uuid);
  if (id.length !== 16) throw new RangeError(`bad uuid ${h.uuid}`);
  w.u64(h.seq).bytes(id).u64(h.deviceSize).u32(h.regionSize).u32(h.dataBlockSize);
  w.u8(MODES.indexOf(h.mode) + 1)
    .u8((h.clean ? 1 : 0) | (h.lazy ? 2 : 0))
    .u16(0);
  w.u64(h.lastConsistent).u64(h.replicaCheckpoint).u64(h.restoreFrom).u64(h.createdMs);
  text(w, h.replicaUrl, 'the replica URL');
  text(w, h.owner, 'the owner');
  w.u32(h.dirty.length).bytes(h.dirty).u32(h.unrestored.length).bytes(h.unrestored);
  w.u64(h.replicaEpoch);
  const env = encodeEnvelope(PRIMARY_MAGIC, PRIMARY_VERSION, w.finish());
  if (env.length > PRIMARY_SLOT_BYTES) throw new RangeError('primary header over its slot');
  const out = Buffer.alloc(PRIMARY_SLOT_BYTES);
  env.copy(out);
  return out;
}

/** Decode one slot; a DecodeError when it is not a valid header. */
export function decodePrimaryHeader(slot: Buffer): PrimaryHeader {
  const { body: r } = decodeEnvelope(slot, PRIMARY_MAGIC, PRIMARY_VERSION);
  const seq = r.u64();
  const uuid = uuidText(r.bytes(16));
  const deviceSize = r.u64();
  const regionSize = r.u32();
  const dataBlockSize = r.u32();
  const mode = MODES[r.u8() - 1];
  if (mode === undefined) throw new DecodeError('unknown replication mode');
  const flags = r.u8();
  if (flags & ~3) throw new DecodeError('unknown primary header flags');
  r.u16();
  const lastConsistent = r.u64();
  const replicaCheckpoint = r.u64();
  const restoreFrom = r.u64();
  const createdMs = r.u64();
  const replicaUrl = r.bytes(r.u16()).toString('utf8');
  const owner = r.bytes(r.u16()).toString('utf8');
  const dirty = Buffer.from(r.bytes(r.u32()));
  const unrestored = Buffer.from(r.bytes(r.u32()));
  // (Added after the first headers were written: absent there, which reads as 0.)
  const replicaEpoch = r.remaining >= 8 ? r.u64() : 0;
  const regions = regionCount(deviceSize, regionSize);
  if (regionSize === 0 || dirty.length !== bitmapBytes(regions)) {
    throw new DecodeError('primary header bitmap does not match its size');
  }
  if (unrestored.length !== 0 && unrestored.length !== dirty.length) {
    throw new DecodeError('primary header restore bitmap does not match its size');
  }
  return {
    seq,
    uuid,
    deviceSize,
    regionSize,
    dataBlockSize,
    mode,
    clean: (flags & 1) !== 0,
    lazy: (flags & 2) !== 0,
    lastConsistent,
    replicaCheckpoint,
    restoreFrom,
    createdMs,
    replicaUrl,
    owner,
    dirty,
    unrestored,
    replicaEpoch,
  };
}

/**
 * The header of a metadata area (both slots): the valid slot with the higher seq, or
 * undefined when neither slot holds a header. `damaged` is set when a slot starts with the
 * magic but does not decode (a torn write, or damage).
 */
export function pickPrimaryHeader(
  a: Buffer,
  b: Buffer,
): { header?: PrimaryHeader; damaged: string[] } {
  const damaged: string[] = [];
  const read = (slot: Buffer, name: string): PrimaryHeader | undefined => {
    if (slot.toString('ascii', 0, 4) !== PRIMARY_MAGIC) return undefined;
    try {
      return decodePrimaryHeader(slot);
    } catch (e) {
      damaged.push(`${name}: ${(e as Error).message}`);
      return undefined;
    }
  };
  const ha = read(a, 'slot 0');
  const hb = read(b, 'slot 1');
  const header = ha && hb ? (ha.seq >= hb.seq ? ha : hb) : (ha ?? hb);
  return header ? { header, damaged } : { damaged };
}

/** A bitmap with every region's bit set (and no bits past the last region). */
export function fullBitmap(regions: number): Buffer {
  const map = Buffer.alloc(bitmapBytes(regions), 0xff);
  if (regions % 8 !== 0) map[map.length - 1] = (1 << (regions % 8)) - 1;
  return map;
}

export const bitGet = (map: Buffer, r: number): boolean => (map[r >> 3]! & (1 << (r & 7))) !== 0;
export function bitSet(map: Buffer, r: number, on: boolean): void {
  if (on) map[r >> 3] = map[r >> 3]! | (1 << (r & 7));
  else map[r >> 3] = map[r >> 3]! & ~(1 << (r & 7));
}
export function bitCount(map: Buffer, regions: number): number {
  let n = 0;
  for (let r = 0; r < regions; r++) if (bitGet(map, r)) n++;
  return n;
}
