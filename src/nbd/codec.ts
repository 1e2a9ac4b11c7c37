/**
 * NBD framing, apart from any connection: a push parser for what clients send (client flags,
 * options, requests with WRITE payloads) and encoders for what the server sends.
 *
 * The parser keeps at most one partial header (≤ 28 bytes) of its own; complete frames are
 * parsed in place from the chunk that was pushed. What happens to a WRITE payload depends on
 * where the chunks come from:
 * - chunks of their own ('data' events: never reused by the socket): the payload is handed
 *   out as a subarray of the chunk, or as the list of its pieces when it spans chunks, never
 *   copied here (the device copies it once);
 * - `borrowed` chunks (views of memory the socket reads into again, input.ts): the payload is
 *   copied into a buffer from handler.payloadBuffer(), and the rest of a large one is read
 *   straight into that buffer (readTarget(), filled()): nothing is kept by reference.
 */
import {
  CLIENT_FLAG_FIXED_NEWSTYLE,
  CMD_WRITE,
  IHAVEOPT,
  MAX_OPTION_LENGTH,
  OPTION_HEADER_SIZE,
  OPTION_REPLY_HEADER_SIZE,
  OPTION_REPLY_MAGIC,
  REPLY_FLAG_DONE,
  REPLY_TYPE_ERROR,
  REPLY_TYPE_OFFSET_DATA,
  REQUEST_HEADER_SIZE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_HEADER_SIZE,
  STRUCTURED_REPLY_MAGIC,
} from './protocol.js';

// A 64-bit offset is a safe integer exactly when its high word is below 2^21.
const MAX_SAFE_HIGH_WORD = 0x1fffff;

/**
 * One transmission request as the client sent it. The parser owns a single instance and
 * fills it in again for every request (no allocation per request on the hot path): a handler
 * reads the fields it needs during onRequest() and must not keep the object.
 */
export interface NbdRequest {
  /** NBD_CMD_* as sent: any 16-bit value, possibly a command this server does not know. */
  readonly type: number;
  /** NBD_CMD_FLAG_* bits as sent. */
  readonly flags: number;
  /**
   * The client's opaque 8-byte handle, echoed unchanged in the reply. Kept as its two
   * big-endian 32-bit halves rather than a bigint: reading and writing those allocates nothing.
   */
  readonly handleHigh: number;
  readonly handleLow: number;
  /** Byte offset; -1 when the 64-bit offset exceeds 2^53 - 1 (never rounded). */
  readonly offset: number;
  readonly length: number;
  /**
   * WRITE data: one buffer (a view of the socket chunk, or with borrowed chunks always a
   * buffer from payloadBuffer()), or the pieces of it in order when it arrived spread over
   * several chunks of their own. Undefined for every other command.
   */
  readonly payload: Buffer | Buffer[] | undefined;
}

type MutableRequest = { -readonly [K in keyof NbdRequest]: NbdRequest[K] };

/** What the parser reports. Each callback runs synchronously inside push(). */
export interface ParserHandler {
  onClientFlags(flags: number): void;
  /** A complete option whose payload fits the option limit. */
  onOption(option: number, data: Buffer): void;
  /** An option whose payload exceeded the limit; its payload has been skipped. */
  onOptionTooBig(option: number, length: number): void;
  /** One request, WRITE payload included; `request` is reused for the next one. */
  onRequest(request: NbdRequest): void;
  /** Memory for a WRITE payload of `length` bytes (borrowed chunks only). */
  payloadBuffer(length: number): Buffer;
  /** The stream cannot be resynchronised; the parser has stopped. */
  onProtocolError(message: string): void;
}

export const enum ParserMode {
  ClientFlags = 0,
  Options = 1,
  Requests = 2,
  Stopped = 3,
}

const headerSizes = [4, OPTION_HEADER_SIZE, REQUEST_HEADER_SIZE, 0];

/** The rest of a payload is read straight into place when at least this long. */
const DIRECT_READ_MIN = 32 * 1024;

