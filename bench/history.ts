/**
 * History benchmark: what compaction reclaims and costs, and what snapshots and restores ask
 * of the store, on file:// (tmpfs when /dev/shm exists) and on the S3 endpoint of the run
 * (Ceph RGW from scripts/bench.sh, when HYPER_TEST_S3_ENDPOINT is set).
 *
 *   overwrite+compact  a 1 GiB volume overwritten 5 times in random 64 KiB writes (each pass
 *          is 1 GiB of writes at uniformly random 64 KiB slots) with a flush every 4 MiB, then
 *          compactVolume({ keepLast: 1, graceMs: 0 }): stored/live before and after
 *          (target after ≤ 1.15), bytes compaction read and wrote, its requests and time
 *   snapshot ops  on a 1 GiB and a 64 GiB sparse volume with the same history (64 MiB in
 *          scattered 64 KiB writes, 4 checkpoints): requests of snapshot create, restore by
 *          name, restore by number and restore by time (target: the same for both sizes,
 *          i.e. independent of the volume size)
 * Request counts come from the counting store wrapper (src/format/store/counting.ts).
 * Prints tables and writes bench-results/history.json; exits 1 if a target is missed.
 *
 *   node --import tsx bench/history.ts [--targets file,s3] [--volume-mib 1024] [--passes 5]
 *                                      [--flush-mib 4] [--write-kib 64]
 */
import { randomBytes, randomInt } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import {
  diffStats,
  openStore,
  storeStats,
  type OpenStoreOptions,
} from '../src/format/store/index.js';
import type { ObjectStore, StoreStats } from '../src/format/store/types.js';
import { compactVolume, type CompactResult } from '../src/format/volume/compact.js';
import { createSnapshot, restoreVolume } from '../src/format/volume/history.js';
import type { CheckpointRef } from '../src/format/volume/types.js';
import { Volume } from '../src/format/volume/volume.js';
import {
  arg,
  benchTargets,
  clearPrefix,
  GiB,
  KiB,
  MiB,
  table,
  timed,
  writeResults,
  type BenchTarget,
} from './lib.js';

const volumeBytes = Number(arg('volume-mib', '1024')) * MiB;
const passes = Number(arg('passes', '5'));
const flushBytes = Number(arg('flush-mib', '4')) * MiB;
const writeBytes = Number(arg('write-kib', '64')) * KiB;
const MAX_RATIO = 1.15;

type Counted = Awaited<ReturnType<typeof openStore>>;

const statsOf = (s: ObjectStore): StoreStats => {
  const st = storeStats(s);
  if (!st) throw new Error('store is not counted');
  return st;
};
const requests = (s: StoreStats): number => s.get + s.put + s.list + s.head + s.delete;

async function storedBytes(store: ObjectStore): Promise<{ bytes: number; objects: number }> {
  let bytes = 0;
  let objects = 0;
  for await (const page of store.list('')) {
    for (const o of page.objects) {
      bytes += o.size;
      objects++;
    }
  }
  return { bytes, objects };
}

interface CompactionRun {
  target: string;
  volumeBytes: number;
  passes: number;
  flushBytes: number;
  writeBytes: number;
  writeSeconds: number;
  checkpoints: number;
  /** All objects of the volume before/after, and the bytes the current checkpoint uses. */
  storedBefore: number;
  storedAfter: number;
  objectsBefore: number;
  objectsAfter: number;
  liveBytes: number;
  ratioBefore: number;
  ratioAfter: number;
  compact: CompactResult;
  /** Requests and bytes of compactVolume alone. */
  stats: StoreStats;
  compactSeconds: number;
  ok: boolean;
}

