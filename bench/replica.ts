/**
 * Replication mode (`hyper replica serve`): a primary file served over NBD with every write
 * shipped to a replica volume on the RGW of the run (scripts/bench.sh), side by side with
 *   qemu-nbd    a raw file of the same size in the same directory (the no-replication ceiling)
 *   hyper-s3    `bin/run.js serve` of an s3:// volume on the same RGW (no local primary)
 * Primary and raw files live where bench/local.ts puts its files (HYPER_BENCH_DIR: tmpfs when
 * there is one; --dir to pick another, the table says which file system it is). Each peer
 * and workload gets a fresh target and server; peers take turns (order rotates per rep).
 * Workloads (medians of --reps):
 *   randwrite  fio 4k randwrite, iodepth 16, time-based (--runtime s), over the device    IOPS
 *   seqwrite   nbdcopy --flush of --size-mib MiB of random data over the device            MiB/s
 *   synced     fio 4k randwrite with --fsync=1, iodepth 1 (every write then a FLUSH)       IOPS
 *              (each FLUSH marks a replica checkpoint: what the commit lag rows show)
 * After each write workload on the replica: the backlog at the end (status lag), the time until
 * POST /v1/replica/settle returns ("drain"), lag p50/p99 of the commits (status after settle),
 * what was shipped, and RGW requests (RGW `perf dump`, as bench/s3.ts counts them) per GiB
 * shipped. hyper-s3's "drain" is the time its server takes to stop (everything on S3). The
 * RGW PUT capacity is measured in the same run: 4 MiB objects, 16 in flight (bench/s3.ts's raw).
 * Restore: a --restore-gib device filled with 1 MiB of random data every 4 MiB (a quarter of
 * it; holes between), replicated and stopped; then onto a fresh file, `replica restore`
 * (full, wall time) against `replica restore --lazy` + `replica serve` + a first 4 KiB read
 * (python nbd, as nbdsh does), and the time until the lazy restore has finished in the
 * background. Both are checked against the original bytes.
 * Target (the issue): primary throughput >= 0.8x qemu-nbd while replication keeps up with RGW:
 * shipped bytes / (workload + drain seconds) >= 0.8x min(primary MiB/s, RGW PUT MiB/s), no
 * pool overflow. Exit status 1 when missed. Writes bench-results/replica.json.
 *
 *   node --import tsx bench/replica.ts [--reps 3] [--size-mib 512] [--runtime 10] [--restore-gib 4]
 *        [--latency-ms 0[,20]] [--region-size 8M] [--dir DIR]
 *        [--only replica,qemu-nbd,hyper-s3,put,restore] [--workloads randwrite,seqwrite,synced]
 * --latency-ms adds that delay to every RGW reply (bench/delay-proxy.ts) for all S3 traffic;
 * a list runs the whole set once per delay. Needs `npm run build`, HYPER_TEST_S3_* and
 * HYPER_RGW_DIR (request counts; without it they are left out).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { ControlClient } from '../src/daemon/control.js';
import { openStore } from '../src/format/store/index.js';
import type { ReplicaStatus } from '../src/replica/replicator.js';
import {
  arg,
  clearPrefix,
  cpuSeconds,
  fio,
  fmt,
  GiB,
  haveTool,
  KiB,
  launch,
  measurePut,
  median,
  medianOf,
  MiB,
  nbdcopy,
  onExit,
  randomFile,
  ratio,
  run,
  runOk,
  sleep,
  startDelayProxy,
  startHyper,
  startQemuNbd,
  stopProc,
  table,
  writeResults,
} from './lib.js';

const reps = Number(arg('reps', '3'));
const sizeMiB = Number(arg('size-mib', '512'));
const runtime = Number(arg('runtime', '10'));
const restoreGiB = Number(arg('restore-gib', '4'));
const latencies = arg('latency-ms', '0').split(',').map(Number);
const regionSize = arg('region-size', '8M');
const PARTS = ['replica', 'qemu-nbd', 'hyper-s3', 'put', 'restore'] as const;
const only = arg('only', PARTS.join(',')).split(',');
const size = sizeMiB * MiB;
/** What must hold for the issue's target. */
const THROUGHPUT_TARGET = 0.8;
const KEEP_UP_TARGET = 0.8;
/** The longest a drain (settle) may take before the run calls it stuck. */
const SETTLE_LIMIT_MS = 600_000;

const endpoint = process.env.HYPER_TEST_S3_ENDPOINT;
const bucket = process.env.HYPER_TEST_S3_BUCKET;
const rgwDir = process.env.HYPER_RGW_DIR;

