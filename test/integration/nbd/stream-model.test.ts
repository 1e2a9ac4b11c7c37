/**
 * Pipelined WRITE streams against a byte model, seeded: the server reads connections into
 * memory it picks (src/nbd/input.ts: a reused scratch buffer, or the rest of a large payload
 * read straight into place), so a payload kept by reference into the scratch buffer, a
 * recycled payload buffer given back before the device's write settled, or a payload handed
 * over to a device and then touched again would all show here as wrong bytes.
 *
 * Each seed sends phases of non-overlapping writes of mixed sizes (512 B to 1 MiB) plus a
 * FLUSH, as one byte stream cut into random pieces sent with pauses between some of them,
 * through small in-flight limits so the session throttles mid-chunk. Devices complete writes
 * after random delays. Then the whole export is read back and compared with the model.
 */
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { WriteFlags } from '../../../src/nbd/device.js';
import { WrappedMemoryDevice, deviceExport, startServer } from '../../helpers/nbd.js';
import { RawClient, req } from '../../helpers/raw-nbd-client.js';
import { rng } from '../../helpers/rng.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 16 * MiB;
const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;
const CMD_FLUSH = 3;

/** A memory device whose writes land after a random delay (the payload must stay intact). */
class SlowDevice extends WrappedMemoryDevice {
  constructor(
    size: number,
    private readonly rand: () => number,
  ) {
    super(size);
  }
  override async write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    const r = this.rand();
    if (r < 0.3) await sleep(Math.floor(r * 10));
    else if (r < 0.7) await new Promise((res) => setImmediate(res));
    return this.inner.write(offset, data, flags);
  }
}

/** A device that keeps what it is handed (as a replication queue does) and checks it later. */
class KeepingDevice extends SlowDevice {
  private readonly lent = new Set<Buffer>();
  readonly kept: { data: Buffer; copy: Buffer }[] = [];
  payloadBuffer(length: number): Buffer {
    const b = Buffer.alloc(length, 0xa5);
    this.lent.add(b);
    return b;
  }
  writeOwned(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    assert.ok(this.lent.delete(data), 'writeOwned got a buffer payloadBuffer() did not lend');
    this.kept.push({ data, copy: Buffer.from(data) });
    return this.write(offset, data, flags);
  }
}

interface Sent {
  type: number;
  length: number;
}

/** Send `stream` cut into random pieces, pausing now and then so the server sees each cut. */
async function sendCut(c: RawClient, stream: Buffer, rand: () => number): Promise<void> {
  for (let at = 0; at < stream.length;) {
    const r = rand();
    const n = Math.min(
      stream.length - at,
      1 + Math.floor(r < 0.3 ? rand() * 64 : rand() * 300 * KiB),
    );
    c.send(stream.subarray(at, at + n));
    at += n;
    if (rand() < 0.3) await sleep(1);
  }
}

/** Read one reply per request sent (any order); returns the data of reads by handle. */
async function replies(c: RawClient, sent: Map<bigint, Sent>): Promise<Map<bigint, Buffer>> {
  const data = new Map<bigint, Buffer>();
  for (let left = sent.size; left > 0; left--) {
    const r = await c.simpleReply();
    assert.equal(r.error, 0, `request ${r.handle} failed with errno ${r.error}`);
    const s = sent.get(r.handle);
    assert.ok(s !== undefined, `reply for unknown handle ${r.handle}`);
    if (s.type === CMD_READ) data.set(r.handle, Buffer.from(await c.read(s.length, 20_000)));
    sent.delete(r.handle);
  }
  return data;
}

/**
 * Small writes, and large ones mostly of a few sizes (recycled buffers are reused by exact
 * length, so a buffer given back too early would be taken by the next write of its size).
 */
function writeSize(rand: () => number): number {
  const r = rand();
  if (r < 0.3) return (1 + Math.floor(rand() * 8)) * 512; // up to 4 KiB
  if (r < 0.8) return [64, 128, 256, 1024][Math.floor(rand() * 4)]! * KiB;
  return (32 + Math.floor(rand() * 2016)) * 512; // 16 KiB–1 MiB
}

