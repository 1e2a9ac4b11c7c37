/**
 * Block devices on an object store, side by side on the RGW of the run (scripts/bench.sh):
 *   hyper        `bin/run.js serve` of an s3:// volume, default flags
 *   hyper-cache  the same with `--cache-dir` (n/a when `serve --help` does not list it)
 *   hyper-wal    the same with `--wal-url` on the same store (a write is durable once logged)
 *   hyper-walf   the same with `--wal-ack flush` too (writes logged at FLUSH)
 *                (the WAL peers run only the write workloads: randwrite, durable)
 *   s3backer     FUSE file (64K blocks, 32 MiB block cache) served by `qemu-nbd -t -e 16`
 *   nbdkit-64k   nbdkit's S3 plugin, 64 KiB objects
 *   nbdkit-1m    nbdkit's S3 plugin, 1 MiB objects
 *   raw          parallel 4 MiB PUT / GET at concurrency 16 with the same AWS SDK (the ceiling)
 * Every peer exports the same size (--size-mib, 256 by default) on a fresh prefix. In each
 * repetition the peers take turns (the order rotates), one at a time, each at every delay
 * added to RGW's replies by bench/delay-proxy.ts (0 ms goes to RGW directly). Workloads:
 *   seq-write      nbdcopy --flush of random data over the whole export        MiB/s
 *   seq-read       nbdcopy to null: after a server restart (cold)              MiB/s
 *   randread-cold  fio 4k randread QD16 after a restart, 2000 reads            IOPS
 *   randread-warm  the same 2000 reads again (fio's seed repeats)              IOPS
 *   randwrite      fio 4k randwrite QD16                                       IOPS
 *   hyperfile      fio randrw, bsrange 4k-512k, 4 jobs at iodepth 1            MiB/s
 *   durable        fio 4k randwrite --fsync=1 iodepth 1: p50 of write + flush  ms
 * with, for each: p99 completion latency, S3 requests (RGW `perf dump` before/after) per GiB
 * moved or per 1000 operations, and CPU seconds of the server processes (/proc/<pid>/stat).
 * Prints tables with ratios against the best peer and raw, checks the targets, and writes
 * bench-results/s3.json. Exit status 1 when a target is missed.
 *
 *   node --import tsx bench/s3.ts [--reps 3] [--delays 0,20] [--runtime 5] [--size-mib 256] [--randread-ios 2000]
 *                                 [--only hyper,hyper-cache,hyper-wal,hyper-walf,s3backer,nbdkit-64k,nbdkit-1m,raw]
 *                                 [--workloads seq-write,…,durable]   (default: all)
 *                                 [--hyper-args "--read-ahead 32M"]   (more serve flags, every hyper peer)
 * Needs `npm run build`, HYPER_TEST_S3_* and HYPER_RGW_DIR (scripts/rgw/start.sh's env file).
 */
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openStore } from '../src/format/store/index.js';
import {
  arg,
  clearPrefix,
  cpuSeconds,
  fio,
  fmt,
  freePort,
  GiB,
  haveTool,
  hyperServeHas,
  KiB,
  launch,
  median,
  MiB,
  nbdcopy,
  onExit,
  randomFile,
  run,
  runPool,
  sleep,
  startDelayProxy,
  startHyper,
  stopProc,
  mibps,
  table,
  timed,
  waitNbd,
  writeResults,
  type FioJob,
  type NbdServer,
} from './lib.js';

const reps = Number(arg('reps', '3'));
const delays = arg('delays', '0,20').split(',').map(Number);
const runtime = Number(arg('runtime', '5'));
const sizeMiB = Number(arg('size-mib', '256'));
const ALL = [
  'hyper',
  'hyper-cache',
  'hyper-wal',
  'hyper-walf',
  's3backer',
  'nbdkit-64k',
  'nbdkit-1m',
  'raw',
];
const only = arg('only', ALL.join(',')).split(',');
const size = sizeMiB * MiB;
/** Reads of each random-read pass. */
const RANDREAD_IOS = Number(arg('randread-ios', '2000'));
/** --workloads: the workloads to run (the raw peer's seq-write, seq-read and durable too). */
const selectedArg = arg('workloads', '');
/** --hyper-args: more `serve` flags for every hyper peer (tuning experiments). */
const hyperArgs = arg('hyper-args', '').split(/\s+/).filter(Boolean);

