/**
 * Shared helpers of the benchmark scripts: argument parsing, timing, throughput runs on a
 * store, a plain-text table and the JSON result file (bench-results/<section>.json).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createWriteStream, existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
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

// ---------------------------------------------------------------------------------------
// Processes, NBD clients and peers shared by the NBD-level sections (nbd, local, s3).
// Every child is tracked and killed by its PID when the section exits, however it exits.

const children = new Set<ChildProcess>();
const exitHooks: Array<() => void> = [];
let hooked = false;
function hookExit(): void {
  if (hooked) return;
  hooked = true;
  // Children first (a FUSE daemon must be gone before its mount point is detached and its
  // directory removed), then the hooks.
  const killAll = (): void => {
    for (const c of children) if (c.pid !== undefined) safeKill(c.pid, 'SIGKILL');
    for (const h of exitHooks.splice(0)) {
      try {
        h();
      } catch {
        // best effort at exit
      }
    }
  };
  process.on('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM'] as const)
    process.on(sig, () => {
      killAll();
      process.exit(130);
    });
}
/** Run `fn` synchronously when the section exits (unmount, remove a directory, …). */
export function onExit(fn: () => void): () => void {
  hookExit();
  exitHooks.push(fn);
  return () => {
    const i = exitHooks.indexOf(fn);
    if (i >= 0) exitHooks.splice(i, 1);
  };
}
function safeKill(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}

export const root = process.cwd();

export interface Launched {
  proc: ChildProcess;
  pid: number;
  /** The stdout line that matched `ready` (empty without one). */
  line: string;
  stderr(): string;
}

/**
 * Start a long-running child. With `ready`, resolves once a stdout line matches it; without,
 * at once (wait for its port with waitNbd). Rejects if it exits first or after `timeoutMs`.
 */
export function launch(
  cmd: string,
  args: string[],
  opts: { ready?: RegExp; env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {},
): Promise<Launched> {
  hookExit();
  const proc = spawn(cmd, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd: opts.cwd ?? root,
    env: opts.env ?? process.env,
  });
  children.add(proc);
  proc.on('exit', () => children.delete(proc));
  let err = '';
  let out = '';
  proc.stderr?.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-8000);
  });
  const stderr = (): string => err;
  return new Promise((resolve, reject) => {
    const fail = (why: string): void => {
      clearTimeout(timer);
      if (proc.pid !== undefined) safeKill(proc.pid, 'SIGKILL');
      reject(new Error(`${cmd} ${why}: ${err.trim().slice(-600)}`));
    };
    const timer = setTimeout(
      () => fail(`did not start in ${(opts.timeoutMs ?? 60_000) / 1000} s`),
      opts.timeoutMs ?? 60_000,
    );
    proc.on('error', (e) => fail(`failed to start (${e.message})`));
    proc.on('exit', (code, sig) => fail(`exited with ${code ?? sig}`));
    const done = (line: string): void => {
      clearTimeout(timer);
      proc.removeAllListeners('exit');
      proc.on('exit', () => children.delete(proc));
      resolve({ proc, pid: proc.pid as number, line, stderr });
    };
    proc.stdout?.on('data', (d: Buffer) => {
      if (opts.ready === undefined) return;
      out += d.toString();
      const line = out.split('\n').find((l) => opts.ready?.test(l));
      if (line !== undefined) {
        opts.ready = undefined;
        done(line);
      }
    });
    if (opts.ready === undefined) done('');
  });
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. */
export async function stopProc(proc: ChildProcess, graceMs = 60_000): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null || proc.pid === undefined) return;
  const gone = once(proc, 'exit').catch(() => undefined);
  safeKill(proc.pid, 'SIGTERM');
  const t = setTimeout(() => safeKill(proc.pid as number, 'SIGKILL'), graceMs);
  await gone;
  clearTimeout(t);
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}
/** Run a command to completion without blocking the event loop. */
export function run(
  cmd: string,
  args: string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  hookExit();
  return new Promise((resolve) => {
    const t0 = performance.now();
    const proc = spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      cwd: root,
      env: opts.env ?? process.env,
    });
    children.add(proc);
    let stdout = '';
    let stderr = '';
    proc.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    proc.stderr?.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8000)));
    const timer = setTimeout(
      () => proc.pid !== undefined && safeKill(proc.pid, 'SIGKILL'),
      opts.timeoutMs ?? 600_000,
    );
    proc.on('error', (e) => (stderr += e.message));
    proc.on('close', (code) => {
      clearTimeout(timer);
      children.delete(proc);
      resolve({ code, stdout, stderr, ms: performance.now() - t0 });
    });
  });
}

