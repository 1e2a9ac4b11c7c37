/**
 * S3 and S3-compatible stores (`s3://bucket/prefix/`), on AWS SDK v3. The only module (with
 * other `s3*.ts` files) that talks to the SDK; every SDK or network failure is translated
 * into a HyperError here (table in types.ts):
 *
 *   NoSuchKey / 404                          -> OBJECT_NOT_FOUND
 *   NoSuchBucket                             -> BUCKET_NOT_FOUND
 *   412 on create-only                       -> OBJECT_EXISTS
 *   412 on If-Match, 409 ConditionalRequestConflict, 404 on If-Match (AWS) -> PRECONDITION_FAILED
 *   QuotaExceeded (RGW: 403), 507 / XMinioStorageFull (a full store) -> NO_SPACE
 *   403, InvalidAccessKeyId, SignatureDoesNotMatch -> ACCESS_DENIED (a clock too far off and
 *     expired temporary credentials say so; a refusal for the clock is first signed again with
 *     the store's time, see S3Store.resigned and LeanGet)
 *   5xx, SlowDown, timeouts, refused/reset connections, DNS -> STORE_UNAVAILABLE (retried by retry.ts)
 *   501 on a conditional PUT                 -> CONDITIONAL_WRITES_UNSUPPORTED
 *
 * Compatibility: AWS takes `If-Match` with the quoted ETag the SDK hands out; Ceph RGW only
 * matches the unquoted form and answers 412 for a missing key (AWS: 404). ETags are kept
 * unquoted everywhere in hyper. On a custom endpoint the unquoted form is tried first; if it
 * fails with 412 the quoted form is tried once, and whichever form succeeds is remembered.
 */
import { createHash } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { Readable } from 'node:stream';
import {
  DeleteObjectsCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { HyperError } from '../../errors.js';
import { LeanGet } from './s3-get.js';
import {
  bodyLength,
  joinBody,
  notFound,
  objectExists,
  PAYLOAD_SIGNING_ENV,
  parsePayloadSigning,
  preconditionFailed,
} from './common.js';
import type {
  GetOptions,
  GetResult,
  ListOptions,
  ListPage,
  ObjectMeta,
  ObjectStore,
  PutBody,
  PutOptions,
  StoreOptions,
} from './types.js';
import { DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_IDLE_TIMEOUT_MS } from './types.js';

export interface S3StoreOptions extends StoreOptions {
  /** Explicit credentials (default: the SDK's standard provider chain). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** AWS shared-config profile for credentials (default: AWS_PROFILE, else the default chain). */
  profile?: string;
  /** Keys per ListObjectsV2 page (1-1000, default 1000). */
  pageSize?: number;
  /** Sockets per host (default 64). */
  maxSockets?: number;
}

/**
 * The SDK HTTP handler's timeouts for these options. The idle one is its socketTimeout, not
 * its requestTimeout: a segment PUT on a slow link may take minutes while bytes flow, and the
 * handler's requestTimeout only logs a warning unless told to throw (a store that took a
 * request and went silent, such as a Ceph cluster that is full and pauses writes, held the
 * request for good).
 */
export function sdkTimeouts(
  options: Pick<S3StoreOptions, 'connectionTimeoutMs' | 'requestTimeoutMs'>,
): {
  connectionTimeout: number;
  socketTimeout: number;
} {
  return {
    connectionTimeout: options.connectionTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
    socketTimeout: options.requestTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
  };
}

type IfMatchForm = 'quoted' | 'unquoted' | 'unknown';

/** State shared by a store and the stores `sub()` makes from it. */
interface Shared {
  client: S3Client;
  /** GETs without the SDK's middleware (the read hot path). */
  lean: LeanGet;
  bucket: string;
  endpoint: string;
  pageSize: number;
  ifMatchForm: IfMatchForm;
  /** PUT bodies in pieces are streamed as they are (see PiecesBody); else joined first. */
  streamsPieces: boolean;
  /** Whether PUT bodies are hashed into the signature (signsPayload). */
  signs: boolean;
}

/**
 * A PUT body in pieces (a segment whose blocks stay in the write buffer's memory), streamed
 * piece by piece: the socket takes each from where it lies, with no copy into one buffer.
 * The SDK's signer hashes only bodies held in one buffer, so a signed one carries its
 * SHA-256, hashed piece by piece, for the build step to put in the header.
 */
/** Pieces shorter than this are joined with their neighbours into chunks of COALESCE_BYTES. */
const SMALL_PIECE = 64 * 1024;
const COALESCE_BYTES = 256 * 1024;

class PiecesBody extends Readable {
  private next = 0;

  constructor(
    private readonly pieces: readonly Buffer[],
    readonly sha256: string | undefined,
  ) {
    super();
  }

  override _read(): void {
    // As the request takes them. Runs of small pieces (a segment's index nodes go as a
    // header, entries and padding each: thousands per segment) are joined into chunks of up
    // to COALESCE_BYTES first: one socket write per piece made S3 random writes a quarter
    // slower. Large pieces go as they lie.
    const pieces = this.pieces;
    while (this.next < pieces.length) {
      let p = pieces[this.next++] as Buffer;
      if (p.length < SMALL_PIECE && this.next < pieces.length) {
        let end = this.next;
        let n = p.length;
        for (; end < pieces.length; end++) {
          const len = (pieces[end] as Buffer).length;
          if (len >= SMALL_PIECE || n + len > COALESCE_BYTES) break;
          n += len;
        }
        if (end > this.next) {
          const chunk = Buffer.allocUnsafe(n);
          let at = p.copy(chunk, 0);
          for (; this.next < end; this.next++) at += (pieces[this.next] as Buffer).copy(chunk, at);
          p = chunk;
        }
      }
      if (!this.push(p)) return;
    }
    this.push(null);
  }
}

export const unquote = (etag: string | undefined): string =>
  (etag ?? '').replace(/^(W\/)?"(.*)"$/, '$2');

interface SdkError {
  name?: string;
  code?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number; clockSkewCorrected?: boolean };
  $response?: { statusCode?: number };
}

