import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { DiskCache } from '../../../../src/format/cache/disk-cache.js';
import { SlotPolicy } from '../../../../src/format/cache/s3fifo.js';
import { crc32c } from '../../../../src/format/codec/binary.js';
import { blockFor } from '../../../helpers/disk-cache-blocks.js';
import { rng } from '../../../helpers/rng.js';

const root = mkdtempSync(join(tmpdir(), 'hyper-disk-cache-'));
after(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshDir = (): string => join(root, `c${n++}`);
const writer = fileURLToPath(new URL('../../../helpers/disk-cache-writer.ts', import.meta.url));

const BS = 4096;
const sizeFor = (slots: number): number => 64 * 1024 + slots * (BS + 32);

function dirBytes(dir: string): number {
  return readdirSync(dir).reduce((s, f) => s + statSync(join(dir, f)).size, 0);
}

async function openCache(
  dir: string,
  slots: number,
  identity = 'vol-a',
  mode?: 'reuse' | 'recreate',
) {
  const c = await DiskCache.open({
    dir,
    sizeBytes: sizeFor(slots),
    slotSize: BS,
    identity,
    ...(mode ? { mode } : {}),
  });
  return { c, store: await c.storeId('mem://a/') };
}

describe('S3-FIFO slot policy', () => {
  it('finds, evicts within its slots and resists a scan', () => {
    const p = new SlotPolicy(100);
    // A hot set of 30 keys, each read twice so it reaches the main queue.
    for (let k = 0; k < 30; k++) p.insert(0, 1, k * 512);
    for (let round = 0; round < 3; round++) {
      for (let k = 0; k < 30; k++) p.touch(p.find(0, 1, k * 512));
      // Enough cold traffic to push the hot keys through the small queue.
      for (let k = 0; k < 20; k++)
        if (p.find(0, 9, (round * 20 + k) * 512) < 0) p.insert(0, 9, (round * 20 + k) * 512);
    }
    // A scan of 10 000 keys read once.
    for (let k = 0; k < 10_000; k++) {
      p.insert(0, 2, k * 512);
      for (let h = 0; h < 30; h += 7) p.touch(p.find(0, 1, h * 512));
      assert.ok(p.used <= 100);
    }
    for (let k = 0; k < 30; k++)
      assert.ok(p.find(0, 1, k * 512) >= 0, `hot key ${k} survived the scan`);
    // Most of the scan is gone.
    let scanned = 0;
    for (let k = 0; k < 10_000; k++) if (p.find(0, 2, k * 512) >= 0) scanned++;
    assert.ok(scanned <= 70, `scan keys left: ${scanned}`);
  });

  it('keeps its key table consistent over random inserts and removals', () => {
    const p = new SlotPolicy(64);
    const r = rng(7);
    const present = new Map<string, number>();
    for (let i = 0; i < 20_000; i++) {
      const seg = 1 + Math.floor(r() * 8);
      const off = Math.floor(r() * 40) * 512;
      const key = `${seg}:${off}`;
      const s = p.find(3, seg, off);
      assert.equal(s >= 0, present.has(key), `find agrees with the model at step ${i}`);
      if (s >= 0) {
        if (r() < 0.2) {
          p.remove(s);
          present.delete(key);
        } else p.touch(s);
        continue;
      }
      const slot = p.insert(3, seg, off, (victim) => {
        const k = p.keyOf(victim);
        present.delete(`${k.seg}:${k.off}`);
      });
      present.set(key, slot);
      assert.ok(p.used <= 64 && p.used === present.size);
    }
    for (const [key, slot] of present) {
      const [seg, off] = key.split(':').map(Number) as [number, number];
      assert.equal(p.find(3, seg, off), slot);
    }
  });
});

describe('disk cache', () => {
  it('answers hits with the bytes put, misses with nothing', async () => {
    const { c, store } = await openCache(freshDir(), 64);
    const b = blockFor(5, 8192, BS);
    c.put(store, 5, 8192, b);
    await c.settle();
    assert.deepEqual(await c.get(store, 5, 8192, BS, crc32c(b)), b);
    assert.equal(await c.get(store, 5, 4096, BS), undefined);
    assert.equal(await c.get(store, 6, 8192, BS), undefined);
    // A known CRC that does not match (a stale entry): dropped, not served.
    assert.equal(await c.get(store, 5, 8192, BS, crc32c(b) ^ 1), undefined);
    assert.equal(c.has(store, 5, 8192), false);
    const s = c.stats();
    assert.equal(s.hits, 1);
    assert.equal(s.dropped, 1);
    await c.close();
  });

  it('never grows past its size, whatever is put', async () => {
    const dir = freshDir();
    const size = sizeFor(40);
    const c = await DiskCache.open({ dir, sizeBytes: size, slotSize: BS, identity: 'v' });
    const store = await c.storeId('mem://a/');
    for (let seg = 1; seg <= 50; seg++) {
      for (let k = 0; k < 20; k++) c.put(store, seg, k * BS, blockFor(seg, k * BS, BS));
      await c.settle();
      assert.ok(dirBytes(dir) <= size, `${dirBytes(dir)} <= ${size}`);
      assert.ok(c.stats().entries <= 40);
    }
    // The newest entries are readable and right.
    assert.deepEqual(await c.get(store, 50, 0, BS), blockFor(50, 0, BS));
    await c.close();
    // Reopened smaller: the files shrink to the new size.
    const small = sizeFor(20);
    const d = await DiskCache.open({ dir, sizeBytes: small, slotSize: BS, identity: 'v' });
    assert.ok(dirBytes(dir) <= small, `${dirBytes(dir)} <= ${small}`);
    await d.close();
  });

  it('keeps a hot set through a sequential scan larger than the cache', async () => {
    const { c, store } = await openCache(freshDir(), 200);
    for (let k = 0; k < 50; k++) c.put(store, 1, k * BS, blockFor(1, k * BS, BS));
    await c.settle();
    for (let round = 0; round < 2; round++)
      for (let k = 0; k < 50; k++) assert.ok(await c.get(store, 1, k * BS, BS));
    for (let k = 0; k < 2000; k++) {
      c.put(store, 2, k * BS, blockFor(2, k * BS, BS));
      if (k % 100 === 0) await c.settle();
    }
    await c.settle();
    for (let k = 0; k < 50; k++)
      assert.deepEqual(
        await c.get(store, 1, k * BS, BS),
        blockFor(1, k * BS, BS),
        `hot block ${k}`,
      );
    await c.close();
  });

  it('is reused by the same volume, ignored by another, wiped by recreate', async () => {
    const dir = freshDir();
    let { c, store } = await openCache(dir, 64);
    for (let k = 0; k < 10; k++) c.put(store, 3, k * BS, blockFor(3, k * BS, BS));
    await c.close();
    ({ c, store } = await openCache(dir, 64));
    assert.equal(c.stats().reused, 10);
    for (let k = 0; k < 10; k++)
      assert.deepEqual(await c.get(store, 3, k * BS, BS), blockFor(3, k * BS, BS));
    await c.close();
    // Another volume: nothing of the first is used.
    ({ c, store } = await openCache(dir, 64, 'vol-b'));
    assert.equal(c.stats().reused, 0);
    assert.equal(await c.get(store, 3, 0, BS), undefined);
    c.put(store, 4, 0, blockFor(4, 0, BS));
    await c.close();
    ({ c, store } = await openCache(dir, 64, 'vol-b', 'recreate'));
    assert.equal(c.stats().reused, 0);
    assert.equal(await c.get(store, 4, 0, BS), undefined);
    await c.close();
  });

  it('drops corrupted and torn entries instead of serving them', async () => {
    const dir = freshDir();
    let { c, store } = await openCache(dir, 64);
    for (let k = 0; k < 8; k++) c.put(store, 7, k * BS, blockFor(7, k * BS, BS));
    await c.close();
    // Flip bytes in the data of slot 0, tear the header of slot 1, and half-write slot 2's
    // data with another block (the old header stays: a write cut short).
    const data = await open(join(dir, 'slots.dat'), 'r+');
    await data.write(Buffer.from([1, 2, 3]), 0, 3, 100);
    await data.write(blockFor(99, 0, BS / 2), 0, BS / 2, 2 * BS);
    await data.close();
    const idx = await open(join(dir, 'slots.idx'), 'r+');
    await idx.write(Buffer.from([0xff]), 0, 1, 32 + 10);
    await idx.close();
    ({ c, store } = await openCache(dir, 64));
    assert.equal(c.stats().reused, 7, 'the torn header is not loaded');
    let served = 0;
    for (let k = 0; k < 8; k++) {
      const got = await c.get(store, 7, k * BS, BS);
      if (got) {
        assert.deepEqual(got, blockFor(7, k * BS, BS));
        served++;
      }
    }
    assert.equal(served, 5);
    assert.equal(c.stats().dropped, 2);
    await c.close();
  });

  it('reads a run of blocks in consecutive slots at once, checked like single reads', async () => {
    const dir = freshDir();
    let { c, store } = await openCache(dir, 64);
    const want = Buffer.concat(Array.from({ length: 16 }, (_, k) => blockFor(9, k * BS, BS)));
    const crcs = Uint32Array.from({ length: 16 }, (_, k) => crc32c(blockFor(9, k * BS, BS)));
    // Slots 0-7 and then 20-27: two stretches of consecutive slots.
    for (let k = 0; k < 8; k++) c.put(store, 9, k * BS, blockFor(9, k * BS, BS));
    for (let k = 0; k < 12; k++) c.put(store, 1, k * BS, blockFor(1, k * BS, BS));
    for (let k = 8; k < 16; k++) c.put(store, 9, k * BS, blockFor(9, k * BS, BS));
    await c.settle();
    const into = Buffer.alloc(16 * BS);
    assert.equal(await c.readRun(store, 9, 0, BS, crcs, into), true);
    assert.ok(into.equals(want));
    assert.equal(c.stats().hits, 16);
    // A block not cached, or a CRC other than the index's: nothing served.
    assert.equal(await c.readRun(store, 9, BS, BS, crcs, Buffer.alloc(16 * BS)), false);
    const wrong = Uint32Array.from(crcs);
    wrong[3] = (wrong[3] as number) ^ 1;
    assert.equal(await c.readRun(store, 9, 0, BS, wrong, Buffer.alloc(16 * BS)), false);
    assert.equal(c.stats().dropped, 1, 'the entry that failed the check is dropped');
    assert.equal(c.has(store, 9, 3 * BS), false);
    await c.close();
    // Damaged bytes on disk: the run is refused and the damaged entry dropped.
    ({ c, store } = await openCache(dir, 64));
    const data = await open(join(dir, 'slots.dat'), 'r+');
    // Slot 22 holds block 10 of segment 9 (slots 8-19 went to segment 1).
    await data.write(Buffer.from([0xde, 0xad]), 0, 2, 22 * BS + 7);
    await data.close();
    const run = crcs.subarray(8, 12);
    const s9 = c.has(store, 9, 8 * BS);
    assert.equal(s9, true);
    const before = c.stats().dropped;
    assert.equal(await c.readRun(store, 9, 8 * BS, BS, run, Buffer.alloc(4 * BS)), false);
    assert.equal(c.stats().dropped, before + 1);
    assert.equal(
      await c.readRun(store, 9, 12 * BS, BS, crcs.subarray(12), Buffer.alloc(4 * BS)),
      true,
    );
    await c.close();
  });

  it('writes runs of slots together, leaving out entries evicted before they were written', async () => {
    for (const seed of [1, 2, 3]) {
      const dir = freshDir();
      let { c, store } = await openCache(dir, 48);
      const r = rng(seed);
      // Bursts put without waiting: consecutive slots, some reused (evicted) before the queue
      // reaches them, some entries put with the CRC the caller checked them against.
      for (let burst = 0; burst < 12; burst++) {
        const seg = 1 + Math.floor(r() * 6);
        const n = 1 + Math.floor(r() * 40);
        for (let k = 0; k < n; k++) {
          const b = blockFor(seg, k * BS, BS);
          if (r() < 0.5) c.put(store, seg, k * BS, b, crc32c(b));
          else c.put(store, seg, k * BS, b);
        }
        if (r() < 0.5) await c.settle();
      }
      await c.settle();
      const check = async (cache: DiskCache, s: number): Promise<number> => {
        let found = 0;
        for (let seg = 1; seg <= 6; seg++)
          for (let k = 0; k < 40; k++) {
            const want = blockFor(seg, k * BS, BS);
            const got = await cache.get(s, seg, k * BS, BS, crc32c(want));
            if (got !== undefined) {
              assert.ok(got.equals(want), `seed ${seed}: block ${seg}/${k}`);
              found++;
            }
          }
        return found;
      };
      const live = c.stats().entries;
      assert.ok(live > 0 && live <= 48);
      assert.equal(await check(c, store), live);
      assert.equal(c.stats().dropped, 0);
      await c.close();
      // Reopened: every entry written is found again, right.
      ({ c, store } = await openCache(dir, 48));
      assert.equal(await check(c, store), live);
      assert.equal(c.stats().dropped, 0);
      await c.close();
    }
  });

  it('says when it is done with the body of a run, so that its memory may change', async () => {
    for (const seed of [1, 2, 3]) {
      const { c, store } = await openCache(freshDir(), 32);
      const r = rng(seed);
      // Runs of 1 to 24 blocks, put without waiting; each body is scribbled over as soon as
      // its run settles, as a caller reusing the memory would.
      const settled: Promise<void>[] = [];
      const want = new Map<string, Buffer>();
      for (let run = 0; run < 10; run++) {
        const seg = 1 + Math.floor(r() * 4);
        const n = 1 + Math.floor(r() * 24);
        const first = Math.floor(r() * 16);
        const body = Buffer.alloc(n * BS);
        const crcs = new Uint32Array(n);
        for (let k = 0; k < n; k++) {
          const b = blockFor(seg, (first + k) * BS, BS);
          b.copy(body, k * BS);
          crcs[k] = crc32c(b);
          want.set(`${seg}/${first + k}`, b);
        }
        settled.push(
          c.putRun(store, seg, first * BS, BS, body, crcs).then(() => void body.fill(0x5a)),
        );
        if (r() < 0.3) await settled[settled.length - 1];
      }
      await Promise.all(settled);
      // Every entry the cache kept reads back right (none holds the scribbles).
      let found = 0;
      for (const [k, b] of want) {
        const [seg, blk] = k.split('/').map(Number) as [number, number];
        const got = await c.get(store, seg, blk * BS, BS, crc32c(b));
        if (got !== undefined) {
          assert.ok(got.equals(b), `seed ${seed}: block ${k}`);
          found++;
        }
      }
      assert.ok(found > 0 && found === c.stats().entries, `seed ${seed}: ${found} found`);
      assert.equal(c.stats().dropped, 0);
      // A closed cache takes nothing and settles at once.
      await c.close();
      await c.putRun(store, 9, 0, BS, Buffer.alloc(BS), new Uint32Array(1));
    }
  });

  it('is usable after the process writing it is killed (kill -9)', async () => {
    const dir = freshDir();
    const slots = 256;
    for (let trial = 0; trial < 3; trial++) {
      const child = spawn(
        process.execPath,
        ['--import', 'tsx', writer, dir, String(sizeFor(slots)), String(BS)],
        {
          stdio: ['ignore', 'pipe', 'inherit'],
        },
      );
      await new Promise<void>((resolve, reject) => {
        child.stdout.on('data', (d: Buffer) => {
          if (d.toString().includes('ready')) resolve();
        });
        child.once('exit', (code) => reject(new Error(`writer exited ${code}`)));
      });
      await new Promise((r) => setTimeout(r, 30 + trial * 40));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      assert.ok(dirBytes(dir) <= sizeFor(slots));
      // Another process left the lock: it is taken over. Every entry served is right.
      const { c, store } = await openCache(dir, slots);
      const s0 = c.stats();
      assert.ok(s0.reused > 0, 'entries survive the kill');
      const man = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as {
        volume: string;
      };
      assert.equal(man.volume, 'vol-a');
      let served = 0;
      for (let seg = 1; seg < 400; seg++) {
        for (let k = 0; k < 64; k++) {
          if (!c.has(store, seg, k * BS)) continue;
          const got = await c.get(store, seg, k * BS, BS);
          if (got) {
            assert.deepEqual(got, blockFor(seg, k * BS, BS));
            served++;
          }
        }
      }
      assert.ok(served > 0);
      await c.close();
    }
  });

  it('refuses a directory in use by another live process', async () => {
    const dir = freshDir();
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', writer, dir, String(sizeFor(64)), String(BS)],
      {
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    await new Promise<void>((resolve) => child.stdout.on('data', () => resolve()));
    await assert.rejects(openCache(dir, 64), /in use by process/);
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
  });
});