/** Like run, but throws with the command's stderr when it does not exit 0. */
export async function runOk(
  cmd: string,
  args: string[],
  opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0)
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code}: ${r.stderr.trim().slice(-600)}`);
  return r;
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function haveTool(name: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
}

/** A free TCP port on 127.0.0.1 (for servers that cannot pick their own). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((res) => srv.listen(0, '127.0.0.1', res));
  const port = (srv.address() as AddressInfo).port;
  await new Promise<void>((res) => srv.close(() => res()));
  return port;
}

/** Wait until an NBD server answers on `uri` (nbdinfo --size succeeds). */
export async function waitNbd(uri: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    const r = await run('nbdinfo', ['--size', uri], { timeoutMs: 10_000 });
    if (r.code === 0) return;
    last = r.stderr;
    await sleep(100);
  }
  throw new Error(`no NBD server answered on ${uri}: ${last.trim()}`);
}

/** CPU seconds (user + system) used so far by these processes, from /proc/<pid>/stat. */
export function cpuSeconds(pids: readonly number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // Fields after the command name (which may hold spaces) start at ')' + 2.
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(f[11]) + Number(f[12]); // utime, stime (fields 14 and 15)
    } catch {
      // exited: its time is lost; callers sample before stopping a process
    }
  }
  return ticks / CLK_TCK;
}
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout) || 100;

/** A file of `mib` MiB of random bytes (the source of the nbdcopy write runs). */
export async function randomFile(path: string, mib: number): Promise<void> {
  const ws = createWriteStream(path);
  for (let i = 0; i < mib; i++) if (!ws.write(randomBytes(MiB))) await once(ws, 'drain');
  ws.end();
  await once(ws, 'finish');
}

/** nbdcopy from `src` to `dst` (files, nbd:// URIs or null:); returns MiB/s for `bytes`. */
export async function nbdcopy(
  src: string,
  dst: string,
  bytes: number,
  opts: { flush?: boolean } = {},
): Promise<number> {
  const r = await runOk('nbdcopy', [...(opts.flush ? ['--flush'] : []), src, dst], {
    timeoutMs: 1_800_000,
  });
  return mibps(bytes, r.ms);
}

export interface FioResult {
  /** Read + write operations per second. */
  iops: number;
  /** Read + write MiB/s. */
  mibps: number;
  /** Operations completed (read + write, all jobs). */
  ops: number;
  bytes: number;
  /** Completion latency percentiles in ms, the worse of read and write. */
  p50Ms: number;
  p99Ms: number;
  /** fsync (NBD FLUSH) latency percentiles in ms, when the job synced. */
  syncP50Ms?: number;
  syncP99Ms?: number;
}

export interface FioJob {
  rw: 'randread' | 'randwrite' | 'randrw' | 'read' | 'write';
  bs?: string;
  bssplit?: string;
  bsrange?: string;
  iodepth?: number;
  numjobs?: number;
  fsync?: number;
  size: number;
  /** Seconds: the run's length, or with `ios` its limit. */
  runtime: number;
  /** A fixed number of I/Os instead of a timed run (a second pass then repeats the first). */
  ios?: number;
  rampTime?: number;
  /** More fio options (e.g. how compressible its buffers are). */
  extra?: string[];
}

interface FioSide {
  iops: number;
  bw_bytes: number;
  io_bytes: number;
  total_ios: number;
  clat_ns?: { percentile?: Record<string, number> };
  lat_ns?: { percentile?: Record<string, number> };
}

/** fio with the nbd engine against `uri`; JSON output parsed into one result. */
export async function fio(uri: string, job: FioJob): Promise<FioResult> {
  const args = [
    `--name=${job.rw}`,
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--rw=${job.rw}`,
    job.bssplit !== undefined
      ? `--bssplit=${job.bssplit}`
      : job.bsrange !== undefined
        ? `--bsrange=${job.bsrange}`
        : `--bs=${job.bs ?? '4k'}`,
    `--iodepth=${job.iodepth ?? 16}`,
    `--numjobs=${job.numjobs ?? 1}`,
    '--group_reporting',
    `--size=${job.size}`,
    `--runtime=${job.runtime}`,
    ...(job.ios ? [`--number_ios=${job.ios}`, '--randrepeat=1'] : ['--time_based']),
    ...(job.rampTime ? [`--ramp_time=${job.rampTime}`] : []),
    ...(job.fsync ? [`--fsync=${job.fsync}`] : []),
    ...(job.extra ?? []),
    '--percentile_list=50:99',
    '--output-format=json',
  ];
  const r = await runOk('fio', args, { timeoutMs: (job.runtime + 120) * 1000 });
  const j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as {
    jobs: Array<{
      read: FioSide;
      write: FioSide;
      sync?: { total_ios?: number; lat_ns?: { percentile?: Record<string, number> } };
    }>;
  };
  const job0 = j.jobs[0];
  if (job0 === undefined) throw new Error('fio printed no job');
  const pct = (s: FioSide, p: string): number =>
    s.total_ios > 0 ? (s.clat_ns?.percentile?.[p] ?? s.lat_ns?.percentile?.[p] ?? 0) / 1e6 : 0;
  const pctOf = (p: string): number => Math.max(pct(job0.read, p), pct(job0.write, p));
  const sync = job0.sync?.lat_ns?.percentile;
  const out: FioResult = {
    iops: job0.read.iops + job0.write.iops,
    mibps: (job0.read.bw_bytes + job0.write.bw_bytes) / MiB,
    ops: job0.read.total_ios + job0.write.total_ios,
    bytes: job0.read.io_bytes + job0.write.io_bytes,
    p50Ms: pctOf('50.000000'),
    p99Ms: pctOf('99.000000'),
  };
  if (sync !== undefined && (job0.sync?.total_ios ?? 0) > 0) {
    out.syncP50Ms = (sync['50.000000'] ?? 0) / 1e6;
    out.syncP99Ms = (sync['99.000000'] ?? 0) / 1e6;
  }
  return out;
}