const endpoint = process.env.HYPER_TEST_S3_ENDPOINT;
const bucket = process.env.HYPER_TEST_S3_BUCKET;
const rgwDir = process.env.HYPER_RGW_DIR;
const accessKey = process.env.AWS_ACCESS_KEY_ID ?? '';
const secretKey = process.env.AWS_SECRET_ACCESS_KEY ?? '';

type Workload =
  | 'seq-write'
  | 'seq-read'
  | 'randread-cold'
  | 'randread-warm'
  | 'randwrite'
  | 'hyperfile'
  | 'durable';
const WORKLOADS: Workload[] = [
  'seq-write',
  'seq-read',
  'randread-cold',
  'randread-warm',
  'randwrite',
  'hyperfile',
  'durable',
];
const selected: Workload[] = selectedArg
  ? selectedArg.split(',').map((w) => {
      if (!WORKLOADS.includes(w as Workload)) throw new Error(`--workloads: unknown ${w}`);
      return w as Workload;
    })
  : WORKLOADS;
// The reads and the mixed profile read what the sequential write put there.
for (const w of ['seq-read', 'randread-cold', 'randread-warm', 'hyperfile'] as const)
  if (selected.includes(w) && !selected.includes('seq-write'))
    throw new Error(`--workloads: ${w} needs seq-write (it fills the export)`);
/** The unit of each workload's value; `ms` is a latency (lower is better). */
const UNIT: Record<Workload, 'MiB/s' | 'IOPS' | 'ms'> = {
  'seq-write': 'MiB/s',
  'seq-read': 'MiB/s',
  'randread-cold': 'IOPS',
  'randread-warm': 'IOPS',
  randwrite: 'IOPS',
  hyperfile: 'MiB/s',
  durable: 'ms',
};
const LABEL: Record<Workload, string> = {
  'seq-write': `nbdcopy ${sizeMiB} MiB write, MiB/s`,
  'seq-read': `nbdcopy ${sizeMiB} MiB read after restart, MiB/s`,
  'randread-cold': '4k randread QD16 cold, IOPS',
  'randread-warm': '4k randread QD16 second pass, IOPS',
  randwrite: '4k randwrite QD16, IOPS',
  hyperfile: 'randrw 4k-512k 4 jobs, MiB/s',
  durable: '4k write+fsync QD1, p50 ms',
};
const lowerIsBetter = (w: Workload): boolean => UNIT[w] === 'ms';

interface Sample {
  value: number;
  p50Ms?: number;
  p99Ms?: number;
  /** S3 requests per GiB moved (MiB/s workloads) or per 1000 operations (the others). */
  requests?: number;
  cpuSeconds?: number;
  ops?: number;
  bytes?: number;
  /** seq-write: MiB/s until the server has stopped (everything at rest in the store). */
  toRestMiBps?: number;
}

interface Ctx {
  /** S3 endpoint the peer talks to: RGW itself or the delay proxy. */
  endpoint: string;
  port: number;
  prefix: string;
  /** Private working directory of this peer run (mount point, cache, …). */
  dir: string;
}

interface Peer {
  name: string;
  /** The workloads this peer runs (default: all). */
  workloads?: Workload[];
  /** Why the peer cannot run here, or undefined. */
  unavailable(): Promise<string | undefined>;
  start(ctx: Ctx, first: boolean): Promise<NbdServer>;
}

// --- RGW request counters ------------------------------------------------------------------

async function rgwRequests(): Promise<number | undefined> {
  if (rgwDir === undefined) return undefined;
  const asok = join(rgwDir, 'run', 'ceph-client.rgw.a.asok');
  const r = await run('ceph', ['--admin-daemon', asok, 'perf', 'dump', 'rgw'], {
    timeoutMs: 20_000,
  });
  if (r.code !== 0) return undefined;
  try {
    const j = JSON.parse(r.stdout) as { rgw?: { req?: number } };
    return j.rgw?.req;
  } catch {
    return undefined;
  }
}

// --- peers -----------------------------------------------------------------------------------

const volumeUrl = (ctx: Ctx): string => `s3://${bucket}/${ctx.prefix}`;

