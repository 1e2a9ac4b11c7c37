/**
 * `hyper serve --cache-dir`: the disk cache under a real server and real NBD clients
 * (nbdcopy), on file:// volumes. Reads after a restart come from the cache alone (the
 * segment objects moved away), a damaged cache is refetched, the cache stays within its size,
 * and restore, compaction and a takeover never make it serve stale bytes.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { open, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileUrl, hyper, show, tempDir } from '../../helpers/cli.js';
import { needTools } from '../../helpers/env.js';
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