export interface NbdServer {
  uri: string;
  /** PIDs whose CPU time counts as the server's. */
  pids: number[];
  stop(): Promise<void>;
}

/**
 * `bin/run.js serve URL` on a free port (needs `npm run build`), optionally creating the
 * volume first. `extra` adds serve flags (e.g. --cache-dir); `store` adds the store flags of
 * both commands (e.g. --endpoint).
 */
export async function startHyper(
  url: string,
  opts: { createSize?: number; create?: string[]; extra?: string[]; store?: string[] } = {},
): Promise<NbdServer> {
  const store = opts.store ?? [];
  if (opts.createSize !== undefined)
    await runOk('node', [
      'bin/run.js',
      'file',
      'create',
      url,
      '--size',
      String(opts.createSize),
      ...(opts.create ?? []),
      ...store,
    ]);
  // Run as a user runs it: bin/run.js itself, so its shebang's node flags apply.
  const l = await launch(
    'bin/run.js',
    ['serve', url, '--port', '0', '--print-uri', ...store, ...(opts.extra ?? [])],
    { ready: /^nbd:\/\// },
  );
  const uri = l.line.trim();
  return { uri, pids: [l.pid], stop: () => stopProc(l.proc) };
}

/** Whether `bin/run.js serve --help` lists a flag (features that may not be built yet). */
export async function hyperServeHas(flagName: string): Promise<boolean> {
  const r = await run('node', ['bin/run.js', 'serve', '--help']);
  return r.stdout.includes(`--${flagName}`);
}

/** qemu-nbd serving an image file (raw or qcow2) on a free port, persistent, 16 clients. */
export async function startQemuNbd(
  image: string,
  format: 'raw' | 'qcow2',
  extra: string[] = ['--cache=writeback', '--aio=threads'],
): Promise<NbdServer> {
  const port = await freePort();
  const l = await launch('qemu-nbd', [
    '-f',
    format,
    '-b',
    '127.0.0.1',
    '-p',
    String(port),
    '-t',
    '-e',
    '16',
    ...extra,
    image,
  ]);
  const uri = `nbd://127.0.0.1:${port}/`;
  await waitNbd(uri);
  return { uri, pids: [l.pid], stop: () => stopProc(l.proc) };
}

/** Median of each numeric field over the samples (fields missing in a sample are skipped). */
export function medianOf<T extends object>(
  samples: readonly T[],
): Partial<Record<keyof T, number>> {
  const out: Partial<Record<keyof T, number>> = {};
  const keys = new Set(samples.flatMap((s) => Object.keys(s) as Array<keyof T>));
  for (const k of keys) {
    const xs = samples
      .map((s) => s[k])
      .filter((v): v is T[keyof T] & number => typeof v === 'number' && Number.isFinite(v));
    if (xs.length > 0) out[k] = median(xs);
  }
  return out;
}

/** "1.23x", or "-" when either side is missing. */
export function ratio(a: number | undefined, b: number | undefined): string {
  if (a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0)
    return '-';
  return `${(a / b).toFixed(2)}x`;
}

/** Start bench/delay-proxy.ts in front of `target` (host:port); returns its port. */
export async function startDelayProxy(
  target: string,
  delayMs: number,
): Promise<{ port: number; pid: number; stop(): Promise<void> }> {
  const l = await launch(
    'node',
    ['--import', 'tsx', 'bench/delay-proxy.ts', '--target', target, '--delay', String(delayMs)],
    { ready: /^LISTENING \d+/ },
  );
  const port = Number(l.line.split(' ')[1]);
  return { port, pid: l.pid, stop: () => stopProc(l.proc, 5000) };
}

// ---------------------------------------------------------------------------------------
// Local NBD peers side by side (the nbd and local sections): nbdcopy write and read of the
// whole export, fio 4k randread and randwrite at QD16.

export interface LocalPeer {
  name: string;
  /** Start the server on a fresh target under `dir` (removed afterwards). */
  start(dir: string): Promise<NbdServer>;
}
export type LocalMetric = 'copyWrite' | 'copyRead' | 'randread' | 'randwrite';
export const LOCAL_METRICS: LocalMetric[] = ['copyWrite', 'copyRead', 'randread', 'randwrite'];
export const localLabels = (sizeMiB: number): Record<LocalMetric, string> => ({
  copyWrite: `nbdcopy ${sizeMiB} MiB write (MiB/s)`,
  copyRead: `nbdcopy ${sizeMiB} MiB read (MiB/s)`,
  randread: 'fio 4k randread QD16 (IOPS)',
  randwrite: 'fio 4k randwrite QD16 (IOPS)',
});
export type LocalSamples = Record<string, Record<LocalMetric, number[]> & { cpuSeconds: number[] }>;

/**
 * Run the four workloads on every peer, `reps` times; the peer order rotates per repetition.
 * `groups` lists which peers are up at the same time: each group is started, every workload
 * runs on each of its peers in turn, then the group is stopped (a peer that does background
 * work, like a volume flushing, goes in a group of its own). The write reads `src` (random
 * data of the export's size) and, with `flush`, ends with an NBD FLUSH. A peer that fails is
 * recorded in `errors` and the others go on.
 */
export async function runLocalMatrix(opts: {
  section: string;
  groups: LocalPeer[][];
  reps: number;
  size: number;
  runtime: number;
  src: string;
  dir: string;
  flush?: boolean;
}): Promise<{ samples: LocalSamples; errors: string[] }> {
  const samples: LocalSamples = {};
  const errors: string[] = [];
  const runs: Record<LocalMetric, (uri: string) => Promise<number>> = {
    copyWrite: (uri) => nbdcopy(opts.src, uri, opts.size, { flush: opts.flush ?? false }),
    copyRead: (uri) => nbdcopy(uri, 'null:', opts.size),
    randread: async (uri) =>
      (await fio(uri, { rw: 'randread', size: opts.size, runtime: opts.runtime, rampTime: 1 }))
        .iops,
    randwrite: async (uri) =>
      (await fio(uri, { rw: 'randwrite', size: opts.size, runtime: opts.runtime, rampTime: 1 }))
        .iops,
  };
  for (let rep = 0; rep < opts.reps; rep++) {
    const groups = opts.groups.map((_, k) => opts.groups[(k + rep) % opts.groups.length]!);
    for (const g of groups) {
      const group = g.map((_, k) => g[(k + rep) % g.length]!);
      const running: Array<{ peer: LocalPeer; srv: NbdServer; pdir: string; cpu0: number }> = [];
      try {
        for (const peer of group) {
          samples[peer.name] ??= {
            copyWrite: [],
            copyRead: [],
            randread: [],
            randwrite: [],
            cpuSeconds: [],
          };
          const pdir = join(opts.dir, `${peer.name}-${rep}`);
          await mkdir(pdir, { recursive: true });
          try {
            const srv = await peer.start(pdir);
            running.push({ peer, srv, pdir, cpu0: cpuSeconds(srv.pids) });
          } catch (e) {
            errors.push(`${peer.name} rep ${rep + 1}: ${(e as Error).message}`);
            console.error(`[${opts.section}] ${peer.name} did not start: ${(e as Error).message}`);
          }
        }
        for (const m of LOCAL_METRICS) {
          for (const p of running) {
            try {
              const v = await runs[m](p.srv.uri);
              samples[p.peer.name]![m].push(v);
              console.error(`[${opts.section}] rep ${rep + 1} ${m} ${p.peer.name}: ${fmt(v)}`);
            } catch (e) {
              errors.push(`${p.peer.name} rep ${rep + 1} ${m}: ${(e as Error).message}`);
              console.error(`[${opts.section}] ${p.peer.name} ${m}: ${(e as Error).message}`);
            }
          }
        }
        for (const p of running)
          samples[p.peer.name]!.cpuSeconds.push(cpuSeconds(p.srv.pids) - p.cpu0);
      } finally {
        for (const p of running) {
          await p.srv.stop();
          await rm(p.pdir, { recursive: true, force: true });
        }
      }
    }
  }
  return { samples, errors };
}

/** Medians of each metric (NaN where a peer has no sample). */
export function localMedians(
  samples: LocalSamples,
): Record<string, Record<LocalMetric | 'cpuSeconds', number>> {
  const out: Record<string, Record<LocalMetric | 'cpuSeconds', number>> = {};
  for (const [name, r] of Object.entries(samples))
    out[name] = {
      copyWrite: median(r.copyWrite),
      copyRead: median(r.copyRead),
      randread: median(r.randread),
      randwrite: median(r.randwrite),
      cpuSeconds: median(r.cpuSeconds),
    };
  return out;
}
