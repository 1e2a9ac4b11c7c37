/**
 * The diff stream (magic "HYDF"): the blocks that changed between two checkpoints of one
 * volume, as written by `hyper file export-diff` and applied by `hyper file import-diff`.
 * FORMAT.md "Diff streams" gives the layout byte by byte; in short:
 *
 *   header   96 bytes: the record envelope (envelope.ts) around the source volume's uuid,
 *            the from- and to-checkpoints with their sizes and times, and the data block size
 *   records  a 32-byte record header (type, payload checksum, offset, length, payload length,
 *            header checksum) and its payload: `D` data (the bytes), `Z` zero (no payload)
 *   end      an `E` record whose 64-byte payload holds the counts and the SHA-256 of every
 *            byte of the stream before it; nothing may follow it
 *
 * Pure: no I/O. DiffEncoder produces the bytes; DiffDecoder is fed exactly the number of bytes
 * it asks for and returns what each step decoded, checking every checksum, the order of the
 * records and the end record as it goes. A failure is a DiffStreamError naming the byte offset
 * in the stream of the part that is wrong.
 */
import { createHash, type Hash } from 'node:crypto';
import { DecodeError, Reader, Writer, crc32c } from './binary.js';
import { ENVELOPE_OVERHEAD, encodeEnvelope } from './envelope.js';

export const DIFF_MAGIC = 'HYDF';
export const DIFF_VERSION = 1;
/** Bytes of the version 1 header, envelope included. */
export const DIFF_HEADER_SIZE = 96;
const HEADER_BODY_SIZE = DIFF_HEADER_SIZE - ENVELOPE_OVERHEAD;
/** Bytes of every record header. */
export const DIFF_RECORD_HEADER_SIZE = 32;
/** Bytes of the end record's payload. */
export const DIFF_END_PAYLOAD_SIZE = 64;
/** The largest data record payload a version 1 stream may carry (the encoder splits extents). */
export const DIFF_MAX_DATA_RECORD = 4 * 1024 * 1024;

export const RECORD_DATA = 0x44; // 'D'
export const RECORD_ZERO = 0x5a; // 'Z'
export const RECORD_END = 0x45; // 'E'

export interface DiffHeader {
  /** The source volume's uuid (32 hex digits). */
  sourceUuid: string;
  fromCheckpoint: number;
  fromSize: number;
  fromTimeMs: number;
  toCheckpoint: number;
  toSize: number;
  toTimeMs: number;
  /** The source volume's data block size (informational: records are byte ranges). */
  dataBlockSize: number;
  /** When the stream was written. */
  createdMs: number;
}

export interface DiffSummary {
  dataRecordCount: number;
  zeroRecordCount: number;
  dataBytes: number;
  zeroBytes: number;
}

export type DiffEvent =
  | { kind: 'header'; header: DiffHeader }
  | { kind: 'data'; offset: number; data: Buffer; at: number }
  | { kind: 'zero'; offset: number; length: number; at: number }
  | { kind: 'end'; summary: DiffSummary; streamBytes: number };

/**
 * What is wrong with a stream, and where: `not-diff` (another kind of file), `version` (a
 * version this code does not read), `checksum` (a record's or the stream's checksum does not
 * match), `truncated` (the stream ends early), `corrupt` (a field that cannot be right).
 */
export type DiffProblem = 'not-diff' | 'version' | 'checksum' | 'truncated' | 'corrupt';

export class DiffStreamError extends DecodeError {
  constructor(
    readonly problem: DiffProblem,
    /** Byte offset in the stream of the header or record concerned. */
    readonly offset: number,
    message: string,
  ) {
    super(message);
  }
}