const NETWORK_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ENOTFOUND',
  'EAI_AGAIN',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ECONNABORTED',
  'EADDRNOTAVAIL',
  'UND_ERR_SOCKET',
]);

const UNREACHABLE_SUGGESTION =
  'Check that the endpoint URL (--endpoint or AWS_ENDPOINT_URL) is right and the server is running.';

/** Node's codes for a certificate it does not trust (OpenSSL's verify results). */
const UNTRUSTED_CERT = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'CERT_UNTRUSTED',
]);

/** What went wrong with TLS to the endpoint, in words an operator acts on. */
function tlsProblem(
  code: string,
  endpoint: string,
): { message: string; suggestion: string } | undefined {
  let host = endpoint;
  try {
    host = new URL(endpoint).hostname;
  } catch {
    // (the endpoint as given)
  }
  if (UNTRUSTED_CERT.has(code))
    return {
      message: `The TLS certificate of ${endpoint} is not trusted (self-signed, or signed by an unknown CA)`,
      suggestion:
        "Give Node the CA that signed it: NODE_EXTRA_CA_CERTS=/path/to/ca.pem (a PEM file; for a service, in its environment), or use the store's http:// endpoint on a trusted network.",
    };
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID')
    return {
      message: `The TLS certificate of ${endpoint} is not for the host "${host}"`,
      suggestion: `Use the host name the certificate names in --endpoint, or give the store a certificate with "${host}" in its subjectAltName.`,
    };
  if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID')
    return {
      message: `The TLS certificate of ${endpoint} is ${code === 'CERT_HAS_EXPIRED' ? 'expired' : 'not valid yet'}`,
      suggestion: "Renew the store's certificate, or check this machine's clock (`timedatectl`).",
    };
  if (code === 'EPROTO' || code === 'ERR_SSL_WRONG_VERSION_NUMBER')
    return {
      message: `No TLS answer from ${endpoint}`,
      suggestion: `Check the scheme and port of --endpoint (AWS_ENDPOINT_URL): a store that speaks plain HTTP there takes http://${host}…, not https://.`,
    };
  return undefined;
}