async function overwriteAndCompact(t: BenchTarget, root: Counted): Promise<CompactionRun> {
  const store = root.sub('overwrite/');
  await Volume.create(store, { size: volumeBytes });
  const vol = await Volume.open(store, { flushIntervalMs: 0 });
  // Incompressible data: slices of a random pool, each stamped with a sequence number.
  const pool = randomBytes(16 * MiB);
  const slots = volumeBytes / writeBytes;
  let seqNo = 0;
  let checkpoints = 1;
  const w = await timed(async () => {
    try {
      let dirty = 0;
      for (let p = 0; p < passes; p++) {
        // Uniformly random slots (with repeats): after 5 passes ~99% of the volume holds
        // data, and older segments are left partly live, which compaction must rewrite.
        for (let k = 0; k < slots; k++) {
          const slot = randomInt(slots);
          const at = randomInt(pool.length - writeBytes);
          const data = Buffer.from(pool.subarray(at, at + writeBytes));
          data.writeUInt32LE(seqNo++, 0);
          await vol.write(slot * writeBytes, data);
          dirty += writeBytes;
          if (dirty >= flushBytes) {
            await vol.flush();
            checkpoints++;
            dirty = 0;
          }
        }
        console.error(`[history] ${t.name}: pass ${p + 1} of ${passes} written`);
      }
      if (dirty > 0) {
        await vol.flush();
        checkpoints++;
      }
    } finally {
      await vol.close();
    }
  });
  const before = await storedBytes(store);
  const s0 = statsOf(root);
  const c = await timed(() => compactVolume(store, { keepLast: 1, graceMs: 0 }));
  const stats = diffStats(statsOf(root), s0);
  const after = await storedBytes(store);
  const live = c.value.liveBytes;
  const ratioAfter = after.bytes / live;
  return {
    target: t.name,
    volumeBytes,
    passes,
    flushBytes,
    writeBytes,
    writeSeconds: w.ms / 1000,
    checkpoints,
    storedBefore: before.bytes,
    storedAfter: after.bytes,
    objectsBefore: before.objects,
    objectsAfter: after.objects,
    liveBytes: live,
    ratioBefore: before.bytes / live,
    ratioAfter,
    compact: c.value,
    stats,
    compactSeconds: c.ms / 1000,
    ok: ratioAfter <= MAX_RATIO,
  };
}

interface SnapshotOps {
  target: string;
  volumeBytes: number;
  checkpoints: number;
  create: StoreStats;
  restoreByName: StoreStats;
  restoreByNumber: StoreStats;
  restoreByTime: StoreStats;
}

/** A sparse volume of `size` with 4 checkpoints of 16 MiB of scattered writes each. */
async function snapshotOps(t: BenchTarget, root: Counted, size: number): Promise<SnapshotOps> {
  const store = root.sub(`snap-${size / GiB}g/`);
  await Volume.create(store, { size });
  const vol = await Volume.open(store, { flushIntervalMs: 0 });
  const data = randomBytes(writeBytes);
  const slots = size / writeBytes;
  const times: Date[] = [];
  try {
    for (let r = 0; r < 4; r++) {
      for (let i = 0; i < (16 * MiB) / writeBytes; i++) {
        data.writeUInt32LE(r * 1_000_000 + i, 0);
        await vol.write(randomInt(slots) * writeBytes, data);
      }
      const cp = await vol.flush();
      times.push(cp.time);
    }
  } finally {
    await vol.close();
  }
  const measure = async (fn: () => Promise<unknown>): Promise<StoreStats> => {
    const s0 = statsOf(root);
    await fn();
    return diffStats(statsOf(root), s0);
  };
  const create = await measure(() => createSnapshot(store, 'bench'));
  const restore = (to: CheckpointRef) => () => restoreVolume(store, to);
  const restoreByName = await measure(restore({ snapshot: 'bench' }));
  const restoreByNumber = await measure(restore({ checkpoint: 3 }));
  const restoreByTime = await measure(restore({ time: times[1] as Date }));
  return {
    target: t.name,
    volumeBytes: size,
    checkpoints: 5,
    create,
    restoreByName,
    restoreByNumber,
    restoreByTime,
  };
}

