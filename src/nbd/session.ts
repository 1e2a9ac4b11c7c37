/**
 * One client connection: the handshake, option haggling (delegated to Negotiation) and then
 * transmission. Requests are validated, dispatched to the device at once and answered when
 * they complete, in any order. Every failure is contained here: a misbehaving client gets an
 * error reply or, when the stream cannot be resynchronised, a closed connection — never an
 * exception that reaches the server or another connection.
 */
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import {
  NbdParser,
  ParserMode,
  clientFlagsOk,
  writeSimpleReply,
  writeStructuredHeader,
  type ParserHandler,
} from './codec.js';
import type { BlockDevice, DeviceExtent, NbdLogger } from './device.js';
import { describeError, toErrno } from './errno.js';
import { effectiveBlockSizes, type ExportTable } from './exports.js';
import { BASE_ALLOCATION_ID, Negotiation, type Outcome, type Selected } from './handshake.js';
import {
  CLIENT_FLAG_NO_ZEROES,
  CMD_BLOCK_STATUS,
  CMD_CACHE,
  CMD_DISC,
  CMD_FLAG_DF,
  CMD_FLAG_FAST_ZERO,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  EINVAL,
  ENOSPC,
  EOVERFLOW,
  EPERM,
  FLAG_FIXED_NEWSTYLE,
  FLAG_NO_ZEROES,
  IHAVEOPT,
  KNOWN_CLIENT_FLAGS,
  NBDMAGIC,
  REPLY_FLAG_DONE,
  REPLY_TYPE_BLOCK_STATUS,
  REPLY_TYPE_ERROR,
  REPLY_TYPE_OFFSET_DATA,
  SIMPLE_REPLY_SIZE,
  STATE_HOLE,
  STATE_ZERO,
  STRUCTURED_HEADER_SIZE,
  TF_SEND_CACHE,
  TF_SEND_FAST_ZERO,
  TF_SEND_FLUSH,
  TF_SEND_FUA,
  TF_SEND_TRIM,
  TF_SEND_WRITE_ZEROES,
  commandName,
  errnoName,
} from './protocol.js';
import { Output } from './output.js';

export interface SessionTls {
  context: SecureContext;
  require: boolean;
}

export interface SessionLimits {
  /** Largest READ/WRITE payload (advertised as maximum block size). */
  maxRequest: number;
  /** Requests in flight before the session stops reading from the socket. */
  maxInflight: number;
  /** Payload bytes in flight (reads and writes) before it stops reading. */
  maxInflightBytes: number;
  /** Reply bytes buffered in the socket before it stops reading. */
  maxOutputBytes: number;
  /** A client must finish negotiating within this many ms (0: no limit). */
  negotiationTimeoutMs: number;
}

/** Replies to requests at least this large are sent at once instead of batched per loop turn. */
const URGENT_BYTES = 64 * 1024;
/** Most BLOCK_STATUS descriptors in one reply. */
const MAX_EXTENTS = 65536;
const U32_MAX = 0xffffffff;

export class Session implements ParserHandler {
  readonly id: number;
  private readonly parser: NbdParser;
  private readonly out: Output;
  private readonly negotiation: Negotiation;
  private noZeroes = false;
  // Bytes received but not parsed yet: while an option is being processed, or while the
  // session is throttled (too much in flight or too many reply bytes queued).
  private held: Buffer | undefined;
  private throttled = false;
  private negotiating = false;

  // Transmission state, set at GO / EXPORT_NAME.
  private device: BlockDevice | undefined;
  private size = 0;
  private minBlock = 1;
  private maxRequest: number;
  private tflags = 0;
  private structured = false;
  private allocation = false;
  private readOnly = false;

  private negotiationTimer: NodeJS.Timeout | undefined;
  private inflight = 0;
  private inflightBytes = 0;
  private paused = false;
  private outputFull = false;
  private closing = false;
  private closed = false;
  private readonly closeWaiters: (() => void)[] = [];
  exportName: string | undefined;

  private socket: Socket;
  private readonly tls: SessionTls | undefined;

