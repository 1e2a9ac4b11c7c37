/**
 * The NBD server: accepts connections on TCP or a unix socket and runs one Session per
 * connection over a table of named exports.
 */
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { unlink } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import { quietLogger, type NbdLogger } from './device.js';
import { describeError } from './errno.js';
import { ExportTable, type NbdExport } from './exports.js';
import { RECYCLED_MIN, RecycledBuffers } from './input.js';
import type { NbdObserver } from './observer.js';
import { DEFAULT_MAX_REQUEST } from './protocol.js';
import { Session, type SessionLimits, type SessionTls } from './session.js';
import {
  claimSocketPath,
  socketAt,
  socketPathTooLong,
  type SocketPathClaim,
} from './socket-path.js';

export { ExportTable, type NbdExport } from './exports.js';
export type { NbdObserver, NbdRequestEvent } from './observer.js';

export interface NbdServerOptions {
  /** A fixed list, or a table the owner may change while the server runs. */
  exports: Iterable<NbdExport> | ExportTable;
  logger?: NbdLogger;
  /** Largest READ/WRITE payload (default 32 MiB). */
  maxRequest?: number;
  /** Per-connection requests in flight before reading pauses (default 256). */
  maxInflight?: number;
  /** Per-connection payload bytes in flight before reading pauses (default 128 MiB). */
  maxInflightBytes?: number;
  /** Per-connection reply bytes buffered before reading pauses (default 32 MiB). */
  maxOutputBytes?: number;
  /** Time a client has to finish negotiation before it is dropped (default 30 s; 0: none). */
  negotiationTimeoutMs?: number;
  /**
   * Offer STARTTLS with this certificate and key (PEM); with `require`, clients must use it
   * before anything else.
   */
  tls?: { cert: string | Buffer; key: string | Buffer; require?: boolean };
  /** Told about connections and every answered request (for metrics). */
  observer?: NbdObserver;
}

/**
 * A TCP host and port, a unix socket path, or an already listening socket handed over by a
 * service manager (socket activation: `fd` is the inherited file descriptor).
 */
export type ListenTarget = { port?: number; host?: string } | { path: string } | { fd: number };

export class NbdServer {
  private readonly table: ExportTable;
  private readonly logger: NbdLogger;
  private readonly limits: SessionLimits;
  private readonly sessions = new Set<Session>();
  /**
   * WRITE payload buffers kept for reuse, shared by every connection: one bound for the
   * server whatever the number of connections (nbdcopy opens four), and nothing left with
   * connections that closed.
   */
  private readonly recycled = new RecycledBuffers(RECYCLED_MIN, 32 * 1024 * 1024);
  private server: Server | undefined;
  private nextId = 1;
  /**
   * Connection ids are `<prefix>-<n>`: the random prefix tells apart the connections of two
   * servers (or of one server before and after a restart) in the same logs.
   */
  private readonly idPrefix = randomBytes(3).toString('hex');
  private readonly observer: NbdObserver | undefined;
  private socketPath: string | undefined;
  /** The claim on `socketPath` (socket-path.ts), held until its file is removed on close. */
  private claim: SocketPathClaim | undefined;
  private readonly tls: SessionTls | undefined;

  constructor(options: NbdServerOptions) {
    this.table =
      options.exports instanceof ExportTable ? options.exports : new ExportTable(options.exports);
    this.logger = options.logger ?? quietLogger;
    this.observer = options.observer;
    this.tls =
      options.tls === undefined
        ? undefined
        : {
            context: createSecureContext({ cert: options.tls.cert, key: options.tls.key }),
            require: options.tls.require === true,
          };
    const maxRequest = options.maxRequest ?? DEFAULT_MAX_REQUEST;
    this.limits = {
      maxRequest,
      maxInflight: options.maxInflight ?? 256,
      maxInflightBytes: Math.max(options.maxInflightBytes ?? 128 * 1024 * 1024, maxRequest),
      maxOutputBytes: Math.max(options.maxOutputBytes ?? 32 * 1024 * 1024, maxRequest),
      negotiationTimeoutMs: options.negotiationTimeoutMs ?? 30_000,
    };
  }

  /** Bytes of WRITE payload buffers the server keeps for reuse (bounded, whatever the connections). */
  get recycledBytes(): number {
    return this.recycled.held;
  }

  get connections(): number {
    return this.sessions.size;
  }

