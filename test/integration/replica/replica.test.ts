/**
 * Replication (`hyper replica …`, the built CLI) against a real S3 server (Ceph RGW) with
 * real NBD clients (nbdcopy, nbdsh, fio): a primary file in a temp directory, its replica
 * volume under an s3:// prefix of the test bucket. Every scenario ends by comparing bytes:
 * the primary's data (the file from offset 1 MiB), the replica read back with
 * `hyper file export`, what NBD clients read, and `replica check`.
 *
 *   1. a verified workload (nbdcopy + fio with flushes) replicates exactly; refusals
 *      (PRIMARY_EXISTS, a wrong --uuid, PRIMARY_IN_USE) leave the primary file unchanged;
 *   2. kill -9 right after unflushed writes (logging mode: only the dirty regions are
 *      resynced) and during a full resync: the restarted replicator converges;
 *   3. the replica unreachable (fault proxy down): writes stay fast, forward-part, then back
 *      to logging and equal;
 *   4. a 1 MiB pool under a fast 32 MiB copy overflows and still converges;
 *   5. restore by time onto a fresh file, at once and lazily (reads and a write served while
 *      the background restore runs);
 *   6. kill -9 during a lazy restore, then serve again: the restore resumes and finishes.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { openStore } from '../../../src/format/store/index.js';
import type { CheckResult } from '../../../src/replica/admin.js';
import type { ReplicaStatus } from '../../../src/replica/replicator.js';
import { replicaClient } from '../../../src/replica/serve.js';
import type { ControlClient } from '../../../src/daemon/control.js';
import { hyper, hyperJson, runJs, show, tempDir } from '../../helpers/cli.js';
import { needS3, needTools, type S3TestConfig } from '../../helpers/env.js';
import { s3FaultProxy } from '../../helpers/fault-proxy.js';
import { nbdsh, run } from '../../helpers/nbd.js';
import { emptyStore, ensureBucket, s3Options, uniqueS3Url } from '../../helpers/s3.js';
import { randomBuffer, rng, sha256 } from '../../helpers/volume-content.js';

const MiB = 1024 * 1024;
const DEVICE = 64 * MiB;
const REGION = MiB;
const REGIONS = DEVICE / REGION;
/** Where the exported device starts in the primary file (the header slots come first). */
const DATA_OFFSET = MiB;
const TIMEOUT = 150_000;

interface Setup {
  t: TestContext;
  cfg: S3TestConfig;
  dir: string;
  /** The replica prefix (s3://bucket/<unique>/). */
  prefix: string;
  /** Replicators started by this test (killed when it ends, if still running). */
  served: Set<Served>;
}

interface Served {
  child: ChildProcess;
  uri: string;
  sock: string;
  client: ControlClient;
  stderr: () => string;
  /** Exit code (128 + signal number when killed). */
  exit: Promise<number>;
}

async function setup(t: TestContext, name: string, tools: string[]): Promise<Setup | undefined> {
  if (!needTools(t, ...tools)) return undefined;
  const cfg = needS3(t);
  if (!cfg) return undefined;
  await ensureBucket(cfg);
  const prefix = uniqueS3Url(cfg, `replica-${name}`);
  const served = new Set<Served>();
  // Registered before tempDir's hook: the replicators stop before their files go.
  t.after(async () => {
    for (const s of served) {
      if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill('SIGKILL');
      await s.exit;
    }
    await emptyStore(await openStore(prefix, s3Options(cfg)));
  });
  const dir = await tempDir(t, 'hyper-replica-');
  return { t, cfg, dir, prefix, served };
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
  assert.match(uuid, /^[0-9a-f-]{36}$/, show(r));
  return uuid;
}