type PeerName = 'replica' | 'qemu-nbd' | 'hyper-s3';
type Workload = 'randwrite' | 'seqwrite' | 'synced';
const PEERS: PeerName[] = (['replica', 'qemu-nbd', 'hyper-s3'] as const).filter((p) =>
  only.includes(p),
);
const ALL_WORKLOADS: Workload[] = ['randwrite', 'seqwrite', 'synced'];
const WORKLOADS = arg('workloads', ALL_WORKLOADS.join(','))
  .split(',')
  .map((w) => {
    if (!ALL_WORKLOADS.includes(w as Workload)) throw new Error(`--workloads: unknown ${w}`);
    return w as Workload;
  });
const LABEL: Record<Workload, string> = {
  randwrite: `fio 4k randwrite QD16 ${runtime} s, IOPS`,
  seqwrite: `nbdcopy ${sizeMiB} MiB write+flush, MiB/s`,
  synced: `fio 4k randwrite --fsync=1 QD1 ${runtime} s, IOPS`,
};

// --- facts about the machine ---------------------------------------------------------------

/** The file system type `path` is on (the longest mount point of /proc/mounts above it). */
function fsType(path: string): string {
  try {
    let best = { dir: '', type: 'unknown' };
    for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
      const [, dir, type] = line.split(' ');
      if (dir === undefined || type === undefined) continue;
      const d = dir.replace(/\\040/g, ' ');
      if (
        (path === d || path.startsWith(d.endsWith('/') ? d : `${d}/`)) &&
        d.length >= best.dir.length
      )
        best = { dir: d, type };
    }
    return best.type;
  } catch {
    return 'unknown';
  }
}

interface RgwCounters {
  req: number;
  put: number;
  putBytes: number;
  get: number;
}
/** RGW's request counters (`perf dump rgw` on its admin socket), as bench/s3.ts reads them. */
async function rgwCounters(): Promise<RgwCounters | undefined> {
  if (rgwDir === undefined) return undefined;
  const asok = join(rgwDir, 'run', 'ceph-client.rgw.a.asok');
  const r = await run('ceph', ['--admin-daemon', asok, 'perf', 'dump', 'rgw'], {
    timeoutMs: 20_000,
  });
  if (r.code !== 0) return undefined;
  try {
    const j = JSON.parse(r.stdout) as {
      rgw?: { req?: number; put?: number; put_b?: number; get?: number };
    };
    const g = j.rgw;
    if (g?.req === undefined) return undefined;
    return { req: g.req, put: g.put ?? 0, putBytes: g.put_b ?? 0, get: g.get ?? 0 };
  } catch {
    return undefined;
  }
}
const counterDelta = (
  a: RgwCounters | undefined,
  b: RgwCounters | undefined,
): RgwCounters | undefined =>
  a === undefined || b === undefined
    ? undefined
    : {
        req: b.req - a.req,
        put: b.put - a.put,
        putBytes: b.putBytes - a.putBytes,
        get: b.get - a.get,
      };

/** A python3 that has libnbd's module (nbdsh's), for the first read; else qemu-io. */
const nbdPython = ['/usr/bin/python3', 'python3'].find(
  (p) => spawnSync(p, ['-c', 'import nbd'], { stdio: 'ignore' }).status === 0,
);
const READ_SCRIPT = `import nbd, sys, time
t = time.perf_counter()
h = nbd.NBD()
h.connect_uri(sys.argv[1])
b = h.pread(4096, int(sys.argv[2]))
sys.stderr.write('%.6f\\n' % (time.perf_counter() - t))
sys.stdout.write(b.hex())
`;
/** Read 4 KiB at `offset` with a new NBD client: wall ms (client start included), the bytes. */
async function firstRead(
  uri: string,
  offset: number,
): Promise<{ ms: number; clientMs?: number; data?: Buffer; client: string }> {
  if (nbdPython !== undefined) {
    const r = await runOk(nbdPython, ['-c', READ_SCRIPT, uri, String(offset)], {
      timeoutMs: 300_000,
    });
    return {
      ms: r.ms,
      clientMs: Number(r.stderr.trim().split('\n').pop()) * 1000,
      data: Buffer.from(r.stdout.trim(), 'hex'),
      client: 'python3 nbd (nbdsh)',
    };
  }
  const r = await runOk('qemu-io', ['-f', 'raw', '-r', '-c', `read ${offset} 4096`, uri], {
    timeoutMs: 300_000,
  });
  return { ms: r.ms, client: 'qemu-io' };
}

// --- servers -----------------------------------------------------------------------------------

interface Server {
  uri: string;
  pids: number[];
  control?: ControlClient;
  stop(): Promise<void>;
}

const UUID_RE = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/;