export class NbdParser {
  mode: ParserMode = ParserMode.ClientFlags;
  /** Largest WRITE payload accepted; a larger one is a protocol error (cannot resync). */
  maxPayload: number;
  private readonly head = Buffer.allocUnsafe(32);
  private headLen = 0;
  // A payload being collected across chunks (WRITE data or option data): the pieces are
  // subarrays of the pushed chunks, kept by reference (chunks are never reused by the socket).
  private parts: Buffer[] | undefined;
  private partsNeed = 0;
  /** Chunks are views of memory that is read into again: keep nothing by reference. */
  borrowed = false;
  // With borrowed chunks, the payload being collected, and how much of it has arrived.
  private dest: Buffer | undefined;
  private destHave = 0;
  /**
   * The last request was a WRITE with a payload worth reading straight into place: the
   * next read into the caller's buffer stops at the next request header (headerBytes()), so
   * that a following large payload lands in its own memory instead of partly in the caller's
   * buffer, to be copied.
   */
  private largeWrites = false;
  private skipRemaining = 0;
  // The option whose payload is being collected or skipped.
  private pendOption = 0;
  private pendOptionLength = 0;
  // The request being delivered, or (for a WRITE whose payload spans chunks) collected.
  private readonly request: MutableRequest = {
    type: 0,
    flags: 0,
    handleHigh: 0,
    handleLow: 0,
    offset: 0,
    length: 0,
    payload: undefined,
  };

  constructor(
    private readonly handler: ParserHandler,
    maxPayload: number,
  ) {
    this.maxPayload = maxPayload;
  }

  stop(): void {
    this.mode = ParserMode.Stopped;
  }

  /** True between frames (nothing partial buffered). */
  get idle(): boolean {
    return (
      this.headLen === 0 &&
      this.parts === undefined &&
      this.dest === undefined &&
      this.skipRemaining === 0
    );
  }

  /**
   * With borrowed chunks: memory the next read may go straight into (the rest of a large
   * payload being collected), or undefined for the caller's own buffer, whose bytes it then
   * push()es.
   */
  readTarget(): Buffer | undefined {
    const dest = this.dest;
    if (dest === undefined || this.mode === ParserMode.Stopped) return undefined;
    return dest.length - this.destHave >= DIRECT_READ_MIN
      ? dest.subarray(this.destHave)
      : undefined;
  }

  /**
   * With borrowed chunks, when readTarget() gave nothing: how many bytes the next read into
   * the caller's buffer should take, when fewer than it holds are better. After a large
   * WRITE, clients that write sequentially send another: reading just up to its header (one
   * more read per request) lets its payload go straight into place, where reading as much
   * as had arrived took the header with the payload's first part, copied afterwards (a
   * quarter of the bytes of a sequential write, at nbdcopy's 256 KiB requests and 64 KiB
   * reads). 0: no limit.
   */
  headerBytes(): number {
    if (!this.largeWrites || this.mode !== ParserMode.Requests) return 0;
    // (The short rest of a payload, when readTarget() did not take it, comes first.)
    const rest = this.dest === undefined ? 0 : this.dest.length - this.destHave;
    return rest + REQUEST_HEADER_SIZE - this.headLen;
  }

  /** `n` bytes were read into the memory readTarget() returned. */
  filled(n: number): void {
    this.destHave += n;
    this.drain();
  }

  /**
   * Deliver a payload that arrived while the parser was stopped (read straight into place).
   * Whoever sets `mode` back from Stopped calls this.
   */
  drain(): void {
    const dest = this.dest;
    if (dest === undefined || this.destHave < dest.length || this.mode === ParserMode.Stopped)
      return;
    this.dest = undefined;
    this.deliver(dest);
  }

  /** Feed bytes; returns how many were consumed (all, unless the parser stopped). */
  push(chunk: Buffer): number {
    const end = chunk.length;
    let off = 0;
    while (off < end) {
      const mode = this.mode;
      if (mode === ParserMode.Stopped) return off;
      if (this.dest !== undefined) {
        const n = Math.min(this.dest.length - this.destHave, end - off);
        chunk.copy(this.dest, this.destHave, off, off + n);
        this.destHave += n;
        off += n;
        this.drain();
        continue;
      }
      if (this.parts !== undefined) {
        const n = Math.min(this.partsNeed, end - off);
        this.parts.push(chunk.subarray(off, off + n));
        this.partsNeed -= n;
        off += n;
        if (this.partsNeed === 0) {
          const parts = this.parts;
          this.parts = undefined;
          this.deliver(parts.length === 1 ? parts[0]! : parts);
        }
        continue;
      }
      if (this.skipRemaining > 0) {
        const n = Math.min(this.skipRemaining, end - off);
        this.skipRemaining -= n;
        off += n;
        if (this.skipRemaining === 0)
          this.handler.onOptionTooBig(this.pendOption, this.pendOptionLength);
        continue;
      }
      const hsize = headerSizes[mode]!;
      if (this.headLen > 0 || end - off < hsize) {
        const n = Math.min(hsize - this.headLen, end - off);
        chunk.copy(this.head, this.headLen, off, off + n);
        this.headLen += n;
        off += n;
        if (this.headLen < hsize) {
          // Refuse a bad magic as soon as it is visible rather than waiting for a full header.
          if (
            mode === ParserMode.Requests &&
            this.headLen >= 4 &&
            this.head.readUInt32BE(0) !== REQUEST_MAGIC
          ) {
            return this.fail(
              `bad request magic 0x${this.head.readUInt32BE(0).toString(16)}`,
              chunk,
            );
          }
          return off;
        }
        this.headLen = 0;
        off = this.frame(mode, this.head, 0, chunk, off);
      } else {
        off = this.frame(mode, chunk, off, chunk, off + hsize);
      }
    }
    return off;
  }

