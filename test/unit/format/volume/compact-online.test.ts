/**
 * Online compaction: compactVolume run on the volume a live writer holds open (the `volume`
 * option), while that writer's clients write, zero, trim and flush, in seeded random
 * interleavings. Against a model of the device:
 *   - every read, during the run and after, returns what the model says (a block compaction
 *     copies out of an old segment never lands over a newer change);
 *   - after a final flush, a fresh open of the volume reads the model byte for byte, and a
 *     deep check finds nothing wrong (no segment a kept checkpoint reads was deleted);
 *   - the store shrinks: what compaction reclaims is gone (bounded stored bytes).
 * A second compaction on the same live volume at the same time is refused.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { isHyperError } from '../../../../src/errors.js';
import { PIN_PREFIX, SEGMENT_PREFIX } from '../../../../src/format/keys.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type { ObjectStore } from '../../../../src/format/store/types.js';
import { checkVolume } from '../../../../src/format/volume/check.js';
import { createSnapshot } from '../../../../src/format/volume/history.js';
import { compactVolume, type CompactResult } from '../../../../src/format/volume/compact.js';
import { KiB, MiB } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { rewriteBlocks } from '../../../../src/format/volume/walk.js';
import { FlakyStore } from '../../../helpers/flaky-store.js';
import { rng } from '../../../helpers/rng.js';

const SIZE = 4 * MiB;
const BS = 4 * KiB;

async function listKeys(store: ObjectStore): Promise<string[]> {
  const keys: string[] = [];
  for await (const p of store.list('')) for (const o of p.objects) keys.push(o.key);
  return keys.sort();
}

async function storedBytes(store: ObjectStore): Promise<number> {
  let n = 0;
  for await (const p of store.list(SEGMENT_PREFIX)) for (const o of p.objects) n += o.size;
  return n;
}

/** A deep check finds nothing wrong (garbage the next compaction removes is no problem). */
async function assertClean(
  store: ObjectStore,
  what = '',
  openStore?: (url: string) => Promise<ObjectStore>,
): Promise<void> {
  const report = await checkVolume(store, { deep: true, ...(openStore ? { openStore } : {}) });
  const bad = report.problems.filter((p) => p.kind !== 'orphan');
  assert.deepEqual(bad, [], `${what}: ${JSON.stringify(bad)}`);
}