async function run(seed: number, device: SlowDevice): Promise<void> {
  const rand = rng(seed);
  const s = await startServer([deviceExport('m', device)], {
    maxInflight: 6,
    maxInflightBytes: 2 * MiB,
    maxOutputBytes: 2 * MiB,
  });
  const c = await RawClient.open(s.port!);
  const model = Buffer.alloc(SIZE);
  let handle = 1n;
  try {
    await c.handshake();
    assert.equal(await c.go('m'), SIZE);
    for (let phase = 0; phase < 6; phase++) {
      // Non-overlapping writes (their order against each other is not defined) and a FLUSH.
      const taken: [number, number][] = [];
      const frames: Buffer[] = [];
      const sent = new Map<bigint, Sent>();
      for (let i = 0; i < 24; i++) {
        const length = writeSize(rand);
        const offset = Math.floor(rand() * ((SIZE - length) / 512)) * 512;
        if (taken.some(([o, l]) => offset < o + l && o < offset + length)) continue;
        taken.push([offset, length]);
        const payload = Buffer.alloc(length);
        for (let k = 0; k < length; k += 4)
          payload.writeUInt32LE((seed * 7919 + phase * 131 + i * 17 + k) >>> 0, k);
        payload.copy(model, offset);
        frames.push(req(CMD_WRITE, handle, BigInt(offset), length, 0, payload));
        sent.set(handle++, { type: CMD_WRITE, length });
      }
      frames.push(req(CMD_FLUSH, handle, 0n, 0));
      sent.set(handle++, { type: CMD_FLUSH, length: 0 });
      const [, got] = await Promise.all([
        sendCut(c, Buffer.concat(frames), rand),
        replies(c, sent),
      ]);
      assert.equal(got.size, 0);
    }
    // Read everything back in pieces of random sizes, pipelined.
    const reads = new Map<bigint, Sent>();
    const at = new Map<bigint, number>();
    const frames: Buffer[] = [];
    for (let off = 0; off < SIZE;) {
      const length = Math.min(SIZE - off, (1 + Math.floor(rand() * 1024)) * 512);
      frames.push(req(CMD_READ, handle, BigInt(off), length));
      reads.set(handle, { type: CMD_READ, length });
      at.set(handle++, off);
      off += length;
    }
    const [, data] = await Promise.all([
      sendCut(c, Buffer.concat(frames), rand),
      replies(c, reads),
    ]);
    for (const [h, b] of data) {
      const off = at.get(h)!;
      assert.ok(
        b.equals(model.subarray(off, off + b.length)),
        `seed ${seed}: bytes at ${off}+${b.length}`,
      );
    }
  } finally {
    c.close();
    await s.close();
  }
}

describe('pipelined writes against a byte model', () => {
  for (const seed of [1, 2, 3]) {
    it(`device that copies (payload buffers recycled by the session), seed ${seed}`, async () => {
      const d = new SlowDevice(SIZE, rng(seed + 100));
      await run(seed, d);
    });
    it(`device that keeps its payloads (payloadBuffer/writeOwned), seed ${seed}`, async () => {
      const d = new KeepingDevice(SIZE, rng(seed + 200));
      await run(seed, d);
      assert.ok(d.kept.length > 100, `${d.kept.length} payloads handed over`);
      for (const { data, copy } of d.kept)
        assert.ok(data.equals(copy), 'a handed-over payload changed');
    });
  }
});

describe('connections that end leave nothing behind', () => {
  it('payload buffers are one bounded pool for the server; a closed connection keeps no timer', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    /** The server's sessions while connected (weakly: they must go once closed). */
    const ended: WeakRef<object>[] = [];
    const sessions = (): Set<object> => (s.server as unknown as { sessions: Set<object> }).sessions;
    const device = new SlowDevice(SIZE, rng(7));
    const s = await startServer([deviceExport('m', device)]);
    try {
      const model = Buffer.alloc(SIZE);
      // Rounds of four connections at once (as nbdcopy opens), each writing its own quarter
      // in 1 MiB and 256 KiB pieces, then ending with DISC.
      for (let round = 0; round < 3; round++) {
        await Promise.all(
          [0, 1, 2, 3].map(async (q) => {
            const c = await RawClient.open(s.port!);
            await c.handshake();
            assert.equal(await c.go('m'), SIZE);
            for (const x of sessions())
              if (!ended.some((w) => w.deref() === x)) ended.push(new WeakRef(x));
            const sent = new Map<bigint, Sent>();
            const frames: Buffer[] = [];
            let handle = 1n;
            for (let off = (q * SIZE) / 4; off < ((q + 1) * SIZE) / 4;) {
              const length = (off / MiB) % 2 === 0 ? MiB : 256 * KiB;
              const payload = Buffer.alloc(length, (round * 4 + q + off / (256 * KiB)) & 0xff);
              payload.copy(model, off);
              frames.push(req(CMD_WRITE, handle, BigInt(off), length, 0, payload));
              sent.set(handle++, { type: CMD_WRITE, length });
              off += length;
            }
            c.send(Buffer.concat(frames));
            await replies(c, sent);
            c.send(req(CMD_DISC, handle, 0n, 0));
            assert.ok(await c.waitClosed(), 'the server ends the connection after DISC');
          }),
        );
        for (let i = 0; i < 100 && s.server.connections > 0; i++) await sleep(10);
        assert.equal(s.server.connections, 0);
        // Nothing keeps an ended connection's session (a timer used to, for 5 s more).
        // (gc() after a turn of the loop: deref() keeps its target alive until the turn ends.)
        for (let i = 0; i < 20; i++) {
          await sleep(10);
          gc();
          if (ended.every((w) => w.deref() === undefined)) break;
        }
        assert.ok(
          ended.every((w) => w.deref() === undefined),
          `round ${round}: sessions of closed connections still reachable`,
        );
        ended.length = 0;
        assert.ok(s.server.recycledBytes > 0, 'payload buffers were recycled');
        assert.ok(s.server.recycledBytes <= 32 * MiB, `${s.server.recycledBytes} bytes kept`);
      }
      const got = Buffer.alloc(SIZE);
      await device.read(0, SIZE).then((b) => b.copy(got));
      assert.ok(got.equals(model), 'every write landed intact');
    } finally {
      await s.close();
    }
  });
});
