import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { SEGMENT_PREFIX } from '../../../../src/format/keys.js';
import { CountingStore } from '../../../../src/format/store/counting.js';
import { FileStore } from '../../../../src/format/store/file.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type { GetOptions, GetResult } from '../../../../src/format/store/types.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import { KiB, MiB, type OpenOptions } from '../../../../src/format/volume/types.js';
import { SpareBuffers } from '../../../../src/format/volume/reader.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { HeldStore } from '../../../helpers/held-store.js';
import { rng } from '../../../helpers/rng.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const root = mkdtempSync(join(tmpdir(), 'hyper-reader-'));
after(() => rmSync(root, { recursive: true, force: true }));
let dirs = 0;
const freshDir = (): string => join(root, `d${dirs++}`);

/** Caches small enough that the model tests keep filling and evicting them. */
const SMALL_CACHES: OpenOptions = {
  flushIntervalMs: 0,
  dataCacheBytes: 256 * KiB,
  nodeCacheBytes: 16 * KiB,
  readAheadBytes: 128 * KiB,
  readAroundBytes: 64 * KiB,
  readPartBytes: 64 * KiB,
};

/** Counts segment GETs, how many run at once, and fails them on demand. */
class WatchedStore extends CountingStore {
  segmentGets = 0;
  /** The length of each ranged segment GET, in order. */
  readonly lengths: number[] = [];
  /** Segment GETs asked to read into the caller's memory. */
  intoGets = 0;
  inFlight = 0;
  maxInFlight = 0;
  failSegments = false;
  /** Each segment GET takes this long (0: one turn of the event loop). */
  delayMs = 0;
  override async get(key: string, options?: GetOptions): Promise<GetResult> {
    if (!key.startsWith(SEGMENT_PREFIX)) return super.get(key, options);
    if (this.failSegments) throw new Error(`segment GET refused in this test: ${key}`);
    this.segmentGets++;
    if (options?.range) this.lengths.push(options.range.length);
    if (options?.into) this.intoGets++;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    try {
      if (this.delayMs > 0) await new Promise((r) => setTimeout(r, this.delayMs));
      else await new Promise((r) => setImmediate(r));
      return await super.get(key, options);
    } finally {
      this.inFlight--;
    }
  }
  reset(): void {
    this.segmentGets = 0;
    this.maxInFlight = 0;
  }
}

/**
 * Reads segment bodies into the memory a caller offers (MemStore hands out its own bytes),
 * and counts the GETs offered memory that an earlier GET was offered already.
 */
class IntoStore extends CountingStore {
  reused = 0;
  private readonly seen = new WeakSet<ArrayBufferLike>();
  override async get(key: string, options?: GetOptions): Promise<GetResult> {
    const mem = options?.into;
    if (!mem) return super.get(key, options);
    if (this.seen.has(mem.buffer)) this.reused++;
    this.seen.add(mem.buffer);
    const res = await super.get(key, { ...options, into: undefined });
    const n = res.body.copy(mem);
    // Scribble over the rest, so that a stale view of this memory would show.
    mem.fill(0xa5, n);
    return { ...res, body: mem.subarray(0, n) };
  }
}

function pattern(len: number, seed: number): Buffer {
  const r = rng(seed);
  const b = Buffer.allocUnsafe(len);
  for (let i = 0; i < len; i += 4) b.writeUInt32LE((r() * 2 ** 32) >>> 0, i);
  return b;
}

/**
 * Pieces readv() handed out and not sent yet, each with what it must hold until it is: a
 * read's pieces are added, then some of those waiting are sent (released), in any order.
 */
class Unsent {
  private readonly list: { piece: Buffer; want: Buffer }[] = [];
  constructor(
    private readonly v: Volume,
    private readonly r: () => number,
    private readonly what: string,
  ) {}
  handedOut(pieces: Buffer[], at: number, ref: Buffer): void {
    for (const piece of pieces) {
      this.list.push({ piece, want: Buffer.from(ref.subarray(at, at + piece.length)) });
      at += piece.length;
    }
    while (this.list.length > 0 && this.r() < 0.6) {
      const [u] = this.list.splice(Math.floor(this.r() * this.list.length), 1);
      assert.ok(u!.piece.equals(u!.want), `${this.what}: a piece changed before it was sent`);
      this.v.release(u!.piece);
    }
  }
  /** Every piece not sent still holds what it held. */
  check(): void {
    for (const u of this.list) assert.ok(u.piece.equals(u.want), `${this.what}: unsent piece`);
  }
}

async function filled(
  size: number,
  segmentSize = 4 * MiB,
): Promise<{ store: WatchedStore; ref: Buffer }> {
  const store = new WatchedStore(MemStore.isolated());
  await Volume.create(store, { size, segmentSize });
  const v = await Volume.open(store, { flushIntervalMs: 0 });
  const ref = pattern(size, 1);
  for (let o = 0; o < size; o += 1 * MiB) await v.write(o, ref.subarray(o, o + 1 * MiB));
  await v.close();
  return { store, ref };
}

/** The name of the largest segment file in `segDir` (the one holding the data written). */
function largestSegment(segDir: string): string {
  return readdirSync(segDir).sort(
    (a, b) => statSync(join(segDir, b)).size - statSync(join(segDir, a)).size,
  )[0] as string;
}

/**
 * A file:// volume whose first MiB was written in one segment, then one byte of that data
 * flipped in place (past the segment's header): the store and the segment's key.
 */
async function damagedVolume(): Promise<{ store: FileStore; seg: string }> {
  const dir = freshDir();
  mkdirSync(dir);
  const store = new FileStore(dir);
  await Volume.create(store, { size: 4 * MiB, segmentSize: 4 * MiB, compression: 'none' });
  const v = await Volume.open(store, { flushIntervalMs: 0 });
  await v.write(0, pattern(1 * MiB, 5));
  await v.close();
  const segDir = join(dir, SEGMENT_PREFIX);
  const seg = largestSegment(segDir);
  const h = await open(join(segDir, seg), 'r+');
  const b = Buffer.alloc(1);
  await h.read(b, 0, 1, 512 * KiB);
  b[0] = (b[0] as number) ^ 0xff;
  await h.write(b, 0, 1, 512 * KiB);
  await h.close();
  return { store, seg };
}

