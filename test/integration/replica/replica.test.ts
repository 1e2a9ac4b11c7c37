/**
 * Replication (`hyper replica …`, the built CLI) against a real S3 server (Ceph RGW) with
 * real NBD clients (nbdcopy, nbdsh, fio): a primary file in a temp directory, its replica
 * volume under an s3:// prefix of the test bucket. Every scenario ends by comparing bytes:
 * the primary's data (the file from offset 1 MiB) with a model of what was written, the
 * replica with the primary (`replica check`, SHA-256 per region, after a clean stop so that
 * a difference in a clean region is a divergence) and, in most, the replica read back with
 * `hyper file export` and the device read back through NBD.
 *
 *   1. a verified workload (nbdcopy + fio with flushes) replicates exactly; refusals
 *      (PRIMARY_IN_USE, a wrong --uuid, PRIMARY_EXISTS) leave the primary file unchanged;
 *   2. kill -9 right after unflushed writes (logging mode: only the dirty regions are
 *      resynced) and during a full resync: the restarted replicator converges;
 *   3. the replica unreachable (the fault proxy down): writes stay fast, forward-part, then
 *      logging again and equal; likewise a replica bucket over its quota (NO_SPACE), until
 *      the quota is lifted (with --metrics-port: the replica series and /healthz follow);
 *   4. a 1 MiB pool overflows under fast copies to a slowed-down replica, and converges;
 *      a primary file on a full file system answers ENOSPC, and the replica ends equal to
 *      what reached the primary;
 *   5. restore by time onto a fresh file, at once and lazily (reads and a write served while
 *      the background restore runs);
 *   6. kill -9 during a lazy restore, then serve again with the replica unreachable for a
 *      moment: the restore resumes, retries the regions that failed, and finishes.
 *
 * HYPER_REPLICA_TEST_LOG=1 prints every replicator's log when its test ends (a failing test
 * always carries the logs in its error).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { openStore } from '../../../src/format/store/index.js';
import type { CheckResult } from '../../../src/replica/admin.js';
import type { ReplicaStatus } from '../../../src/replica/replicator.js';
import { hyper, hyperJson, runJs, show, tempDir } from '../../helpers/cli.js';
import { needPrerequisite, needS3, needTools, type S3TestConfig } from '../../helpers/env.js';
import { withTmpfs } from '../../helpers/tmpfs.js';
import { s3FaultProxy } from '../../helpers/fault-proxy.js';
import { nbdsh, run } from '../../helpers/nbd.js';
import {
  emptyStore,
  ensureBucket,
  radosgwAdmin,
  s3Options,
  uniqueS3Url,
} from '../../helpers/s3.js';
import { randomBuffer, rng, sha256 } from '../../helpers/volume-content.js';
import { scrape, total, value } from '../../helpers/prometheus.js';

const MiB = 1024 * 1024;
const DEVICE = 64 * MiB;
const REGION = MiB;
const REGIONS = DEVICE / REGION;
/** Where the exported device starts in the primary file (the header slots come first). */
const DATA_OFFSET = MiB;
const TIMEOUT = 180_000;
const NO_SUCH_UUID = '00000000-0000-4000-8000-000000000000';

interface Setup {
  cfg: S3TestConfig;
  dir: string;
  /** The replica prefix (s3://bucket/<unique>/). */
  prefix: string;
  /** Replicators started by this test (killed when it ends, if still running). */
  served: Served[];
}

interface Served {
  child: ChildProcess;
  uri: string;
  /** With --metrics-port: the metrics URL it printed after the NBD URI. */
  metrics?: string;
  sock: string;
  client: Control;
  stderr: () => string;
  /** Exit code (128 + signal number when killed). */
  exit: Promise<number>;
}

/**
 * A scenario: prerequisites (failing under HYPER_REQUIRE_TOOLS=1), a unique replica prefix
 * (emptied afterwards), a temp directory; a failure carries the replicators' logs.
 */
function scenario(
  name: string,
  tools: string[],
  body: (s: Setup, t: TestContext) => Promise<void>,
): (t: TestContext) => Promise<void> {
  return async (t) => {
    if (!needTools(t, ...tools)) return;
    const cfg = needS3(t);
    if (!cfg) return;
    await ensureBucket(cfg);
    const prefix = uniqueS3Url(cfg, `replica-${name}`);
    const served: Served[] = [];
    const logs = (): string =>
      served
        .map((x, i) => `--- replica serve #${i} (${x.uri}):\n${x.stderr().slice(-6000)}`)
        .join('\n');
    // Registered before tempDir's hook: the replicators stop before their files go.
    t.after(async () => {
      if (process.env.HYPER_REPLICA_TEST_LOG === '1') process.stderr.write(`${logs()}\n`);
      for (const x of served) {
        if (x.child.exitCode === null && x.child.signalCode === null) x.child.kill('SIGKILL');
        await x.exit;
      }
      await emptyStore(await openStore(prefix, s3Options(cfg)));
    });
    const dir = await tempDir(t, 'hyper-replica-');
    try {
      await body({ cfg, dir, prefix, served }, t);
    } catch (e) {
      if (e instanceof Error) e.message += `\n${logs()}`;
      throw e;
    }
  };
}

/** The CLI's environment: the test credentials and an S3 endpoint (RGW or the fault proxy). */
function cliEnv(s: Setup, endpoint = s.cfg.endpoint): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: s.cfg.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s.cfg.secretAccessKey,
    AWS_REGION: s.cfg.region,
    AWS_ENDPOINT_URL: endpoint,
  };
}

const errorCode = (stdout: string): string =>
  (JSON.parse(stdout) as { error: { code: string } }).error.code;

async function format(s: Setup, file: string): Promise<string> {
  const r = await hyper(
    [
      'replica',
      'format',
      '--file',
      file,
      '--device-size',
      '64M',
      '--replica',
      s.prefix,
      '--region-size',
      '1M',
    ],
    { env: cliEnv(s) },
  );
  assert.equal(r.code, 0, show(r));
  const uuid = r.stdout.trim();
  assert.match(uuid, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/, show(r));
  return uuid;
}