function encodeHeaderBody(h: DiffHeader): Buffer {
  const uuid = Buffer.from(h.sourceUuid, 'hex');
  if (uuid.length !== 16 || !/^[0-9a-f]{32}$/.test(h.sourceUuid))
    throw new RangeError('sourceUuid must be 32 hex digits');
  if (!Number.isInteger(h.dataBlockSize) || h.dataBlockSize <= 0 || h.dataBlockSize > 0xffffffff)
    throw new RangeError(`bad data block size ${h.dataBlockSize}`);
  const w = new Writer(HEADER_BODY_SIZE)
    .bytes(uuid)
    .u64(h.fromCheckpoint)
    .u64(h.fromSize)
    .u64(h.fromTimeMs)
    .u64(h.toCheckpoint)
    .u64(h.toSize)
    .u64(h.toTimeMs)
    .u32(h.dataBlockSize)
    .u32(0)
    .u64(h.createdMs);
  return w.finish();
}

function recordHeader(
  type: number,
  offset: number,
  length: number,
  payloadLength: number,
  payloadCrc: number,
): Buffer {
  const w = new Writer(DIFF_RECORD_HEADER_SIZE)
    .u8(type)
    .zeros(3)
    .u32(payloadCrc)
    .u64(offset)
    .u64(length)
    .u32(payloadLength);
  const b = Buffer.alloc(DIFF_RECORD_HEADER_SIZE);
  w.finish().copy(b);
  b.writeUInt32LE(crc32c(b.subarray(0, 28)), 28);
  return b;
}

/**
 * Writes one stream: header() first, then data() and zero() records in increasing offset
 * order without overlap, then end(). Every byte returned must be written, in order.
 */
export class DiffEncoder {
  private readonly hash: Hash = createHash('sha256');
  private readonly summary: DiffSummary = {
    dataRecordCount: 0,
    zeroRecordCount: 0,
    dataBytes: 0,
    zeroBytes: 0,
  };
  private state: 'start' | 'records' | 'ended' = 'start';
  /** End of the last record's range: the next one starts at or after it. */
  private next = 0;
  /** Bytes of the stream so far. */
  streamBytes = 0;

  constructor(readonly header: DiffHeader) {}

  private emit(...parts: Buffer[]): void {
    for (const p of parts) {
      this.hash.update(p);
      this.streamBytes += p.length;
    }
  }

  /** The header (the first bytes of the stream). */
  start(): Buffer {
    if (this.state !== 'start') throw new Error('DiffEncoder: header already written');
    this.state = 'records';
    const b = encodeEnvelope(DIFF_MAGIC, DIFF_VERSION, encodeHeaderBody(this.header));
    this.emit(b);
    return b;
  }

  private range(offset: number, length: number): void {
    if (this.state !== 'records') throw new Error('DiffEncoder: not between header and end');
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || length <= 0)
      throw new RangeError(`bad range ${offset}+${length}`);
    if (offset < this.next) throw new RangeError(`record at ${offset} overlaps or is out of order`);
    if (offset + length > this.header.toSize)
      throw new RangeError(`record ${offset}+${length} is past the end (${this.header.toSize})`);
    this.next = offset + length;
  }

  /** A data record: its header, then `data` itself (both to be written). */
  data(offset: number, data: Buffer): [Buffer, Buffer] {
    if (data.length > DIFF_MAX_DATA_RECORD)
      throw new RangeError(`data record of ${data.length} bytes is over the limit`);
    this.range(offset, data.length);
    const h = recordHeader(RECORD_DATA, offset, data.length, data.length, crc32c(data));
    this.emit(h, data);
    this.summary.dataRecordCount++;
    this.summary.dataBytes += data.length;
    return [h, data];
  }

  /** A zero record: the range reads as zeros in the to-checkpoint. */
  zero(offset: number, length: number): Buffer {
    this.range(offset, length);
    const h = recordHeader(RECORD_ZERO, offset, length, 0, 0);
    this.emit(h);
    this.summary.zeroRecordCount++;
    this.summary.zeroBytes += length;
    return h;
  }

  /** The end record (the last bytes of the stream). */
  end(): Buffer {
    if (this.state !== 'records') throw new Error('DiffEncoder: not between header and end');
    this.state = 'ended';
    const s = this.summary;
    const payload = new Writer(DIFF_END_PAYLOAD_SIZE)
      .u64(s.dataRecordCount)
      .u64(s.zeroRecordCount)
      .u64(s.dataBytes)
      .u64(s.zeroBytes)
      .bytes(this.hash.digest())
      .finish();
    const h = recordHeader(RECORD_END, 0, 0, payload.length, crc32c(payload));
    const b = Buffer.concat([h, payload]);
    this.streamBytes += b.length;
    return b;
  }

  get counts(): DiffSummary {
    return { ...this.summary };
  }
}

