/**
 * A sparse in-memory BlockDevice: storage is a map of fixed-size chunks allocated on first
 * write and dropped again when trimmed or zeroed whole, so a 1 GiB export costs nothing until
 * written and its extents say truthfully which chunks hold data. Used by the tests and to
 * measure the NBD transport without a storage engine behind it.
 */
import { Worker } from 'node:worker_threads';
import type {
  BlockDevice,
  BlockSizes,
  DeviceCapabilities,
  DeviceExtent,
  WriteFlags,
  ZeroFlags,
} from '../device.js';

export interface MemoryDeviceOptions {
  size: number;
  /** Allocation unit (power of two, default 256 KiB: reads within one unit are not copied). */
  chunkSize?: number;
  readOnly?: boolean;
  blockSize?: Partial<BlockSizes>;
  capabilities?: Partial<DeviceCapabilities>;
  /**
   * Touch the pages of the next slab on a helper thread before it is needed, so that the
   * kernel's page faults for fresh memory are not paid on the event loop (at most two slabs,
   * 64 MiB, are ever prepared ahead of use). Off by default; the benchmarks turn it on.
   */
  prefault?: boolean;
}

const SLAB_BYTES = 32 * 1024 * 1024;
const PAGE = 4096;

/** Helper thread: writes one byte per page of each shared slab it receives, then returns it. */
const PREFAULT_WORKER = `
const { parentPort } = require('node:worker_threads');
parentPort.on('message', (sab) => {
  const u = new Uint8Array(sab);
  for (let i = 0; i < u.length; i += ${PAGE}) u[i] = 0;
  parentPort.postMessage(sab);
});
`;

export class MemoryDevice implements BlockDevice {
  readonly size: number;
  readonly blockSize: BlockSizes;
  readonly capabilities: DeviceCapabilities;
  readonly chunkSize: number;
  private readonly chunks = new Map<number, Buffer>();
  // Chunks are carved from large slabs (fewer, bigger allocations: far less GC pressure than
  // one ArrayBuffer per chunk); chunks freed by trim/zero go to a free list for reuse.
  private slab: Buffer | undefined;
  private slabPos = 0;
  private readonly free: Buffer[] = [];
  private worker: Worker | undefined;
  private readonly ready: Buffer[] = [];
  private preparing = 0;
  private zeros = Buffer.alloc(0);
  /** Counters for tests. */
  readonly counts = { read: 0, write: 0, flush: 0, trim: 0, zero: 0, extents: 0, cache: 0 };
  closed = false;

