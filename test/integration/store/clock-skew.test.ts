/**
 * A machine whose clock is 20 minutes off the store's (a VM after a suspend, NTP not running):
 * RGW refuses a request signed that far from its time (RequestTimeTooSkewed). The CLI, run on
 * a shifted clock (test/helpers/skewed-clock.mjs), must still create, import and export a
 * volume byte for byte: the first refusal teaches the client the store's time and the request
 * is signed again with it. Before, every request failed with ACCESS_DENIED and a suggestion to
 * check the credentials.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { describe, it } from 'node:test';
import { encodeLease } from '../../../src/format/codec/lease.js';
import { LEASE_KEY } from '../../../src/format/keys.js';
import { openStore } from '../../../src/format/store/index.js';
import { hyper, repoRoot, show, tempDir } from '../../helpers/cli.js';
import { needS3 } from '../../helpers/env.js';
import { ensureBucket, s3Options, uniqueS3Url } from '../../helpers/s3.js';
import { serve, stopServe } from '../../helpers/serve.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const skewed = resolve(repoRoot, 'test/helpers/skewed-clock.mjs');
const onClock = (minutes: number): Record<string, string> => ({
  NODE_OPTIONS: `--import ${skewed}`,
  HYPER_TEST_CLOCK_SKEW_MS: String(minutes * 60_000),
});

describe('a clock far from the store', () => {
  for (const minutes of [20, -20]) {
    it(`works with the clock ${minutes > 0 ? 'ahead' : 'behind'} by ${Math.abs(minutes)} minutes`, async (t) => {
      const cfg = needS3(t);
      if (!cfg) return;
      await ensureBucket(cfg);
      const url = uniqueS3Url(cfg, `skew${minutes}`);
      const dir = await tempDir(t, 'hyper-skew-');
      const env = {
        NODE_OPTIONS: `--import ${skewed}`,
        HYPER_TEST_CLOCK_SKEW_MS: String(minutes * 60_000),
      };
      const store = ['--endpoint', cfg.endpoint];
      const data = randomBytes(3 * MiB);
      const img = join(dir, 'in.img');
      await writeFile(img, data);
      const c = await hyper(['file', 'create', url, '--size', '8M', ...store], { env });
      assert.equal(c.code, 0, show(c));
      const i = await hyper(['file', 'import', img, url, ...store], { env });
      assert.equal(i.code, 0, show(i));
      const out = join(dir, 'out.img');
      const e = await hyper(['file', 'export', url, out, ...store], { env });
      assert.equal(e.code, 0, show(e));
      assert.equal(sha((await readFile(out)).subarray(0, data.length)), sha(data));
      const d = await hyper(['file', 'delete', url, '--yes', ...store], { env });
      assert.equal(d.code, 0, show(d));
    });
  }

  /**
   * Lease expiry goes by the store's clock (the record's Last-Modified against the Date of the
   * answer). Before, it compared the holder's clock with the reader's: a writer 20 minutes
   * behind wrote leases everyone took for long expired, and a host 20 minutes ahead took any
   * live lease without --force (the writer was fenced, its clients got EPERM).
   */
  it('a live lease holds against hosts whose clocks are 20 minutes off, and a dead one frees by the store clock', async (t) => {
    const cfg = needS3(t);
    if (!cfg) return;
    await ensureBucket(cfg);
    const url = uniqueS3Url(cfg, 'skewlease');
    const dir = await tempDir(t, 'hyper-skew-');
    const store = ['--endpoint', cfg.endpoint];
    const img = join(dir, 'in.img');
    const data = randomBytes(1 * MiB);
    await writeFile(img, data);
    const c = await hyper(['file', 'create', url, '--size', '8M', ...store]);
    assert.equal(c.code, 0, show(c));

    // The writer's clock is 20 minutes behind: its lease records expired 20 minutes ago by
    // every other clock.
    const s = await serve([url, ...store], { env: onClock(-20) });
    try {
      for (const minutes of [0, 20]) {
        const i = await hyper(['file', 'import', img, url, ...store], { env: onClock(minutes) });
        assert.equal(i.code, 4, `a host ${minutes} min ahead is refused: ${show(i)}`);
        assert.match(i.stderr, /LEASE_HELD|in use by/);
      }
      const st = await hyper(['file', 'stat', url, '--json', ...store], { env: onClock(20) });
      assert.equal(st.code, 0, show(st));
      const lease = (JSON.parse(st.stdout) as { lease?: { state?: string; expiresAt?: string } })
        .lease;
      assert.equal(lease?.state, 'live', st.stdout);
      // Shown on the reader's clock: within a TTL of its now.
      const left = Date.parse(lease?.expiresAt ?? '') - (Date.now() + 20 * 60_000);
      assert.ok(left > 0 && left <= 32_000, `expires in ${left} ms`);
    } finally {
      assert.equal(await stopServe(s), 0, s.stderr());
    }

    // A holder that died, its clock 20 minutes ahead: its record says it expires in 20
    // minutes, its TTL (1 s) says it is free 1 s after the store wrote it (plus the store's
    // whole seconds).
    const raw = await openStore(url, s3Options(cfg));
    const { etag } = await raw.get(LEASE_KEY);
    const now = Date.now() + 20 * 60_000;
    const record = {
      holder: 'gone@elsewhere:1',
      epoch: 50,
      acquiredMs: now,
      expiresMs: now + 1000,
    };
    await raw.put(LEASE_KEY, encodeLease({ ...record, ttlMs: 1000 }), { ifMatch: etag });
    await new Promise((r) => setTimeout(r, 3100));
    const i = await hyper(['file', 'import', img, url, ...store]);
    assert.equal(i.code, 0, show(i));
    const out = join(dir, 'out.img');
    const e = await hyper(['file', 'export', url, out, ...store]);
    assert.equal(e.code, 0, show(e));
    assert.equal(sha((await readFile(out)).subarray(0, data.length)), sha(data));
    const d = await hyper(['file', 'delete', url, '--yes', ...store]);
    assert.equal(d.code, 0, show(d));
  });
});