function causeCode(e: unknown): string | undefined {
  let cur: unknown = e;
  for (let i = 0; i < 5 && cur && typeof cur === 'object'; i++) {
    const c = (cur as SdkError).code;
    if (typeof c === 'string') return c;
    cur = (cur as { cause?: unknown }).cause;
  }
  return undefined;
}

export interface TranslateContext {
  op: 'get' | 'head' | 'put' | 'list' | 'delete';
  endpoint: string;
  bucket: string;
  url: string;
  key?: string;
  createOnly?: boolean;
  ifMatch?: boolean;
}

/** Map an SDK / network error to a HyperError (exported for tests). */
export function translateS3Error(e: unknown, ctx: TranslateContext): HyperError {
  if (e instanceof HyperError) return e;
  const err = (e ?? {}) as SdkError;
  const name = err.name ?? err.Code ?? '';
  const status = err.$metadata?.httpStatusCode ?? err.$response?.statusCode;
  const keyOpt = ctx.key === undefined ? {} : { key: ctx.key };
  const where = ctx.key === undefined ? ctx.url : `${ctx.url}${ctx.key}`;
  if (name === 'AbortError') {
    return new HyperError('unavailable', 'ABORTED', 'The operation was interrupted.', {
      cause: e,
      ...keyOpt,
    });
  }
  if (name === 'CredentialsProviderError') {
    return new HyperError(
      'unavailable',
      'ACCESS_DENIED',
      `No S3 credentials found for ${ctx.url}: ${err.message ?? ''}`,
      {
        cause: e,
        ...keyOpt,
        suggestion:
          'Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where an instance role is available.',
      },
    );
  }
  if (name === 'PermanentRedirect' || name === 'AuthorizationHeaderMalformed' || status === 301) {
    return new HyperError(
      'invalid',
      'INVALID_ARGUMENT',
      `Bucket "${ctx.bucket}" is not in the configured region (${name || status})`,
      {
        cause: e,
        suggestion: "Set the bucket's region with --region or AWS_REGION.",
      },
    );
  }
  // A connection that went silent: the SDK's socket timeout, or the plain-HTTP GETs' own
  // (s3-wire.ts and s3-get.ts fail with ETIMEDOUT "request timed out").
  const silent =
    (name === 'TimeoutError' &&
      // (The HTTP handler's two timeouts share the name; its message tells them apart.)
      !/establish a connection/i.test(err.message ?? '')) ||
    (causeCode(e) === 'ETIMEDOUT' && /^request timed out$/.test(err.message ?? ''));
  if (name === 'TimeoutError' && !silent) {
    return new HyperError(
      'unavailable',
      'STORE_UNAVAILABLE',
      `Cannot reach the S3 endpoint ${ctx.endpoint}: no connection within the timeout (${where})`,
      { cause: e, ...keyOpt, suggestion: UNREACHABLE_SUGGESTION },
    );
  }
  if (silent) {
    return new HyperError(
      'unavailable',
      'STORE_UNAVAILABLE',
      `S3 request to ${ctx.endpoint} timed out (${where}): the connection was silent too long`,
      {
        cause: e,
        ...keyOpt,
        suggestion:
          'Check that the store is healthy and has room: a store that is full or overloaded can take requests and not answer them (on Ceph, `ceph health` names a full OSD, which pauses writes). hyper retries such requests a few times before it gives up.',
      },
    );
  }
  // (The store's own: S3 answers 400 RequestTimeout when a request body stops arriving.)
  if (name === 'RequestTimeout' || name === 'RequestTimeoutException') {
    return new HyperError(
      'unavailable',
      'STORE_UNAVAILABLE',
      `S3 request to ${ctx.endpoint} timed out (${where})`,
      { cause: e, ...keyOpt },
    );
  }
  const netCode = causeCode(e);
  const tls =
    status === undefined && netCode !== undefined ? tlsProblem(netCode, ctx.endpoint) : undefined;
  if (tls) {
    return new HyperError('unavailable', 'STORE_UNAVAILABLE', `${tls.message} (${netCode})`, {
      cause: e,
      ...keyOpt,
      suggestion: tls.suggestion,
    });
  }
  if (
    status === undefined &&
    netCode !== undefined &&
    (NETWORK_CODES.has(netCode) || netCode.startsWith('E'))
  ) {
    const dns = netCode === 'ENOTFOUND' || netCode === 'EAI_AGAIN';
    return new HyperError(
      'unavailable',
      'STORE_UNAVAILABLE',
      `Cannot reach the S3 endpoint ${ctx.endpoint} (${netCode}${dns ? ': host name not found' : ''})`,
      {
        cause: e,
        ...keyOpt,
        suggestion: UNREACHABLE_SUGGESTION,
      },
    );
  }
  if (name === 'NoSuchBucket') {
    return new HyperError(
      'not-found',
      'BUCKET_NOT_FOUND',
      `Bucket "${ctx.bucket}" does not exist at ${ctx.endpoint}`,
      {
        cause: e,
        suggestion: 'Create the bucket first, or check the bucket name, region and endpoint.',
      },
    );
  }
  if (status === 412 || name === 'PreconditionFailed') {
    return ctx.createOnly
      ? objectExists(ctx.url, ctx.key ?? '')
      : preconditionFailed(ctx.url, ctx.key ?? '');
  }
  if (status === 409 && (name === 'ConditionalRequestConflict' || ctx.createOnly || ctx.ifMatch)) {
    return preconditionFailed(ctx.url, ctx.key ?? '');
  }
  if (name === 'NoSuchKey' || status === 404 || name === 'NotFound') {
    if (ctx.ifMatch) return preconditionFailed(ctx.url, ctx.key ?? '');
    return notFound(ctx.url, ctx.key ?? '');
  }
  if (name === 'QuotaExceeded' || name === 'XMinioStorageFull' || status === 507) {
    return new HyperError(
      'unavailable',
      'NO_SPACE',
      `The S3 store ${ctx.endpoint} is full or over quota for ${where} (${name || status})`,
      {
        cause: e,
        ...keyOpt,
        suggestion:
          "Raise the bucket's or user's quota (RGW: radosgw-admin quota set) or free space, or reclaim space with `hyper compact` (it needs a few KiB of room to start). A running serve stores what it holds at its next flush.",
      },
    );
  }
  if (
    name === 'RequestTimeTooSkewed' ||
    name === 'RequestExpired' ||
    name === 'RequestInTheFuture'
  ) {
    return new HyperError(
      'unavailable',
      'ACCESS_DENIED',
      `${ctx.endpoint} refused the request for ${where}: this machine's clock is too far from the store's (${name})`,
      {
        cause: e,
        ...keyOpt,
        suggestion:
          "Set the clock right (timedatectl status; run chrony or systemd-timesyncd). hyper signs with the store's time once it has seen it, but checkpoint times are this machine's clock.",
      },
    );
  }
  if (name === 'ExpiredToken' || name === 'TokenRefreshRequired') {
    return new HyperError(
      'unavailable',
      'ACCESS_DENIED',
      `The temporary credentials for ${ctx.endpoint} expired (${where})`,
      {
        cause: e,
        ...keyOpt,
        suggestion:
          'Renew them (aws sso login, the instance or pod role, or new AWS_SESSION_TOKEN values), then run the command again.',
      },
    );
  }
  if (
    status === 403 ||
    name === 'AccessDenied' ||
    name === 'InvalidAccessKeyId' ||
    name === 'SignatureDoesNotMatch' ||
    name === 'ExpiredToken' ||
    name === 'InvalidToken'
  ) {
    return new HyperError(
      'unavailable',
      'ACCESS_DENIED',
      `Access denied by ${ctx.endpoint} for ${where} (${name || status})`,
      {
        cause: e,
        ...keyOpt,
        suggestion:
          'Check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and that they may read and write this bucket.',
      },
    );
  }
  if (status === 501 && (ctx.createOnly || ctx.ifMatch)) {
    return new HyperError(
      'unavailable',
      'CONDITIONAL_WRITES_UNSUPPORTED',
      `The S3 endpoint ${ctx.endpoint} does not implement conditional writes (If-None-Match / If-Match)`,
      {
        cause: e,
        ...keyOpt,
        suggestion: 'Use AWS S3, Ceph RGW, or another store that supports conditional PUTs.',
      },
    );
  }
  if (
    status === undefined ||
    status >= 500 ||
    name === 'SlowDown' ||
    name === 'Throttling' ||
    status === 429
  ) {
    return new HyperError(
      'unavailable',
      'STORE_UNAVAILABLE',
      `S3 ${ctx.op} failed at ${ctx.endpoint} for ${where}: ${name || 'error'}${status ? ` (HTTP ${status})` : ''}: ${err.message ?? ''}`,
      { cause: e, ...keyOpt },
    );
  }
  return new HyperError(
    'internal',
    'INTERNAL',
    `S3 ${ctx.op} refused by ${ctx.endpoint} for ${where}: ${name} (HTTP ${status}): ${err.message ?? ''}`,
    {
      cause: e,
      ...keyOpt,
      suggestion:
        'The store rejected a request hyper made; check that it is S3-compatible, or report this.',
    },
  );
}

