/**
 * One client connection: the handshake (decided by Negotiation, handshake.ts) and then
 * transmission. Each request is judged by decide() (transmission.ts) and, unless refused,
 * dispatched to the device at once and answered when it completes, in any order. This file
 * owns what is about the connection: reading, back-pressure, replies on the wire, STARTTLS,
 * closing. Every failure is contained here: a misbehaving client gets an error reply or, when
 * the stream cannot be resynchronised, a closed connection — never an exception that reaches
 * the server or another connection.
 */
import type { Socket } from 'node:net';
import { TLSSocket, type SecureContext } from 'node:tls';
import {
  NbdParser,
  OFFSET_DATA_HEADER_SIZE,
  ParserMode,
  encodeBlockStatusBody,
  errorChunkSize,
  writeErrorChunk,
  writeOffsetDataHeader,
  writeSimpleReply,
  writeStructuredHeader,
  type NbdRequest,
  type ParserHandler,
} from './codec.js';
import type { BlockDevice, DeviceExtent, NbdLogger } from './device.js';
import { describeError, toErrno } from './errno.js';
import { withFields, type NbdObserver } from './observer.js';
import { adopt, RECYCLED_MIN, RecycledBuffers, type ReadTarget } from './input.js';
import { effectiveBlockSizes, type ExportTable } from './exports.js';
import { BASE_ALLOCATION_ID, Negotiation, type Outcome, type Selected } from './handshake.js';
import {
  CMD_BLOCK_STATUS,
  CMD_CACHE,
  CMD_FLAG_FAST_ZERO,
  CMD_FLAG_FUA,
  CMD_FLAG_NO_HOLE,
  CMD_FLAG_REQ_ONE,
  CMD_FLUSH,
  CMD_READ,
  CMD_TRIM,
  CMD_WRITE,
  CMD_WRITE_ZEROES,
  EIO,
  REPLY_FLAG_DONE,
  REPLY_TYPE_BLOCK_STATUS,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_HEADER_SIZE,
  commandName,
  errnoName,
} from './protocol.js';
import { Output } from './output.js';
import {
  blockStatusDescriptors,
  decide,
  structuredError,
  type TransmissionState,
} from './transmission.js';

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

/** Memory of the socket reads that are not read straight into a payload (input.ts). */
const SCRATCH_BYTES = 64 * 1024;
/**
 * Payload buffers kept for the next writes (devices that copy what they get), for a session
 * that was given no pool: a server shares one among its connections.
 */
const RECYCLED_BYTES = 16 * 1024 * 1024;

export class Session implements ParserHandler {
  /** Correlation id: in every log line and observer event about this connection. */
  readonly id: string;
  private readonly logger: NbdLogger;
  private readonly parser: NbdParser;
  private readonly out: Output;
  private readonly negotiation: Negotiation;
  // Bytes received but not parsed yet: while an option is being processed, or while the
  // session is throttled (too much in flight or too many reply bytes queued).
  private held: Buffer | undefined;
  private throttled = false;
  private negotiating = false;

  // Set at GO / EXPORT_NAME; the parser delivers no request before that.
  private device: BlockDevice | undefined;
  private transmission: TransmissionState | undefined;

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
  // Reading into memory of the session's choosing (input.ts): the scratch buffer, and the
  // payload buffers written to devices that copy what they are given.
  private borrowed = false;
  private scratch: Buffer | undefined;
  /** The start of `scratch`, as long as the parser asked for (NbdParser.headerBytes). */
  private headerScratch: Buffer | undefined;
  private recycled: RecycledBuffers | undefined;
  private destroyTimer: NodeJS.Timeout | undefined;

