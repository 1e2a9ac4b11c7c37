/**
 * `hyper daemon --cache-dir` on RGW with nbdcopy: each export's volume caches under its own
 * name (names with a slash included), a volume mapped again reads from its cache and not from
 * the store, and a name mapped again to another volume never serves the first one's blocks.
 * The disk cache's hits and misses, and the write buffer's bound (--max-dirty), are read from
 * the daemon's metrics.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openStore } from '../../../src/format/store/index.js';
import { readHead } from '../../../src/format/volume/heads.js';
import { Volume } from '../../../src/format/volume/volume.js';
import { show, tempDir } from '../../helpers/cli.js';
import { startDaemon, type RunningDaemon } from '../../helpers/daemon.js';
import { needS3, needTools } from '../../helpers/env.js';
import { run } from '../../helpers/nbd.js';
import { scrape, total } from '../../helpers/prometheus.js';
import { rng } from '../../helpers/rng.js';
import { s3Options, uniqueS3Url } from '../../helpers/s3.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
const BLOCKS = SIZE / 4096;

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function pattern(seed: number): Buffer {
  const r = rng(seed);
  const b = Buffer.allocUnsafe(SIZE);
  for (let i = 0; i < SIZE; i += 4) b.writeUInt32LE((r() * 2 ** 32) >>> 0, i);
  return b;
}

describe('hyper daemon with a disk cache', () => {
  it('caches each export under its name, reads a remapped volume from it, and never serves another volume its blocks', async (t) => {
    if (!needTools(t, 'nbdcopy')) return;
    const cfg = needS3(t);
    if (!cfg) return;
    const dir = await tempDir(t, 'hyper-daemon-cache-');
    const volumes = [
      { url: uniqueS3Url(cfg, 'daemon-cache-a'), data: pattern(1), uuid: '' },
      { url: uniqueS3Url(cfg, 'daemon-cache-b'), data: pattern(2), uuid: '' },
    ] as const;
    for (const v of volumes) {
      const store = await openStore(v.url, s3Options(cfg));
      await Volume.create(store, { size: SIZE });
      const vol = await Volume.open(store);
      await vol.write(0, v.data);
      await vol.close();
      (v as { uuid: string }).uuid = (await readHead(store)).head.uuid;
      await store.close();
    }
    const [a, b] = volumes;
    const cache = join(dir, 'cache');
    let d: RunningDaemon | undefined;
    t.after(async () => {
      await d?.stop('SIGKILL');
    });
    d = await startDaemon(
      [
        ...['--port', '0', '--state-file', join(dir, 'state.json'), '--endpoint', cfg.endpoint],
        ...['--cache-dir', cache, '--cache-size', '32M', '--metrics-port', '0'],
        ...['--max-dirty', '80M'],
      ],
      { controlSocket: join(dir, 'control.sock') },
    );
    const daemon = d;
    const metricsUrl = /serving metrics \{"url":"([^"]+)"/.exec(daemon.stderr())?.[1];
    assert.ok(metricsUrl, `the metrics URL is logged: ${daemon.stderr()}`);
    const map = async (url: string, name: string): Promise<void> => {
      const r = await daemon.ctl(['map', url, '--name', name]);
      assert.equal(r.code, 0, show(r));
    };
    const unmap = async (name: string): Promise<void> => {
      const r = await daemon.ctl(['unmap', name]);
      assert.equal(r.code, 0, show(r));
    };
    /** The export's bytes, through nbdcopy. */
    const readAll = async (name: string): Promise<string> => {
      const out = join(dir, `${name.replace(/\//g, '_')}.img`);
      const r = await run('nbdcopy', [`nbd://127.0.0.1:${daemon.port}/${name}`, out]);
      assert.equal(r.code, 0, r.stderr);
      return sha(await readFile(out));
    };
    const disk = async (name: string) => {
      const e = await scrape(metricsUrl);
      const at = (metric: string): number => total(e, metric, { export: name, cache: 'disk' });
      return {
        hits: at('hyper_volume_cache_hits_total'),
        misses: at('hyper_volume_cache_misses_total'),
      };
    };
    const manifest = async (name: string): Promise<string> =>
      (JSON.parse(await readFile(join(cache, name, 'manifest.json'), 'utf8')) as { volume: string })
        .volume;

    await map(a.url, 'vm/a');
    await map(b.url, 'b');
    assert.equal(await readAll('vm/a'), sha(a.data));
    assert.equal(await readAll('b'), sha(b.data));
    // One directory per export name, each naming its own volume.
    assert.equal(await manifest('vm/a'), a.uuid);
    assert.equal(await manifest('b'), b.uuid);
    // The write buffer's bound is the one given, for every export.
    const limits = await scrape(metricsUrl);
    for (const name of ['vm/a', 'b'])
      assert.equal(total(limits, 'hyper_volume_dirty_limit_bytes', { export: name }), 80 * MiB);
    const first = await disk('vm/a');
    assert.ok(first.misses > 0, `the first read missed the cache: ${JSON.stringify(first)}`);

    // Mapped again (a new volume instance, nothing in memory): read from the disk cache.
    await unmap('vm/a');
    await map(a.url, 'vm/a');
    assert.equal(await readAll('vm/a'), sha(a.data));
    const again = await disk('vm/a');
    assert.ok(
      again.hits - first.hits >= 0.9 * BLOCKS,
      `the second read came from the cache: ${JSON.stringify({ first, again })}`,
    );

    // The name mapped to another volume: its cache is recreated, the bytes are that volume's.
    await unmap('vm/a');
    await unmap('b');
    await map(b.url, 'vm/a');
    assert.equal(await readAll('vm/a'), sha(b.data));
    assert.equal(await manifest('vm/a'), b.uuid);

    assert.equal(await daemon.stop(), 0, daemon.stderr());
    d = undefined;
  });
});
