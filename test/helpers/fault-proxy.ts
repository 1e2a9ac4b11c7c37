/**
 * An HTTP proxy on loopback between hyper and an S3 server that injects faults at chosen
 * rates: latency, 503 SlowDown, 500 InternalError, connection resets (before the request
 * reaches the server, or after it was applied), and truncated response bodies. A seeded PRNG
 * makes runs repeatable; `down` makes every request fail until it is cleared.
 * `ignoreConditionalWrites` turns the server behind it into a store that ignores
 * If-None-Match and If-Match on PUT (the headers are removed and the request signed again).
 */
import {
  request,
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createHash, createHmac, type Hash, type Hmac } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { SignatureV4 } from '@smithy/signature-v4';
import { after, before } from 'node:test';
import { s3Config } from './env.js';
import { ensureBucket } from './s3.js';

export interface FaultRates {
  latencyMs?: number;
  /** Probability of adding `latencyMs` to a request. */
  slow?: number;
  slowDown?: number;
  internalError?: number;
  resetBefore?: number;
  resetAfter?: number;
  truncate?: number;
  /**
   * Reset every Nth PUT whose body comes in more than one piece, once its first piece has
   * arrived (a count, not a probability: such PUTs are few, and each test needs some).
   */
  resetDuringEvery?: number;
}

export interface FaultCounts {
  requests: number;
  slow: number;
  slowDown: number;
  internalError: number;
  resetBefore: number;
  resetAfter: number;
  truncate: number;
  resetDuring: number;
  downRefused: number;
  /** Conditional PUTs forwarded without their If-None-Match / If-Match header. */
  conditionalStripped: number;
  /** Requests held without an answer (`hang`). */
  hung: number;
}

export interface SigningCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

/** SHA-256 (or its HMAC with a key) in the shape the SigV4 signer takes. */
class Sha256 {
  private hash: Hash | Hmac;
  constructor(private readonly secret?: string | ArrayBuffer | ArrayBufferView) {
    this.hash = this.fresh();
  }
  private fresh(): Hash | Hmac {
    if (this.secret === undefined) return createHash('sha256');
    const key =
      typeof this.secret === 'string'
        ? this.secret
        : ArrayBuffer.isView(this.secret)
          ? Buffer.from(this.secret.buffer, this.secret.byteOffset, this.secret.byteLength)
          : Buffer.from(this.secret);
    return createHmac('sha256', key);
  }
  update(data: string | Uint8Array): void {
    this.hash.update(data);
  }
  digest(): Promise<Uint8Array> {
    return Promise.resolve(new Uint8Array(this.hash.digest()));
  }
  reset(): void {
    this.hash = this.fresh();
  }
}

export class FaultProxy {
  private server: Server | undefined;
  rates: FaultRates = {};
  /** When true every request gets a 503 (the store is "down"). */
  down = false;
  /**
   * When true every request is held without an answer, as by a server that stopped
   * responding; `unhang()` clears it and resets the connections of the requests held.
   */
  hang = false;
  private held: (() => void)[] = [];
  /**
   * When set, PUTs lose their If-None-Match / If-Match headers on the way (and are signed
   * again with these credentials, as the headers are part of the signature): the server
   * then overwrites unconditionally, like a store that ignores conditional writes.
   */
  ignoreConditionalWrites: SigningCredentials | undefined;
  /** Sees each request (method, headers) as it arrives. */
  onRequest: ((req: IncomingMessage) => void) | undefined;
  readonly counts: FaultCounts = {
    requests: 0,
    slow: 0,
    slowDown: 0,
    internalError: 0,
    resetBefore: 0,
    resetAfter: 0,
    truncate: 0,
    resetDuring: 0,
    downRefused: 0,
    conditionalStripped: 0,
    hung: 0,
  };
  private seed: number;
  /** PUTs seen whose body came in more than one piece (resetDuringEvery). */
  private longPuts = 0;

  constructor(
    private readonly target: URL,
    seed = 1,
  ) {
    this.seed = seed >>> 0;
  }

  private rand(): number {
    this.seed = (this.seed + 0x6d2b79f5) >>> 0;
    let t = this.seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  private hit(p: number | undefined): boolean {
    return p !== undefined && p > 0 && this.rand() < p;
  }

  async start(): Promise<string> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    const { port } = this.server.address() as AddressInfo;
    return `http://127.0.0.1:${port}`;
  }