/** Endpoint from options or the environment (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL). */
export function resolveEndpoint(options: StoreOptions): string | undefined {
  return (
    options.endpoint || process.env.AWS_ENDPOINT_URL_S3 || process.env.AWS_ENDPOINT_URL || undefined
  );
}

/** Region from options or the environment (AWS_REGION, AWS_DEFAULT_REGION), else us-east-1. */
export function resolveRegion(options: StoreOptions): string {
  return options.region || process.env.AWS_REGION || process.env.AWS_DEFAULT_REGION || 'us-east-1';
}

/**
 * Whether PUT bodies are hashed into the signature at `endpoint`. SigV4 signs a SHA-256 of
 * the body: hyper's CPU and the server's (which checks it) for every byte written, half of
 * the client's CPU per uploaded GiB on an RGW at loopback. Over HTTPS, TLS already guards
 * the body, so `auto` leaves it out there (UNSIGNED-PAYLOAD, as the aws CLI does for
 * uploads); over HTTP the hash is the only guard against a body changed in transit.
 */
export function signsPayload(options: StoreOptions, endpoint: string): boolean {
  const env = process.env[PAYLOAD_SIGNING_ENV];
  const mode =
    options.payloadSigning ?? (env ? parsePayloadSigning(env, PAYLOAD_SIGNING_ENV) : 'auto');
  if (mode === 'auto') return !/^https:/i.test(endpoint);
  return mode === 'on';
}