async function trial(seed: number): Promise<{ compactions: number; rewritten: number }> {
  const r = rng(seed);
  // A store a moment away: the clients' changes land while compaction's reads are out.
  const store = new FlakyStore(MemStore.isolated(`mem://online-${seed}/`), {
    rate: 0,
    rand: r,
    injected: 0,
    delayMs: () => (r() < 0.5 ? 0 : 1 + Math.floor(r() * 3)),
  });
  // Every third seed compresses; of the others, every other one deduplicates (its writes
  // repeat a few contents, so that new blocks point at stored ones compaction may move).
  const dedup = seed % 6 === 2 || seed % 6 === 4;
  await Volume.create(store, {
    size: SIZE,
    segmentSize: 1 * MiB,
    ...(seed % 3 === 0 ? { compression: 'lz4' as const } : {}),
    ...(dedup ? { dedup: true } : {}),
  });
  // Every fourth seed logs its writes to a WAL (the copies are not logged).
  const wal = MemStore.isolated(`mem://online-wal-${seed}/`);
  const openStore = (url: string): Promise<ObjectStore> =>
    Promise.resolve(url === wal.url ? wal : store);
  const vol = await Volume.open(store, {
    flushIntervalMs: 0,
    openStore,
    ...(seed % 4 === 1 ? { walUrl: wal.url } : {}),
  });
  const model = Buffer.alloc(SIZE);
  const stripe = 64 * KiB;
  /** Read back one of client `id`'s stripes (nothing else changes it meanwhile). */
  const check = async (id: number, what: string): Promise<void> => {
    const off = (Math.floor(r() * (SIZE / stripe / 2)) * 2 + id) * stripe;
    const got = await vol.read(off, stripe);
    const want = model.subarray(off, off + stripe);
    assert.ok(
      got.equals(want),
      `seed ${seed}: ${what}: read ${off}+${stripe} differs from the model`,
    );
  };
  // Clients: one change at a time each, applied to the model when acknowledged (changes of
  // two clients never overlap: each owns every other 64 KiB stripe).
  const client = async (id: number, steps: number): Promise<void> => {
    for (let i = 0; i < steps; i++) {
      const s = Math.floor(r() * (SIZE / stripe / 2)) * 2 + id;
      const off = s * stripe + Math.floor(r() * (stripe / 512)) * 512;
      const len = Math.min(s * stripe + stripe - off, 512 * (1 + Math.floor(r() * 64)));
      const p = r();
      if (p < 0.7) {
        // (Deduplicating: one of four contents from a window that slides as the client goes
        // on, so that new contents keep coming and each repeats for a while.)
        const fill = dedup
          ? (Math.floor(i / 8) + Math.floor(r() * 4)) % 255
          : Math.floor(r() * 255);
        const data = Buffer.alloc(len, 1 + fill);
        if (!dedup) data.writeUInt32LE(seed ^ i, 0);
        await vol.write(off, data);
        data.copy(model, off);
      } else if (p < 0.8) {
        await vol.writeZeroes(off, len);
        model.fill(0, off, off + len);
      } else if (p < 0.9) {
        // Whole blocks read as zeros after a trim; partial edges keep what they held.
        await vol.trim(off, len);
        const lo = Math.ceil(off / BS) * BS;
        const hi = Math.floor((off + len) / BS) * BS;
        if (hi > lo) model.fill(0, lo, hi);
      } else {
        await vol.flush();
      }
      if (r() < 0.2) await check(id, `client ${id} step ${i}`);
    }
  };
  let compactions = 0;
  let rewritten = 0;
  let clientsDone = false;
  const compactor = async (): Promise<void> => {
    while (!clientsDone) {
      const p = r();
      const res: CompactResult = await compactVolume(store, {
        volume: vol,
        graceMs: 0,
        minLive: 0.3 + r() * 0.7,
        ...(p < 0.5 ? { keepLast: 1 + Math.floor(r() * 3) } : {}),
      });
      compactions++;
      rewritten += res.blocksRewritten;
      // A second one beside it is refused (only while the first is moving blocks).
      await new Promise((resolve) => setImmediate(resolve));
    }
  };
  const clients = Promise.all([client(0, 150), client(1, 150)]).finally(() => {
    clientsDone = true;
  });
  await Promise.all([clients, compactor()]);
  // One more, with nothing written beside it: everything old can go.
  await vol.flush();
  await compactVolume(store, { volume: vol, graceMs: 0, keepLast: 1, minLive: 0.9 });
  compactions++;
  const all = await vol.read(0, SIZE);
  assert.ok(all.equals(model), `seed ${seed}: the live volume differs from the model`);
  await vol.close();

  const again = await Volume.open(store, { readOnly: true, openStore });
  assert.ok((await again.read(0, SIZE)).equals(model), `seed ${seed}: reopened volume differs`);
  await again.close();
  await assertClean(store, `seed ${seed}`, openStore);
  // Compaction kept the store near what the volume holds (2 MiB of data at most, index nodes
  // and the last few segments beside it), not every overwrite ever made.
  const stored = await storedBytes(store);
  assert.ok(stored < 4 * SIZE, `seed ${seed}: ${stored} bytes stored`);
  return { compactions, rewritten };
}