  /** Parse one header at h[ho..]; its payload (if any) starts at chunk[off]. Returns the new offset. */
  private frame(mode: ParserMode, h: Buffer, ho: number, chunk: Buffer, off: number): number {
    if (mode === ParserMode.Requests) {
      if (h.readUInt32BE(ho) !== REQUEST_MAGIC) {
        return this.fail(`bad request magic 0x${h.readUInt32BE(ho).toString(16)}`, chunk);
      }
      const r = this.request;
      const type = h.readUInt16BE(ho + 6);
      const length = h.readUInt32BE(ho + 24);
      // The offset as two words rather than readBigUInt64BE: no bigint per request.
      const offsetHigh = h.readUInt32BE(ho + 16);
      r.type = type;
      r.flags = h.readUInt16BE(ho + 4);
      r.handleHigh = h.readUInt32BE(ho + 8);
      r.handleLow = h.readUInt32BE(ho + 12);
      r.offset =
        offsetHigh <= MAX_SAFE_HIGH_WORD ? offsetHigh * 0x100000000 + h.readUInt32BE(ho + 20) : -1;
      r.length = length;
      this.largeWrites = type === CMD_WRITE && length >= DIRECT_READ_MIN;
      if (type !== CMD_WRITE) {
        r.payload = undefined;
        this.handler.onRequest(r);
        return off;
      }
      if (length > this.maxPayload) {
        return this.fail(
          `WRITE payload of ${length} bytes exceeds the ${this.maxPayload}-byte limit`,
          chunk,
        );
      }
      if (chunk.length - off >= length) {
        if (this.borrowed) {
          const p = this.handler.payloadBuffer(length);
          chunk.copy(p, 0, off, off + length);
          r.payload = p;
        } else {
          r.payload = chunk.subarray(off, off + length);
        }
        this.handler.onRequest(r);
        r.payload = undefined; // do not keep the chunk alive until the next request
        return off + length;
      }
      // The header stays in `request` until the rest of the payload arrives.
      return this.collect(length, chunk, off);
    }
    if (mode === ParserMode.Options) {
      if (h.readBigUInt64BE(ho) !== IHAVEOPT) return this.fail('bad option magic', chunk);
      const option = h.readUInt32BE(ho + 8);
      const length = h.readUInt32BE(ho + 12);
      this.pendOption = option;
      this.pendOptionLength = length;
      if (length > MAX_OPTION_LENGTH) {
        this.skipRemaining = length;
        return off;
      }
      if (chunk.length - off >= length) {
        const data = chunk.subarray(off, off + length);
        this.handler.onOption(option, this.borrowed ? Buffer.from(data) : data);
        return off + length;
      }
      return this.collect(length, chunk, off);
    }
    // Client flags.
    this.handler.onClientFlags(h.readUInt32BE(ho));
    return off;
  }

  private collect(length: number, chunk: Buffer, off: number): number {
    if (this.borrowed) {
      const dest =
        this.mode === ParserMode.Requests
          ? this.handler.payloadBuffer(length)
          : Buffer.allocUnsafe(length);
      this.destHave = chunk.copy(dest, 0, off);
      this.dest = dest;
      return chunk.length;
    }
    this.parts = off < chunk.length ? [chunk.subarray(off)] : [];
    this.partsNeed = length - (chunk.length - off);
    return chunk.length;
  }

  private deliver(payload: Buffer | Buffer[]): void {
    if (this.mode === ParserMode.Requests) {
      const r = this.request;
      r.payload = payload;
      this.handler.onRequest(r);
      r.payload = undefined;
    } else {
      const data = Array.isArray(payload) ? Buffer.concat(payload, this.pendOptionLength) : payload;
      this.handler.onOption(this.pendOption, data);
    }
  }

  private fail(message: string, chunk: Buffer): number {
    this.mode = ParserMode.Stopped;
    this.handler.onProtocolError(message);
    return chunk.length;
  }
}

/** True when the client flags are acceptable (fixed newstyle is required). */
export function clientFlagsOk(flags: number): boolean {
  return (flags & CLIENT_FLAG_FIXED_NEWSTYLE) !== 0;
}

// ---- Encoders. Each writes into `buf` at `off` and returns the offset after it. ----

