/**
 * The disk cache against the volume's life, randomized: two hosts, each with its own cache
 * directory kept across restarts (`--cache-mode reuse`), write, flush, read, are killed, take
 * the volume over from each other, and restore it, while compaction deletes what no kept
 * checkpoint reads (orphans of failed flushes included, whose ids a later writer may use
 * again) and the writer's store fails requests now and then.
 *
 * Checked after every step:
 *   - reads through the holder (its memory cache off, so they go to the disk cache) return
 *     what the model holds: the content the holder opened on (read without any cache) and the
 *     writes it took since;
 *   - every entry of both hosts' cache files that is whole (header and bytes match their
 *     CRCs) holds the bytes its segment holds at its offset, when that segment exists: a
 *     cache never keeps bytes its key no longer names. (A block read back through the cache
 *     is also checked against the index's CRC, which would hide such an entry; this looks at
 *     the files themselves.)
 *
 *   HYPER_CACHE_MODEL_FIRST_SEED=n  HYPER_CACHE_MODEL_SEEDS=n (default 1 and 8)
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { crc32c } from '../../../../src/format/codec/binary.js';
import {
  CACHE_FILES,
  decodeEntryHeader,
  ENTRY_HEADER_BYTES,
} from '../../../../src/format/cache/disk-cache.js';
import { parseSegmentKey, SEGMENT_PREFIX, segmentKey } from '../../../../src/format/keys.js';
import { MemStore } from '../../../../src/format/store/mem.js';
import type { ObjectStore } from '../../../../src/format/store/types.js';
import { compactVolume } from '../../../../src/format/volume/compact.js';
import { listCheckpoints, restoreVolume } from '../../../../src/format/volume/history.js';
import { KiB, MiB, type OpenOptions } from '../../../../src/format/volume/types.js';
import { Volume } from '../../../../src/format/volume/volume.js';
import { FlakyStore, type Faults } from '../../../helpers/flaky-store.js';
import { rng, weighted } from '../../../helpers/rng.js';

const root = mkdtempSync(join(tmpdir(), 'hyper-cache-model-'));
after(() => rmSync(root, { recursive: true, force: true }));

const SIZE = 4 * MiB;
const BS = 4 * KiB;
const FIRST = Number(process.env.HYPER_CACHE_MODEL_FIRST_SEED ?? 1);
const SEEDS = Number(process.env.HYPER_CACHE_MODEL_SEEDS ?? 8);
const STEPS = 70;

/** What one host's cache files hold: whole entries only (header and bytes match their CRCs). */
function cacheEntries(
  dir: string,
): { store: number; segment: number; offset: number; bytes: Buffer }[] {
  let idx: Buffer;
  let dat: Buffer;
  let slotSize: number;
  try {
    slotSize = (
      JSON.parse(readFileSync(join(dir, CACHE_FILES.manifest), 'utf8')) as { slotSize: number }
    ).slotSize;
    idx = readFileSync(join(dir, CACHE_FILES.index));
    dat = readFileSync(join(dir, CACHE_FILES.data));
  } catch {
    return [];
  }
  const out: { store: number; segment: number; offset: number; bytes: Buffer }[] = [];
  const n = ENTRY_HEADER_BYTES;
  for (let s = 0; (s + 1) * n <= idx.length; s++) {
    const e = decodeEntryHeader(idx.subarray(s * n, (s + 1) * n));
    if (!e) continue;
    const bytes = dat.subarray(s * slotSize, s * slotSize + e.length);
    if (bytes.length !== e.length || crc32c(bytes) !== e.crc) continue;
    out.push({ store: e.store, segment: e.segment, offset: e.offset, bytes });
  }
  return out;
}

