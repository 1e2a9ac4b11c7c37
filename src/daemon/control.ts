/**
 * The daemon's control API: HTTP/1.1 with JSON bodies over a unix socket (never TCP). Who
 * may use it is decided by the socket file's mode and group (0600 by default: the daemon's
 * user only). Routes:
 *
 *   GET    /v1/daemon               the daemon: pid, version, listen address, counts
 *   GET    /v1/exports              { exports: [ExportStatus…] }
 *   GET    /v1/exports/NAME         one ExportStatus
 *   POST   /v1/exports              map: { url, name?, readOnly?, at?, walUrl?, walAck?,
 *                                   endpoint?, region?, force?, wait? } → 201 ExportStatus
 *   DELETE /v1/exports/NAME[?force=true]   unmap → UnmapResult
 *   POST   /v1/exports/NAME/compact  compact its volume now, online: { keepLast?,
 *                                   keepWithinMs?, minLive?, graceMs?, dryRun?,
 *                                   volumeUuid? } → CompactResult (when the run has ended)
 *   POST   /v1/exports/NAME/flush    commit what it acknowledged: { volumeUuid? } →
 *                                   { checkpoint, time }
 *   POST   /v1/exports/NAME/resize   grow its volume: { size, volumeUuid? } →
 *                                   { previousSize, size, checkpoint, time }
 *   POST   /v1/reload               re-read the config file (as SIGHUP)
 *
 * NAME is URI-encoded. A failure is `{ "error": { kind, code, message, suggestion? } }` with
 * an HTTP status from its kind (400 invalid, 404 not found, 409 conflict, 503 unavailable,
 * 500 otherwise). Bodies over 64 KiB are refused with 413 before they are read whole.
 */
