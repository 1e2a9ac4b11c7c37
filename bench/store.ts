/**
 * Raw object-store throughput: the baseline the format benchmark compares against.
 * PUT then GET of 4 MiB and 32 MiB objects at concurrency 1 and 16 (and 4 KiB objects for
 * request rates), on file:// (tmpfs when /dev/shm exists) and on the S3 endpoint of the run
 * (Ceph RGW from scripts/bench.sh). Medians of --reps runs (default 3).
 * Prints a table and writes bench-results/store.json.
 *
 *   node --import tsx bench/store.ts [--reps N] [--targets file,s3] [--mib-per-case N]
 */
import { rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { openStore, type ObjectStore } from '../src/format/store/index.js';
import {
  arg,
  benchTargets,
  clearPrefix,
  KiB,
  measureGet,
  measurePut,
  median,
  MiB,
  table,
  writeResults,
  type Throughput,
} from './lib.js';

const reps = Number(arg('reps', '3'));
/** Bytes moved per case and repetition (objects = this / object size, at least the concurrency). */
const perCase = Number(arg('mib-per-case', '256')) * MiB;

interface Case {
  size: number;
  concurrency: number;
}
const cases: Case[] = [
  { size: 4 * MiB, concurrency: 1 },
  { size: 4 * MiB, concurrency: 16 },
  { size: 32 * MiB, concurrency: 1 },
  { size: 32 * MiB, concurrency: 16 },
  { size: 4 * KiB, concurrency: 1 },
  { size: 4 * KiB, concurrency: 16 },
];

const label = (n: number): string => (n >= MiB ? `${n / MiB} MiB` : `${n / KiB} KiB`);

export interface StoreResult {
  target: string;
  size: number;
  concurrency: number;
  objects: number;
  put: { mibps: number; opsPerSec: number; samples: number[] };
  get: { mibps: number; opsPerSec: number; samples: number[] };
}

async function runCase(store: ObjectStore, c: Case): Promise<Omit<StoreResult, 'target'>> {
  const count =
    c.size < MiB
      ? Math.max(c.concurrency * 25, 200)
      : Math.max(c.concurrency, Math.round(perCase / c.size));
  const puts: Throughput[] = [];
  const gets: Throughput[] = [];
  for (let r = 0; r < reps; r++) {
    const prefix = `raw-${c.size}-${c.concurrency}-${r}/`;
    puts.push(await measurePut(store, prefix, c.size, count, c.concurrency));
    gets.push(await measureGet(store, prefix, c.size, count, c.concurrency));
    await clearPrefix(store, prefix);
  }
  return {
    size: c.size,
    concurrency: c.concurrency,
    objects: count,
    put: {
      mibps: median(puts.map((t) => t.mibps)),
      opsPerSec: median(puts.map((t) => t.opsPerSec)),
      samples: puts.map((t) => t.mibps),
    },
    get: {
      mibps: median(gets.map((t) => t.mibps)),
      opsPerSec: median(gets.map((t) => t.opsPerSec)),
      samples: gets.map((t) => t.mibps),
    },
  };
}

export async function main(): Promise<void> {
  const results: StoreResult[] = [];
  for (const target of await benchTargets('store')) {
    const store = await openStore(target.url, target.endpoint ? { endpoint: target.endpoint } : {});
    try {
      for (const c of cases) {
        const r = await runCase(store, c);
        results.push({ target: target.name, ...r });
        console.error(
          `[store] ${target.name} ${label(c.size)} x${c.concurrency}: PUT ${r.put.mibps.toFixed(1)} MiB/s, GET ${r.get.mibps.toFixed(1)} MiB/s`,
        );
      }
    } finally {
      await store.close();
      if (target.url.startsWith('file://'))
        await rm(fileURLToPath(target.url), { recursive: true, force: true });
    }
  }
  console.log('\nRaw store throughput (medians of %d runs)\n', reps);
  console.log(
    table(
      ['target', 'object', 'conc', 'objects', 'PUT MiB/s', 'PUT ops/s', 'GET MiB/s', 'GET ops/s'],
      results.map((r) => [
        r.target,
        label(r.size),
        r.concurrency,
        r.objects,
        r.put.mibps,
        r.put.opsPerSec,
        r.get.mibps,
        r.get.opsPerSec,
      ]),
    ),
  );
  const file = await writeResults('store', { reps, cases: results });
  console.log(`\nwrote ${file}`);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