/** `replica format` a new file: returns the uuid. */
async function formatPrimary(
  file: string,
  deviceSize: number,
  prefix: string,
  ep: string,
): Promise<string> {
  const r = await runOk('node', [
    'bin/run.js',
    'replica',
    'format',
    '--file',
    file,
    '--device-size',
    String(deviceSize),
    '--replica',
    prefix,
    '--region-size',
    regionSize,
    '--endpoint',
    ep,
  ]);
  const uuid = UUID_RE.exec(r.stdout)?.[0];
  if (uuid === undefined) throw new Error(`replica format printed no uuid: ${r.stdout}`);
  return uuid;
}

async function serveReplica(file: string, uuid: string, sock: string, ep: string): Promise<Server> {
  const l = await launch(
    'bin/run.js', // itself, as a user runs `hyper` (its shebang sets node's flags)
    [
      'replica',
      'serve',
      '--file',
      file,
      '--uuid',
      uuid,
      '--port',
      '0',
      '--print-uri',
      '--control-socket',
      sock,
      '--endpoint',
      ep,
    ],
    { ready: /^nbd:\/\//, timeoutMs: 120_000 },
  );
  return {
    uri: l.line.trim(),
    pids: [l.pid],
    control: new ControlClient(sock),
    stop: () => stopProc(l.proc, 300_000),
  };
}

interface Ctx {
  /** S3 endpoint of the peers: RGW or the delay proxy in front of it. */
  ep: string;
  /** Key prefix of this peer run in the bench bucket. */
  prefix: string;
  dir: string;
}

async function startPeer(peer: PeerName, ctx: Ctx): Promise<Server> {
  switch (peer) {
    case 'replica': {
      const file = join(ctx.dir, 'primary.img');
      const uuid = await formatPrimary(file, size, `s3://${bucket}/${ctx.prefix}`, ctx.ep);
      return serveReplica(file, uuid, join(ctx.dir, 'ctl.sock'), ctx.ep);
    }
    case 'qemu-nbd': {
      const img = join(ctx.dir, 'disk.raw');
      await writeFile(img, '');
      await truncate(img, size);
      return startQemuNbd(img, 'raw');
    }
    case 'hyper-s3':
      return startHyper(`s3://${bucket}/${ctx.prefix}`, {
        createSize: size,
        store: ['--endpoint', ctx.ep],
      });
  }
}

/** POST settle until it says settled (each call waits up to 60 s in the server). */
async function settle(c: ControlClient): Promise<boolean> {
  const deadline = Date.now() + SETTLE_LIMIT_MS;
  while (Date.now() < deadline) {
    const r = await c.post<{ settled: boolean }>('/v1/replica/settle', undefined);
    if (r.settled) return true;
  }
  return false;
}

// --- the write workloads -----------------------------------------------------------------------

interface WriteSample {
  /** IOPS (randwrite) or MiB/s (seqwrite): what the table shows. */
  value: number;
  mibps: number;
  iops?: number;
  p99Ms?: number;
  /** The workload's wall time. */
  seconds: number;
  bytes: number;
  cpuSeconds: number;
  /** Replica: not yet shipped when the workload ended. */
  backlogMiB?: number;
  backlogSeconds?: number;
  lagP50Seconds?: number;
  lagP99Seconds?: number;
  /** Replica: end of workload until settle returns; hyper-s3: until its server has stopped. */
  drainSeconds?: number;
  shippedMiB?: number;
  checkpoints?: number;
  overflows?: number;
  /** Shipped (replica) or written (hyper-s3) bytes / (workload + drain seconds). */
  atRestMiBps?: number;
  requestsPerGiB?: number;
  putsPerGiB?: number;
  /** Bytes RGW received in PUTs per byte shipped/written. */
  putBytesRatio?: number;
  /** MiB/s RGW received in PUTs over workload + drain. */
  rgwPutMiBps?: number;
}

async function runWorkload(
  peer: PeerName,
  w: Workload,
  srv: Server,
  src: string,
): Promise<WriteSample> {
  const req0 = peer === 'qemu-nbd' ? undefined : await rgwCounters();
  const cpu0 = cpuSeconds(srv.pids);
  const t0 = performance.now();
  let s: WriteSample;
  if (w !== 'seqwrite') {
    // randwrite at QD16; synced at QD1 with a FLUSH after every write.
    const synced = w === 'synced';
    const r = await fio(srv.uri, {
      rw: 'randwrite',
      bs: '4k',
      iodepth: synced ? 1 : 16,
      size,
      runtime,
      ...(synced ? { fsync: 1 } : {}),
    });
    s = {
      value: r.iops,
      iops: r.iops,
      mibps: r.mibps,
      p99Ms: r.p99Ms,
      bytes: r.bytes,
      seconds: 0,
      cpuSeconds: 0,
    };
  } else {
    const v = await nbdcopy(src, srv.uri, size, { flush: true });
    s = { value: v, mibps: v, bytes: size, seconds: 0, cpuSeconds: 0 };
  }
  const t1 = performance.now();
  s.seconds = (t1 - t0) / 1000;
  let written = s.bytes;
  if (peer === 'replica') {
    const c = srv.control as ControlClient;
    const end = await c.get<ReplicaStatus>('/v1/replica');
    const settled = await settle(c);
    const t2 = performance.now();
    if (!settled) throw new Error(`not settled ${SETTLE_LIMIT_MS / 1000} s after the workload`);
    const after = await c.get<ReplicaStatus>('/v1/replica');
    s.backlogMiB = end.lag.bytes / MiB;
    s.backlogSeconds = end.lag.seconds;
    s.drainSeconds = (t2 - t1) / 1000;
    s.lagP50Seconds = after.lag.p50Seconds;
    s.lagP99Seconds = after.lag.p99Seconds;
    s.shippedMiB = after.shipped.bytes / MiB;
    s.checkpoints = after.shipped.checkpoints;
    s.overflows = after.pool.overflows;
    s.cpuSeconds = cpuSeconds(srv.pids) - cpu0;
    written = after.shipped.bytes;
  } else if (peer === 'hyper-s3') {
    s.cpuSeconds = cpuSeconds(srv.pids) - cpu0;
    await srv.stop(); // writes what it holds: everything is on S3 once it has exited
    s.drainSeconds = (performance.now() - t1) / 1000;
  } else {
    s.cpuSeconds = cpuSeconds(srv.pids) - cpu0;
  }
  if (s.drainSeconds !== undefined) s.atRestMiBps = written / MiB / (s.seconds + s.drainSeconds);
  const d = counterDelta(req0, peer === 'qemu-nbd' ? undefined : await rgwCounters());
  if (d !== undefined && written > 0) {
    s.requestsPerGiB = d.req / (written / GiB);
    s.putsPerGiB = d.put / (written / GiB);
    s.putBytesRatio = d.putBytes / written;
    s.rgwPutMiBps = d.putBytes / MiB / (s.seconds + (s.drainSeconds ?? 0));
  }
  return s;
}

// --- restore -----------------------------------------------------------------------------------

interface RestoreSample {
  fillMiB: number;
  fillSeconds: number;
  fillSettleSeconds: number;
  /** What the replicator shipped for the fill (more than written when the pool overflowed). */
  fillShippedMiB?: number;
  fillOverflows?: number;
  fullSeconds?: number;
  fullAllocatedGiB?: number;
  lazyCommandSeconds?: number;
  serveStartSeconds?: number;
  firstReadSeconds?: number;
  /** Connect + 4 KiB pread inside the client (its process start left out). */
  firstReadClientSeconds?: number;
  timeToFirstReadSeconds?: number;
  lazyCompleteSeconds?: number;
  lazyAllocatedGiB?: number;
}

async function allocatedGiB(file: string): Promise<number> {
  return ((await stat(file)).blocks * 512) / GiB;
}

async function readPrimary(file: string, offset: number, length: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(length);
    await fh.read(buf, 0, length, MiB + offset); // the first 1 MiB is the primary's header
    return buf;
  } finally {
    await fh.close();
  }
}