/**
 * Keep the SDK's notice that its releases after January 2027 need Node 22 off hyper's stderr
 * (README "Install" says which Node versions hyper supports and why). The SDK reads this
 * documented switch when a client is constructed; a value the user set is left alone.
 */
export function quietSdkNodeVersionNotice(): void {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
}

const SILENT_LOGGER = {
  trace: (): void => undefined,
  debug: (): void => undefined,
  info: (): void => undefined,
  warn: (): void => undefined,
  error: (): void => undefined,
};

export function createS3Client(options: S3StoreOptions): {
  client: S3Client;
  endpoint: string;
  agents: { http: http.Agent; https: https.Agent };
  /** Whether PUT bodies are hashed into the signature (signsPayload). */
  signs: boolean;
  /**
   * Whether a PUT body may be streamed as it is: not where the SDK adds its default checksum
   * (AWS), which re-encodes a streamed body (aws-chunked with a trailer).
   */
  streams: boolean;
} {
  quietSdkNodeVersionNotice();
  const endpoint = resolveEndpoint(options);
  const region = resolveRegion(options);
  const agentOptions = { keepAlive: true, maxSockets: options.maxSockets ?? 64, noDelay: true };
  const agents = { http: new http.Agent(agentOptions), https: new https.Agent(agentOptions) };
  const config: S3ClientConfig = {
    region,
    maxAttempts: options.maxAttempts ?? 3,
    requestHandler: new NodeHttpHandler({
      httpAgent: agents.http,
      httpsAgent: agents.https,
      ...sdkTimeouts(options),
    }),
  };
  if (endpoint) {
    config.endpoint = endpoint;
    config.forcePathStyle = true;
    // S3-compatible servers reject the SDK's newer default checksums.
    config.requestChecksumCalculation = 'WHEN_REQUIRED';
    config.responseChecksumValidation = 'WHEN_REQUIRED';
  }
  if (options.credentials) config.credentials = options.credentials;
  else if (options.profile) config.profile = options.profile;
  // The SDK's own lines stay off hyper's output (without a logger it warns on the console,
  // e.g. whenever a streamed PUT fails): every failure reaches the caller as a HyperError.
  config.logger = SILENT_LOGGER;
  const url = endpoint ?? `https://s3.${region}.amazonaws.com`;
  const client = new S3Client(config);
  const signs = signsPayload(options, url);
  // The signer takes a payload hash already in the headers as it is: UNSIGNED-PAYLOAD, or
  // the hash of a body in pieces.
  client.middlewareStack.add(
    (next, context) => (args) => {
      const req = args.request as { headers?: Record<string, string>; body?: unknown } | undefined;
      if (context.commandName === 'PutObjectCommand' && req?.headers !== undefined) {
        const hash = req.body instanceof PiecesBody ? req.body.sha256 : undefined;
        if (hash !== undefined) req.headers['x-amz-content-sha256'] = hash;
        else if (!signs) req.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      }
      return next(args);
    },
    { step: 'build', name: 'hyperPayloadHash' },
  );
  // (Custom endpoints get no added checksum, above.)
  return { client, endpoint: url, agents, signs, streams: endpoint !== undefined };
}

