/**
 * GETs over plain HTTP/1.1 that read the body straight into its destination: the hot path
 * of every read that misses the caches on an `http://` endpoint (RGW, MinIO and other stores
 * on a private network). TLS endpoints keep node:https (s3-get.ts).
 *
 * Why not node:http: its client hands each socket read to the HTTP parser, which copies the
 * body bytes into a new buffer per chunk; the caller then copies them again into one body.
 * Two allocations and two copies per 64 KiB, and the garbage they leave, cost more CPU than
 * the data work of a read (measured against RGW on loopback, 2 MiB ranged GETs at
 * concurrency 16: 1.0 s of CPU per 512 MiB through node:http, 0.4 s here). Here the socket
 * reads with `onread` into a buffer this module chooses for each read: the connection's
 * scratch buffer while the response head arrives, then the body itself, so the kernel copies
 * the body once, into place, and nothing else does.
 *
 * What it speaks: one request at a time per connection (no pipelining), keep-alive
 * connections pooled per endpoint (at most `maxSockets`, then requests wait their turn),
 * bodies framed by Content-Length or chunked, or running to the end of the connection.
 * A reused connection that the server closed before answering is replaced once, as a GET
 * is safe to send again. Failures carry the codes node:net and node:http use (ECONNRESET,
 * ETIMEDOUT, …) or an AbortError, so the store translates them in its one place.
 */
import net from 'node:net';

/** Response heads larger than this are refused (S3 heads are well under 2 KiB). */
const HEAD_MAX = 16 * 1024;

export interface WireResponse {
  status: number;
  /** Header names in lower case. */
  headers: Record<string, string>;
  body: Buffer;
}

export interface WirePoolOptions {
  host: string;
  port: number;
  maxSockets: number;
  connectionTimeoutMs: number;
  /** Fail a request when its connection is silent this long. */
  requestTimeoutMs: number;
}

export interface WireRequest {
  /** The request line's path and query, already encoded. */
  path: string;
  headers: Record<string, string>;
  /**
   * Memory for a successful body of exactly this length (a ranged GET's destination);
   * another length gets a buffer of its own.
   */
  into?: Buffer | undefined;
  signal?: AbortSignal | undefined;
}

