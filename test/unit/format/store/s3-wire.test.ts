// The plain-HTTP GET client (s3-wire.ts) against a scripted TCP server on loopback: bodies
// read into the caller's buffer, every framing (Content-Length, chunked, to the end of the
// connection) with the response cut at random places, kept connections reused and replaced
// when the server closed them, failures with the codes the store translates.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { WirePool, type WirePoolOptions } from '../../../../src/format/store/s3-wire.js';
import { rng } from '../../../helpers/rng.js';

/** What the server does with one request on a connection: write pieces, then maybe close. */
type Script = (sock: net.Socket, path: string) => Promise<void> | void;

let server: net.Server;
let port = 0;
let script: Script = () => undefined;
let connections = 0;
let open = 0;
let maxOpen = 0;
const sockets = new Set<net.Socket>();

before(async () => {
  server = net.createServer((sock) => {
    connections++;
    open++;
    maxOpen = Math.max(maxOpen, open);
    sockets.add(sock);
    sock.on('close', () => {
      open--;
      sockets.delete(sock);
    });
    sock.on('error', () => undefined);
    let buf = '';
    sock.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      for (;;) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.slice(0, end);
        buf = buf.slice(end + 4);
        const path = head.split(' ')[1] ?? '';
        void script(sock, path);
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as net.AddressInfo).port;
});

after(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});

function reset(): void {
  connections = 0;
  maxOpen = open;
}