describe('reader: read-ahead, parallel GETs, read-around', () => {
  it('reads a sequential stream with fewer, larger GETs and the same bytes', async () => {
    const size = 32 * MiB;
    const { store, ref } = await filled(size);
    const counts: Record<string, number> = {};
    for (const ahead of [0, 16 * MiB]) {
      const v = await Volume.open(store, {
        readOnly: true,
        readAheadBytes: ahead,
        readAroundBytes: 0,
      });
      store.reset();
      const parts: Buffer[] = [];
      for (let o = 0; o < size; o += 256 * KiB) parts.push(await v.read(o, 256 * KiB));
      assert.equal(sha(Buffer.concat(parts)), sha(ref), `bytes with read-ahead ${ahead}`);
      counts[String(ahead)] = store.segmentGets;
      if (ahead > 0) {
        const s = v.stats();
        assert.ok(
          s.prefetchedBlocks > 0 && s.prefetchHits > 0.8 * s.prefetchedBlocks,
          JSON.stringify(s),
        );
      }
      await v.close();
    }
    // (GETs of index nodes and reads crossing a segment's end add a few.)
    assert.ok((counts['0'] as number) >= 128, 'without read-ahead: a GET per 256 KiB read');
    assert.ok(
      (counts[String(16 * MiB)] as number) <= (counts['0'] as number) / 2.5,
      `with read-ahead: ${counts[String(16 * MiB)]} GETs`,
    );
  });

  it('reads ahead in whole verified parts; a damaged one is reported by the read that needs it', async () => {
    const dir = freshDir();
    mkdirSync(dir);
    const store = new WatchedStore(new FileStore(dir));
    await Volume.create(store, { size: 4 * MiB, segmentSize: 4 * MiB, compression: 'none' });
    const w = await Volume.open(store, { flushIntervalMs: 0 });
    const ref = pattern(4 * MiB, 9);
    await w.write(0, ref);
    await w.close();
    const segDir = join(dir, SEGMENT_PREFIX);
    const seg = largestSegment(segDir);
    const opts: OpenOptions = {
      readOnly: true,
      readAheadBytes: 1 * MiB,
      readPartBytes: 256 * KiB,
      readAroundBytes: 0,
    };
    // Intact: every 64 KiB read matches, most of them served by the parts read ahead.
    const ok = await Volume.open(store, opts);
    store.reset();
    for (let o = 0; o < 4 * MiB; o += 64 * KiB)
      assert.ok((await ok.read(o, 64 * KiB)).equals(ref.subarray(o, o + 64 * KiB)), `at ${o}`);
    const s = ok.stats();
    assert.ok(s.prefetchHits >= (0.8 * (4 * MiB)) / (4 * KiB), JSON.stringify(s));
    assert.ok(store.segmentGets <= 24, `${store.segmentGets} GETs of 256 KiB parts or less`);
    await ok.close();
    // Damage one byte of a block in the second half of the data.
    const path = join(segDir, seg);
    const size = statSync(path).size;
    const h = await open(path, 'r+');
    const b = Buffer.alloc(1);
    await h.read(b, 0, 1, size - 1 * MiB);
    b[0] = (b[0] as number) ^ 0xff;
    await h.write(b, 0, 1, size - 1 * MiB);
    await h.close();
    const ro = await Volume.open(store, opts);
    let failed = -1;
    for (let o = 0; o < 4 * MiB; o += 64 * KiB) {
      try {
        const got = await ro.read(o, 64 * KiB);
        assert.ok(got.equals(ref.subarray(o, o + 64 * KiB)), `intact bytes at ${o}`);
      } catch (e) {
        assert.equal((e as { code?: string }).code, 'CHECKSUM_MISMATCH');
        assert.match((e as Error).message, new RegExp(seg));
        assert.equal(failed, -1, 'one read fails');
        failed = o;
      }
    }
    // The damaged byte is 1 MiB before the segment's end: in the last MiB of the volume.
    assert.ok(failed >= 3 * MiB - 64 * KiB && failed < 4 * MiB, `the read at ${failed} failed`);
    await ro.close();
  });

  it('reads ahead in whole parts of the address space: one GET of partBytes each', async () => {
    // One segment holds the whole volume, written in order: its blocks are back to back.
    const size = 24 * MiB;
    const { store, ref } = await filled(size, 32 * MiB);
    const v = await Volume.open(store, {
      readOnly: true,
      readAheadBytes: 4 * MiB,
      readPartBytes: 1 * MiB,
      readAroundBytes: 0,
    });
    store.reset();
    store.delayMs = 5;
    store.lengths.length = 0;
    // Four streams, each over its own quarter with two reads in flight (nbdcopy's
    // connections each copy their own stretch): they share the read-ahead budget.
    const quarter = size / 4;
    const stream = async (q: number): Promise<void> => {
      let next = q * quarter;
      const end = next + quarter;
      const one = async (): Promise<void> => {
        for (let o = next; o < end; o = next) {
          next += 256 * KiB;
          const got = await v.read(o, 256 * KiB);
          assert.ok(got.equals(ref.subarray(o, o + 256 * KiB)), `at ${o}`);
        }
      };
      await Promise.all([one(), one()]);
    };
    await Promise.all([0, 1, 2, 3].map(stream));
    const whole = store.lengths.filter((n) => n === 1 * MiB).length;
    // Reads before a stream is recognised, and those that catch up with its read-ahead,
    // fetch their own 256 KiB; read-ahead fetches whole parts. When streams shared the budget
    // (a window of 1 MiB each here), a window's edge cut nearly every part, and the streams'
    // reads went to the store on their own: 84 GETs, 7 of them whole parts; now ~40, ~22.
    assert.ok(whole >= 16, `${whole} whole parts in ${JSON.stringify(store.lengths)}`);
    assert.ok(store.lengths.length <= 50, JSON.stringify(store.lengths));
    await v.close();
  });

  it('hands out blocks read ahead as pieces that later writes do not change', async () => {
    const size = 8 * MiB;
    const { store, ref } = await filled(size);
    const v = await Volume.open(store, {
      flushIntervalMs: 0,
      readAheadBytes: 2 * MiB,
      readPartBytes: 512 * KiB,
      readAroundBytes: 0,
    });
    const kept: { at: number; pieces: Buffer[] }[] = [];
    let pieces = 0;
    for (let o = 0; o < size; o += 256 * KiB) {
      const p = await v.readv(o, 256 * KiB);
      pieces += p.length;
      kept.push({ at: o, pieces: p });
      assert.ok(Buffer.concat(p).equals(ref.subarray(o, o + 256 * KiB)), `at ${o}`);
    }
    // Most reads after the first few are one or two slices of a part, not a copy: reads
    // next to each other then share the part's memory.
    assert.ok(pieces < 2 * kept.length, `${pieces} pieces for ${kept.length} reads`);
    let shared = 0;
    for (let i = 1; i < kept.length; i++)
      if (kept[i]!.pieces[0]!.buffer === kept[i - 1]!.pieces.at(-1)!.buffer) shared++;
    assert.ok(shared >= kept.length / 4, `${shared} of ${kept.length} reads share a part`);
    assert.ok(v.stats().prefetchHits > 0.8 * (size / (4 * KiB)), JSON.stringify(v.stats()));
    // Overwrite everything and flush: the pieces handed out still hold what was read.
    for (let o = 0; o < size; o += 1 * MiB) await v.write(o, pattern(1 * MiB, 77 + o));
    await v.flush();
    for (const k of kept)
      assert.ok(
        Buffer.concat(k.pieces).equals(ref.subarray(k.at, k.at + 256 * KiB)),
        `pieces of ${k.at} unchanged`,
      );
    // A read that is not whole blocks, or of buffered blocks, comes back as one buffer.
    await v.write(0, Buffer.alloc(4096, 1));
    const one = await v.readv(0, 8192);
    assert.equal(one.length, 1);
    assert.ok(one[0]!.subarray(0, 4096).every((b) => b === 1));
    await v.close();
  });

  it('reuses the memory of read-ahead parts only once every piece of them was sent', async () => {
    const size = 16 * MiB;
    const { store, ref } = await filled(size);
    // A store that reads bodies into the memory offered, as s3:// and file:// do.
    const into = new IntoStore(store);
    for (const seed of [1, 2, 3]) {
      const v = await Volume.open(into, {
        readOnly: true,
        readAheadBytes: 2 * MiB,
        readPartBytes: 256 * KiB,
        readAroundBytes: 0,
      });
      into.reused = 0;
      const unsent = new Unsent(v, rng(seed), `seed ${seed}`);
      let reads = 0;
      for (let pass = 0; pass < 2; pass++) {
        for (let o = 0; o < size; o += 128 * KiB) {
          const pieces = await v.readv(o, 128 * KiB);
          reads++;
          assert.ok(Buffer.concat(pieces).equals(ref.subarray(o, o + 128 * KiB)), `at ${o}`);
          // Send some of the pieces, in any order, a while after they were handed out.
          unsent.handedOut(pieces, o, ref);
        }
      }
      unsent.check();
      assert.ok(
        reads > 0 && into.reused > 0,
        `seed ${seed}: ${into.reused} GETs into reused memory`,
      );
      await v.close();
    }
    // Nothing released: every part's GET gets fresh memory.
    const v = await Volume.open(into, {
      readOnly: true,
      readAheadBytes: 2 * MiB,
      readPartBytes: 256 * KiB,
    });
    into.reused = 0;
    for (let o = 0; o < size; o += 128 * KiB) await v.readv(o, 128 * KiB);
    assert.equal(into.reused, 0);
    await v.close();
  });

  it('reads ahead compressed and sealed blocks in whole parts too, and reuses their memory only once sent', async () => {
    const size = 8 * MiB;
    // Blocks that compress (text-like) mixed with blocks that do not (random): parts of both.
    const ref = Buffer.allocUnsafe(size);
    const r0 = rng(31);
    for (let o = 0; o < size; o += 4 * KiB) {
      const b = pattern(4 * KiB, 1000 + o / (4 * KiB));
      if (r0() < 0.7) b.fill(b.subarray(0, 64), 64);
      b.copy(ref, o);
    }
    const combos: { compression: 'lz4' | 'zstd' | 'none'; encryption?: 'xchacha20-poly1305' }[] = [
      { compression: 'lz4' },
      { compression: 'zstd' },
      { compression: 'none', encryption: 'xchacha20-poly1305' },
      { compression: 'lz4', encryption: 'xchacha20-poly1305' },
    ];
    for (const c of combos) {
      const name = `${c.compression}${c.encryption ? ` + ${c.encryption}` : ''}`;
      const key = c.encryption ? { encryption: c.encryption, key: Buffer.alloc(32, 7) } : {};
      const base = new WatchedStore(MemStore.isolated());
      await Volume.create(base, { size, segmentSize: 4 * MiB, compression: c.compression, ...key });
      const w = await Volume.open(base, { flushIntervalMs: 0, ...key });
      for (let o = 0; o < size; o += 1 * MiB) await w.write(o, ref.subarray(o, o + 1 * MiB));
      await w.close();
      const into = new IntoStore(base);
      const opts: OpenOptions = {
        readOnly: true,
        readPartBytes: 256 * KiB,
        readAroundBytes: 0,
        ...key,
      };
      // GETs without read-ahead (one per read) and with it (one per part of 256 KiB of data).
      const gets: number[] = [];
      for (const ahead of [0, 2 * MiB]) {
        const v = await Volume.open(into, { ...opts, readAheadBytes: ahead });
        base.reset();
        const unsent = new Unsent(v, rng(ahead + 5), name);
        let pieces = 0;
        let reads = 0;
        into.reused = 0;
        for (let o = 0; o < size; o += 128 * KiB) {
          const got = await v.readv(o, 128 * KiB);
          reads++;
          pieces += got.length;
          assert.ok(Buffer.concat(got).equals(ref.subarray(o, o + 128 * KiB)), `${name} at ${o}`);
          // Pieces are sent in any order, some a while after they were handed out.
          unsent.handedOut(got, o, ref);
        }
        unsent.check();
        gets.push(base.segmentGets);
        if (ahead > 0) {
          const s = v.stats();
          assert.ok(s.prefetchHits > 0.8 * (size / (4 * KiB)), `${name}: ${JSON.stringify(s)}`);
          assert.ok(pieces < 2 * reads, `${name}: ${pieces} pieces for ${reads} reads`);
          assert.ok(into.reused > 0, `${name}: no GET into reused memory`);
        }
        await v.close();
      }
      assert.ok((gets[0] as number) >= 64, `${name}: ${gets[0]} GETs without read-ahead`);
      assert.ok(
        (gets[1] as number) <= 0.7 * (gets[0] as number),
        `${name}: ${gets[1]} GETs with read-ahead, ${gets[0]} without`,
      );
    }
  });

  it('reports a damaged compressed block that was read ahead with its key, from the read that needs it', async () => {
    const dir = freshDir();
    mkdirSync(dir);
    const store = new FileStore(dir);
    const size = 4 * MiB;
    await Volume.create(store, { size, segmentSize: 4 * MiB, compression: 'lz4' });
    const w = await Volume.open(store, { flushIntervalMs: 0 });
    const ref = pattern(size, 12);
    for (let o = 0; o < size; o += 4 * KiB) ref.fill(ref.subarray(o, o + 32), o + 32, o + 4 * KiB);
    await w.write(0, ref);
    await w.close();
    const segDir = join(dir, SEGMENT_PREFIX);
    const seg = largestSegment(segDir);
    const path = join(segDir, seg);
    // Every block compressed: the segment is far smaller than the data.
    assert.ok(statSync(path).size < size / 4, `segment of ${statSync(path).size} bytes`);
    const h = await open(path, 'r+');
    const b = Buffer.alloc(1);
    await h.read(b, 0, 1, Math.floor(statSync(path).size / 2));
    b[0] = (b[0] as number) ^ 0xff;
    await h.write(b, 0, 1, Math.floor(statSync(path).size / 2));
    await h.close();
    const ro = await Volume.open(store, {
      readOnly: true,
      readAheadBytes: 1 * MiB,
      readPartBytes: 256 * KiB,
      readAroundBytes: 0,
    });
    let failed = -1;
    for (let o = 0; o < size; o += 64 * KiB) {
      try {
        const got = await ro.read(o, 64 * KiB);
        assert.ok(got.equals(ref.subarray(o, o + 64 * KiB)), `intact bytes at ${o}`);
      } catch (e) {
        assert.equal((e as { code?: string }).code, 'CHECKSUM_MISMATCH', String(e));
        assert.match((e as Error).message, new RegExp(seg));
        assert.equal(failed, -1, 'one read fails');
        failed = o;
      }
    }
    assert.ok(failed >= 0, 'the damaged block is reported');
    assert.ok(ro.stats().prefetchHits > 0, JSON.stringify(ro.stats()));
    await ro.close();
  });

  it('splits a large read into parallel GETs, capped per volume', async () => {
    const size = 16 * MiB;
    const { store, ref } = await filled(size, 16 * MiB);
    const v = await Volume.open(store, {
      readOnly: true,
      readPartBytes: 1 * MiB,
      maxReadGets: 4,
      readAheadBytes: 0,
    });
    store.reset();
    const got = await v.read(0, size);
    assert.equal(sha(got), sha(ref));
    assert.ok(store.segmentGets >= 16 && store.segmentGets <= 18, `GETs: ${store.segmentGets}`);
    assert.ok(store.maxInFlight > 1 && store.maxInFlight <= 4, `in flight: ${store.maxInFlight}`);
    await v.close();
  });

  it('fetches the neighbours of a random read in the same GET and serves them later', async () => {
    const size = 8 * MiB;
    const { store, ref } = await filled(size);
    const v = await Volume.open(store, {
      readOnly: true,
      readAheadBytes: 0,
      readAroundBytes: 64 * KiB,
    });
    // Load the index first so that read-around knows the neighbours.
    await v.extents(0, size);
    store.reset();
    const r = rng(3);
    for (let i = 0; i < 400; i++) {
      const o = Math.floor(r() * (size / 4096)) * 4096;
      assert.equal(sha(await v.read(o, 4096)), sha(ref.subarray(o, o + 4096)));
    }
    const s = v.stats();
    assert.ok(s.readAroundBlocks > 0 && s.readAroundHits > 0, JSON.stringify(s));
    assert.ok(store.segmentGets < 300, `GETs: ${store.segmentGets}`);
    await v.close();
  });

  it('stops fetching neighbours that are not read, and fetches them again once they are', async () => {
    const size = 64 * MiB;
    const bs = 4 * KiB;
    const { store, ref } = await filled(size, 8 * MiB);
    const v = await Volume.open(store, {
      readOnly: true,
      readAheadBytes: 0,
      readAroundBytes: 64 * KiB,
      dataCacheBytes: 1 * MiB,
    });
    await v.extents(0, size);
    const r = rng(41);
    const check = async (o: number): Promise<void> =>
      assert.equal(sha(await v.read(o, bs)), sha(ref.subarray(o, o + bs)));
    // Uniform random reads over 16,384 blocks with a 1 MiB cache: misses hardly ever land near
    // an earlier one, so after the first 64 the neighbours are no longer fetched.
    store.reset();
    for (let i = 0; i < 800; i++) await check(Math.floor(r() * (size / bs)) * bs);
    const a = v.stats();
    assert.ok(a.readAroundSkipped >= 600, JSON.stringify(a));
    assert.ok(a.readAroundBlocks <= 2000, `neighbours fetched: ${a.readAroundBlocks}`);
    assert.ok(store.segmentGets >= 760, `GETs: ${store.segmentGets}`);
    // Then every block of a few 64 KiB windows, each in random order: misses land near earlier
    // ones, read-around pays again, and most reads need no GET of their own.
    store.reset();
    const skipped = a.readAroundSkipped;
    let reads = 0;
    for (let w = 0; w < 60; w++) {
      const base = Math.floor(r() * (size / (64 * KiB))) * 64 * KiB;
      const order = Array.from({ length: 16 }, (_, i) => i);
      for (let i = order.length - 1; i > 0; i--) {
        const j = Math.floor(r() * (i + 1));
        [order[i], order[j]] = [order[j] as number, order[i] as number];
      }
      for (const i of order) {
        await check(base + i * bs);
        reads++;
      }
    }
    const b = v.stats();
    assert.ok(b.readAroundHits - a.readAroundHits > reads / 2, JSON.stringify(b));
    assert.ok(store.segmentGets < reads / 3, `GETs: ${store.segmentGets} for ${reads} reads`);
    assert.ok(b.readAroundSkipped - skipped < 100, JSON.stringify(b));
    await v.close();
  });

  it('reads a range that random writes spread over many segments with a GET per segment', async () => {
    const size = 4 * MiB;
    const { store, ref } = await filled(size);
    const w = await Volume.open(store, { flushIntervalMs: 0 });
    // Four rounds of random 4 KiB writes, each its own segment: a 1 MiB range then has its
    // blocks in five segments, interleaved by address.
    const r = rng(7);
    for (let round = 0; round < 4; round++) {
      for (let i = 0; i < 300; i++) {
        const o = Math.floor(r() * (size / 4096)) * 4096;
        const b = pattern(4096, 100 + round * 1000 + i);
        await w.write(o, b);
        b.copy(ref, o);
      }
      await w.flush();
    }
    await w.close();
    const v = await Volume.open(store, { readOnly: true, readAheadBytes: 0, readAroundBytes: 0 });
    await v.extents(0, size); // index nodes first: only data GETs are counted below
    store.reset();
    assert.equal(sha(await v.read(1 * MiB, 1 * MiB)), sha(ref.subarray(1 * MiB, 2 * MiB)));
    // 256 blocks from five segments; a GET per run of adjacent blocks would take ~150.
    assert.ok(store.segmentGets <= 10, `GETs: ${store.segmentGets}`);
    assert.equal(sha(await v.read(0, size)), sha(ref));
    await v.close();
  });

  it('matches a model under random reads, writes, trims and flushes running concurrently', async () => {
    // Seeds 14-16: compressed volumes (16 sealed too) without a disk cache, whose read-ahead
    // parts hold opened blocks.
    for (const seed of [11, 12, 13, 14, 15, 16]) {
      const size = 4 * MiB;
      const bs = 4 * KiB;
      const packed = seed >= 14;
      const store = new WatchedStore(MemStore.isolated());
      const key =
        seed === 16 ? { encryption: 'xchacha20-poly1305' as const, key: Buffer.alloc(32, 3) } : {};
      await Volume.create(store, {
        size,
        segmentSize: 1 * MiB,
        ...(packed ? { compression: 'lz4' as const } : {}),
        ...key,
      });
      const opts: OpenOptions = {
        ...key,
        ...SMALL_CACHES,
        maxReadGets: 3,
        ...(packed ? {} : { diskCache: { dir: freshDir(), sizeBytes: 2 * MiB } }),
      };
      let v = await Volume.open(store, opts);
      const model = Buffer.alloc(size);
      const r = rng(seed);
      let hits = 0;
      for (let batch = 0; batch < 60; batch++) {
        const busy: [number, number][] = [];
        const overlaps = (a: number, b: number): boolean => busy.some(([x, y]) => a < y && x < b);
        const ops: Promise<unknown>[] = [];
        const checks: (() => void)[] = [];
        for (let k = 0; k < 12; k++) {
          const len = (1 + Math.floor(r() * 48)) * 512;
          const off = Math.floor(r() * ((size - len) / 512)) * 512;
          const roll = r();
          if (roll < 0.35 && !overlaps(off, off + len)) {
            const data = pattern(len, seed * 1000 + batch * 16 + k);
            // (Most writes of a compressed volume compress.)
            if (packed && r() < 0.7) data.fill(data.subarray(0, 64), 64);
            data.copy(model, off);
            busy.push([off, off + len]);
            ops.push(v.write(off, data));
          } else if (roll < 0.4 && !overlaps(off, off + len)) {
            model.fill(
              0,
              Math.ceil(off / bs) * bs,
              Math.max(Math.ceil(off / bs) * bs, Math.floor((off + len) / bs) * bs),
            );
            busy.push([off, off + len]);
            ops.push(v.trim(off, len));
          } else if (roll < 0.45) {
            ops.push(v.flush());
          } else {
            // A sequential sweep now and then, to drive read-ahead.
            const sweep = r() < 0.2;
            const n = sweep ? 8 : 1;
            for (let j = 0; j < n; j++) {
              const o = off + j * len;
              if (o + len > size || overlaps(o, o + len)) break;
              const want = Buffer.from(model.subarray(o, o + len));
              // Half of the reads as pieces (blocks read ahead are handed out uncopied).
              const read =
                r() < 0.5 ? v.read(o, len) : v.readv(o, len).then((p) => Buffer.concat(p));
              ops.push(
                read.then((got) => {
                  checks.push(() =>
                    assert.equal(
                      sha(got),
                      sha(want),
                      `seed ${seed} batch ${batch}: read ${o}+${len}`,
                    ),
                  );
                }),
              );
              busy.push([o, o + len]);
            }
          }
        }
        await Promise.all(ops);
        for (const c of checks) c();
        if (batch % 20 === 19) {
          hits += v.stats().prefetchHits;
          await v.close();
          v = await Volume.open(store, opts);
        }
      }
      assert.equal(sha(await v.read(0, size)), sha(model), `seed ${seed}: final content`);
      if (packed) assert.ok(hits > 0, `seed ${seed}: no block read ahead was read`);
      await v.close();
    }
  });
});

