/**
 * Format benchmark: what the volume engine asks of the object store, next to the raw store
 * throughput measured in the same run on the same target (file:// on tmpfs, and the S3
 * endpoint of the run: Ceph RGW from scripts/bench.sh).
 *
 *   seq    1 GiB written sequentially in 1 MiB writes, then one flush:
 *          PUTs (target ≤ 1.05 × (1 GiB / segment size) + 1), bytes uploaded / bytes written,
 *          MiB/s next to raw PUT MiB/s of segment-sized objects
 *   rand   10,000 random 4 KiB writes over a 1 TiB volume, then one flush: PUTs (target ≤ 5)
 *   open   open the volume read-only and read one block: GETs (target ≤ 5, no full index load)
 *   flush  one 4 KiB write + flush, 10 times: PUTs per flush (target ≤ 2 round trips) and the
 *          median flush time, next to the raw 4 KiB PUT time
 * Request counts come from the counting store wrapper (src/format/store/counting.ts).
 * Prints a table and writes bench-results/format.json.
 *
 *   node --import tsx bench/format.ts [--targets file,s3] [--seq-mib 1024] [--random-writes 10000]
 *                                     [--segment-mib 32]
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
import { Volume } from '../src/format/volume/volume.js';
import {
  arg,
  benchTargets,
  clearPrefix,
  GiB,
  KiB,
  measurePut,
  median,
  MiB,
  table,
  timed,
  writeResults,
  type BenchTarget,
  type Throughput,
} from './lib.js';

const seqBytes = Number(arg('seq-mib', '1024')) * MiB;
const randomWrites = Number(arg('random-writes', '10000'));
const segmentSize = Number(arg('segment-mib', '32')) * MiB;
const BLOCK = 4 * KiB;
const TiB = 1024 * GiB;

interface WorkloadResult {
  target: string;
  workload: string;
  stats: StoreStats;
  ms: number;
  bytesWritten: number;
  /** The target this workload is checked against (max PUTs or GETs). */
  limit: { what: 'put' | 'get'; max: number };
  /** Segment objects the workload created. */
  segments?: number;
  ok: boolean;
  mibps?: number;
}

async function countSegments(store: ObjectStore): Promise<number> {
  let n = 0;
  for await (const page of store.list('seg/')) n += page.objects.length;
  return n;
}

const statsOf = (s: ObjectStore): StoreStats => {
  const st = storeStats(s);
  if (!st) throw new Error('store is not counted');
  return st;
};

type Counted = Awaited<ReturnType<typeof openStore>>;

async function seq(t: BenchTarget, root: Counted): Promise<WorkloadResult[]> {
  const store = root.sub('seq/');
  await Volume.create(store, { size: seqBytes, dataBlockSize: BLOCK, segmentSize });
  const vol = await Volume.open(store);
  const bufs = Array.from({ length: 8 }, () => randomBytes(MiB));
  const segsBefore = await countSegments(store);
  const before = statsOf(store);
  const { ms } = await timed(async () => {
    for (let off = 0, i = 0; off < seqBytes; off += MiB, i++)
      await vol.write(off, bufs[i % bufs.length] as Buffer);
    await vol.flush();
  });
  const stats = diffStats(statsOf(store), before);
  await vol.close();
  const segments = (await countSegments(store)) - segsBefore;
  const maxPuts = Math.floor(1.05 * (seqBytes / segmentSize) + 1);
  const out: WorkloadResult[] = [
    {
      target: t.name,
      workload: `seq ${seqBytes / MiB} MiB in 1 MiB writes + flush`,
      stats,
      ms,
      bytesWritten: seqBytes,
      limit: { what: 'put', max: maxPuts },
      segments,
      ok: stats.put <= maxPuts,
      mibps: seqBytes / MiB / (ms / 1000),
    },
  ];
  out.push(await openAndRead(t, store, 'open seq volume, read 1 block', seqBytes / 2));
  return out;
}

async function rand(t: BenchTarget, root: Counted): Promise<WorkloadResult[]> {
  const store = root.sub('rand/');
  await Volume.create(store, { size: TiB, dataBlockSize: BLOCK, segmentSize });
  const vol = await Volume.open(store);
  const blocks = TiB / BLOCK;
  const offsets = Array.from(
    { length: randomWrites },
    () => randomInt(0, Math.min(blocks, 2 ** 47)) * BLOCK,
  );
  const data = randomBytes(BLOCK * 64);
  const segsBefore = await countSegments(store);
  const before = statsOf(store);
  const { ms } = await timed(async () => {
    for (let i = 0; i < offsets.length; i++) {
      const o = (i % 64) * BLOCK;
      await vol.write(offsets[i] as number, data.subarray(o, o + BLOCK));
    }
    await vol.flush();
  });
  const stats = diffStats(statsOf(store), before);
  await vol.close();
  const segments = (await countSegments(store)) - segsBefore;
  const out: WorkloadResult[] = [
    {
      target: t.name,
      workload: `rand ${randomWrites} x 4 KiB over 1 TiB + flush`,
      stats,
      ms,
      bytesWritten: randomWrites * BLOCK,
      limit: { what: 'put', max: 5 },
      segments,
      ok: stats.put <= 5,
      mibps: (randomWrites * BLOCK) / MiB / (ms / 1000),
    },
  ];
  out.push(await openAndRead(t, store, 'open 1 TiB volume, read 1 block', offsets[0] as number));
  out.push(await flushLatency(t, store));
  return out;
}