function hyperPeer(name: string, variant?: 'cache' | 'wal' | 'walf'): Peer {
  return {
    name,
    ...(variant === 'wal' || variant === 'walf'
      ? { workloads: ['randwrite', 'durable'] satisfies Workload[] }
      : {}),
    async unavailable() {
      if (!existsSync('dist/commands')) return 'not built (npm run build)';
      if (variant === 'cache' && !(await hyperServeHas('cache-dir')))
        return 'n/a: serve has no --cache-dir in this build';
      return undefined;
    },
    async start(ctx, first) {
      const extra =
        variant === 'cache'
          ? ['--cache-dir', join(ctx.dir, 'cache')]
          : variant === 'wal' || variant === 'walf'
            ? [
                '--wal-url',
                `${volumeUrl(ctx)}wal/`,
                ...(variant === 'walf' ? ['--wal-ack', 'flush'] : []),
              ]
            : [];
      return startHyper(volumeUrl(ctx), {
        ...(first ? { createSize: size } : {}),
        store: ['--endpoint', ctx.endpoint],
        extra: [...extra, ...hyperArgs],
      });
    },
  };
}

const s3backer: Peer = {
  name: 's3backer',
  async unavailable() {
    for (const t of ['s3backer', 'qemu-nbd', 'fusermount'])
      if (!haveTool(t)) return `missing ${t} (scripts/install-deps.sh)`;
    return undefined;
  },
  async start(ctx) {
    const mnt = join(ctx.dir, 'mnt');
    await mkdir(mnt, { recursive: true });
    const unmountAtExit = onExit(() => {
      spawnSync('fusermount', ['-u', '-z', mnt]);
    });
    // Virtual-host addressing: bucket.localhost resolves to loopback and RGW's rgw_dns_name
    // is localhost (scripts/rgw/start.sh).
    const fuse = await launch('s3backer', [
      '-f',
      `--accessId=${accessKey}`,
      `--accessKey=${secretKey}`,
      '--region=us-east-1',
      `--baseURL=http://localhost:${ctx.port}/`,
      `--prefix=${ctx.prefix}`,
      `--size=${sizeMiB}M`,
      '--blockSize=64K',
      '--blockCacheSize=512',
      '--force',
      bucket as string,
      mnt,
    ]);
    const file = join(mnt, 'file');
    const unmount = async (): Promise<void> => {
      if (fuse.proc.exitCode === null && fuse.proc.signalCode === null) {
        // Unmounting makes s3backer write its dirty blocks, then exit.
        const gone = once(fuse.proc, 'exit').catch(() => undefined);
        await run('fusermount', ['-u', mnt]);
        const t = setTimeout(() => void stopProc(fuse.proc, 5000), 600_000);
        // (it may have exited already: `once` was attached before the unmount)
        if (fuse.proc.exitCode === null && fuse.proc.signalCode === null) await gone;
        clearTimeout(t);
      }
      await run('fusermount', ['-u', '-z', mnt]);
      unmountAtExit();
    };
    try {
      const deadline = Date.now() + 30_000;
      for (;;) {
        const st = await stat(file).catch(() => undefined);
        if (st?.size === size) break;
        if (Date.now() > deadline) throw new Error(`s3backer did not mount: ${fuse.stderr()}`);
        await sleep(100);
      }
      const port = await freePort();
      const qemu = await launch('qemu-nbd', [
        '-f',
        'raw',
        '-b',
        '127.0.0.1',
        '-p',
        String(port),
        '-t',
        '-e',
        '16',
        file,
      ]);
      const uri = `nbd://127.0.0.1:${port}/`;
      await waitNbd(uri).catch(async (e: unknown) => {
        await stopProc(qemu.proc, 5000);
        throw e;
      });
      return {
        uri,
        pids: [fuse.pid, qemu.pid],
        async stop() {
          await stopProc(qemu.proc, 30_000);
          await unmount();
        },
      };
    } catch (e) {
      await unmount();
      throw e;
    }
  },
};

const PLUGIN = '/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-S3-plugin';
let patchedPlugin: string | undefined;
/**
 * A copy of the installed S3 plugin whose minimum block size is 1: the packaged one reports
 * its object size as minimum, which nbdkit refuses above 64K (every connection fails).
 */
async function s3Plugin(dir: string): Promise<string> {
  if (patchedPlugin !== undefined) return patchedPlugin;
  const text = await readFile(PLUGIN, 'utf8');
  const from = 'return (cfg.obj_size, cfg.obj_size, cfg.obj_size)';
  if (!text.includes(from)) throw new Error(`${PLUGIN}: block_size callback not recognised`);
  const path = join(dir, 'nbdkit-S3-plugin.py');
  await writeFile(path, text.replace(from, 'return (1, cfg.obj_size, cfg.obj_size)'));
  patchedPlugin = path;
  return path;
}

