/**
 * `hyper serve --cache-dir`: the disk cache under a real server and real NBD clients
 * (nbdcopy), on file:// volumes. Reads after a restart come from the cache alone (the
 * segment objects moved away), a damaged cache is refetched, the cache stays within its size,
 * restore, compaction and a takeover never make it serve stale bytes, and a full cache disk
 * costs only the caching (said in the log and the metrics).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { mkdir, open, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileUrl, hyper, show, tempDir } from '../../helpers/cli.js';
import { needPrerequisite, needTools } from '../../helpers/env.js';
import { run } from '../../helpers/nbd.js';
import { serve, stopServe } from '../../helpers/serve.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function dirBytes(dir: string): number {
  let n = 0;
  for (const f of readdirSync(dir, { recursive: true }) as string[]) {
    const s = statSync(join(dir, f));
    if (s.isFile()) n += s.size;
  }
  return n;
}

async function nbdcopy(from: string, to: string): Promise<void> {
  const r = await run('nbdcopy', [from, to], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, `nbdcopy ${from} ${to}: ${r.stderr}`);
}

/** Serve `url` with `args`, copy the export to a file and return its bytes. */
async function readAll(dir: string, url: string, args: string[]): Promise<Buffer> {
  const s = await serve([url, ...args]);
  try {
    const out = join(dir, `out-${randomBytes(4).toString('hex')}.img`);
    await nbdcopy(s.uri, out);
    return await readFile(out);
  } finally {
    assert.equal(await stopServe(s), 0, s.stderr());
  }
}