type Step =
  | { what: 'prefix' }
  | { what: 'header'; prefix: Buffer }
  | { what: 'record' }
  | {
      what: 'payload';
      type: number;
      offset: number;
      length: number;
      crc: number;
      at: number;
    }
  | { what: 'done' };

/**
 * Reads one stream. Call wants() for the number of bytes the next step needs, read exactly
 * that many and pass them to feed(), which returns what they completed (or undefined). When
 * the input ends, call eof(partial) with the bytes that were left: it throws unless the end record
 * was read and nothing follows it. Every failure is a DiffStreamError.
 */
export class DiffDecoder {
  private step: Step = { what: 'prefix' };
  private readonly hash: Hash = createHash('sha256');
  private header: DiffHeader | undefined;
  private readonly seen: DiffSummary = {
    dataRecordCount: 0,
    zeroRecordCount: 0,
    dataBytes: 0,
    zeroBytes: 0,
  };
  private next = 0;
  /** Bytes consumed so far: the stream offset of the next part. */
  position = 0;

  /** Bytes needed by the next step; 0 once the end record has been read. */
  wants(): number {
    switch (this.step.what) {
      case 'prefix':
        return 12;
      case 'header':
        return DIFF_HEADER_SIZE - 12;
      case 'record':
        return DIFF_RECORD_HEADER_SIZE;
      case 'payload':
        return this.step.type === RECORD_DATA ? this.step.length : DIFF_END_PAYLOAD_SIZE;
      case 'done':
        return 0;
    }
  }

  /** The decoded header, once read. */
  get streamHeader(): DiffHeader | undefined {
    return this.header;
  }

  get done(): boolean {
    return this.step.what === 'done';
  }

  /** The input ended with `partial`, the bytes it had of the part being read (none: at a boundary). */
  eof(partial: Buffer = Buffer.alloc(0)): void {
    const got = partial.length;
    const step = this.step;
    if (step.what === 'done') {
      if (got > 0)
        throw new DiffStreamError(
          'corrupt',
          this.position,
          `Bytes follow the end record of the diff stream (from byte ${this.position})`,
        );
      return;
    }
    if (step.what === 'prefix' && got === 0)
      throw new DiffStreamError('truncated', 0, 'The diff stream is empty');
    if (step.what === 'prefix' && got >= 4 && partial.toString('latin1', 0, 4) !== DIFF_MAGIC)
      throw new DiffStreamError('not-diff', 0, 'Not a hyper diff stream (it is too short)');
    const where =
      step.what === 'payload'
        ? `in the record at byte ${step.at}`
        : step.what === 'record'
          ? `at byte ${this.position + got}, before its end record`
          : 'inside its header';
    throw new DiffStreamError(
      'truncated',
      step.what === 'payload' ? step.at : this.position,
      `The diff stream is truncated: it ends ${where} (${this.position + got} bytes read)`,
    );
  }