describe('reader: resizes', () => {
  it('matches a model across shrinks to any sector and grows, with warm caches, compaction and reopens', async () => {
    // The tail of a shrunk volume must read zeros once it grows back, whatever the caches
    // (memory, disk, read-ahead parts) held of it and however the blocks were stored:
    // raw (seeds 21-22, 22 with 64 KiB blocks), lz4 (23), zstd and sealed (24), deduplicated (25).
    for (const seed of [21, 22, 23, 24, 25]) {
      const bs = seed === 22 ? 64 * KiB : 4 * KiB;
      const key =
        seed === 24 ? { encryption: 'xchacha20-poly1305' as const, key: Buffer.alloc(32, 5) } : {};
      const store = new WatchedStore(MemStore.isolated());
      let size = 2 * MiB;
      await Volume.create(store, {
        size,
        segmentSize: 1 * MiB,
        ...(seed === 22 ? { dataBlockSize: bs } : {}),
        ...(seed === 23 ? { compression: 'lz4' as const } : {}),
        ...(seed === 24 ? { compression: 'zstd' as const } : {}),
        ...(seed === 25 ? { dedup: true } : {}),
        ...key,
      });
      const opts: OpenOptions = {
        ...key,
        ...SMALL_CACHES,
        diskCache: { dir: freshDir(), sizeBytes: 4 * MiB },
      };
      let v = await Volume.open(store, opts);
      let model = Buffer.alloc(size);
      const r = rng(seed);
      const where = (what: string) => `seed ${seed} (${what}, size ${size})`;
      const readBack = async (off: number, len: number, what: string): Promise<void> => {
        const got = r() < 0.5 ? await v.read(off, len) : Buffer.concat(await v.readv(off, len));
        if (!got.equals(model.subarray(off, off + len))) {
          let i = 0;
          while (got[i] === model[off + i]) i++;
          assert.fail(`${where(what)}: read ${off}+${len} differs from the model at ${off + i}`);
        }
      };
      let shrinks = 0;
      for (let step = 0; step < 70; step++) {
        const roll = r();
        if (roll < 0.45) {
          // A few writes at once, some at the very end (which a shrink then cuts through).
          const ops: Promise<void>[] = [];
          const taken: [number, number][] = [];
          for (let k = 0; k < 4; k++) {
            const len = Math.min(size, (1 + Math.floor(r() * 40)) * 512);
            const off = r() < 0.4 ? size - len : Math.floor(r() * ((size - len) / 512 + 1)) * 512;
            if (taken.some(([a, b]) => off < b && a < off + len)) continue;
            taken.push([off, off + len]);
            const data = pattern(len, seed * 10_000 + step * 8 + k);
            if (r() < 0.5) data.fill(data.subarray(0, 64), 64);
            // (Deduplicating volumes: now and then a copy of a block already written.)
            if (seed === 25 && r() < 0.3 && len >= 2 * bs) data.copy(data, bs, 0, bs);
            data.copy(model, off);
            ops.push(v.write(off, data));
          }
          await Promise.all(ops);
        } else if (roll < 0.5) {
          // A trim of whole blocks, none of them the last (a partial one: its tail is past the end).
          const blocks = Math.floor(size / bs);
          if (blocks < 2) continue;
          const first = Math.floor(r() * (blocks - 1));
          const n = 1 + Math.floor(r() * Math.min(8, blocks - 1 - first));
          model.fill(0, first * bs, (first + n) * bs);
          await v.trim(first * bs, n * bs);
        } else if (roll < 0.62) {
          await v.flush();
        } else if (roll < 0.8) {
          // Reads, most of them of the tail: into the caches, and read ahead past them.
          for (let k = 0; k < 3; k++) {
            const len = Math.min(size, (1 + Math.floor(r() * 64)) * 512);
            const off = r() < 0.6 ? size - len : Math.floor(r() * ((size - len) / 512 + 1)) * 512;
            await readBack(off, len, `step ${step} read`);
          }
        } else if (roll < 0.93) {
          // Resize: shrink to any sector (often inside a block) or grow, then read the tail.
          const shrink = r() < 0.6;
          const next = shrink
            ? Math.max(512, Math.floor((r() * size) / 512) * 512)
            : Math.min(4 * MiB, size + (1 + Math.floor(r() * 512)) * 512);
          if (next < size) shrinks++;
          await v.resize(next, { allowShrink: true });
          const grown = Buffer.alloc(next);
          model.copy(grown, 0, 0, Math.min(next, size));
          model = grown;
          size = next;
          const tail = Math.min(size, 2 * bs + 512);
          await readBack(size - tail, tail, `step ${step} after resize`);
        } else if (roll < 0.97) {
          await v.close();
          v = await Volume.open(store, opts);
          assert.equal(v.info.size, size, where('reopened'));
        } else {
          // A compaction moves the live blocks to new segments (the caches hold the old).
          await v.close();
          await compactVolume(store, { keepLast: 1, graceMs: 0 });
          v = await Volume.open(store, opts);
        }
      }
      await readBack(0, size, 'end');
      await v.close();
      // And as stored, without this writer's memory: a fresh open reads the same.
      const fresh = await Volume.open(store, { ...key, readOnly: true });
      assert.equal(fresh.info.size, size);
      assert.ok((await fresh.read(0, size)).equals(model), where('fresh open'));
      await fresh.close();
      assert.ok(shrinks > 0, `seed ${seed}: no shrink`);
    }
  });
});