  /** Start listening; resolves with the bound address (port or path). */
  async listen(
    target: ListenTarget = {},
  ): Promise<{ port?: number; host?: string; path?: string }> {
    if (this.server !== undefined) throw new Error('server already listening');
    let claim: SocketPathClaim | undefined;
    if ('path' in target) {
      const tooLong = socketPathTooLong(target.path);
      if (tooLong) throw tooLong;
      // Another server binding or serving this path: in use, whatever the file looks like now.
      claim = await claimSocketPath(target.path);
      if (claim === undefined)
        throw Object.assign(new Error(`listen EADDRINUSE: address already in use ${target.path}`), {
          code: 'EADDRINUSE',
          path: target.path,
        });
    }
    // Accepted paused: a session moves the socket's handle before anything is read (input.ts).
    const server = createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, (s) =>
      this.accept(s),
    );
    this.server = server;
    const listenOnce = (): Promise<void> =>
      new Promise<void>((resolve, reject) => {
        const onError = (e: Error): void => reject(e);
        server.once('error', onError);
        const done = (): void => {
          server.off('error', onError);
          resolve();
        };
        if ('path' in target) server.listen(target.path, done);
        else if ('fd' in target) server.listen({ fd: target.fd }, done);
        else server.listen(target.port ?? 10809, target.host ?? '127.0.0.1', done);
      });
    try {
      await listenOnce();
    } catch (e) {
      try {
        // A socket file left by a server that was killed (nothing accepts on it) is replaced,
        // as a restart after kill -9 expects; a live server's socket, or any other file, is not.
        if (
          !('path' in target) ||
          (e as NodeJS.ErrnoException).code !== 'EADDRINUSE' ||
          (await socketAt(target.path)) !== 'stale'
        )
          throw e;
        this.logger.info('replacing a stale socket', { path: target.path });
        await unlink(target.path).catch(() => undefined);
        await listenOnce();
      } catch (err) {
        this.server = undefined;
        claim?.release();
        throw err;
      }
    }
    this.claim = claim;
    server.on('error', (e) => this.logger.error('nbd server error', describeError(e)));
    if ('path' in target) {
      this.socketPath = target.path;
      return { path: target.path };
    }
    // An inherited socket is a unix socket (address: its path) or a TCP one; its file is
    // the service manager's, so it is not removed on close.
    const a = server.address() as AddressInfo | string | null;
    if (typeof a === 'string') return { path: a };
    return { port: a?.port ?? 0, host: a?.address ?? '' };
  }

  private accept(socket: Socket): void {
    const id = `${this.idPrefix}-${this.nextId++}`;
    const remote = socket.remoteAddress ?? 'unix';
    try {
      const session = new Session(
        socket,
        this.table,
        this.limits,
        this.logger,
        id,
        this.tls,
        this.observer,
        this.recycled,
      );
      this.sessions.add(session);
      void session.whenClosed().then(() => this.sessions.delete(session));
      try {
        this.observer?.accepted?.(id, remote);
      } catch {
        // An observer never breaks a connection.
      }
      session.start();
      this.logger.debug('nbd connection', {
        conn: id,
        remote,
        reads: session.readsInPlace ? 'in place' : 'data events',
      });
    } catch (e) {
      this.logger.error('nbd could not start a connection', { conn: id, ...describeError(e) });
      socket.destroy();
    }
  }

  /** Open connections that selected the export `name` (those still negotiating excluded). */
  connectionsTo(name: string): number {
    let n = 0;
    for (const s of this.sessions) if (s.exportName === name) n++;
    return n;
  }

  /**
   * Gracefully end the connections using the export `name` (remove it from the table first,
   * so that no new one selects it): each reads nothing more, answers the requests it has in
   * flight, then closes. Connections still open after `graceMs` are dropped. Resolves with
   * the number of connections ended.
   */
  async closeExportConnections(name: string, graceMs = 10_000): Promise<number> {
    const sessions = [...this.sessions].filter((s) => s.exportName === name);
    await this.endSessions(sessions, graceMs, 'export removed');
    return sessions.length;
  }

  private async endSessions(sessions: Session[], graceMs: number, reason: string): Promise<void> {
    for (const s of sessions) s.shutdown(reason);
    const all = Promise.all(sessions.map((s) => s.whenClosed()));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      all,
      new Promise<void>((resolve) => {
        timer = setTimeout(() => {
          for (const s of sessions) s.destroy(`${reason}: grace period over`);
          resolve();
        }, graceMs);
      }),
    ]);
    clearTimeout(timer);
    await all;
  }

  /**
   * Stop accepting, let every connection answer what it has in flight, and close them.
   * Connections still open after `graceMs` are dropped.
   */
  async close(graceMs = 10_000): Promise<void> {
    const server = this.server;
    if (server === undefined) return;
    this.server = undefined;
    const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
    await this.endSessions([...this.sessions], graceMs, 'server shutting down');
    await stopped;
    if (this.socketPath !== undefined) await unlink(this.socketPath).catch(() => undefined);
    this.claim?.release();
    this.claim = undefined;
  }
}
