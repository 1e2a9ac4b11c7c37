import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BlockDevice, WriteFlags } from '../../../src/nbd/device.js';
import { MemoryDevice } from '../../../src/nbd/testing/memory-device.js';
import { WrappedMemoryDevice, deviceExport, startServer } from '../../helpers/nbd.js';
import { RawClient, req } from '../../helpers/raw-nbd-client.js';

const MiB = 1024 * 1024;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A device whose reads take `delayFor(offset)` ms and return fresh copies; failures on demand. */
class TestDevice extends WrappedMemoryDevice {
  delayFor: (offset: number) => number = () => 0;
  failWith: ((offset: number) => unknown) | undefined;
  override async read(offset: number, length: number): Promise<Buffer> {
    const d = this.delayFor(offset);
    if (d > 0) await sleep(d);
    const f = this.failWith?.(offset);
    if (f !== undefined) throw f;
    return Buffer.from(await this.inner.read(offset, length));
  }
  override async write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
    const f = this.failWith?.(offset);
    if (f !== undefined) throw f;
    return this.inner.write(offset, data, flags);
  }
}

describe('transmission', () => {
  it('answers requests as they complete, not in the order sent', async () => {
    const dev = new TestDevice(16 * MiB);
    dev.inner.writeSync(0, Buffer.alloc(4096, 0xaa));
    dev.inner.writeSync(MiB, Buffer.alloc(4096, 0xbb));
    dev.delayFor = (o) => (o === 0 ? 300 : 0);
    const s = await startServer([deviceExport('d', dev)]);
    const c = await RawClient.open(s.port!);
    try {
      await c.handshake();
      await c.go();
      c.send(Buffer.concat([req(0, 1n, 0n, 4096), req(0, 2n, BigInt(MiB), 4096)]));
      const first = await c.simpleReply();
      assert.deepEqual(first, { error: 0, handle: 2n });
      assert.ok((await c.read(4096)).every((b) => b === 0xbb));
      const second = await c.simpleReply();
      assert.deepEqual(second, { error: 0, handle: 1n });
      assert.ok((await c.read(4096)).every((b) => b === 0xaa));
    } finally {
      c.close();
      await s.close();
    }
  });

  it('sends the pieces of a scatter read in order; a wrong total is an error reply', async () => {
    const dev = new TestDevice(4 * MiB);
    const ref = Buffer.alloc(4 * MiB);
    for (let i = 0; i < ref.length; i += 4) ref.writeUInt32LE((i * 2654435761) >>> 0, i);
    dev.inner.writeSync(0, ref);
    let seed = 7;
    const next = (): number => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    const scatter = dev as TestDevice & { readv(o: number, l: number): Promise<Buffer[]> };
    scatter.readv = async (offset: number, length: number) => {
      if (length === 4096 * 3) return [ref.subarray(offset, offset + 100)];
      const pieces: Buffer[] = [];
      for (let at = 0; at < length;) {
        const n = Math.min(length - at, 1 + Math.floor(next() * 70000));
        pieces.push(ref.subarray(offset + at, offset + at + n));
        at += n;
      }
      await sleep(Math.floor(next() * 3));
      return pieces;
    };
    const s = await startServer([deviceExport('d', dev)]);
    const c = await RawClient.open(s.port!);
    try {
      await c.handshake();
      await c.go();
      const reads = Array.from({ length: 20 }, (_, k) => ({
        handle: BigInt(k + 1),
        offset: Math.floor(next() * 1000) * 4096,
        length: (1 + Math.floor(next() * 64)) * 4096,
      })).filter((r) => r.length !== 4096 * 3);
      for (const r of reads) c.send(req(0, r.handle, BigInt(r.offset), r.length));
      for (let k = 0; k < reads.length; k++) {
        const reply = await c.simpleReply();
        assert.equal(reply.error, 0);
        const r = reads.find((x) => x.handle === reply.handle)!;
        const got = await c.read(r.length);
        assert.ok(got.equals(ref.subarray(r.offset, r.offset + r.length)), `read ${r.handle}`);
      }
      // Pieces that do not add up to the length asked: EIO, and the connection goes on.
      c.send(req(0, 99n, 0n, 4096 * 3));
      const bad = await c.simpleReply();
      assert.deepEqual(bad, { error: 5, handle: 99n });
      c.send(req(0, 100n, 4096n, 4096));
      assert.deepEqual(await c.simpleReply(), { error: 0, handle: 100n });
      assert.ok((await c.read(4096)).equals(ref.subarray(4096, 8192)));
    } finally {
      c.close();
      await s.close();
    }
  });

  it('gives a read buffer back to the device only once the socket is done with it', async () => {
    const dev = new TestDevice(64 * MiB);
    const ref = Buffer.alloc(64 * MiB);
    for (let i = 0; i < ref.length; i += 4) ref.writeUInt32LE((i * 2654435761) >>> 0, i);
    dev.inner.writeSync(0, ref);
    // The device scribbles over a buffer as soon as it is given back: a buffer given back
    // before its bytes left would reach the client scribbled.
    const lent = new Set<Buffer>();
    let released = 0;
    const lending = dev as TestDevice & {
      readv(o: number, l: number): Promise<Buffer[]>;
      release(b: Buffer): void;
    };
    lending.readv = async (offset: number, length: number) => {
      const b = Buffer.from(ref.subarray(offset, offset + length));
      lent.add(b);
      // Half the reads in two pieces: each piece is given back on its own.
      if ((offset / MiB) % 2 === 0) return [b];
      const h = length / 2;
      const a = b.subarray(0, h);
      const z = b.subarray(h);
      lent.delete(b);
      lent.add(a);
      lent.add(z);
      return [a, z];
    };
    lending.release = (b: Buffer) => {
      assert.ok(lent.delete(b), 'each buffer is given back once');
      released++;
      b.fill(0xee);
    };
    const s = await startServer([deviceExport('d', dev)]);
    const c = await RawClient.open(s.port!);
    try {
      await c.handshake();
      await c.go();
      // 64 reads of 1 MiB at once: far more than the socket buffers, so replies queue.
      for (let k = 0; k < 64; k++) c.send(req(0, BigInt(k + 1), BigInt(k * MiB), MiB));
      for (let k = 0; k < 64; k++) {
        const reply = await c.simpleReply();
        assert.equal(reply.error, 0);
        const at = Number(reply.handle - 1n) * MiB;
        const got = await c.read(MiB);
        assert.ok(got.equals(ref.subarray(at, at + MiB)), `read of ${at}: bytes changed`);
        if (k % 8 === 0) await sleep(5);
      }
      for (let i = 0; i < 50 && released < 96; i++) await sleep(10);
      assert.equal(released, 96, '32 whole buffers and 32 pairs of pieces given back');
      assert.equal(lent.size, 0);
    } finally {
      c.close();
      await s.close();
    }
  });

  it('maps device errors to errno and logs the message with the object key', async () => {
    const dev = new TestDevice(16 * MiB);
    dev.failWith = (o) => {
      if (o === 0)
        return Object.assign(new Error('checksum mismatch in vol/seg/00000007'), {
          kind: 'data',
          code: 'CHECKSUM_MISMATCH',
          key: 'vol/seg/00000007',
        });
      if (o === 4096)
        return Object.assign(new Error('lease lost'), { kind: 'conflict', code: 'FENCED' });
      if (o === 8192) return new TypeError('bug');
      return undefined;
    };
    const s = await startServer([deviceExport('d', dev)]);
    const c = await RawClient.open(s.port!);
    try {
      await c.handshake();
      await c.go();
      c.send(req(0, 1n, 0n, 512));
      assert.deepEqual(await c.simpleReply(), { error: 5, handle: 1n }); // EIO
      c.send(req(1, 2n, 4096n, 512, 0, Buffer.alloc(512)));
      assert.deepEqual(await c.simpleReply(), { error: 1, handle: 2n }); // EPERM
      c.send(req(0, 3n, 8192n, 512));
      assert.deepEqual(await c.simpleReply(), { error: 5, handle: 3n });
      c.send(req(0, 4n, 12288n, 512));
      assert.deepEqual(await c.simpleReply(), { error: 0, handle: 4n });
      await c.read(512);
      const failed = s.logs.filter((l) => l.msg === 'nbd request failed');
      assert.equal(failed.length, 3);
      assert.equal(failed[0]!.fields!.key, 'vol/seg/00000007');
      assert.equal(failed[0]!.fields!.code, 'CHECKSUM_MISMATCH');
      assert.equal(failed[0]!.fields!.errno, 'EIO');
    } finally {
      c.close();
      await s.close();
    }
  });

  it('reuses the memory of 4 KiB WRITE payloads once the device has them', async () => {
    // A device that copies what it is given: each payload's memory is free once write() settles.
    const seen = new Set<ArrayBufferLike>();
    class Copying extends WrappedMemoryDevice {
      override write(offset: number, data: Buffer, flags: WriteFlags): Promise<void> {
        seen.add(data.buffer);
        return this.inner.write(offset, Buffer.from(data), flags);
      }
    }
    const dev = new Copying(16 * MiB);
    const s = await startServer([deviceExport('d', dev)]);
    const c = await RawClient.open(s.port!);
    try {
      await c.handshake();
      await c.go();
      for (let i = 0; i < 40; i++) {
        c.send(req(1, BigInt(i), BigInt(i * 4096), 4096, 0, Buffer.alloc(4096, i + 1)));
        assert.deepEqual(await c.simpleReply(), { error: 0, handle: BigInt(i) });
      }
      for (let i = 0; i < 40; i++)
        assert.ok((await dev.inner.read(i * 4096, 4096)).equals(Buffer.alloc(4096, i + 1)));
      // Written one after another: the same memory each time (one fresh buffer per write before).
      assert.ok(seen.size <= 2, `${seen.size} payload buffers for 40 writes`);
    } finally {
      c.close();
      await s.close();
    }
  });

  it('stops reading from a client that does not read its replies (bounded memory)', async () => {
    const dev = new TestDevice(64 * MiB);
    const s = await startServer([deviceExport('d', dev)], {
      maxOutputBytes: 8 * MiB,
      maxInflightBytes: 8 * MiB,
    });
    const c = await RawClient.open(s.port!);
    try {
      await c.handshake();
      await c.go();
      c.sock.pause(); // stop reading replies
      const n = 1500; // 1.5 GiB of replies requested
      const before = process.memoryUsage().arrayBuffers;
      const batch: Buffer[] = [];
      for (let i = 0; i < n; i++) batch.push(req(0, BigInt(i), BigInt((i % 63) * MiB), MiB));
      c.send(Buffer.concat(batch));
      await sleep(1500);
      const grown = process.memoryUsage().arrayBuffers - before;
      assert.ok(grown < 200 * MiB, `server buffered ${Math.round(grown / MiB)} MiB`);
      assert.ok(dev.inner.counts.read < n, `all ${n} reads were dispatched without back-pressure`);
      c.sock.resume();
      for (let i = 0; i < n; i++) {
        const r = await c.simpleReply();
        assert.equal(r.error, 0);
        await c.read(MiB, 20_000);
      }
      assert.equal(dev.inner.counts.read, n);
    } finally {
      c.close();
      await s.close();
    }
  });

  it('close() answers what is in flight, then refuses new connections', async () => {
    const dev = new TestDevice(16 * MiB);
    dev.inner.writeSync(0, Buffer.alloc(512, 0x42));
    dev.delayFor = () => 400;
    const s = await startServer([deviceExport('d', dev)]);
    const c = await RawClient.open(s.port!);
    await c.handshake();
    await c.go();
    c.send(req(0, 9n, 0n, 512));
    await sleep(50);
    const closing = s.server.close(5000);
    assert.deepEqual(await c.simpleReply(), { error: 0, handle: 9n });
    assert.ok((await c.read(512)).every((b) => b === 0x42));
    assert.ok(await c.waitClosed());
    await closing;
    await assert.rejects(RawClient.open(s.port!));
  });
  it('a device that throws synchronously gets an error reply and leaks nothing', async () => {
    const inner = new MemoryDevice({ size: MiB });
    const dev: BlockDevice = {
      size: inner.size,
      blockSize: inner.blockSize,
      capabilities: inner.capabilities,
      read: () => {
        throw Object.assign(new Error('sync failure'), { kind: 'invalid', code: 'OUT_OF_RANGE' });
      },
      write: () => {
        throw new Error('sync write failure');
      },
      flush: () => inner.flush(),
      trim: (o, l, f) => inner.trim(o, l, f),
      zero: (o, l, f) => inner.zero(o, l, f),
      extents: () => {
        throw new Error('sync extents failure');
      },
      close: () => inner.close(),
    };
    const s = await startServer([deviceExport('d', dev)]);
    const c = await RawClient.open(s.port!);
    try {
      await c.handshake();
      await c.go();
      c.send(req(0, 1n, 0n, 512));
      assert.deepEqual(await c.simpleReply(), { error: 22, handle: 1n });
      c.send(req(1, 2n, 0n, 512, 0, Buffer.alloc(512)));
      assert.deepEqual(await c.simpleReply(), { error: 5, handle: 2n });
      // DISC closes at once only if nothing is counted as still in flight.
      c.send(req(2, 3n, 0n, 0));
      assert.ok(await c.waitClosed(2000), 'closed after DISC');
    } finally {
      c.close();
      await s.close();
    }
  });
});
