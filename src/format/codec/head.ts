/**
 * The head record (magic "HYHD"): the complete state of one checkpoint. The `head` object
 * holds the current one; every segment header embeds the one it commits. See FORMAT.md.
 */
import { DecodeError, Reader, Writer } from './binary.js';
import { decodeEnvelope, encodeEnvelope } from './envelope.js';
import type { SealParams } from './seal.js';

export const HEAD_MAGIC = 'HYHD';
/**
 * Version 2 adds feature flags. A head with no flag set is written as version 1, so tools
 * that know only version 1 keep reading volumes that use no version 2 feature.
 */
export const HEAD_VERSION = 2;
/** Leaf entries may use block codecs other than raw, at byte (not sector) offsets. */
export const FEATURE_CODECS = 0x0001;
/** Data blocks and index nodes are sealed (encrypted and authenticated; codec/seal.ts). */
export const FEATURE_SEALED = 0x0002;
/** Blocks of equal content are stored once, found through a content-hash index (codec/dedup.ts). */
export const FEATURE_DEDUP = 0x0004;
const KNOWN_FEATURES = FEATURE_CODECS | FEATURE_SEALED | FEATURE_DEDUP;
/** Extension types with this bit set must be understood by a reader, others may be skipped. */
export const EXT_REQUIRED = 0x8000;
export const EXT_WAL_URL = 0x0001;
/** Checkpoints below `floor` are dropped by compaction except the ones listed (pinned). */
export const EXT_HISTORY = 0x8002;
/** The checkpoint this one restored (informational). */
export const EXT_RESTORED_FROM = 0x0003;
/** WAL records with a sequence at or below this are covered by this checkpoint. */
export const EXT_WAL_SEQ = 0x8005;
/** A clone's parents: segment ids at or below a parent's base live in that parent's store. */
export const EXT_PARENTS = 0x8004;
/** How new blocks are stored: compression u8 (a block codec, 0 = none) | 3 reserved bytes. */
export const EXT_CODECS = 0x8006;
/** Sealing: cipher u8 (1 AES-256-GCM, 2 XChaCha20-Poly1305) | 3 reserved | key id 8 | salt 16. */
export const EXT_SEAL = 0x8007;
/** Deduplication: hash u8 (1 BLAKE2b-256) | index root level u8 | 2 reserved | root length u32 | root. */
export const EXT_DEDUP = 0x8008;
/**
 * Fences: count u32 | segment ids u64. Takeovers' fence segments and the leftovers each
 * skipped right before its fence: compaction never deletes them (FORMAT.md "Lease and
 * epochs"). Readers may skip it; a writer keeps it.
 */
export const EXT_FENCES = 0x0009;

/**
 * WAL change: u64, the number of the newest WAL-numbered change this checkpoint holds (every
 * change up to it, none after it): a replay applies only the entries numbered above it.
 * Readers may skip it; a writer that does not know it drops it, and replays go back to
 * applying every record above the WAL sequence.
 */
export const EXT_WAL_CHANGE = 0x000a;

/** The content-hash index of a deduplicating volume (FEATURE_DEDUP). */
export interface DedupIndex {
  hash: number;
  rootLevel: number;
  /** The encoded root node of the index (see node.ts), stored inline like the block index's. */
  root: Buffer;
}

export interface ParentLink {
  /** Root URL of the parent volume. */
  url: string;
  /** The parent's last segment id when the clone was made: ids ≤ base are the parent's. */
  base: number;
}

export interface CloneOrigin {
  /** The checkpoint of the nearest parent the clone started from. */
  checkpoint: number;
  /** Nearest parent first; bases strictly decreasing. */
  chain: ParentLink[];
}

export interface History {
  floor: number;
  /** When the floor last moved (compaction's grace period counts from here). */
  floorMs: number;
  /** Checkpoints below the floor that are kept (named snapshots, clone parents). */
  kept: number[];
}

export interface HeadRecord {
  uuid: string; // 32 hex digits
  createdMs: number;
  size: number;
  dataBlockShift: number;
  metaBlockShift: number;
  /** Feature flags (FEATURE_*); none in a version 1 record. */
  flags: number;
  segmentSize: number;
  checkpoint: number;
  checkpointMs: number;
  prevCheckpoint: number;
  lastSegment: number;
  epoch: number;
  rootLevel: number;
  /** The encoded root node (see node.ts), stored inline. */
  root: Buffer;
  /** Segment ids at or below lastSegment that are not committed checkpoints. */
  skipped: number[];
  walUrl?: string;
  history?: History;
  restoredFrom?: number;
  clone?: CloneOrigin;
  walSeq?: number;
  /** The newest numbered WAL change this checkpoint holds (EXT_WAL_CHANGE). */
  walChange?: number;
  /** The block codec new blocks are compressed with (FEATURE_CODECS volumes). */
  compression?: number;
  /** FEATURE_SEALED volumes: how blocks and nodes are sealed (never the key itself). */
  seal?: SealParams;
  /** FEATURE_DEDUP volumes: the content-hash index. */
  dedup?: DedupIndex;
  /** Segment ids compaction never deletes: takeovers' fences and the leftovers just before each. */
  fences?: number[];
}