  constructor(
    socket: Socket,
    exports: ExportTable,
    private readonly limits: SessionLimits,
    private readonly logger: NbdLogger,
    id: number,
    tls?: SessionTls,
  ) {
    this.id = id;
    this.socket = socket;
    this.tls = tls;
    this.maxRequest = limits.maxRequest;
    this.parser = new NbdParser(this, limits.maxRequest);
    this.out = new Output(socket);
    this.negotiation = new Negotiation({
      exports,
      maxRequest: limits.maxRequest,
      logger,
      ...(tls === undefined ? {} : { tls: { require: tls.require } }),
    });
  }

  private readonly onDataBound = (chunk: Buffer): void => this.onData(chunk);
  private readonly onDrain = (): void => {
    if (this.outputFull) {
      this.outputFull = false;
      this.release();
    }
  };
  private readonly onError = (e: Error): void =>
    this.logger.debug('nbd connection error', { conn: this.id, error: e.message });
  private readonly onCloseBound = (): void => this.onClose();
  private readonly onEnd = (): void => this.finish('client closed the connection');

  private bind(s: Socket): void {
    s.on('data', this.onDataBound);
    s.on('drain', this.onDrain);
    s.on('error', this.onError);
    s.on('close', this.onCloseBound);
    s.on('end', this.onEnd);
  }

  private unbind(s: Socket): void {
    s.off('data', this.onDataBound);
    s.off('drain', this.onDrain);
    s.off('close', this.onCloseBound);
    s.off('end', this.onEnd);
  }

  start(): void {
    const s = this.socket;
    if (this.limits.negotiationTimeoutMs > 0) {
      this.negotiationTimer = setTimeout(() => {
        this.logger.warn('nbd negotiation timed out', { conn: this.id });
        this.destroy('negotiation timed out');
      }, this.limits.negotiationTimeoutMs);
      this.negotiationTimer.unref();
    }
    s.setNoDelay(true);
    this.bind(s);
    const greet = Buffer.allocUnsafe(18);
    greet.writeBigUInt64BE(NBDMAGIC, 0);
    greet.writeBigUInt64BE(IHAVEOPT, 8);
    greet.writeUInt16BE(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES, 16);
    this.out.raw(greet);
  }

