/**
 * `hyper serve` and the lease: --wait waits for a held lease instead of failing.
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openStore } from '../../../src/format/store/index.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { needTools } from '../../helpers/env.js';
import { run } from '../../helpers/nbd.js';
import { serve, stopServe } from '../../helpers/serve.js';

describe('hyper serve --wait', () => {
  it('waits while another writer holds the lease, then serves once it is released', async (t) => {
    if (!needTools(t, 'nbdinfo')) return;
    const dir = await mkdtemp(join(tmpdir(), 'hyper-serve-wait-'));
    t.after(() => rm(dir, { recursive: true, force: true }));
    const url = `file://${dir}/vol/`;
    await mkdir(join(dir, 'vol'));
    const store = await openStore(url);
    await Volume.create(store, { size: 8 * 1024 * 1024 });
    const holder = await Volume.open(store, {
      holder: 'other-writer',
      leaseTtlMs: 60_000,
      flushIntervalMs: 0,
    });
    let started = false;
    const pending = serve([url, '--wait']).then((s) => {
      started = true;
      return s;
    });
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(started, false, 'not serving while the lease is held');
    await holder.close(); // releases the lease
    const s = await pending;
    try {
      assert.match(s.stderr(), /waiting for the lease/);
      assert.match(s.stderr(), /other-writer/);
      const info = await run('nbdinfo', ['--json', s.uri]);
      assert.equal(info.code, 0, info.stderr);
    } finally {
      assert.equal(await stopServe(s), 0, s.stderr());
      await store.close();
    }
  });
});