/** `hyper replica serve` in a child process; resolves once it prints its NBD URI. */
function serveReplica(
  s: Setup,
  file: string,
  uuid: string,
  options: { extra?: string[]; endpoint?: string } = {},
): Promise<Served> {
  const sock = join(s.dir, `ctl-${s.served.size}.sock`);
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
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`replica serve did not start: ${err}`));
    }, 45_000);
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      out += d;
      const line = out.split('\n').find((l) => l.startsWith('nbd://'));
      if (line === undefined) return;
      clearTimeout(timer);
      const served: Served = {
        child,
        uri: line.trim(),
        sock,
        client: replicaClient(sock),
        stderr: () => err,
        exit,
      };
      s.served.add(served);
      resolve(served);
    });
    void exit.then((code) => {
      clearTimeout(timer);
      reject(new Error(`replica serve exited ${code} before listening: ${err}`));
    });
  });
}

/** SIGINT (ships what is queued, exit 0) or SIGKILL (a crash, 137). */
async function stop(r: Served, signal: 'SIGINT' | 'SIGKILL'): Promise<void> {
  r.child.kill(signal);
  const code = await r.exit;
  assert.equal(code, signal === 'SIGINT' ? 0 : 137, `serve exit after ${signal}: ${r.stderr()}`);
}

const status = (r: Served): Promise<ReplicaStatus> => r.client.get<ReplicaStatus>('/v1/replica');

async function settle(r: Served): Promise<void> {
  const a = await r.client.post<{ settled: boolean }>('/v1/replica/settle', {});
  assert.equal(a.settled, true, `settle timed out: ${JSON.stringify(await status(r))}`);
  const st = await status(r);
  assert.equal(st.mode, 'logging', JSON.stringify(st));
  assert.equal(st.lag.bytes, 0);
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
    await sleep(25);
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

/** The replica's newest checkpoint, read with `hyper file export`. */
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

async function check(s: Setup, file: string, uuid: string): Promise<CheckResult> {
  return hyperJson<CheckResult>(['replica', 'check', '--file', file, '--uuid', uuid], 0, {
    env: cliEnv(s),
    timeoutMs: 90_000,
  });
}

/** `replica check` finds every region equal; the replica export and the primary equal `want`. */
async function assertReplicated(s: Setup, file: string, uuid: string, want: Buffer): Promise<void> {
  const c = await check(s, file, uuid);
  assert.equal(c.regions, REGIONS);
  assert.deepEqual(c.differing, [], JSON.stringify(c));
  assert.equal(c.matching, REGIONS);
  assert.equal(c.diverged, 0);
  const p = await primaryData(file);
  assert.equal(sha256(p), sha256(want), 'the primary holds what was written');
  const rep = await replicaData(s, uuid);
  assert.equal(rep.length, DEVICE);
  assert.equal(sha256(rep), sha256(want), 'the replica holds what was written');
}

const offlineStatus = (s: Setup, file: string): Promise<ReplicaStatus> =>
  hyperJson<ReplicaStatus>(['replica', 'status', '--file', file], 0, { env: cliEnv(s) });

let writeSeq = 0;
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
  const path = join(s.dir, `writes-${writeSeq++}.bin`);
  await writeFile(path, Buffer.concat(writes.map((w) => w[1])));
  const spec = writes.map(([o, d]) => `(${o}, ${d.length}),`).join(' ');
  const script = [
    'h = nbd.NBD()',
    `h.connect_uri(${JSON.stringify(uri)})`,
    `f = open(${JSON.stringify(path)}, "rb")`,
    `for off, n in [${spec}]:`,
    '    h.pwrite(f.read(n), off)',
    flush ? 'h.flush()' : '',
    'h.shutdown()',
  ].join('\n');
  const t0 = Date.now();
  const r = await nbdsh(script, 60_000);
  const ms = Date.now() - t0;
  assert.equal(r.code, 0, r.stdout + r.stderr);
  for (const [o, d] of writes) d.copy(model, o);
  await rm(path, { force: true });
  return ms;
}

/** sha256 of each listed region as nbdsh reads it, with the time the reads finished. */
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