export function encodeHead(h: HeadRecord): Buffer {
  const w = new Writer(512 + h.root.length + (h.dedup?.root.length ?? 0));
  const uuid = Buffer.from(h.uuid, 'hex');
  if (uuid.length !== 16) throw new RangeError('uuid must be 16 bytes');
  w.bytes(uuid)
    .u64(h.createdMs)
    .u64(h.size)
    .u8(h.dataBlockShift)
    .u8(h.metaBlockShift)
    .u16(h.flags)
    .u32(0)
    .u64(h.segmentSize)
    .u64(h.checkpoint)
    .u64(h.checkpointMs)
    .u64(h.prevCheckpoint)
    .u64(h.lastSegment)
    .u64(h.epoch)
    .u8(h.rootLevel)
    .zeros(3)
    .u32(h.root.length)
    .bytes(h.root)
    .u32(h.skipped.length);
  for (const s of h.skipped) w.u64(s);
  const exts: [number, Buffer][] = [];
  if (h.walUrl !== undefined) exts.push([EXT_WAL_URL, Buffer.from(h.walUrl, 'utf8')]);
  if (h.history) {
    const hw = new Writer(24 + h.history.kept.length * 8)
      .u64(h.history.floor)
      .u64(h.history.floorMs)
      .u32(h.history.kept.length);
    for (const k of h.history.kept) hw.u64(k);
    exts.push([EXT_HISTORY, hw.finish()]);
  }
  if (h.clone) {
    const cw = new Writer(64).u64(h.clone.checkpoint).u16(h.clone.chain.length);
    for (const l of h.clone.chain) {
      const url = Buffer.from(l.url, 'utf8');
      cw.u64(l.base).u16(url.length).bytes(url);
    }
    exts.push([EXT_PARENTS, cw.finish()]);
  }
  if (h.walSeq !== undefined) exts.push([EXT_WAL_SEQ, new Writer(8).u64(h.walSeq).finish()]);
  if (h.walChange !== undefined)
    exts.push([EXT_WAL_CHANGE, new Writer(8).u64(h.walChange).finish()]);
  if (h.restoredFrom !== undefined)
    exts.push([EXT_RESTORED_FROM, new Writer(8).u64(h.restoredFrom).finish()]);
  if (h.compression !== undefined)
    exts.push([EXT_CODECS, new Writer(4).u8(h.compression).zeros(3).finish()]);
  if (h.seal) {
    const sw = new Writer(28).u8(h.seal.cipher).zeros(3).bytes(Buffer.from(h.seal.keyId, 'hex'));
    exts.push([EXT_SEAL, sw.bytes(h.seal.salt).finish()]);
  }
  if (h.dedup) {
    const dw = new Writer(8 + h.dedup.root.length).u8(h.dedup.hash).u8(h.dedup.rootLevel);
    exts.push([EXT_DEDUP, dw.zeros(2).u32(h.dedup.root.length).bytes(h.dedup.root).finish()]);
  }
  if (h.fences && h.fences.length > 0) {
    const fw = new Writer(4 + h.fences.length * 8).u32(h.fences.length);
    for (const id of h.fences) fw.u64(id);
    exts.push([EXT_FENCES, fw.finish()]);
  }
  w.u16(exts.length);
  for (const [type, data] of exts) w.u16(type).u32(data.length).bytes(data);
  if (h.flags & ~KNOWN_FEATURES) throw new RangeError(`unknown feature flags ${h.flags}`);
  return encodeEnvelope(HEAD_MAGIC, h.flags === 0 ? 1 : HEAD_VERSION, w.finish());
}