  /** Resolves once the connection is closed. */
  whenClosed(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => this.closeWaiters.push(resolve));
  }

  /** Graceful stop: read nothing more, answer what is in flight, then close. */
  shutdown(reason = 'server shutting down'): void {
    if (this.device === undefined) {
      this.destroy(reason);
      return;
    }
    this.finish(reason);
  }

  destroy(reason: string): void {
    if (this.closed) return;
    this.logger.debug('nbd connection dropped', { conn: this.id, reason });
    this.parser.stop();
    this.out.close();
    this.socket.destroy();
  }

  // ---- input ----

  private onData(chunk: Buffer): void {
    if (this.held !== undefined) {
      // Only reachable with data already buffered by the socket when it was paused.
      this.held = Buffer.concat([this.held, chunk]);
      return;
    }
    try {
      const used = this.parser.push(chunk);
      if (used < chunk.length && (this.negotiating || this.throttled))
        this.held = chunk.subarray(used);
    } catch (e) {
      this.logger.error('nbd internal error while parsing', { conn: this.id, ...describeError(e) });
      this.destroy('internal error');
    }
  }

  /** Pause or resume reading during negotiation (one option at a time). */
  private flow(): void {
    if (this.negotiating && !this.paused) {
      this.paused = true;
      this.socket.pause();
    } else if (!this.negotiating && this.paused) {
      this.paused = false;
      this.socket.resume();
    }
  }

  /** Stop parsing requests (mid-chunk if need be) and reading from the socket. */
  private throttle(): void {
    if (this.throttled || this.parser.mode !== ParserMode.Requests) return;
    this.throttled = true;
    this.parser.mode = ParserMode.Stopped;
    this.socket.pause();
  }

  /** Resume once in-flight work has fallen to half the limits and the socket has drained. */
  private release(): void {
    if (!this.throttled || this.closing || this.closed) return;
    if (
      this.outputFull ||
      this.inflight > this.limits.maxInflight >> 1 ||
      this.inflightBytes > this.limits.maxInflightBytes / 2
    ) {
      return;
    }
    this.throttled = false;
    this.parser.mode = ParserMode.Requests;
    const held = this.held;
    this.held = undefined;
    if (held !== undefined) this.onData(held);
    if (!this.throttled) this.socket.resume();
  }

  private overLimits(): boolean {
    return (
      this.outputFull ||
      this.inflight >= this.limits.maxInflight ||
      this.inflightBytes >= this.limits.maxInflightBytes
    );
  }

  onProtocolError(message: string): void {
    this.logger.warn('nbd protocol error, closing connection', { conn: this.id, error: message });
    this.parser.stop();
    this.out.flush();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  // ---- negotiation ----

  onClientFlags(flags: number): void {
    if (!clientFlagsOk(flags) || (flags & ~KNOWN_CLIENT_FLAGS) !== 0) {
      this.onProtocolError(`unsupported client flags 0x${flags.toString(16)}`);
      return;
    }
    this.noZeroes = (flags & CLIENT_FLAG_NO_ZEROES) !== 0;
    this.negotiation.noZeroes = this.noZeroes;
    this.parser.mode = ParserMode.Options;
  }

  onOption(option: number, data: Buffer): void {
    this.runOption(() => this.negotiation.handle(option, data));
  }

  onOptionTooBig(option: number, length: number): void {
    this.out.raw(this.negotiation.tooBig(option, length));
  }

  private runOption(step: () => Promise<Outcome>): void {
    // Options are handled one at a time: stop parsing until this one is answered.
    this.negotiating = true;
    this.parser.mode = ParserMode.Stopped;
    this.flow();
    step().then(
      (outcome) => this.afterOption(outcome),
      (e: unknown) => {
        this.logger.error('nbd internal error in negotiation', {
          conn: this.id,
          ...describeError(e),
        });
        this.destroy('internal error');
      },
    );
  }

  private afterOption(outcome: Outcome): void {
    if (this.closed) return;
    for (const r of outcome.replies) this.out.raw(r);
    if (outcome.kind === 'close') {
      this.logger.debug('nbd negotiation ended', { conn: this.id, reason: outcome.reason });
      this.out.flush();
      this.socket.end();
      return;
    }
    if (outcome.kind === 'starttls') {
      this.upgrade();
      return;
    }
    if (outcome.kind === 'go') this.enter(outcome.selected);
    else this.parser.mode = ParserMode.Options;
    this.negotiating = false;
    const held = this.held;
    this.held = undefined;
    if (held !== undefined) this.onData(held);
    this.flow();
  }

  /** Run the TLS handshake over the connection, then go on negotiating inside TLS. */
  private upgrade(): void {
    const raw = this.socket;
    this.out.flush(); // the ACK leaves in clear, before the handshake starts
    this.unbind(raw);
    if (this.held !== undefined) {
      // The client must wait for the ACK before starting TLS.
      this.onProtocolError('data sent between STARTTLS and the TLS handshake');
      return;
    }
    const secure = new TLSSocket(raw, { isServer: true, secureContext: this.tls!.context });
    this.socket = secure;
    this.out.setSocket(secure);
    this.paused = false;
    this.bind(secure);
    secure.once('secure', () => {
      this.negotiation.tlsActive = true;
      this.logger.debug('nbd TLS established', { conn: this.id, protocol: secure.getProtocol() });
      this.parser.mode = ParserMode.Options;
      this.negotiating = false;
    });
  }

  private enter(sel: Selected): void {
    clearTimeout(this.negotiationTimer);
    const d = sel.device;
    this.device = d;
    this.exportName = sel.export.name;
    this.size = d.size;
    const bs = effectiveBlockSizes(d, this.limits.maxRequest);
    this.minBlock = bs.minimum;
    this.maxRequest = bs.maximum;
    this.parser.maxPayload = bs.maximum;
    this.tflags = sel.flags;
    this.structured = sel.structured;
    this.allocation = sel.allocation && d.capabilities.canBlockStatus;
    this.readOnly = d.capabilities.readOnly;
    this.parser.mode = ParserMode.Requests;
    this.logger.debug('nbd transmission', {
      conn: this.id,
      export: sel.export.name,
      structured: sel.structured,
    });
  }

  // ---- transmission ----

  onRequest(
    flags: number,
    type: number,
    hi: number,
    lo: number,
    offset: number,
    length: number,
    payload: Buffer | Buffer[] | undefined,
  ): void {
    if (this.closing) return;
    const err = this.validate(flags, type, offset, length);
    if (err !== 0) {
      this.logger.debug('nbd request refused', {
        conn: this.id,
        command: commandName(type),
        offset,
        length,
        errno: errnoName(err),
      });
      this.replyError(type, hi, lo, err, `${commandName(type)} refused: ${errnoName(err)}`);
      return;
    }
    if (type === CMD_DISC) {
      this.finish('client sent DISC');
      return;
    }
    const d = this.device!;
    // Counted before the device is called, so that every path below (including a device
    // that throws synchronously) gives back exactly what it took.
    const bytes = type === CMD_WRITE || type === CMD_READ ? length : 0;
    this.inflight++;
    this.inflightBytes += bytes;
    let p: Promise<unknown>;
    try {
      switch (type) {
        case CMD_READ:
          d.read(offset, length).then(
            (buf) => this.readDone(hi, lo, offset, length, buf),
            (e: unknown) => this.failed(type, hi, lo, length, e),
          );
          if (this.overLimits()) this.throttle();
          return;
        case CMD_WRITE:
          if (!Array.isArray(payload))
            p = d.write(offset, payload!, { fua: (flags & CMD_FLAG_FUA) !== 0 });
          else if (d.writev !== undefined)
            p = d.writev(offset, payload, { fua: (flags & CMD_FLAG_FUA) !== 0 });
          else
            p = d.write(offset, Buffer.concat(payload, length), {
              fua: (flags & CMD_FLAG_FUA) !== 0,
            });
          break;
        case CMD_FLUSH:
          p = d.flush();
          break;
        case CMD_TRIM:
          p = d.trim(offset, length, { fua: (flags & CMD_FLAG_FUA) !== 0 });
          break;
        case CMD_WRITE_ZEROES:
          p = d.zero(offset, length, {
            fua: (flags & CMD_FLAG_FUA) !== 0,
            noHole: (flags & CMD_FLAG_NO_HOLE) !== 0,
            fastZero: (flags & CMD_FLAG_FAST_ZERO) !== 0,
          });
          break;
        case CMD_CACHE:
          p = d.cache!(offset, length);
          break;
        case CMD_BLOCK_STATUS:
          d.extents(offset, length).then(
            (ext) =>
              this.extentsDone(hi, lo, offset, length, (flags & CMD_FLAG_REQ_ONE) !== 0, ext),
            (e: unknown) => this.failed(type, hi, lo, 0, e),
          );
          if (this.overLimits()) this.throttle();
          return;
        default:
          // Unreachable: validate() refuses unknown commands.
          throw new Error(`unknown command ${type}`);
      }
    } catch (e) {
      // A device that throws synchronously instead of rejecting.
      this.failed(type, hi, lo, bytes, e);
      return;
    }
    p.then(
      () => this.done(hi, lo, bytes),
      (e: unknown) => this.failed(type, hi, lo, bytes, e),
    );
    if (this.overLimits()) this.throttle();
  }

  /** 0 when the request may be dispatched, else the errno to answer with. */
  private validate(flags: number, type: number, offset: number, length: number): number {
    const tf = this.tflags;
    let allowed = 0;
    switch (type) {
      case CMD_READ:
        if (this.structured) allowed = CMD_FLAG_DF;
        break;
      case CMD_WRITE:
        if (this.readOnly) return EPERM;
        if (tf & TF_SEND_FUA) allowed = CMD_FLAG_FUA;
        break;
      case CMD_TRIM:
        if (this.readOnly) return EPERM;
        if (!(tf & TF_SEND_TRIM)) return EINVAL;
        if (tf & TF_SEND_FUA) allowed = CMD_FLAG_FUA;
        break;
      case CMD_WRITE_ZEROES:
        if (this.readOnly) return EPERM;
        if (!(tf & TF_SEND_WRITE_ZEROES)) return EINVAL;
        allowed = CMD_FLAG_NO_HOLE;
        if (tf & TF_SEND_FUA) allowed |= CMD_FLAG_FUA;
        if (tf & TF_SEND_FAST_ZERO) allowed |= CMD_FLAG_FAST_ZERO;
        break;
      case CMD_FLUSH:
        if (!(tf & TF_SEND_FLUSH)) return EINVAL;
        if (flags !== 0 || offset !== 0 || length !== 0) return EINVAL;
        return 0;
      case CMD_CACHE:
        if (!(tf & TF_SEND_CACHE)) return EINVAL;
        break;
      case CMD_BLOCK_STATUS:
        if (!this.allocation) return EINVAL;
        allowed = CMD_FLAG_REQ_ONE;
        break;
      case CMD_DISC:
        return 0;
      default:
        return EINVAL;
    }
    if ((flags & ~allowed) !== 0) return EINVAL;
    if (length === 0) return EINVAL;
    const isWrite = type === CMD_WRITE || type === CMD_WRITE_ZEROES;
    if ((type === CMD_READ || type === CMD_WRITE) && length > this.maxRequest) return EOVERFLOW;
    if (offset < 0 || offset + length > this.size) return isWrite ? ENOSPC : EINVAL;
    const m = this.minBlock;
    if (m > 1 && (offset % m !== 0 || length % m !== 0)) return EINVAL;
    return 0;
  }

  private readDone(hi: number, lo: number, offset: number, length: number, buf: Buffer): void {
    this.inflight--;
    this.inflightBytes -= length;
    if (this.closed) return;
    if (buf.length !== length) {
      this.failedReply(
        CMD_READ,
        hi,
        lo,
        new Error(`device returned ${buf.length} bytes for a ${length}-byte read`),
      );
    } else if (this.structured) {
      const out = this.out;
      const b = out.reserve(STRUCTURED_HEADER_SIZE + 8);
      const o = out.offset;
      writeStructuredHeader(b, o, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, hi, lo, length + 8);
      b.writeUInt32BE(Math.floor(offset / 0x100000000), o + 20);
      b.writeUInt32BE(offset >>> 0, o + 24);
      out.commit(STRUCTURED_HEADER_SIZE + 8);
      out.data(buf);
      if (length >= URGENT_BYTES) out.soon();
    } else {
      const out = this.out;
      const b = out.reserve(SIMPLE_REPLY_SIZE);
      writeSimpleReply(b, out.offset, 0, hi, lo);
      out.commit(SIMPLE_REPLY_SIZE);
      out.data(buf);
      if (length >= URGENT_BYTES) out.soon();
    }
    this.afterReply();
  }

  private done(hi: number, lo: number, bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    if (this.closed) return;
    const out = this.out;
    const b = out.reserve(SIMPLE_REPLY_SIZE);
    writeSimpleReply(b, out.offset, 0, hi, lo);
    out.commit(SIMPLE_REPLY_SIZE);
    if (bytes >= URGENT_BYTES) out.soon();
    this.afterReply();
  }

  private extentsDone(
    hi: number,
    lo: number,
    offset: number,
    length: number,
    one: boolean,
    ext: DeviceExtent[],
  ): void {
    this.inflight--;
    if (this.closed) return;
    // Clamp to the request, merge equal neighbours, cap descriptor lengths at 32 bits.
    const end = offset + length;
    const lens: number[] = [];
    const states: number[] = [];
    let pos = offset;
    for (const e of ext) {
      if (e.offset !== pos || e.length <= 0) break;
      let len = Math.min(e.offset + e.length, end) - pos;
      if (len <= 0) break;
      const state = (e.hole ? STATE_HOLE : 0) | (e.zero || e.hole ? STATE_ZERO : 0);
      const last = lens.length - 1;
      if (last >= 0 && states[last] === state && lens[last]! + len <= U32_MAX) {
        lens[last]! += len;
      } else {
        while (len > 0) {
          const piece = Math.min(len, U32_MAX - (U32_MAX % this.minBlock));
          lens.push(piece);
          states.push(state);
          len -= piece;
        }
      }
      pos = e.offset + e.length;
      if (pos >= end || lens.length >= MAX_EXTENTS) break;
    }
    if (lens.length === 0) {
      this.failedReply(
        CMD_BLOCK_STATUS,
        hi,
        lo,
        new Error('device returned no extent for the requested offset'),
      );
      this.afterReply();
      return;
    }
    const n = one ? 1 : Math.min(lens.length, MAX_EXTENTS);
    const body = Buffer.allocUnsafe(4 + 8 * n);
    body.writeUInt32BE(BASE_ALLOCATION_ID, 0);
    for (let i = 0; i < n; i++) {
      body.writeUInt32BE(lens[i]!, 4 + 8 * i);
      body.writeUInt32BE(states[i]!, 8 + 8 * i);
    }
    const out = this.out;
    const b = out.reserve(STRUCTURED_HEADER_SIZE);
    writeStructuredHeader(
      b,
      out.offset,
      REPLY_FLAG_DONE,
      REPLY_TYPE_BLOCK_STATUS,
      hi,
      lo,
      body.length,
    );
    out.commit(STRUCTURED_HEADER_SIZE);
    out.data(body);
    this.afterReply();
  }

  private failed(type: number, hi: number, lo: number, bytes: number, e: unknown): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    if (this.closed) return;
    this.failedReply(type, hi, lo, e);
    this.afterReply();
  }

  private failedReply(type: number, hi: number, lo: number, e: unknown): void {
    const errno = toErrno(e, type === CMD_WRITE || type === CMD_WRITE_ZEROES);
    const fields = describeError(e);
    this.logger.warn('nbd request failed', {
      conn: this.id,
      command: commandName(type),
      errno: errnoName(errno),
      ...fields,
    });
    this.replyError(type, hi, lo, errno, String(fields.error));
  }

  private replyError(type: number, hi: number, lo: number, errno: number, message: string): void {
    const out = this.out;
    if (this.structured && (type === CMD_READ || type === CMD_BLOCK_STATUS)) {
      const msg = Buffer.from(message.slice(0, 1024), 'utf8');
      const b = out.reserve(STRUCTURED_HEADER_SIZE + 6 + msg.length);
      const o = out.offset;
      writeStructuredHeader(b, o, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, hi, lo, 6 + msg.length);
      b.writeUInt32BE(errno, o + 20);
      b.writeUInt16BE(msg.length, o + 24);
      msg.copy(b, o + 26);
      out.commit(STRUCTURED_HEADER_SIZE + 6 + msg.length);
    } else {
      const b = out.reserve(SIMPLE_REPLY_SIZE);
      writeSimpleReply(b, out.offset, errno, hi, lo);
      out.commit(SIMPLE_REPLY_SIZE);
    }
  }

  private afterReply(): void {
    if (this.closing) {
      if (this.inflight === 0) this.endNow();
      return;
    }
    if (this.socket.writableLength + this.out.queuedBytes > this.limits.maxOutputBytes) {
      this.outputFull = true;
      this.throttle();
    } else if (this.throttled) {
      this.release();
    }
  }

  // ---- closing ----

  /** Stop reading; close once every request in flight has been answered. */
  private finish(reason: string): void {
    if (this.closing || this.closed) return;
    this.closing = true;
    this.logger.debug('nbd connection finishing', {
      conn: this.id,
      reason,
      inflight: this.inflight,
    });
    this.parser.stop();
    if (this.inflight === 0) this.endNow();
  }

  private endNow(): void {
    this.out.flush();
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 5000).unref();
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.negotiationTimer);
    this.parser.stop();
    this.out.close();
    for (const w of this.closeWaiters.splice(0)) w();
  }
}