describe('reader: index warm-up', () => {
  it('loads the index in the background, so cold random reads need one GET each', async () => {
    // 32 MiB of 4 KiB blocks written 1 MiB at a time into 4 MiB segments: leaves and the
    // nodes above them spread over the segments.
    const size = 32 * MiB;
    const { store, ref } = await filled(size);
    const cold = { readOnly: true, readAroundBytes: 0, readAheadBytes: 0 } satisfies OpenOptions;
    const reads = async (v: Volume, seed: number): Promise<number> => {
      const r = rng(seed);
      const lbas = new Set<number>();
      for (let n = 0; n < 200; n++) lbas.add(Math.floor(r() * (size / (4 * KiB))));
      await Promise.all(
        [...lbas].map(async (lba) => {
          const got = await v.read(lba * 4 * KiB, 4 * KiB);
          assert.ok(got.equals(ref.subarray(lba * 4 * KiB, (lba + 1) * 4 * KiB)), `block ${lba}`);
        }),
      );
      return lbas.size;
    };
    // Without the warm-up, reads miss index nodes and GET them on the way.
    let v = await Volume.open(store, cold);
    store.reset();
    await reads(v, 1);
    const without = { gets: store.segmentGets, stats: v.stats() };
    await v.close();
    assert.ok(without.stats.nodeCacheMisses > 0, JSON.stringify(without));
    assert.ok(without.gets > without.stats.dataGets, JSON.stringify(without));
    // With it: once it is over, every read's only GET is its data.
    v = await Volume.open(store, { ...cold, warmIndex: true });
    const visited = await v.indexWarmed();
    assert.ok(visited > size / (4 * KiB) / 127, `visited ${visited}`);
    store.reset();
    const misses = v.stats().nodeCacheMisses;
    const n = await reads(v, 1);
    const st = v.stats();
    assert.equal(st.nodeCacheMisses, misses, JSON.stringify(st));
    assert.equal(store.segmentGets, st.dataGets);
    assert.ok(st.dataGets > 0 && st.dataGets <= n);
    await v.close();
    // Closing at once stops it (no GET after close), and a read racing it is served right.
    for (const seed of [2, 3]) {
      v = await Volume.open(store, { ...cold, warmIndex: true });
      await reads(v, seed);
      await v.close();
      const after = store.segmentGets;
      await new Promise((res) => setTimeout(res, 20));
      assert.equal(store.segmentGets, after, 'a GET after close');
    }
  });
});

