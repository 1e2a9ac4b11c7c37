import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { connect, createServer, type Socket } from 'node:net';
import { describe, it } from 'node:test';
import { adopt, RecycledBuffers } from '../../../src/nbd/input.js';

function listen(
  onSocket: (s: Socket) => void,
): Promise<{ port: number; close: () => Promise<void> }> {
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, onSocket);
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        port: (server.address() as { port: number }).port,
        close: () => new Promise((r) => server.close(() => r())),
      }),
    ),
  );
}

describe('adopt', () => {
  it('reads an accepted socket into the memory chosen for each read, then sees the end', async () => {
    const total = 3 * 1024 * 1024 + 17;
    const sent = Buffer.alloc(total);
    for (let i = 0; i < total; i++) sent[i] = (i * 131 + (i >> 12)) & 255;
    const scratch = Buffer.alloc(4096);
    const direct = Buffer.alloc(256 * 1024);
    const got = createHash('sha256');
    let received = 0;
    let reads = 0;
    let directReads = 0;
    let adopted: Socket | undefined;
    const ended = new Promise<void>((resolveEnd, reject) => {
      void listen((accepted) => {
        adopted = adopt(accepted, {
          // Every other read goes into the big buffer, as a payload read into place would.
          next: () => (reads % 2 === 0 ? scratch : direct),
          read: (n, buf) => {
            reads++;
            if (buf === direct) directReads++;
            else assert.equal(buf, scratch);
            got.update(buf.subarray(0, n));
            received += n;
          },
        });
        if (adopted === undefined) {
          reject(new Error('adopt refused a paused accepted socket'));
          return;
        }
        assert.equal(accepted.destroyed, true, 'the husk is closed');
        adopted.on('end', () => {
          // Half-open: the reply still goes out after the client's end.
          adopted!.end('bye');
          resolveEnd();
        });
      }).then(({ port, close }) => {
        const c = connect(port, '127.0.0.1', () => c.end(sent));
        let reply = '';
        c.on('data', (d: Buffer) => (reply += d.toString()));
        c.on('close', () => {
          void close().then(() => assert.equal(reply, 'bye'));
        });
      });
    });
    await ended;
    assert.equal(received, total);
    assert.equal(got.digest('hex'), createHash('sha256').update(sent).digest('hex'));
    assert.ok(directReads > 0 && reads > directReads, `${reads} reads, ${directReads} direct`);
    adopted?.destroy();
  });

  it('leaves a socket that has started reading alone', async () => {
    await new Promise<void>((resolve) => {
      void listen((accepted) => {
        accepted.resume();
        const r = adopt(accepted, { next: () => Buffer.alloc(16), read: () => undefined });
        assert.equal(r, undefined);
        assert.equal(accepted.destroyed, false);
        accepted.destroy();
        resolve();
      }).then(({ port, close }) => {
        const c = connect(port, '127.0.0.1');
        c.on('error', () => undefined);
        c.on('close', () => void close());
      });
    });
  });
});

describe('RecycledBuffers', () => {
  it('reuses buffers of the same length, within its byte limit, and never small ones', () => {
    const r = new RecycledBuffers(1024, 3000);
    const a = r.take(1024);
    const b = r.take(1024);
    const c = r.take(1024);
    r.give(a);
    r.give(b);
    r.give(c); // over the 3000-byte limit: dropped
    assert.equal(r.take(1024), b);
    assert.equal(r.take(1024), a);
    assert.notEqual(r.take(1024), c);
    const small = r.take(100);
    r.give(small);
    assert.notEqual(r.take(100), small);
    assert.notEqual(r.take(2048), a);
  });
});
