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
import { hyper, repoRoot, show, tempDir } from '../../helpers/cli.js';
import { needS3 } from '../../helpers/env.js';
import { ensureBucket, uniqueS3Url } from '../../helpers/s3.js';

const MiB = 1024 * 1024;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
const skewed = resolve(repoRoot, 'test/helpers/skewed-clock.mjs');

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
});
