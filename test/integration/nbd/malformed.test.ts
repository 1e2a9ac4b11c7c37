import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { needTools } from '../../helpers/env.js';
import { memoryExport, run, startServer, type RunningServer } from '../../helpers/nbd.js';

const MiB = 1024 * 1024;

/** A hand-rolled client: sends whatever bytes a test wants and reads exact replies. */
class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  closed = false;
  constructor(readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake();
    });
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => undefined);
  }
  static async open(port: number): Promise<RawClient> {
    const sock = connect(port, '127.0.0.1');
    await new Promise<void>((res, rej) => sock.once('connect', res).once('error', rej));
    return new RawClient(sock);
  }
  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`closed after ${this.buf.length}/${n} bytes`);
      if (Date.now() > deadline) throw new Error('timed out');
      await new Promise<void>((res) => {
        this.waiters.push(res);
        setTimeout(res, 50);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
  /** Resolves true when the server closes the connection within the timeout. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.closed;
  }
  send(b: Buffer | number[]): void {
    this.sock.write(Buffer.isBuffer(b) ? b : Buffer.from(b));
  }
  async handshake(): Promise<void> {
    const g = await this.read(18);
    assert.equal(g.toString('latin1', 0, 8), 'NBDMAGIC');
    assert.equal(g.toString('latin1', 8, 16), 'IHAVEOPT');
    this.send(u32(3)); // fixed newstyle + no zeroes
  }
  async readOptionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    assert.equal(h.readBigUInt64BE(0), 0x3e889045565a9n);
    const data = await this.read(h.readUInt32BE(16));
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }
  /** GO on the default export; returns the size from INFO_EXPORT. */
  async go(name = ''): Promise<number> {
    this.send(optionFrame(7, goData(name)));
    let size = -1;
    for (;;) {
      const r = await this.readOptionReply();
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) size = Number(r.data.readBigUInt64BE(2));
      if (r.type === 1) return size;
      if (r.type >= 0x80000000)
        throw new Error(`GO refused: 0x${r.type.toString(16)} ${r.data.toString()}`);
    }
  }
  async simpleReply(): Promise<{ error: number; handle: bigint }> {
    const h = await this.read(16);
    assert.equal(h.readUInt32BE(0), 0x67446698);
    return { error: h.readUInt32BE(4), handle: h.readBigUInt64BE(8) };
  }
  close(): void {
    this.sock.destroy();
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}
function optionFrame(code: number, data: Buffer): Buffer {
  const h = Buffer.alloc(16);
  h.write('IHAVEOPT', 0, 'latin1');
  h.writeUInt32BE(code, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}
function goData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((x, i) => b.writeUInt16BE(x, 6 + n.length + 2 * i));
  return b;
}
function req(
  type: number,
  handle: bigint,
  offset: bigint,
  length: number,
  flags = 0,
  payload?: Buffer,
): Buffer {
  const b = Buffer.alloc(28);
  b.writeUInt32BE(0x25609513, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeBigUInt64BE(offset, 16);
  b.writeUInt32BE(length, 24);
  return payload === undefined ? b : Buffer.concat([b, payload]);
}

describe('malformed byte streams', () => {
  let s: RunningServer;
  const disk = memoryExport('disk', { size: 64 * MiB });
  before(async () => {
    s = await startServer([disk]);
  });
  after(() => s.close());

  it('contains every bad client while a good client keeps working', async (t) => {
    if (!needTools(t, 'qemu-io')) return;
    const port = s.port!;
    // The well-behaved client: writes and verifies patterns throughout.
    let stopGood = false;
    const good = (async () => {
      let rounds = 0;
      while (!stopGood || rounds < 3) {
        const p = (rounds % 200) + 1;
        const r = await run('qemu-io', [
          '-f',
          'raw',
          '-c',
          `write -P ${p} 32M 1M`,
          '-c',
          `read -P ${p} 32M 1M`,
          s.uri,
        ]);
        assert.equal(r.code, 0, r.stdout + r.stderr);
        assert.doesNotMatch(r.stdout, /verification failed/);
        rounds++;
      }
      return rounds;
    })();

    try {
      // 1. Garbage instead of client flags + options: closed.
      {
        const c = await RawClient.open(port);
        await c.read(18);
        c.send(randomBytes(64));
        assert.ok(await c.waitClosed(), 'garbage in negotiation closes');
      }
      // 2. Client flags without FIXED_NEWSTYLE: closed.
      {
        const c = await RawClient.open(port);
        await c.read(18);
        c.send(u32(0));
        assert.ok(await c.waitClosed());
      }
      // 3. Unknown option → ERR_UNSUP; malformed INFO/GO → ERR_INVALID; STRUCTURED_REPLY with
      //    data → ERR_INVALID; unknown export → ERR_UNKNOWN; oversized option → ERR_TOO_BIG;
      //    the session then still completes GO.
      {
        const c = await RawClient.open(port);
        await c.handshake();
        c.send(optionFrame(4242, Buffer.from('whatever payload')));
        assert.equal((await c.readOptionReply()).type, 0x80000001);
        c.send(optionFrame(6, Buffer.from([0, 0, 0, 50, 1, 2])));
        assert.equal((await c.readOptionReply()).type, 0x80000003);
        c.send(optionFrame(7, Buffer.concat([goData(''), Buffer.from([9])])));
        assert.equal((await c.readOptionReply()).type, 0x80000003);
        c.send(optionFrame(8, Buffer.from([1])));
        assert.equal((await c.readOptionReply()).type, 0x80000003);
        c.send(optionFrame(7, goData('missing')));
        assert.equal((await c.readOptionReply()).type, 0x80000006);
        c.send(optionFrame(9999, Buffer.alloc(200 * 1024)));
        assert.equal((await c.readOptionReply()).type, 0x80000009);
        assert.equal(await c.go(), 64 * MiB);
        // 4. Unknown command → EINVAL, and the stream continues.
        c.send(req(99, 7n, 0n, 0));
        assert.deepEqual(await c.simpleReply(), { error: 22, handle: 7n });
        // 5. A READ of 4 GiB - 1 → EOVERFLOW, connection alive.
        c.send(req(0, 8n, 0n, 0xffffffff));
        assert.deepEqual(await c.simpleReply(), { error: 75, handle: 8n });
        // 6. Offset beyond 2^63: EINVAL, nothing rounded.
        c.send(req(0, 9n, 0xfffffffffffffe00n, 512));
        assert.deepEqual(await c.simpleReply(), { error: 22, handle: 9n });
        // 7. A refused WRITE (past the end) still consumes its payload: the next request parses.
        c.send(req(1, 10n, BigInt(64 * MiB), 4096, 0, Buffer.alloc(4096, 0x25)));
        c.send(req(0, 11n, 0n, 16));
        assert.deepEqual(await c.simpleReply(), { error: 28, handle: 10n });
        assert.deepEqual(await c.simpleReply(), { error: 0, handle: 11n });
        await c.read(16);
        // 8. A WRITE with a 4 GiB payload cannot be buffered: the connection is closed.
        c.send(req(1, 12n, 0n, 0xffffffff));
        assert.ok(await c.waitClosed(), '4 GiB WRITE closes');
      }
      // 9. Garbage right after GO in the same packet: GO is answered, then closed.
      {
        const c = await RawClient.open(port);
        await c.handshake();
        c.send(Buffer.concat([optionFrame(7, goData('')), randomBytes(100)]));
        let r;
        do r = await c.readOptionReply();
        while (r.type !== 1);
        assert.ok(await c.waitClosed());
      }
      // 10. Options after GO are not requests: closed.
      {
        const c = await RawClient.open(port);
        await c.handshake();
        await c.go();
        c.send(optionFrame(3, Buffer.alloc(0)));
        assert.ok(await c.waitClosed());
      }
      // 11. Truncated request then hang-up; and many clients dropping mid-handshake.
      {
        const c = await RawClient.open(port);
        await c.handshake();
        await c.go();
        c.send(req(0, 1n, 0n, 512).subarray(0, 13));
        c.close();
        for (let i = 0; i < 20; i++) {
          const d = await RawClient.open(port);
          if (i % 2) d.send(u32(3));
          d.close();
        }
      }
      // 12. Pipelined requests with the DISC: everything before DISC is answered, then closed.
      {
        const c = await RawClient.open(port);
        await c.handshake();
        await c.go();
        c.send(
          Buffer.concat([
            req(0, 1n, 0n, 4096),
            req(3, 2n, 0n, 0),
            req(2, 3n, 0n, 0),
            req(0, 4n, 0n, 4096),
          ]),
        );
        assert.equal((await c.simpleReply()).handle, 1n);
        await c.read(4096);
        assert.deepEqual(await c.simpleReply(), { error: 0, handle: 2n });
        assert.ok(await c.waitClosed());
      }
    } finally {
      stopGood = true;
    }
    assert.ok((await good) >= 3);
    // The server still serves, and every bad connection is gone.
    const info = await run('nbdinfo', ['--size', s.uri]);
    assert.equal(info.stdout.trim(), String(64 * MiB));
    const deadline = Date.now() + 5000;
    while (s.server.connections > 0 && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 50));
    assert.equal(s.server.connections, 0);
    assert.ok(s.logs.some((l) => l.level === 'warn' && /protocol error/.test(l.msg)));
  });
});