export async function main(): Promise<void> {
  const compactions: CompactionRun[] = [];
  const snaps: SnapshotOps[] = [];
  for (const t of await benchTargets('history')) {
    const opts: OpenStoreOptions = t.endpoint ? { endpoint: t.endpoint } : {};
    const root = await openStore(t.url, opts);
    try {
      const c = await overwriteAndCompact(t, root);
      console.error(
        `[history] ${t.name}: compaction ${c.compactSeconds.toFixed(1)} s, stored/live ${c.ratioBefore.toFixed(2)} -> ${c.ratioAfter.toFixed(3)}`,
      );
      compactions.push(c);
      await clearPrefix(root, 'overwrite/');
      for (const size of [1 * GiB, 64 * GiB]) snaps.push(await snapshotOps(t, root, size));
    } finally {
      if (t.url.startsWith('file://'))
        await rm(fileURLToPath(t.url), { recursive: true, force: true });
      else await clearPrefix(root, '').catch(() => undefined);
      await root.close();
    }
  }

  console.log(
    `\nCompaction after overwriting a ${volumeBytes / MiB} MiB volume ${passes} times ` +
      `(${writeBytes / KiB} KiB random writes, flush every ${flushBytes / MiB} MiB), keepLast 1, grace 0\n`,
  );
  console.log(
    table(
      [
        'target',
        'checkpoints',
        'stored before MiB',
        'live MiB',
        'ratio before',
        'stored after MiB',
        'ratio after',
        'target',
        'ok',
        'read MiB',
        'written MiB',
        'GET',
        'PUT',
        'LIST',
        'HEAD',
        'DELETE',
        'seconds',
      ],
      compactions.map((c) => [
        c.target,
        c.checkpoints,
        c.storedBefore / MiB,
        c.liveBytes / MiB,
        c.ratioBefore,
        c.storedAfter / MiB,
        c.ratioAfter,
        `≤ ${MAX_RATIO}`,
        c.ok ? 'yes' : 'NO',
        c.stats.bytesIn / MiB,
        c.stats.bytesOut / MiB,
        c.stats.get,
        c.stats.put,
        c.stats.list,
        c.stats.head,
        c.stats.delete,
        c.compactSeconds,
      ]),
    ),
  );

  // Snapshot operations: the request counts must not depend on the volume size.
  const ops = ['create', 'restoreByName', 'restoreByNumber', 'restoreByTime'] as const;
  const rows: Array<Array<string | number>> = [];
  let snapOk = true;
  const snapChecks: Array<{ target: string; op: string; requests: number[]; ok: boolean }> = [];
  for (const target of [...new Set(snaps.map((s) => s.target))]) {
    const mine = snaps.filter((s) => s.target === target);
    for (const op of ops) {
      const counts = mine.map((s) => requests(s[op]));
      const ok = counts.every((n) => n === counts[0]);
      snapOk &&= ok;
      snapChecks.push({ target, op, requests: counts, ok });
      for (const s of mine) {
        const st = s[op];
        rows.push([
          target,
          op,
          `${s.volumeBytes / GiB} GiB`,
          requests(st),
          st.get,
          st.put,
          st.list,
          st.head,
          st.delete,
          ok ? 'yes' : 'NO',
        ]);
      }
    }
  }
  console.log('\nSnapshot and restore requests on sparse volumes of two sizes (same history)\n');
  console.log(
    table(
      ['target', 'operation', 'volume', 'requests', 'GET', 'PUT', 'LIST', 'HEAD', 'DELETE', 'same'],
      rows,
    ),
  );
  const file = await writeResults('history', {
    targets: { compactionRatioMax: MAX_RATIO, snapshotRequests: 'independent of volume size' },
    compactions,
    snapshots: snaps,
    snapshotChecks: snapChecks,
  });
  console.log(`\nwrote ${file}`);
  if (compactions.some((c) => !c.ok) || !snapOk) process.exitCode = 1;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
