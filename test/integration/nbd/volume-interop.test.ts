/**
 * Real clients against `hyper serve` on volumes (not the memory device), on file:// and on
 * Ceph RGW: fio writes with crc32c verification, the server restarts, fio verifies the same
 * data again from the volume, and qemu-img compares the export with a copy made by nbdcopy.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { openStore } from '../../../src/format/store/index.js';
import { statVolume } from '../../../src/format/volume/admin.js';
import { MiB } from '../../../src/format/volume/types.js';
import { needS3, needTools, type S3TestConfig } from '../../helpers/env.js';
import { run } from '../../helpers/nbd.js';
import { serve, stopServe } from '../../helpers/serve.js';
import { emptyStore, ensureBucket, s3Options, uniqueS3Url } from '../../helpers/s3.js';

const fio = (uri: string, extra: string[]) =>
  run(
    'fio',
    [
      '--name=verify',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--size=48m',
      '--verify=crc32c',
      '--verify_fatal=1',
      '--randseed=42',
      '--norandommap',
      ...extra,
    ],
    { timeoutMs: 300_000 },
  );

/** fio buffers that compress to about a third (verified data still carries its headers). */
const COMPRESSIBLE = ['--buffer_compress_percentage=66', '--refill_buffers'];

async function interop(
  t: TestContext,
  url: string,
  args: string[],
  env: Record<string, string>,
  fioArgs: string[] = [],
): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'hyper-interop-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  let s = await serve([url, '--create', '--size', '64M', ...args], { env });
  // (Options of --create are not repeated for the second server.)
  const once = new Set(['--compression', '--encryption']);
  const again = args.filter(
    (a, i) => a !== '--dedup' && !once.has(a) && !once.has(args[i - 1] as string),
  );
  try {
    const w = await fio(s.uri, fioArgs);
    assert.equal(w.code, 0, w.stdout + w.stderr);
    assert.doesNotMatch(w.stdout + w.stderr, /verify: bad|crc32c: verify failed/);
  } finally {
    assert.equal(await stopServe(s), 0, `serve exits 0 on SIGTERM after flushing: ${s.stderr()}`);
  }
  // A fresh server reads the same data back from the volume.
  s = await serve([url, ...again], { env });
  try {
    const v = await fio(s.uri, ['--verify_only', ...fioArgs]);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    const img = join(dir, 'copy.img');
    const copy = await run('nbdcopy', [s.uri, img], { timeoutMs: 120_000 });
    assert.equal(copy.code, 0, copy.stderr);
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, s.uri], {
      timeoutMs: 120_000,
    });
    assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    assert.match(cmp.stdout, /Images are identical/);
    const map = await run('nbdinfo', ['--map', s.uri]);
    assert.equal(map.code, 0, map.stderr);
    assert.match(map.stdout, /data/);
  } finally {
    await stopServe(s);
  }
}

describe('real clients on hyper volumes', () => {
  it('file://: fio verify, restart, verify again, qemu-img compare', async (t) => {
    if (!needTools(t, 'fio', 'nbdcopy', 'qemu-img', 'nbdinfo')) return;
    const dir = await mkdtemp(join(tmpdir(), 'hyper-interop-vol-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    await interop(t, `file://${dir}/vol/`, [], {});
  });

  it('file:// with lz4: compressible fio data verifies, stored compressed', async (t) => {
    if (!needTools(t, 'fio', 'nbdcopy', 'qemu-img', 'nbdinfo')) return;
    const dir = await mkdtemp(join(tmpdir(), 'hyper-interop-lz4-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const url = `file://${dir}/vol/`;
    await interop(t, url, ['--compression', 'lz4'], {}, COMPRESSIBLE);
    const st = await statVolume(await openStore(url));
    assert.equal(st.compression, 'lz4');
    // fio wrote 48 MiB (some blocks twice); compressed they take well under half.
    assert.ok(st.storedBytes < 24 * MiB, `stored ${st.storedBytes}`);
  });

  it('file:// with --dedup: an image of repeated megabytes goes in through nbdcopy, stored once', async (t) => {
    if (!needTools(t, 'nbdcopy', 'qemu-img')) return;
    const dir = await mkdtemp(join(tmpdir(), 'hyper-interop-dedup-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const url = `file://${dir}/vol/`;
    const mib = randomBytes(1 * MiB);
    // 16 copies of one random megabyte, every other one shifted by a block (same blocks).
    const parts: Buffer[] = [];
    for (let k = 0; k < 16; k++)
      parts.push(k % 2 ? Buffer.concat([mib.subarray(4096), mib.subarray(0, 4096)]) : mib);
    const img = join(dir, 'in.img');
    await writeFile(img, Buffer.concat(parts));
    let s = await serve([url, '--create', '--size', '16M', '--dedup']);
    try {
      const w = await run('nbdcopy', [img, s.uri], { timeoutMs: 120_000 });
      assert.equal(w.code, 0, w.stderr);
    } finally {
      assert.equal(await stopServe(s), 0, s.stderr());
    }
    s = await serve([url]);
    try {
      const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', img, s.uri], {
        timeoutMs: 120_000,
      });
      assert.equal(cmp.code, 0, cmp.stdout + cmp.stderr);
    } finally {
      await stopServe(s);
    }
    const st = await statVolume(await openStore(url));
    assert.equal(st.dedup, true);
    assert.equal(st.mappedBlocks, 4096);
    assert.equal(st.dedupBlocks, 256);
    assert.ok(st.storedBytes < 1.5 * MiB, `stored ${st.storedBytes} for 16 MiB written`);
  });

  it('RGW: fio verify, restart, verify again, qemu-img compare', async (t) => {
    if (!needTools(t, 'fio', 'nbdcopy', 'qemu-img', 'nbdinfo')) return;
    const cfg = needS3(t) as S3TestConfig | undefined;
    if (!cfg) return;
    await ensureBucket(cfg);
    const url = uniqueS3Url(cfg, 'interop');
    t.after(async () => emptyStore(await openStore(url, s3Options(cfg))));
    // zstd, encryption and dedup on RGW: sealed compressed blocks through ranged GETs at byte
    // offsets, each new one looked up in the content index.
    const dir = await mkdtemp(join(tmpdir(), 'hyper-interop-key-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const keyFile = join(dir, 'volume.key');
    await writeFile(keyFile, randomBytes(32));
    const create = ['--compression', 'zstd', '--encryption', 'xchacha20-poly1305', '--dedup'];
    await interop(
      t,
      url,
      ['--endpoint', cfg.endpoint, ...create],
      {
        HYPER_KEY_FILE: keyFile,
        AWS_ACCESS_KEY_ID: cfg.accessKeyId,
        AWS_SECRET_ACCESS_KEY: cfg.secretAccessKey,
        AWS_REGION: cfg.region,
      },
      COMPRESSIBLE,
    );
  });
});