describe('disk cache across restarts, takeovers, restores and compaction (randomized)', () => {
  it('never serves or keeps bytes its key no longer names', { timeout: 10 * 60_000 }, async () => {
    const totals = {
      entries: 0,
      checked: 0,
      segmentsDeleted: 0,
      idsReused: 0,
      hits: 0,
      takeovers: 0,
    };
    for (let seed = FIRST; seed < FIRST + SEEDS; seed++) {
      const r = rng(seed);
      const mem = MemStore.isolated(`mem://cache-model-${seed}/`);
      const faults: Faults = { rate: 0, rand: rng(seed + 1_000_000), injected: 0 };
      const flaky: ObjectStore = new FlakyStore(mem, faults);
      await Volume.create(mem, { size: SIZE, segmentSize: 1 * MiB });
      const hosts = ['a', 'b'].map((name) => ({ name, dir: join(root, `s${seed}-${name}`) }));
      const where = (step: number, what: string): string =>
        `seed ${seed} step ${step} (${what}; HYPER_CACHE_MODEL_FIRST_SEED=${seed} HYPER_CACHE_MODEL_SEEDS=1)`;
      const truth = async (): Promise<Buffer> => {
        const v = await Volume.open(mem, { readOnly: true, dataCacheBytes: 0 });
        try {
          return await v.read(0, SIZE);
        } finally {
          await v.close();
        }
      };
      const opts = (host: { name: string; dir: string }, force: boolean): OpenOptions => ({
        holder: host.name,
        force,
        flushIntervalMs: 0,
        dataCacheBytes: 0,
        nodeCacheBytes: 8 * KiB,
        flushBytes: 64 * KiB,
        readAroundBytes: r() < 0.5 ? 0 : 32 * KiB,
        diskCache: { dir: host.dir, sizeBytes: (r() < 0.5 ? 1 : 3) * MiB, mode: 'reuse' },
      });
      let holder: { host: (typeof hosts)[number]; vol: Volume } | undefined;
      let model: Buffer = Buffer.alloc(SIZE);
      const open = async (host: (typeof hosts)[number]): Promise<void> => {
        const vol = await Volume.open(flaky, opts(host, true));
        holder = { host, vol };
        model = await truth();
      };
      const kill = async (): Promise<void> => {
        if (!holder) return;
        totals.hits += holder.vol.stats().diskCacheHits;
        await holder.vol.abandon().catch(() => undefined);
        holder = undefined;
      };
      // Each segment id's object as last seen (its etag): one that names another object later
      // was deleted (an orphan of a failed flush, by compaction) and written again.
      const seen = new Map<number, string>();
      const checkFiles = async (step: number): Promise<void> => {
        for await (const page of mem.list(SEGMENT_PREFIX))
          for (const o of page.objects) {
            const id = parseSegmentKey(o.key);
            if (id === undefined) continue;
            const was = seen.get(id);
            if (was !== undefined && was !== o.etag) totals.idsReused++;
            seen.set(id, o.etag);
          }
        for (const host of hosts) {
          for (const e of cacheEntries(host.dir)) {
            totals.entries++;
            if (e.store !== 0) continue;
            const got = await mem
              .get(segmentKey(e.segment), { range: { offset: e.offset, length: e.bytes.length } })
              .catch(() => undefined);
            if (!got) continue; // (a segment compaction deleted: the entry is dead)
            totals.checked++;
            assert.ok(
              got.body.equals(e.bytes),
              `${where(step, `host ${host.name}'s cache`)}: the entry for segment ${e.segment} at ${e.offset} (${e.bytes.length} bytes) differs from the segment`,
            );
          }
        }
      };
      const pick = weighted(r, [
        ['write', 40],
        ['flush', 14],
        ['read', 30],
        ['kill', 5],
        ['takeover', 6],
        ['compact', 7],
        ['restore', 6],
      ] as const);
      for (let step = 0; step < STEPS; step++) {
        faults.rate = r() < 0.3 ? 0.08 : 0;
        const op = pick();
        if (!holder && op !== 'compact' && op !== 'restore') {
          faults.rate = 0;
          await open(hosts[Math.floor(r() * 2)] as (typeof hosts)[number]);
          continue;
        }
        try {
          if (op === 'write' && holder) {
            const writes: Promise<void>[] = [];
            const taken: [number, number][] = [];
            for (let k = 0; k < 3; k++) {
              const len = (1 + Math.floor(r() * 24)) * 512;
              const off = Math.floor(r() * ((SIZE - len) / 512)) * 512;
              // (Writes in flight together do not overlap: their order would be the client's.)
              if (taken.some(([a, b]) => off < b && a < off + len)) continue;
              taken.push([off, off + len]);
              const data = Buffer.alloc(len);
              for (let i = 0; i < len; i += 4)
                data.writeUInt32LE((seed * 7919 + step * 31 + k + i) >>> 0, i);
              data.copy(model, off);
              writes.push(holder.vol.write(off, data));
            }
            // A write that fails leaves its bytes unknown: the holder ends, and the model
            // starts again from what the next holder opens on.
            if ((await Promise.allSettled(writes)).some((w) => w.status === 'rejected'))
              await kill();
          } else if (op === 'flush' && holder) {
            await holder.vol.flush().catch(() => undefined);
          } else if (op === 'read' && holder) {
            for (let k = 0; k < 3; k++) {
              const len = (1 + Math.floor(r() * 64)) * 512;
              const off = Math.floor(r() * ((SIZE - len) / 512)) * 512;
              const got = await holder.vol.read(off, len).catch((e: Error) => e);
              // (A read may fail while the store fails requests: never with wrong bytes.)
              if (got instanceof Error) continue;
              if (!got.equals(model.subarray(off, off + len))) {
                let i = 0;
                while (got[i] === model[off + i]) i++;
                assert.fail(
                  `${where(step, `read ${off}+${len} by host ${holder.host.name}`)}: differs from the model at ${off + i}`,
                );
              }
            }
          } else if (op === 'kill') {
            await kill();
          } else if (op === 'takeover' && holder) {
            // The other host takes the volume over from a live holder (fenced), which then ends.
            const old = holder;
            // Now and then with writes of the old holder in flight: segments that land after
            // the new holder's fence are orphans, which compaction may delete.
            const late =
              r() < 0.5
                ? old.vol
                    .write(Math.floor(r() * (SIZE / BS - 16)) * BS, Buffer.alloc(16 * BS, 1 + step))
                    .then(() => old.vol.flush())
                    .catch(() => undefined)
                : undefined;
            faults.rate = 0;
            const next = hosts.find((h) => h !== old.host) as (typeof hosts)[number];
            await open(next);
            await late;
            totals.hits += old.vol.stats().diskCacheHits;
            await old.vol.abandon().catch(() => undefined);
            totals.takeovers++;
          } else if (op === 'compact') {
            // Online (through the holder, as `serve --compact-every` runs it) or offline.
            const done = await compactVolume(holder ? flaky : mem, {
              ...(holder ? { volume: holder.vol } : {}),
              keepLast: 1 + Math.floor(r() * 3),
              graceMs: 0,
              minLive: r(),
            }).catch(() => undefined);
            totals.segmentsDeleted += done?.segmentsDeleted ?? 0;
          } else if (op === 'restore') {
            await kill();
            const cps = await listCheckpoints(mem);
            const to = cps[Math.floor(r() * cps.length)];
            if (to) await restoreVolume(mem, { checkpoint: to.checkpoint }, { holder: 'admin' });
          }
        } catch (e) {
          // Writes and flushes may fail while the store fails, and a fenced holder's always do.
          if (!(e instanceof Error) || e.name === 'AssertionError') throw e;
        }
        await checkFiles(step);
      }
      await kill();
      // Each host opens once more on its cache and reads everything: the committed content.
      faults.rate = 0;
      for (const host of hosts) {
        await open(host);
        const h = holder as unknown as { vol: Volume };
        const got = await h.vol.read(0, SIZE);
        assert.ok(got.equals(model), `${where(STEPS, `final read by host ${host.name}`)}`);
        await kill();
        await checkFiles(STEPS);
      }
    }
    console.log(
      `cache model: seeds ${FIRST}..${FIRST + SEEDS - 1}, cache entries seen ${totals.entries}, compared with their segment ${totals.checked}, disk cache hits ${totals.hits}, takeovers ${totals.takeovers}, segments deleted by compaction ${totals.segmentsDeleted}, segment ids naming another object later ${totals.idsReused}`,
    );
    assert.ok(totals.checked > 0, 'no cache entry was compared with its segment');
    assert.ok(totals.hits > 0, 'no read was served by a disk cache');
    assert.ok(totals.takeovers > 0, 'no takeover');
  });
});