interface Control {
  get<T>(path: string): Promise<T>;
  post<T>(path: string, body: unknown): Promise<T>;
}

/**
 * The replicator's control API, one connection per request (a kept-alive connection can be
 * closed by the server just as the next request reuses it: EPIPE).
 */
function control(socketPath: string): Control {
  const call = <T>(method: string, path: string, body?: unknown): Promise<T> =>
    new Promise((resolve, reject) => {
      const text = body === undefined ? '' : JSON.stringify(body);
      const req = request(
        {
          socketPath,
          method,
          path,
          agent: false,
          headers: {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(text),
          },
        },
        (res) => {
          let raw = '';
          res.setEncoding('utf8').on('data', (d: string) => (raw += d));
          res.on('error', reject);
          res.on('end', () => {
            if ((res.statusCode ?? 500) >= 400)
              reject(new Error(`${method} ${path}: HTTP ${res.statusCode} ${raw}`));
            else resolve(JSON.parse(raw) as T);
          });
        },
      );
      req.on('error', reject);
      req.end(text);
    });
  return {
    get: (path) => call('GET', path),
    post: (path, body) => call('POST', path, body),
  };
}

/** `hyper replica serve` in a child process; resolves once it prints its NBD URI. */
function serveReplica(
  s: Setup,
  file: string,
  uuid: string,
  options: { extra?: string[]; endpoint?: string } = {},
): Promise<Served> {
  const sock = join(s.dir, `ctl-${s.served.length}.sock`);
  const env: NodeJS.ProcessEnv = { ...process.env, FORCE_COLOR: '0', NO_COLOR: '1' };
  delete env.HYPER_CONFIG;
  delete env.HYPER_PROFILE;
  delete env.HYPER_FORMAT;
  env.XDG_CONFIG_HOME = '/nonexistent/hyper-test-config';
  Object.assign(env, cliEnv(s, options.endpoint));
  const args = [
    runJs,
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
    ...(options.extra ?? []),
  ];
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let err = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
  const exit = new Promise<number>((resolve) =>
    child.once('exit', (code, signal) =>
      resolve(code ?? (signal === 'SIGKILL' ? 137 : signal === 'SIGINT' ? 130 : 128)),
    ),
  );
  const served: Served = { child, uri: '', sock, client: control(sock), stderr: () => err, exit };
  s.served.push(served);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`replica serve did not start: ${err}`));
    }, 45_000);
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const lines = out.split('\n');
      const line = lines.find((l) => l.startsWith('nbd://'));
      const metrics = lines.find((l) => /^http:\/\/\S+\/metrics$/.test(l));
      if (line === undefined || served.uri !== '') return;
      if (metrics === undefined && (options.extra ?? []).includes('--metrics-port')) return;
      clearTimeout(timer);
      served.uri = line.trim();
      if (metrics !== undefined) served.metrics = metrics;
      resolve(served);
    });
    void exit.then((code) => {
      clearTimeout(timer);
      reject(new Error(`replica serve exited ${code} before listening: ${err}`));
    });
  });
}

/** SIGINT (ships what is queued, then exit 0) or SIGKILL (a crash: 137). */
async function stop(r: Served, signal: 'SIGINT' | 'SIGKILL'): Promise<void> {
  r.child.kill(signal);
  const code = await r.exit;
  assert.equal(code, signal === 'SIGINT' ? 0 : 137, `serve exit after ${signal}`);
}

const status = (r: Served): Promise<ReplicaStatus> => r.client.get<ReplicaStatus>('/v1/replica');

/** POST settle: everything so far is committed on the replica, and the mode is logging. */
async function settle(r: Served): Promise<ReplicaStatus> {
  const a = await r.client.post<{ settled: boolean }>('/v1/replica/settle', {});
  const st = await status(r);
  assert.equal(a.settled, true, `settle timed out: ${JSON.stringify(st)}`);
  assert.equal(st.mode, 'logging', JSON.stringify(st));
  assert.equal(st.lag.bytes, 0);
  assert.equal(st.replica.connected, true);
  return st;
}

async function waitStatus(
  r: Served,
  what: string,
  ok: (st: ReplicaStatus) => boolean,
  timeoutMs = 60_000,
): Promise<ReplicaStatus> {
  const deadline = Date.now() + timeoutMs;
  let st = await status(r);
  while (!ok(st)) {
    if (Date.now() > deadline) assert.fail(`${what}: still ${JSON.stringify(st)}`);
    await sleep(20);
    st = await status(r);
  }
  return st;
}

/** The exported device as the primary file holds it (after the 1 MiB of metadata). */
async function primaryData(file: string): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(DEVICE);
    const { bytesRead } = await fh.read(buf, 0, DEVICE, DATA_OFFSET);
    assert.equal(bytesRead, DEVICE, `${file} holds the whole device`);
    return buf;
  } finally {
    await fh.close();
  }
}

const fileSha = async (file: string): Promise<string> => sha256(await readFile(file));

/** The replica's newest checkpoint, read back with `hyper file export`. */
async function replicaData(s: Setup, uuid: string): Promise<Buffer> {
  const out = join(s.dir, 'replica-export.img');
  await rm(out, { force: true });
  const r = await hyper(['file', 'export', `${s.prefix}${uuid}/`, out], {
    env: cliEnv(s),
    timeoutMs: 90_000,
  });
  assert.equal(r.code, 0, show(r));
  const data = await readFile(out);
  await rm(out, { force: true });
  return data;
}

/** The device as an NBD client reads it (nbdcopy to a file). */
async function nbdData(s: Setup, uri: string): Promise<Buffer> {
  const out = join(s.dir, 'nbd-read.img');
  await rm(out, { force: true });
  const r = await run('nbdcopy', [uri, out], { timeoutMs: 90_000 });
  assert.equal(r.code, 0, r.stderr);
  const data = await readFile(out);
  await rm(out, { force: true });
  return data;
}