  constructor(
    socket: Socket,
    exports: ExportTable,
    private readonly limits: SessionLimits,
    logger: NbdLogger,
    id: string,
    tls?: SessionTls,
    private readonly observer?: NbdObserver,
    /** Where WRITE payload buffers are recycled (the server's, shared by its connections). */
    recycled?: RecycledBuffers,
  ) {
    this.recycled = recycled;
    this.id = id;
    this.logger = withFields(logger, { conn: id });
    this.socket = socket;
    this.tls = tls;
    this.parser = new NbdParser(this, limits.maxRequest);
    this.out = new Output(socket);
    this.negotiation = new Negotiation({
      exports,
      maxRequest: limits.maxRequest,
      logger: this.logger,
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
    this.logger.debug('nbd connection error', { error: e.message });
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

  /**
   * Begin with the greeting. `accepted` sockets come paused from the server: one for a
   * server without TLS has its handle moved to a socket that reads into the session's memory
   * (input.ts); otherwise, or when that cannot be done, it is read through 'data' events.
   */
  start(): void {
    if (this.tls === undefined) {
      const adopted = adopt(this.socket, this.readTarget);
      if (adopted !== undefined) {
        this.socket = adopted;
        this.out.setSocket(adopted);
        this.borrowed = true;
        this.parser.borrowed = true;
      }
    }
    const s = this.socket;
    if (this.limits.negotiationTimeoutMs > 0) {
      this.negotiationTimer = setTimeout(() => {
        this.logger.warn('nbd negotiation timed out', {});
        this.destroy('negotiation timed out');
      }, this.limits.negotiationTimeoutMs);
      this.negotiationTimer.unref();
    }
    s.setNoDelay(true);
    this.bind(s);
    if (!this.borrowed) s.resume();
    this.out.raw(this.negotiation.greeting());
  }

  private readonly readTarget: ReadTarget = {
    next: () => {
      const direct = this.parser.readTarget();
      if (direct !== undefined) return direct;
      const scratch = (this.scratch ??= Buffer.allocUnsafeSlow(SCRATCH_BYTES));
      const limit = this.parser.headerBytes();
      if (limit === 0) return scratch;
      if (this.headerScratch?.length !== limit) this.headerScratch = scratch.subarray(0, limit);
      return this.headerScratch;
    },
    read: (n, buf) => {
      if (buf === this.scratch || buf === this.headerScratch) this.onData(buf.subarray(0, n));
      else this.parser.filled(n);
    },
  };

  /** Memory for a WRITE payload (borrowed reads): the device's own if it keeps payloads. */
  payloadBuffer(length: number): Buffer {
    const d = this.device;
    if (d?.payloadBuffer !== undefined && d.writeOwned !== undefined)
      return d.payloadBuffer(length);
    this.recycled ??= new RecycledBuffers(RECYCLED_MIN, RECYCLED_BYTES);
    return this.recycled.take(length);
  }

  /** Reads go into memory the session picks (input.ts), not through 'data' events. */
  get readsInPlace(): boolean {
    return this.borrowed;
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
    this.logger.debug('nbd connection dropped', { reason });
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
      if (used < chunk.length && (this.negotiating || this.throttled)) {
        // A borrowed chunk's memory is read into again: keep a copy.
        this.held = this.borrowed ? Buffer.from(chunk.subarray(used)) : chunk.subarray(used);
      }
    } catch (e) {
      this.logger.error('nbd internal error while parsing', { ...describeError(e) });
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
    this.parser.drain();
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
    this.logger.warn('nbd protocol error, closing connection', { error: message });
    this.parser.stop();
    this.out.flush();
    this.socket.end();
    this.destroyAfter(2000);
  }

  /**
   * Destroy the socket if it has not closed `ms` from now (a client that never ends its
   * side). The timer goes with the close: it would otherwise keep the session, and the
   * memory it refers to, alive that long.
   */
  private destroyAfter(ms: number): void {
    clearTimeout(this.destroyTimer);
    this.destroyTimer = setTimeout(() => this.socket.destroy(), ms);
    this.destroyTimer.unref();
  }

  // ---- negotiation ----

  onClientFlags(flags: number): void {
    const refused = this.negotiation.clientFlags(flags);
    if (refused !== undefined) {
      this.onProtocolError(refused);
      return;
    }
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
      this.logger.debug('nbd negotiation ended', { reason: outcome.reason });
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
    this.parser.drain();
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
      this.logger.debug('nbd TLS established', { protocol: secure.getProtocol() });
      this.parser.mode = ParserMode.Options;
      this.negotiating = false;
    });
  }

  private enter(sel: Selected): void {
    clearTimeout(this.negotiationTimer);
    const d = sel.device;
    this.device = d;
    this.exportName = sel.export.name;
    const bs = effectiveBlockSizes(d, this.limits.maxRequest);
    this.transmission = {
      size: d.size,
      transmissionFlags: sel.flags,
      readOnly: d.capabilities.readOnly,
      structuredReplies: sel.structured,
      blockStatus: sel.allocation && d.capabilities.canBlockStatus,
      minimumBlockSize: bs.minimum,
      maximumBlockSize: bs.maximum,
    };
    this.parser.maxPayload = bs.maximum;
    this.parser.mode = ParserMode.Requests;
    if (this.observer?.transmitting)
      this.notify(() => this.observer!.transmitting!(this.id, sel.export.name));
    this.logger.debug('nbd transmission', {
      export: sel.export.name,
      structured: sel.structured,
    });
  }

  // ---- transmission ----

  onRequest(request: NbdRequest): void {
    if (this.closing) return;
    // The parser reuses `request` for the next one: completions capture plain numbers.
    const { type, flags, handleHigh, handleLow, offset, length } = request;
    const decision = decide(this.transmission!, request);
    if (decision.action === 'refuse') {
      const errno = decision.errno;
      this.logger.debug('nbd request refused', {
        command: commandName(type),
        offset,
        length,
        errno: errnoName(errno),
        reason: decision.reason,
      });
      if (this.observer?.request) this.observed(type, length, -1, errnoName(errno));
      this.replyError(
        type,
        handleHigh,
        handleLow,
        errno,
        `${commandName(type)} refused: ${errnoName(errno)}`,
      );
      return;
    }
    if (decision.action === 'disconnect') {
      this.finish('client sent DISC');
      return;
    }
    const d = this.device!;
    // Counted before the device is called, so that every path below (including a device
    // that throws synchronously) gives back exactly what it took.
    const bytes = type === CMD_WRITE || type === CMD_READ ? length : 0;
    // Start time for the observer (-1: nobody observes, nothing is measured).
    const t0 = this.observer?.request ? performance.now() : -1;
    this.inflight++;
    this.inflightBytes += bytes;
    let p: Promise<unknown>;
    try {
      switch (decision.command) {
        case CMD_READ:
          (d.readv ? d.readv(offset, length) : d.read(offset, length)).then(
            (buf) => this.readDone(handleHigh, handleLow, offset, length, buf, t0),
            (e: unknown) => this.failed(type, handleHigh, handleLow, length, e, t0, length),
          );
          if (this.overLimits()) this.throttle();
          return;
        case CMD_WRITE: {
          const payload = request.payload!;
          const fua = (flags & CMD_FLAG_FUA) !== 0;
          if (this.borrowed) p = this.writeBorrowed(d, offset, payload as Buffer, fua);
          else if (!Array.isArray(payload)) p = d.write(offset, payload, { fua });
          else if (d.writev !== undefined) p = d.writev(offset, payload, { fua });
          else p = d.write(offset, Buffer.concat(payload, length), { fua });
          break;
        }
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
          // Advertised only when the device has cache() (see transmissionFlags).
          p = d.cache!(offset, length);
          break;
        case CMD_BLOCK_STATUS:
          d.extents(offset, length).then(
            (ext) =>
              this.extentsDone(
                handleHigh,
                handleLow,
                offset,
                length,
                (flags & CMD_FLAG_REQ_ONE) !== 0,
                ext,
                t0,
              ),
            (e: unknown) => this.failed(type, handleHigh, handleLow, 0, e, t0, length),
          );
          if (this.overLimits()) this.throttle();
          return;
      }
    } catch (e) {
      // A device that throws synchronously instead of rejecting.
      this.failed(type, handleHigh, handleLow, bytes, e, t0, length);
      return;
    }
    p.then(
      () => {
        if (t0 >= 0) this.observed(type, length, t0, undefined);
        this.done(handleHigh, handleLow, bytes);
      },
      (e: unknown) => this.failed(type, handleHigh, handleLow, bytes, e, t0, length),
    );
    if (this.overLimits()) this.throttle();
  }

  /**
   * A WRITE whose payload the session read into memory of its choosing: handed over to a
   * device that keeps payloads, otherwise recycled once the device's write has settled.
   */
  private writeBorrowed(d: BlockDevice, offset: number, data: Buffer, fua: boolean): Promise<void> {
    if (d.payloadBuffer !== undefined && d.writeOwned !== undefined)
      return d.writeOwned(offset, data, { fua });
    const recycled = this.recycled;
    const p = d.write(offset, data, { fua });
    if (recycled === undefined || data.length < recycled.min) return p;
    return p.finally(() => recycled.give(data));
  }

  /** Give a sent read buffer back to the device (see BlockDevice.release). */
  private readonly releaseRead = (b: Buffer): void => this.device?.release?.(b);

  private readDone(
    handleHigh: number,
    handleLow: number,
    offset: number,
    length: number,
    buf: Buffer | Buffer[],
    t0: number,
  ): void {
    this.inflight--;
    this.inflightBytes -= length;
    let got = 0;
    if (Array.isArray(buf)) for (const b of buf) got += b.length;
    else got = buf.length;
    if (t0 >= 0) this.observed(CMD_READ, length, t0, got === length ? undefined : errnoName(EIO));
    if (this.closed) return;
    if (got !== length) {
      this.failedReply(
        CMD_READ,
        handleHigh,
        handleLow,
        new Error(`device returned ${got} bytes for a ${length}-byte read`),
      );
    } else {
      const out = this.out;
      if (this.transmission!.structuredReplies) {
        const b = out.reserve(OFFSET_DATA_HEADER_SIZE);
        writeOffsetDataHeader(b, out.offset, handleHigh, handleLow, offset, length);
        out.commit(OFFSET_DATA_HEADER_SIZE);
      } else {
        const b = out.reserve(SIMPLE_REPLY_SIZE);
        writeSimpleReply(b, out.offset, 0, handleHigh, handleLow);
        out.commit(SIMPLE_REPLY_SIZE);
      }
      const sent = this.device?.release ? this.releaseRead : undefined;
      if (Array.isArray(buf)) for (const b of buf) out.data(b, sent);
      else out.data(buf, sent);
      if (length >= URGENT_BYTES) out.soon();
    }
    this.afterReply();
  }

  private done(handleHigh: number, handleLow: number, bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    if (this.closed) return;
    const out = this.out;
    const b = out.reserve(SIMPLE_REPLY_SIZE);
    writeSimpleReply(b, out.offset, 0, handleHigh, handleLow);
    out.commit(SIMPLE_REPLY_SIZE);
    if (bytes >= URGENT_BYTES) out.soon();
    this.afterReply();
  }

  private extentsDone(
    handleHigh: number,
    handleLow: number,
    offset: number,
    length: number,
    reqOne: boolean,
    ext: DeviceExtent[],
    t0: number,
  ): void {
    this.inflight--;
    if (t0 >= 0) this.observed(CMD_BLOCK_STATUS, length, t0, undefined);
    if (this.closed) return;
    const minimum = this.transmission!.minimumBlockSize;
    const descriptors = blockStatusDescriptors(ext, offset, length, minimum, reqOne);
    if (descriptors === undefined) {
      this.failedReply(
        CMD_BLOCK_STATUS,
        handleHigh,
        handleLow,
        new Error('device returned no extent for the requested offset'),
      );
      this.afterReply();
      return;
    }
    const body = encodeBlockStatusBody(BASE_ALLOCATION_ID, descriptors.lengths, descriptors.states);
    const out = this.out;
    const b = out.reserve(STRUCTURED_HEADER_SIZE);
    writeStructuredHeader(
      b,
      out.offset,
      REPLY_FLAG_DONE,
      REPLY_TYPE_BLOCK_STATUS,
      handleHigh,
      handleLow,
      body.length,
    );
    out.commit(STRUCTURED_HEADER_SIZE);
    out.data(body);
    this.afterReply();
  }

  private failed(
    type: number,
    handleHigh: number,
    handleLow: number,
    bytes: number,
    e: unknown,
    t0 = -1,
    length = 0,
  ): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    if (t0 >= 0) {
      const errno = toErrno(e, type === CMD_WRITE || type === CMD_WRITE_ZEROES);
      this.observed(type, length, t0, errnoName(errno));
    }
    if (this.closed) return;
    this.failedReply(type, handleHigh, handleLow, e);
    this.afterReply();
  }

