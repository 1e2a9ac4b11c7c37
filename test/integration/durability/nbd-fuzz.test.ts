/**
 * NBD fuzzing for a fixed time budget (HYPER_FUZZ_SECONDS, default 8): many connections send
 * random and mutated byte streams — garbage during negotiation, random options with huge
 * lengths, valid handshakes followed by mutated request headers, 4 GiB payload lengths,
 * option frames after GO — while a well-behaved client (qemu-io) writes and verifies data.
 * The server must not crash, must keep serving the good client, and must not grow without
 * bound.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { needTools } from '../../helpers/env.js';
import { memoryExport, run, startServer } from '../../helpers/nbd.js';
import { RawClient, goData, optionFrame, req, u32 } from '../../helpers/raw-nbd-client.js';
import { rng } from '../../helpers/rng.js';

const SECONDS = Number(process.env.HYPER_FUZZ_SECONDS ?? 8);
const MiB = 1024 * 1024;

/** One hostile connection, chosen by `kind`; never throws. */
async function attack(port: number, rand: () => number): Promise<void> {
  const int = (n: number): number => Math.floor(rand() * n);
  let c: RawClient | undefined;
  try {
    c = await RawClient.open(port);
    await c.read(18, 2000);
    const kind = int(6);
    if (kind === 0) {
      c.send(randomBytes(1 + int(200)));
    } else if (kind === 1) {
      // Random options, some with enormous declared lengths.
      c.send(u32(3));
      for (let i = 0; i < 1 + int(5); i++) {
        const data = randomBytes(int(64));
        const frame = optionFrame(int(16) === 0 ? 0xffffffff : int(20), data);
        if (int(3) === 0) frame.writeUInt32BE(int(2) ? 0xffffffff : 0x7fffffff, 12);
        c.send(frame);
      }
    } else {
      c.send(u32(3));
      c.send(optionFrame(7, goData('')));
      await new Promise((r) => setTimeout(r, 5));
      const type = int(12);
      const handle = BigInt(int(1e9));
      const offset = int(4) === 0 ? 0xfffffffffffff000n : BigInt(int(64 * MiB));
      const length = kind === 2 ? 0xffffffff : int(2 * 4096);
      const frame = req(type, handle, offset, length, int(4) === 0 ? int(0x10000) : 0);
      if (kind === 3) {
        for (let m = 0; m < 1 + int(3); m++) frame.writeUInt8(int(256), int(frame.length));
      }
      if (kind === 4) {
        // An option frame after GO: the transmission phase sees a bad magic.
        c.send(optionFrame(1, Buffer.from('x')));
      } else {
        c.send(frame);
        if (type === 1) c.send(randomBytes(Math.min(length, int(8192))));
        if (kind === 5) c.send(randomBytes(int(300))); // trailing garbage
      }
    }
    await new Promise((r) => setTimeout(r, int(50)));
  } catch {
    // The server closing on us is a fine answer.
  } finally {
    c?.close();
  }
}

describe('NBD fuzzing', () => {
  it(`survives ${SECONDS} s of hostile clients and keeps serving a good one`, async (t) => {
    if (!needTools(t, 'qemu-io', 'nbdinfo')) return;
    const s = await startServer([memoryExport('', { size: 64 * MiB })]);
    t.after(() => s.close());
    const port = s.port as number;
    const rssBefore = process.memoryUsage().rss;
    const deadline = Date.now() + SECONDS * 1000;
    let goodRounds = 0;
    const good = (async () => {
      while (Date.now() < deadline || goodRounds < 3) {
        const p = (goodRounds % 250) + 1;
        const r = await run('qemu-io', [
          '-f',
          'raw',
          '-c',
          `write -P ${p} 8M 256k`,
          '-c',
          `read -P ${p} 8M 256k`,
          s.uri,
        ]);
        assert.equal(r.code, 0, r.stdout + r.stderr);
        assert.doesNotMatch(r.stdout, /verification failed|Pattern verification failed/);
        goodRounds++;
      }
    })();
    let attacks = 0;
    const workers = Array.from({ length: 8 }, async (_, w) => {
      const rand = rng(1000 + w);
      while (Date.now() < deadline) {
        await attack(port, rand);
        attacks++;
      }
    });
    await Promise.all([good, ...workers]);
    assert.ok(attacks > 100, `only ${attacks} hostile connections were made`);
    assert.ok(goodRounds >= 3);
    // Still serving, and nothing accumulated: every hostile connection is gone.
    const info = await run('nbdinfo', ['--size', s.uri]);
    assert.equal(info.code, 0, info.stderr);
    assert.equal(info.stdout.trim(), String(64 * MiB));
    const growth = process.memoryUsage().rss - rssBefore;
    assert.ok(growth < 512 * MiB, `resident memory grew by ${Math.round(growth / MiB)} MiB`);
  });
});