function check(s: Setup, file: string, uuid: string): Promise<CheckResult> {
  return hyperJson<CheckResult>(['replica', 'check', '--file', file, '--uuid', uuid], 0, {
    env: cliEnv(s),
    timeoutMs: 90_000,
  });
}

/**
 * On a stopped primary: `replica check` finds every region equal (so no divergence either),
 * the primary holds `want`, and with `exported` so does the replica read back by export.
 */
async function assertReplicated(
  s: Setup,
  file: string,
  uuid: string,
  want: Buffer,
  exported = false,
): Promise<void> {
  const c = await check(s, file, uuid);
  assert.equal(c.served, false, 'checked on a stopped primary');
  assert.equal(c.regions, REGIONS);
  assert.deepEqual(c.differing, [], JSON.stringify(c));
  assert.equal(c.matching, REGIONS);
  assert.equal(c.diverged, 0);
  assert.equal(c.consistent, true);
  assert.equal(sha256(await primaryData(file)), sha256(want), 'the primary holds what was written');
  if (exported) {
    const rep = await replicaData(s, uuid);
    assert.equal(rep.length, DEVICE);
    assert.equal(sha256(rep), sha256(want), 'the replica export holds what was written');
  }
  const off = await offlineStatus(s, file);
  assert.equal(off.mode, 'logging', JSON.stringify(off));
  assert.equal(off.dirtyRegions, 0, JSON.stringify(off));
}

const offlineStatus = (s: Setup, file: string): Promise<ReplicaStatus> =>
  hyperJson<ReplicaStatus>(['replica', 'status', '--file', file], 0, { env: cliEnv(s) });

let writeSeq = 0;
/** The nbdsh lines that pwrite `writes` (their bytes in a file) on handle h. */
async function pwriteLines(s: Setup, writes: [number, Buffer][]): Promise<string[]> {
  const path = join(s.dir, `writes-${writeSeq++}.bin`);
  await writeFile(path, Buffer.concat(writes.map((w) => w[1])));
  const spec = writes.map(([o, d]) => `(${o}, ${d.length}),`).join(' ');
  return [
    `f = open(${JSON.stringify(path)}, "rb")`,
    `for off, n in [${spec}]:`,
    '    h.pwrite(f.read(n), off)',
  ];
}

/**
 * pwrite each [offset, data] with nbdsh (then FLUSH unless `flush` is false), and apply them
 * to `model`. Returns how long the client took (ms).
 */
async function nbdWrite(
  s: Setup,
  uri: string,
  writes: [number, Buffer][],
  model: Buffer,
  flush = true,
): Promise<number> {
  const script = [
    'h = nbd.NBD()',
    `h.connect_uri(${JSON.stringify(uri)})`,
    ...(await pwriteLines(s, writes)),
    flush ? 'h.flush()' : '',
    'h.shutdown()',
  ].join('\n');
  const t0 = Date.now();
  const r = await nbdsh(script, 60_000);
  const ms = Date.now() - t0;
  assert.equal(r.code, 0, r.stdout + r.stderr);
  for (const [o, d] of writes) d.copy(model, o);
  return ms;
}

/** sha256 of each listed region as nbdsh reads it. */
async function nbdRegionShas(uri: string, regions: number[]): Promise<string[]> {
  const script = [
    'import hashlib, json',
    'h = nbd.NBD()',
    `h.connect_uri(${JSON.stringify(uri)})`,
    `print(json.dumps([hashlib.sha256(h.pread(${REGION}, r * ${REGION})).hexdigest() for r in ${JSON.stringify(regions)}]))`,
    'h.shutdown()',
  ].join('\n');
  const r = await nbdsh(script, 60_000);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  return JSON.parse(r.stdout) as string[];
}

const regionSha = (b: Buffer, r: number): string =>
  sha256(b.subarray(r * REGION, (r + 1) * REGION));

/** Seeded random writes: `count` of 4 KiB–`maxLen` at random 4 KiB-aligned offsets. */
function randomWrites(seed: number, count: number, maxLen = MiB): [number, Buffer][] {
  const rand = rng(seed);
  const out: [number, Buffer][] = [];
  for (let i = 0; i < count; i++) {
    const len = 4096 * (1 + Math.floor(rand() * (maxLen / 4096)));
    const off = 4096 * Math.floor(rand() * ((DEVICE - len) / 4096 + 1));
    out.push([off, randomBuffer(rand, len)]);
  }
  return out;
}