  feed(buf: Buffer): DiffEvent | undefined {
    if (buf.length !== this.wants())
      throw new Error(`DiffDecoder.feed: ${buf.length} bytes, wanted ${this.wants()}`);
    const at = this.position;
    const step = this.step;
    switch (step.what) {
      case 'prefix':
        this.prefix(buf);
        break;
      case 'header':
        this.hash.update(step.prefix);
        this.hash.update(buf);
        this.position += buf.length;
        this.header = decodeHeaderBody(Buffer.concat([step.prefix, buf]));
        this.step = { what: 'record' };
        return { kind: 'header', header: this.header };
      case 'record':
        this.position += buf.length;
        return this.record(buf, at);
      case 'payload':
        this.position += buf.length;
        return this.payload(step, buf);
      case 'done':
        throw new Error('DiffDecoder.feed after the end');
    }
    return undefined;
  }

  private prefix(buf: Buffer): void {
    if (buf.toString('latin1', 0, 4) !== DIFF_MAGIC) {
      throw new DiffStreamError(
        'not-diff',
        0,
        `Not a hyper diff stream (it starts with ${JSON.stringify(buf.toString('latin1', 0, 4))}, not "${DIFF_MAGIC}")`,
      );
    }
    const version = buf.readUInt16LE(4);
    if (version !== DIFF_VERSION) {
      throw new DiffStreamError(
        'version',
        0,
        `The diff stream has format version ${version}; this hyper reads version ${DIFF_VERSION}`,
      );
    }
    if (buf.readUInt16LE(6) !== 0)
      throw new DiffStreamError('corrupt', 0, 'The diff stream header has unknown flags');
    const length = buf.readUInt32LE(8);
    if (length !== DIFF_HEADER_SIZE) {
      throw new DiffStreamError(
        'corrupt',
        0,
        `The diff stream header says it is ${length} bytes; version ${DIFF_VERSION} headers are ${DIFF_HEADER_SIZE}`,
      );
    }
    this.position += buf.length;
    this.step = { what: 'header', prefix: Buffer.from(buf) };
  }

  private record(buf: Buffer, at: number): DiffEvent | undefined {
    const crc = buf.readUInt32LE(28);
    if (crc32c(buf.subarray(0, 28)) !== crc)
      throw new DiffStreamError(
        'checksum',
        at,
        `The record header at byte ${at} of the diff stream fails its checksum`,
      );
    const r = new Reader(buf);
    const type = r.u8();
    r.skip(3);
    const payloadCrc = r.u32();
    let offset: number;
    let length: number;
    try {
      offset = r.u64();
      length = r.u64();
    } catch {
      throw new DiffStreamError(
        'corrupt',
        at,
        `The record at byte ${at} has a 64-bit field over 2^53`,
      );
    }
    const payloadLength = r.u32();
    const bad = (why: string): DiffStreamError =>
      new DiffStreamError('corrupt', at, `The record at byte ${at} of the diff stream ${why}`);
    if (buf[1] !== 0 || buf[2] !== 0 || buf[3] !== 0) throw bad('has non-zero reserved bytes');
    const header = this.header as DiffHeader;
    if (type === RECORD_DATA || type === RECORD_ZERO) {
      if (length <= 0) throw bad('is empty');
      if (type === RECORD_DATA && (payloadLength !== length || length > DIFF_MAX_DATA_RECORD))
        throw bad(`has a payload of ${payloadLength} bytes for a range of ${length}`);
      if (type === RECORD_ZERO && (payloadLength !== 0 || payloadCrc !== 0))
        throw bad('is a zero record with a payload');
      if (offset < this.next)
        throw bad(`starts at ${offset}, before the end of the previous record (${this.next})`);
      if (offset + length > header.toSize)
        throw bad(`ends at ${offset + length}, past the volume's size (${header.toSize})`);
      this.next = offset + length;
      this.hash.update(buf);
      if (type === RECORD_ZERO) {
        this.seen.zeroRecordCount++;
        this.seen.zeroBytes += length;
        return { kind: 'zero', offset, length, at };
      }
      this.step = { what: 'payload', type, offset, length, crc: payloadCrc, at };
      return undefined;
    }
    if (type === RECORD_END) {
      if (offset !== 0 || length !== 0 || payloadLength !== DIFF_END_PAYLOAD_SIZE)
        throw bad('is an end record of the wrong shape');
      this.step = { what: 'payload', type, offset, length, crc: payloadCrc, at };
      return undefined;
    }
    throw bad(`has an unknown type 0x${type.toString(16)}`);
  }

