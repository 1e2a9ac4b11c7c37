import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { FileStore } from '../../../../src/format/store/file.js';
import { LOOP_READ_MAX, LOOP_STREAK, Preader } from '../../../../src/format/store/pread.js';
import { rng } from '../../../helpers/rng.js';

/** A clock that moves `step` ms each time it is read: a timed read takes that long. */
function clock(step: { ms: number }) {
  let t = 1000;
  return {
    now: () => {
      t += step.ms;
      return t;
    },
    advance: (ms: number) => (t += ms),
  };
}

describe('Preader: small reads in the loop while they are fast', () => {
  let dir: string;
  let path: string;
  let fd: number;
  const data = randomBytes(256 * 1024);

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'hyper-pread-'));
    path = join(dir, 'f');
    writeFileSync(path, data);
    fd = openSync(path, 'r');
  });
  after(async () => {
    closeSync(fd);
    await rm(dir, { recursive: true, force: true });
  });

  it('reads the right bytes in the loop and on the pool (large reads)', async () => {
    const p = new Preader();
    const small = Buffer.alloc(4096);
    assert.equal(await p.read(fd, small, 0, 4096, 12_288), 4096);
    assert.deepEqual(small, data.subarray(12_288, 16_384));
    const big = Buffer.alloc(LOOP_READ_MAX + 4096);
    assert.equal(await p.read(fd, big, 0, big.length, 4096), big.length);
    assert.deepEqual(big, data.subarray(4096, 4096 + big.length));
    // Past the end: a short read, as pread gives.
    assert.equal(await p.read(fd, small, 0, 4096, data.length - 100), 100);
    assert.deepEqual(p.counters, { loop: 2, pool: 1, backoffs: 0 });
  });

  it('sends reads to the pool after a window with many slow reads, then tries the loop again', async () => {
    const step = { ms: 0.001 };
    const c = clock(step);
    const p = new Preader({ now: c.now, slowMs: 0.05, window: 64, slowLimit: 16, backoffMs: 2000 });
    const buf = Buffer.alloc(4096);
    // A burst of preemption (15 slow reads in a window) keeps the reads in the loop.
    for (let round = 0; round < 3; round++)
      for (let i = 0; i < 64; i++) {
        step.ms = i < 15 ? 0.5 : 0.001;
        await p.read(fd, buf, 0, 4096, 0);
      }
    assert.deepEqual(p.counters, { loop: 192, pool: 0, backoffs: 0 });
    // A device: every read is slow. The 16th sends the reads to the pool.
    step.ms = 0.1;
    for (let i = 0; i < 16; i++) await p.read(fd, buf, 0, 4096, 4096);
    assert.equal(p.counters.backoffs, 1);
    for (let i = 0; i < 10; i++) {
      assert.equal(await p.read(fd, buf, 0, 4096, 8192), 4096);
      assert.deepEqual(buf, data.subarray(8192, 12_288));
    }
    assert.equal(p.counters.pool, 10);
    assert.equal(p.counters.loop, 208);
    // After the back-off, the loop is tried again; fast reads stay there.
    c.advance(2001);
    step.ms = 0.001;
    for (let i = 0; i < 100; i++) await p.read(fd, buf, 0, 4096, 0);
    assert.deepEqual(p.counters, { loop: 308, pool: 10, backoffs: 1 });
  });

  it('lets the event loop turn during a long run of reads in the loop', async () => {
    const p = new Preader();
    let turned = false;
    setImmediate(() => (turned = true));
    const order: boolean[] = [];
    const buf = Buffer.alloc(4096);
    await Promise.all(
      Array.from({ length: LOOP_STREAK + 4 }, (_, k) =>
        p.read(fd, buf, 0, 4096, k * 4096).then(() => order.push(turned)),
      ),
    );
    // The first LOOP_STREAK resolve at once; the rest after the loop has turned.
    assert.deepEqual(order, [
      ...Array<boolean>(LOOP_STREAK).fill(false),
      ...Array<boolean>(4).fill(true),
    ]);
    assert.equal(p.counters.loop, LOOP_STREAK + 4);
  });

  it('rejects with the system error in either mode', async () => {
    const p = new Preader();
    const dirFd = openSync(dir, 'r');
    try {
      await assert.rejects(p.read(dirFd, Buffer.alloc(16), 0, 16, 0), { code: 'EISDIR' });
      const big = Buffer.alloc(LOOP_READ_MAX + 1);
      await assert.rejects(p.read(dirFd, big, 0, big.length, 0), { code: 'EISDIR' });
    } finally {
      closeSync(dirFd);
    }
  });

  it('serves a file store’s ranged reads of write-once objects', async () => {
    await mkdir(join(dir, 'store'));
    const store = new FileStore(join(dir, 'store'));
    await store.put('seg', data);
    const sub = store.sub('x/');
    await sub.put('o', data.subarray(0, 8192));
    const got = await store.get('seg', { range: { offset: 4096, length: 4096 }, immutable: true });
    assert.deepEqual(got.body, data.subarray(4096, 8192));
    const got2 = await sub.get('o', { range: { offset: 100, length: 50 }, immutable: true });
    assert.deepEqual(got2.body, data.subarray(100, 150));
    // One policy for the store and its sub-stores.
    assert.equal(store.preader.counters.loop, 2);
    await store.close();
    await (sub as FileStore).close();
  });

  // Kept descriptors are closed when more than 64 objects are open and on close(); a read in
  // flight on the thread pool must finish on its own file first (a descriptor closed under
  // it could be reused by another object's open). Every read is checked against its object.
  for (const mode of ['loop', 'pool'] as const)
    it(`ranged reads of 100 objects under handle eviction and close stay right (${mode})`, async () => {
      const seed = 7 + (mode === 'pool' ? 1 : 0);
      const rand = rng(seed);
      const root = join(dir, `evict-${mode}`);
      await mkdir(root);
      // Pool: every read counts as slow, so after the first one they all go to the pool. Loop:
      // none does (a loaded machine must not send them to the pool and fail the count below).
      const preader = new Preader(mode === 'pool' ? { slowMs: -1, slowLimit: 1 } : { slowMs: 1e9 });
      const store = new FileStore(root, { preader });
      const objects = Array.from({ length: 100 }, (_, k) =>
        randomBytes(16 * 1024 + Math.floor(rand() * 200 * 1024) + k),
      );
      await Promise.all(objects.map((b, k) => store.put(`o/${k}`, b)));
      let next = 0;
      let closes = 0;
      const worker = async (): Promise<void> => {
        while (next < 3000) {
          const n = next++;
          if (n % 500 === 499) {
            closes++;
            void store.close();
          }
          const k = Math.floor(rand() * objects.length);
          const obj = objects[k] as Buffer;
          const offset = Math.floor(rand() * obj.length);
          const length = Math.min(obj.length - offset, 1 + Math.floor(rand() * 128 * 1024));
          const got = await store.get(`o/${k}`, { range: { offset, length }, immutable: true });
          assert.ok(
            got.body.equals(obj.subarray(offset, offset + length)),
            `seed ${seed}: read ${n} of o/${k} at ${offset}+${length} returned other bytes`,
          );
        }
      };
      await Promise.all(Array.from({ length: 32 }, worker));
      await store.close();
      assert.equal(closes, 6);
      if (mode === 'pool')
        assert.ok(preader.counters.pool > 2500, JSON.stringify(preader.counters));
      else assert.ok(preader.counters.loop > 1000, JSON.stringify(preader.counters));
    });
});
