// The S3 store with its retry wrapper against a scripted HTTP server on loopback: real SDK
// error parsing, throttling retried, 412 not retried, a landed create-only PUT recognised.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { isHyperError } from '../../../../src/errors.js';
import { openStore } from '../../../../src/format/store/index.js';
import { rejectsWith } from '../../../helpers/store-conformance.js';

type Reply = { status: number; code?: string; etag?: string; body?: Buffer };
let script: Array<(req: IncomingMessage, body: Buffer) => Reply> = [];
const seen: Array<{ method: string; url: string; ifNoneMatch?: string; ifMatch?: string }> = [];
const objects = new Map<string, Buffer>();
let server: Server;
let endpoint = '';

const md5 = (b: Buffer): string => createHash('md5').update(b).digest('hex');
const xmlError = (code: string): Buffer =>
  Buffer.from(
    `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${code}</Message></Error>`,
  );

/** Default behaviour: a tiny in-memory S3 for PUT/GET/HEAD. */
function store(req: IncomingMessage, body: Buffer): Reply {
  const key = (req.url ?? '').split('?')[0] ?? '';
  if (req.method === 'PUT') {
    if (req.headers['if-none-match'] === '*' && objects.has(key))
      return { status: 412, code: 'PreconditionFailed' };
    objects.set(key, body);
    return { status: 200, etag: md5(body) };
  }
  const cur = objects.get(key);
  if (!cur) return { status: 404, code: 'NoSuchKey' };
  return { status: 200, etag: md5(cur), body: cur };
}