async function runRestore(ctx: Ctx, rep: number): Promise<RestoreSample> {
  const dev = restoreGiB * GiB;
  const prefix = `s3://${bucket}/${ctx.prefix}`;
  const orig = join(ctx.dir, 'orig.img');
  const uuid = await formatPrimary(orig, dev, prefix, ctx.ep);
  let srv = await serveReplica(orig, uuid, join(ctx.dir, 'orig.sock'), ctx.ep);
  const out: RestoreSample = { fillMiB: dev / 4 / MiB, fillSeconds: 0, fillSettleSeconds: 0 };
  let checkpoint: number;
  try {
    // 1 MiB of random data at the start of every 4 MiB: data in every region, holes between.
    const t0 = performance.now();
    await runOk(
      'fio',
      [
        '--name=fill',
        '--ioengine=nbd',
        `--uri=${srv.uri}`,
        '--rw=write:3M',
        '--bs=1M',
        '--iodepth=8',
        `--size=${dev}`,
        '--refill_buffers',
        '--end_fsync=1',
      ],
      { timeoutMs: 1_800_000 },
    );
    const t1 = performance.now();
    if (!(await settle(srv.control as ControlClient))) throw new Error('fill did not settle');
    out.fillSeconds = (t1 - t0) / 1000;
    out.fillSettleSeconds = (performance.now() - t1) / 1000;
    const st = await (srv.control as ControlClient).get<ReplicaStatus>('/v1/replica');
    checkpoint = st.replica.checkpoint;
    out.fillShippedMiB = st.shipped.bytes / MiB;
    out.fillOverflows = st.pool.overflows;
  } finally {
    await srv.stop();
  }
  // The bytes the first read must return: in the middle of the device, inside a data chunk.
  const at = Math.floor(dev / 2 / (4 * MiB)) * 4 * MiB + 64 * KiB;
  const expect = await readPrimary(orig, at, 4096);
  const whole = await readPrimary(orig, 0, 4 * MiB); // a data chunk and a hole, checked too
  await rm(orig, { force: true });

  const restoreArgs = (file: string): string[] => [
    'bin/run.js',
    'replica',
    'restore',
    '--file',
    file,
    '--uuid',
    uuid,
    '--to',
    String(checkpoint),
    '--replica',
    prefix,
    '--endpoint',
    ctx.ep,
  ];
  const full = async (): Promise<void> => {
    const file = join(ctx.dir, 'full.img');
    const r = await runOk('node', restoreArgs(file), { timeoutMs: 1_800_000 });
    out.fullSeconds = r.ms / 1000;
    out.fullAllocatedGiB = await allocatedGiB(file);
    if (!(await readPrimary(file, at, 4096)).equals(expect))
      throw new Error('full restore: wrong bytes');
    if (!(await readPrimary(file, 0, 4 * MiB)).equals(whole))
      throw new Error('full restore: wrong bytes in the first 4 MiB');
    await rm(file, { force: true });
  };
  const lazy = async (): Promise<void> => {
    const file = join(ctx.dir, 'lazy.img');
    const t0 = performance.now();
    await runOk('node', [...restoreArgs(file), '--lazy'], { timeoutMs: 600_000 });
    const t1 = performance.now();
    srv = await serveReplica(file, uuid, join(ctx.dir, 'lazy.sock'), ctx.ep);
    try {
      const t2 = performance.now();
      const r = await firstRead(srv.uri, at);
      const t3 = performance.now();
      if (r.data !== undefined && !r.data.equals(expect))
        throw new Error('lazy restore: the first read returned wrong bytes');
      out.lazyCommandSeconds = (t1 - t0) / 1000;
      out.serveStartSeconds = (t2 - t1) / 1000;
      out.firstReadSeconds = (t3 - t2) / 1000;
      if (r.clientMs !== undefined) out.firstReadClientSeconds = r.clientMs / 1000;
      out.timeToFirstReadSeconds = (t3 - t0) / 1000;
      const deadline = Date.now() + 1_800_000;
      for (;;) {
        const st = await (srv.control as ControlClient).get<ReplicaStatus>('/v1/replica');
        if (st.restore === null) break;
        if (Date.now() > deadline) throw new Error('the lazy restore did not finish');
        await sleep(100);
      }
      out.lazyCompleteSeconds = (performance.now() - t0) / 1000;
    } finally {
      await srv.stop();
    }
    out.lazyAllocatedGiB = await allocatedGiB(file);
    if (!(await readPrimary(file, 0, 4 * MiB)).equals(whole))
      throw new Error('lazy restore: wrong bytes in the first 4 MiB');
    await rm(file, { force: true });
  };
  for (const step of rep % 2 === 0 ? [lazy, full] : [full, lazy]) await step();
  return out;
}