function nbdkitPeer(name: string, objectSize: string, workDir: () => string): Peer {
  return {
    name,
    async unavailable() {
      if (!haveTool('nbdkit')) return 'missing nbdkit (scripts/install-deps.sh)';
      if (!existsSync(PLUGIN)) return 'missing nbdkit-plugin-python / S3 plugin';
      return undefined;
    },
    async start(ctx) {
      const plugin = await s3Plugin(workDir());
      const port = await freePort();
      const l = await launch('nbdkit', [
        '-f',
        '-i',
        '127.0.0.1',
        '-p',
        String(port),
        // libnbd refuses requests below the advertised minimum block size: advertise 512.
        '--filter=blocksize-policy',
        'python',
        plugin,
        'blocksize-minimum=512',
        `endpoint-url=${ctx.endpoint}`,
        `bucket=${bucket}`,
        `key=${ctx.prefix.replace(/\/$/, '')}`,
        `size=${size}`,
        `object-size=${objectSize}`,
        `access-key=${accessKey}`,
        `secret-key=${secretKey}`,
      ]);
      const uri = `nbd://127.0.0.1:${port}/`;
      await waitNbd(uri).catch(async (e: unknown) => {
        await stopProc(l.proc, 5000);
        throw e;
      });
      return { uri, pids: [l.pid], stop: () => stopProc(l.proc, 60_000) };
    },
  };
}

// --- workloads -------------------------------------------------------------------------------

const fioJobs: Record<Exclude<Workload, 'seq-write' | 'seq-read'>, FioJob> = {
  // The same 2,000 reads twice (fio's seed repeats): the second pass reads only what the
  // first did, so it measures the caches. (Timed runs would read further in the second.)
  'randread-cold': { rw: 'randread', bs: '4k', iodepth: 16, size, runtime: 120, ios: RANDREAD_IOS },
  'randread-warm': { rw: 'randread', bs: '4k', iodepth: 16, size, runtime: 120, ios: RANDREAD_IOS },
  randwrite: { rw: 'randwrite', bs: '4k', iodepth: 16, size, runtime },
  hyperfile: { rw: 'randrw', bsrange: '4k-512k', iodepth: 1, numjobs: 4, size, runtime },
  durable: { rw: 'randwrite', bs: '4k', iodepth: 1, fsync: 1, size, runtime },
};

/** Whether `peer` runs workload `w` in this run (--workloads, and the peer's own list). */
const runs = (peer: Peer, w: Workload): boolean =>
  selected.includes(w) && (peer.workloads?.includes(w) ?? true);

/** Run one workload with request and CPU accounting around it. */
async function measure(pids: () => number[], body: () => Promise<Sample>): Promise<Sample> {
  const req0 = await rgwRequests();
  const cpu0 = cpuSeconds(pids());
  const s = await body();
  const cpu1 = cpuSeconds(pids());
  const req1 = await rgwRequests();
  s.cpuSeconds ??= cpu1 - cpu0;
  if (req0 !== undefined && req1 !== undefined) {
    const n = req1 - req0;
    s.requests = s.ops === undefined ? n / ((s.bytes ?? size) / GiB) : n / (s.ops / 1000);
  }
  return s;
}

type Record1 = (w: Workload, s: Sample | Error) => void;

async function runNbdPeer(peer: Peer, ctx: Ctx, src: string, record: Record1): Promise<void> {
  let srv = await peer.start(ctx, true);
  const restart = async (): Promise<void> => {
    await srv.stop(); // (a no-op when already stopped)
    srv = await peer.start(ctx, false);
  };
  const pids = (): number[] => srv.pids;
  const step = async (w: Workload, body: () => Promise<Sample>): Promise<void> => {
    if (!runs(peer, w)) return;
    try {
      const s = await measure(pids, body);
      record(w, s);
    } catch (e) {
      record(w, e instanceof Error ? e : new Error(String(e)));
    }
  };
  try {
    // The write's requests include what the server still writes when it stops (s3backer
    // keeps up to its 32 MiB cache dirty after a FLUSH); its CPU is sampled before the stop.
    await step('seq-write', async () => {
      const c0 = cpuSeconds(srv.pids);
      const t0 = performance.now();
      const value = await nbdcopy(src, srv.uri, size, { flush: true });
      const cpu = cpuSeconds(srv.pids) - c0;
      await srv.stop();
      const toRestMiBps = mibps(size, performance.now() - t0);
      return { value, bytes: size, cpuSeconds: cpu, toRestMiBps };
    });
    if (runs(peer, 'seq-write')) await restart();
    await step('seq-read', async () => ({
      value: await nbdcopy(srv.uri, 'null:', size),
      bytes: size,
    }));
    if (runs(peer, 'seq-read')) await restart();
    for (const w of ['randread-cold', 'randread-warm', 'randwrite', 'hyperfile'] as const) {
      await step(w, async () => {
        const r = await fio(srv.uri, fioJobs[w]);
        return {
          value: UNIT[w] === 'MiB/s' ? r.mibps : r.iops,
          p50Ms: r.p50Ms,
          p99Ms: r.p99Ms,
          ...(UNIT[w] === 'MiB/s' ? { bytes: r.bytes } : { ops: r.ops }),
        };
      });
    }
    await step('durable', async () => {
      const r = await fio(srv.uri, fioJobs.durable);
      // One durable write = the write and the flush after it.
      const p50 = r.p50Ms + (r.syncP50Ms ?? 0);
      const p99 = r.p99Ms + (r.syncP99Ms ?? 0);
      return { value: p50, p50Ms: p50, p99Ms: p99, ops: r.ops };
    });
  } finally {
    await srv.stop();
  }
}

