import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { needTools } from '../../helpers/env.js';
import { memoryExport, run, startServer, type RunningServer } from '../../helpers/nbd.js';
import { RawClient, goData, optionFrame, req, u32 } from '../../helpers/raw-nbd-client.js';

const MiB = 1024 * 1024;

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

describe('negotiation timeout', () => {
  it('drops a client that connects and never negotiates, and only that one', async () => {
    const s = await startServer([memoryExport('d', { size: MiB })], { negotiationTimeoutMs: 300 });
    try {
      const idle = await RawClient.open(s.port!);
      await idle.read(18);
      const good = await RawClient.open(s.port!);
      await good.handshake();
      assert.equal(await good.go(), MiB);
      assert.ok(await idle.waitClosed(3000), 'idle client dropped');
      await new Promise((r) => setTimeout(r, 400));
      good.send(req(0, 1n, 0n, 512));
      assert.deepEqual(await good.simpleReply(), { error: 0, handle: 1n });
      good.close();
    } finally {
      await s.close();
    }
  });
});