describe('reader: block status', () => {
  it('matches a model of mapped blocks under writes, trims, zeroes and flushes in flight', async () => {
    for (const seed of [21, 22, 23]) {
      const bs = 4 * KiB;
      const blocks = 8192; // 32 MiB: trims past 1024 blocks are kept as ranges in the buffer
      const size = blocks * bs;
      const store = MemStore.isolated();
      await Volume.create(store, { size, segmentSize: 1 * MiB });
      const opts: OpenOptions = { flushIntervalMs: 0, nodeCacheBytes: 16 * KiB };
      let v = await Volume.open(store, opts);
      const mapped = new Uint8Array(blocks);
      const r = rng(seed);
      const span = (): [number, number] => {
        const n = 1 + Math.floor(r() < 0.2 ? r() * 3000 : r() * 40);
        const lo = Math.floor(r() * (blocks - n));
        return [lo, lo + n];
      };
      const expected = (offset: number, length: number): [number, number, boolean][] => {
        const out: [number, number, boolean][] = [];
        for (let at = offset; at < offset + length;) {
          const lba = Math.floor(at / bs);
          const to = Math.min((lba + 1) * bs, offset + length);
          const hole = mapped[lba] === 0;
          const prev = out[out.length - 1];
          if (prev && prev[2] === hole) prev[1] = to - prev[0];
          else out.push([at, to - at, hole]);
          at = to;
        }
        return out;
      };
      for (let batch = 0; batch < 50; batch++) {
        for (let k = 0; k < 6; k++) {
          const [lo, hi] = span();
          const roll = r();
          if (roll < 0.6) {
            const data = pattern((hi - lo) * bs, seed * 1000 + batch * 8 + k);
            for (let i = 0; i < data.length; i += bs) data[i] = 1; // no block of zeros
            await v.write(lo * bs, data);
            mapped.fill(1, lo, hi);
          } else if (roll < 0.8) {
            await v.trim(lo * bs, (hi - lo) * bs);
            mapped.fill(0, lo, hi);
          } else {
            await v.writeZeroes(lo * bs, (hi - lo) * bs);
            mapped.fill(0, lo, hi);
          }
        }
        // Asked while a flush moves blocks from the buffer to the index, and after it.
        const flushing = r() < 0.5 ? v.flush() : undefined;
        for (let q = 0; q < 4; q++) {
          const whole = q === 0;
          const offset = whole ? 0 : Math.floor(r() * (size - 1));
          const length = whole ? size : 1 + Math.floor(r() * Math.min(size - offset, 4 * MiB));
          const got = await v.extents(offset, length);
          assert.deepEqual(
            got.map((e) => [e.offset, e.length, e.hole]),
            expected(offset, length),
            `seed ${seed} batch ${batch}: extents ${offset}+${length}`,
          );
        }
        await flushing;
        if (batch % 20 === 19) {
          await v.close();
          v = await Volume.open(store, opts);
        }
      }
      await v.close();
    }
  });
});