export class S3Store implements ObjectStore {
  readonly url: string;
  private readonly shared: Shared;
  /** '' or ends with '/'. */
  private readonly root: string;
  /** Only the store that created the client closes it; `sub()` stores share it. */
  private owner = false;

  constructor(bucket: string, prefix: string, options: S3StoreOptions = {}, shared?: Shared) {
    if (shared) {
      this.shared = shared;
    } else {
      const { client, endpoint, agents, signs, streams } = createS3Client(options);
      this.shared = {
        client,
        lean: new LeanGet({
          client,
          bucket,
          endpoint: resolveEndpoint(options),
          agents,
          maxSockets: options.maxSockets ?? 64,
          connectionTimeoutMs: options.connectionTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
          requestTimeoutMs: options.requestTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS,
        }),
        bucket,
        endpoint,
        pageSize: Math.min(1000, Math.max(1, options.pageSize ?? 1000)),
        ifMatchForm: resolveEndpoint(options) ? 'unknown' : 'quoted',
        streamsPieces: streams,
        signs,
      };
      this.owner = true;
    }
    this.root = prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/`;
    this.url = `s3://${bucket}/${this.root}`;
  }

  /** The endpoint requests go to (for messages). */
  get endpoint(): string {
    return this.shared.endpoint;
  }

  private ctx(
    op: TranslateContext['op'],
    key?: string,
    extra: Partial<TranslateContext> = {},
  ): TranslateContext {
    return {
      op,
      endpoint: this.shared.endpoint,
      bucket: this.shared.bucket,
      url: this.url,
      ...(key === undefined ? {} : { key }),
      ...extra,
    };
  }

  private get client(): S3Client {
    return this.shared.client;
  }

  /**
   * Run `send` again, once, when the store refused it for this machine's clock and the SDK
   * (or LeanGet, for GETs) corrected the client's clock offset from the answer (the retry is signed with the store's time;
   * nothing was applied). Without this, a clock some minutes off failed every request with
   * ACCESS_DENIED: the SDK corrects the offset, but retries are hyper's, and it does not
   * retry a refusal.
   */
  private async resigned<T>(send: () => Promise<T>): Promise<T> {
    try {
      return await send();
    } catch (e) {
      if ((e as SdkError).$metadata?.clockSkewCorrected !== true) throw e;
      return send();
    }
  }