before(async () => {
  server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      seen.push({
        method: req.method ?? '',
        url: req.url ?? '',
        ...(req.headers['if-none-match']
          ? { ifNoneMatch: String(req.headers['if-none-match']) }
          : {}),
        ...(req.headers['if-match'] ? { ifMatch: String(req.headers['if-match']) } : {}),
      });
      const r = (script.shift() ?? store)(req, body);
      const payload = r.code ? xmlError(r.code) : (r.body ?? Buffer.alloc(0));
      res.writeHead(r.status, {
        ...(r.etag ? { ETag: `"${r.etag}"` } : {}),
        'Content-Type': r.code ? 'application/xml' : 'application/octet-stream',
        'Content-Length':
          req.method === 'HEAD' ? String(r.body?.length ?? 0) : String(payload.length),
      });
      res.end(req.method === 'HEAD' ? undefined : payload);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  endpoint = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
after(() => new Promise<void>((r) => server.close(() => r())));

const open = () =>
  openStore('s3://fake-bucket/p/', {
    endpoint,
    region: 'us-east-1',
    credentials: { accessKeyId: 'k', secretAccessKey: 's' },
    maxAttempts: 4,
    retry: { baseDelayMs: 1 },
  });

describe('S3 store against a scripted server', () => {
  it('retries 503 SlowDown and then succeeds', async () => {
    const s = await open();
    seen.length = 0;
    script = [
      () => ({ status: 503, code: 'SlowDown' }),
      () => ({ status: 500, code: 'InternalError' }),
    ];
    const r = await s.put('k', Buffer.from('v'));
    assert.equal(r.etag, md5(Buffer.from('v')));
    assert.equal(seen.filter((x) => x.method === 'PUT').length, 3);
    await s.close();
  });

  it('does not retry 412, and sends If-None-Match: *', async () => {
    const s = await open();
    objects.set('/fake-bucket/p/exists', Buffer.from('x'));
    seen.length = 0;
    await rejectsWith(
      s.put('exists', Buffer.from('y'), { ifNoneMatch: true }),
      'OBJECT_EXISTS',
      'exists',
    );
    assert.equal(seen.length, 1);
    assert.equal(seen[0]?.ifNoneMatch, '*');
    await s.close();
  });

  it('a create-only PUT that landed behind a 500 succeeds after its retry sees 412', async () => {
    const s = await open();
    seen.length = 0;
    script = [
      (req, body) => {
        store(req, body); // the write lands...
        return { status: 500, code: 'InternalError' }; // ...but the reply says it failed
      },
    ];
    const r = await s.put('seg', Buffer.from('segment'), { ifNoneMatch: true });
    assert.equal(r.etag, md5(Buffer.from('segment')));
    assert.deepEqual(
      seen.map((x) => x.method),
      ['PUT', 'PUT', 'HEAD'],
    );
    await s.close();
  });

  it('sends If-Match unquoted first on a custom endpoint, then quoted once', async () => {
    const s = await open();
    seen.length = 0;
    script = [
      () => ({ status: 412, code: 'PreconditionFailed' }),
      () => ({ status: 412, code: 'PreconditionFailed' }),
    ];
    await rejectsWith(s.put('h', Buffer.from('v'), { ifMatch: 'abc' }), 'PRECONDITION_FAILED', 'h');
    assert.deepEqual(
      seen.map((x) => x.ifMatch),
      ['abc', '"abc"'],
    );
    // The quoted form works on this server: it is remembered.
    seen.length = 0;
    script = [
      () => ({ status: 412, code: 'PreconditionFailed' }),
      () => ({ status: 200, etag: 'def' }),
    ];
    await s.put('h', Buffer.from('v'), { ifMatch: 'abc' });
    seen.length = 0;
    script = [() => ({ status: 200, etag: 'ghi' })];
    await s.put('h', Buffer.from('w'), { ifMatch: 'def' });
    assert.deepEqual(
      seen.map((x) => x.ifMatch),
      ['"def"'],
    );
    await s.close();
  });

  it('gives up after maxAttempts of 503 with STORE_UNAVAILABLE', async () => {
    const s = await open();
    seen.length = 0;
    script = Array.from({ length: 4 }, () => () => ({ status: 503, code: 'SlowDown' }));
    await rejectsWith(s.get('k'), 'STORE_UNAVAILABLE');
    assert.equal(seen.length, 4);
    script = [];
    await s.close();
  });
});

describe('S3 store against a server that takes requests and never answers', () => {
  // (What a Ceph cluster with a full OSD does: RGW reads the request and waits for the
  // paused write.) Every request must fail once its connection has been silent for the
  // request timeout, through the SDK (PUT, LIST, DELETE, HEAD) and the plain-HTTP GETs alike.
  let silent: NetServer;
  let silentEndpoint = '';
  const sockets = new Set<Socket>();
  before(async () => {
    silent = createNetServer((sock) => {
      sockets.add(sock);
      sock.on('data', () => undefined);
      sock.on('error', () => undefined);
      sock.on('close', () => sockets.delete(sock));
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    silentEndpoint = `http://127.0.0.1:${(silent.address() as { port: number }).port}`;
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((r) => silent.close(() => r()));
  });

  // (Without the timeout the first request waits for good: the test's own timeout fails it.)
  it(
    'fails each kind of request with STORE_UNAVAILABLE after the idle timeout',
    { timeout: 30_000 },
    async () => {
      const s = await openStore('s3://fake-bucket/p/', {
        endpoint: silentEndpoint,
        region: 'us-east-1',
        credentials: { accessKeyId: 'k', secretAccessKey: 's' },
        requestTimeoutMs: 300,
        maxAttempts: 2,
        retry: { baseDelayMs: 1 },
      });
      try {
        const ops: Array<[string, () => Promise<unknown>]> = [
          ['put', () => s.put('seg/1', Buffer.alloc(64 * 1024, 1), { ifNoneMatch: true })],
          [
            'list',
            async () => {
              for await (const page of s.list('seg/')) void page;
            },
          ],
          ['delete', () => s.delete(['seg/1'])],
          ['head', () => s.head('seg/1')],
          ['get', () => s.get('seg/1')],
        ];
        for (const [name, op] of ops) {
          const t0 = Date.now();
          await assert.rejects(op(), (e: unknown) => {
            assert.ok(isHyperError(e, 'STORE_UNAVAILABLE'), `${name}: ${String(e)}`);
            assert.match(e.message, /the connection was silent too long/, name);
            return true;
          });
          const ms = Date.now() - t0;
          // Two attempts of 300 ms each, and a little more: well under the 10 s a hang would take.
          assert.ok(ms >= 500 && ms < 10_000, `${name} failed after ${ms} ms`);
        }
      } finally {
        await s.close();
      }
    },
  );
});
