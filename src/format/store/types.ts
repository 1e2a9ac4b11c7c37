/**
 * The object-store seam. A store is a flat key space rooted at a URL (`file:///dir/`,
 * `s3://bucket/prefix/`, `mem://name/`); keys are relative to that root and use `/` as the
 * separator. Implementations translate every failure of their backend into a HyperError
 * (src/errors.ts) here and nowhere else:
 *
 *   missing key                      -> not-found  OBJECT_NOT_FOUND (key set)
 *   create-only on an existing key   -> conflict   OBJECT_EXISTS
 *   If-Match with a stale/absent tag -> conflict   PRECONDITION_FAILED
 *   missing bucket / directory root  -> not-found  BUCKET_NOT_FOUND
 *   credentials / permissions        -> unavailable ACCESS_DENIED
 *   full, or over quota              -> unavailable NO_SPACE
 *   network, 5xx, throttling (after retries) -> unavailable STORE_UNAVAILABLE
 *   store ignores conditional writes -> unavailable CONDITIONAL_WRITES_UNSUPPORTED
 */

export interface ObjectMeta {
  key: string;
  size: number;
  /** Opaque version tag, unquoted. Changes whenever the content changes. */
  etag: string;
  lastModified: Date;
}

export interface GetResult {
  body: Buffer;
  etag: string;
  /** Size of the whole object (not of the range returned). */
  size: number;
  /**
   * The store's own clock, when it tells it (S3: the Last-Modified and Date headers, whole
   * seconds): when the object was last written and when the store answered, in ms. Leases
   * are judged by it, so that hosts whose clocks disagree still agree on expiry.
   */
  storeClock?: { modifiedMs: number; nowMs: number };
}

export interface ByteRange {
  offset: number;
  /** Bytes wanted; a range running past the end returns what exists. */
  length: number;
}

/**
 * What a PUT stores: one buffer, or pieces stored back to back (a gather write: a segment
 * whose blocks stay where the write buffer holds them). Stores must not keep the pieces.
 */
export type PutBody = Buffer | readonly Buffer[];

export interface PutOptions {
  /** Create-only: fail with OBJECT_EXISTS if the key exists (S3 `If-None-Match: *`). */
  ifNoneMatch?: boolean;
  /** Compare-and-swap: fail with PRECONDITION_FAILED unless the current etag equals this. */
  ifMatch?: string;
  signal?: AbortSignal;
}

export interface GetOptions {
  range?: ByteRange;
  signal?: AbortSignal;
  /**
   * The object is write-once (a segment): whatever this key held when first read is what it
   * holds for as long as the caller reads it. A store may keep it open between reads.
   */
  immutable?: boolean;
  /**
   * Memory for the body, as long as the range: a store may read the body into it and return
   * it (or a shorter start of it) as the body, which spares a copy. Stores may ignore it, so
   * a caller checks whether the body it got is this memory.
   */
  into?: Buffer;
}

export interface ListOptions {
  /** List keys strictly after this one. */
  startAfter?: string;
  /** When set, keys containing the delimiter after the prefix are rolled up into `prefixes`. */
  delimiter?: string;
  signal?: AbortSignal;
}

export interface ListPage {
  objects: ObjectMeta[];
  /** Common prefixes (with the delimiter), when a delimiter was given. */
  prefixes: string[];
}

/** Request and byte counters kept by the counting wrapper (see counting.ts). */
export interface StoreStats {
  get: number;
  put: number;
  list: number;
  head: number;
  delete: number;
  bytesIn: number;
  bytesOut: number;
}

export interface ObjectStore {
  /** The root URL, normalised with a trailing slash. */
  readonly url: string;
  get(key: string, options?: GetOptions): Promise<GetResult>;
  /** Metadata of one key, or undefined if it does not exist. */
  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectMeta | undefined>;
  put(key: string, body: PutBody, options?: PutOptions): Promise<{ etag: string }>;
  /** Every key under `prefix`, in ascending key order, page by page. */
  list(prefix: string, options?: ListOptions): AsyncIterable<ListPage>;
  /** Delete keys (missing keys are not an error). Batched by the implementation. */
  delete(keys: readonly string[], options?: { signal?: AbortSignal }): Promise<void>;
  /** A store rooted at `prefix` under this one (prefix ends with `/`). */
  sub(prefix: string): ObjectStore;
  /** Release connections. */
  close(): Promise<void>;
}

/**
 * Whether an S3 PUT's body is hashed into its SigV4 signature: `on` always, `off` never
 * (UNSIGNED-PAYLOAD), `auto` (the default) only over plain HTTP, where nothing else guards
 * the body in transit; over HTTPS, TLS does.
 */
export type PayloadSigning = 'auto' | 'on' | 'off';
export const PAYLOAD_SIGNING_VALUES: readonly PayloadSigning[] = ['auto', 'on', 'off'];

/** Options every store factory understands (CLI flags and environment feed them). */
export interface StoreOptions {
  /** S3 endpoint URL (also AWS_ENDPOINT_URL). Implies path-style addressing. */
  endpoint?: string;
  region?: string;
  /** S3 payload signing (also HYPER_S3_PAYLOAD_SIGNING; default auto). */
  payloadSigning?: PayloadSigning;
  /** Attempts per request that fails in a retryable way, the first included (S3; default DEFAULT_MAX_ATTEMPTS). */
  maxAttempts?: number;
  /** Fail a connection attempt after this long (S3; default DEFAULT_CONNECT_TIMEOUT_MS). */
  connectionTimeoutMs?: number;
  /** Fail a request whose socket is idle this long (S3; default DEFAULT_IDLE_TIMEOUT_MS). */
  requestTimeoutMs?: number;
}

/**
 * How hyper talks to a store, apart from where it is: the settings the CLI resolves from the
 * environment and the configuration file and hands to every store it opens.
 */
export type StoreTuning = Pick<
  StoreOptions,
  'payloadSigning' | 'maxAttempts' | 'connectionTimeoutMs' | 'requestTimeoutMs'
>;

/** `options`' StoreTuning fields, without the absent ones. */
export function storeTuningOf(options: StoreTuning): StoreTuning {
  const out: StoreTuning = {};
  if (options.payloadSigning !== undefined) out.payloadSigning = options.payloadSigning;
  if (options.maxAttempts !== undefined) out.maxAttempts = options.maxAttempts;
  if (options.connectionTimeoutMs !== undefined)
    out.connectionTimeoutMs = options.connectionTimeoutMs;
  if (options.requestTimeoutMs !== undefined) out.requestTimeoutMs = options.requestTimeoutMs;
  return out;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;
export const DEFAULT_MAX_ATTEMPTS = 6;