export function decodeHead(buf: Buffer, start = 0): { head: HeadRecord; length: number } {
  const env = decodeEnvelope(buf, HEAD_MAGIC, HEAD_VERSION, start);
  const r: Reader = env.body;
  const uuid = r.bytes(16).toString('hex');
  const createdMs = r.u64();
  const size = r.u64();
  const dataBlockShift = r.u8();
  const metaBlockShift = r.u8();
  const flags = r.u16();
  r.skip(4);
  if (env.version === 1 ? flags !== 0 : (flags & ~KNOWN_FEATURES) !== 0)
    throw new DecodeError(`unknown head feature flags 0x${flags.toString(16)}`);
  const segmentSize = r.u64();
  const checkpoint = r.u64();
  const checkpointMs = r.u64();
  const prevCheckpoint = r.u64();
  const lastSegment = r.u64();
  const epoch = r.u64();
  const rootLevel = r.u8();
  r.skip(3);
  const root = Buffer.from(r.bytes(r.u32()));
  const skipped: number[] = [];
  const nSkipped = r.u32();
  if (nSkipped > r.remaining / 8) throw new DecodeError('skipped list longer than record');
  for (let i = 0; i < nSkipped; i++) skipped.push(r.u64());
  const head: HeadRecord = {
    uuid,
    createdMs,
    size,
    dataBlockShift,
    metaBlockShift,
    flags,
    segmentSize,
    checkpoint,
    checkpointMs,
    prevCheckpoint,
    lastSegment,
    epoch,
    rootLevel,
    root,
    skipped,
  };
  const nExt = r.u16();
  for (let i = 0; i < nExt; i++) {
    const type = r.u16();
    const data = r.bytes(r.u32());
    if (type === EXT_WAL_URL) head.walUrl = data.toString('utf8');
    else if (type === EXT_HISTORY) {
      const hr = new Reader(data);
      const floor = hr.u64();
      const floorMs = hr.u64();
      const n = hr.u32();
      if (n > hr.remaining / 8) throw new DecodeError('history list longer than extension');
      const kept: number[] = [];
      for (let k = 0; k < n; k++) kept.push(hr.u64());
      head.history = { floor, floorMs, kept };
    } else if (type === EXT_RESTORED_FROM) head.restoredFrom = new Reader(data).u64();
    else if (type === EXT_WAL_SEQ) head.walSeq = new Reader(data).u64();
    else if (type === EXT_WAL_CHANGE) head.walChange = new Reader(data).u64();
    else if (type === EXT_PARENTS) {
      const cr = new Reader(data);
      const checkpoint = cr.u64();
      const n = cr.u16();
      const chain: ParentLink[] = [];
      for (let k = 0; k < n; k++) {
        const base = cr.u64();
        const url = cr.bytes(cr.u16()).toString('utf8');
        if (chain.length > 0 && base >= (chain[chain.length - 1] as ParentLink).base) {
          throw new DecodeError('clone parent bases out of order');
        }
        chain.push({ url, base });
      }
      head.clone = { checkpoint, chain };
    } else if (type === EXT_CODECS) head.compression = new Reader(data).u8();
    else if (type === EXT_SEAL) {
      const sr = new Reader(data);
      const cipher = sr.u8();
      sr.skip(3);
      const keyId = Buffer.from(sr.bytes(8)).toString('hex');
      head.seal = { cipher, keyId, salt: Buffer.from(sr.bytes(16)) };
    } else if (type === EXT_DEDUP) {
      const dr = new Reader(data);
      const hash = dr.u8();
      const rootLevel = dr.u8();
      dr.skip(2);
      head.dedup = { hash, rootLevel, root: Buffer.from(dr.bytes(dr.u32())) };
    } else if (type === EXT_FENCES) {
      const fr = new Reader(data);
      const n = fr.u32();
      if (n > fr.remaining / 8) throw new DecodeError('fence list longer than extension');
      const fences: number[] = [];
      for (let k = 0; k < n; k++) fences.push(fr.u64());
      head.fences = fences;
    } else if (type & EXT_REQUIRED)
      throw new DecodeError(`head needs unknown extension 0x${type.toString(16)}`);
  }
  return { head: validate(head), length: env.length };
}

function validate(head: HeadRecord): HeadRecord {
  const { dataBlockShift, metaBlockShift } = head;
  if (dataBlockShift < 9 || dataBlockShift > 30 || metaBlockShift < 9 || metaBlockShift > 30) {
    throw new DecodeError('block size out of range');
  }
  if (head.compression !== undefined) {
    // Codecs this reader knows (codec/block.ts); a volume asking for another is refused.
    if (head.compression > 2) throw new DecodeError(`unknown compression ${head.compression}`);
    if (!(head.flags & FEATURE_CODECS))
      throw new DecodeError('compression without the codecs flag');
  }
  if (!head.seal !== !(head.flags & FEATURE_SEALED))
    throw new DecodeError('the sealed flag and the seal extension disagree');
  // Sealed blocks are longer than a data block: they need the codecs' packed layout.
  if (head.flags & FEATURE_SEALED && !(head.flags & FEATURE_CODECS))
    throw new DecodeError('the sealed flag without the codecs flag');
  if (head.seal && head.seal.cipher !== 1 && head.seal.cipher !== 2)
    throw new DecodeError(`unknown cipher ${head.seal.cipher}`);
  if (!head.dedup !== !(head.flags & FEATURE_DEDUP))
    throw new DecodeError('the dedup flag and the dedup extension disagree');
  if (head.flags & FEATURE_DEDUP && !(head.flags & FEATURE_CODECS))
    throw new DecodeError('the dedup flag without the codecs flag');
  if (head.dedup && head.dedup.hash !== 1)
    throw new DecodeError(`unknown dedup hash ${head.dedup.hash}`);
  return head;
}

/** Whether checkpoint `id` is committed and not dropped by compaction (its segment may still be gone). */
export function isRetainedCheckpoint(head: HeadRecord, id: number): boolean {
  if (!Number.isSafeInteger(id) || id < 1 || id > head.checkpoint || head.skipped.includes(id))
    return false;
  // A clone's own checkpoints start above its nearest parent's base.
  if (head.clone && id <= (head.clone.chain[0]?.base ?? 0)) return false;
  const h = head.history;
  return !h || id >= h.floor || h.kept.includes(id);
}