describe('reader: bulk reads from a local store', () => {
  it('reads raw runs straight into the output, uncached, and matches a model under writes', async () => {
    for (const seed of [21, 22]) {
      const size = 8 * MiB;
      const dir = freshDir();
      mkdirSync(dir);
      const store = new WatchedStore(new FileStore(dir));
      await Volume.create(store, { size, segmentSize: 1 * MiB, compression: 'none' });
      // Parts of 64 KiB: a run is read in several GETs, each into its own place.
      const opts: OpenOptions = {
        flushIntervalMs: 0,
        dataCacheBytes: 1 * MiB,
        readPartBytes: 64 * KiB,
      };
      const v = await Volume.open(store, opts);
      const model = Buffer.alloc(size);
      const r = rng(seed);
      for (let batch = 0; batch < 40; batch++) {
        const busy: [number, number][] = [];
        const overlaps = (a: number, b: number): boolean => busy.some(([x, y]) => a < y && x < b);
        const ops: Promise<unknown>[] = [];
        const checks: (() => void)[] = [];
        for (let k = 0; k < 10; k++) {
          // Sizes around the bulk threshold, offsets on 512-byte sectors: blocks cut at both
          // ends, and runs of blocks from several segments and the write buffer.
          const len = (1 + Math.floor(r() * 1024)) * 512;
          const off = Math.floor(r() * ((size - len) / 512)) * 512;
          const roll = r();
          if (roll < 0.3 && !overlaps(off, off + len)) {
            const data = pattern(len, seed * 1000 + batch * 16 + k);
            data.copy(model, off);
            busy.push([off, off + len]);
            ops.push(v.write(off, data));
          } else if (roll < 0.35) {
            ops.push(v.flush());
          } else if (!overlaps(off, off + len)) {
            const want = Buffer.from(model.subarray(off, off + len));
            busy.push([off, off + len]);
            ops.push(
              v.read(off, len).then((got) => {
                checks.push(() =>
                  assert.equal(
                    sha(got),
                    sha(want),
                    `seed ${seed} batch ${batch}: read ${off}+${len}`,
                  ),
                );
              }),
            );
          }
        }
        await Promise.all(ops);
        for (const c of checks) c();
      }
      const block = pattern(4096, seed);
      block.copy(model, 4096);
      await v.write(4096, block);
      await v.close();
      const ro = await Volume.open(store, { ...opts, readOnly: true });
      store.intoGets = 0;
      assert.equal(sha(await ro.read(0, size)), sha(model), `seed ${seed}: final content`);
      assert.ok(store.intoGets > 0, 'runs of raw blocks were read into the output');
      // The bulk read left nothing in the memory cache: a block read again is a miss. A
      // small read is kept.
      await ro.read(4096, 4096);
      assert.equal(ro.stats().dataCacheHits, 0, 'the bulk read was not cached');
      await ro.read(4096, 4096);
      assert.equal(ro.stats().dataCacheHits, 1, 'the small read was cached');
      await ro.close();
    }
  });

  it('keeps spare buffers up to its bound, by length, and lets them all go when idle', async () => {
    const spare = new SpareBuffers(3 * 1024, 50);
    const a = Buffer.alloc(1024);
    const b = Buffer.alloc(1024);
    const c = Buffer.alloc(2048);
    spare.give(a);
    spare.give(c);
    spare.give(b); // over the bound: not kept
    assert.equal(spare.kept, 3 * 1024);
    assert.equal(spare.take(1024), a);
    assert.equal(spare.take(1024), undefined, 'b was not kept');
    assert.equal(spare.take(4096), undefined, 'no buffer of another length');
    spare.give(b);
    await new Promise((r) => setTimeout(r, 120));
    assert.equal(spare.kept, 0, 'idle buffers are let go');
    assert.equal(spare.take(2048), undefined);
  });

  it('lends the buffers of bulk reads and reuses one only once it is given back', async () => {
    for (const seed of [31, 32]) {
      const size = 8 * MiB;
      const dir = freshDir();
      mkdirSync(dir);
      const store = new FileStore(dir);
      await Volume.create(store, { size, segmentSize: 1 * MiB, compression: 'none' });
      const v = await Volume.open(store, { flushIntervalMs: 0, dataCacheBytes: 1 * MiB });
      const model = Buffer.alloc(size);
      const r = rng(seed);
      // Buffers being "sent" (as by the NBD server): they must not change until given back.
      const held: { buf: Buffer; sum: string; what: string }[] = [];
      const giveBack = (k: number): void => {
        const h = held.splice(k, 1)[0] as (typeof held)[number];
        assert.equal(sha(h.buf), h.sum, `seed ${seed}: ${h.what} changed while lent`);
        v.release(h.buf);
      };
      const seen = new WeakSet<Buffer>();
      let reused = 0;
      const lengths = [4 * KiB, 64 * KiB, 128 * KiB, 100 * KiB + 512, 256 * KiB];
      for (let batch = 0; batch < 60; batch++) {
        const busy: [number, number][] = [];
        const overlaps = (a: number, b: number): boolean => busy.some(([x, y]) => a < y && x < b);
        const ops: Promise<unknown>[] = [];
        for (let k = 0; k < 12; k++) {
          const len = lengths[Math.floor(r() * lengths.length)] as number;
          const off = Math.floor(r() * ((size - len) / 512)) * 512;
          const roll = r();
          if (overlaps(off, off + len)) continue;
          busy.push([off, off + len]);
          if (roll < 0.3) {
            const data = pattern(len, seed * 1000 + batch * 16 + k);
            data.copy(model, off);
            ops.push(v.write(off, data));
          } else if (roll < 0.35) {
            ops.push(v.flush());
          } else {
            const want = sha(model.subarray(off, off + len));
            const what = `batch ${batch} read ${off}+${len}`;
            ops.push(
              v.read(off, len).then((got) => {
                assert.equal(sha(got), want, `seed ${seed}: ${what}`);
                if (seen.has(got)) reused++;
                seen.add(got);
                held.push({ buf: got, sum: want, what });
              }),
            );
          }
        }
        await Promise.all(ops);
        // Give back a random part of what is held; the rest stays lent across batches.
        for (let i = held.length - 1; i >= 0; i--) if (r() < 0.6) giveBack(i);
      }
      while (held.length > 0) giveBack(held.length - 1);
      assert.ok(reused > 20, `seed ${seed}: buffers given back were used again (${reused})`);
      // A small read's buffer is not lent: giving it back changes nothing.
      const small = await v.read(0, 4 * KiB);
      v.release(small);
      assert.notEqual(await v.read(0, 4 * KiB), small);
      // A buffer given back twice serves one read, not two at once.
      const a = await v.read(0, 64 * KiB);
      v.release(a);
      v.release(a);
      const b = await v.read(64 * KiB, 64 * KiB);
      const c = await v.read(128 * KiB, 64 * KiB);
      assert.equal(b, a);
      assert.notEqual(c, a);
      assert.deepEqual(c, model.subarray(128 * KiB, 192 * KiB));
      await v.close();
      await store.close();
    }
  });

  it('reports a damaged block of a bulk read with its key and returns no data', async () => {
    const { store, seg } = await damagedVolume();
    const ro = await Volume.open(store, { readOnly: true });
    await assert.rejects(ro.read(0, 1 * MiB), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'CHECKSUM_MISMATCH');
      assert.match(e.message, new RegExp(seg));
      // The block named is the one the damaged byte (segment offset 512 KiB) lies in.
      const m = /\(block (\d+)\) failed its checksum at segment offset (\d+)/.exec(e.message);
      assert.ok(m, e.message);
      const at = Number(m[2]);
      assert.ok(at <= 512 * KiB && 512 * KiB < at + 4 * KiB, e.message);
      return true;
    });
    await ro.close();
  });
});

