/**
 * Block codecs side by side on one RGW: hyper volumes created with each codec (none, lz4,
 * zstd, xchacha20-poly1305, aes-256-gcm, zstd + xchacha20-poly1305, and deduplicating: raw,
 * lz4, zstd + xchacha), in turns per repetition, medians of --reps:
 *   - a realistic image built on the spot: ext4 (mkfs.ext4 -d, no mount) holding a source
 *     tree (this repository's node_modules), binaries (/usr/bin, /usr/lib) and a SQLite
 *     database; and random data of the same size
 *   - nbdcopy of each image into a fresh volume through `hyper serve` (with FLUSH), then
 *     stored bytes (every object of the volume) against the image's data bytes and against
 *     the raw codec
 *   - nbdcopy read of the volume after a server restart (cold)
 *   - the same image written again into the same volume at another offset: extra stored
 *     bytes (deduplication's target: <= 5% of the first copy) and its write throughput
 *   - fio 4k randwrite and randread QD16 on the realistic volume (fio buffers that compress
 *     about as well as the image does), and the server's CPU seconds per GiB moved
 * Targets (issue "Blocks that cost less"): zstd stores <= 0.6x the raw codec on the realistic
 * image; every codec keeps >= 0.8x the raw codec's throughput. Writes
 * bench-results/codecs.json.
 *
 *   node --import tsx bench/codecs.ts [--reps 3] [--image-mib 256] [--runtime 10]
 *     [--only none,lz4,zstd,xchacha,aes,zstd-xchacha,dedup,lz4-dedup,zstd-xchacha-dedup]
 * Needs `npm run build`, HYPER_TEST_S3_ENDPOINT/_BUCKET (npm run bench starts RGW).
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { cp, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { openStore } from '../src/format/store/index.js';
import {
  MiB,
  arg,
  clearPrefix,
  cpuSeconds,
  fio,
  haveTool,
  median,
  nbdcopy,
  onExit,
  randomFile,
  runOk,
  startHyper,
  table,
  writeResults,
  type NbdServer,
} from './lib.js';

const reps = Number(arg('reps', '3'));
const imageMiB = Number(arg('image-mib', '256'));
const runtime = Number(arg('runtime', '10'));
const only = arg(
  'only',
  'none,lz4,zstd,xchacha,aes,zstd-xchacha,dedup,lz4-dedup,zstd-xchacha-dedup',
).split(',');
const endpoint = process.env.HYPER_TEST_S3_ENDPOINT;
const bucket = process.env.HYPER_TEST_S3_BUCKET;

interface Codec {
  name: string;
  create: string[];
}
const CODECS: Codec[] = [
  // (Every peer names its compression: the CLI's default is not the raw codec.)
  { name: 'none', create: ['--compression', 'none'] },
  { name: 'lz4', create: ['--compression', 'lz4'] },
  { name: 'zstd', create: ['--compression', 'zstd'] },
  { name: 'xchacha', create: ['--compression', 'none', '--encryption', 'xchacha20-poly1305'] },
  { name: 'aes', create: ['--compression', 'none', '--encryption', 'aes-256-gcm'] },
  { name: 'zstd-xchacha', create: ['--compression', 'zstd', '--encryption', 'xchacha20-poly1305'] },
  { name: 'dedup', create: ['--compression', 'none', '--dedup'] },
  { name: 'lz4-dedup', create: ['--compression', 'lz4', '--dedup'] },
  {
    name: 'zstd-xchacha-dedup',
    create: ['--compression', 'zstd', '--encryption', 'xchacha20-poly1305', '--dedup'],
  },
].filter((c) => only.includes(c.name));
/** Codecs that deduplicate (their second copy of the image should cost almost nothing). */
const DEDUP = new Set(['dedup', 'lz4-dedup', 'zstd-xchacha-dedup']);

type Metric =
  | 'imageStored'
  | 'imageWrite'
  | 'imageRead'
  | 'secondStored'
  | 'secondWrite'
  | 'randomStored'
  | 'randomWrite'
  | 'randwrite'
  | 'randread'
  | 'cpuPerGiB';
const LABELS: Record<Metric, string> = {
  imageStored: 'realistic image: stored MiB',
  imageWrite: 'realistic image: nbdcopy write (MiB/s)',
  imageRead: 'realistic image: nbdcopy read, cold (MiB/s)',
  secondStored: 'the image again, at another offset: extra stored MiB',
  secondWrite: 'the image again: write (MiB/s)',
  randomStored: 'random data: stored MiB',
  randomWrite: 'random data: nbdcopy write (MiB/s)',
  randwrite: 'fio 4k randwrite QD16 (IOPS)',
  randread: 'fio 4k randread QD16 (IOPS)',
  cpuPerGiB: 'server CPU seconds per GiB nbdcopy moved',
};
const METRICS = Object.keys(LABELS) as Metric[];
/** Metrics where more is better (the others: less). */
const HIGHER: Metric[] = [
  'imageWrite',
  'imageRead',
  'secondWrite',
  'randomWrite',
  'randwrite',
  'randread',
];