/** Serve `url` read-write with `args` and write `data` at `offset`. */
async function writeAt(
  dir: string,
  url: string,
  args: string[],
  offset: number,
  data: Buffer,
): Promise<void> {
  const s = await serve([url, ...args]);
  try {
    const img = join(dir, `in-${randomBytes(4).toString('hex')}.img`);
    await writeFile(img, data);
    const r = await run(
      'nbdsh',
      [
        '-u',
        s.uri,
        '-c',
        `h.pwrite(open(${JSON.stringify(img)}, 'rb').read(), ${offset}); h.flush()`,
      ],
      { timeoutMs: 60_000, env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` } },
    );
    assert.equal(r.code, 0, r.stderr);
  } finally {
    assert.equal(await stopServe(s), 0, s.stderr());
  }
}

/** Serve `url` with `args` and metrics, copy the export out; its bytes, metrics and log. */
async function readWithMetrics(
  dir: string,
  url: string,
  args: string[],
): Promise<{ bytes: Buffer; metrics: string; stderr: string }> {
  const s = await serve([url, ...args, '--metrics-port', '0']);
  let metrics = '';
  let bytes: Buffer;
  try {
    const out = join(dir, `out-${randomBytes(4).toString('hex')}.img`);
    await nbdcopy(s.uri, out);
    bytes = await readFile(out);
    metrics = await (await fetch(s.metrics!)).text();
  } finally {
    assert.equal(await stopServe(s), 0, s.stderr());
  }
  return { bytes, metrics, stderr: s.stderr() };
}

/** The value of a counter in a Prometheus exposition (0 when absent), by `cache` label if given. */
function metric(text: string, name: string, cache?: string): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    if (cache !== undefined && !line.includes(`cache="${cache}"`)) continue;
    return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return 0;
}

describe('hyper serve --cache-dir', () => {
  it('serves reads after a restart from the cache, refetches a damaged cache, stays within its size', async (t) => {
    if (!needTools(t, 'nbdcopy', 'nbdsh')) return;
    const dir = await tempDir(t, 'hyper-serve-cache-');
    const vol = join(dir, 'vol');
    const url = fileUrl(vol);
    const cache = join(dir, 'cache');
    const data = randomBytes(SIZE);
    const c = await hyper(['file', 'create', url, '--size', String(SIZE)]);
    assert.equal(c.code, 0, show(c));
    await writeAt(dir, url, [], 0, data);

    const cacheArgs = ['--read-only', '--cache-dir', cache, '--cache-size', '64M'];
    assert.equal(
      sha(await readAll(dir, url, cacheArgs)),
      sha(data),
      'first read, filling the cache',
    );
    assert.ok(dirBytes(cache) <= 64 * MiB);

    // The segments out of reach: everything must come from the cache.
    await rename(join(vol, 'seg'), join(vol, 'seg.away'));
    assert.equal(sha(await readAll(dir, url, cacheArgs)), sha(data), 'read from the cache alone');
    // With the cache recreated, the same read fails (proves the store was out of reach).
    const s = await serve([url, '--read-only', '--cache-dir', cache, '--cache-mode', 'recreate']);
    const fail = await run('nbdcopy', [s.uri, join(dir, 'fail.img')], { timeoutMs: 60_000 });
    assert.notEqual(fail.code, 0, 'reading without segments and without a cache fails');
    await stopServe(s);
    await rename(join(vol, 'seg.away'), join(vol, 'seg'));

    // Refill, then scribble over the cached bytes: refetched, same bytes.
    assert.equal(sha(await readAll(dir, url, cacheArgs)), sha(data));
    const f = await open(join(cache, 'slots.dat'), 'r+');
    const len = (await f.stat()).size;
    for (let at = 0; at < len; at += 64 * 1024) await f.write(randomBytes(512), 0, 512, at);
    await f.close();
    assert.equal(sha(await readAll(dir, url, cacheArgs)), sha(data), 'damaged cache refetched');

    // A cache smaller than the volume never grows past its size.
    const small = join(dir, 'small');
    for (let i = 0; i < 2; i++) {
      assert.equal(
        sha(await readAll(dir, url, ['--read-only', '--cache-dir', small, '--cache-size', '3M'])),
        sha(data),
      );
      assert.ok(dirBytes(small) <= 3 * MiB, `${dirBytes(small)} bytes`);
    }
  });

  it('serves the right bytes from a full cache disk, and says so in the log and the metrics', async (t) => {
    if (!needTools(t, 'nbdcopy', 'nbdsh', 'mount', 'umount')) return;
    if (!needPrerequisite(t, process.getuid?.() === 0, 'needs root (mounts a 1 MiB tmpfs)')) return;
    const dir = await tempDir(t, 'hyper-serve-cache-full-');
    const url = fileUrl(join(dir, 'vol'));
    const data = randomBytes(SIZE);
    const c = await hyper(['file', 'create', url, '--size', String(SIZE)]);
    assert.equal(c.code, 0, show(c));
    await writeAt(dir, url, [], 0, data);

    // A cache of 64 MiB on a file system of 1 MiB: most entries cannot be written.
    const tiny = join(dir, 'tiny');
    await mkdir(tiny);
    const m = await run('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', tiny]);
    assert.equal(m.code, 0, m.stderr);
    try {
      const args = ['--read-only', '--cache-dir', join(tiny, 'c'), '--cache-size', '64M'];
      const first = await readWithMetrics(dir, url, args);
      assert.equal(sha(first.bytes), sha(data), 'bytes read with a full cache disk');
      assert.ok(metric(first.metrics, 'hyper_volume_disk_cache_write_failures_total') > 0);
      assert.match(first.stderr, /less room than the cache size/, first.stderr);
      // Said once, not once per failed write (at most every ten minutes).
      assert.equal(first.stderr.match(/writing entries failed/g)?.length, 1, first.stderr);
      assert.match(first.stderr, /ENOSPC/, first.stderr);

      // What did fit is reused after a restart, though the disk is still full.
      const again = await readWithMetrics(dir, url, args);
      assert.equal(sha(again.bytes), sha(data), 'read again through the cache');
      assert.ok(metric(again.metrics, 'hyper_volume_cache_hits_total', 'disk') > 0, again.metrics);
      assert.doesNotMatch(again.stderr, /not used/);

      // No room even to start a new cache: the volume is served without one.
      await writeFile(join(tiny, 'filler'), Buffer.alloc(2 * MiB)).catch(() => undefined);
      const none = await readWithMetrics(dir, url, [...args.slice(0, 2), join(tiny, 'c2')]);
      assert.equal(sha(none.bytes), sha(data), 'read without a cache');
      assert.match(none.stderr, /disk cache not used: its disk is full/, none.stderr);
    } finally {
      const u = await run('umount', [tiny]);
      assert.equal(u.code, 0, u.stderr);
    }
  });

  it('never serves stale bytes after restore, compaction and a takeover', async (t) => {
    if (!needTools(t, 'nbdcopy', 'nbdsh')) return;
    const dir = await tempDir(t, 'hyper-serve-cache-');
    const url = fileUrl(join(dir, 'vol'));
    const cache = join(dir, 'cache');
    const args = ['--cache-dir', cache, '--cache-size', '64M'];
    const c = await hyper(['file', 'create', url, '--size', String(SIZE)]);
    assert.equal(c.code, 0, show(c));
    const model = Buffer.alloc(SIZE);
    const put = async (offset: number, len: number): Promise<void> => {
      const d = randomBytes(len);
      d.copy(model, offset);
      await writeAt(dir, url, args, offset, d);
    };
    await put(0, SIZE);
    const snap = await hyper(['snapshot', 'create', url, '--name', 'first']);
    assert.equal(snap.code, 0, show(snap));
    const first = Buffer.from(model);
    assert.equal(sha(await readAll(dir, url, args)), sha(model));
    await put(1 * MiB, 4 * MiB);
    await put(9 * MiB + 4096, 3 * MiB);
    assert.equal(sha(await readAll(dir, url, args)), sha(model), 'after writes');

    // Restore: the older content, although the cache holds the newer blocks too.
    const r = await hyper(['snapshot', 'restore', url, '--to', 'first']);
    assert.equal(r.code, 0, show(r));
    first.copy(model);
    assert.equal(sha(await readAll(dir, url, args)), sha(model), 'after restore');

    // Compaction rewrites and deletes segments.
    await put(2 * MiB, 1 * MiB);
    const k = await hyper([
      'compact',
      url,
      '--keep-last',
      '1',
      '--grace',
      '0s',
      '--min-live',
      '0.99',
      '--yes',
    ]);
    assert.equal(k.code, 0, show(k));
    assert.equal(sha(await readAll(dir, url, args)), sha(model), 'after compaction');

    // A takeover: a second server forces the lease away from one serving with the cache.
    const a = await serve([url, ...args]);
    const aOut = join(dir, 'a.img');
    await nbdcopy(a.uri, aOut);
    const b = await serve([url, '--force']);
    const d = randomBytes(2 * MiB);
    d.copy(model, 6 * MiB);
    const img = join(dir, 'b.img');
    await writeFile(img, d);
    const w = await run(
      'nbdsh',
      [
        '-u',
        b.uri,
        '-c',
        `h.pwrite(open(${JSON.stringify(img)}, 'rb').read(), ${6 * MiB}); h.flush()`,
      ],
      {
        env: { ...process.env, PATH: `/usr/bin:${process.env.PATH ?? ''}` },
      },
    );
    assert.equal(w.code, 0, w.stderr);
    await stopServe(b);
    await stopServe(a);
    assert.equal(
      sha(await readAll(dir, url, [...args, '--read-only'])),
      sha(model),
      'after takeover',
    );
    assert.equal(sha(await readAll(dir, url, args)), sha(model), 'after takeover, read-write');
  });
});