describe('hyper replica on S3 (Ceph RGW) with real NBD clients', () => {
  const faulty = s3FaultProxy(21);

  it(
    'replicates a verified workload (nbdcopy, fio with flushes); refusals change nothing',
    { timeout: TIMEOUT },
    scenario('workload', ['nbdcopy', 'nbdsh', 'fio'], async (s) => {
      const file = join(s.dir, 'primary.img');
      const uuid = await format(s, file);
      const r = await serveReplica(s, file, uuid);
      const st0 = await status(r);
      assert.equal(st0.mode, 'logging');
      assert.equal(st0.regions, REGIONS);
      assert.equal(st0.deviceSize, DEVICE);
      assert.equal(st0.replica.connected, true);

      const image = randomBuffer(rng(1), 32 * MiB);
      const imagePath = join(s.dir, 'image.img');
      await writeFile(imagePath, image);
      const copy = await run('nbdcopy', [imagePath, r.uri], { timeoutMs: 60_000 });
      assert.equal(copy.code, 0, copy.stderr);
      const afterCopy = await primaryData(file);
      assert.ok(afterCopy.subarray(0, 32 * MiB).equals(image), 'nbdcopy wrote the image');
      assert.ok(afterCopy.subarray(32 * MiB).equals(Buffer.alloc(32 * MiB)));

      const fio = await run(
        'fio',
        [
          '--name=replica',
          '--ioengine=nbd',
          `--uri=${r.uri}`,
          '--rw=randwrite',
          '--bs=64k',
          '--iodepth=8',
          '--offset=16m',
          '--size=32m',
          '--fsync=16',
          '--randseed=11',
          '--verify=crc32c',
          '--verify_fatal=1',
        ],
        { timeoutMs: 120_000 },
      );
      assert.equal(fio.code, 0, fio.stdout + fio.stderr);
      assert.doesNotMatch(fio.stdout + fio.stderr, /verify: bad|verify failed/);

      const st = await settle(r);
      const want = await primaryData(file);
      assert.ok(!want.equals(afterCopy), 'fio changed the device');
      assert.ok(want.subarray(0, 16 * MiB).equals(image.subarray(0, 16 * MiB)));
      assert.ok(st.shipped.bytes >= 64 * MiB, `shipped ${st.shipped.bytes} bytes`);
      assert.ok(st.shipped.checkpoints >= 2, 'fio flushes became checkpoints');
      assert.ok(st.replica.checkpoint > st0.replica.checkpoint);
      assert.equal(st.replica.lastConsistentCheckpoint, st.replica.checkpoint);
      assert.equal(st.pool.overflows, 0);
      assert.equal(sha256(await nbdData(s, r.uri)), sha256(want), 'NBD reads the primary');
      const live = await check(s, file, uuid);
      assert.equal(live.served, true);
      assert.deepEqual(live.differing, [], 'settled: the replica equals the primary');

      // Refusals while served: restore onto it, serve it again (with a wrong uuid).
      await waitStatus(r, 'the dirty bits clear', (x) => x.dirtyRegions === 0, 30_000);
      await sleep(300); // the header write that clears them
      const whileServed = await fileSha(file);
      const inUse = await hyper(
        ['replica', 'restore', '--file', file, '--uuid', uuid, '--to', '1', '--json'],
        { env: cliEnv(s) },
      );
      assert.equal(inUse.code, 4, show(inUse));
      assert.equal(errorCode(inUse.stdout), 'PRIMARY_IN_USE');
      const wrongUuid = await hyper(
        ['replica', 'serve', '--file', file, '--uuid', NO_SUCH_UUID, '--port', '0', '--json'],
        { env: cliEnv(s) },
      );
      assert.equal(wrongUuid.code, 2, show(wrongUuid));
      assert.equal(errorCode(wrongUuid.stdout), 'INVALID_ARGUMENT');
      assert.equal(await fileSha(file), whileServed, 'the refusals wrote nothing');
      assert.equal(r.child.exitCode, null, 'the replicator still runs');

      await stop(r, 'SIGINT');
      const stopped = await fileSha(file);
      const again = await hyper(
        [
          'replica',
          'format',
          '--file',
          file,
          '--device-size',
          '64M',
          '--replica',
          s.prefix,
          '--json',
        ],
        { env: cliEnv(s) },
      );
      assert.equal(again.code, 4, show(again));
      assert.equal(errorCode(again.stdout), 'PRIMARY_EXISTS');
      const wrong2 = await hyper(['replica', 'serve', '--file', file, '--uuid', NO_SUCH_UUID], {
        env: cliEnv(s),
      });
      assert.equal(wrong2.code, 2, show(wrong2));
      assert.equal(await fileSha(file), stopped, 'the refusals wrote nothing');
      await assertReplicated(s, file, uuid, want, true);
    }),
  );

  it(
    'converges after kill -9 right after writes (logging) and during a full resync',
    { timeout: TIMEOUT },
    scenario('kill', ['nbdsh', 'nbdcopy'], async (s, t) => {
      const file = join(s.dir, 'primary.img');
      const uuid = await format(s, file);
      const model = Buffer.alloc(DEVICE);
      let r = await serveReplica(s, file, uuid);
      await nbdWrite(s, r.uri, [[0, randomBuffer(rng(2), 16 * MiB)]], model);
      await settle(r);

      // Logging mode: a flushed small write (its commit restarts the 1 s commit interval),
      // then unflushed writes, all acknowledged, and the replicator killed at once while the
      // client stays connected.
      const small: [number, Buffer][] = [[40 * MiB, randomBuffer(rng(3), 4096)]];
      const writes = randomWrites(4, 12);
      const script = [
        'import time',
        'h = nbd.NBD()',
        `h.connect_uri(${JSON.stringify(r.uri)})`,
        ...(await pwriteLines(s, small)),
        'h.flush()',
        ...(await pwriteLines(s, writes)),
        'print("written", flush=True)',
        'time.sleep(60)',
      ].join('\n');
      const writer = spawn('nbdsh', ['-c', script], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` },
      });
      t.after(() => writer.kill('SIGKILL'));
      let werr = '';
      writer.stderr.setEncoding('utf8').on('data', (d: string) => (werr += d));
      await new Promise<void>((resolve, reject) => {
        writer.stdout.setEncoding('utf8').on('data', (d: string) => {
          if (d.includes('written')) resolve();
        });
        writer.once('exit', (code) => reject(new Error(`nbdsh exited ${code}: ${werr}`)));
      });
      await stop(r, 'SIGKILL');
      writer.kill('SIGKILL');
      for (const [o, d] of [...small, ...writes]) d.copy(model, o);
      assert.equal(
        sha256(await primaryData(file)),
        sha256(model),
        'acknowledged writes are on the primary',
      );
      const crashed = await offlineStatus(s, file);
      assert.equal(crashed.mode, 'logging');
      assert.ok(
        crashed.dirtyRegions > 0 && crashed.dirtyRegions < REGIONS,
        JSON.stringify(crashed),
      );
      // The killed writes were not committed: the replica lags, in dirty regions only.
      const lagging = await check(s, file, uuid);
      assert.equal(lagging.served, false);
      assert.ok(lagging.differing.length > 0, 'the kill came before the writes were committed');
      assert.ok(
        lagging.differing.every((d) => d.dirty),
        `a region differs although its dirty bit is clear: ${JSON.stringify(lagging.differing)}`,
      );
      assert.equal(lagging.diverged, 0);

      r = await serveReplica(s, file, uuid);
      const restarted = await status(r);
      assert.ok(restarted.dirtyRegions < restarted.regions, JSON.stringify(restarted));
      assert.notEqual(restarted.mode, 'forward-full');
      await settle(r);
      assert.match(r.stderr(), /resync pass \{"regions":\d+,"full":false\}/);
      const pass = /resync pass \{"regions":(\d+)/.exec(r.stderr());
      assert.ok(Number(pass![1]) < REGIONS, 'only the dirty regions are resynced');
      const c1 = await check(s, file, uuid);
      assert.deepEqual(c1.differing, [], 'resynced');

      // Unflushed writes, then a full resync killed while it runs.
      await nbdWrite(s, r.uri, randomWrites(5, 4), model, false);
      const full = await hyperJson<{ regions: number; full: boolean; live: boolean }>(
        ['replica', 'resync', '--control-socket', r.sock, '--full'],
        0,
        { env: cliEnv(s) },
      );
      assert.deepEqual(full, { regions: REGIONS, full: true, live: true });
      const running = await waitStatus(
        r,
        'the full pass copies',
        (x) => x.mode !== 'forward-full' || (x.resync !== null && x.resync.copied > 0),
        10_000,
      );
      await stop(r, 'SIGKILL');
      assert.equal(
        running.mode,
        'forward-full',
        `killed during the full resync: ${JSON.stringify(running)}`,
      );
      const crashed2 = await offlineStatus(s, file);
      assert.equal(crashed2.mode, 'forward-full', JSON.stringify(crashed2));

      r = await serveReplica(s, file, uuid);
      await settle(r);
      assert.match(r.stderr(), new RegExp(`resync pass \\{"regions":${REGIONS},"full":true\\}`));
      assert.equal(sha256(await nbdData(s, r.uri)), sha256(model), 'NBD reads the primary');
      await stop(r, 'SIGINT');
      assert.match(r.stderr(), /resync pass/);
      await assertReplicated(s, file, uuid, model);
    }),
  );

  it(
    'keeps serving while the replica is unreachable, then resyncs what changed',
    { timeout: TIMEOUT },
    scenario('outage', ['nbdsh', 'nbdcopy'], async (s, t) => {
      const { proxy, endpoint } = faulty();
      proxy.down = false;
      proxy.rates = {};
      t.after(() => {
        proxy.down = false;
      });
      const file = join(s.dir, 'primary.img');
      const uuid = await format(s, file);
      const model = Buffer.alloc(DEVICE);
      const r = await serveReplica(s, file, uuid, { endpoint });
      await nbdWrite(s, r.uri, [[8 * MiB, randomBuffer(rng(6), 8 * MiB)]], model);
      await settle(r);

      proxy.down = true;
      const refusedBefore = proxy.counts.downRefused;
      const ms1 = await nbdWrite(s, r.uri, randomWrites(7, 8), model);
      assert.ok(ms1 < 5000, `writes and a flush with the replica down took ${ms1} ms`);
      const down = await waitStatus(
        r,
        'the replicator notices the outage',
        (x) => x.mode === 'forward-part' && !x.replica.connected,
      );
      assert.notEqual(down.replica.error, null, JSON.stringify(down));
      assert.ok(down.dirtyRegions > 0);
      const ms2 = await nbdWrite(s, r.uri, randomWrites(8, 8), model);
      assert.ok(ms2 < 5000, `writes and a flush with the replica down took ${ms2} ms`);
      const still = await status(r);
      assert.equal(still.mode, 'forward-part');
      assert.equal(still.replica.connected, false);
      assert.ok(proxy.counts.downRefused > refusedBefore, 'requests hit the down store');
      assert.equal(sha256(await nbdData(s, r.uri)), sha256(model), 'the primary serves reads');

      proxy.down = false;
      const up = await settle(r);
      assert.equal(up.replica.error, null);
      assert.equal(up.replica.lastConsistentCheckpoint, up.replica.checkpoint);
      await stop(r, 'SIGINT');
      assert.match(r.stderr(), /replica failed/);
      assert.match(r.stderr(), /resync pass/);
      await assertReplicated(s, file, uuid, model);
    }),
  );

  it(
    'keeps serving while the replica bucket is over its quota, then resyncs once it is lifted',
    { timeout: TIMEOUT },
    scenario('quota', ['nbdsh', 'radosgw-admin'], async (s, t) => {
      const admin = radosgwAdmin(t);
      if (!admin) return;
      // Quotas are per bucket: the replica gets a bucket of its own.
      const bucket = `hyper-rquota-${randomBytes(4).toString('hex')}`;
      await ensureBucket(s.cfg, bucket);
      const q: Setup = { ...s, prefix: `s3://${bucket}/r/` };
      const quota = (...a: string[]) =>
        admin('quota', ...a, '--quota-scope=bucket', `--bucket=${bucket}`);
      t.after(async () => {
        await quota('disable');
        await emptyStore(await openStore(q.prefix, s3Options(s.cfg)));
      });
      const file = join(s.dir, 'primary.img');
      const uuid = await format(q, file);
      const model = Buffer.alloc(DEVICE);
      const r = await serveReplica(q, file, uuid, { extra: ['--metrics-port', '0'] });
      const metrics = r.metrics!;
      const healthz = metrics.replace(/metrics$/, 'healthz');
      await nbdWrite(q, r.uri, [[8 * MiB, randomBuffer(rng(16), 8 * MiB)]], model);
      await settle(r);
      let e = await scrape(metrics);
      assert.equal(value(e, 'hyper_replica_connected'), 1);
      assert.equal(value(e, 'hyper_replica_mode', { mode: 'logging' }), 1);
      assert.equal(value(e, 'hyper_replica_mode', { mode: 'forward-part' }), 0);
      assert.equal(value(e, 'hyper_replica_lag_bytes'), 0);
      assert.ok(value(e, 'hyper_replica_shipped_bytes_total') >= 8 * MiB);
      assert.ok(value(e, 'hyper_replica_checkpoints_total') >= 1);
      assert.equal(value(e, 'hyper_replica_regions'), REGIONS);
      assert.ok(total(e, 'hyper_nbd_requests_total', { command: 'write' }) >= 1);
      assert.equal((await fetch(healthz)).status, 200);

      // Smaller than what the bucket holds already: every PUT is refused (QuotaExceeded).
      await quota('set', '--max-size=1K');
      await quota('enable');
      const ms1 = await nbdWrite(q, r.uri, randomWrites(17, 8), model);
      assert.ok(ms1 < 5000, `writes and a flush with the replica full took ${ms1} ms`);
      const full = await waitStatus(
        r,
        'the replicator notices the full bucket',
        (x) => x.mode === 'forward-part' && !x.replica.connected,
      );
      assert.match(full.replica.error ?? '', /^NO_SPACE: /, JSON.stringify(full));
      assert.ok(full.dirtyRegions > 0);
      e = await scrape(metrics);
      assert.equal(value(e, 'hyper_replica_connected'), 0);
      assert.equal(value(e, 'hyper_replica_mode', { mode: 'forward-part' }), 1);
      assert.ok(value(e, 'hyper_replica_dirty_regions') > 0);
      const sick = await fetch(healthz);
      const why = await sick.text();
      assert.equal(sick.status, 503, why);
      assert.match(why, /^replica not connected .*: NO_SPACE: /);
      assert.equal((await fetch(metrics.replace(/metrics$/, 'livez'))).status, 200);
      const ms2 = await nbdWrite(q, r.uri, randomWrites(18, 8), model);
      assert.ok(ms2 < 5000, `writes and a flush with the replica full took ${ms2} ms`);
      assert.equal(sha256(await nbdData(q, r.uri)), sha256(model), 'the primary serves reads');

      await quota('disable');
      const up = await settle(r);
      assert.equal(up.replica.error, null);
      assert.equal(up.replica.lastConsistentCheckpoint, up.replica.checkpoint);
      e = await scrape(metrics);
      assert.equal(value(e, 'hyper_replica_connected'), 1);
      assert.equal(value(e, 'hyper_replica_mode', { mode: 'logging' }), 1);
      assert.equal(value(e, 'hyper_replica_lag_bytes'), 0);
      assert.equal(value(e, 'hyper_replica_resync_pending_regions'), 0);
      assert.equal((await fetch(healthz)).status, 200);
      await stop(r, 'SIGINT');
      assert.match(r.stderr(), /replica failed/);
      await assertReplicated(q, file, uuid, model);
    }),
  );

  it(
    'a primary file on a full file system: ENOSPC to the client, and the replica gets nothing the primary refused',
    { timeout: TIMEOUT },
    scenario('primary-full', ['nbdcopy', 'nbdsh', 'mount', 'umount'], async (s, t) => {
      if (!needPrerequisite(t, process.getuid?.() === 0, 'needs root (mounts a small tmpfs)'))
        return;
      await withTmpfs(t, '8m', async (mnt) => {
        // A sparse 64 MiB device on 8 MiB: writes fail once the file system is full.
        const file = join(mnt, 'primary.img');
        const uuid = await format(s, file);
        const r = await serveReplica(s, file, uuid);
        const img = join(s.dir, 'data.img');
        await writeFile(img, randomBuffer(rng(19), 16 * MiB));
        const copy = await run('nbdcopy', ['--flush', img, r.uri], { timeoutMs: 120_000 });
        assert.notEqual(copy.code, 0, 'the writes past the room fail');
        assert.match(copy.stderr, /No space left on device/, copy.stderr);
        // Room again: a FLUSH gets through, and whatever reached the primary reaches the
        // replica, nothing more (a refused write shipped would differ from the primary).
        const grow = await run('mount', ['-o', 'remount,size=128m', mnt]);
        assert.equal(grow.code, 0, grow.stderr);
        const flush = await nbdsh(
          [
            'h = nbd.NBD()',
            `h.connect_uri(${JSON.stringify(r.uri)})`,
            'h.flush()',
            'h.shutdown()',
          ].join('\n'),
        );
        assert.equal(flush.code, 0, flush.stderr);
        await settle(r);
        await stop(r, 'SIGINT');
        assert.match(r.stderr(), /ENOSPC/);
        const c = await check(s, file, uuid);
        assert.deepEqual(c.differing, [], JSON.stringify(c));
        assert.equal(c.matching, REGIONS);
        assert.equal(c.diverged, 0);
      });
    }),
  );

  it(
    'a stop while the replica hangs ends within --drain, and the next start copies what it lacks',
    { timeout: TIMEOUT },
    scenario('hang', ['nbdsh'], async (s, t) => {
      const { proxy, endpoint } = faulty();
      proxy.down = false;
      proxy.rates = {};
      t.after(() => proxy.unhang());
      const file = join(s.dir, 'primary.img');
      const uuid = await format(s, file);
      const model = Buffer.alloc(DEVICE);
      const drain = ['--drain', '1s'];
      const r = await serveReplica(s, file, uuid, { endpoint, extra: drain });
      await nbdWrite(s, r.uri, randomWrites(31, 6), model);
      await settle(r);

      // RGW stops answering (requests are taken and never answered, as by a stuck server).
      proxy.hang = true;
      const ms = await nbdWrite(s, r.uri, randomWrites(32, 6), model);
      assert.ok(ms < 5000, `writes and a flush with the replica hanging took ${ms} ms`);
      // Status shows it: a commit in flight for ever longer, while still "connected".
      const stuck = await waitStatus(
        r,
        'a replica commit hangs',
        (x) => (x.replica.commitSeconds ?? 0) > 1,
      );
      assert.equal(stuck.replica.connected, true);
      const t0 = Date.now();
      await stop(r, 'SIGINT');
      const took = Date.now() - t0;
      // --drain 1s, then 1 s for the last commit; the rest is starting and stopping a worker.
      assert.ok(took < 15_000, `the stop took ${took} ms`);
      assert.ok(proxy.counts.hung > 0, 'requests hung');
      assert.match(r.stderr(), /the replica did not answer in time/);
      assert.equal(sha256(await primaryData(file)), sha256(model), 'the primary holds every write');

      proxy.unhang();
      const again = await serveReplica(s, file, uuid, { endpoint, extra: drain });
      const st = await status(again);
      assert.ok(
        st.dirtyRegions > 0 && st.dirtyRegions < REGIONS,
        `the next start copies some regions, not all: ${st.dirtyRegions}`,
      );
      await settle(again);
      await stop(again, 'SIGINT');
      await assertReplicated(s, file, uuid, model);
    }),
  );

  it(
    'overflows a 1 MiB pool under fast copies to a slow replica and still converges',
    { timeout: TIMEOUT },
    scenario('pool', ['nbdcopy'], async (s, t) => {
      const { proxy, endpoint } = faulty();
      proxy.down = false;
      proxy.rates = {};
      t.after(() => {
        proxy.rates = {};
      });
      const file = join(s.dir, 'primary.img');
      const uuid = await format(s, file);
      const r = await serveReplica(s, file, uuid, { endpoint, extra: ['--pool-size', '1M'] });
      const st0 = await status(r);
      assert.equal(st0.pool.limit, 2 * MiB, 'the pool holds at least two regions');
      // The replica volume buffers up to a few segments in memory before the stream has to
      // wait for it: with every request to the store slowed down, fast copies of the whole
      // device (again, until it happens) outrun it by more than the pool.
      proxy.rates = { slow: 1, latencyMs: 200 };
      const seen = { overflows: 0, forwardPart: false };
      let polling = true;
      const poller = (async () => {
        while (polling) {
          const st = await status(r);
          seen.overflows = Math.max(seen.overflows, st.pool.overflows);
          if (st.mode === 'forward-part') seen.forwardPart = true;
          await sleep(20);
        }
      })();
      const imagePath = join(s.dir, 'image.img');
      let image: Buffer = Buffer.alloc(0);
      let copies = 0;
      try {
        while (copies < 4 && seen.overflows === 0) {
          image = randomBuffer(rng(90 + copies), DEVICE);
          await writeFile(imagePath, image);
          const copy = await run('nbdcopy', [imagePath, r.uri], { timeoutMs: 60_000 });
          assert.equal(copy.code, 0, copy.stderr);
          copies++;
          seen.overflows = Math.max(seen.overflows, (await status(r)).pool.overflows);
        }
      } finally {
        polling = false;
        await poller;
        proxy.rates = {};
      }
      const st = await status(r);
      assert.ok(
        st.pool.overflows > 0 && seen.overflows > 0,
        `the pool overflowed (${copies} copies of the device): ${JSON.stringify(st)}`,
      );
      assert.ok(seen.forwardPart || st.mode === 'forward-part', 'resynced by region');
      assert.equal(
        sha256(await primaryData(file)),
        sha256(image),
        'the primary holds the last copy',
      );
      await settle(r);
      await stop(r, 'SIGINT');
      assert.match(r.stderr(), /replication pool overflowed/);
      assert.match(r.stderr(), /resync pass/);
      await assertReplicated(s, file, uuid, image);
    }),
  );

  it(
    'restores a fresh primary to a time, at once and lazily while serving',
    { timeout: TIMEOUT },
    scenario('restore', ['nbdsh', 'nbdcopy'], async (s, t) => {
      const { proxy, endpoint } = faulty();
      proxy.down = false;
      proxy.rates = {};
      t.after(() => {
        proxy.rates = {};
      });
      const file = join(s.dir, 'primary.img');
      const uuid = await format(s, file);
      const model = Buffer.alloc(DEVICE);
      const r = await serveReplica(s, file, uuid);
      // Every region holds data at T: the background restore has all of them to fetch.
      await nbdWrite(s, r.uri, [[0, randomBuffer(rng(10), 32 * MiB)]], model);
      await settle(r);
      await nbdWrite(s, r.uri, [[32 * MiB, randomBuffer(rng(11), 32 * MiB)]], model);
      await settle(r);
      await nbdWrite(s, r.uri, randomWrites(12, 6), model);
      const cpT = (await settle(r)).replica.checkpoint;
      const atT = Buffer.from(model);
      const T = new Date().toISOString();
      await sleep(50);
      await nbdWrite(s, r.uri, randomWrites(13, 10), model);
      await nbdWrite(s, r.uri, [[24 * MiB, randomBuffer(rng(14), 4 * MiB)]], model);
      assert.ok((await settle(r)).replica.checkpoint > cpT, 'checkpoints after T');
      assert.notEqual(sha256(model), sha256(atT));
      await stop(r, 'SIGINT');
      assert.equal(sha256(await primaryData(file)), sha256(model));

      // At once, onto a new file.
      const fresh = join(s.dir, 'fresh.img');
      const restored = await hyperJson<{ checkpoint: number; lazy: boolean; regions: number }>(
        ['replica', 'restore', '--file', fresh, '--uuid', uuid, '--replica', s.prefix, '--to', T],
        0,
        { env: cliEnv(s), timeoutMs: 90_000 },
      );
      assert.equal(restored.checkpoint, cpT, 'the time resolves to the checkpoint before it');
      assert.equal(restored.lazy, false);
      assert.equal(restored.regions, REGIONS);
      // The replica is rolled back to T too: the new primary and it agree.
      await assertReplicated(s, fresh, uuid, atT);

      // Lazily, onto another new file, served through a slow store (and one region at a time)
      // so that the background restore is still running while a client reads and writes.
      const lazy = join(s.dir, 'lazy.img');
      const lz = await hyperJson<{ checkpoint: number; lazy: boolean; restoredRegions: number }>(
        [
          'replica',
          'restore',
          '--file',
          lazy,
          '--uuid',
          uuid,
          '--replica',
          s.prefix,
          '--to',
          T,
          '--lazy',
        ],
        0,
        { env: cliEnv(s) },
      );
      assert.equal(lz.checkpoint, cpT);
      assert.equal(lz.lazy, true);
      assert.equal(lz.restoredRegions, 0);
      const pending = await offlineStatus(s, lazy);
      assert.equal(pending.mode, 'reverse-full');
      assert.equal(pending.restore?.restored, 0);
      proxy.rates = { slow: 1, latencyMs: 80 };
      const lr = await serveReplica(s, lazy, uuid, {
        endpoint,
        extra: ['--recover-concurrency', '1'],
      });
      const early = await status(lr);
      assert.equal(early.mode, 'reverse-full');
      assert.ok(early.restore !== null && early.restore.restored < REGIONS, JSON.stringify(early));
      // A small write into the last region, which the background pass (in region order, one
      // at a time) restores last: the rest of the region must be restored around it.
      const lazyModel = Buffer.from(atT);
      await nbdWrite(s, lr.uri, [[63 * MiB + 12288, randomBuffer(rng(15), 8192)]], lazyModel);
      const order = [63, 62, 50, 33, 32, 24, 7, 0];
      assert.deepEqual(
        await nbdRegionShas(lr.uri, order),
        order.map((x) => regionSha(lazyModel, x)),
        'regions read during the lazy restore hold the content at T (and the write)',
      );
      // Still restoring: the background pass had not reached region 63 before the write
      // (restoring it would have completed the restore), and the reads came meanwhile.
      const during = await status(lr);
      assert.ok(
        during.restore !== null && during.restore.restored < REGIONS,
        `the write and the reads came while the restore ran: ${JSON.stringify(during)}`,
      );
      proxy.rates = {};
      const done = await settle(lr);
      assert.equal(done.restore, null);
      assert.equal(
        sha256(await nbdData(s, lr.uri)),
        sha256(lazyModel),
        'NBD reads the whole device',
      );
      await stop(lr, 'SIGINT');
      assert.match(lr.stderr(), /restore complete/);
      await assertReplicated(s, lazy, uuid, lazyModel, true);
    }),
  );

  it(
    'resumes a lazy restore killed with -9, retries what failed while the replica was down, finishes',
    { timeout: TIMEOUT },
    scenario('lazy-kill', ['nbdsh', 'nbdcopy'], async (s, t) => {
      const { proxy, endpoint } = faulty();
      proxy.down = false;
      proxy.rates = {};
      t.after(() => {
        proxy.rates = {};
      });
      const file = join(s.dir, 'primary.img');
      const uuid = await format(s, file);
      const model = Buffer.alloc(DEVICE);
      const r = await serveReplica(s, file, uuid);
      await nbdWrite(
        s,
        r.uri,
        [[0, randomBuffer(rng(16), 8 * MiB)], ...randomWrites(17, 24)],
        model,
      );
      await settle(r);
      await stop(r, 'SIGINT');
      const cp = (await offlineStatus(s, file)).replica.checkpoint;
      assert.ok(cp > 0);

      const lazy = join(s.dir, 'lazy.img');
      const lz = await hyperJson<{ checkpoint: number; lazy: boolean }>(
        [
          'replica',
          'restore',
          '--file',
          lazy,
          '--uuid',
          uuid,
          '--replica',
          s.prefix,
          '--to',
          String(cp),
          '--lazy',
        ],
        0,
        { env: cliEnv(s) },
      );
      assert.equal(lz.checkpoint, cp);
      assert.equal(lz.lazy, true);
      proxy.rates = { slow: 1, latencyMs: 80 };
      let lr = await serveReplica(s, lazy, uuid, {
        endpoint,
        extra: ['--recover-concurrency', '1'],
      });
      const part = await waitStatus(
        lr,
        'some regions restored',
        (x) => x.restore === null || x.restore.restored >= 4,
        30_000,
      );
      await stop(lr, 'SIGKILL');
      proxy.rates = {};
      assert.ok(
        part.restore !== null && part.restore.restored < REGIONS,
        `killed before the restore finished: ${JSON.stringify(part)}`,
      );
      const killed = await offlineStatus(s, lazy);
      assert.equal(killed.mode, 'reverse-full', JSON.stringify(killed));
      assert.ok(killed.restore !== null && killed.restore.restored < REGIONS);
      // A region is counted just before its bit is written: the header lags by at most the
      // one in flight (one region at a time).
      assert.ok(killed.restore.restored >= part.restore.restored - 1, JSON.stringify(killed));

      // Resumed with the replica unreachable at once: background fetches fail, and are retried
      // once it is back (not left for a client to touch).
      lr = await serveReplica(s, lazy, uuid, { endpoint });
      proxy.down = true;
      t.after(() => {
        proxy.down = false;
      });
      const resumed = await status(lr);
      assert.equal(resumed.mode, 'reverse-full');
      assert.ok(resumed.restore !== null && resumed.restore.restored < REGIONS);
      const deadline = Date.now() + 30_000;
      while (!lr.stderr().includes('lazy restore of a region failed')) {
        assert.ok(Date.now() < deadline, 'a background fetch fails while the replica is down');
        await sleep(50);
      }
      proxy.down = false;
      const done = await settle(lr);
      assert.match(lr.stderr(), /lazy restore: retrying the regions that failed/);
      const order = [63, 40, 1];
      assert.deepEqual(
        await nbdRegionShas(lr.uri, order),
        order.map((x) => regionSha(model, x)),
      );
      assert.equal(done.restore, null);
      assert.equal(sha256(await nbdData(s, lr.uri)), sha256(model));
      await stop(lr, 'SIGINT');
      assert.match(lr.stderr(), /restore complete/);
      await assertReplicated(s, lazy, uuid, model);
    }),
  );
});
