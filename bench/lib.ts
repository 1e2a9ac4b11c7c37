/**
 * Shared helpers of the benchmark scripts: argument parsing, timing, throughput runs on a
 * store, a plain-text table and the JSON result file (bench-results/<section>.json).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { ObjectStore } from '../src/format/store/types.js';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

const argv = process.argv.slice(2);
/** `--name value` from the command line, or the default. */
export function arg(name: string, dflt: string): string {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 && argv[i + 1] !== undefined ? (argv[i + 1] as string) : dflt;
}
export const flag = (name: string): boolean => argv.includes(`--${name}`);

export function median(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

export const mibps = (bytes: number, ms: number): number => bytes / MiB / (ms / 1000);

export async function timed<T>(fn: () => Promise<T>): Promise<{ ms: number; value: T }> {
  const t0 = performance.now();
  const value = await fn();
  return { ms: performance.now() - t0, value };
}

/** Run `fn(i)` for i in [0, count) with at most `concurrency` in flight. */
export async function runPool(
  count: number,
  concurrency: number,
  fn: (i: number) => Promise<unknown>,
): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, count) }, async () => {
      while (next < count) await fn(next++);
    }),
  );
}

/** Incompressible bytes (one buffer reused for every object of a run). */
export const payload = (size: number): Buffer => randomBytes(size);

export interface Throughput {
  mibps: number;
  opsPerSec: number;
  ms: number;
  bytes: number;
  count: number;
}

/** PUT `count` objects of `size` bytes under `prefix` with `concurrency` in flight. */
export async function measurePut(
  store: ObjectStore,
  prefix: string,
  size: number,
  count: number,
  concurrency: number,
): Promise<Throughput> {
  const body = payload(size);
  const { ms } = await timed(() =>
    runPool(count, concurrency, (i) => store.put(`${prefix}${i}`, body)),
  );
  return {
    mibps: mibps(size * count, ms),
    opsPerSec: count / (ms / 1000),
    ms,
    bytes: size * count,
    count,
  };
}

/** GET the objects `measurePut` wrote. */
export async function measureGet(
  store: ObjectStore,
  prefix: string,
  size: number,
  count: number,
  concurrency: number,
): Promise<Throughput> {
  let bytes = 0;
  const { ms } = await timed(() =>
    runPool(count, concurrency, async (i) => {
      const n = (await store.get(`${prefix}${i}`)).body.length;
      bytes += n; // (not `bytes += await …`: that reads `bytes` before the await)
    }),
  );
  if (bytes !== size * count)
    throw new Error(`GET returned ${bytes} bytes, expected ${size * count}`);
  return { mibps: mibps(bytes, ms), opsPerSec: count / (ms / 1000), ms, bytes, count };
}

/** Delete every key under `prefix`. */
export async function clearPrefix(store: ObjectStore, prefix: string): Promise<void> {
  const keys: string[] = [];
  for await (const page of store.list(prefix)) keys.push(...page.objects.map((o) => o.key));
  if (keys.length > 0) await store.delete(keys);
}

/** Plain-text table with right-aligned numbers. */
export function table(headers: string[], rows: Array<Array<string | number>>): string {
  const cells = rows.map((r) => r.map((c) => (typeof c === 'number' ? fmt(c) : c)));
  const widths = headers.map((h, i) =>
    Math.max(h.length, ...cells.map((r) => (r[i] ?? '').length)),
  );
  const line = (r: string[]): string =>
    r
      .map((c, i) =>
        /^[-+0-9.,]+[%x]?$/.test(c) ? c.padStart(widths[i] ?? 0) : c.padEnd(widths[i] ?? 0),
      )
      .join('  ');
  return [line(headers), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line)].join(
    '\n',
  );
}

export function fmt(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  if (Number.isInteger(n)) return String(n);
  if (Math.abs(n) >= 100) return n.toFixed(0);
  if (Math.abs(n) >= 10) return n.toFixed(1);
  return n.toFixed(2);
}

export interface BenchTarget {
  name: string;
  url: string;
  /** S3 endpoint for openStore, when the target is S3. */
  endpoint?: string;
}

/**
 * Where to run: a file:// directory (on tmpfs when /dev/shm exists, so the disk is not what
 * is measured) and the S3 endpoint of the run (Ceph RGW started by scripts/bench.sh), each
 * under a fresh prefix. `--targets file,s3` picks.
 */
export async function benchTargets(section: string): Promise<BenchTarget[]> {
  const want = arg('targets', 'file,s3').split(',');
  const run = `${section}-${Date.now().toString(36)}`;
  const out: BenchTarget[] = [];
  if (want.includes('file')) {
    // scripts/bench.sh points HYPER_BENCH_DIR at a tmpfs directory it removes at exit.
    const base =
      process.env.HYPER_BENCH_DIR ??
      (existsSync('/dev/shm') ? '/dev/shm' : join(process.cwd(), '.tmp'));
    const dir = join(base, `hyper-bench-${run}`);
    await mkdir(dir, { recursive: true });
    const tmpfs = base.startsWith('/dev/shm');
    out.push({ name: tmpfs ? 'file (tmpfs)' : 'file', url: `file://${dir}/` });
  }
  const endpoint = process.env.HYPER_TEST_S3_ENDPOINT;
  const bucket = process.env.HYPER_TEST_S3_BUCKET;
  if (want.includes('s3')) {
    if (endpoint && bucket) out.push({ name: 's3 (RGW)', url: `s3://${bucket}/${run}/`, endpoint });
    else
      console.error(
        `[${section}] no S3 endpoint (HYPER_TEST_S3_ENDPOINT): skipping s3; scripts/bench.sh starts one`,
      );
  }
  return out;
}

/** Write bench-results/<section>.json with the machine's facts next to the results. */
export async function writeResults(section: string, results: unknown): Promise<string> {
  const dir = join(process.cwd(), 'bench-results');
  await mkdir(dir, { recursive: true });
  const file = join(dir, `${section}.json`);
  const doc = {
    section,
    date: new Date().toISOString(),
    node: process.version,
    cpus: cpus().length,
    memGiB: Math.round(totalmem() / GiB),
    results,
  };
  await writeFile(file, `${JSON.stringify(doc, null, 2)}\n`);
  return file;
}