/** Durable flush of one small write: PUTs per flush (target ≤ 2 round trips) and latency. */
async function flushLatency(t: BenchTarget, store: ObjectStore): Promise<WorkloadResult> {
  const vol = await Volume.open(store, { flushIntervalMs: 0 });
  const block = randomBytes(BLOCK);
  const flushes = 10;
  const times: number[] = [];
  const before = statsOf(store);
  for (let i = 0; i < flushes; i++) {
    await vol.write(i * BLOCK, block);
    times.push((await timed(() => vol.flush())).ms);
  }
  const stats = diffStats(statsOf(store), before);
  await vol.close();
  const perFlush = stats.put / flushes;
  return {
    target: t.name,
    workload: `4 KiB write + flush, x${flushes} (per flush)`,
    stats: { ...stats, put: perFlush, get: stats.get / flushes },
    ms: median(times),
    bytesWritten: 0,
    limit: { what: 'put', max: 2 },
    ok: perFlush <= 2,
  };
}

async function openAndRead(
  t: BenchTarget,
  store: ObjectStore,
  workload: string,
  offset: number,
): Promise<WorkloadResult> {
  const before = statsOf(store);
  const { ms } = await timed(async () => {
    const ro = await Volume.open(store, { readOnly: true });
    await ro.read(offset, BLOCK);
    await ro.close();
  });
  const stats = diffStats(statsOf(store), before);
  return {
    target: t.name,
    workload,
    stats,
    ms,
    bytesWritten: 0,
    limit: { what: 'get', max: 5 },
    ok: stats.get <= 5,
  };
}

export async function main(): Promise<void> {
  const results: WorkloadResult[] = [];
  const raw: Array<{ target: string; size: number; concurrency: number } & Throughput> = [];
  for (const t of await benchTargets('format')) {
    const opts: OpenStoreOptions = t.endpoint ? { endpoint: t.endpoint } : {};
    const root = await openStore(t.url, opts);
    try {
      // The baseline: raw PUTs of segment-sized objects, same target, same run.
      for (const concurrency of [1, 4]) {
        const count = Math.max(4, Math.round((256 * MiB) / segmentSize));
        raw.push({
          target: t.name,
          size: segmentSize,
          concurrency,
          ...(await measurePut(root, `raw-${concurrency}/`, segmentSize, count, concurrency)),
        });
        await clearPrefix(root, `raw-${concurrency}/`);
      }
      const small = await measurePut(root, 'raw-small/', BLOCK, 50, 1);
      raw.push({ target: t.name, size: BLOCK, concurrency: 1, ...small });
      await clearPrefix(root, 'raw-small/');
      for (const w of [seq, rand]) {
        const r = await w(t, root);
        for (const x of r)
          console.error(
            `[format] ${t.name} ${x.workload}: PUT ${x.stats.put} GET ${x.stats.get} ${(x.ms / 1000).toFixed(2)} s`,
          );
        results.push(...r);
      }
    } finally {
      if (t.url.startsWith('file://'))
        await rm(fileURLToPath(t.url), { recursive: true, force: true });
      else await clearPrefix(root, '').catch(() => undefined);
      await root.close();
    }
  }
  const rawOf = (target: string, c: number): number =>
    raw.find((r) => r.target === target && r.size === segmentSize && r.concurrency === c)?.mibps ??
    NaN;
  console.log(`\nVolume format on the object store (segment size ${segmentSize / MiB} MiB)\n`);
  console.log(
    table(
      [
        'target',
        'workload',
        'PUT',
        'segments',
        'GET',
        'HEAD',
        'LIST',
        'limit',
        'ok',
        'up/written',
        'ms',
        'MiB/s',
        'raw PUT c1',
        'raw PUT c4',
        'vs raw c1',
      ],
      results.map((r) => [
        r.target,
        r.workload,
        r.stats.put,
        r.segments ?? '-',
        r.stats.get,
        r.stats.head,
        r.stats.list,
        `${r.limit.what.toUpperCase()} ≤ ${r.limit.max}`,
        r.ok ? 'yes' : 'NO',
        r.bytesWritten ? r.stats.bytesOut / r.bytesWritten : '-',
        r.ms,
        r.mibps ?? '-',
        r.mibps ? rawOf(r.target, 1) : '-',
        r.mibps ? rawOf(r.target, 4) : '-',
        r.mibps ? `${(r.mibps / rawOf(r.target, 1)).toFixed(2)}x` : '-',
      ]),
    ),
  );
  const file = await writeResults('format', {
    segmentSize,
    seqBytes,
    randomWrites,
    raw,
    workloads: results,
  });
  for (const r of raw.filter((x) => x.size === BLOCK)) {
    console.log(
      `raw 4 KiB PUT on ${r.target}: ${(r.ms / r.count).toFixed(2)} ms each (concurrency 1)`,
    );
  }
  console.log(`\nwrote ${file}`);
  if (results.some((r) => !r.ok)) process.exitCode = 1;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