  private payload(step: Extract<Step, { what: 'payload' }>, buf: Buffer): DiffEvent {
    if (crc32c(buf) !== step.crc) {
      throw new DiffStreamError(
        'checksum',
        step.at,
        step.type === RECORD_DATA
          ? `The data of the record at byte ${step.at} of the diff stream (volume range ${step.offset}+${step.length}) fails its checksum`
          : `The end record at byte ${step.at} of the diff stream fails its checksum`,
      );
    }
    if (step.type === RECORD_DATA) {
      this.hash.update(buf);
      this.seen.dataRecordCount++;
      this.seen.dataBytes += buf.length;
      this.step = { what: 'record' };
      return { kind: 'data', offset: step.offset, data: buf, at: step.at };
    }
    const r = new Reader(buf);
    let summary: DiffSummary;
    try {
      summary = {
        dataRecordCount: r.u64(),
        zeroRecordCount: r.u64(),
        dataBytes: r.u64(),
        zeroBytes: r.u64(),
      };
    } catch {
      throw new DiffStreamError('corrupt', step.at, `The end record at byte ${step.at} is damaged`);
    }
    const digest = r.bytes(32);
    const s = this.seen;
    if (
      summary.dataRecordCount !== s.dataRecordCount ||
      summary.zeroRecordCount !== s.zeroRecordCount ||
      summary.dataBytes !== s.dataBytes ||
      summary.zeroBytes !== s.zeroBytes
    ) {
      throw new DiffStreamError(
        'corrupt',
        step.at,
        `The end record at byte ${step.at} counts ${summary.dataRecordCount} data and ${summary.zeroRecordCount} zero records, but the stream holds ${s.dataRecordCount} and ${s.zeroRecordCount}: records are missing or extra`,
      );
    }
    if (!digest.equals(this.hash.digest())) {
      throw new DiffStreamError(
        'checksum',
        step.at,
        `The SHA-256 in the end record at byte ${step.at} does not match the stream before it`,
      );
    }
    this.step = { what: 'done' };
    return { kind: 'end', summary, streamBytes: this.position };
  }
}

function decodeHeaderBody(buf: Buffer): DiffHeader {
  const crc = buf.readUInt32LE(DIFF_HEADER_SIZE - 4);
  if (crc32c(buf.subarray(0, DIFF_HEADER_SIZE - 4)) !== crc)
    throw new DiffStreamError('checksum', 0, 'The diff stream header fails its checksum');
  const r = new Reader(buf, 12, DIFF_HEADER_SIZE - 4);
  try {
    const sourceUuid = r.bytes(16).toString('hex');
    const fromCheckpoint = r.u64();
    const fromSize = r.u64();
    const fromTimeMs = r.u64();
    const toCheckpoint = r.u64();
    const toSize = r.u64();
    const toTimeMs = r.u64();
    const dataBlockSize = r.u32();
    r.skip(4);
    const createdMs = r.u64();
    if (dataBlockSize === 0 || (dataBlockSize & (dataBlockSize - 1)) !== 0)
      throw new DecodeError(`data block size ${dataBlockSize} is not a power of two`);
    return {
      sourceUuid,
      fromCheckpoint,
      fromSize,
      fromTimeMs,
      toCheckpoint,
      toSize,
      toTimeMs,
      dataBlockSize,
      createdMs,
    };
  } catch (e) {
    if (e instanceof DiffStreamError) throw e;
    throw new DiffStreamError(
      'corrupt',
      0,
      `The diff stream header is damaged: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
}