/** The raw store: 4 MiB objects at concurrency 16 through the SDK; small PUT round trip. */
async function runRaw(ctx: Ctx, record: Record1): Promise<void> {
  const objSize = 4 * MiB;
  const count = Math.max(1, Math.round(size / objSize));
  const body = Buffer.alloc(objSize);
  for (let i = 0; i < objSize; i += 4) body.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
  const self = (): number => {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  };
  const go = async (w: Workload, fn: () => Promise<Sample>): Promise<void> => {
    if (!selected.includes(w)) return;
    try {
      const req0 = await rgwRequests();
      const cpu0 = self();
      const s = await fn();
      s.cpuSeconds = self() - cpu0;
      const req1 = await rgwRequests();
      if (req0 !== undefined && req1 !== undefined)
        s.requests =
          UNIT[w] === 'MiB/s'
            ? (req1 - req0) / ((s.bytes ?? size) / GiB)
            : (req1 - req0) / ((s.ops ?? 1) / 1000);
      record(w, s);
    } catch (e) {
      record(w, e instanceof Error ? e : new Error(String(e)));
    }
  };
  const open = (): ReturnType<typeof openStore> =>
    openStore(volumeUrl(ctx), { endpoint: ctx.endpoint });
  let store = await open();
  try {
    await go('seq-write', async () => {
      const { ms } = await timed(() => runPool(count, 16, (i) => store.put(`raw/${i}`, body)));
      return { value: (count * objSize) / MiB / (ms / 1000), bytes: count * objSize };
    });
    await store.close();
    store = await open(); // a fresh client, like a restarted server
    await go('seq-read', async () => {
      let bytes = 0;
      const { ms } = await timed(() =>
        runPool(count, 16, async (i) => {
          const n = (await store.get(`raw/${i}`)).body.length;
          bytes += n;
        }),
      );
      return { value: bytes / MiB / (ms / 1000), bytes };
    });
    // One store round trip: a 4 KiB PUT at concurrency 1 (the unit of the durable target).
    await go('durable', async () => {
      const small = Buffer.alloc(4 * KiB, 7);
      const lat: number[] = [];
      for (let i = 0; i < 40; i++) lat.push((await timed(() => store.put(`rtt/${i}`, small))).ms);
      lat.sort((a, b) => a - b);
      const p99 = lat[Math.min(lat.length - 1, Math.floor(lat.length * 0.99))] as number;
      return { value: median(lat), p50Ms: median(lat), p99Ms: p99, ops: lat.length };
    });
  } finally {
    await store.close();
  }
}

// --- main ------------------------------------------------------------------------------------

type Samples = Record<string, Record<string, Partial<Record<Workload, Sample[]>>>>;
type Errors = Record<string, Record<string, string[]>>;

function best(
  med: Record<string, Partial<Record<Workload, Sample>>>,
  w: Workload,
  names: string[],
): { name: string; value: number } | undefined {
  let out: { name: string; value: number } | undefined;
  for (const n of names) {
    const v = med[n]?.[w]?.value;
    if (v === undefined || (w === 'durable' && notDurable(med, n))) continue;
    if (out === undefined || (lowerIsBetter(w) ? v < out.value : v > out.value))
      out = { name: n, value: v };
  }
  return out;
}