describe('online compaction beside a live writer', () => {
  it('keeps every acknowledged change, reads right throughout, and reclaims space (seeded)', async () => {
    const first = Number(process.env.HYPER_ONLINE_COMPACT_FIRST_SEED ?? 1);
    const seeds = Number(process.env.HYPER_ONLINE_COMPACT_SEEDS ?? 16);
    let rewritten = 0;
    let compactions = 0;
    for (let seed = first; seed < first + seeds; seed++) {
      const t = await trial(seed);
      rewritten += t.rewritten;
      compactions += t.compactions;
    }
    // The runs moved blocks beside the clients (not only dropped and deleted).
    assert.ok(
      compactions > seeds && rewritten > 0,
      `${compactions} runs, ${rewritten} blocks moved`,
    );
  });

  it('a read that found a block where it was before compaction deleted that segment is done again', async () => {
    const inner = MemStore.isolated('mem://online-moved/');
    await Volume.create(inner, { size: SIZE, segmentSize: 1 * MiB });
    // The first GET of the gated segment is held until released (the client's read).
    let gated: string | undefined;
    let arrived: () => void = () => undefined;
    const arrival = new Promise<void>((r) => (arrived = r));
    let release: () => void = () => undefined;
    const released = new Promise<void>((r) => (release = r));
    const store: ObjectStore = Object.assign(Object.create(inner) as ObjectStore, {
      get: async (key: string, o?: Parameters<ObjectStore['get']>[1]) => {
        if (key === gated) {
          gated = undefined;
          arrived();
          await released;
        }
        return inner.get(key, o);
      },
    });
    const vol = await Volume.open(store, { flushIntervalMs: 0 });
    await vol.write(0, Buffer.alloc(256 * KiB, 0xa1));
    await vol.flush();
    const first = [...(await listKeys(inner))].filter((k) => k.startsWith(SEGMENT_PREFIX)).pop();
    // Half of it written again: the first segment is half live.
    for (let off = 0; off < 256 * KiB; off += 2 * BS) await vol.write(off, Buffer.alloc(BS, 0xb2));
    await vol.close();
    // A fresh writer: nothing cached, the read goes to the store.
    const live = await Volume.open(store, { flushIntervalMs: 0 });
    gated = first;
    const read = live.read(BS, BS); // a block only the first segment holds
    await arrival;
    // Meanwhile the rest of that segment is written again, and compaction deletes it.
    for (let off = BS; off < 256 * KiB; off += 2 * BS)
      await live.write(off, Buffer.alloc(BS, 0xc3));
    await live.flush();
    const r = await compactVolume(store, { volume: live, graceMs: 0, keepLast: 1, minLive: 0 });
    assert.ok(r.segmentsDeleted > 0, JSON.stringify(r));
    assert.equal(await inner.head(first as string), undefined, 'the old segment was not deleted');
    release();
    // The read overlapped the write of its block: it reads the new content, not an error.
    assert.ok((await read).equals(Buffer.alloc(BS, 0xc3)));
    await live.close();
  });

  it('a deduplicating writer never points a new block at a segment compaction deleted (chaos seed 52345)', async () => {
    const store = MemStore.isolated('mem://online-dedup/');
    await Volume.create(store, { size: SIZE, segmentSize: 1 * MiB, dedup: true });
    // (The default: content-index changes stay in memory until 16 MiB of its nodes are dirty.)
    const vol = await Volume.open(store, { flushIntervalMs: 0 });
    const a = Buffer.alloc(64 * KiB, 0x11);
    const before = await listKeys(store);
    await vol.write(0, a);
    await vol.flush();
    const written = (await listKeys(store)).filter(
      (k) => k.startsWith(SEGMENT_PREFIX) && !before.includes(k),
    );
    assert.equal(written.length, 1);
    // Overwritten: only the writer's content index, in memory, still names those blocks.
    await vol.write(0, Buffer.alloc(64 * KiB, 0x22));
    await vol.flush();
    const r = await compactVolume(store, { volume: vol, graceMs: 0, keepLast: 1, minLive: 0.5 });
    assert.ok(r.segmentsDeleted > 0, JSON.stringify(r));
    // The same content again, elsewhere: it must not point at a deleted block.
    await vol.write(1 * MiB, a);
    await vol.flush();
    assert.ok((await vol.read(1 * MiB, a.length)).equals(a));
    await vol.close();
    // The run saw the entries kept in memory, dropped them, and reclaimed their segment.
    assert.ok(
      !(await listKeys(store)).includes(written[0] as string),
      'the segment only the content index named was not reclaimed',
    );
    const again = await Volume.open(store, { readOnly: true });
    assert.ok((await again.read(1 * MiB, a.length)).equals(a), 'reopened volume differs');
    assert.ok((await again.read(0, a.length)).equals(Buffer.alloc(64 * KiB, 0x22)));
    await again.close();
    await assertClean(store);
  });

  it('contents a deduplicating writer stores while compaction runs keep their segments', async () => {
    const inner = MemStore.isolated('mem://online-dedup-during/');
    await Volume.create(inner, { size: SIZE, segmentSize: 1 * MiB, dedup: true });
    // The run's second listing of segments (before it commits its new history) waits for the
    // writer below.
    let gating = false;
    let listings = 0;
    let arrived: () => void = () => undefined;
    const arrival = new Promise<void>((r) => (arrived = r));
    let release: () => void = () => undefined;
    const released = new Promise<void>((r) => (release = r));
    const store: ObjectStore = Object.assign(Object.create(inner) as ObjectStore, {
      list: (prefix: string, o?: Parameters<ObjectStore['list']>[1]) =>
        (async function* () {
          if (gating && prefix === SEGMENT_PREFIX && ++listings === 2) {
            arrived();
            await released;
          }
          yield* inner.list(prefix, o);
        })(),
    });
    const vol = await Volume.open(store, { flushIntervalMs: 0 });
    await vol.write(0, Buffer.alloc(64 * KiB, 0x33));
    await vol.flush();
    gating = true;
    const run = compactVolume(store, { volume: vol, graceMs: 0, keepLast: 1, minLive: 0 });
    await arrival;
    // Meanwhile a new content is stored and overwritten at once: its segment is dead to the
    // block index, and only the content index names it.
    const c = Buffer.alloc(64 * KiB, 0x44);
    await vol.write(1 * MiB, c);
    await vol.flush();
    await vol.write(1 * MiB, Buffer.alloc(64 * KiB, 0x55));
    await vol.flush();
    release();
    const r = await run;
    assert.ok(r.checkpointsDropped > 0, JSON.stringify(r));
    // The content again: the writer points it at the block stored during the run.
    await vol.write(2 * MiB, c);
    await vol.flush();
    assert.ok((await vol.read(2 * MiB, c.length)).equals(c));
    await vol.close();
    const again = await Volume.open(inner, { readOnly: true });
    assert.ok((await again.read(2 * MiB, c.length)).equals(c), 'reopened volume differs');
    await again.close();
    await assertClean(inner);
  });

  it('refuses a second compaction while one runs', async () => {
    const store = MemStore.isolated('mem://online-twice/');
    await Volume.create(store, { size: SIZE, segmentSize: 1 * MiB });
    const vol = await Volume.open(store, { flushIntervalMs: 0 });
    for (let round = 0; round < 4; round++) {
      // All of it first, then every other block: the first segments stay half live.
      for (let off = 0; off < SIZE; off += round === 0 ? BS : 2 * BS)
        await vol.write(off, Buffer.alloc(BS, round + 1));
      await vol.flush();
    }
    // As while another compaction runs on it.
    const held = vol.claimExclusive('compaction');
    const second = await compactVolume(store, {
      volume: vol,
      graceMs: 0,
      keepLast: 1,
      minLive: 1,
    }).then(
      () => undefined,
      (e: unknown) => e,
    );
    assert.ok(isHyperError(second, 'LEASE_HELD'), String(second));
    held();
    const r = await compactVolume(store, { volume: vol, graceMs: 0, keepLast: 1, minLive: 1 });
    assert.ok(r.blocksRewritten > 0, JSON.stringify(r));
    await vol.close();
  });

  it('keeps a checkpoint the writer committed during the run and a snapshot pinned meanwhile (chaos seed 54108)', async () => {
    const mem = MemStore.isolated('mem://online-late-pin/');
    await Volume.create(mem, { size: SIZE, segmentSize: 1 * MiB });
    const vol = await Volume.open(mem, { flushIntervalMs: 0 });
    for (let round = 0; round < 3; round++) {
      await vol.write(0, Buffer.alloc(64 * KiB, round + 1));
      await vol.flush();
    }
    // Once the run has listed its segments for its history commit and read the snapshots,
    // as it reads the clone pins (its second look at them; the first is its scan): the writer
    // commits a new checkpoint, and a snapshot pins it (its creator sees it retained: the run
    // has not committed its history yet).
    const late = Buffer.alloc(64 * KiB, 0x5e);
    let pinnedAt: number | undefined;
    let pinLists = 0;
    const store: ObjectStore = Object.create(mem) as ObjectStore;
    store.list = (prefix, options) => {
      const inner = mem.list(prefix, options);
      if (prefix !== PIN_PREFIX || ++pinLists !== 2) return inner;
      return (async function* () {
        await vol.write(0, late);
        pinnedAt = (await vol.flush()).checkpoint;
        await createSnapshot(mem, 'late');
        yield* inner;
      })();
    };
    const r = await compactVolume(store, { volume: vol, keepLast: 1, graceMs: 0, minLive: 0 });
    assert.ok(pinnedAt !== undefined, 'the hook ran');
    assert.ok(r.checkpointsDropped >= 3, JSON.stringify(r));
    // The snapshot's checkpoint is kept, and reads what was written then.
    const atLate = await Volume.open(mem, { readOnly: true, at: { snapshot: 'late' } });
    assert.equal(atLate.info.checkpoint, pinnedAt);
    assert.ok((await atLate.read(0, late.length)).equals(late));
    await atLate.close();
    const check = await checkVolume(mem);
    assert.deepEqual(check.problems, []);
    await vol.close();
  });

  it('watches each run from before its read until its copy is in, and copies nothing after a failure (chaos seed 58615)', async () => {
    // A stand-in for the live volume: the read of the first run fails at once, the second's
    // answers only later; it must not be copied, and every watch must end.
    const events: string[] = [];
    const watching = new Set<number>();
    let answer!: (b: Buffer) => void;
    const late = new Promise<Buffer>((resolve) => (answer = resolve));
    const vol = {
      info: { dataBlockSize: BS, size: SIZE },
      read: (offset: number, length: number): Promise<Buffer> => {
        if (offset === 0) return Promise.reject(new Error('injected read failure'));
        if (offset === 16 * BS) return late;
        return Promise.resolve(Buffer.alloc(length));
      },
      rewrite: (offset: number, _data: Buffer, w: number): Promise<number> => {
        events.push(`rewrite ${offset / BS}${watching.has(w) ? '' : ' unwatched'}`);
        return Promise.resolve(1);
      },
      watchChanges: (offset: number): number => {
        watching.add(offset / BS);
        events.push(`watch ${offset / BS}`);
        return offset / BS;
      },
      unwatchChanges: (w: number): void => {
        watching.delete(w);
        events.push(`unwatch ${w}`);
      },
      flush: (): Promise<void> => Promise.resolve(),
    } as unknown as Volume;
    // Two runs: blocks 0 and 16 (not contiguous).
    const copying = rewriteBlocks(vol, [0, 16]);
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(events, ['watch 0', 'watch 16', 'unwatch 0'], 'the run out is watched');
    answer(Buffer.alloc(BS));
    await assert.rejects(copying, /injected read failure/);
    assert.deepEqual(
      events,
      ['watch 0', 'watch 16', 'unwatch 0', 'unwatch 16'],
      'no copy after the failure, every watch ended',
    );
  });
});