describe('reader: lone blocks of readv', () => {
  it('reads a local block into a lent buffer, uncached, and matches a model under writes', async () => {
    // file:// reads into the lent buffer; mem:// hands out its own bytes, which are copied.
    for (const [seed, kind] of [
      [41, 'file'],
      [42, 'file'],
      [43, 'mem'],
      [44, 'mem'],
    ] as const) {
      const bs = 4 * KiB;
      const size = 4 * MiB;
      const dir = freshDir();
      mkdirSync(dir);
      const store = new HeldStore(kind === 'file' ? new FileStore(dir) : MemStore.isolated());
      await Volume.create(store, { size, segmentSize: 1 * MiB, compression: 'none' });
      const v = await Volume.open(store, { flushIntervalMs: 0, dataCacheBytes: 1 * MiB });
      const model = Buffer.alloc(size);
      const r = rng(seed);
      const held: { buf: Buffer; sum: string; what: string }[] = [];
      const giveBack = (k: number): void => {
        const h = held.splice(k, 1)[0] as (typeof held)[number];
        assert.equal(sha(h.buf), h.sum, `seed ${seed}: ${h.what} changed while lent`);
        v.release(h.buf);
      };
      const seen = new WeakSet<Buffer>();
      let reused = 0;
      let inFlightReads = 0;
      for (let batch = 0; batch < 50; batch++) {
        // Every few batches a flush whose segment PUT waits: reads run while it is in flight.
        const gated = batch % 5 === 4;
        let flushing: Promise<unknown> | undefined;
        if (gated) {
          store.hold((key) => key.startsWith(SEGMENT_PREFIX));
          flushing = v.flush();
          await new Promise((res) => setImmediate(res));
        }
        const busy = new Set<number>();
        const ops: Promise<unknown>[] = [];
        for (let k = 0; k < 16; k++) {
          const lba = Math.floor(r() * (size / bs));
          if (busy.has(lba)) continue;
          busy.add(lba);
          const roll = r();
          if (roll < 0.25 && !gated) {
            const data = pattern(bs, seed * 10_000 + batch * 16 + k);
            data.copy(model, lba * bs);
            ops.push(v.write(lba * bs, data));
          } else if (roll < 0.3 && !gated) {
            ops.push(v.flush());
          } else {
            const want = sha(model.subarray(lba * bs, (lba + 1) * bs));
            const what = `batch ${batch} readv of block ${lba}`;
            if (gated) inFlightReads++;
            ops.push(
              v.readv(lba * bs, bs).then((got) => {
                const buf = Buffer.concat(got);
                assert.equal(sha(buf), want, `seed ${seed}: ${what}`);
                if (got.length !== 1) return;
                const [one] = got as [Buffer];
                if (seen.has(one)) reused++;
                seen.add(one);
                held.push({ buf: one, sum: want, what });
              }),
            );
          }
        }
        await Promise.all(ops);
        if (flushing) {
          store.release();
          await flushing;
        }
        for (let i = held.length - 1; i >= 0; i--) if (r() < 0.6) giveBack(i);
      }
      while (held.length > 0) giveBack(held.length - 1);
      assert.ok(inFlightReads > 0, `seed ${seed}: reads ran while a segment was in flight`);
      assert.ok(reused > 20, `seed ${seed}: buffers given back were used again (${reused})`);
      assert.equal(v.stats().dataCacheHits, 0, `seed ${seed}: lone local blocks are not cached`);
      await v.close();
      const ro = await Volume.open(store, { readOnly: true });
      assert.equal(sha(await ro.read(0, size)), sha(model), `seed ${seed}: final content`);
      await ro.close();
      await store.close();
    }
  });

  it('hands out a remote block from the memory cache as it is, and never changes it', async () => {
    // The same engine with a store that is not local: blocks go to the memory cache, and a
    // lone block read again is the cache's own buffer (no copy); a write does not change it.
    class Remote extends CountingStore {
      override readonly url = 's3://bucket/vol/';
    }
    const store = new Remote(MemStore.isolated());
    await Volume.create(store, { size: 1 * MiB, segmentSize: 1 * MiB });
    const v = await Volume.open(store, { flushIntervalMs: 0, readAroundBytes: 0 });
    const first = pattern(4 * KiB, 7);
    await v.write(8 * KiB, first);
    await v.flush();
    const [a] = (await v.readv(8 * KiB, 4 * KiB)) as [Buffer];
    const [b] = (await v.readv(8 * KiB, 4 * KiB)) as [Buffer];
    assert.deepEqual(a, first);
    assert.equal(b, a, 'the cached block itself');
    assert.equal(v.stats().dataCacheHits, 1);
    await v.write(8 * KiB, pattern(4 * KiB, 8));
    assert.deepEqual(a, first, 'a block handed out is not changed by a later write');
    assert.deepEqual(Buffer.concat(await v.readv(8 * KiB, 4 * KiB)), pattern(4 * KiB, 8));
    await v.close();
  });

  it('reports a damaged lone block with its key and returns no data', async () => {
    const { store, seg } = await damagedVolume();
    const ro = await Volume.open(store, { readOnly: true });
    // Some block of the first MiB holds the flipped byte: reading each alone finds it.
    let failed = 0;
    for (let off = 0; off < 1 * MiB; off += 4 * KiB) {
      try {
        await ro.readv(off, 4 * KiB);
      } catch (e) {
        const err = e as Error & { code?: string };
        assert.equal(err.code, 'CHECKSUM_MISMATCH');
        assert.match(err.message, new RegExp(seg));
        failed++;
      }
    }
    assert.equal(failed, 1, 'exactly the damaged block fails');
    await ro.close();
    await store.close();
  });
});