/**
 * Write the non-zero 4 MiB pieces of `path` at `offset` of the export (nbdcopy has no
 * offset), then FLUSH; MiB/s of the image's data bytes.
 */
async function writeAt(uri: string, path: string, offset: number, bytes: number): Promise<number> {
  const script = [
    `f = open(${JSON.stringify(path)}, 'rb')`,
    `off = ${offset}`,
    'while True:',
    '    b = f.read(4 << 20)',
    '    if not b: break',
    '    if b.count(0) != len(b): h.pwrite(b, off)',
    '    off += len(b)',
    'h.flush()',
  ].join('\n');
  // (nbdsh needs the system python, whose nbd module it imports: /usr/bin first on PATH.)
  const r = await runOk('nbdsh', ['-u', uri, '-c', script], {
    timeoutMs: 1_800_000,
    env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` },
  });
  return bytes / MiB / (r.ms / 1000);
}

/** Files of a directory tree up to `budget` bytes, largest directories first. */
function pickFiles(dirs: string[], budget: number): string[] {
  const out: string[] = [];
  let used = 0;
  const walk = (d: string): void => {
    let names: string[];
    try {
      names = readdirSync(d);
    } catch {
      return;
    }
    for (const n of names) {
      if (used >= budget) return;
      const p = join(d, n);
      let st;
      try {
        st = statSync(p, { throwIfNoEntry: false });
      } catch {
        continue;
      }
      if (!st) continue;
      if (st.isDirectory()) walk(p);
      else if (st.isFile() && st.size > 0 && st.size < 32 * MiB) {
        out.push(p);
        used += st.size;
      }
    }
  };
  for (const d of dirs) walk(d);
  return out;
}

/**
 * An ext4 image of `mib` MiB filled to about 70%: source files (JavaScript, TypeScript,
 * JSON, Markdown), binaries and shared libraries, and a SQLite database. Returns the bytes
 * of data in it (what nbdcopy writes; free space is zeros and stores nothing).
 */
async function buildImage(dir: string, mib: number): Promise<{ path: string; dataBytes: number }> {
  const staging = join(dir, 'staging');
  const share = Math.floor((mib * MiB * 0.7) / 3);
  for (const [name, sources] of [
    ['src', ['node_modules']],
    ['bin', ['/usr/bin', '/usr/lib/x86_64-linux-gnu', '/usr/lib']],
  ] as const) {
    const files = pickFiles([...sources], share);
    for (const [k, f] of files.entries()) {
      const to = join(staging, name, String(k % 64), f.replace(/[^A-Za-z0-9._-]/g, '_'));
      await mkdir(join(staging, name, String(k % 64)), { recursive: true });
      await cp(f, to, { dereference: true }).catch(() => undefined);
    }
  }
  // A database: rows of ids, names, e-mail addresses, timestamps, JSON and random tokens.
  await mkdir(join(staging, 'db'), { recursive: true });
  const rows = Math.floor(share / 220);
  const sql = `PRAGMA page_size=4096;
CREATE TABLE users(id INTEGER PRIMARY KEY, name TEXT, email TEXT, created TEXT, profile TEXT, token TEXT);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ${rows})
INSERT INTO users SELECT x, 'user ' || x, 'user' || x || '@example.com',
  datetime(1700000000 + x * 37, 'unixepoch'),
  json_object('plan', CASE x % 3 WHEN 0 THEN 'free' WHEN 1 THEN 'pro' ELSE 'team' END, 'logins', x % 97, 'country', substr('DEFRUSJPBRINGB', 1 + (x % 7) * 2, 2)),
  hex(randomblob(16)) FROM c;
CREATE INDEX users_email ON users(email);`;
  const script = join(dir, 'db.sql');
  await writeFile(script, sql);
  await runOk('sqlite3', [join(staging, 'db', 'app.sqlite3'), `.read ${script}`], {
    timeoutMs: 600_000,
  });
  const path = join(dir, 'image.ext4');
  await runOk('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', staging, path, `${mib}M`], {
    timeoutMs: 600_000,
  });
  await rm(staging, { recursive: true, force: true });
  // Data bytes: the non-zero 4 KiB blocks of the image.
  const r = spawnSync(
    'python3',
    [
      '-c',
      'import sys\nf=open(sys.argv[1],"rb")\nz=bytes(4096)\nn=0\nwhile True:\n b=f.read(4096)\n if not b: break\n if b!=z[:len(b)]: n+=len(b)\nprint(n)',
      path,
    ],
    { encoding: 'utf8' },
  );
  const dataBytes = Number(r.stdout.trim()) || mib * MiB;
  return { path, dataBytes };
}

async function storedBytes(url: string): Promise<number> {
  const store = await openStore(url, { endpoint: endpoint as string });
  let n = 0;
  try {
    for await (const page of store.list('')) for (const o of page.objects) n += o.size;
  } finally {
    await store.close();
  }
  return n;
}

async function main(): Promise<void> {
  if (!endpoint || !bucket)
    throw new Error('no S3 endpoint (HYPER_TEST_S3_ENDPOINT / _BUCKET): run via npm run bench');
  for (const t of ['nbdcopy', 'fio', 'mkfs.ext4', 'sqlite3', 'python3'])
    if (!haveTool(t)) throw new Error(`missing ${t} (scripts/install-deps.sh)`);
  if (!existsSync('dist/commands')) throw new Error('run `npm run build` first');
  const base = process.env.HYPER_BENCH_DIR ?? (existsSync('/dev/shm') ? '/dev/shm' : '/tmp');
  const dir = await mkdtemp(join(base, 'hyper-bench-codecs-'));
  const removeAtExit = onExit(() => spawnSync('rm', ['-rf', dir]));
  const runId = `codecs-${Date.now().toString(36)}`;
  const runStore = await openStore(`s3://${bucket}/${runId}/`, { endpoint });
  try {
    const image = await buildImage(dir, imageMiB);
    const random = join(dir, 'random.img');
    await randomFile(random, Math.round(image.dataBytes / MiB));
    const randomBytesLen = Math.round(image.dataBytes / MiB) * MiB;
    const keyFile = join(dir, 'volume.key');
    await writeFile(keyFile, randomBytes(32));
    const storeFlags = ['--endpoint', endpoint, '--key-file', keyFile];
    console.error(
      `[codecs] image ${imageMiB} MiB ext4 with ${(image.dataBytes / MiB).toFixed(1)} MiB of data`,
    );

    const samples: Record<string, Record<Metric, number[]>> = {};
    const errors: string[] = [];
    for (let rep = 0; rep < reps; rep++) {
      const order = CODECS.map((_, k) => CODECS[(k + rep) % CODECS.length] as Codec);
      for (const c of order) {
        const s = (samples[c.name] ??= Object.fromEntries(
          METRICS.map((m) => [m, [] as number[]]),
        ) as Record<Metric, number[]>);
        const put = (m: Metric, v: number): void => {
          s[m].push(v);
          console.error(`[codecs] rep ${rep + 1} ${c.name} ${m}: ${v.toFixed(1)}`);
        };
        const url = `s3://${bucket}/${runId}/${c.name}-${rep}/`;
        const rurl = `s3://${bucket}/${runId}/${c.name}-${rep}-random/`;
        let srv: NbdServer | undefined;
        try {
          // CPU of the server while nbdcopy runs (the fio runs are not counted).
          let cpu = 0;
          let moved = 0;
          const copy = async (src: string, dst: string, bytes: number, flush: boolean) => {
            const c0 = cpuSeconds((srv as NbdServer).pids);
            const v = await nbdcopy(src, dst, bytes, { flush });
            cpu += cpuSeconds((srv as NbdServer).pids) - c0;
            moved += bytes;
            return v;
          };
          const start = async (u: string, create: boolean): Promise<NbdServer> =>
            startHyper(u, {
              // Room for the image twice (the second copy at imageMiB).
              ...(create ? { createSize: 2 * imageMiB * MiB, create: c.create } : {}),
              store: storeFlags,
            });
          const stop = async (): Promise<void> => {
            if (!srv) return;
            await srv.stop();
            srv = undefined;
          };
          srv = await start(url, true);
          put('imageWrite', await copy(image.path, srv.uri, image.dataBytes, true));
          await stop();
          put('imageStored', (await storedBytes(url)) / MiB);
          srv = await start(url, false);
          put('imageRead', await copy(srv.uri, 'null:', image.dataBytes, false));
          // The same image again behind the first: with dedup it stores (almost) nothing.
          const first = await storedBytes(url);
          put('secondWrite', await writeAt(srv.uri, image.path, imageMiB * MiB, image.dataBytes));
          put('secondStored', ((await storedBytes(url)) - first) / MiB);
          // fio's buffers: about as compressible as the image (fio writes verify-free data).
          const fioExtra = ['--buffer_compress_percentage=50', '--refill_buffers'];
          const job = { size: imageMiB * MiB, runtime, rampTime: 1, extra: fioExtra };
          put('randwrite', (await fio(srv.uri, { ...job, rw: 'randwrite' })).iops);
          put('randread', (await fio(srv.uri, { ...job, rw: 'randread' })).iops);
          await stop();
          srv = await start(rurl, true);
          put('randomWrite', await copy(random, srv.uri, randomBytesLen, true));
          await stop();
          put('randomStored', (await storedBytes(rurl)) / MiB);
          put('cpuPerGiB', cpu / (moved / 1024 / MiB));
        } catch (e) {
          errors.push(`${c.name} rep ${rep + 1}: ${(e as Error).message}`);
          console.error(`[codecs] ${c.name}: ${(e as Error).message}`);
          await srv?.stop();
        } finally {
          // RGW keeps its data in RAM (memstore): each run's volumes go once measured.
          await clearPrefix(runStore, `${c.name}-${rep}/`);
          await clearPrefix(runStore, `${c.name}-${rep}-random/`);
        }
      }
    }
    const med: Record<string, Record<Metric, number>> = {};
    for (const [n, s] of Object.entries(samples))
      med[n] = Object.fromEntries(METRICS.map((m) => [m, median(s[m])])) as Record<Metric, number>;
    const names = CODECS.map((c) => c.name);
    const raw = med.none;
    const rel = (n: string, m: Metric): string => {
      const a = med[n]?.[m];
      const b = raw?.[m];
      return a === undefined || b === undefined || !b ? '' : ` (${(a / b).toFixed(2)}x)`;
    };
    console.log(
      `\nBlock codecs on RGW: ${imageMiB} MiB ext4 image with ${(image.dataBytes / MiB).toFixed(1)} MiB of data (sources, binaries, SQLite), and as much random data; medians of ${reps}, ratio to the raw codec in parentheses\n`,
    );
    console.log(
      table(
        ['workload', ...names],
        METRICS.map((m) => [
          LABELS[m],
          ...names.map((n) => {
            const v = med[n]?.[m];
            return v === undefined || Number.isNaN(v)
              ? 'error'
              : `${v >= 100 ? v.toFixed(0) : v.toFixed(1)}${n === 'none' ? '' : rel(n, m)}`;
          }),
        ]),
      ),
    );
    const dataMiB = image.dataBytes / MiB;
    const checks: { target: string; ratio: number | undefined; ok: boolean | null }[] = [];
    const zstd = med.zstd?.imageStored;
    if (zstd !== undefined && raw)
      checks.push({
        target: 'zstd stored bytes <= 0.6x the raw codec (realistic image)',
        ratio: zstd / raw.imageStored,
        ok: zstd / raw.imageStored <= 0.6,
      });
    for (const n of names.filter((x) => DEDUP.has(x))) {
      const m = med[n];
      if (!m) continue;
      checks.push({
        target: `${n}: a second copy of the image stores <= 5% of the first`,
        ratio: m.secondStored / m.imageStored,
        ok: m.secondStored / m.imageStored <= 0.05,
      });
    }
    for (const n of names.filter((x) => x !== 'none')) {
      for (const m of HIGHER) {
        const a = med[n]?.[m];
        if (a === undefined || !raw) continue;
        checks.push({
          target: `${n}: ${LABELS[m]} >= 0.8x raw`,
          ratio: a / raw[m],
          ok: a / raw[m] >= 0.8,
        });
      }
    }
    console.log('\nTargets\n');
    console.log(
      table(
        ['target', 'measured', 'result'],
        checks.map((c) => [
          c.target,
          c.ratio === undefined ? '-' : `${c.ratio.toFixed(2)}x`,
          c.ok === null ? 'n/a' : c.ok ? 'met' : 'MISSED',
        ]),
      ),
    );
    if (errors.length > 0) console.log(`\nErrors\n  ${errors.join('\n  ')}`);
    const file = await writeResults('codecs', {
      imageMiB,
      imageDataMiB: dataMiB,
      reps,
      fioRuntimeSeconds: runtime,
      medians: med,
      samples,
      errors,
      targets: checks,
    });
    console.log(`\nwrote ${file}`);
    if (errors.length > 0 || checks.some((c) => c.ok === false)) process.exitCode = 1;
  } finally {
    await clearPrefix(runStore, '').catch(() => undefined);
    await runStore.close();
    await rm(dir, { recursive: true, force: true });
    removeAtExit();
  }
}

await main();
