/**
 * `hyper serve` on RGW behind the fault proxy, with real NBD clients: at 5% injected faults
 * fio's crc32c-verified writes and reads go through; with the store down, a FLUSH fails with
 * EIO after bounded retries while the server stays up, and once the store is back the same
 * server commits and serves the data again.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { openStore } from '../../../src/format/store/index.js';
import { needS3, needTools, s3Config } from '../../helpers/env.js';
import { FaultProxy } from '../../helpers/fault-proxy.js';
import { run } from '../../helpers/nbd.js';
import { emptyStore, ensureBucket, s3Options, uniqueS3Url } from '../../helpers/s3.js';
import { serve, stopServe } from '../../helpers/serve.js';

describe('serve on S3 under injected faults', () => {
  const cfg = s3Config();
  let proxy: FaultProxy | undefined;
  let endpoint = '';
  before(async () => {
    if (!cfg) return;
    await ensureBucket(cfg);
    proxy = new FaultProxy(new URL(cfg.endpoint), 11);
    endpoint = await proxy.start();
  });
  after(async () => proxy?.stop());

  it('fio verifies through 5% faults; a down store gives EIO, the server stays up and recovers', async (t) => {
    if (!needTools(t, 'fio', 'qemu-io')) return;
    const c = needS3(t);
    if (!c || !proxy) return;
    const url = uniqueS3Url(c, 'serve-faults');
    t.after(async () => emptyStore(await openStore(url, s3Options(c))));
    const env = {
      AWS_ACCESS_KEY_ID: c.accessKeyId,
      AWS_SECRET_ACCESS_KEY: c.secretAccessKey,
      AWS_REGION: c.region,
    };
    proxy.rates = {};
    const s = await serve([url, '--create', '--size', '64M', '--endpoint', endpoint], { env });
    try {
      proxy.rates = {
        slow: 0.05,
        latencyMs: 20,
        slowDown: 0.02,
        internalError: 0.01,
        resetBefore: 0.01,
        resetAfter: 0.005,
        truncate: 0.005,
      };
      const before = { ...proxy.counts };
      const w = await run(
        'fio',
        [
          '--name=faults',
          '--ioengine=nbd',
          `--uri=${s.uri}`,
          '--rw=randwrite',
          '--bs=64k',
          '--iodepth=8',
          '--size=32m',
          '--verify=crc32c',
          '--verify_fatal=1',
          '--fsync=16',
        ],
        { timeoutMs: 300_000 },
      );
      assert.equal(w.code, 0, w.stdout + w.stderr);
      const k = proxy.counts;
      const faults =
        k.slowDown +
        k.internalError +
        k.resetBefore +
        k.resetAfter +
        k.truncate -
        (before.slowDown +
          before.internalError +
          before.resetBefore +
          before.resetAfter +
          before.truncate);
      assert.ok(
        faults >= 2,
        `faults injected under fio: ${faults} of ${k.requests - before.requests} requests`,
      );
      proxy.rates = {};
      // Store down: the write is accepted into memory, its FLUSH cannot be committed → EIO.
      proxy.down = true;
      const t0 = Date.now();
      const down = await run(
        'qemu-io',
        ['-f', 'raw', '-c', 'write -P 0x5c 48M 1M', '-c', 'flush', s.uri],
        { timeoutMs: 120_000 },
      );
      assert.match(
        down.stdout + down.stderr,
        /flush failed: Input\/output error|Input\/output error/,
      );
      assert.ok(Date.now() - t0 < 90_000, 'retries are bounded');
      assert.equal(s.child.exitCode, null, 'the server is still running');
      // Back up: the same server commits what it holds and serves it.
      proxy.down = false;
      const up = await run(
        'qemu-io',
        ['-f', 'raw', '-c', 'flush', '-c', 'read -P 0x5c 48M 1M', s.uri],
        { timeoutMs: 120_000 },
      );
      assert.equal(up.code, 0, up.stdout + up.stderr);
      assert.doesNotMatch(up.stdout, /failed/);
    } finally {
      proxy.down = false;
      proxy.rates = {};
      assert.equal(await stopServe(s), 0, s.stderr());
    }
    // A fresh read-only server sees the committed data.
    const ro = await serve([url, '--read-only', '--endpoint', endpoint], { env });
    try {
      const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x5c 48M 1M', ro.uri]);
      assert.equal(r.code, 0, r.stdout + r.stderr);
    } finally {
      await stopServe(ro);
    }
  });
});