function pool(o: Partial<WirePoolOptions> = {}): WirePool {
  return new WirePool({
    host: '127.0.0.1',
    port,
    maxSockets: 8,
    connectionTimeoutMs: 2000,
    requestTimeoutMs: 5000,
    ...o,
  });
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Write `data` in pieces cut at the given random points, yielding between them. */
async function writeCut(sock: net.Socket, data: Buffer, rand: () => number): Promise<void> {
  let at = 0;
  while (at < data.length) {
    const n =
      rand() < 0.3 ? 1 + Math.floor(rand() * 3) : 1 + Math.floor(rand() * (data.length - at));
    sock.write(data.subarray(at, at + n));
    at += n;
    await tick();
  }
}

function lengthResponse(body: Buffer, status = 200, extra = ''): Buffer {
  return Buffer.concat([
    Buffer.from(
      `HTTP/1.1 ${status} X\r\nContent-Length: ${body.length}\r\nETag: "e1"\r\n${extra}\r\n`,
      'latin1',
    ),
    body,
  ]);
}

function chunkedResponse(body: Buffer, rand: () => number): Buffer {
  const parts: Buffer[] = [
    Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n', 'latin1'),
  ];
  let at = 0;
  while (at < body.length) {
    const n = 1 + Math.floor(rand() * Math.min(5000, body.length - at));
    const ext = rand() < 0.3 ? ';name=value' : '';
    parts.push(Buffer.from(`${n.toString(16)}${ext}\r\n`, 'latin1'));
    parts.push(body.subarray(at, at + n), Buffer.from('\r\n'));
    at += n;
  }
  parts.push(Buffer.from(`0\r\n${rand() < 0.5 ? 'X-Trailer: t\r\n' : ''}\r\n`, 'latin1'));
  return Buffer.concat(parts);
}

function randomBody(rand: () => number, max: number): Buffer {
  const b = Buffer.alloc(Math.floor(rand() * max));
  for (let i = 0; i < b.length; i++) b[i] = Math.floor(rand() * 256);
  return b;
}

describe('s3-wire: plain-HTTP GETs', () => {
  it('reads a Content-Length body into the buffer given, and reuses the connection', async () => {
    reset();
    const body = Buffer.from('0123456789abcdef'.repeat(4096));
    script = (sock) =>
      void sock.write(lengthResponse(body, 206, 'Content-Range: bytes 0-65535/1000000\r\n'));
    const p = pool();
    const into = Buffer.alloc(body.length);
    const r1 = await p.get({ path: '/b/k', headers: { host: 'h' }, into });
    assert.equal(r1.status, 206);
    assert.equal(r1.body, into, 'the body was read into the buffer given');
    assert.ok(into.equals(body));
    assert.equal(r1.headers.etag, '"e1"');
    assert.equal(r1.headers['content-range'], 'bytes 0-65535/1000000');
    // Another length than the buffer's: a buffer of its own.
    const r2 = await p.get({ path: '/b/k', headers: {}, into: Buffer.alloc(10) });
    assert.equal(r2.body.length, body.length);
    assert.ok(r2.body.equals(body));
    assert.equal(connections, 1, 'one kept connection served both');
    p.close();
  });

  it('seeded: every framing, cut anywhere, gives the exact body', async () => {
    for (let seed = 1; seed <= 60; seed++) {
      const rand = rng(seed);
      reset();
      const bodies: Buffer[] = [];
      script = async (sock) => {
        const body = randomBody(rand, 70_000);
        bodies.push(body);
        const kind = Math.floor(rand() * 3);
        if (kind === 0) await writeCut(sock, lengthResponse(body), rand);
        else if (kind === 1) await writeCut(sock, chunkedResponse(body, rand), rand);
        else {
          // HTTP/1.0-style: no length, the body runs to the end of the connection.
          await writeCut(
            sock,
            Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n'), body]),
            rand,
          );
          sock.end();
        }
      };
      const p = pool({ maxSockets: 1 + Math.floor(rand() * 3) });
      const n = 1 + Math.floor(rand() * 6);
      const got = await Promise.all(
        Array.from({ length: n }, () => p.get({ path: '/b/k', headers: {} })),
      );
      // Responses go out in the order requests arrive on each connection; compare as sets.
      const want = new Set(bodies.map((b) => b.toString('base64')));
      for (const r of got) {
        assert.equal(r.status, 200, `seed ${seed}`);
        assert.ok(want.has(r.body.toString('base64')), `seed ${seed}: a body matches`);
      }
      assert.equal(bodies.length, n, `seed ${seed}: one response per request`);
      p.close();
    }
  });

  it('a kept connection the server closed is replaced, the GET sent again', async () => {
    reset();
    script = (sock) => {
      sock.write(lengthResponse(Buffer.from('hello')));
    };
    const p = pool();
    assert.equal((await p.get({ path: '/a', headers: {} })).body.toString(), 'hello');
    // The server drops its side of the idle connection; the next GET goes to a new one.
    for (const s of sockets) s.destroy();
    await new Promise((r) => setTimeout(r, 20));
    assert.equal((await p.get({ path: '/a', headers: {} })).body.toString(), 'hello');
    assert.equal(connections, 2);
    // Closed between the request and any answer, on a kept connection: sent again too.
    let first = true;
    script = (sock) => {
      if (first) {
        first = false;
        sock.destroy();
      } else sock.write(lengthResponse(Buffer.from('again')));
    };
    assert.equal((await p.get({ path: '/a', headers: {} })).body.toString(), 'again');
    assert.equal(connections, 3);
    p.close();
  });

  it('a body cut short fails with ECONNRESET, never a short body', async () => {
    reset();
    script = (sock) => {
      sock.write('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n');
      sock.end(Buffer.alloc(400, 1));
    };
    const p = pool();
    await assert.rejects(p.get({ path: '/a', headers: {} }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'ECONNRESET');
      assert.match(e.message, /400 of 1000 body bytes/);
      return true;
    });
    // A fresh connection that closes before answering is not retried (nothing was kept).
    script = (sock) => void sock.destroy();
    await assert.rejects(p.get({ path: '/a', headers: {} }), { code: 'ECONNRESET' });
    p.close();
  });

  it('errors keep their status and body; interim 100 answers are skipped', async () => {
    script = (sock, path) => {
      if (path === '/missing')
        sock.write(lengthResponse(Buffer.from('<Error><Code>NoSuchKey</Code></Error>'), 404));
      else
        sock.write(`HTTP/1.1 100 Continue\r\n\r\n${lengthResponse(Buffer.from('ok')).toString()}`);
    };
    const p = pool();
    const miss = await p.get({ path: '/missing', headers: {}, into: Buffer.alloc(37) });
    assert.equal(miss.status, 404);
    assert.match(miss.body.toString(), /NoSuchKey/);
    const ok = await p.get({ path: '/x', headers: {} });
    assert.equal(ok.status, 200);
    assert.equal(ok.body.toString(), 'ok');
    p.close();
  });

  it('at most maxSockets connections; the others wait their turn', async () => {
    reset();
    script = async (sock) => {
      await new Promise((r) => setTimeout(r, 5));
      sock.write(lengthResponse(Buffer.from('x')));
    };
    const p = pool({ maxSockets: 2 });
    const got = await Promise.all(
      Array.from({ length: 9 }, () => p.get({ path: '/a', headers: {} })),
    );
    assert.equal(got.length, 9);
    assert.ok(got.every((r) => r.body.toString() === 'x'));
    assert.equal(connections, 2);
    assert.ok(maxOpen <= 2, `at most 2 connections open (saw ${maxOpen})`);
    p.close();
  });

  it('abort, request timeout and a head too large fail the request', async () => {
    script = () => undefined; // never answers
    const p = pool({ maxSockets: 1, requestTimeoutMs: 100 });
    const ac = new AbortController();
    const inFlight = p.get({ path: '/a', headers: {}, signal: ac.signal });
    const ac2 = new AbortController();
    const waiting = p.get({ path: '/b', headers: {}, signal: ac2.signal });
    ac2.abort();
    await assert.rejects(waiting, { name: 'AbortError' });
    ac.abort();
    await assert.rejects(inFlight, { name: 'AbortError' });
    await assert.rejects(p.get({ path: '/c', headers: {} }), { code: 'ETIMEDOUT' });
    script = (sock) => void sock.write(`HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(20000)}\r\n\r\n`);
    await assert.rejects(p.get({ path: '/d', headers: {} }), { code: 'EPROTO' });
    p.close();
    await assert.rejects(p.get({ path: '/e', headers: {} }), { code: 'ECONNRESET' });
  });
});