import { chmod, chown, unlink } from 'node:fs/promises';
import {
  createServer,
  request,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { dirname } from 'node:path';
import { HyperError, toHyperError, type ErrorCode, type ErrorKind } from '../errors.js';
import { silentLogger } from '../format/volume/types.js';
import type { ServeLogger } from '../serve/logger.js';
import { makeDirs } from '../make-dirs.js';
import {
  claimSocketPath,
  socketAt,
  socketPathTooLong,
  type SocketPathClaim,
} from '../nbd/socket-path.js';

/** Largest request body the daemon reads. */
export const MAX_CONTROL_BODY = 64 * 1024;

/**
 * What maintenance from outside needs of a server that holds volumes (the daemon, and
 * `hyper serve --control-socket`): its exports, and a compaction, a flush or a grow of one of
 * them (maintenanceRoutes).
 */
export interface MaintenanceHandler {
  /** Every export, each with at least `name` (GET /v1/exports). */
  list(): unknown[];
  compact(name: string, request: unknown, signal?: AbortSignal): Promise<unknown>;
  flush(name: string, request: unknown): Promise<unknown>;
  resize(name: string, request: unknown): Promise<unknown>;
}

/** What the control server calls; the daemon implements it. */
export interface ControlHandler extends MaintenanceHandler {
  info(): unknown;
  map(request: unknown, signal?: AbortSignal): Promise<unknown>;
  unmap(name: string, options: { force?: boolean }): Promise<unknown>;
  reload(): Promise<unknown>;
}

const STATUS: Record<ErrorKind, number> = {
  invalid: 400,
  'not-found': 404,
  conflict: 409,
  unavailable: 503,
  data: 500,
  internal: 500,
};

/**
 * Routes of another control API served the same way (the replicator's): the answer to a
 * request, or undefined when no route matches.
 */
export type ControlRoutes = (
  method: string,
  url: URL,
  body: () => Promise<unknown>,
  signal: AbortSignal,
) => Promise<{ status: number; body: unknown } | undefined>;

export class ControlServer {
  private readonly server: Server;
  private readonly logger: ServeLogger;
  private path: string | undefined;
  /** This process's claim on `path` (socket-path.ts), held while it listens there. */
  private claim: SocketPathClaim | undefined;
  private readonly what: string;

  constructor(
    private readonly handler: ControlHandler | ControlRoutes,
    options: { logger?: ServeLogger; what?: string } = {},
  ) {
    this.logger = options.logger ?? silentLogger;
    this.what = options.what ?? 'hyper daemon';
    this.server = createServer({ requestTimeout: 0 }, (req, res) => void this.handle(req, res));
  }

  /**
   * Listen on `path` (its directory is created, mode 0700 when new), or adopt the inherited
   * socket `fd`. A path where a daemon answers is refused (DAEMON_RUNNING); a stale socket
   * file with no listener is replaced.
   */
  async listen(o: { path: string; fd?: number; mode?: number; gid?: number }): Promise<void> {
    if (o.fd !== undefined) {
      await this.bind({ fd: o.fd });
      return;
    }
    const tooLong = socketPathTooLong(o.path);
    if (tooLong) throw toHyperError(tooLong);
    await makeDirs(dirname(o.path), 0o700).catch((e: unknown) => {
      throw toHyperError(e);
    });
    // Claimed first: a daemon starting at the same moment finds the claim, not a stale file
    // it would replace too.
    const claim = await claimSocketPath(o.path);
    if (claim === undefined) throw running(o.path, this.what);
    try {
      await this.bindPath(o.path);
    } catch (e) {
      try {
        if ((e as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw toHyperError(e);
        await replaceStale(o.path, this.what);
        await this.bindPath(o.path).catch((err: unknown) => {
          throw toHyperError(err);
        });
      } catch (err) {
        claim.release();
        throw err;
      }
    }
    this.claim = claim;
    this.path = o.path;
    try {
      if (o.gid !== undefined) await chown(o.path, -1, o.gid);
      await chmod(o.path, o.mode ?? 0o600);
    } catch (e) {
      await this.close();
      throw toHyperError(e);
    }
  }

  private async bindPath(path: string): Promise<void> {
    // Created with no access for others: the mode is widened (if asked) once it is chmod'ed.
    const umask = process.umask(0o177);
    try {
      await this.bind({ path });
    } finally {
      process.umask(umask);
    }
  }

  private bind(target: { path: string } | { fd: number }): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      this.server.once('error', onError);
      this.server.listen(target, () => {
        this.server.off('error', onError);
        this.server.on('error', (e) =>
          this.logger.error('control socket error', { error: e.message }),
        );
        resolve();
      });
    });
  }

  async close(): Promise<void> {
    if (!this.server.listening) return;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    // Node removes the socket file of a path it bound; an inherited one is systemd's.
    this.path = undefined;
    this.claim?.release();
    this.claim = undefined;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const ac = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished)
        ac.abort(new HyperError('unavailable', 'ABORTED', 'The client went away'));
    });
    try {
      const { status, body } = await this.route(req, ac.signal);
      send(res, status, body);
    } catch (e) {
      const err = toHyperError(e);
      const status = tooLargeErrors.has(err) ? 413 : STATUS[err.kind];
      if (err.kind === 'internal') {
        this.logger.error('control request failed', {
          method: req.method,
          url: req.url,
          error: err.message,
        });
      }
      send(res, status, { error: err.toJSON() }, status === 413);
    }
  }

  private async route(
    req: IncomingMessage,
    signal: AbortSignal,
  ): Promise<{ status: number; body: unknown }> {
    const url = new URL(req.url ?? '/', 'http://hyper');
    const method = req.method ?? 'GET';
    const p = url.pathname;
    const h = this.handler;
    if (typeof h === 'function') {
      const answer = await h(method, url, () => readJson(req), signal);
      if (answer !== undefined) return answer;
      throw new HyperError('invalid', 'INVALID_ARGUMENT', `No route ${method} ${p}`);
    }
    if (p === '/v1/daemon' && method === 'GET') return ok(h.info());
    if (p === '/v1/exports' && method === 'POST') {
      const body = await readJson(req);
      return { status: 201, body: await h.map(body, signal) };
    }
    if (p === '/v1/reload' && method === 'POST') return ok(await h.reload());
    if (p.startsWith('/v1/exports/') && method === 'DELETE') {
      const name = exportNameIn(p.slice('/v1/exports/'.length), p);
      const force = url.searchParams.get('force');
      if (force !== null && force !== 'true' && force !== 'false')
        throw badRequest('force must be true or false');
      return ok(await h.unmap(name, { force: force === 'true' }));
    }
    const answer = await maintenanceRoutes(h)(method, url, () => readJson(req), signal);
    if (answer !== undefined) return answer;
    throw new HyperError('invalid', 'INVALID_ARGUMENT', `No route ${method} ${p}`, {
      suggestion: 'See README "Running hyper as a service" for the control API.',
    });
  }
}