  async get(key: string, options: GetOptions = {}): Promise<GetResult> {
    const range = options.range;
    if (range && range.length <= 0) {
      const meta = await this.head(key, options.signal ? { signal: options.signal } : {});
      if (!meta) throw notFound(this.url, key);
      return { body: Buffer.alloc(0), etag: meta.etag, size: meta.size };
    }
    try {
      const res = await this.resigned(() =>
        this.shared.lean.get(this.root + key, range, options.signal, options.into),
      );
      const body = res.body;
      let size = body.length;
      const total = /\/(\d+)$/.exec(res.contentRange ?? '');
      if (total?.[1]) size = Number(total[1]);
      else if (range) size = Math.max(size, range.offset + body.length);
      const modifiedMs = Date.parse(res.lastModified ?? '');
      const nowMs = Date.parse(res.date ?? '');
      return {
        body,
        etag: unquote(res.etag),
        size,
        ...(Number.isFinite(modifiedMs) && Number.isFinite(nowMs)
          ? { storeClock: { modifiedMs, nowMs } }
          : {}),
      };
    } catch (e) {
      const status = (e as SdkError).$metadata?.httpStatusCode;
      if (range && (status === 416 || (e as SdkError).name === 'InvalidRange')) {
        // Range starts at or past the end: nothing to return.
        const meta = await this.head(key, options.signal ? { signal: options.signal } : {});
        if (!meta) throw notFound(this.url, key);
        return { body: Buffer.alloc(0), etag: meta.etag, size: meta.size };
      }
      throw translateS3Error(e, this.ctx('get', key));
    }
  }

  async head(key: string, options: { signal?: AbortSignal } = {}): Promise<ObjectMeta | undefined> {
    try {
      const res = await this.resigned(() =>
        this.client.send(
          new HeadObjectCommand({ Bucket: this.shared.bucket, Key: this.root + key }),
          { abortSignal: options.signal },
        ),
      );
      return {
        key,
        size: res.ContentLength ?? 0,
        etag: unquote(res.ETag),
        lastModified: res.LastModified ?? new Date(0),
      };
    } catch (e) {
      const he = translateS3Error(e, this.ctx('head', key));
      if (he.code === 'OBJECT_NOT_FOUND') return undefined;
      throw he;
    }
  }

  /** What the SDK sends for `body`: one buffer, or its pieces streamed (PiecesBody). */
  private sdkBody(body: PutBody): Buffer | PiecesBody {
    if (Buffer.isBuffer(body)) return body;
    if (body.length === 1 || !this.shared.streamsPieces) return joinBody(body);
    let sha256: string | undefined;
    if (this.shared.signs) {
      const h = createHash('sha256');
      for (const p of body) h.update(p);
      sha256 = h.digest('hex');
    }
    return new PiecesBody(body, sha256);
  }

  private async putOnce(
    key: string,
    body: PutBody,
    options: PutOptions,
    ifMatch?: string,
  ): Promise<{ etag: string }> {
    // (A fresh stream per attempt: each try sends the pieces from the start.)
    const res = await this.resigned(() =>
      this.client.send(
        new PutObjectCommand({
          Bucket: this.shared.bucket,
          Key: this.root + key,
          Body: this.sdkBody(body),
          ContentLength: bodyLength(body),
          ...(options.ifNoneMatch ? { IfNoneMatch: '*' } : {}),
          ...(ifMatch !== undefined ? { IfMatch: ifMatch } : {}),
        }),
        { abortSignal: options.signal },
      ),
    );
    return { etag: unquote(res.ETag) };
  }