function coded(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

function abortError(): Error {
  return Object.assign(new Error('The operation was aborted'), {
    name: 'AbortError',
    code: 'ABORT_ERR',
  });
}

/** A connection's part of one exchange. */
interface Exchange {
  request: WireRequest;
  resolve: (r: WireResponse) => void;
  reject: (e: Error) => void;
  /** Bytes of the response received so far (0: the server has not answered). */
  received: number;
  /** The connection carrying it. */
  conn: Conn | undefined;
}

type Phase = 'idle' | 'head' | 'length' | 'chunked' | 'close';

/** One keep-alive connection and the state of the response it is reading. */
class Conn {
  readonly socket: net.Socket;
  /** Receives the response head, chunked bodies and anything sent while idle. */
  private readonly scratch = Buffer.allocUnsafe(HEAD_MAX);
  private phase: Phase = 'idle';
  private hlen = 0;
  private status = 0;
  private headers: Record<string, string> = {};
  private body: Buffer = Buffer.alloc(0);
  private got = 0;
  /** Chunked and read-to-close bodies: pieces received, and the chunk framing state. */
  private pieces: Buffer[] = [];
  private chunk = { left: -1, line: '', trailer: false, crlf: 0 };
  private keepAlive = true;
  ex: Exchange | undefined;
  reused = false;
  dead = false;

  constructor(
    private readonly pool: WirePool,
    o: WirePoolOptions,
  ) {
    this.socket = net.connect({
      host: o.host,
      port: o.port,
      noDelay: true,
      onread: {
        buffer: () => this.nextBuffer(),
        callback: (n: number, buf: Uint8Array) => {
          this.onData(n, buf);
          return true;
        },
      },
    });
    const connectTimer = setTimeout(
      () => this.fail(coded('ETIMEDOUT', 'connection timed out')),
      o.connectionTimeoutMs,
    );
    this.socket.once('connect', () => clearTimeout(connectTimer));
    this.socket.on('timeout', () => this.fail(coded('ETIMEDOUT', 'request timed out')));
    this.socket.on('error', (e) => {
      clearTimeout(connectTimer);
      this.fail(e);
    });
    this.socket.on('end', () => this.onEnd());
    this.socket.on('close', () => {
      clearTimeout(connectTimer);
      this.onEnd();
    });
  }

  /** Where the next socket read goes. */
  private nextBuffer(): Uint8Array {
    if (this.phase === 'head') return this.scratch.subarray(this.hlen);
    if (this.phase === 'length') return this.body.subarray(this.got);
    return this.scratch;
  }

  start(ex: Exchange, requestTimeoutMs: number): void {
    this.ex = ex;
    ex.conn = this;
    this.phase = 'head';
    this.hlen = 0;
    this.socket.ref();
    this.socket.setTimeout(requestTimeoutMs);
    let text = `GET ${ex.request.path} HTTP/1.1\r\n`;
    for (const [k, v] of Object.entries(ex.request.headers)) text += `${k}: ${v}\r\n`;
    this.socket.write(`${text}\r\n`, 'latin1');
  }

  private onData(n: number, buf: Uint8Array): void {
    const ex = this.ex;
    if (!ex) {
      // Nothing was asked: a server talking out of turn cannot be trusted with the next one.
      this.fail(coded('ECONNRESET', 'the server sent data without a request'));
      return;
    }
    ex.received += n;
    switch (this.phase) {
      case 'head': {
        const at = this.hlen;
        if (buf.buffer !== this.scratch.buffer || buf.byteOffset !== this.scratch.byteOffset + at)
          this.scratch.set(buf.subarray(0, n), at);
        this.hlen += n;
        this.onHead(Math.max(0, at - 3));
        return;
      }
      case 'length': {
        if (buf.buffer !== this.body.buffer || buf.byteOffset !== this.body.byteOffset + this.got)
          this.body.set(buf.subarray(0, n), this.got);
        this.got += n;
        if (this.got === this.body.length) this.finish();
        return;
      }
      case 'chunked':
        this.onChunked(Buffer.from(buf.buffer, buf.byteOffset, n));
        return;
      case 'close':
        this.pieces.push(Buffer.from(Buffer.from(buf.buffer, buf.byteOffset, n)));
        return;
      default:
        return;
    }
  }

  /** The head so far is in scratch[0, hlen): parse it once its blank line is in. */
  private onHead(searchFrom: number): void {
    const end = this.scratch.indexOf('\r\n\r\n', searchFrom, 'latin1');
    if (end < 0 || end + 4 > this.hlen) {
      if (this.hlen >= HEAD_MAX) this.fail(coded('EPROTO', 'response head too large'));
      return;
    }
    const lines = this.scratch.toString('latin1', 0, end).split('\r\n');
    const m = /^HTTP\/1\.([01]) (\d{3})/.exec(lines[0] ?? '');
    if (!m) {
      this.fail(coded('EPROTO', `not an HTTP/1.x response: ${JSON.stringify(lines[0])}`));
      return;
    }
    const headers: Record<string, string> = {};
    for (let i = 1; i < lines.length; i++) {
      const line = lines[i] as string;
      const c = line.indexOf(':');
      if (c <= 0) continue;
      const name = line.slice(0, c).trim().toLowerCase();
      const value = line.slice(c + 1).trim();
      headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
    }
    const status = Number(m[2]);
    const rest = this.scratch.subarray(end + 4, this.hlen);
    if (status >= 100 && status < 200) {
      // An interim answer (100 Continue): the real head follows.
      rest.copy(this.scratch, 0);
      this.hlen = rest.length;
      this.onHead(0);
      return;
    }
    this.status = status;
    this.headers = headers;
    const conn = (headers.connection ?? '').toLowerCase();
    this.keepAlive = m[1] === '1' ? !conn.includes('close') : conn.includes('keep-alive');
    const te = (headers['transfer-encoding'] ?? '').toLowerCase();
    const cl = headers['content-length'];
    if (status === 204 || status === 304) {
      this.body = Buffer.alloc(0);
      this.finish();
    } else if (te.includes('chunked')) {
      this.phase = 'chunked';
      this.pieces = [];
      this.chunk = { left: -1, line: '', trailer: false, crlf: 0 };
      if (rest.length > 0) this.onChunked(Buffer.from(rest));
    } else if (cl !== undefined && /^\d+$/.test(cl)) {
      const len = Number(cl);
      const into = this.ex?.request.into;
      this.body =
        status < 300 && into !== undefined && into.length === len ? into : Buffer.allocUnsafe(len);
      this.phase = 'length';
      const take = Math.min(rest.length, len);
      rest.copy(this.body, 0, 0, take);
      this.got = take;
      // Bytes past the body, with no request pipelined: the connection is not reusable.
      if (rest.length > len) this.keepAlive = false;
      if (this.got === len) this.finish();
    } else {
      this.phase = 'close';
      this.keepAlive = false;
      this.pieces = rest.length > 0 ? [Buffer.from(rest)] : [];
    }
  }

  /** Chunked framing: `size[;ext]\r\n data \r\n … 0\r\n trailers \r\n`. */
  private onChunked(data: Buffer): void {
    const c = this.chunk;
    let i = 0;
    while (i < data.length) {
      if (c.crlf > 0) {
        // The CRLF after a chunk's data.
        const skip = Math.min(c.crlf, data.length - i);
        c.crlf -= skip;
        i += skip;
        continue;
      }
      if (c.left > 0) {
        const take = Math.min(c.left, data.length - i);
        this.pieces.push(Buffer.from(data.subarray(i, i + take)));
        c.left -= take;
        i += take;
        if (c.left === 0) {
          c.left = -1;
          c.crlf = 2;
        }
        continue;
      }
      const nl = data.indexOf(10, i);
      if (nl < 0) {
        c.line += data.toString('latin1', i);
        if (c.line.length > 4096) this.fail(coded('EPROTO', 'chunk header too long'));
        return;
      }
      const line = (c.line + data.toString('latin1', i, nl)).replace(/\r$/, '');
      c.line = '';
      i = nl + 1;
      if (c.trailer) {
        if (line === '') {
          this.body = Buffer.concat(this.pieces);
          this.pieces = [];
          if (i < data.length) this.keepAlive = false;
          this.finish();
          return;
        }
        continue;
      }
      const size = Number.parseInt(line.split(';')[0] ?? '', 16);
      if (!Number.isSafeInteger(size) || size < 0) {
        this.fail(coded('EPROTO', `bad chunk size ${JSON.stringify(line)}`));
        return;
      }
      if (size === 0) c.trailer = true;
      else c.left = size;
    }
  }

  /** The response is complete: answer, and keep the connection if it can serve another. */
  private finish(): void {
    const ex = this.ex;
    if (!ex) return;
    this.ex = undefined;
    this.phase = 'idle';
    const r: WireResponse = { status: this.status, headers: this.headers, body: this.body };
    this.body = Buffer.alloc(0);
    this.socket.setTimeout(0);
    this.socket.unref();
    ex.resolve(r);
    if (this.keepAlive && !this.dead) this.pool.release(this);
    else this.fail(undefined);
  }

  /** The server ended the connection. */
  private onEnd(): void {
    if (this.phase === 'close' && this.ex) {
      this.body = Buffer.concat(this.pieces);
      this.pieces = [];
      this.keepAlive = false;
      this.finish();
      return;
    }
    const got = this.phase === 'length' ? ` (${this.got} of ${this.body.length} body bytes)` : '';
    this.fail(coded('ECONNRESET', `the server closed the connection${got}`));
  }

  /** Close this connection; an exchange still open fails with `e`. */
  fail(e: Error | undefined): void {
    const ex = this.ex;
    this.ex = undefined;
    if (!this.dead) {
      this.dead = true;
      this.phase = 'idle';
      this.socket.destroy();
      this.pool.gone(this);
    }
    if (ex) this.pool.failed(ex, e ?? coded('ECONNRESET', 'connection closed'), this.reused);
  }
}

/** Keep-alive connections to one endpoint. */
export class WirePool {
  private readonly idle: Conn[] = [];
  private open = 0;
  private readonly waiting: Exchange[] = [];
  private closed = false;

  constructor(private readonly o: WirePoolOptions) {}

  get(request: WireRequest): Promise<WireResponse> {
    return new Promise<WireResponse>((resolve, reject) => {
      const signal = request.signal;
      if (signal?.aborted) {
        reject(abortError());
        return;
      }
      const ex: Exchange = { request, resolve, reject, received: 0, conn: undefined };
      if (signal) {
        const onAbort = (): void => {
          const i = this.waiting.indexOf(ex);
          if (i >= 0) {
            this.waiting.splice(i, 1);
            ex.reject(abortError());
          } else if (ex.conn?.ex === ex) ex.conn.fail(abortError());
        };
        signal.addEventListener('abort', onAbort, { once: true });
        const done = (): void => signal.removeEventListener('abort', onAbort);
        ex.resolve = (r) => {
          done();
          resolve(r);
        };
        ex.reject = (e) => {
          done();
          reject(e);
        };
      }
      this.dispatch(ex);
    });
  }

  private dispatch(ex: Exchange, fresh = false): void {
    if (this.closed) {
      ex.reject(coded('ECONNRESET', 'the store was closed'));
      return;
    }
    let conn: Conn | undefined;
    if (!fresh) {
      while ((conn = this.idle.pop()) && conn.dead);
    }
    if (!conn) {
      if (this.open >= this.o.maxSockets) {
        this.waiting.push(ex);
        return;
      }
      this.open++;
      conn = new Conn(this, this.o);
    } else conn.reused = true;
    conn.start(ex, this.o.requestTimeoutMs);
  }

  /** A connection is free again. */
  release(conn: Conn): void {
    const next = this.waiting.shift();
    if (next) {
      conn.reused = true;
      conn.start(next, this.o.requestTimeoutMs);
      return;
    }
    if (this.closed) conn.fail(undefined);
    else this.idle.push(conn);
  }

  /** A connection closed: its place may go to a waiting request. */
  gone(conn: Conn): void {
    this.open--;
    const i = this.idle.indexOf(conn);
    if (i >= 0) this.idle.splice(i, 1);
    const next = this.waiting.shift();
    if (next) this.dispatch(next);
  }

  /**
   * An exchange failed. A kept connection the server had closed before answering is
   * replaced once (the GET is sent again on a new connection); anything else is the
   * caller's error.
   */
  failed(ex: Exchange, e: Error, reused: boolean): void {
    const code = (e as { code?: string }).code;
    if (
      reused &&
      ex.received === 0 &&
      (code === 'ECONNRESET' || code === 'EPIPE') &&
      !ex.request.signal?.aborted &&
      !this.closed
    ) {
      this.dispatch(ex, true);
      return;
    }
    ex.reject(e);
  }

  /** Close every connection; requests still waiting fail. */
  close(): void {
    this.closed = true;
    for (const c of this.idle.splice(0)) c.fail(undefined);
    for (const ex of this.waiting.splice(0)) ex.reject(coded('ECONNRESET', 'the store was closed'));
  }
}