/** Seeded random writes: `count` of 4 KiB–1 MiB at random 4 KiB-aligned offsets. */
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
    async (t) => {
      const s = await setup(t, 'workload', ['nbdcopy', 'nbdsh', 'fio']);
      if (!s) return;
      const file = join(s.dir, 'primary.img');
      const uuid = await format(s, file);
      const r = await serveReplica(s, file, uuid);
      const st0 = await status(r);
      assert.equal(st0.mode, 'logging');
      assert.equal(st0.regions, REGIONS);
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
      assert.doesNotMatch(fio.stdout + fio.stderr, /verify: bad|crc32c: verify failed/);

      await settle(r);
      const want = await primaryData(file);
      assert.ok(!want.equals(afterCopy), 'fio changed the device');
      assert.ok(want.subarray(0, 16 * MiB).equals(image.subarray(0, 16 * MiB)));
      const st = await status(r);
      assert.ok(st.shipped.bytes >= 64 * MiB, `shipped ${st.shipped.bytes} bytes`);
      assert.ok(st.replica.checkpoint > st0.replica.checkpoint);
      assert.equal(st.replica.lastConsistentCheckpoint, st.replica.checkpoint);
      assert.equal(sha256(await nbdData(s, r.uri)), sha256(want), 'NBD reads the primary');
      await assertReplicated(s, file, uuid, want);

      // Refusals while served: restore onto it, serve it twice (with a wrong uuid).
      await waitStatus(r, 'the dirty bits clear', (x) => x.dirtyRegions === 0, 30_000);
      await sleep(300); // the header write of the cleared bits
      const served = await fileSha(file);
      const inUse = await hyper(
        ['replica', 'restore', '--file', file, '--uuid', uuid, '--to', '1', '--json'],
        { env: cliEnv(s) },
      );
      assert.equal(inUse.code, 4, show(inUse));
      assert.equal(
        (JSON.parse(inUse.stdout) as { error: { code: string } }).error.code,
        'PRIMARY_IN_USE',
      );
      const wrongUuid = await hyper(
        [
          'replica',
          'serve',
          '--file',
          file,
          '--uuid',
          '00000000-0000-4000-8000-000000000000',
          '--port',
          '0',
          '--json',
        ],
        { env: cliEnv(s) },
      );
      assert.equal(wrongUuid.code, 2, show(wrongUuid));
      assert.match(wrongUuid.stdout, /INVALID_ARGUMENT/);
      assert.equal(await fileSha(file), served, 'the refusals wrote nothing');
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
      assert.equal(
        (JSON.parse(again.stdout) as { error: { code: string } }).error.code,
        'PRIMARY_EXISTS',
      );
      const wrong2 = await hyper(
        ['replica', 'serve', '--file', file, '--uuid', '00000000-0000-4000-8000-000000000000'],
        { env: cliEnv(s) },
      );
      assert.equal(wrong2.code, 2, show(wrong2));
      assert.equal(await fileSha(file), stopped, 'the refusals wrote nothing');
      // Stopped cleanly: a quiet primary compared with the replica (divergence is checked).
      const c = await check(s, file, uuid);
      assert.equal(c.served, false);
      assert.deepEqual(c.differing, []);
      const off = await offlineStatus(s, file);
      assert.equal(off.mode, 'logging');
      assert.equal(off.dirtyRegions, 0);
    },
  );

  it(
    'converges after kill -9 right after writes (logging) and during a full resync',
    { timeout: TIMEOUT },
    async (t) => {
      const s = await setup(t, 'kill', ['nbdsh', 'nbdcopy']);
      if (!s) return;
      const file = join(s.dir, 'primary.img');
      const uuid = await format(s, file);
      const model = Buffer.alloc(DEVICE);
      let r = await serveReplica(s, file, uuid);
      await nbdWrite(s, r.uri, [[0, randomBuffer(rng(2), 16 * MiB)]], model);
      await settle(r);

      // Logging mode: a flushed small write (its commit restarts the commit interval), then
      // unflushed writes, acknowledged, and the replicator killed while the client waits.
      const writes = randomWrites(3, 12);
      const path = join(s.dir, 'kill-writes.bin');
      await writeFile(path, Buffer.concat(writes.map((w) => w[1])));
      const small = randomBuffer(rng(4), 4096);
      await writeFile(join(s.dir, 'small.bin'), small);
      const spec = writes.map(([o, d]) => `(${o}, ${d.length}),`).join(' ');
      const writer = spawn(
        'nbdsh',
        [
          '-c',
          [
            'import sys, time',
            'h = nbd.NBD()',
            `h.connect_uri(${JSON.stringify(r.uri)})`,
            `h.pwrite(open(${JSON.stringify(join(s.dir, 'small.bin'))}, "rb").read(), ${40 * MiB})`,
            'h.flush()',
            `f = open(${JSON.stringify(path)}, "rb")`,
            `for off, n in [${spec}]:`,
            '    h.pwrite(f.read(n), off)',
            'print("written", flush=True)',
            'time.sleep(30)',
          ].join('\n'),
        ],
        {
          stdio: ['ignore', 'pipe', 'pipe'],
          env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` },
        },
      );
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
      small.copy(model, 40 * MiB);
      for (const [o, d] of writes) d.copy(model, o);
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
      // The killed writes were not committed: the replica lags, only in dirty regions.
      const lagging = await check(s, file, uuid);
      assert.equal(lagging.served, false);
      assert.ok(lagging.differing.length > 0, 'the kill came before the writes were committed');
      assert.ok(
        lagging.differing.every((d) => d.dirty),
        JSON.stringify(lagging.differing),
      );
      assert.equal(lagging.diverged, 0);

      r = await serveReplica(s, file, uuid);
      const restarted = await status(r);
      assert.ok(restarted.dirtyRegions < restarted.regions, JSON.stringify(restarted));
      assert.notEqual(restarted.mode, 'forward-full');
      await settle(r);
      await assertReplicated(s, file, uuid, model);

      // Full resync, killed while it runs (writes too).
      const full = await hyperJson<{ regions: number; full: boolean; live: boolean }>(
        ['replica', 'resync', '--control-socket', r.sock, '--full'],
        0,
        { env: cliEnv(s) },
      );
      assert.deepEqual(full, { regions: REGIONS, full: true, live: true });
      const running = await waitStatus(
        r,
        'the full pass copies',
        (x) => x.resync !== null && x.resync.copied > 0,
        10_000,
      );
      assert.equal(running.mode, 'forward-full', JSON.stringify(running));
      await nbdWrite(s, r.uri, randomWrites(5, 4), model, false);
      const beforeKill = await status(r);
      assert.equal(beforeKill.mode, 'forward-full', 'the kill comes during the full resync');
      await stop(r, 'SIGKILL');
      const logging1 = r.stderr();
      assert.match(logging1, /resync pass \{"regions":\d+,"full":false\}/);
      const crashed2 = await offlineStatus(s, file);
      assert.equal(crashed2.mode, 'forward-full', JSON.stringify(crashed2));

      r = await serveReplica(s, file, uuid);
      await settle(r);
      assert.match(r.stderr(), new RegExp(`resync pass \\{"regions":${REGIONS},"full":true\\}`));
      await assertReplicated(s, file, uuid, model);
      assert.equal(sha256(await nbdData(s, r.uri)), sha256(model));
      await stop(r, 'SIGINT');
      assert.match(r.stderr(), /resync pass/);
      const c = await check(s, file, uuid);
      assert.deepEqual(c.differing, []);
    },
  );

  it(
    'keeps serving while the replica is unreachable, then resyncs what changed',
    { timeout: TIMEOUT },
    async (t) => {
      const s = await setup(t, 'outage', ['nbdsh', 'nbdcopy']);
      if (!s) return;
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
      assert.ok(ms1 < 5000, `writes and flush with the replica down took ${ms1} ms`);
      const down = await waitStatus(
        r,
        'the replicator notices the outage',
        (x) => x.mode === 'forward-part' && !x.replica.connected,
      );
      assert.ok(down.replica.error !== null, JSON.stringify(down));
      assert.ok(down.dirtyRegions > 0);
      const ms2 = await nbdWrite(s, r.uri, randomWrites(8, 8), model);
      assert.ok(ms2 < 5000, `writes with the replica down took ${ms2} ms`);
      assert.equal((await status(r)).mode, 'forward-part');
      assert.ok(proxy.counts.downRefused > refusedBefore, 'requests hit the down store');
      assert.equal(sha256(await nbdData(s, r.uri)), sha256(model), 'the primary serves reads');

      proxy.down = false;
      await settle(r);
      const up = await status(r);
      assert.equal(up.replica.connected, true);
      assert.equal(up.replica.error, null);
      assert.equal(up.replica.lastConsistentCheckpoint, up.replica.checkpoint);
      await assertReplicated(s, file, uuid, model);
      await stop(r, 'SIGINT');
      assert.match(r.stderr(), /replica failed/);
      assert.match(r.stderr(), /resync pass/);
    },
  );

  it(
    'overflows a 1 MiB pool under a fast 32 MiB copy and still converges',
    { timeout: TIMEOUT },
    async (t) => {
      const s = await setup(t, 'pool', ['nbdcopy']);
      if (!s) return;
      const file = join(s.dir, 'primary.img');
      const uuid = await format(s, file);
      const r = await serveReplica(s, file, uuid, { extra: ['--pool-size', '1M'] });
      const image = randomBuffer(rng(9), 32 * MiB);
      const imagePath = join(s.dir, 'image.img');
      await writeFile(imagePath, image);
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
      const copy = await run('nbdcopy', [imagePath, `${r.uri}`], { timeoutMs: 60_000 });
      assert.equal(copy.code, 0, copy.stderr);
      const st = await status(r);
      polling = false;
      await poller;
      assert.ok(
        st.pool.overflows > 0 || seen.overflows > 0 || seen.forwardPart,
        `the pool overflowed: ${JSON.stringify(st)}`,
      );
      assert.ok(st.pool.limit <= 2 * MiB, `pool limit ${st.pool.limit}`);
      await settle(r);
      const model = Buffer.alloc(DEVICE);
      image.copy(model, 0);
      await assertReplicated(s, file, uuid, model);
      await stop(r, 'SIGINT');
      assert.match(r.stderr(), /replication pool overflowed/);
    },
  );

  it(
    'restores a fresh primary to a time, at once and lazily while serving',
    { timeout: TIMEOUT },
    async (t) => {
      const s = await setup(t, 'restore', ['nbdsh', 'nbdcopy']);
      if (!s) return;
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
      await nbdWrite(s, r.uri, [[0, randomBuffer(rng(10), 24 * MiB)]], model);
      await settle(r);
      await nbdWrite(s, r.uri, [[40 * MiB, randomBuffer(rng(11), 20 * MiB)]], model);
      await settle(r);
      await nbdWrite(s, r.uri, randomWrites(12, 6), model);
      await settle(r);
      const atT = Buffer.from(model);
      const cpT = (await status(r)).replica.checkpoint;
      const T = new Date().toISOString();
      await sleep(50);
      await nbdWrite(s, r.uri, randomWrites(13, 10), model);
      await nbdWrite(s, r.uri, [[24 * MiB, randomBuffer(rng(14), 4 * MiB)]], model);
      await settle(r);
      assert.ok((await status(r)).replica.checkpoint > cpT, 'checkpoints after T');
      assert.notEqual(sha256(model), sha256(atT));
      await stop(r, 'SIGINT');

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
      assert.equal(
        sha256(await primaryData(fresh)),
        sha256(atT),
        'fresh.img holds the content at T',
      );
      const fs = await offlineStatus(s, fresh);
      assert.equal(fs.mode, 'logging');
      assert.equal(fs.uuid, uuid);
      const c1 = await check(s, fresh, uuid);
      assert.deepEqual(c1.differing, [], 'the replica was rolled back to T as well');

      // Lazily, onto another new file, served through a slow store so the background restore
      // is still running while a client reads and writes.
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
      proxy.rates = { slow: 1, latencyMs: 40 };
      const lr = await serveReplica(s, lazy, uuid, {
        endpoint,
        extra: ['--recover-concurrency', '1'],
      });
      const early = await status(lr);
      assert.equal(early.mode, 'reverse-full');
      assert.ok(early.restore !== null && early.restore.restored < REGIONS, JSON.stringify(early));
      const order = [63, 62, 50, 33, 32, 24, 7, 0];
      const shas = await nbdRegionShas(lr.uri, order);
      assert.deepEqual(
        shas,
        order.map((x) => regionSha(atT, x)),
        'regions read during the lazy restore hold the content at T',
      );
      // A small write into a region the background pass has not reached: the rest of the
      // region must still be restored around it.
      const poke = randomBuffer(rng(15), 8192);
      const lazyModel = Buffer.from(atT);
      await nbdWrite(s, lr.uri, [[60 * MiB + 12288, poke]], lazyModel);
      const during = await status(lr);
      assert.ok(
        during.restore !== null && during.restore.restored < REGIONS,
        `the reads and the write came while the restore ran: ${JSON.stringify(during)}`,
      );
      proxy.rates = {};
      await settle(lr);
      const done = await status(lr);
      assert.equal(done.restore, null);
      assert.equal(
        sha256(await nbdData(s, lr.uri)),
        sha256(lazyModel),
        'NBD reads the whole device',
      );
      await assertReplicated(s, lazy, uuid, lazyModel);
      await stop(lr, 'SIGINT');
      assert.match(lr.stderr(), /restore complete/);
    },
  );

  it('resumes a lazy restore killed with -9 and finishes it', { timeout: TIMEOUT }, async (t) => {
    const s = await setup(t, 'lazy-kill', ['nbdsh', 'nbdcopy']);
    if (!s) return;
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
      [
        [0, randomBuffer(rng(16), 30 * MiB)],
        [34 * MiB, randomBuffer(rng(17), 30 * MiB)],
      ],
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
    proxy.rates = { slow: 1, latencyMs: 40 };
    let lr = await serveReplica(s, lazy, uuid, {
      endpoint,
      extra: ['--recover-concurrency', '1'],
    });
    const part = await waitStatus(
      lr,
      'some regions restored',
      (x) => x.restore !== null && x.restore.restored >= 3,
      30_000,
    );
    assert.ok(part.restore!.restored < REGIONS, 'killed before the restore finished');
    await stop(lr, 'SIGKILL');
    proxy.rates = {};
    const killed = await offlineStatus(s, lazy);
    assert.equal(killed.mode, 'reverse-full', JSON.stringify(killed));
    assert.ok(killed.restore !== null && killed.restore.restored < REGIONS);
    assert.ok(killed.restore.restored >= part.restore!.restored - 1, JSON.stringify(killed));

    lr = await serveReplica(s, lazy, uuid);
    const resumed = await status(lr);
    assert.ok(resumed.restore === null || resumed.restore.restored >= killed.restore.restored);
    const order = [63, 40, 1];
    assert.deepEqual(
      await nbdRegionShas(lr.uri, order),
      order.map((x) => regionSha(model, x)),
    );
    await settle(lr);
    assert.equal((await status(lr)).restore, null);
    assert.equal(sha256(await nbdData(s, lr.uri)), sha256(model));
    await assertReplicated(s, lazy, uuid, model);
    await stop(lr, 'SIGINT');
    const after = await offlineStatus(s, lazy);
    assert.equal(after.mode, 'logging');
    assert.equal(after.restore, null);
  });
});