  async put(key: string, body: PutBody, options: PutOptions = {}): Promise<{ etag: string }> {
    const ctx = this.ctx('put', key, {
      createOnly: options.ifNoneMatch === true,
      ifMatch: options.ifMatch !== undefined,
    });
    if (options.ifMatch === undefined) {
      try {
        return await this.putOnce(key, body, options);
      } catch (e) {
        throw translateS3Error(e, ctx);
      }
    }
    const tag = unquote(options.ifMatch);
    const form = this.shared.ifMatchForm;
    const first = form === 'quoted' ? `"${tag}"` : tag;
    try {
      const r = await this.putOnce(key, body, options, first);
      if (form === 'unknown') this.shared.ifMatchForm = 'unquoted';
      return r;
    } catch (e) {
      const he = translateS3Error(e, ctx);
      if (form !== 'unknown' || he.code !== 'PRECONDITION_FAILED') throw he;
    }
    // The unquoted form was refused: maybe this server wants the quoted one.
    try {
      const r = await this.putOnce(key, body, options, `"${tag}"`);
      this.shared.ifMatchForm = 'quoted';
      return r;
    } catch (e) {
      throw translateS3Error(e, ctx);
    }
  }

  async *list(prefix: string, options: ListOptions = {}): AsyncIterable<ListPage> {
    let token: string | undefined;
    const strip = (k: string): string => k.slice(this.root.length);
    do {
      let res;
      try {
        res = await this.resigned(() =>
          this.client.send(
            new ListObjectsV2Command({
              Bucket: this.shared.bucket,
              Prefix: this.root + prefix,
              MaxKeys: this.shared.pageSize,
              ...(token ? { ContinuationToken: token } : {}),
              ...(options.startAfter !== undefined && !token
                ? { StartAfter: this.root + options.startAfter }
                : {}),
              ...(options.delimiter ? { Delimiter: options.delimiter } : {}),
            }),
            { abortSignal: options.signal },
          ),
        );
      } catch (e) {
        throw translateS3Error(e, this.ctx('list', prefix));
      }
      const objects: ObjectMeta[] = (res.Contents ?? []).map((o) => ({
        key: strip(o.Key ?? ''),
        size: o.Size ?? 0,
        etag: unquote(o.ETag),
        lastModified: o.LastModified ?? new Date(0),
      }));
      const prefixes = (res.CommonPrefixes ?? []).map((p) => strip(p.Prefix ?? ''));
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
      yield { objects, prefixes };
    } while (token);
  }

  async delete(keys: readonly string[], options: { signal?: AbortSignal } = {}): Promise<void> {
    const batches: string[][] = [];
    for (let i = 0; i < keys.length; i += 1000) batches.push(keys.slice(i, i + 1000));
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < batches.length) {
        const batch = batches[next++] as string[];
        let res;
        try {
          res = await this.resigned(() =>
            this.client.send(
              new DeleteObjectsCommand({
                Bucket: this.shared.bucket,
                Delete: { Objects: batch.map((k) => ({ Key: this.root + k })), Quiet: true },
              }),
              { abortSignal: options.signal },
            ),
          );
        } catch (e) {
          throw translateS3Error(e, this.ctx('delete', batch[0]));
        }
        const failed = (res.Errors ?? []).filter((x) => x.Code !== 'NoSuchKey');
        const f = failed[0];
        if (f) {
          const key = (f.Key ?? '').slice(this.root.length);
          const status = f.Code === 'AccessDenied' ? 403 : f.Code === 'SlowDown' ? 503 : 500;
          throw translateS3Error(
            {
              name: f.Code ?? 'InternalError',
              message: `${failed.length} of ${batch.length} deletes failed: ${f.Message ?? ''}`,
              $metadata: { httpStatusCode: status },
            },
            this.ctx('delete', key),
          );
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(4, batches.length) }, worker));
  }

  sub(prefix: string): ObjectStore {
    if (!prefix.endsWith('/') || prefix.startsWith('/')) {
      throw new HyperError(
        'internal',
        'INTERNAL',
        `sub prefix must end with / and be relative: ${prefix}`,
      );
    }
    return new S3Store(this.shared.bucket, this.root + prefix, {}, this.shared);
  }

  /** Release the connections (a no-op on `sub()` stores, which share their parent's). */
  close(): Promise<void> {
    if (this.owner) {
      this.owner = false;
      this.shared.lean.close();
      this.shared.client.destroy();
    }
    return Promise.resolve();
  }
}