// --- main --------------------------------------------------------------------------------------

type Samples = Record<string, Partial<Record<PeerName, Partial<Record<Workload, WriteSample[]>>>>>;

async function main(): Promise<void> {
  if (!endpoint || !bucket)
    throw new Error('no S3 endpoint (HYPER_TEST_S3_ENDPOINT / _BUCKET): run via npm run bench');
  for (const t of ['nbdcopy', 'fio', 'nbdinfo', 'qemu-nbd'])
    if (!haveTool(t)) throw new Error(`missing ${t} (scripts/install-deps.sh)`);
  if (!existsSync('dist/commands')) throw new Error('run `npm run build` first');
  const base = resolve(
    arg('dir', process.env.HYPER_BENCH_DIR ?? (existsSync('/dev/shm') ? '/dev/shm' : '/tmp')),
  );
  await mkdir(base, { recursive: true });
  const work = await mkdtemp(join(base, 'hyper-bench-replica-'));
  const removeWork = onExit(() => spawnSync('rm', ['-rf', work]));
  const fs = fsType(work);
  const where = `${base} (${fs})`;
  const runId = `replica-${Date.now().toString(36)}`;
  const rgw = new URL(endpoint);
  const cleanStore = await openStore(`s3://${bucket}/`, { endpoint });
  console.error(`[replica] files in ${where}; RGW ${endpoint}; prefix s3://${bucket}/${runId}/`);

  const samples: Samples = {};
  const puts: Record<string, Array<{ mibps: number; opsPerSec: number }>> = {};
  const restores: Record<string, RestoreSample[]> = {};
  const errors: string[] = [];
  const t0 = Date.now();
  const elapsed = (): string => `${Math.round((Date.now() - t0) / 1000)} s`;
  try {
    const src = join(work, 'src.img');
    if (PEERS.length > 0) await randomFile(src, sizeMiB);
    for (const delay of latencies) {
      const key = `${delay}ms`;
      samples[key] = {};
      puts[key] = [];
      restores[key] = [];
      const proxy =
        delay > 0 ? await startDelayProxy(`${rgw.hostname}:${rgw.port}`, delay) : undefined;
      const ep = proxy ? `http://127.0.0.1:${proxy.port}` : endpoint;
      try {
        for (let rep = 0; rep < reps; rep++) {
          if (only.includes('put')) {
            const store = await openStore(`s3://${bucket}/`, { endpoint: ep });
            const prefix = `${runId}/put-${delay}-${rep}/`;
            try {
              const p = await measurePut(
                store,
                prefix,
                4 * MiB,
                Math.max(16, size / (4 * MiB)),
                16,
              );
              puts[key]!.push({ mibps: p.mibps, opsPerSec: p.opsPerSec });
              console.error(
                `[replica] ${key} rep ${rep + 1} RGW PUT 4 MiB x16: ${fmt(p.mibps)} MiB/s (${elapsed()})`,
              );
            } catch (e) {
              errors.push(`${key} rep ${rep + 1} put: ${(e as Error).message}`);
            } finally {
              await clearPrefix(cleanStore, prefix).catch(() => undefined);
              await store.close();
            }
          }
          const order = PEERS.map((_, k) => PEERS[(k + rep) % PEERS.length] as PeerName);
          for (const peer of order) {
            for (const w of WORKLOADS) {
              const tag = `${peer}-${w}-${delay}-${rep}`;
              const ctx: Ctx = { ep, prefix: `${runId}/${tag}/`, dir: join(work, tag) };
              await mkdir(ctx.dir, { recursive: true });
              let srv: Server | undefined;
              try {
                srv = await startPeer(peer, ctx);
                const s = await runWorkload(peer, w, srv, src);
                ((samples[key]![peer] ??= {})[w] ??= []).push(s);
                console.error(
                  `[replica] ${key} rep ${rep + 1} ${peer} ${w}: ${fmt(s.value)}` +
                    (s.drainSeconds !== undefined ? `, drain ${fmt(s.drainSeconds)} s` : '') +
                    (s.lagP99Seconds !== undefined ? `, lag p99 ${fmt(s.lagP99Seconds)} s` : '') +
                    (s.requestsPerGiB !== undefined ? `, ${fmt(s.requestsPerGiB)} req/GiB` : '') +
                    ` (${elapsed()})`,
                );
              } catch (e) {
                const msg = `${key} rep ${rep + 1} ${peer} ${w}: ${(e as Error).message}`;
                errors.push(msg);
                console.error(`[replica] ERROR ${msg}`);
              } finally {
                await srv?.stop();
                await rm(ctx.dir, { recursive: true, force: true });
                if (peer !== 'qemu-nbd')
                  await clearPrefix(cleanStore, ctx.prefix).catch(() => undefined);
              }
            }
          }
          if (only.includes('restore')) {
            const tag = `restore-${delay}-${rep}`;
            const ctx: Ctx = { ep, prefix: `${runId}/${tag}/`, dir: join(work, tag) };
            await mkdir(ctx.dir, { recursive: true });
            try {
              const r = await runRestore(ctx, rep);
              restores[key]!.push(r);
              console.error(
                `[replica] ${key} rep ${rep + 1} restore: full ${fmt(r.fullSeconds ?? NaN)} s, ` +
                  `lazy first read ${fmt(r.timeToFirstReadSeconds ?? NaN)} s, ` +
                  `lazy done ${fmt(r.lazyCompleteSeconds ?? NaN)} s (${elapsed()})`,
              );
            } catch (e) {
              const msg = `${key} rep ${rep + 1} restore: ${(e as Error).message}`;
              errors.push(msg);
              console.error(`[replica] ERROR ${msg}`);
            } finally {
              await rm(ctx.dir, { recursive: true, force: true });
              await clearPrefix(cleanStore, ctx.prefix).catch(() => undefined);
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

  // --- medians and tables ----------------------------------------------------------------------
  type Med = Partial<Record<keyof WriteSample, number>>;
  const medians: Record<string, Partial<Record<PeerName, Partial<Record<Workload, Med>>>>> = {};
  for (const [key, byPeer] of Object.entries(samples)) {
    medians[key] = {};
    for (const [peer, byW] of Object.entries(byPeer) as Array<
      [PeerName, Partial<Record<Workload, WriteSample[]>>]
    >) {
      const m: Partial<Record<Workload, Med>> = {};
      for (const [w, xs] of Object.entries(byW) as Array<[Workload, WriteSample[]]>)
        if (xs.length > 0) m[w] = medianOf(xs);
      medians[key]![peer] = m;
    }
  }
  const putMed: Record<string, number | undefined> = {};
  for (const [key, xs] of Object.entries(puts))
    putMed[key] = xs.length > 0 ? median(xs.map((p) => p.mibps)) : undefined;
  const restoreMed: Record<string, Partial<Record<keyof RestoreSample, number>>> = {};
  for (const [key, xs] of Object.entries(restores)) restoreMed[key] = medianOf(xs);

  const cell = (v: number | undefined): string | number => (v === undefined ? '-' : v);
  interface Check {
    delay: string;
    workload: Workload;
    throughput?: number;
    keepUp?: number;
    overflows?: number;
    ok: boolean | undefined;
  }
  const checks: Check[] = [];
  console.log(
    `\nReplication (hyper replica serve) vs qemu-nbd raw vs hyper serve s3://, ${sizeMiB} MiB devices, ` +
      `files in ${where}, RGW ${endpoint}, medians of ${reps}\n`,
  );
  for (const key of Object.keys(medians)) {
    const med = medians[key]!;
    const v = (p: PeerName, w: Workload, f: keyof WriteSample = 'value'): number | undefined =>
      med[p]?.[w]?.[f];
    const put = putMed[key];
    console.log(`== ${key} added to RGW's replies\n`);
    console.log(
      table(
        ['workload', ...PEERS, 'replica/qemu-nbd', 'replica/hyper-s3'],
        WORKLOADS.flatMap((w) => [
          [
            LABEL[w],
            ...PEERS.map((p) => cell(v(p, w))),
            ratio(v('replica', w), v('qemu-nbd', w)),
            ratio(v('replica', w), v('hyper-s3', w)),
          ],
          ...(w !== 'seqwrite'
            ? [
                [
                  '  (MiB/s)',
                  ...PEERS.map((p) => cell(v(p, w, 'mibps'))),
                  ratio(v('replica', w, 'mibps'), v('qemu-nbd', w, 'mibps')),
                  ratio(v('replica', w, 'mibps'), v('hyper-s3', w, 'mibps')),
                ],
                ['  (p99 ms)', ...PEERS.map((p) => cell(v(p, w, 'p99Ms'))), '', ''],
              ]
            : []),
          [
            '  server CPU s (replica: until settled)',
            ...PEERS.map((p) => cell(v(p, w, 'cpuSeconds'))),
            '',
            '',
          ],
        ]),
      ),
    );
    console.log(
      `\n${key}: replication after each workload (replica; hyper-s3's "drain" is its stop, ` +
        `its "shipped" what the workload wrote). RGW PUT capacity (4 MiB x16): ${put === undefined ? '-' : `${fmt(put)} MiB/s`}\n`,
    );
    const rows: Array<[string, (p: PeerName, w: Workload) => number | undefined]> = [
      ['backlog at end, MiB', (p, w) => v(p, w, 'backlogMiB')],
      ['backlog at end, oldest s', (p, w) => v(p, w, 'backlogSeconds')],
      ['commit lag p50, s', (p, w) => v(p, w, 'lagP50Seconds')],
      ['commit lag p99, s', (p, w) => v(p, w, 'lagP99Seconds')],
      ['drain s (end -> settled / stopped)', (p, w) => v(p, w, 'drainSeconds')],
      ['shipped MiB', (p, w) => v(p, w, 'shippedMiB') ?? (v(p, w, 'bytes') ?? NaN) / MiB],
      ['checkpoints', (p, w) => v(p, w, 'checkpoints')],
      ['pool overflows', (p, w) => v(p, w, 'overflows')],
      ['to-rest MiB/s (shipped / (run + drain))', (p, w) => v(p, w, 'atRestMiBps')],
      ['RGW PUT MiB/s over run + drain', (p, w) => v(p, w, 'rgwPutMiBps')],
      ['RGW requests per GiB shipped', (p, w) => v(p, w, 'requestsPerGiB')],
      ['RGW PUTs per GiB shipped', (p, w) => v(p, w, 'putsPerGiB')],
      ['RGW PUT bytes / shipped bytes', (p, w) => v(p, w, 'putBytesRatio')],
    ];
    const s3Peers = PEERS.filter((p) => p !== 'qemu-nbd');
    const cols = s3Peers.flatMap((p) => WORKLOADS.map((w) => ({ p, w })));
    console.log(
      table(
        ['measure', ...cols.map((c) => `${c.p} ${c.w}`)],
        rows.map(([label, f]) => [
          label,
          ...cols.map((c) => {
            const x = f(c.p, c.w);
            return x === undefined || Number.isNaN(x) ? '-' : x;
          }),
        ]),
      ),
    );
    // (The target is about throughput; the synced workload shows the commit lag.)
    for (const w of WORKLOADS.filter((x) => x !== 'synced')) {
      const r = v('replica', w, 'mibps');
      const q = v('qemu-nbd', w, 'mibps');
      const shipped = v('replica', w, 'atRestMiBps');
      const need = r === undefined ? undefined : put === undefined ? r : Math.min(r, put);
      const throughput = r !== undefined && q !== undefined ? r / q : undefined;
      const keepUp = shipped !== undefined && need !== undefined ? shipped / need : undefined;
      const overflows = v('replica', w, 'overflows');
      checks.push({
        delay: key,
        workload: w,
        ...(throughput === undefined ? {} : { throughput }),
        ...(keepUp === undefined ? {} : { keepUp }),
        ...(overflows === undefined ? {} : { overflows }),
        ok:
          throughput === undefined || keepUp === undefined
            ? undefined
            : throughput >= THROUGHPUT_TARGET && keepUp >= KEEP_UP_TARGET && !overflows,
      });
    }
    console.log('');
  }
  for (const key of Object.keys(restoreMed)) {
    const r = restoreMed[key]!;
    if (restores[key]?.length === 0) continue;
    console.log(
      `== ${key}: restore of a ${restoreGiB} GiB device (${fmt(r.fillMiB ?? NaN)} MiB of random data, 1 MiB every 4 MiB; ` +
        `written through replica serve in ${fmt(r.fillSeconds ?? NaN)} s + ${fmt(r.fillSettleSeconds ?? NaN)} s to settle, ` +
        `${fmt(r.fillShippedMiB ?? NaN)} MiB shipped, ${fmt(r.fillOverflows ?? NaN)} pool overflows), restored onto a fresh file\n`,
    );
    const ttfr = r.timeToFirstReadSeconds;
    console.log(
      table(
        ['step', 'seconds'],
        [
          ['lazy: replica restore --lazy', cell(r.lazyCommandSeconds)],
          ['lazy: replica serve until listening', cell(r.serveStartSeconds)],
          [
            `lazy: first 4 KiB read, new client (${nbdPython !== undefined ? 'python3 nbd' : 'qemu-io'})`,
            cell(r.firstReadSeconds),
          ],
          ['  of which connect + pread in the client', cell(r.firstReadClientSeconds)],
          ['lazy: time to first read (sum)', cell(ttfr)],
          ['lazy: restore finished in the background', cell(r.lazyCompleteSeconds)],
          ['full: replica restore (wall)', cell(r.fullSeconds)],
          ['full / time to first read', ratio(r.fullSeconds, ttfr)],
          ['full: GiB allocated on the primary after', cell(r.fullAllocatedGiB)],
          ['lazy: GiB allocated on the primary after', cell(r.lazyAllocatedGiB)],
        ],
      ),
    );
    console.log('');
  }
  console.log(
    `Target: primary >= ${THROUGHPUT_TARGET}x qemu-nbd while replication keeps up with RGW ` +
      `(shipped / (run + drain) >= ${KEEP_UP_TARGET}x min(primary MiB/s, RGW PUT MiB/s), no pool overflow)\n`,
  );
  console.log(
    table(
      ['delay', 'workload', 'replica/qemu-nbd', 'keep-up', 'overflows', 'result'],
      checks.map((c) => [
        c.delay,
        c.workload,
        c.throughput === undefined ? '-' : `${c.throughput.toFixed(2)}x`,
        c.keepUp === undefined ? '-' : `${c.keepUp.toFixed(2)}x`,
        cell(c.overflows),
        c.ok === undefined ? 'n/a' : c.ok ? 'met' : 'MISSED',
      ]),
    ),
  );
  if (errors.length > 0) console.log(`\nErrors\n  ${errors.join('\n  ')}`);
  const file = await writeResults('replica', {
    sizeMiB,
    reps,
    fioRuntimeSeconds: runtime,
    restoreGiB,
    latenciesMs: latencies,
    regionSize,
    dir: base,
    fileSystem: fs,
    rgwPutMiBps: putMed,
    medians,
    samples,
    restore: { medians: restoreMed, samples: restores },
    puts,
    targets: checks.map((c) => ({
      ...c,
      target: `primary >= ${THROUGHPUT_TARGET}x qemu-nbd and keep-up >= ${KEEP_UP_TARGET}x, no overflow`,
    })),
    errors,
    elapsedSeconds: Math.round((Date.now() - t0) / 1000),
  });
  console.log(`\nwrote ${file} (${elapsed()})`);
  if (errors.length > 0 || checks.some((c) => c.ok === false)) process.exitCode = 1;
}

await main();