/**
 * GET /v1/exports, GET /v1/exports/NAME, POST /v1/exports/NAME/compact, …/flush and
 * …/resize, answered by `h`: the routes every server holding volumes serves on its control
 * socket (what `hyper compact`, `hyper snapshot create` and `hyper file set-len` ask).
 */
export function maintenanceRoutes(h: MaintenanceHandler): ControlRoutes {
  return async (method, url, body, signal) => {
    const p = url.pathname;
    if (p === '/v1/exports' && method === 'GET') return ok({ exports: h.list() });
    // POST /v1/exports/NAME/ACTION
    const action =
      method === 'POST' ? /^\/v1\/exports\/([^/]+)\/(compact|flush|resize)$/.exec(p) : null;
    if (action !== null) {
      const name = exportNameIn(action[1] as string, p);
      const request = await body();
      if (action[2] === 'compact') return ok(await h.compact(name, request, signal));
      if (action[2] === 'flush') return ok(await h.flush(name, request));
      return ok(await h.resize(name, request));
    }
    if (p.startsWith('/v1/exports/') && method === 'GET') {
      const name = exportNameIn(p.slice('/v1/exports/'.length), p);
      const found = h.list().find((e) => (e as { name: string }).name === name);
      if (found === undefined) throw exportNotFound(name);
      return ok(found);
    }
    return undefined;
  };
}

/** No export `name` on this server. */
export function exportNotFound(name: string): HyperError {
  return new HyperError(
    'not-found',
    'EXPORT_NOT_FOUND',
    `No export named ${JSON.stringify(name)}`,
    {
      suggestion: 'List the exports with "hyper ls".',
    },
  );
}

/** Errors answered with 413 (and a closed connection) rather than by their kind. */
const tooLargeErrors = new WeakSet<HyperError>();

const ok = (body: unknown) => ({ status: 200, body });

const badRequest = (message: string) => new HyperError('invalid', 'INVALID_ARGUMENT', message);

/** The export name of a path (URI-encoded there). */
function exportNameIn(encoded: string, path: string): string {
  try {
    return decodeURIComponent(encoded);
  } catch {
    throw badRequest(`Bad export name in ${path}`);
  }
}

function send(res: ServerResponse, status: number, body: unknown, close = false): void {
  if (res.headersSent || res.destroyed) return;
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...(close ? { connection: 'close' } : {}),
  });
  res.end(text);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? 0);
  const tooLarge = () => {
    const e = badRequest(`The request body is over ${MAX_CONTROL_BODY} bytes`);
    tooLargeErrors.add(e);
    return e;
  };
  if (declared > MAX_CONTROL_BODY) {
    req.resume();
    throw tooLarge();
  }
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_CONTROL_BODY) {
      req.resume();
      throw tooLarge();
    }
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw badRequest(`The request body is not JSON: ${(e as Error).message}`);
  }
}

/** A daemon (`what`) serves the control socket `path`, or is starting there. */
function running(path: string, what: string): HyperError {
  return new HyperError(
    'conflict',
    'DAEMON_RUNNING',
    `A ${what} is already running on the control socket ${path}`,
    {
      suggestion:
        what === 'hyper daemon'
          ? 'Use that daemon ("hyper ls", "hyper map"), stop it first, or pass another --control-socket.'
          : 'Stop it first, or pass another --control-socket.',
    },
  );
}

/** EADDRINUSE on `path`: a live daemon is an error; a socket file nobody listens on goes. */
async function replaceStale(path: string, what: string): Promise<void> {
  const at = await socketAt(path);
  if (at === 'not-socket') {
    throw new HyperError('invalid', 'ADDRESS_IN_USE', `${path} exists and is not a socket`, {
      suggestion: 'Remove it or pass another --control-socket.',
    });
  }
  if (at === 'live') throw running(path, what);
  await unlink(path).catch(() => undefined);
}