  constructor(o: MemoryDeviceOptions) {
    if (!Number.isSafeInteger(o.size) || o.size < 0) throw new RangeError(`bad size ${o.size}`);
    this.size = o.size;
    this.chunkSize = o.chunkSize ?? 256 * 1024;
    this.blockSize = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024, ...o.blockSize };
    if (o.prefault === true) {
      const w = new Worker(PREFAULT_WORKER, { eval: true });
      w.unref();
      w.on('message', (sab: SharedArrayBuffer) => {
        this.preparing--;
        this.ready.push(Buffer.from(sab));
      });
      w.on('error', () => {
        this.worker = undefined; // fall back to faulting on first use
      });
      this.worker = w;
    }
    this.capabilities = {
      readOnly: o.readOnly ?? false,
      canFlush: true,
      canFua: true,
      canTrim: true,
      canZero: true,
      canFastZero: true,
      canCache: true,
      canMultiConn: true,
      canBlockStatus: true,
      ...o.capabilities,
    };
  }

  /** Bytes of chunk storage in use (holes excluded). */
  get allocatedBytes(): number {
    return this.chunks.size * this.chunkSize;
  }

  private zeroBuf(n: number): Buffer {
    if (this.zeros.length < n) this.zeros = Buffer.alloc(Math.max(n, 1024 * 1024));
    return this.zeros.subarray(0, n);
  }

  read(offset: number, length: number): Promise<Buffer> {
    this.counts.read++;
    return Promise.resolve(this.readSync(offset, length));
  }

  /** Synchronous read (tests compare contents with it). */
  readSync(offset: number, length: number): Buffer {
    this.check(offset, length);
    const cs = this.chunkSize;
    const first = Math.floor(offset / cs);
    const within = offset - first * cs;
    if (within + length <= cs) {
      // One chunk: hand out a view of it (it is sent before the client can write again).
      const c = this.chunks.get(first);
      return c === undefined ? this.zeroBuf(length) : c.subarray(within, within + length);
    }
    const out = Buffer.allocUnsafe(length);
    let pos = 0;
    let idx = first;
    let off = within;
    while (pos < length) {
      const n = Math.min(cs - off, length - pos);
      const c = this.chunks.get(idx);
      if (c === undefined) out.fill(0, pos, pos + n);
      else c.copy(out, pos, off, off + n);
      pos += n;
      idx++;
      off = 0;
    }
    return out;
  }

  write(offset: number, data: Buffer, _flags?: WriteFlags): Promise<void> {
    this.counts.write++;
    this.writeSync(offset, data);
    return Promise.resolve();
  }

  writev(offset: number, parts: Buffer[], _flags?: WriteFlags): Promise<void> {
    this.counts.write++;
    let len = 0;
    for (const p of parts) len += p.length;
    this.writeParts(offset, parts, len);
    return Promise.resolve();
  }

  writeSync(offset: number, data: Buffer): void {
    this.writeParts(offset, [data], data.length);
  }

  /** Copy consecutive pieces in; a new chunk is zero-filled only where the write misses it. */
  private writeParts(offset: number, parts: Buffer[], length: number): void {
    this.check(offset, length);
    const cs = this.chunkSize;
    let idx = Math.floor(offset / cs);
    let off = offset - idx * cs;
    let left = length;
    let pi = 0;
    let po = 0;
    while (left > 0) {
      const n = Math.min(cs - off, left);
      let c = this.chunks.get(idx);
      if (c === undefined) {
        c = this.allocChunk();
        if (off > 0) c.fill(0, 0, off);
        if (off + n < cs) c.fill(0, off + n, cs);
        this.chunks.set(idx, c);
      }
      let k = 0;
      while (k < n) {
        const p = parts[pi]!;
        const m = Math.min(p.length - po, n - k);
        p.copy(c, off + k, po, po + m);
        k += m;
        po += m;
        if (po === p.length) {
          pi++;
          po = 0;
        }
      }
      left -= n;
      idx++;
      off = 0;
    }
  }

  flush(): Promise<void> {
    this.counts.flush++;
    return Promise.resolve();
  }

  trim(offset: number, length: number, _flags?: WriteFlags): Promise<void> {
    this.counts.trim++;
    this.clear(offset, length);
    return Promise.resolve();
  }

  zero(offset: number, length: number, _flags?: ZeroFlags): Promise<void> {
    this.counts.zero++;
    this.clear(offset, length);
    return Promise.resolve();
  }

  cache(offset: number, length: number): Promise<void> {
    this.counts.cache++;
    this.check(offset, length);
    return Promise.resolve();
  }

  /** An uninitialised chunk. */
  private allocChunk(): Buffer {
    const f = this.free.pop();
    if (f !== undefined) return f;
    const cs = this.chunkSize;
    if (this.slab === undefined || this.slabPos + cs > this.slab.length) {
      const slabBytes = Math.max(cs, Math.min(SLAB_BYTES, cs * 128));
      this.slab = this.ready.shift() ?? Buffer.allocUnsafeSlow(slabBytes);
      this.slabPos = 0;
      this.prepare(slabBytes);
    }
    const c = this.slab.subarray(this.slabPos, this.slabPos + cs);
    this.slabPos += cs;
    return c;
  }

  /** Zero a range: whole chunks are dropped (become holes), partial ones are zero-filled. */
  private clear(offset: number, length: number): void {
    this.check(offset, length);
    const cs = this.chunkSize;
    let idx = Math.floor(offset / cs);
    let off = offset - idx * cs;
    let pos = 0;
    while (pos < length) {
      const n = Math.min(cs - off, length - pos);
      const c = this.chunks.get(idx);
      if (c !== undefined) {
        if (n === cs) {
          this.chunks.delete(idx);
          this.free.push(c);
        } else {
          c.fill(0, off, off + n);
        }
      }
      pos += n;
      idx++;
      off = 0;
    }
  }

  extents(offset: number, length: number): Promise<DeviceExtent[]> {
    this.counts.extents++;
    this.check(offset, length);
    const cs = this.chunkSize;
    const end = offset + length;
    const out: DeviceExtent[] = [];
    let pos = offset;
    while (pos < end) {
      const idx = Math.floor(pos / cs);
      const hole = !this.chunks.has(idx);
      const next = Math.min((idx + 1) * cs, this.size);
      const last = out[out.length - 1];
      if (last !== undefined && last.hole === hole) last.length += next - pos;
      else out.push({ offset: pos, length: next - pos, hole, zero: hole });
      pos = next;
    }
    return Promise.resolve(out);
  }

  /** Keep up to two prefaulted slabs ready (only when prefault is on). */
  private prepare(slabBytes: number): void {
    const w = this.worker;
    if (w === undefined) return;
    while (this.ready.length + this.preparing < 2) {
      this.preparing++;
      w.postMessage(new SharedArrayBuffer(slabBytes));
    }
  }

  close(): Promise<void> {
    this.closed = true;
    void this.worker?.terminate();
    this.worker = undefined;
    return Promise.resolve();
  }

  private check(offset: number, length: number): void {
    if (
      !Number.isSafeInteger(offset) ||
      !Number.isSafeInteger(length) ||
      offset < 0 ||
      length < 0 ||
      offset + length > this.size
    ) {
      throw Object.assign(
        new RangeError(`range ${offset}+${length} is outside the ${this.size}-byte device`),
        {
          kind: 'invalid',
          code: 'OUT_OF_RANGE',
        },
      );
    }
  }
}