  /** Answer requests again; those held so far see their connection reset. */
  unhang(): void {
    this.hang = false;
    for (const reset of this.held.splice(0)) reset();
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => this.server?.close(() => resolve()));
  }

  private s3Error(res: ServerResponse, status: number, code: string): void {
    const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>injected</Message></Error>`;
    res.writeHead(status, {
      'content-type': 'application/xml',
      'content-length': Buffer.byteLength(body),
    });
    res.end(body);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    this.counts.requests++;
    this.onRequest?.(req);
    const chunks: Buffer[] = [];
    const every = req.method === 'PUT' ? this.rates.resetDuringEvery : undefined;
    for await (const c of req) {
      chunks.push(c as Buffer);
      // (Cut after the first chunk of a body of several: the client is still sending.)
      const length = Number(req.headers['content-length'] ?? 0);
      if (every !== undefined && chunks.length === 1 && (c as Buffer).length < length) {
        if (++this.longPuts % every === 0) {
          this.counts.resetDuring++;
          req.socket.destroy();
          return;
        }
      }
    }
    const body = Buffer.concat(chunks);
    if (this.hang) {
      this.counts.hung++;
      // Never forwarded: a request let through later would race the test's next steps.
      this.held.push(() => req.socket.destroy());
      return;
    }
    if (this.down) {
      this.counts.downRefused++;
      this.s3Error(res, 503, 'ServiceUnavailable');
      return;
    }
    const r = this.rates;
    if (this.hit(r.slow)) {
      this.counts.slow++;
      await new Promise((resolve) => setTimeout(resolve, r.latencyMs ?? 50));
    }
    if (this.hit(r.slowDown)) {
      this.counts.slowDown++;
      return this.s3Error(res, 503, 'SlowDown');
    }
    if (this.hit(r.internalError)) {
      this.counts.internalError++;
      return this.s3Error(res, 500, 'InternalError');
    }
    if (this.hit(r.resetBefore)) {
      this.counts.resetBefore++;
      req.socket.destroy();
      return;
    }
    const resetAfter = this.hit(r.resetAfter);
    const truncate = !resetAfter && this.hit(r.truncate);
    let headers = req.headers;
    const conditional =
      req.method === 'PUT' &&
      (headers['if-none-match'] !== undefined || headers['if-match'] !== undefined);
    if (conditional && this.ignoreConditionalWrites) {
      this.counts.conditionalStripped++;
      headers = await resign(req, this.ignoreConditionalWrites);
    }
    const upstream = request(
      {
        host: this.target.hostname,
        port: this.target.port,
        method: req.method,
        path: req.url,
        headers,
      },
      (up) => {
        const parts: Buffer[] = [];
        up.on('data', (c: Buffer) => parts.push(c));
        up.on('end', () => {
          const payload = Buffer.concat(parts);
          if (resetAfter) {
            this.counts.resetAfter++;
            req.socket.destroy();
            return;
          }
          if (truncate && payload.length > 1) {
            this.counts.truncate++;
            res.writeHead(up.statusCode ?? 500, up.headers);
            res.write(payload.subarray(0, payload.length >> 1));
            req.socket.destroy();
            return;
          }
          res.writeHead(up.statusCode ?? 500, up.headers);
          res.end(payload);
        });
      },
    );
    upstream.on('error', () => req.socket.destroy());
    upstream.end(body);
  }
}

/** The request's headers without If-None-Match / If-Match, with a new SigV4 signature. */
async function resign(
  req: IncomingMessage,
  creds: SigningCredentials,
): Promise<Record<string, string>> {
  const url = new URL(req.url ?? '/', 'http://placeholder');
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(req.headers)) {
    if (v === undefined || k === 'authorization' || k === 'if-none-match' || k === 'if-match')
      continue;
    headers[k] = Array.isArray(v) ? v.join(',') : v;
  }
  const query: Record<string, string> = {};
  for (const [k, v] of url.searchParams) query[k] = v;
  const signer = new SignatureV4({
    credentials: { accessKeyId: creds.accessKeyId, secretAccessKey: creds.secretAccessKey },
    region: creds.region,
    service: 's3',
    sha256: Sha256,
    // The path is already escaped as S3 expects (what the S3 client signs too).
    uriEscapePath: false,
  });
  const signed = await signer.sign({
    method: req.method ?? 'PUT',
    protocol: 'http:',
    hostname: 'placeholder',
    path: url.pathname,
    query,
    headers,
  });
  return signed.headers;
}

export interface RunningFaultProxy {
  proxy: FaultProxy;
  /** The proxy's URL: give it to hyper as the S3 endpoint. */
  endpoint: string;
}

/**
 * The shared setup of the fault tests: call inside a describe() to have a FaultProxy (seeded
 * with `seed`) in front of the test S3 endpoint, the bucket created, started before the
 * suite's tests and stopped after them. Returns a getter for the tests, which throws if the
 * proxy is not running. Without an S3 endpoint nothing starts; each test calls needS3 first,
 * which fails under HYPER_REQUIRE_TOOLS=1 and skips otherwise.
 */
export function s3FaultProxy(seed: number): () => RunningFaultProxy {
  const cfg = s3Config();
  let running: RunningFaultProxy | undefined;
  before(async () => {
    if (!cfg) return;
    await ensureBucket(cfg);
    const proxy = new FaultProxy(new URL(cfg.endpoint), seed);
    running = { proxy, endpoint: await proxy.start() };
  });
  after(async () => running?.proxy.stop());
  return () => {
    if (!running) throw new Error('the fault proxy in front of S3 is not running');
    return running;
  };
}