  private failedReply(type: number, handleHigh: number, handleLow: number, e: unknown): void {
    const errno = toErrno(e, type === CMD_WRITE || type === CMD_WRITE_ZEROES);
    const fields = describeError(e);
    this.logger.warn('nbd request failed', {
      command: commandName(type),
      errno: errnoName(errno),
      ...fields,
    });
    this.replyError(type, handleHigh, handleLow, errno, String(fields.error));
  }

  private replyError(
    type: number,
    handleHigh: number,
    handleLow: number,
    errno: number,
    message: string,
  ): void {
    const out = this.out;
    if (structuredError(this.transmission!, type)) {
      const msg = Buffer.from(message.slice(0, 1024), 'utf8');
      const size = errorChunkSize(msg.length);
      const b = out.reserve(size);
      writeErrorChunk(b, out.offset, handleHigh, handleLow, errno, msg);
      out.commit(size);
    } else {
      const b = out.reserve(SIMPLE_REPLY_SIZE);
      writeSimpleReply(b, out.offset, errno, handleHigh, handleLow);
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

  // ---- observing ----

  /** Report one answered request; `t0` < 0: refused before dispatch (no duration). */
  private observed(type: number, length: number, t0: number, errno: string | undefined): void {
    const request = this.observer?.request;
    if (request === undefined) return;
    const seconds = t0 < 0 ? undefined : (performance.now() - t0) / 1000;
    const exportName = this.exportName ?? '';
    this.notify(() =>
      request.call(this.observer, {
        conn: this.id,
        export: exportName,
        command: commandName(type),
        bytes: type === CMD_FLUSH ? 0 : length,
        seconds,
        errno,
      }),
    );
  }

  /** Run an observer callback; what it throws is logged, never let through. */
  private notify(f: () => void): void {
    try {
      f();
    } catch (e) {
      this.logger.debug('nbd observer failed', describeError(e));
    }
  }

  // ---- closing ----

  /** Stop reading; close once every request in flight has been answered. */
  private finish(reason: string): void {
    if (this.closing || this.closed) return;
    this.closing = true;
    this.logger.debug('nbd connection finishing', {
      reason,
      inflight: this.inflight,
    });
    this.parser.stop();
    if (this.inflight === 0) this.endNow();
  }

  private endNow(): void {
    this.out.flush();
    this.socket.end();
    this.destroyAfter(5000);
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.negotiationTimer);
    clearTimeout(this.destroyTimer);
    this.logger.debug(
      'nbd connection closed',
      this.exportName === undefined ? {} : { export: this.exportName },
    );
    if (this.observer?.closed) this.notify(() => this.observer!.closed!(this.id, this.exportName));
    this.parser.stop();
    this.out.close();
    for (const w of this.closeWaiters.splice(0)) w();
  }
}
