/**
 * Durable flush latency: the time from issuing a 4 KiB write to it being durable, without a
 * WAL (write + flush: one segment PUT and one head CAS) and with a WAL on the same store
 * (write, acknowledged once its WAL record is stored: one small PUT). Median and p99 over
 * `--reps` (default 200) sequential operations, on file:// (tmpfs) and on RGW. Also counts the
 * store requests per durable write, against the target of at most two round trips.
 *
 *   node --import tsx bench/durability.ts [--reps 200] [--targets file,s3]
 */
import { openStore } from '../src/format/store/index.js';
import type { CountingStore } from '../src/format/store/counting.js';
import { Volume } from '../src/format/volume/volume.js';
import { MiB, arg, benchTargets, fmt, table, writeResults } from './lib.js';

const reps = Number(arg('reps', '200'));

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
}

interface Row {
  target: string;
  mode: string;
  medianMs: number;
  p99Ms: number;
  putsPerOp: number;
}

async function measure(
  store: CountingStore,
  walUrl: string | undefined,
  open: (u: string) => Promise<CountingStore>,
): Promise<{ lat: number[]; puts: number }> {
  await Volume.create(store, { size: 64 * MiB });
  const vol = await Volume.open(store, {
    flushIntervalMs: 0,
    ...(walUrl ? { walUrl, openStore: open } : {}),
  });
  const block = Buffer.alloc(4096, 0x5a);
  const lat: number[] = [];
  // Warm up connections and caches.
  for (let i = 0; i < 5; i++) {
    await vol.write(i * 4096, block);
    await vol.sync();
  }
  const walStore = walUrl ? await open(walUrl) : undefined;
  const before = store.stats().put + (walStore?.stats().put ?? 0);
  for (let i = 0; i < reps; i++) {
    block.writeUInt32LE(i, 0);
    const t0 = process.hrtime.bigint();
    await vol.write((i % 8192) * 4096, block);
    await vol.sync();
    lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  const puts = store.stats().put + (walStore?.stats().put ?? 0) - before;
  await vol.close();
  return { lat, puts };
}

async function main(): Promise<void> {
  const rows: Row[] = [];
  for (const t of await benchTargets('durability')) {
    const opts = t.endpoint ? { endpoint: t.endpoint } : {};
    const stores = new Map<string, CountingStore>();
    const open = async (u: string): Promise<CountingStore> => {
      let s = stores.get(u);
      if (!s) {
        s = await openStore(u, opts);
        stores.set(u, s);
      }
      return s;
    };
    for (const wal of [false, true]) {
      const volUrl = `${t.url}${wal ? 'wal-vol' : 'seg-vol'}/`;
      if (volUrl.startsWith('file://')) {
        const { mkdir } = await import('node:fs/promises');
        await mkdir(volUrl.slice('file://'.length), { recursive: true });
        if (wal) await mkdir(`${t.url.slice('file://'.length)}wal/`, { recursive: true });
      }
      const { lat, puts } = await measure(
        await open(volUrl),
        wal ? `${t.url}wal/` : undefined,
        open,
      );
      rows.push({
        target: t.name,
        mode: wal
          ? 'WAL (write acknowledged when logged)'
          : 'no WAL (write + flush: segment + head)',
        medianMs: pct(lat, 50),
        p99Ms: pct(lat, 99),
        putsPerOp: puts / reps,
      });
    }
    for (const s of stores.values()) await s.close();
  }
  console.log(`Durable 4 KiB write latency, ${reps} sequential operations`);
  console.log(
    table(
      ['target', 'mode', 'median ms', 'p99 ms', 'PUTs / durable write'],
      rows.map((r) => [r.target, r.mode, fmt(r.medianMs), fmt(r.p99Ms), fmt(r.putsPerOp)]),
    ),
  );
  const file = await writeResults('durability', { reps, rows });
  console.log(`wrote ${file}`);
  // Target: a durable flush costs at most two object-store round trips.
  const bad = rows.filter((r) => r.putsPerOp > 2.01);
  if (bad.length > 0) {
    console.error(`target missed: more than 2 PUTs per durable write: ${JSON.stringify(bad)}`);
    process.exitCode = 1;
  }
}

await main();