/**
 * A peer whose write + flush returns in under half a store round trip (a 4 KiB PUT of the
 * raw peer) cannot have put the data in the store: its FLUSH does not wait for the store
 * (s3backer 1.5.4 acknowledges fsync from its write-back cache). Marked `*`, and not a
 * "best peer" for the durable row.
 */
function notDurable(med: Record<string, Partial<Record<Workload, Sample>>>, peer: string): boolean {
  const rtt = med.raw?.durable?.value;
  const p50 = med[peer]?.durable?.value;
  return peer !== 'raw' && rtt !== undefined && p50 !== undefined && p50 < rtt / 2;
}

/** hyper's advantage: > 1 means hyper is better (inverted for latencies). */
function adv(
  w: Workload,
  hyper: number | undefined,
  other: number | undefined,
): number | undefined {
  if (hyper === undefined || other === undefined || hyper === 0 || other === 0) return undefined;
  return lowerIsBetter(w) ? other / hyper : hyper / other;
}
const x = (n: number | undefined): string => (n === undefined ? '-' : `${n.toFixed(2)}x`);

async function main(): Promise<void> {
  if (!endpoint || !bucket)
    throw new Error('no S3 endpoint (HYPER_TEST_S3_ENDPOINT / _BUCKET): run via npm run bench');
  for (const t of ['nbdcopy', 'fio', 'nbdinfo'])
    if (!haveTool(t)) throw new Error(`missing ${t} (scripts/install-deps.sh)`);
  const rgw = new URL(endpoint);
  const base = existsSync('/dev/shm') ? '/dev/shm' : '/tmp';
  const work = await mkdtemp(join(process.env.HYPER_BENCH_DIR ?? base, 'hyper-bench-s3-'));
  const removeWork = onExit(() => spawnSync('rm', ['-rf', work]));
  const runId = `s3bench-${Date.now().toString(36)}`;
  const cleanStore = await openStore(`s3://${bucket}/`, { endpoint });

  const peers: Peer[] = [
    hyperPeer('hyper'),
    hyperPeer('hyper-cache', 'cache'),
    hyperPeer('hyper-wal', 'wal'),
    hyperPeer('hyper-walf', 'walf'),
    s3backer,
    nbdkitPeer('nbdkit-64k', '64K', () => work),
    nbdkitPeer('nbdkit-1m', '1M', () => work),
    {
      name: 'raw',
      unavailable: async () => undefined,
      start: () => Promise.reject(new Error('raw is not an NBD peer')),
    },
  ].filter((p) => only.includes(p.name));
  const unavailable: Record<string, string> = {};
  for (const p of peers) {
    const why = await p.unavailable();
    if (why !== undefined) {
      unavailable[p.name] = why;
      console.error(`[s3] ${p.name}: ${why}`);
    }
  }
  const active = peers.filter((p) => unavailable[p.name] === undefined);

  const src = join(work, 'src.img');
  await randomFile(src, sizeMiB);

  const samples: Samples = {};
  const errors: Errors = {};
  const t0 = Date.now();
  try {
    for (const delay of delays) {
      const key = `${delay}ms`;
      samples[key] = {};
      errors[key] = {};
      const proxy =
        delay > 0 ? await startDelayProxy(`${rgw.hostname}:${rgw.port}`, delay) : undefined;
      const port = proxy?.port ?? Number(rgw.port);
      try {
        for (let rep = 0; rep < reps; rep++) {
          const order = active.map((_, k) => active[(k + rep) % active.length] as Peer);
          for (const peer of order) {
            const prefix = `${runId}/${peer.name}-${delay}-${rep}/`;
            const dir = join(work, `${peer.name}-${delay}-${rep}`);
            await mkdir(dir, { recursive: true });
            const ctx: Ctx = { endpoint: `http://127.0.0.1:${port}`, port, prefix, dir };
            const per = (samples[key][peer.name] ??= {});
            const record: Record1 = (w, s) => {
              if (s instanceof Error) {
                ((errors[key] as Record<string, string[]>)[peer.name] ??= []).push(
                  `${w}: ${s.message}`,
                );
                console.error(`[s3] ${key} rep ${rep + 1} ${peer.name} ${w}: ERROR ${s.message}`);
                return;
              }
              (per[w] ??= []).push(s);
              console.error(
                `[s3] ${key} rep ${rep + 1} ${peer.name} ${w}: ${fmt(s.value)} ${UNIT[w]}` +
                  (s.p99Ms !== undefined ? `, p99 ${fmt(s.p99Ms)} ms` : '') +
                  (s.requests !== undefined ? `, ${fmt(s.requests)} req` : '') +
                  `, cpu ${fmt(s.cpuSeconds ?? NaN)} s  (${Math.round((Date.now() - t0) / 1000)} s)`,
              );
            };
            try {
              if (peer.name === 'raw') await runRaw(ctx, record);
              else await runNbdPeer(peer, ctx, src, record);
            } catch (e) {
              const msg = e instanceof Error ? e.message : String(e);
              ((errors[key] as Record<string, string[]>)[peer.name] ??= []).push(msg);
              console.error(`[s3] ${key} rep ${rep + 1} ${peer.name}: ERROR ${msg}`);
            } finally {
              await rm(dir, { recursive: true, force: true }).catch(() => undefined);
              await clearPrefix(cleanStore, prefix).catch((e: unknown) =>
                console.error(`[s3] could not clear ${prefix}: ${String(e)}`),
              );
            }
          }
        }
      } finally {
        await proxy?.stop();
      }
    }
  } finally {
    await cleanStore.close();
    await rm(work, { recursive: true, force: true });
    removeWork();
  }

  // Medians per delay, peer and workload.
  const names = peers.map((p) => p.name);
  const medians: Record<string, Record<string, Partial<Record<Workload, Sample>>>> = {};
  for (const [key, byPeer] of Object.entries(samples)) {
    medians[key] = {};
    for (const [peer, byW] of Object.entries(byPeer)) {
      const m: Partial<Record<Workload, Sample>> = {};
      for (const [w, xs] of Object.entries(byW) as Array<[Workload, Sample[]]>) {
        if (xs.length === 0) continue;
        const pick = (f: (s: Sample) => number | undefined): number | undefined => {
          const v = xs.map(f).filter((n): n is number => n !== undefined);
          return v.length ? median(v) : undefined;
        };
        const s: Sample = { value: median(xs.map((s) => s.value)) };
        for (const k of ['p50Ms', 'p99Ms', 'requests', 'cpuSeconds'] as const) {
          const v = pick((s) => s[k]);
          if (v !== undefined) s[k] = v;
        }
        m[w] = s;
      }
      (medians[key] as Record<string, Partial<Record<Workload, Sample>>>)[peer] = m;
    }
  }

  const PEERS = ['s3backer', 'nbdkit-64k', 'nbdkit-1m'];
  const cell = (key: string, peer: string, w: Workload, f: (s: Sample) => number | undefined) => {
    if (unavailable[peer] !== undefined)
      return unavailable[peer]?.startsWith('n/a') ? 'n/a' : 'missing';
    const s = medians[key]?.[peer]?.[w];
    if (s === undefined) return errors[key]?.[peer]?.length ? 'error' : '-';
    const v = f(s);
    return v === undefined ? '-' : fmt(v);
  };
  console.log(
    `\nBlock devices on S3 (RGW), ${sizeMiB} MiB export, medians of ${reps}, fio runtime ${runtime} s`,
  );
  for (const key of Object.keys(medians)) {
    const med = medians[key] as Record<string, Partial<Record<Workload, Sample>>>;
    console.log(`\n== ${key} added to RGW's replies: values (ratios > 1 mean hyper is better)\n`);
    console.log(
      table(
        ['workload', ...names, 'best peer', 'hyper/best', 'hyper/raw', 'cache/best'],
        WORKLOADS.map((w) => {
          const b = best(med, w, PEERS);
          const h = med.hyper?.[w]?.value;
          const c = med['hyper-cache']?.[w]?.value;
          const raw = med.raw?.[w]?.value;
          return [
            LABEL[w],
            ...names.map(
              (n) =>
                cell(key, n, w, (s) => s.value) +
                (w === 'durable' && notDurable(med, n) ? '*' : ''),
            ),
            b?.name ?? '-',
            x(adv(w, h, b?.value)),
            w === 'seq-write' || w === 'seq-read' ? x(adv(w, h, raw)) : '-',
            x(adv(w, c, b?.value)),
          ];
        }),
      ),
    );
    if (names.some((n) => notDurable(med, n)))
      console.log(
        `* flush returned in under half a store round trip (raw 4 KiB PUT, ${fmt(med.raw?.durable?.value ?? NaN)} ms): not durable, left out of "best peer"`,
      );
    for (const [title, f] of [
      ['p99 latency, ms', (s: Sample) => s.p99Ms],
      ['S3 requests per GiB (MiB/s rows) or per 1000 ops', (s: Sample) => s.requests],
      ['server CPU seconds', (s: Sample) => s.cpuSeconds],
    ] as const) {
      console.log(`\n${key}: ${title}\n`);
      console.log(
        table(
          ['workload', ...names],
          WORKLOADS.map((w) => [LABEL[w], ...names.map((n) => cell(key, n, w, f))]),
        ),
      );
    }
  }

  // Targets (ratios in the same run).
  interface Check {
    delay: string;
    target: string;
    measured: string;
    ok: boolean | undefined;
  }
  const checks: Check[] = [];
  for (const key of Object.keys(medians)) {
    const med = medians[key] as Record<string, Partial<Record<Workload, Sample>>>;
    const v = (peer: string, w: Workload): number | undefined => med[peer]?.[w]?.value;
    const add = (target: string, got: number | undefined, need: number, who = 'hyper'): void => {
      const na = unavailable[who] !== undefined;
      checks.push({
        delay: key,
        target,
        measured: na ? `n/a (${unavailable[who]})` : x(got),
        ok: na || got === undefined ? undefined : got >= need,
      });
    };
    for (const [w, rawName] of [
      ['seq-write', 'raw parallel PUT'],
      ['seq-read', 'raw parallel GET'],
    ] as const) {
      const b = best(med, w, PEERS);
      add(`${w}: >= 1.5x best peer (${b?.name ?? '-'})`, adv(w, v('hyper', w), b?.value), 1.5);
      add(`${w}: >= 0.8x ${rawName}`, adv(w, v('hyper', w), v('raw', w)), 0.8);
    }
    add(
      'randread-cold: >= 1.0x s3backer',
      adv('randread-cold', v('hyper', 'randread-cold'), v('s3backer', 'randread-cold')),
      1.0,
    );
    const bw = best(med, 'randread-warm', PEERS);
    add(
      `randread-warm with --cache-dir: >= 10x best peer (${bw?.name ?? '-'})`,
      adv('randread-warm', v('hyper-cache', 'randread-warm'), bw?.value),
      10,
      'hyper-cache',
    );
    const br = best(med, 'randwrite', PEERS);
    add(
      `randwrite: >= 50x best peer (${br?.name ?? '-'})`,
      adv('randwrite', v('hyper', 'randwrite'), br?.value),
      50,
    );
    // durable: p50 <= 2 store round trips (raw 4 KiB PUT at concurrency 1), without a WAL
    // (segment PUT + head CAS) and with one (a WAL PUT).
    const rtt = v('raw', 'durable');
    const how: Record<string, string> = {
      hyper: '',
      'hyper-wal': ' with --wal-url',
      'hyper-walf': ' with --wal-ack flush',
    };
    for (const who of Object.keys(how)) {
      const p50 = v(who, 'durable');
      if (who !== 'hyper' && p50 === undefined) continue;
      checks.push({
        delay: key,
        target: `durable p50${how[who] ?? ''} <= 2 round trips (2 x ${rtt === undefined ? '-' : fmt(rtt)} ms)`,
        measured:
          p50 === undefined || rtt === undefined
            ? '-'
            : `${fmt(p50)} ms = ${(p50 / rtt).toFixed(2)} RT`,
        ok: p50 === undefined || rtt === undefined ? undefined : p50 <= 2 * rtt,
      });
    }
  }
  console.log('\nTargets\n');
  console.log(
    table(
      ['delay', 'target', 'measured', 'result'],
      checks.map((c) => [
        c.delay,
        c.target,
        c.measured,
        c.ok === undefined ? 'n/a' : c.ok ? 'met' : 'MISSED',
      ]),
    ),
  );
  const errs = Object.entries(errors).flatMap(([k, byPeer]) =>
    Object.entries(byPeer).flatMap(([p, list]) => list.map((m) => `${k} ${p}: ${m}`)),
  );
  if (errs.length > 0) console.log(`\nErrors\n${errs.map((e) => `  ${e}`).join('\n')}`);
  const file = await writeResults('s3', {
    sizeMiB,
    reps,
    delaysMs: delays,
    fioRuntimeSeconds: runtime,
    hyperArgs,
    units: UNIT,
    unavailable,
    medians,
    samples,
    errors,
    targets: checks,
    elapsedSeconds: Math.round((Date.now() - t0) / 1000),
  });
  console.log(`\nwrote ${file} (${Math.round((Date.now() - t0) / 1000)} s)`);
  if (checks.some((c) => c.ok === false)) process.exitCode = 1;
}

await main();