describe('volume with a disk cache', () => {
  function dirBytes(dir: string): number {
    return readdirSync(dir).reduce((s, f) => s + statSync(join(dir, f)).size, 0);
  }

  it('serves reads after a reopen from the cache alone, with the same bytes', async () => {
    const size = 4 * MiB;
    const { store, ref } = await filled(size);
    const dir = freshDir();
    const cacheSize = 8 * MiB;
    const opts: OpenOptions = { readOnly: true, diskCache: { dir, sizeBytes: cacheSize } };
    let v = await Volume.open(store, opts);
    assert.equal(sha(await v.read(0, size)), sha(ref));
    await v.close();
    assert.ok(dirBytes(dir) <= cacheSize);
    store.failSegments = true;
    v = await Volume.open(store, opts);
    for (let o = 0; o < size; o += 64 * KiB)
      assert.equal(sha(await v.read(o, 64 * KiB)), sha(ref.subarray(o, o + 64 * KiB)));
    assert.ok(v.stats().diskCacheHits > 0);
    await v.close();
    // recreate: empty, so the refused GETs show.
    await assert.rejects(async () => {
      const w = await Volume.open(store, {
        ...opts,
        diskCache: { dir, sizeBytes: cacheSize, mode: 'recreate' },
      });
      try {
        await w.read(0, 4096);
      } finally {
        await w.close();
      }
    }, /refused/);
  });

  /** Read-ahead in 256 KiB parts over a fresh 16 MiB disk cache, read-around off. */
  const aheadWithDiskCache = (): OpenOptions => ({
    readOnly: true,
    readAheadBytes: 1 * MiB,
    readPartBytes: 256 * KiB,
    readAroundBytes: 0,
    diskCache: { dir: freshDir(), sizeBytes: 16 * MiB },
  });

  it('reads ahead from the disk cache in whole runs when it holds them (raw and lz4 blocks)', async () => {
    const size = 4 * MiB;
    const blocks = size / (4 * KiB);
    for (const compression of ['none', 'lz4'] as const) {
      const store = new WatchedStore(MemStore.isolated());
      await Volume.create(store, { size, segmentSize: 4 * MiB, compression });
      // (lz4: every block compresses. A cold lz4 run is read ahead whole, each block given to
      // the disk cache as the part lands; once cached, block by block from the cache.)
      const ref = pattern(size, 21);
      if (compression === 'lz4')
        for (let o = 0; o < size; o += 4 * KiB)
          ref.fill(ref.subarray(o, o + 64), o + 64, o + 4 * KiB);
      const w = await Volume.open(store, { flushIntervalMs: 0 });
      await w.write(0, ref);
      await w.close();
      const opts = aheadWithDiskCache();
      const pass = async (): Promise<ReturnType<Volume['stats']>> => {
        const v = await Volume.open(store, opts);
        store.reset();
        for (let o = 0; o < size; o += 64 * KiB) {
          const got = Buffer.concat(await v.readv(o, 64 * KiB));
          assert.ok(got.equals(ref.subarray(o, o + 64 * KiB)), `${compression} at ${o}`);
        }
        const s = v.stats();
        await v.close();
        return s;
      };
      const first = await pass();
      assert.ok(first.prefetchHits > 0.8 * blocks, JSON.stringify(first));
      // Whole parts: a GET per 256 KiB of data or so, not one per 64 KiB read.
      assert.ok(store.segmentGets <= 24, `${compression}: ${store.segmentGets} segment GETs`);
      // Second pass with every segment GET refused: the blocks come from the disk cache.
      store.failSegments = true;
      const second = await pass();
      assert.ok(second.prefetchHits > 0.8 * blocks, JSON.stringify(second));
      assert.ok(second.diskCacheHits >= 0.9 * blocks, JSON.stringify(second));
      assert.equal(second.dataGets, 0);
    }
  });

  it('reuses the memory of parts read ahead only once the disk cache wrote their blocks', async () => {
    const size = 8 * MiB;
    const { store, ref } = await filled(size);
    // Bodies read into the memory offered (and the rest of it scribbled over), as s3:// does.
    const into = new IntoStore(store);
    for (const seed of [1, 2]) {
      const opts = aheadWithDiskCache();
      let v = await Volume.open(into, opts);
      into.reused = 0;
      const r = rng(seed);
      for (let o = 0; o < size; o += 64 * KiB) {
        const pieces = await v.readv(o, 64 * KiB);
        assert.ok(Buffer.concat(pieces).equals(ref.subarray(o, o + 64 * KiB)), `at ${o}`);
        for (const piece of pieces) v.release(piece);
        // Now and then a turn of the event loop, so that cache writes and GETs interleave.
        if (r() < 0.3) await new Promise((res) => setImmediate(res));
        // And at each MiB, however slow the disk, the cache catches up with what was read (in
        // the order fetched): the parts behind are then free for the GETs ahead to reuse.
        const read = (o + 64 * KiB) / (4 * KiB);
        if (read % 256 === 0) {
          for (let waited = 0; v.stats().diskCacheWrites < read; waited += 2) {
            assert.ok(waited < 20_000, `seed ${seed}: the disk cache never caught up`);
            await new Promise((res) => setTimeout(res, 2));
          }
        }
      }
      assert.ok(into.reused > 0, `seed ${seed}: no GET read into reused memory`);
      await v.close();
      // Every block the cache took holds what the volume does: with segment GETs refused,
      // the second pass is served by the cache alone.
      store.failSegments = true;
      v = await Volume.open(into, opts);
      for (let o = 0; o < size; o += 64 * KiB) {
        const got = Buffer.concat(await v.readv(o, 64 * KiB));
        assert.ok(got.equals(ref.subarray(o, o + 64 * KiB)), `seed ${seed}: cached at ${o}`);
      }
      const st = v.stats();
      assert.equal(st.dataGets, 0, JSON.stringify(st));
      assert.equal(st.diskCacheDropped, 0, JSON.stringify(st));
      await v.close();
      store.failSegments = false;
    }
  });

  it('refetches a corrupted cache file and never exceeds its size', async () => {
    const size = 4 * MiB;
    const { store, ref } = await filled(size);
    const dir = freshDir();
    const cacheSize = 1 * MiB;
    const opts: OpenOptions = { readOnly: true, diskCache: { dir, sizeBytes: cacheSize } };
    let v = await Volume.open(store, opts);
    assert.equal(sha(await v.read(0, size)), sha(ref));
    await v.close();
    assert.ok(dirBytes(dir) <= cacheSize, `${dirBytes(dir)} > ${cacheSize}`);
    // Scribble over the whole data file.
    const f = await open(join(dir, 'slots.dat'), 'r+');
    const len = (await f.stat()).size;
    await f.write(Buffer.alloc(len, 0x5a), 0, len, 0);
    await f.close();
    v = await Volume.open(store, opts);
    store.reset();
    assert.equal(sha(await v.read(0, size)), sha(ref));
    assert.ok(v.stats().diskCacheDropped > 0);
    assert.ok(store.segmentGets > 0);
    await v.close();
    assert.ok(dirBytes(dir) <= cacheSize);
  });

  it('never serves stale bytes across restore, compaction and takeover', async () => {
    const size = 2 * MiB;
    const store = new WatchedStore(MemStore.isolated());
    await Volume.create(store, { size, segmentSize: 1 * MiB });
    const dir = freshDir();
    const opts: OpenOptions = {
      flushIntervalMs: 0,
      dataCacheBytes: 64 * KiB,
      nodeCacheBytes: 16 * KiB,
      diskCache: { dir, sizeBytes: 4 * MiB },
    };
    const r = rng(99);
    const model = Buffer.alloc(size);
    const snapshots = new Map<number, Buffer>();
    for (let round = 0; round < 8; round++) {
      const v = await Volume.open(store, opts);
      // Everything read through the cache equals the model (cache filled by earlier rounds).
      assert.equal(sha(await v.read(0, size)), sha(model), `round ${round}: content on open`);
      for (let k = 0; k < 40; k++) {
        const len = (1 + Math.floor(r() * 16)) * 4096;
        const off = Math.floor(r() * ((size - len) / 4096)) * 4096;
        const data = pattern(len, round * 100 + k);
        data.copy(model, off);
        await v.write(off, data);
        if (k % 10 === 9) snapshots.set((await v.flush()).checkpoint, Buffer.from(model));
        if (k % 7 === 0) assert.equal(sha(await v.read(off, len)), sha(data));
      }
      const cp = (await v.flush()).checkpoint;
      snapshots.set(cp, Buffer.from(model));
      if (round % 3 === 1) {
        // Restore an older checkpoint: the cache holds blocks of both.
        const ids = [...snapshots.keys()].filter((c) => c < cp);
        const back = ids[Math.floor(r() * ids.length)] as number;
        await v.restore(back);
        (snapshots.get(back) as Buffer).copy(model);
        snapshots.set((await v.flush()).checkpoint, Buffer.from(model));
      }
      if (round % 4 === 2) {
        // A takeover: another writer fences this one mid-session.
        const other = await Volume.open(store, { ...opts, diskCache: undefined, force: true });
        const data = pattern(64 * KiB, 7000 + round);
        data.copy(model, 128 * KiB);
        await other.write(128 * KiB, data);
        await other.close();
        await v.close().catch(() => undefined);
      } else await v.close();
      if (round % 2 === 1) {
        await compactVolume(store, { keepLast: 1, graceMs: 0 });
        snapshots.clear();
      }
    }
    const v = await Volume.open(store, { ...opts, readOnly: true });
    assert.equal(sha(await v.read(0, size)), sha(model), 'final content');
    assert.ok(v.stats().diskCacheHits > 0, 'the cache was used');
    await v.close();
  });
});