/** A client of the control API (what `hyper map`, `unmap` and `ls` use). */
export class ControlClient {
  constructor(
    private readonly socketPath: string,
    private readonly notRunning?: (path: string, cause: Error) => HyperError,
  ) {}

  get<T>(path: string, signal?: AbortSignal): Promise<T> {
    return this.call<T>('GET', path, undefined, signal);
  }

  post<T>(path: string, body: unknown, signal?: AbortSignal): Promise<T> {
    return this.call<T>('POST', path, body, signal);
  }

  delete<T>(path: string, signal?: AbortSignal): Promise<T> {
    return this.call<T>('DELETE', path, undefined, signal);
  }

  /** One request; an error answer becomes the daemon's HyperError, unchanged. */
  call<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const text = body === undefined ? undefined : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const req = request(
        {
          socketPath: this.socketPath,
          method,
          path,
          headers:
            text === undefined
              ? {}
              : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) },
          ...(signal === undefined ? {} : { signal }),
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', (e) => reject(this.connectionError(e)));
          res.on('end', () => {
            const raw = Buffer.concat(chunks).toString('utf8');
            let json: unknown;
            try {
              json = JSON.parse(raw);
            } catch {
              reject(
                new HyperError(
                  'internal',
                  'INTERNAL',
                  `The daemon answered ${res.statusCode} with no JSON: ${raw.slice(0, 200)}`,
                ),
              );
              return;
            }
            if ((res.statusCode ?? 500) >= 400) reject(errorFromJson(json, res.statusCode ?? 500));
            else resolve(json as T);
          });
        },
      );
      req.on('error', (e) => reject(this.connectionError(e)));
      req.end(text);
    });
  }

  private connectionError(e: Error): HyperError {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ECONNREFUSED' || code === 'ENOTDIR') {
      if (this.notRunning) return this.notRunning(this.socketPath, e);
      return new HyperError(
        'unavailable',
        'DAEMON_NOT_RUNNING',
        `No hyper daemon is listening on ${this.socketPath}`,
        {
          cause: e,
          suggestion:
            'Start one with "hyper daemon" (or "systemctl start hyper-daemon"), or pass --control-socket / set HYPER_CONTROL_SOCKET to where it listens.',
        },
      );
    }
    if (code === 'EACCES' || code === 'EPERM') {
      return new HyperError(
        'invalid',
        'PERMISSION_DENIED',
        `Permission denied on the control socket ${this.socketPath}`,
        {
          cause: e,
          suggestion:
            "Run as the daemon's user (or root), or start the daemon with --control-group and join that group.",
        },
      );
    }
    if (code === 'ECONNRESET' || code === 'EPIPE') {
      // ("socket hang up": the daemon closed the connection before it answered.)
      return new HyperError(
        'unavailable',
        'DAEMON_NOT_RUNNING',
        `The process on the control socket ${this.socketPath} closed the connection before it answered (it stopped or was killed)`,
        {
          cause: e,
          suggestion:
            'See whether it still runs ("hyper ls" for the daemon, "hyper replica status" for replica serve, or "systemctl status"), then run the command again.',
        },
      );
    }
    return toHyperError(e);
  }
}

function errorFromJson(json: unknown, status: number): HyperError {
  const e = (
    json as {
      error?: { kind?: string; code?: string; message?: string; suggestion?: string; key?: string };
    }
  ).error;
  if (e === undefined || typeof e.code !== 'string' || typeof e.kind !== 'string') {
    return new HyperError(
      'internal',
      'INTERNAL',
      `The daemon answered ${status}: ${JSON.stringify(json).slice(0, 200)}`,
    );
  }
  return new HyperError(e.kind as ErrorKind, e.code as ErrorCode, e.message ?? '', {
    ...(e.suggestion === undefined ? {} : { suggestion: e.suggestion }),
    ...(e.key === undefined ? {} : { key: e.key }),
  });
}