export function writeSimpleReply(
  buf: Buffer,
  off: number,
  error: number,
  handleHigh: number,
  handleLow: number,
): number {
  buf.writeUInt32BE(SIMPLE_REPLY_MAGIC, off);
  buf.writeUInt32BE(error, off + 4);
  buf.writeUInt32BE(handleHigh, off + 8);
  buf.writeUInt32BE(handleLow, off + 12);
  return off + SIMPLE_REPLY_SIZE;
}

export function writeStructuredHeader(
  buf: Buffer,
  off: number,
  flags: number,
  type: number,
  handleHigh: number,
  handleLow: number,
  length: number,
): number {
  buf.writeUInt32BE(STRUCTURED_REPLY_MAGIC, off);
  buf.writeUInt16BE(flags, off + 4);
  buf.writeUInt16BE(type, off + 6);
  buf.writeUInt32BE(handleHigh, off + 8);
  buf.writeUInt32BE(handleLow, off + 12);
  buf.writeUInt32BE(length, off + 16);
  return off + STRUCTURED_HEADER_SIZE;
}

/** What precedes the data of an OFFSET_DATA chunk: the structured header and the offset. */
export const OFFSET_DATA_HEADER_SIZE = STRUCTURED_HEADER_SIZE + 8;

/** The header of a final OFFSET_DATA chunk carrying `dataLength` bytes read at `offset`. */
export function writeOffsetDataHeader(
  buf: Buffer,
  off: number,
  handleHigh: number,
  handleLow: number,
  offset: number,
  dataLength: number,
): number {
  writeStructuredHeader(
    buf,
    off,
    REPLY_FLAG_DONE,
    REPLY_TYPE_OFFSET_DATA,
    handleHigh,
    handleLow,
    dataLength + 8,
  );
  // A safe integer as two 32-bit words (no bigint on the read path).
  buf.writeUInt32BE(Math.floor(offset / 0x100000000), off + 20);
  buf.writeUInt32BE(offset >>> 0, off + 24);
  return off + OFFSET_DATA_HEADER_SIZE;
}

/** Size of a final ERROR chunk whose message is `messageLength` bytes. */
export const errorChunkSize = (messageLength: number): number =>
  STRUCTURED_HEADER_SIZE + 6 + messageLength;

/** A final ERROR chunk: errno, then the message (at most 64 KiB - 1, the caller's to bound). */
export function writeErrorChunk(
  buf: Buffer,
  off: number,
  handleHigh: number,
  handleLow: number,
  errno: number,
  message: Buffer,
): number {
  writeStructuredHeader(
    buf,
    off,
    REPLY_FLAG_DONE,
    REPLY_TYPE_ERROR,
    handleHigh,
    handleLow,
    6 + message.length,
  );
  buf.writeUInt32BE(errno, off + STRUCTURED_HEADER_SIZE);
  buf.writeUInt16BE(message.length, off + STRUCTURED_HEADER_SIZE + 4);
  message.copy(buf, off + STRUCTURED_HEADER_SIZE + 6);
  return off + errorChunkSize(message.length);
}

/**
 * The payload of a BLOCK_STATUS chunk: the metadata context id, then one (length, state)
 * descriptor per run.
 */
export function encodeBlockStatusBody(
  contextId: number,
  lengths: readonly number[],
  states: readonly number[],
): Buffer {
  const n = lengths.length;
  const body = Buffer.allocUnsafe(4 + 8 * n);
  body.writeUInt32BE(contextId, 0);
  for (let i = 0; i < n; i++) {
    body.writeUInt32BE(lengths[i]!, 4 + 8 * i);
    body.writeUInt32BE(states[i]!, 8 + 8 * i);
  }
  return body;
}

/** An option reply with its payload, as one buffer. */
export function encodeOptionReply(option: number, type: number, data: Buffer = EMPTY): Buffer {
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, OPTION_REPLY_HEADER_SIZE);
  return b;
}

export const EMPTY = Buffer.alloc(0);

/** A reader over an option payload that reports malformed input instead of throwing RangeErrors. */
export class OptionReader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}
  get remaining(): number {
    return this.buf.length - this.pos;
  }
  u16(): number | undefined {
    if (this.remaining < 2) return undefined;
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(): number | undefined {
    if (this.remaining < 4) return undefined;
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }
  /** A string prefixed by a 32-bit length, at most `max` bytes. */
  str32(max: number): string | undefined {
    const n = this.u32();
    if (n === undefined || n > max || n > this.remaining) return undefined;
    const s = this.buf.toString('utf8', this.pos, this.pos + n);
    this.pos += n;
    return s;
  }
}
